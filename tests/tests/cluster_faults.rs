//! The fault suite's checker over a three-node cluster (docs/CLUSTERING.md, docs/TESTING.md
//! "Fault injection"): three brokers in one process over real QUIC, a publisher and subscribers
//! on every node, one node's cluster socket partitioned and healed, then one node killed, and
//! the whole run's history checked (`cassini_e2e::history`).
//!
//! What the cluster promises, and so what is checked: on the publisher's own node, an
//! at-least-once subscription gets every acknowledged publish; across nodes delivery is at most
//! once, in order per publisher, and every acknowledged publish a subscription matched arrives
//! or is announced by a gap where the publisher's order puts it (a `ClusterRoute` gap for a
//! route's loss, a `SessionLost` for a client that moved off a killed node).
//!
//! A queue group has a member on every node but the partitioned one, so that node's publishes
//! cross to the others (round robin), and are lost to the group while it is cut off. The group's
//! promise under faults: each publish reaches at most one member, and every acknowledged publish
//! it matched reached a member, or a member announced a lost sequence for it (`ClusterRoute`),
//! or it was lost with the session of a member on the killed node.
//!
//! The victims and the times are drawn from one seed, printed at the start. Replay with
//! `CASSINI_FAULT_SEED=<seed> cargo test -p cassini-e2e --test cluster_faults`; lengthen the load
//! with `CASSINI_FAULT_SECS=<seconds>` (CI runs 8 s, and on until a second after the
//! killed node's clients have moved).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cassini_broker::cluster::ClusterConfig;
use cassini_broker::BrokerConfig;
use cassini_client::{BrokerAddress, Client, ConnectionState, QuicOptions};
use cassini_e2e::cluster::{dial_full_mesh, meshed_with, start_endpoint};
use cassini_e2e::edge::wait_for_state;
use cassini_e2e::history::{
    fault_seed, load_time, publish_while, quick_reconnect, History, Promise,
};
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{eventually, within, Pki, TestBroker};
use cassini_quic::cluster::{ClusterNode, ClusterOptions};
use cassini_quic::faults::{FaultControl, FaultPlan};
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Messages per second from each node's publisher.
const RATE: u32 = 50;

/// One node: a broker whose clients reach it through a relay (cut when the node is killed, so
/// its clients hear nothing more, not even a goodbye), and a cluster endpoint whose socket is
/// under `link` (a black hole partitions it, or silences it for good when the node is killed).
struct Node {
    broker: TestBroker,
    cluster: ClusterNode,
    relay: UdpRelay,
    link: FaultControl,
}

impl Node {
    async fn start(pki: &Pki, name: &str) -> Self {
        let config = BrokerConfig {
            cluster: Some(ClusterConfig::node(name)),
            ..BrokerConfig::default()
        };
        let broker = TestBroker::start_sharing_ca(pki, config).await;
        let link = FaultControl::new(FaultPlan::default());
        let mut options = ClusterOptions::new("test", "127.0.0.1:0".parse().expect("addr"), vec![]);
        options.layer = Some(link.layer());
        let cluster = start_endpoint(pki, &broker, name, options);
        let relay = UdpRelay::start(broker.addr).await.expect("relay");
        Self {
            broker,
            cluster,
            relay,
            link,
        }
    }

    fn meshed_with(&self, others: usize) -> bool {
        meshed_with(&self.cluster, others)
    }

    /// Stops the node the way `kill -9` does: from this moment neither its clients nor its
    /// peers hear from it again, and what it says while shutting down goes nowhere.
    async fn kill(&self) {
        self.relay.cut();
        self.link.set_blackhole(true);
        self.cluster.close(Duration::from_millis(200)).await;
        self.broker.broker.shutdown("killed").await;
    }
}

/// Three nodes in a full mesh.
async fn three_nodes(pki: &Pki) -> Vec<Node> {
    let mut nodes = Vec::new();
    for name in ["n1", "n2", "n3"] {
        nodes.push(Node::start(pki, name).await);
    }
    dial_full_mesh(nodes.iter().map(|node| &node.cluster));
    mesh_forms(&nodes, "the three nodes form a full mesh").await;
    nodes
}

async fn mesh_forms(nodes: &[Node], what: &str) {
    eventually(what, || async {
        nodes.iter().all(|node| node.meshed_with(2)).then_some(())
    })
    .await;
}

/// A client of node `home` that knows every node's address (its own first), notices a silent
/// node within a second and moves on quickly.
async fn client_of(nodes: &[Node], home: usize, name: &str) -> Client {
    let addresses = (0..nodes.len())
        .map(|offset| BrokerAddress::Socket(nodes[(home + offset) % nodes.len()].relay.addr))
        .collect();
    nodes[home]
        .broker
        .client_builder(name)
        .address(BrokerAddress::List(addresses))
        // A second per address: a dead node's address first does not hold up the others.
        .connect_timeout(Duration::from_secs(3))
        .quic_options(QuicOptions {
            idle_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_millis(250),
            ..QuicOptions::default()
        })
        .reconnect(quick_reconnect())
        .connect()
        .await
        .expect("client connects")
}

/// The faults of one run, drawn from its seed.
#[derive(Debug)]
struct Schedule {
    /// The node whose cluster socket is partitioned, then healed.
    cut: usize,
    /// When the partition starts, from the start of the load.
    cut_at: Duration,
    /// How long it lasts.
    cut_for: Duration,
    /// The node killed.
    killed: usize,
    /// How long after the mesh healed the kill comes.
    kill_after_heal: Duration,
}

impl Schedule {
    fn draw(seed: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        Self {
            cut: rng.random_range(0..3),
            cut_at: Duration::from_millis(rng.random_range(500..1_500)),
            cut_for: Duration::from_millis(rng.random_range(2_000..3_000)),
            killed: rng.random_range(0..3),
            kill_after_heal: Duration::from_millis(rng.random_range(300..1_000)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_and_a_killed_node_leave_no_silent_loss_in_a_three_node_cluster() {
    let seed = fault_seed("cargo test -p cassini-e2e --test cluster_faults");
    let schedule = Schedule::draw(seed);
    eprintln!("faults: {schedule:?}");
    let pki = Pki::new();
    let nodes = three_nodes(&pki).await;
    let history = History::default();

    // On every node: an at-most-once subscription to every publisher; on the nodes that live
    // through the run, an at-least-once subscription to the publisher of the same node; on
    // every node but the partitioned one, a member of one queue group.
    let group = history.queue_group("cf.*");
    let mut subscribers = Vec::new();
    let mut plain_recorders = Vec::new();
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    for home in 0..nodes.len() {
        let client = client_of(&nodes, home, &format!("subscriber-{home}")).await;
        let plain = client.subscribe("cf.*").await.expect("subscribe");
        let recorder = history.subscription("cf.*", Promise::AtMostOnce);
        readers.push(recorder.spawn_reading(plain));
        plain_recorders.push(recorder);
        if home != schedule.cut {
            let member = client
                .subscribe_queue("cf.*", "workers")
                .await
                .expect("join the group");
            readers.push(group.member().spawn_reading(member));
        }
        if home != schedule.killed {
            let topic = format!("cf.n{home}");
            let reliable = client
                .subscribe_with(&topic, Promise::AtLeastOnce.subscribe_options())
                .await
                .expect("subscribe");
            readers.push(
                history
                    .subscription(&topic, Promise::AtLeastOnce)
                    .spawn_reading(reliable),
            );
        }
        subscribers.push(client);
    }
    let mut publishers = Vec::new();
    for home in 0..nodes.len() {
        publishers.push(client_of(&nodes, home, &format!("publisher-{home}")).await);
    }

    // The load runs for `time`, and at least a second past the end of the faults.
    let time = load_time(8);
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let publishing: Vec<JoinHandle<u64>> = publishers
        .iter()
        .enumerate()
        .map(|(home, publisher)| {
            let (publisher, history, stop) = (publisher.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                let topic = format!("cf.n{home}");
                publish_while(&publisher, &history, home as u32, &topic, RATE, || {
                    !stop.load(Ordering::SeqCst)
                })
                .await
            })
        })
        .collect();

    // The partition: node `cut`'s cluster traffic goes into a black hole, then flows again.
    tokio::time::sleep_until(started + schedule.cut_at).await;
    nodes[schedule.cut].link.set_blackhole(true);
    history.node_lost();
    tokio::time::sleep(schedule.cut_for).await;
    nodes[schedule.cut].link.set_blackhole(false);
    mesh_forms(&nodes, "the mesh heals after the partition").await;
    let healed_at = started.elapsed();

    // The kill: node `killed` goes silent and stops; its clients move to the next node.
    tokio::time::sleep(schedule.kill_after_heal).await;
    let killed_at = started.elapsed();
    let victim = &nodes[schedule.killed];
    victim.kill().await;
    history.node_lost();
    for client in [&subscribers[schedule.killed], &publishers[schedule.killed]] {
        wait_for_state(client, "a client of the killed node moves on", |state| {
            matches!(state, ConnectionState::Connected { .. }) && client.reconnects() >= 1
        })
        .await;
    }
    let moved = &plain_recorders[schedule.killed];
    eventually(
        "the moved subscriber receives in its new session",
        || async { (moved.sessions_lost() > 0).then_some(()) },
    )
    .await;
    let moved_at = started.elapsed();
    tokio::time::sleep_until((started + time).max(Instant::now() + Duration::from_secs(1))).await;
    stop.store(true, Ordering::SeqCst);
    for task in publishing {
        within("publishing ends", task).await.expect("publisher");
    }
    // Messages still on their way (and the gaps for those that are not) arrive; then the whole
    // history is checked.
    let acked = history.acked();
    assert!(acked > 0, "some publishes were acknowledged");
    eprintln!(
        "faults: node {} partitioned {:?}..{:?} (healed by {healed_at:?}), node {} killed at \
         {killed_at:?}, its subscriber receiving on another node by {moved_at:?}; cluster \
         socket drops {:?}",
        schedule.cut + 1,
        schedule.cut_at,
        schedule.cut_at + schedule.cut_for,
        schedule.killed + 1,
        nodes
            .iter()
            .map(|node| node.link.stats().dropped)
            .collect::<Vec<_>>(),
    );
    history.check(seed).await;
    for reader in readers {
        reader.abort();
    }
    for (home, node) in nodes.into_iter().enumerate() {
        if home != schedule.killed {
            node.cluster.close(Duration::from_millis(200)).await;
            node.broker.stop().await;
        }
    }
}
