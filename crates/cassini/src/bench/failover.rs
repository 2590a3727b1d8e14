//! Failover after `kill -9`, measured from outside: three `cassini serve` processes form a
//! cluster on loopback (certificates made in a temporary directory), a publisher on one node
//! publishes a timestamped message every millisecond, and a subscriber given every node's
//! address (the node to kill first) receives them. The time measured runs from the kill to the
//! first message the subscriber receives that was published after it, with every client and
//! broker setting at its default. The killed node is restarted between rounds.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, Subscription};
use cassini_quic::certs::{init_dir, InitOptions};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::child::{free_udp_addr, ChildProcess, ScratchDir};

/// The topic the publisher stamps.
const TOPIC: &str = "bench.failover";
/// How long one round may take before it counts as failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Node names; the publisher stays on the middle one.
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PUBLISHER_NODE: usize = 1;

/// One `cassini serve` of the cluster.
struct Node {
    name: &'static str,
    client: SocketAddr,
    cluster: SocketAddr,
    process: Option<ChildProcess>,
}

impl Node {
    fn start(&mut self, certs: &str, peers: &[SocketAddr]) -> anyhow::Result<()> {
        let (client, cluster) = (self.client.to_string(), self.cluster.to_string());
        let mut args = vec![
            "serve",
            "--listen",
            &client,
            "--certs",
            certs,
            "--cluster",
            "bench",
            "--node",
            self.name,
            "--cluster-listen",
            &cluster,
        ];
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        for peer in &peers {
            args.extend(["--peer", peer.as_str()]);
        }
        self.process = Some(ChildProcess::start(&args, "cassini listening")?);
        Ok(())
    }
}

/// Microseconds since the Unix epoch, as the publisher stamps them.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
        })
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

fn client(certs: &Path, name: &str, addresses: Vec<String>) -> cassini_client::ClientBuilder {
    Client::builder(addresses)
        .cert_dir(certs, name)
        .server_name("localhost")
}

/// Publishes a stamped message every millisecond until `stop`.
fn publish_every_millisecond(publisher: Client, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.is_cancelled() {
            tick.tick().await;
            let payload = Bytes::copy_from_slice(&now_micros().to_be_bytes());
            // While a publish fails (it never should: this node stays up) keep the pace.
            let _ = publisher.publish(TOPIC, payload).await;
        }
    })
}

/// Waits for a message stamped at or after `since` (microseconds since the epoch).
async fn first_stamped_after(subscription: &mut Subscription, since: u64) -> anyhow::Result<()> {
    while let Some(message) = subscription.next().await {
        if stamp_of(message.payload()).is_some_and(|stamp| stamp >= since) {
            return Ok(());
        }
    }
    anyhow::bail!("the subscription ended")
}

/// Kills a subscriber's node `rounds` times and returns how long each subscriber took to
/// receive again on another node.
pub(crate) async fn measure(rounds: u32) -> anyhow::Result<Vec<Duration>> {
    let dir = ScratchDir::new()?;
    init_dir(
        dir.path(),
        &InitOptions {
            clients: vec!["publisher".into(), "subscriber".into()],
            nodes: NODES.iter().map(ToString::to_string).collect(),
            ..InitOptions::default()
        },
    )
    .context("bench certificates")?;
    let certs = dir.path().to_str().context("temporary directory path")?;
    let mut nodes = Vec::new();
    for name in NODES {
        nodes.push(Node {
            name,
            client: free_udp_addr()?,
            cluster: free_udp_addr()?,
            process: None,
        });
    }
    let peers: Vec<SocketAddr> = nodes.iter().map(|node| node.cluster).collect();
    for node in &mut nodes {
        node.start(certs, &peers)?;
    }
    let publisher = client(
        dir.path(),
        "publisher",
        vec![nodes[PUBLISHER_NODE].client.to_string()],
    )
    .connect()
    .await
    .context("connecting the publisher")?;
    let stop = CancellationToken::new();
    let publishing = publish_every_millisecond(publisher.clone(), stop.clone());

    let mut times = Vec::new();
    for round in 0..rounds {
        let victim = if round % 2 == 0 { 0 } else { 2 };
        let survivor = 2 - victim;
        let addresses = [victim, survivor, PUBLISHER_NODE]
            .iter()
            .map(|&index| nodes[index].client.to_string())
            .collect();
        let measured = tokio::time::timeout(ROUND_TIMEOUT, async {
            let subscriber = client(dir.path(), "subscriber", addresses)
                .connect()
                .await
                .context("connecting the subscriber")?;
            let mut subscription = subscriber.subscribe(TOPIC).await?;
            // Interest has reached the publisher's node once a fresh message arrives.
            first_stamped_after(&mut subscription, now_micros()).await?;
            nodes[victim].process = None;
            let killed_at = (Instant::now(), now_micros());
            first_stamped_after(&mut subscription, killed_at.1).await?;
            let elapsed = killed_at.0.elapsed();
            let _ = subscriber.close().await;
            anyhow::Ok(elapsed)
        })
        .await
        .with_context(|| format!("failover round {round} took over {ROUND_TIMEOUT:?}"))??;
        tracing::info!(round, seconds = measured.as_secs_f64(), "failover measured");
        times.push(measured);
        nodes[victim].start(certs, &peers)?;
    }
    stop.cancel();
    let _ = publishing.await;
    let _ = publisher.close().await;
    Ok(times)
}
