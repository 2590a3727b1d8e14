//! Membership changes with `cassini serve` processes (docs/CLUSTERING.md, "Membership
//! changes"): three members, a fourth started and added with `cassini cluster add n4`, then
//! claims on n4 work; `cassini cluster remove n1`, n1 stopped, and the other three still claim
//! sessions (a majority of the three remaining voters); n1 replaced by an empty node of the
//! same name, added again, serves claims.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use cassini_client::{Client, ConnectionState, DisconnectReason};
use harness::{Broker, Serve};

const INITIALIZED: &str = "initialized the cluster's Raft group";
const TOKEN: &str = "membership-test-token";

/// Node `name` on cluster port 0, in memory, with Raft members `members`, dialing `peers`,
/// its monitoring endpoint requiring [`TOKEN`].
fn node(dir: &Path, name: &str, peers: &[SocketAddr], members: &[&str]) -> Broker {
    let mut serve = Serve::cluster_node(dir, name, "127.0.0.1:0", peers)
        .args(&["--monitor", "127.0.0.1:0", "--monitor-token-file"])
        .arg(dir.join("monitor.token"));
    for member in members {
        serve = serve.args(&["--cluster-member", member]);
    }
    serve.start()
}

/// `cassini cluster ARGS` against `broker`'s monitoring endpoint with the token.
fn cluster(dir: &Path, broker: &Broker, args: &[&str]) -> Output {
    let mut command = harness::cassini(&["cluster"]);
    command
        .args(args)
        .arg("--monitor")
        .arg(broker.monitor().to_string())
        .arg("--monitor-token-file")
        .arg(dir.join("monitor.token"));
    harness::output_within(command, Duration::from_secs(20))
}

/// A client of `broker` attached to the session named `name`; retried for a while, since a
/// claim is refused (`NO_QUORUM`) while the group elects a leader.
async fn named_client(broker: &Broker, dir: &Path, name: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let connected = Client::builder(broker.addr())
            .cert_dir(dir, "dev")
            .server_name("localhost")
            .session_name(name)
            .connect()
            .await;
        match connected {
            Ok(client) => return client,
            Err(err) if Instant::now() < deadline => {
                eprintln!("not yet: {err}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => panic!("the claim was never committed: {err}"),
        }
    }
}

async fn taken_over(client: &Client) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let ConnectionState::Disconnected { reason } = client.state() {
            assert_eq!(reason, DisconnectReason::SessionTakenOver);
            return;
        }
        assert!(Instant::now() < deadline, "still {}", client.state());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_fourth_node_added_serves_claims_and_the_three_left_after_a_removal_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    std::fs::write(dir.join("monitor.token"), format!("{TOKEN}\n")).expect("token file");
    let three = ["n1", "n2", "n3"];
    let mut nodes = harness::three_nodes(dir, |name, peers| node(dir, name, peers, &three));
    nodes[0].wait_for_log(INITIALIZED);
    harness::certs(dir, &["issue", "--node", "n4"]);
    // n4 lists the members it joins and itself; it dials them and they dial it back.
    let peers: Vec<SocketAddr> = nodes.iter().map(Broker::cluster_addr).collect();
    nodes.push(node(dir, "n4", &peers, &["n1", "n2", "n3", "n4"]));

    // Asked of a follower or the leader alike: a follower forwards it to the leader.
    let added = cluster(dir, &nodes[1], &["add", "n4"]);
    let out = harness::stdout(&added);
    assert!(added.status.success(), "{out}{}", harness::stderr(&added));
    harness::assert_contains(&out, "voters    n1 n2 n3 n4");
    let on_n4 = named_client(&nodes[3], dir, "orders").await;

    let removed = cluster(dir, &nodes[2], &["remove", "n1"]);
    let out = harness::stdout(&removed);
    assert!(
        removed.status.success(),
        "{out}{}",
        harness::stderr(&removed)
    );
    harness::assert_contains(&out, "voters    n2 n3 n4");
    nodes[0].kill();

    // The three left claim sessions, and a takeover from n2 fences n4's connection.
    let on_n2 = named_client(&nodes[1], dir, "orders").await;
    taken_over(&on_n4).await;
    let _on_n3 = named_client(&nodes[2], dir, "billing").await;
    let _on_n4 = named_client(&nodes[3], dir, "audit").await;

    let members = cluster(dir, &nodes[3], &["members"]);
    let out = harness::stdout(&members);
    assert!(
        members.status.success(),
        "{out}{}",
        harness::stderr(&members)
    );
    harness::assert_contains(&out, "voters    n2 n3 n4");
    assert!(!out.contains("leader    n1"), "{out}");

    // Clear refusals.
    let again = cluster(dir, &nodes[1], &["remove", "n1"]);
    assert!(!again.status.success());
    harness::assert_contains(&harness::stderr(&again), "\"n1\" is not a member");
    let unknown = cluster(dir, &nodes[1], &["add", "n9"]);
    assert!(!unknown.status.success());
    harness::assert_contains(&harness::stderr(&unknown), "unknown node \"n9\"");

    // n1 replaced: the same name, an empty state (memory mode), added again. It catches up
    // and serves a takeover, and never makes a group of its own.
    let peers: Vec<SocketAddr> = nodes[1..].iter().map(Broker::cluster_addr).collect();
    let fresh = node(dir, "n1", &peers, &three);
    let added = cluster(dir, &nodes[3], &["add", "n1"]);
    let out = harness::stdout(&added);
    assert!(added.status.success(), "{out}{}", harness::stderr(&added));
    harness::assert_contains(&out, "voters    n1 n2 n3 n4");
    let _on_fresh = named_client(&fresh, dir, "orders").await;
    taken_over(&on_n2).await;
    assert_eq!(fresh.log_count(INITIALIZED), 0, "no second group");
}
