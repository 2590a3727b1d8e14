//! Three `cassini serve` processes with `--cluster-member` and `--storage disk`
//! (docs/CLUSTERING.md, "Session ownership"): the first member initializes the Raft group once;
//! a named session taken over on another node ends the old client with `SESSION_TAKEN_OVER`
//! (and `/clusterz` shows the group);
//! after `kill -9` the first member restarts on its Raft file and claims through the same group
//! without initializing another.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use cassini_client::{Client, ConnectionState, DisconnectReason};
use harness::{clients, Broker, Serve, RAFT_INITIALIZED};

/// Member `name` on cluster port 0 with its disk store in `dir/data-NAME`, dialing `peers`.
fn member(dir: &Path, name: &str, peers: &[SocketAddr]) -> Broker {
    Serve::cluster_member(dir, name, peers)
        .args(&["--monitor", "127.0.0.1:0"])
        .on_disk(&dir.join(format!("data-{name}")))
        .start()
}

/// A client of `broker` attached to the session named `name`; retried for a while, since a
/// claim is refused (`NO_QUORUM`) until the group has a leader.
async fn named_client(broker: &Broker, dir: &Path, name: &str) -> Client {
    clients::connect_retrying(|| clients::named(broker.addr(), dir, name)).await
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
async fn members_fence_a_cross_node_takeover_and_the_first_restarts_on_its_raft_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let dir = dir.path();
    let mut nodes = harness::three_nodes(dir, |name, peers| member(dir, name, peers));
    nodes[0].wait_for_log(RAFT_INITIALIZED);

    let on_n1 = named_client(&nodes[0], dir, "orders").await;
    let on_n2 = named_client(&nodes[1], dir, "orders").await;
    taken_over(&on_n1).await;
    let raft = &nodes[1].clusterz()["raft"];
    assert_eq!(raft["node"], "n2", "{raft}");
    assert_eq!(raft["members"].as_array().map(Vec::len), Some(3), "{raft}");
    assert!(raft["leader"].is_string(), "{raft}");
    assert_eq!(raft["claims"], 1, "{raft}");
    for name in ["n1", "n2", "n3"] {
        assert!(dir.join(format!("data-{name}/raft.redb")).exists());
    }

    // kill -9 of n1, the member that initialized the group; it restarts on its Raft file.
    nodes[0].signal("KILL");
    let killed = nodes.remove(0);
    drop(killed);
    let peers: Vec<SocketAddr> = nodes.iter().map(Broker::cluster_addr).collect();
    let restarted = member(dir, "n1", &peers);
    let _on_n1_again = named_client(&restarted, dir, "orders").await;
    taken_over(&on_n2).await;
    assert_eq!(
        restarted.log_count(RAFT_INITIALIZED),
        0,
        "a member with a Raft log never initializes a group again"
    );
}
