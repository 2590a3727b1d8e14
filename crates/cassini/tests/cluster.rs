//! Three `cassini serve` processes forming a cluster on loopback (docs/CLUSTERING.md), with node
//! certificates from `cassini certs init --node`: publish on one node, receive on the others;
//! then `kill -9` of a node: the others keep routing, it leaves routing within the failure
//! detection time, and its client, given only that node's address, moves to a node it learned
//! from `Welcome`; the CLI given `--server a,b` whose first address is dead uses the next;
//! wildcards, unsubscribe and cluster-wide no-responders; a queue group with members on every
//! node served once in total; a direct message to a session on another node; node and client
//! certificates refused on each other's address; a node certificate revoked on the running
//! nodes cuts that node off.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::{Client, Gap};
use cassini_e2e::{
    assert_echoed, assert_no_responders, closed_udp_addr, echo_service, raw_connect,
};
use cassini_quic::certs::NODE_SERVER_NAME;
use cassini_quic::cluster::CLUSTER_ALPN;
use cassini_quic::tls;
use harness::{cassini, certs, eventually, run, stdout, Broker, Serve};

/// Node `name` on cluster port 0, dialing `peers` (the nodes started before it; each dials
/// back the nodes that dial it, so the mesh is full).
fn node(dir: &Path, name: &str, peers: &[SocketAddr]) -> Broker {
    Serve::cluster_node(dir, name, "127.0.0.1:0", peers)
        .args(&["--monitor", "127.0.0.1:0"])
        .start()
}

/// Nodes n1, n2 and n3 in a full mesh, each with certificates from `dir`.
fn three_nodes(dir: &Path) -> Vec<Broker> {
    let nodes = harness::three_nodes(dir, |name, peers| node(dir, name, peers));
    for broker in &nodes {
        broker.wait_for_log_count("cluster link to a peer up", 2);
        broker.wait_for_log_count("cluster link from a peer up", 2);
    }
    nodes
}

async fn client(broker: &Broker, dir: &Path) -> Client {
    Client::builder(broker.addr())
        .cert_dir(dir, "dev")
        .server_name("localhost")
        .connect()
        .await
        .expect("client connects")
}

/// The body of `path` on `broker`'s monitoring endpoint (plain HTTP/1.0); `None` if unreadable.
fn monitored(broker: &Broker, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(broker.monitor()).ok()?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
}

/// `/clusterz` of `broker`; `Null` if unreadable.
fn clusterz(broker: &Broker) -> serde_json::Value {
    monitored(broker, "/clusterz")
        .and_then(|body| serde_json::from_str(&body).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[tokio::test]
async fn three_serve_processes_route_across_nodes_and_survive_a_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes = three_nodes(dir.path());

    let on2 = client(&nodes[1], dir.path()).await;
    let on3 = client(&nodes[2], dir.path()).await;
    // A client given node 3's address only, every setting at its default: it learns the
    // others from `Welcome`, and when node 3 dies it notices (it pings, knowing several
    // addresses) and moves to one of them.
    let mover = client(&nodes[2], dir.path()).await;
    let mut learned = mover.cluster_addresses();
    learned.sort();
    let mut every_node: Vec<String> = nodes.iter().map(|node| node.addr().to_string()).collect();
    every_node.sort();
    assert_eq!(
        learned, every_node,
        "Welcome lists every node's client address"
    );
    let mut moving = mover.subscribe("orders.>").await.expect("subscribe");
    let session_on_3 = mover.session_id();
    let mut sub2 = on2.subscribe("orders.>").await.expect("subscribe");
    let mut sub3 = on3.subscribe("orders.>").await.expect("subscribe");
    let publisher = client(&nodes[0], dir.path()).await;
    for i in 0..100u32 {
        publisher
            .publish("orders.new", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for subscription in [&mut sub2, &mut sub3] {
        for i in 0..100u32 {
            let message = tokio::time::timeout(Duration::from_secs(20), subscription.recv())
                .await
                .expect("in time")
                .expect("a message");
            assert_eq!(message.payload().as_ref(), i.to_be_bytes(), "in order");
        }
    }

    // kill -9 of node 3: node 1 keeps routing to node 2, and node 3 leaves routing.
    let killed_at = Instant::now();
    nodes[2].signal("KILL");
    for i in 100..110u32 {
        publisher
            .publish("orders.new", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for i in 100..110u32 {
        let message = tokio::time::timeout(Duration::from_secs(20), sub2.recv())
            .await
            .expect("node 2 keeps receiving")
            .expect("a message");
        assert_eq!(message.payload().as_ref(), i.to_be_bytes());
    }
    let killed = nodes.remove(2);
    let left = eventually("node 3 leaves node 1's routing", || {
        let view = clusterz(&nodes[0]);
        let peers = view["peers"].as_array()?;
        let n3 = peers.iter().find(|peer| peer["node"] == "n3")?;
        (n3["inbound"] == false).then_some(killed_at.elapsed())
    });
    assert!(
        left < Duration::from_secs(4),
        "a killed node leaves routing within the failure detection time (took {left:?})"
    );
    // The client of node 3 is on node 2 now, with a new session and a SessionLost gap; what
    // node 1 publishes reaches it again.
    let moved_at = Instant::now();
    let mut next = 110u32;
    let first = loop {
        publisher
            .publish("orders.new", Bytes::from(next.to_be_bytes().to_vec()))
            .await
            .expect("publish");
        next += 1;
        if let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_millis(200), moving.recv()).await
        {
            let bytes: [u8; 4] = message.payload().as_ref().try_into().expect("4 bytes");
            if u32::from_be_bytes(bytes) >= 110 {
                break message;
            }
        }
        assert!(
            moved_at.elapsed() < Duration::from_secs(20),
            "the client of the killed node never received on another node"
        );
    };
    drop(first);
    assert_ne!(
        mover.session_id(),
        session_on_3,
        "a session stays on its node: a new one"
    );
    let gaps = moving.take_gaps();
    assert!(
        gaps.iter()
            .any(|gap| matches!(gap, Gap::SessionLost { .. })),
        "moving to another node is an explicit SessionLost: {gaps:?}"
    );
    drop(killed);
}

#[tokio::test]
async fn cassini_demo_runs_a_three_node_cluster_in_one_process() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().to_str().expect("utf-8 path");
    let mut child =
        harness::cassini(&["demo", "--nodes", "3", "--base-port", "0", "--certs", certs])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn cassini demo");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_in, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_in.send(line).is_err() {
                return;
            }
        }
    });
    let mut addrs: Vec<SocketAddr> = Vec::new();
    loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the demo prints its addresses");
        if let Some((_, addr)) = line.split_once("clients at ") {
            addrs.push(addr.trim().parse().expect("an address"));
        }
        if line.contains("Ctrl-C") {
            break;
        }
    }
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    let connect = |addr: SocketAddr| {
        Client::builder(addr)
            .cert_dir(dir.path(), "dev")
            .server_name("localhost")
            .connect()
    };
    let subscriber = connect(addrs[2]).await.expect("connect to node 3");
    let mut subscription = subscriber.subscribe("demo.>").await.expect("subscribe");
    let publisher = connect(addrs[0]).await.expect("connect to node 1");
    publisher
        .publish("demo.hello", Bytes::from_static(b"hi"))
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(20), subscription.recv())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(message.payload().as_ref(), b"hi");
    harness::signal(child.id(), "INT");
    let status = harness::wait_with_deadline(&mut child);
    assert!(
        status.success(),
        "the demo stops cleanly on SIGINT: {status:?}"
    );
}

#[test]
fn the_cli_given_several_servers_skips_a_dead_first_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let certs = dir.path().to_str().expect("utf-8 path");
    let dead = closed_udp_addr();
    let servers = |node: &Broker| format!("{dead},{}", node.addr());
    let subscriber = harness::spawn_until(
        harness::cassini(&[
            "sub",
            "hello.>",
            "--count",
            "1",
            "--timeout",
            "30",
            "--raw",
            "--server",
            &servers(&nodes[2]),
            "--certs",
            certs,
            "--name",
            "dev",
        ]),
        "subscribed to hello.>",
    );
    let published = harness::output_within(
        harness::cassini(&[
            "pub",
            "hello.cluster",
            "across nodes",
            "--server",
            &servers(&nodes[0]),
            "--certs",
            certs,
            "--name",
            "dev",
        ]),
        Duration::from_secs(30),
    );
    assert!(
        published.status.success(),
        "{}",
        harness::stderr(&published)
    );
    let mut subscriber = subscriber;
    let mut pipe = subscriber.stdout.take().expect("stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        std::io::Read::read_to_string(&mut pipe, &mut out).expect("read");
        out
    });
    let status = harness::wait_with_deadline(&mut subscriber);
    assert!(status.success(), "sub gets its one message: {status}");
    let out = reader.join().expect("reader");
    assert!(out.contains("across nodes"), "{out:?}");
    drop(nodes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_apply_wildcards_unsubscribe_and_cluster_wide_no_responders() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let interest_of_n3 = || {
        let view = clusterz(&nodes[0]);
        let peers = view["peers"].as_array()?;
        let n3 = peers.iter().find(|peer| peer["node"] == "n3")?;
        n3["interest"].as_u64()
    };
    // Each peer's links, queue and round-trip time, in /clusterz and /metrics.
    eventually("node 1 measures both peers' round-trip times", || {
        let view = clusterz(&nodes[0]);
        let peers = view["peers"].as_array()?;
        (peers.len() == 2
            && peers
                .iter()
                .all(|peer| peer["rtt_micros"].as_u64() > Some(0)))
        .then_some(())
    });
    let metrics = monitored(&nodes[0], "/metrics").expect("/metrics");
    for peer in ["n2", "n3"] {
        for direction in ["inbound", "outbound"] {
            let up =
                format!("cassini_cluster_link_up{{peer=\"{peer}\",direction=\"{direction}\"}} 1");
            assert!(metrics.contains(&up), "{up} in:\n{metrics}");
        }
        let rtt = format!("cassini_cluster_rtt_seconds{{peer=\"{peer}\"}} ");
        assert!(metrics.contains(&rtt), "{rtt} in:\n{metrics}");
    }
    // And in `cassini top`: one line per peer with its state and round-trip time.
    let monitor = nodes[0].monitor().to_string();
    let top = run(&mut cassini(&["top", "--once", "--monitor", &monitor]));
    assert!(top.status.success(), "{top:?}");
    let screen = stdout(&top);
    assert!(
        screen.contains("CLUSTER node n1: 2 peers, 2 in routing"),
        "{screen}"
    );
    for peer in ["n2", "n3"] {
        let line = screen
            .lines()
            .find(|line| line.starts_with(peer))
            .unwrap_or_else(|| panic!("no line for {peer} in:\n{screen}"));
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[1], "up", "{line}");
        assert!(columns[2].ends_with("ms"), "an RTT: {line}");
    }

    let watcher = client(&nodes[2], dir.path()).await;
    let mut wide = watcher.subscribe("sensors.>").await.expect("subscribe");
    let mut narrow = watcher
        .subscribe("sensors.*.temp")
        .await
        .expect("subscribe");
    let publisher = client(&nodes[0], dir.path()).await;
    publisher
        .publish("sensors.kitchen.temp", Bytes::from_static(b"21"))
        .await
        .expect("publish");
    for subscription in [&mut wide, &mut narrow] {
        let message = tokio::time::timeout(Duration::from_secs(20), subscription.recv())
            .await
            .expect("in time")
            .expect("a message");
        assert_eq!(message.topic(), "sensors.kitchen.temp");
    }
    narrow.unsubscribe().await.expect("unsubscribe");
    wide.unsubscribe().await.expect("unsubscribe");
    eventually("node 1 forgets node 3's filters", || {
        (interest_of_n3()? == 0).then_some(())
    });
    assert_no_responders(&publisher, "sensors.kitchen.temp", "after the unsubscribe").await;

    // A responder on node 3 answers node 1; once it has left, nobody anywhere answers.
    let service = client(&nodes[2], dir.path()).await;
    let server = echo_service(&service, "svc.echo").await;
    assert_echoed(&publisher, "a reply from node 3").await;
    server.abort();
    service.close().await.expect("close");
    eventually("the responder's interest leaves node 1", || {
        (interest_of_n3()? == 0).then_some(())
    });
    assert_no_responders(&publisher, "svc.echo", "the only responder left").await;
}

/// The next message of `subscription`, within 20 s.
async fn next_within(
    what: &str,
    subscription: &mut cassini_client::Subscription,
) -> cassini_client::Message {
    tokio::time::timeout(Duration::from_secs(20), subscription.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} in time"))
        .expect("a message")
}

/// Reads `members` until `count` messages (payloads: a `u32` index) arrived in total; returns,
/// per member, the indexes it got. Then checks nothing more arrives.
async fn share_of_group(
    members: &mut [cassini_client::Subscription],
    count: usize,
) -> Vec<Vec<u32>> {
    let mut got = vec![Vec::new(); members.len()];
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.iter().map(Vec::len).sum::<usize>() < count {
        assert!(Instant::now() < deadline, "only {got:?} of {count}");
        for (member, got) in members.iter_mut().zip(&mut got) {
            if let Ok(Some(message)) =
                tokio::time::timeout(Duration::from_millis(20), member.recv()).await
            {
                let bytes: [u8; 4] = message.payload().as_ref().try_into().expect("4 bytes");
                got.push(u32::from_be_bytes(bytes));
            }
        }
    }
    for member in members.iter_mut() {
        let extra = tokio::time::timeout(Duration::from_millis(200), member.recv()).await;
        assert!(extra.is_err(), "a message beyond the {count}: {extra:?}");
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_serve_a_queue_group_spread_over_them_once_in_total() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let mut clients = Vec::new();
    let mut members = Vec::new();
    for node in &nodes {
        let client = client(node, dir.path()).await;
        members.push(
            client
                .subscribe_queue("jobs.*", "workers")
                .await
                .expect("join group"),
        );
        clients.push(client);
    }
    let mut publishers = Vec::new();
    for node in &nodes {
        publishers.push(client(node, dir.path()).await);
    }
    // Published on every node, each with a member of its own: each job once, locally.
    for i in 0..60u32 {
        publishers[i as usize % 3]
            .publish("jobs.resize", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    let got = share_of_group(&mut members, 60).await;
    for (index, got) in got.iter().enumerate() {
        assert!(
            got.iter().all(|i| *i as usize % 3 == index),
            "member {index} took only its node's jobs: {got:?}"
        );
        assert_eq!(got.len(), 20, "member {index}: {got:?}");
    }
    // Node 1's member leaves: its node's jobs go to the members on the other nodes, each once.
    let mut leaving = members.remove(0);
    leaving.unsubscribe().await.expect("leave");
    for i in 100..140u32 {
        publishers[0]
            .publish("jobs.resize", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    let got = share_of_group(&mut members, 40).await;
    let mut all: Vec<u32> = got.iter().flatten().copied().collect();
    all.sort_unstable();
    assert_eq!(all, (100..140).collect::<Vec<_>>(), "each job exactly once");
    assert!(
        got.iter().all(|got| !got.is_empty()),
        "both remote members take a share: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_serve_processes_carry_a_direct_message_to_a_session_on_another_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let target = client(&nodes[2], dir.path()).await;
    let mut for_target = target.subscribe("note.>").await.expect("subscribe");
    let neighbour = client(&nodes[2], dir.path()).await;
    let mut for_neighbour = neighbour.subscribe("note.>").await.expect("subscribe");
    let elsewhere = client(&nodes[1], dir.path()).await;
    let mut for_elsewhere = elsewhere.subscribe("note.>").await.expect("subscribe");
    let sender = client(&nodes[0], dir.path()).await;
    sender
        .send_to(
            target.session_id(),
            "note.private",
            Bytes::from_static(b"for target"),
        )
        .await
        .expect("send");
    sender
        .publish("note.public", Bytes::from_static(b"for everyone"))
        .await
        .expect("publish");
    // Order holds per publisher per topic; these are two topics, so either may come first.
    let mut got = [
        next_within("the first message", &mut for_target).await,
        next_within("the second message", &mut for_target).await,
    ];
    got.sort_by(|a, b| a.payload().cmp(b.payload()));
    assert_eq!(got[0].payload().as_ref(), b"for everyone");
    assert_eq!(got[1].payload().as_ref(), b"for target");
    for subscription in [&mut for_neighbour, &mut for_elsewhere] {
        let message = next_within("the public message", subscription).await;
        assert_eq!(message.payload().as_ref(), b"for everyone");
        assert_eq!(
            message.sequence(),
            1,
            "only the target got the direct message"
        );
    }
}

/// The TLS alert code that ended `connection`'s attempt, if a TLS alert did.
fn tls_alert(error: &quinn::ConnectionError) -> Option<u64> {
    let code = match error {
        quinn::ConnectionError::ConnectionClosed(close) => u64::from(close.error_code),
        quinn::ConnectionError::TransportError(error) => u64::from(error.code),
        _ => return None,
    };
    (0x100..0x200).contains(&code).then(|| code - 0x100)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_serve_node_refuses_a_node_certificate_as_a_client_and_a_client_certificate_as_a_node() {
    let dir = tempfile::tempdir().expect("tempdir");
    certs(dir.path(), &["init", "--node", "n1", "--node", "n2"]);
    let n1 = node(dir.path(), "n1", &[]);
    let cluster_addr = n1.cluster_addr();
    let ca = tls::load_certs(&dir.path().join("ca.crt")).expect("ca");
    let identity = |kind: &str| {
        (
            tls::load_certs(&dir.path().join(format!("{kind}.crt"))).expect("certificate"),
            tls::load_key(&dir.path().join(format!("{kind}.key"))).expect("key"),
        )
    };

    // A node certificate on the client address (ALPN cassini/1): refused.
    let (chain, key) = identity("node-n2");
    let (_endpoint, connection) = raw_connect(n1.addr(), ca.clone(), chain, key)
        .await
        .expect("the handshake itself completes on the client side");
    let refused = tokio::time::timeout(Duration::from_secs(20), connection.closed())
        .await
        .expect("closed in time");
    assert_eq!(
        tls_alert(&refused),
        Some(46),
        "a node as a client: {refused}"
    );

    // A client certificate on the cluster address (ALPN cassini-cluster/1): refused.
    let (chain, key) = identity("client-dev");
    let mut crypto = Arc::unwrap_or_clone(tls::client_crypto(ca, chain, key).expect("TLS"));
    crypto.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
    let options = tls::QuicOptions::default();
    let config = tls::client_config(Arc::new(crypto), &options).expect("quinn config");
    let endpoint = cassini_quic::endpoint::bind_client(
        "127.0.0.1:0".parse().expect("addr"),
        config.clone(),
        &options,
    )
    .expect("endpoint");
    let attempt = endpoint
        .connect_with(config, cluster_addr, NODE_SERVER_NAME)
        .expect("connecting");
    let refused = match tokio::time::timeout(Duration::from_secs(20), attempt)
        .await
        .expect("in time")
    {
        Err(error) => error,
        Ok(connection) => tokio::time::timeout(Duration::from_secs(20), connection.closed())
            .await
            .expect("closed in time"),
    };
    assert_eq!(
        tls_alert(&refused),
        Some(46),
        "a client as a node: {refused}"
    );
}

/// Whether `broker`'s `/clusterz` shows its links with `peer`, as `(outbound, inbound)`.
fn links_with(broker: &Broker, peer: &str) -> Option<(bool, bool)> {
    let view = clusterz(broker);
    let peers = view["peers"].as_array()?;
    let entry = peers.iter().find(|entry| entry["node"] == peer)?;
    Some((entry["outbound"].as_bool()?, entry["inbound"].as_bool()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_certificate_ends_its_links_and_the_node_stays_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nodes = three_nodes(dir.path());
    let on2 = client(&nodes[1], dir.path()).await;
    let mut sub2 = on2.subscribe("feed").await.expect("subscribe");
    let publisher = client(&nodes[0], dir.path()).await;

    // `cassini certs revoke --node n3`: nodes 1 and 2, watching the directory, reload the CRL
    // and close their links with node 3, both directions.
    let output = certs(dir.path(), &["revoke", "--node", "n3"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("revoked node-n3.crt"),
        "the command says what it revoked"
    );
    for broker in &nodes[..2] {
        broker.wait_for_log_count("closed a cluster link", 1);
        eventually("node 3 leaves routing and loses its link", || {
            (links_with(broker, "n3")? == (false, false)).then_some(())
        });
    }
    // Node 3 keeps dialing, and is refused in the handshake: its certificate is revoked.
    for broker in &nodes[..2] {
        broker.wait_for_log_count(
            "handshake failed: error 44: invalid peer certificate: Revoked",
            1,
        );
    }
    for broker in &nodes[..2] {
        assert_eq!(
            links_with(broker, "n3"),
            Some((false, false)),
            "a refused node stays out"
        );
    }
    // Nodes 1 and 2 keep their links: what node 1 publishes reaches node 2.
    assert_eq!(links_with(&nodes[0], "n2"), Some((true, true)));
    publisher
        .publish("feed", Bytes::from_static(b"after"))
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(20), sub2.recv())
        .await
        .expect("in time")
        .expect("a message");
    assert_eq!(message.payload().as_ref(), b"after");
}
