//! `cassini demo --nodes N`: a cluster of N nodes on loopback in one process, for demos and
//! for trying the cluster in one terminal (docs/CLUSTERING.md). Each node is a whole broker
//! with its own client endpoint and its own cluster endpoint, talking real QUIC to the others;
//! development certificates (CA, server, client `dev`, `node-nI`) are made in `--certs` on first
//! run. Prints each node's client address and runs until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::cluster::ClusterConfig;
use cassini_broker::{Broker, BrokerConfig, BrokerHandle};
use cassini_protocol::ErrorCode;
use cassini_quic::certs::{ensure_dev_certs, issue_node_file, node_paths, CertPaths};
use cassini_quic::cluster::{ClusterNode, ClusterOptions, ClusterTls};
use cassini_quic::server::{QuicServer, ServerOptions};
use cassini_quic::tls::{self, load_certs, load_key, RevocationOptions};

use crate::cli::DemoArgs;
use crate::signals::ShutdownSignals;

/// One node of the demo.
struct DemoNode {
    broker: BrokerHandle,
    server: Arc<QuicServer>,
    cluster: ClusterNode,
}

pub(crate) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignals::install()?;
    if args.nodes == 0 {
        anyhow::bail!("a cluster needs at least one node");
    }
    let dir = &args.certs;
    ensure_dev_certs(dir)
        .with_context(|| format!("preparing certificates in {}", dir.display()))?;
    let names: Vec<String> = (1..=args.nodes).map(|i| format!("n{i}")).collect();
    for name in &names {
        if !node_paths(dir, name).0.exists() {
            issue_node_file(dir, name)
                .with_context(|| format!("issuing the node certificate of {name}"))?;
        }
    }
    let paths = CertPaths::in_dir(dir);
    let mut nodes = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let port = match args.base_port {
            0 => 0,
            base => base
                .checked_add(u16::try_from(index).unwrap_or(u16::MAX))
                .context("--base-port is too high for this many nodes")?,
        };
        nodes.push(start_node(&paths, dir, name, port).await?);
    }
    let cluster_addrs: Vec<SocketAddr> = nodes
        .iter()
        .map(|node| node.cluster.local_addr())
        .collect::<Result<_, _>>()
        .context("reading the cluster addresses")?;
    for node in &nodes {
        for &addr in &cluster_addrs {
            node.cluster.dial(addr);
        }
    }
    let others = nodes.len() - 1;
    let meshed = || {
        nodes.iter().all(|node| {
            let peers = node.cluster.port().peers();
            peers.len() == others && peers.iter().all(|peer| peer.inbound && peer.outbound)
        })
    };
    let formed = tokio::time::timeout(Duration::from_secs(10), async {
        while !meshed() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if formed.is_err() {
        tracing::warn!("the nodes did not all connect within 10 s; they keep trying");
    }
    println!("a {}-node Cassini cluster on loopback:", nodes.len());
    let mut addrs = Vec::new();
    for (name, node) in names.iter().zip(&nodes) {
        let addr = node
            .server
            .local_addr()
            .context("reading a client address")?;
        addrs.push(addr);
        println!("  node {name}: clients at {addr}");
    }
    if let [first, .., last] = addrs.as_slice() {
        println!("try, in two more terminals:");
        println!(
            "  cassini sub 'demo.>' --server {last} --certs {}",
            dir.display()
        );
        println!(
            "  cassini pub demo.hello 'hi from {first}' --server {first} --certs {}",
            dir.display()
        );
    }
    println!("Ctrl-C stops every node.");
    let signal = signals.next().await;
    tracing::info!(signal, "stopping the demo cluster");
    for node in &nodes {
        node.cluster.close(Duration::from_secs(1)).await;
    }
    for node in nodes {
        node.broker.shutdown("demo over").await;
        node.server
            .close(
                ErrorCode::SERVER_SHUTTING_DOWN,
                "demo over",
                Duration::from_secs(1),
            )
            .await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn start_node(
    paths: &CertPaths,
    dir: &std::path::Path,
    name: &str,
    port: u16,
) -> anyhow::Result<DemoNode> {
    let config = BrokerConfig {
        cluster: Some(ClusterConfig::node(name)),
        ..BrokerConfig::default()
    };
    let broker = Broker::start(config).await.context("starting a broker")?;
    let crypto = tls::server_crypto(
        load_certs(&paths.ca)?,
        load_certs(&paths.server_cert)?,
        load_key(&paths.server_key)?,
    )?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let server = Arc::new(
        QuicServer::bind(listen, crypto, ServerOptions::default())
            .with_context(|| format!("listening on {listen}"))?,
    );
    tokio::spawn({
        let server = Arc::clone(&server);
        let broker = broker.clone();
        async move { server.serve(broker).await }
    });
    let (cert, key) = node_paths(dir, name);
    let tls = ClusterTls::build(
        load_certs(&paths.ca)?,
        load_certs(&cert)?,
        load_key(&key)?,
        Vec::new(),
        RevocationOptions::default(),
    )?;
    let mut options =
        ClusterOptions::new("demo", SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new());
    options.advertise = Some(
        server
            .local_addr()
            .context("reading a client address")?
            .to_string(),
    );
    let port_of_broker = broker
        .cluster()
        .context("the broker was started without its cluster settings")?;
    let cluster = ClusterNode::start(options, tls, port_of_broker)?;
    Ok(DemoNode {
        broker,
        server,
        cluster,
    })
}
