//! Three `cassini serve` processes forming a cluster on loopback (docs/CLUSTERING.md), with node
//! certificates from `cassini certs init --node`: publish on one node, receive on the others;
//! then `kill -9` of a node: the others keep routing, it leaves routing within the failure
//! detection time, and its client, given only that node's address, moves to a node it learned
//! from `Welcome`. The CLI given `--server a,b` whose first address is dead uses the next.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::{Client, Gap};
use harness::{certs, eventually, Broker, Serve};

/// A free UDP port on loopback for each node's cluster address (the peer lists name them before
/// the nodes start).
fn free_cluster_addrs(count: usize) -> Vec<SocketAddr> {
    let sockets: Vec<UdpSocket> = (0..count)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    sockets
        .iter()
        .map(|socket| socket.local_addr().expect("address"))
        .collect()
}

fn node(dir: &Path, name: &str, listen: SocketAddr, peers: &[SocketAddr]) -> Broker {
    let mut serve = Serve::new(&["--certs"])
        .arg(dir)
        .args(&[
            "--cluster",
            "test",
            "--node",
            name,
            "--monitor",
            "127.0.0.1:0",
        ])
        .args(&["--cluster-listen", &listen.to_string()])
        .env("RUST_LOG", "info");
    for peer in peers {
        serve = serve.args(&["--peer", &peer.to_string()]);
    }
    serve.start()
}

async fn client(broker: &Broker, dir: &Path) -> Client {
    Client::builder(broker.addr())
        .cert_dir(dir, "dev")
        .server_name("localhost")
        .connect()
        .await
        .expect("client connects")
}

/// `/clusterz` of `broker` (plain HTTP/1.0 on its monitoring endpoint); `Null` if unreadable.
fn clusterz(broker: &Broker) -> serde_json::Value {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(broker.monitor()) else {
        return serde_json::Value::Null;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    if stream
        .write_all(b"GET /clusterz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return serde_json::Value::Null;
    }
    let mut response = String::new();
    if stream.read_to_string(&mut response).is_err() {
        return serde_json::Value::Null;
    }
    response
        .split_once("\r\n\r\n")
        .and_then(|(_, body)| serde_json::from_str(body).ok())
        .unwrap_or(serde_json::Value::Null)
}

/// Three nodes `n1`..`n3` with certificates in `dir`, once every link is up.
fn three_nodes(dir: &Path) -> Vec<Broker> {
    certs(
        dir,
        &["init", "--node", "n1", "--node", "n2", "--node", "n3"],
    );
    let addrs = free_cluster_addrs(3);
    let nodes: Vec<Broker> = ["n1", "n2", "n3"]
        .iter()
        .zip(&addrs)
        .map(|(name, &listen)| node(dir, name, listen, &addrs))
        .collect();
    for broker in &nodes {
        broker.wait_for_log_count("cluster link to a peer up", 2);
        broker.wait_for_log_count("cluster link from a peer up", 2);
    }
    nodes
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
    let dead = free_cluster_addrs(1)[0];
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
