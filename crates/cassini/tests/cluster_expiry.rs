//! Sessions whose node died are released and expired by the cluster (issue 19;
//! docs/CLUSTERING.md, "A node out of contact" and "Expiry"): three `cassini serve` processes
//! with `--cluster-member`, a short `--session-expiry`, and a named session on node 1 whose
//! node is killed with `kill -9` and never started again. The leader releases the dead node's
//! claim once its lease has run out (so the identity's bound has room again), then expires
//! the session: its claim and records are gone from the survivors (`/clusterz`), and a client
//! naming it afterwards gets a new session.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::path::Path;
use std::time::Duration;

use cassini_client::{ConnectionState, ReconnectPolicy};
use cassini_e2e::eventually;
use harness::clients::{connect_retrying, named};
use harness::{Broker, Serve, RAFT_INITIALIZED};

/// `sessions.expiry` of every node, in seconds: short, so the test sees it pass.
const EXPIRY_SECS: &str = "4";

/// The log line of the leader that releases a dead node's claims.
const RELEASED: &str = "a member out of contact beyond its lease";

/// The log line of the leader that expires released sessions.
const EXPIRED: &str = "released sessions expired";

/// Members n1, n2 and n3 with a short session expiry, and one session per identity, once n1
/// made the Raft group.
fn cluster(dir: &Path) -> Vec<Broker> {
    let nodes = harness::three_nodes(dir, |name, peers| {
        Serve::cluster_member(dir, name, peers)
            .args(&["--session-expiry", EXPIRY_SECS])
            .args(&["--monitor", "127.0.0.1:0"])
            .env("CASSINI_LIMITS_MAX_SESSIONS_PER_IDENTITY", "1")
            .start()
    });
    nodes[0].wait_for_log(RAFT_INITIALIZED);
    nodes
}

/// How many sessions have an owner in `broker`'s claims table (`/clusterz`); `None` if
/// unreadable.
fn claims(broker: &Broker) -> Option<u64> {
    broker.clusterz()["raft"]["claims"].as_u64()
}

#[tokio::test]
async fn a_session_whose_node_died_for_good_is_released_then_expired_by_the_cluster() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let mut nodes = cluster(dir);

    let on_n1 = connect_retrying(|| {
        named(nodes[0].addr(), dir, "expiring").reconnect(ReconnectPolicy::disabled())
    })
    .await;
    let _subscription = on_n1
        .subscribe("orders.>")
        .await
        .expect("a subscription, so the session has records");
    on_n1.ping().await.expect("node 1 answers");
    eventually("node 2 applies the claim", || async {
        (claims(&nodes[1]) == Some(1)).then_some(())
    })
    .await;

    // Node 1 dies with the session attached and never comes back.
    nodes[0].kill();
    let killed = std::time::Instant::now();

    // The identity's one session is held by the dead node's claim until the leader releases
    // it; then another session of the identity is allowed.
    let other = connect_retrying(|| {
        named(nodes[1].addr(), dir, "another").reconnect(ReconnectPolicy::disabled())
    })
    .await;
    eprintln!(
        "a second session of the identity after {:?}",
        killed.elapsed()
    );
    assert!(
        nodes[1..].iter().any(|node| node.log_count(RELEASED) > 0),
        "the leader logged the release"
    );
    other.close().await.expect("the second session ends");

    // Then the dead node's session expires: the survivors forget its claim and records.
    eventually("the released sessions expire on the survivors", || async {
        nodes[1..]
            .iter()
            .all(|node| claims(node) == Some(0))
            .then_some(())
    })
    .await;
    eprintln!("expired after {:?}", killed.elapsed());
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "not before its expiry: {:?}",
        killed.elapsed()
    );
    assert!(
        nodes[1..].iter().any(|node| node.log_count(EXPIRED) > 0),
        "the leader logged the expiry"
    );

    let resumed = connect_retrying(|| named(nodes[2].addr(), dir, "expiring")).await;
    let state = resumed.state();
    assert!(
        matches!(state, ConnectionState::Connected { resumed: false, .. }),
        "an expired session is not resumed: {state}"
    );
    assert!(
        resumed.unclaimed_subscriptions().is_empty(),
        "a new session has no subscriptions"
    );
}
