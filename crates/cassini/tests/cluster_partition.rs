//! A cluster node cut off by a real link going down, then healed (docs/CLUSTERING.md): three
//! `cassini serve` processes, nodes 1 and 2 in this test's network namespace, node 3 in a
//! namespace of its own behind a veth pair. While the link is down the others keep routing and
//! node 3 leaves routing; after the heal the mesh forms again, interest made during the cut
//! converges, and node 3's subscriber has every message or a gap for it, never a silent hole.
//!
//! Needs root and `ip netns`; without them the test says why and passes without running. It
//! touches nothing outside the namespace and veth pair it makes (deleted at the end).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harness::clients::client;
use harness::island::{Island, HOST_IP, ISLAND_IP as NODE3_IP};
use harness::{certs, wait_for_line, Broker, Running, Serve, CASSINI};

impl Island {
    /// `cassini sub TOPIC --json` inside the island against `node` as `name`.
    fn subscriber(&self, node: &Broker, dir: &Path, topic: &str, name: &str) -> Subscriber {
        let mut command = std::process::Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(CASSINI)
            .args(["sub", topic, "--json", "--server"])
            .arg(node.addr().to_string())
            .args(["--name", name, "--certs"])
            .arg(dir)
            .env_remove("RUST_LOG");
        let (process, stdout, stderr) = Running::piped(command);
        wait_for_line(&stderr, "the subscription", |line| {
            line.starts_with("subscribed")
        });
        Subscriber {
            _process: process,
            stdout,
        }
    }
}

/// A `cassini sub --json` and its output.
struct Subscriber {
    _process: Running,
    stdout: mpsc::Receiver<String>,
}

impl Subscriber {
    /// `(sequence, payload)` of every message printed until one has payload `last`.
    fn until(&self, last: u32) -> Vec<(u64, u32)> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while seen.last().map(|&(_, payload)| payload) != Some(last) {
            let left = deadline
                .checked_duration_since(Instant::now())
                .unwrap_or_else(|| panic!("message {last} never arrived: {seen:?}"));
            let line = self.stdout.recv_timeout(left).expect("a message line");
            let json: serde_json::Value = serde_json::from_str(&line).expect("a JSON line");
            let sequence = json["sequence"].as_u64().expect("a sequence");
            let payload = json["payload"]
                .as_str()
                .and_then(|text| text.parse().ok())
                .expect("a numbered payload");
            seen.push((sequence, payload));
        }
        seen
    }
}

/// Node `name` with its cluster address on `listen`, dialing `peers`, run through `wrapper`.
fn node(dir: &Path, name: &str, listen: &str, peers: &[SocketAddr], wrapper: &[&str]) -> Broker {
    Serve::cluster_node(dir, name, listen, peers)
        .wrapped_in(wrapper)
        .start()
}

/// Where `port` of a node bound to `0.0.0.0` is reached from `ip`.
fn at(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("an address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_by_a_link_down_and_healed_converges_and_loses_nothing_silently() {
    let island = match Island::create() {
        Ok(island) => island,
        Err(reason) => {
            eprintln!("skipping: network namespaces are not available here ({reason})");
            return;
        }
    };
    let dir = tempfile::tempdir().expect("tempdir");
    certs(
        dir.path(),
        &[
            "init", "--node", "n1", "--node", "n2", "--node", "n3", "--client", "edge", "--client",
            "late", "--client", "feeder", "--client", "watcher",
        ],
    );
    // Nodes 1 and 2 reach each other on loopback and node 3 over the veth pair; node 3 dials
    // them, and they dial it back.
    let n1 = node(dir.path(), "n1", "0.0.0.0:0", &[], &[]);
    let p1 = n1.cluster_addr().port();
    let n2 = node(dir.path(), "n2", "0.0.0.0:0", &[at("127.0.0.1", p1)], &[]);
    let p2 = n2.cluster_addr().port();
    let n3 = node(
        dir.path(),
        "n3",
        &format!("{NODE3_IP}:0"),
        &[at(HOST_IP, p1), at(HOST_IP, p2)],
        &island.wrapper(),
    );
    for broker in [&n1, &n2, &n3] {
        broker.wait_for_log_count("cluster link to a peer up", 2);
        broker.wait_for_log_count("cluster link from a peer up", 2);
    }

    let edge = island.subscriber(&n3, dir.path(), "feed", "edge");
    let watcher = client(&n2.addr().to_string(), dir.path(), "watcher").await;
    let mut on2 = watcher.subscribe("feed").await.expect("subscribe");
    let publisher = client(&n1.addr().to_string(), dir.path(), "feeder").await;
    // Messages 0..10 before the cut, 10..30 while node 3 is still thought to be up, 30..35
    // once it is out of routing, 35..40 after the heal.
    const TOTAL: u32 = 40;
    let send = |range: std::ops::Range<u32>| {
        let publisher = publisher.clone();
        async move {
            for i in range {
                publisher
                    .publish("feed", Bytes::from(i.to_string()))
                    .await
                    .expect("publish");
            }
        }
    };
    send(0..10).await;
    assert_eq!(edge.until(9).len(), 10, "before the cut, every message");

    // The link goes down: node 2 keeps receiving, node 3 leaves node 1's routing.
    island.set_link(false);
    send(10..30).await;
    for i in 0..30 {
        let message = tokio::time::timeout(Duration::from_secs(20), on2.recv())
            .await
            .expect("node 2 keeps receiving")
            .expect("a message");
        assert_eq!(message.payload().as_ref(), i.to_string().as_bytes());
    }
    // Both directions between node 3 and each other node end (idle timeout), so that the
    // heal makes new links rather than reviving these.
    for broker in [&n1, &n2] {
        broker.wait_for_log_count("cluster link from a peer down", 1);
        broker.wait_for_log_count("cluster link to a peer down", 1);
    }
    send(30..35).await;
    // Interest made during the cut reaches the others once healed.
    let late = island.subscriber(&n3, dir.path(), "late", "late");
    // The cut outlasts the unsettled wait: node 3 takes what each peer held for it as gone
    // and announces a floor, one lost message on every subscription per peer. Node 1 comes
    // back as the same incarnation and announces its exact count besides.
    n3.wait_for_log_count("its counts are gone", 2);
    const FLOORS: u64 = 2;

    island.set_link(true);
    for broker in [&n1, &n2] {
        broker.wait_for_log_count("cluster link to a peer up", 3);
        broker.wait_for_log_count("cluster link from a peer up", 3);
    }
    send(35..TOTAL).await;
    let seen = edge.until(TOTAL - 1);
    let all: Vec<(u64, u32)> = (1..=10).zip(0..10).chain(seen).collect();
    assert!(
        all.windows(2)
            .all(|pair| pair[0].0 < pair[1].0 && pair[0].1 < pair[1].1),
        "in order: {all:?}"
    );
    assert_eq!(
        all.last().map(|&(sequence, _)| sequence),
        Some(u64::from(TOTAL) + FLOORS),
        "every message published took a sequence number, and each floor one: received or in a gap ({all:?})"
    );
    assert!(
        all.len() < TOTAL as usize,
        "the cut lost something (and said so)"
    );

    // The late subscriber's interest converged: what node 1 publishes reaches it.
    let started = Instant::now();
    let mut got_late = Vec::new();
    while got_late.is_empty() {
        publisher
            .publish("late", Bytes::from_static(b"0"))
            .await
            .expect("publish");
        if let Ok(line) = late.stdout.recv_timeout(Duration::from_millis(200)) {
            got_late.push(line);
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "interest made during the cut never reached node 1"
        );
    }
}
