//! Three brokers in one process forming a cluster over real QUIC on port 0, with node
//! certificates made in the test (docs/CLUSTERING.md): publish on one node, receive on the
//! others; wildcards, unsubscribe, request/reply, no-responders and queue groups across nodes;
//! direct messages to a session on another node; `Welcome` listing every node's client
//! address, and a client of a node that shuts down moving to another; the node and client certificate kinds refused on each other's ALPN.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_broker::cluster::ClusterConfig;
use cassini_broker::BrokerConfig;
use cassini_client::{
    Client, Gap, ReconnectPolicy, SubscribeOptions, Subscription, SubscriptionEvent,
};
use cassini_e2e::cluster::{dial_full_mesh, meshed_with, start_endpoint};
use cassini_e2e::{
    assert_echoed, assert_no_responders, echo_service, eventually, identity_of, raw, within, Pki,
    TestBroker,
};
use cassini_protocol::{GapReason, SessionId};
use cassini_quic::certs::NODE_SERVER_NAME;
use cassini_quic::cluster::{ClusterNode, ClusterOptions, CLUSTER_ALPN};
use cassini_quic::faults::{FaultControl, FaultPlan};
use cassini_quic::tls::{self, QuicOptions};
use futures_util::StreamExt;

/// One node: a broker with its client endpoint and its cluster endpoint.
struct Node {
    broker: TestBroker,
    cluster: ClusterNode,
}

impl Node {
    async fn start(pki: &Pki, name: &str) -> Self {
        Self::start_with(pki, ClusterConfig::node(name), None).await
    }

    async fn start_with(pki: &Pki, cluster: ClusterConfig, faults: Option<&FaultControl>) -> Self {
        Self::start_on(pki, cluster, faults, "127.0.0.1:0").await
    }

    /// A node whose cluster endpoint binds `listen`.
    async fn start_on(
        pki: &Pki,
        cluster: ClusterConfig,
        faults: Option<&FaultControl>,
        listen: &str,
    ) -> Self {
        let config = BrokerConfig {
            cluster: Some(cluster),
            ..BrokerConfig::default()
        };
        Self::start_configured(pki, config, faults, listen).await
    }

    /// A node with broker settings `config` (its `cluster` set), cluster endpoint on `listen`.
    async fn start_configured(
        pki: &Pki,
        config: BrokerConfig,
        faults: Option<&FaultControl>,
        listen: &str,
    ) -> Self {
        let name = config
            .cluster
            .as_ref()
            .map(|cluster| cluster.node.clone())
            .expect("a cluster node's settings");
        let broker = TestBroker::start_sharing_ca(pki, config).await;
        let mut options = ClusterOptions::new("test", listen.parse().expect("addr"), vec![]);
        options.layer = faults.map(FaultControl::layer);
        options.advertise = Some(broker.addr.to_string());
        let cluster = start_endpoint(pki, &broker, &name, options);
        Self { broker, cluster }
    }

    fn cluster_addr(&self) -> std::net::SocketAddr {
        self.cluster.local_addr().expect("cluster address")
    }

    /// Whether both links with every other node are up and their interest acknowledged.
    fn meshed_with(&self, others: usize) -> bool {
        meshed_with(&self.cluster, others)
    }

    /// Waits until this node holds no interest of any peer.
    async fn forgets_every_peers_interest(&self) {
        eventually("no peer's interest is left", || async {
            let peers = self.cluster.port().peers();
            peers.iter().all(|peer| peer.interest == 0).then_some(())
        })
        .await;
    }

    async fn stop(self) {
        self.cluster.close(Duration::from_secs(1)).await;
        self.broker.stop().await;
    }

    /// Stops a node whose cluster socket is black-holed: none of its goodbyes can reach a peer,
    /// so it waits for them only briefly, and what it held dies with it.
    async fn stop_cut_off(self) {
        self.cluster.close(Duration::from_millis(200)).await;
        self.broker.stop().await;
    }
}

/// Three nodes in a full mesh, each dialing every node's address (its own included).
async fn three_nodes() -> (Pki, Vec<Node>) {
    three_nodes_with(&[None, None, None]).await
}

/// [`three_nodes`], with node `i`'s cluster socket under `faults[i]`.
async fn three_nodes_with(faults: &[Option<&FaultControl>; 3]) -> (Pki, Vec<Node>) {
    mesh(["n1", "n2", "n3"].map(ClusterConfig::node), faults).await
}

/// Three nodes with these settings in a full mesh, node `i`'s cluster socket under `faults[i]`.
async fn mesh(
    configs: [ClusterConfig; 3],
    faults: &[Option<&FaultControl>; 3],
) -> (Pki, Vec<Node>) {
    let configs = configs.map(|cluster| BrokerConfig {
        cluster: Some(cluster),
        ..BrokerConfig::default()
    });
    mesh_of(configs, faults).await
}

/// Three nodes with these broker settings in a full mesh, node `i`'s cluster socket under
/// `faults[i]`.
async fn mesh_of(
    configs: [BrokerConfig; 3],
    faults: &[Option<&FaultControl>; 3],
) -> (Pki, Vec<Node>) {
    let pki = Pki::new();
    let mut nodes = Vec::new();
    for (config, faults) in configs.into_iter().zip(faults) {
        nodes.push(Node::start_configured(&pki, config, *faults, "127.0.0.1:0").await);
    }
    dial_full_mesh(nodes.iter().map(|node| &node.cluster));
    eventually("the three nodes form a full mesh", || async {
        nodes.iter().all(|node| node.meshed_with(2)).then_some(())
    })
    .await;
    (pki, nodes)
}

async fn stop_all(nodes: Vec<Node>) {
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_publish_on_one_node_reaches_subscribers_on_the_others_in_order() {
    const COUNT: u32 = 500;
    let (_pki, nodes) = three_nodes().await;
    let sub2 = nodes[1].broker.client("sub2").await;
    let sub3 = nodes[2].broker.client("sub3").await;
    let mut on2 = sub2.subscribe("orders.created").await.expect("subscribe");
    let mut on3 = sub3.subscribe("orders.*").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    for i in 0..COUNT {
        publisher
            .publish("orders.created", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for subscription in [&mut on2, &mut on3] {
        for i in 0..COUNT {
            let message = within("a message crosses nodes", subscription.next())
                .await
                .expect("a message");
            assert_eq!(message.topic(), "orders.created");
            assert_eq!(
                message.payload().as_ref(),
                i.to_be_bytes(),
                "every message, in order"
            );
        }
    }
    let stats = nodes[0].cluster.port().peers();
    assert!(
        stats.iter().all(|peer| peer.forwarded == u64::from(COUNT)),
        "each peer got each message exactly once: {stats:?}"
    );
    assert!(stats.iter().all(|peer| peer.dropped == 0), "{stats:?}");
    stop_all(nodes).await;
}

#[tokio::test]
async fn wildcards_and_unsubscribe_apply_across_nodes() {
    let (_pki, nodes) = three_nodes().await;
    let subscriber = nodes[2].broker.client("watcher").await;
    let mut wide = subscriber.subscribe("sensors.>").await.expect("subscribe");
    let mut narrow = subscriber
        .subscribe("sensors.*.temp")
        .await
        .expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    publisher
        .publish("sensors.kitchen.temp", Bytes::from_static(b"21"))
        .await
        .expect("publish");
    let message = within("wildcard match", wide.next())
        .await
        .expect("a message");
    assert_eq!(message.topic(), "sensors.kitchen.temp");
    assert_eq!(
        nodes[0].cluster.port().peers()[1].forwarded,
        1,
        "two matching filters on one peer: forwarded once"
    );

    narrow.unsubscribe().await.expect("unsubscribe");
    wide.unsubscribe().await.expect("unsubscribe");
    nodes[0].forgets_every_peers_interest().await;
    assert_no_responders(
        &publisher,
        "sensors.kitchen.temp",
        "no interest anywhere after the unsubscribe",
    )
    .await;
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_request_on_one_node_is_answered_on_another_and_no_responders_is_cluster_wide() {
    let (_pki, nodes) = three_nodes().await;
    let caller = nodes[0].broker.client("caller").await;
    assert_no_responders(&caller, "svc.echo", "no responder anywhere").await;

    let service = nodes[2].broker.client("service").await;
    let server = echo_service(&service, "svc.echo").await;
    // Right after `Subscribed` on node 3: node 1 must already know the responder.
    assert_echoed(&caller, "a reply from node 3").await;
    server.abort();
    service.close().await.expect("close");
    nodes[0].forgets_every_peers_interest().await;
    assert_no_responders(&caller, "svc.echo", "the only responder left").await;
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_queue_group_with_members_on_every_node_gets_each_message_once_in_total() {
    const COUNT: u64 = 300;
    let (_pki, nodes) = three_nodes().await;
    let mut members = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        let client = node.broker.client(&format!("worker-{index}")).await;
        let subscription = client
            .subscribe_queue("jobs.*", "workers")
            .await
            .expect("join group");
        members.push((client, subscription));
    }
    // Published on node 2, which has a member of its own: local members are preferred.
    let local_publisher = nodes[1].broker.client("local").await;
    // Published from a node without a member: node 1's member leaves first.
    let (_first_client, mut first) = members.remove(0);
    first.unsubscribe().await.expect("leave");
    let remote_publisher = nodes[0].broker.client("remote").await;
    for i in 0..COUNT {
        let publisher = if i % 2 == 0 {
            &local_publisher
        } else {
            &remote_publisher
        };
        publisher
            .publish("jobs.resize", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    let mut seen: HashMap<u64, usize> = HashMap::new();
    let mut per_member = vec![0usize; members.len()];
    within("every job delivered", async {
        while seen.len() < COUNT as usize {
            for (index, (_, subscription)) in members.iter_mut().enumerate() {
                if let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_millis(20), subscription.next()).await
                {
                    let bytes: [u8; 8] = message.payload().as_ref().try_into().expect("8 bytes");
                    *seen.entry(u64::from_be_bytes(bytes)).or_default() += 1;
                    per_member[index] += 1;
                }
            }
        }
    })
    .await;
    // Nothing more arrives: each job went to exactly one member cluster-wide.
    for (_, subscription) in &mut members {
        let extra = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
        assert!(extra.is_err(), "a job delivered twice: {extra:?}");
    }
    assert!(seen.values().all(|&count| count == 1), "{seen:?}");
    assert_eq!(
        per_member[0] as u64,
        COUNT / 2 + COUNT / 4,
        "node 2's member takes node 2's jobs and half of node 1's: {per_member:?}"
    );
    stop_all(nodes).await;
}

/// The TLS alert that refused `attempt`: the handshake fails, or the connection is closed with
/// an alert right after it (a server verifies the client's certificate after the client has
/// sent it); `None` if it was let in.
async fn alert_of(attempt: quinn::Connecting) -> Option<u64> {
    let error = match within("the handshake", attempt).await {
        Err(error) => error,
        Ok(connection) => {
            if raw::hello(&connection, None).await.is_some() {
                return None;
            }
            within("the refusal", connection.closed()).await
        }
    };
    match error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            assert!((0x100..0x200).contains(&code), "not a TLS alert: {close}");
            Some(code - 0x100)
        }
        quinn::ConnectionError::TransportError(error) => {
            let code = u64::from(error.code);
            assert!((0x100..0x200).contains(&code), "not a TLS alert: {error}");
            Some(code - 0x100)
        }
        other => panic!("expected a TLS alert, got {other}"),
    }
}

fn endpoint_presenting(
    pki: &Pki,
    cert: &cassini_quic::certs::IssuedCert,
    as_node: bool,
) -> (quinn::Endpoint, quinn::ClientConfig) {
    let (chain, key) = identity_of(cert);
    let crypto = if as_node {
        tls::cluster_client_crypto(
            pki.ca_certs(),
            chain,
            key,
            Vec::new(),
            tls::RevocationOptions::default(),
        )
    } else {
        tls::client_crypto(pki.ca_certs(), chain, key)
    }
    .expect("client TLS");
    let options = QuicOptions::default();
    let config = tls::client_config(crypto, &options).expect("quinn config");
    let endpoint = cassini_quic::endpoint::bind_client(
        "127.0.0.1:0".parse().expect("addr"),
        config.clone(),
        &options,
    )
    .expect("endpoint");
    (endpoint, config)
}

#[tokio::test]
async fn node_and_client_certificates_are_refused_on_each_others_alpn() {
    let pki = Pki::new();
    let node = Node::start(&pki, "n1").await;

    // A node certificate on the client address (ALPN cassini/1): 46 certificate_unknown.
    let (endpoint, _) = endpoint_presenting(&pki, &pki.node("n2"), false);
    let attempt = endpoint
        .connect(node.broker.addr, "localhost")
        .expect("connecting");
    assert_eq!(alert_of(attempt).await, Some(46), "a node as a client");
    // A client certificate is let in there.
    let (endpoint, _) = endpoint_presenting(&pki, &pki.client("alice"), false);
    let attempt = endpoint
        .connect(node.broker.addr, "localhost")
        .expect("connecting");
    assert_eq!(alert_of(attempt).await, None, "a client as a client");

    // A client certificate on the cluster address (ALPN cassini-cluster/1).
    let (chain, key) = identity_of(&pki.client("mallory"));
    let mut crypto =
        Arc::unwrap_or_clone(tls::client_crypto(pki.ca_certs(), chain, key).expect("client TLS"));
    crypto.alpn_protocols = vec![CLUSTER_ALPN.to_vec()];
    let options = QuicOptions::default();
    let config = tls::client_config(Arc::new(crypto), &options).expect("quinn config");
    let attempt = endpoint
        .connect_with(config, node.cluster_addr(), NODE_SERVER_NAME)
        .expect("connecting");
    assert_eq!(alert_of(attempt).await, Some(46), "a client as a node");

    // A dialing node refuses a listener that presents a server (not node) certificate.
    let (endpoint, _) = endpoint_presenting(&pki, &pki.node("n3"), true);
    let attempt = endpoint
        .connect(node.broker.addr, NODE_SERVER_NAME)
        .expect("connecting");
    assert!(
        within("the client listener answers", attempt)
            .await
            .is_err(),
        "a node must not take a broker's server certificate for a node's"
    );
    node.stop().await;
}

#[tokio::test]
async fn subscribed_means_every_connected_peer_knows_the_interest() {
    // What node 3 sends its peers is slow: without the wait for acknowledgements, node 3 would
    // answer `Subscribed` (over its client address) long before they know.
    let slow = FaultControl::new(FaultPlan {
        delay: Duration::from_millis(30),
        ..FaultPlan::default()
    });
    let (_pki, nodes) = three_nodes_with(&[None, None, Some(&slow)]).await;
    let client = nodes[2].broker.client("late").await;
    let mut subscriptions = Vec::new();
    for i in 0..10 {
        subscriptions.push(
            client
                .subscribe(&format!("fresh.{i}"))
                .await
                .expect("subscribe"),
        );
        // No waiting: once `Subscribed` arrived, the peers know.
        for node in &nodes[..2] {
            let known = node
                .cluster
                .port()
                .peers()
                .into_iter()
                .find(|peer| peer.node == "n3")
                .map(|peer| peer.interest);
            assert_eq!(known, Some(i + 1), "subscription {i} unknown to a peer");
        }
    }
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_node_cut_off_leaves_routing_and_after_the_heal_its_subscribers_see_gaps_not_silence() {
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, nodes) = three_nodes_with(&[None, Some(&cut), None]).await;
    let sub2 = nodes[1].broker.client("sub2").await;
    let sub3 = nodes[2].broker.client("sub3").await;
    let mut on2 = sub2.subscribe("feed").await.expect("subscribe");
    let mut on3 = sub3.subscribe("feed").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    let mut next = 0u32;
    let mut publish = |count: u32| {
        let range = next..next + count;
        next += count;
        range
    };
    for i in publish(10) {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for subscription in [&mut on2, &mut on3] {
        for i in 0..10u32 {
            let message = within("before the cut", subscription.next())
                .await
                .expect("a message");
            assert_eq!(message.payload().as_ref(), i.to_be_bytes());
        }
    }

    // Node 2's cluster traffic goes into a black hole: it leaves routing within the failure
    // detection time, and the others never stop routing between themselves.
    cut.set_blackhole(true);
    let cut_at = std::time::Instant::now();
    let during = publish(20);
    for i in during.clone() {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for i in during {
        let message = within("node 3 keeps receiving", on3.next())
            .await
            .expect("a message");
        assert_eq!(message.payload().as_ref(), i.to_be_bytes());
    }
    eventually("node 1 takes node 2 out of routing", || async {
        let peers = nodes[0].cluster.port().peers();
        peers
            .iter()
            .find(|peer| peer.node == "n2")
            .is_some_and(|peer| !peer.inbound)
            .then_some(())
    })
    .await;
    let detected = cut_at.elapsed();
    assert!(
        detected < Duration::from_millis(2_600),
        "a dead peer leaves routing within the 2 s idle timeout (took {detected:?})"
    );
    for i in publish(5) {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }

    // Healed: the mesh forms again, and node 2's subscriber is told what it missed.
    cut.set_blackhole(false);
    eventually("the mesh heals", || async {
        nodes.iter().all(|node| node.meshed_with(2)).then_some(())
    })
    .await;
    let after = publish(5);
    for i in after.clone() {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    let mut received = Vec::new();
    within("node 2 receives after the heal", async {
        while received.last() != Some(&(after.end - 1)) {
            let message = on2.next().await.expect("a message");
            let bytes: [u8; 4] = message.payload().as_ref().try_into().expect("4 bytes");
            received.push(u32::from_be_bytes(bytes));
        }
    })
    .await;
    assert!(
        received.windows(2).all(|pair| pair[0] < pair[1]),
        "in order: {received:?}"
    );
    let missed = on2.gaps();
    assert_eq!(
        received.len() as u64 + missed,
        u64::from(next - 10),
        "every message after the cut either arrived or is in a gap ({received:?}, {missed} missed)"
    );
    assert!(missed > 0, "the cut lost something, and said so");
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_node_that_dies_cut_off_leaves_its_peers_subscribers_a_gap_not_silence() {
    // Node 1 is cut off while it publishes to node 2's subscriber, then dies before the cut
    // heals: what it held and counted for node 2 died with it. Node 2 must announce the loss
    // (a `ClusterRoute` gap), promptly, though nothing more is published on the topic.
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, mut nodes) = three_nodes_with(&[Some(&cut), None, None]).await;
    let subscriber = nodes[1].broker.client("sub2").await;
    let mut feed = subscriber.subscribe("feed").await.expect("subscribe");
    let mut other = subscriber.subscribe("other").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    for i in 0..5u32 {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    for _ in 0..5 {
        within("before the cut", feed.next())
            .await
            .expect("a message");
    }
    cut.set_blackhole(true);
    for i in 5..15u32 {
        publisher
            .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    nodes.remove(0).stop_cut_off().await;
    next_is_a_cluster_route_gap(&mut feed, "node 2 announces what died with node 1").await;
    // A topic node 1 never forwarded anything on gets one too: what node 1 counted for node 2
    // died with it, on whatever topic.
    next_is_a_cluster_route_gap(&mut other, "node 2 announces a loss on every subscription").await;
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_subscription_a_peer_died_without_knowing_of_hears_of_what_it_may_have_lost() {
    // Node 1 is cut off; node 2 then subscribes to a topic node 1 has never carried to it, so
    // node 1 never learns of that subscription, and node 1 publishes on it meanwhile (counted,
    // if at all, only on node 1). Node 1 dies before the cut heals: node 2 must announce a
    // loss on that subscription too, not only on the topics node 1 had carried.
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, mut nodes) = three_nodes_with(&[Some(&cut), None, None]).await;
    let subscriber = nodes[1].broker.client("sub2").await;
    let publisher = nodes[0].broker.client("publisher").await;
    cut.set_blackhole(true);
    let mut unknown = subscriber.subscribe("unknown").await.expect("subscribe");
    for i in 0..3u32 {
        publisher
            .publish("unknown", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    nodes.remove(0).stop_cut_off().await;
    next_is_a_cluster_route_gap(
        &mut unknown,
        "node 2 announces a loss on a subscription node 1 never knew of",
    )
    .await;
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_peer_that_restarts_before_its_old_link_times_out_leaves_a_gap_not_silence() {
    // Node 1 forwards to node 2's subscriber, then dies silently (its socket black-holed, so
    // node 2's link from it lingers until its idle timeout) and starts again at once as
    // another incarnation, whose link to node 2 comes up before the old one has ended. What
    // the old node 1 held for node 2 died with it: when the old link ends, node 2 must
    // announce it, though a newer link from node 1 is up.
    let silenced = FaultControl::new(FaultPlan::default());
    let (pki, mut nodes) = three_nodes_with(&[Some(&silenced), None, None]).await;
    let subscriber = nodes[1].broker.client("sub2").await;
    let mut feed = subscriber.subscribe("feed").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    publisher
        .publish("feed", Bytes::from_static(b"x"))
        .await
        .expect("publish");
    within("the message", feed.next()).await.expect("a message");
    silenced.set_blackhole(true);
    nodes.remove(0).stop_cut_off().await;
    let restarted = Node::start_with(&pki, long_running("n1"), None).await;
    restarted.cluster.dial(nodes[0].cluster_addr());
    next_is_a_cluster_route_gap(
        &mut feed,
        "node 2 announces what the old node 1 held when its link ends",
    )
    .await;
    nodes.push(restarted);
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_subscription_made_while_a_peer_was_cut_off_hears_of_its_losses_once_it_restarts() {
    // Node 1 is cut off long enough for node 2 to announce what its link may have lost. Node 2
    // then subscribes: node 1, out of contact, may count losses for that subscription without
    // knowing of it. Node 1 dies and starts again as another incarnation: node 2 must announce
    // a loss on that subscription too.
    let cut = FaultControl::new(FaultPlan::default());
    let (pki, mut nodes) = three_nodes_with(&[Some(&cut), None, None]).await;
    let subscriber = nodes[1].broker.client("sub2").await;
    let mut before = subscriber.subscribe("before").await.expect("subscribe");
    cut.set_blackhole(true);
    let event = within(
        "node 2 announces the cut link's losses",
        before.next_event(),
    )
    .await
    .expect("an event");
    assert!(
        matches!(event, SubscriptionEvent::Gap(_)),
        "a gap: {event:?}"
    );
    let mut later = subscriber.subscribe("later").await.expect("subscribe");
    nodes.remove(0).stop_cut_off().await;
    let restarted = Node::start(&pki, "n1").await;
    restarted.cluster.dial(nodes[0].cluster_addr());
    next_is_a_cluster_route_gap(
        &mut later,
        "node 2 announces a loss on the subscription made while node 1 was cut off",
    )
    .await;
    nodes.push(restarted);
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_node_that_stops_with_nothing_left_for_its_peers_leaves_no_gap() {
    let (_pki, mut nodes) = three_nodes().await;
    let subscriber = nodes[1].broker.client("sub2").await;
    let mut feed = subscriber.subscribe("feed").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    publisher
        .publish("feed", Bytes::from_static(b"x"))
        .await
        .expect("publish");
    within("the message", feed.next()).await.expect("a message");
    let stopped = nodes.remove(0);
    stopped.cluster.close(Duration::from_secs(1)).await;
    stopped.broker.stop().await;
    let quiet = tokio::time::timeout(
        cassini_broker::cluster::UNSETTLED_WAIT + Duration::from_secs(3),
        feed.next_event(),
    )
    .await;
    assert!(quiet.is_err(), "a clean stop loses nothing: {quiet:?}");
    stop_all(nodes).await;
}

#[tokio::test]
async fn welcome_lists_the_client_address_of_every_node_in_routing() {
    let (_pki, nodes) = three_nodes().await;
    let client = nodes[1].broker.client("learner").await;
    let address = |index: usize| nodes[index].broker.addr.to_string();
    assert_eq!(
        client.cluster_addresses(),
        vec![address(1), address(0), address(2)],
        "its own node first, then the peers by name"
    );
    stop_all(nodes).await;

    let standalone = TestBroker::start().await;
    let client = standalone.client("alone").await;
    assert!(
        client.cluster_addresses().is_empty(),
        "a standalone broker lists none"
    );
    standalone.stop().await;
}

#[tokio::test]
async fn a_direct_message_reaches_its_session_on_another_node_and_nothing_else() {
    let (_pki, nodes) = three_nodes().await;
    let target = nodes[2].broker.client("target").await;
    let mut for_target = target.subscribe("note.>").await.expect("subscribe");
    let neighbour = nodes[2].broker.client("neighbour").await;
    let mut for_neighbour = neighbour.subscribe("note.>").await.expect("subscribe");
    let elsewhere = nodes[1].broker.client("elsewhere").await;
    let mut for_elsewhere = elsewhere.subscribe("note.>").await.expect("subscribe");
    let sender = nodes[0].broker.client("sender").await;
    let direct = [
        // Right after `Subscribed` on node 3, node 1 knows where the session is.
        (target.session_id(), "note.private", "for target"),
        // As on one node: a session nobody holds, or whose filters do not match, gets nothing.
        (SessionId([7; 16]), "note.private", "nobody"),
        (target.session_id(), "other.topic", "no filter"),
    ];
    for (session, topic, payload) in direct {
        sender
            .send_to(session, topic, Bytes::from(payload))
            .await
            .expect("send");
    }
    sender
        .publish("note.public", Bytes::from_static(b"for everyone"))
        .await
        .expect("publish");

    // Order holds per publisher per topic; these are two topics, so either may come first.
    let mut got = Vec::new();
    for _ in 0..2 {
        let message = within("the direct and the public message", for_target.next())
            .await
            .expect("a message");
        got.push(message.payload().clone());
    }
    got.sort();
    assert_eq!(got, [&b"for everyone"[..], &b"for target"[..]]);
    for (name, subscription) in [
        ("neighbour", &mut for_neighbour),
        ("elsewhere", &mut for_elsewhere),
    ] {
        let message = within("the public message", subscription.next())
            .await
            .expect("a message");
        assert_eq!(message.payload().as_ref(), b"for everyone", "{name}");
        assert_eq!(message.sequence(), 1, "{name} never got the direct message");
    }
    let forwarded: Vec<(String, u64)> = nodes[0]
        .cluster
        .port()
        .peers()
        .into_iter()
        .map(|peer| (peer.node, peer.forwarded))
        .collect();
    assert_eq!(
        forwarded,
        vec![("n2".to_owned(), 1), ("n3".to_owned(), 2)],
        "the direct message crossed only to the session's node"
    );
    stop_all(nodes).await;
}

/// What one subscription saw of a flood: the payloads it received (in order) and how many
/// sequences each kind of gap covered.
#[derive(Debug, Default)]
struct Seen {
    received: Vec<u32>,
    route_gaps: u64,
    other_gaps: Vec<Gap>,
}

impl Seen {
    fn accounted(&self) -> u64 {
        let other: u64 = self.other_gaps.iter().filter_map(Gap::missed).sum();
        self.received.len() as u64 + self.route_gaps + other
    }
}

/// Reads `subscriptions` until `done` says what all of them saw is complete.
async fn read_until(
    subscriptions: &mut [Subscription],
    what: &str,
    done: impl Fn(&[Seen]) -> bool,
) -> Vec<Seen> {
    let mut seen: Vec<Seen> = subscriptions.iter().map(|_| Seen::default()).collect();
    within(what, async {
        while !done(&seen) {
            for (subscription, seen) in subscriptions.iter_mut().zip(&mut seen) {
                let event =
                    tokio::time::timeout(Duration::from_millis(20), subscription.next_event())
                        .await;
                match event {
                    Ok(Some(SubscriptionEvent::Message(message))) => {
                        let bytes: [u8; 4] =
                            message.payload().as_ref().try_into().expect("4 bytes");
                        seen.received.push(u32::from_be_bytes(bytes));
                    }
                    Ok(Some(SubscriptionEvent::Gap(Gap::Missed {
                        from,
                        to,
                        reason: Some(GapReason::ClusterRoute),
                    }))) => seen.route_gaps += to - from + 1,
                    Ok(Some(SubscriptionEvent::Gap(gap))) => seen.other_gaps.push(gap),
                    Ok(Some(other)) => panic!("unexpected: {other:?}"),
                    Ok(None) => panic!("the subscription ended"),
                    Err(_) => {}
                }
            }
        }
    })
    .await;
    seen
}

#[tokio::test]
async fn a_saturated_routes_drops_arrive_as_cluster_route_gaps_for_plain_and_group_subscribers() {
    const COUNT: u32 = 1_000;
    const BURST: u32 = 50;
    // Node 1's queue towards each peer holds one message: a burst overflows it.
    let tiny = ClusterConfig {
        max_queued_messages: 1,
        ..ClusterConfig::node("n1")
    };
    let (_pki, nodes) = mesh(
        [tiny, ClusterConfig::node("n2"), ClusterConfig::node("n3")],
        &[None, None, None],
    )
    .await;
    let roomy = |group: Option<&str>| SubscribeOptions {
        max_queued_messages: Some(COUNT * 2),
        queue_group: group.map(str::to_owned),
        ..SubscribeOptions::default()
    };
    let plain_client = nodes[1].broker.client("plain").await;
    let group_client = nodes[2].broker.client("workers").await;
    let mut plain = vec![plain_client
        .subscribe_with("flood", roomy(None))
        .await
        .expect("subscribe")];
    let mut group = Vec::new();
    for _ in 0..2 {
        group.push(
            group_client
                .subscribe_with("flood", roomy(Some("g")))
                .await
                .expect("join the group"),
        );
    }

    // Bursts published in process, each without yielding: node 1's link cannot keep up.
    let publisher = nodes[0].broker.broker.local_client();
    for burst in 0..COUNT / BURST {
        for i in burst * BURST..(burst + 1) * BURST {
            publisher
                .publish("flood", Bytes::from(i.to_be_bytes().to_vec()))
                .expect("publish");
        }
        tokio::task::yield_now().await;
    }
    let dropped: u64 = nodes[0]
        .cluster
        .port()
        .peers()
        .iter()
        .map(|peer| peer.dropped)
        .sum();
    assert!(dropped > 0, "the flood overflowed the route");

    // Every message published is either received or covered by a ClusterRoute gap, on the
    // plain subscriber and across the group's members.
    let total = u64::from(COUNT);
    let plain = read_until(
        &mut plain,
        "the plain subscriber accounts for all",
        |seen| seen[0].accounted() >= total,
    )
    .await;
    let group = read_until(&mut group, "the group accounts for all", |seen| {
        seen.iter().map(Seen::accounted).sum::<u64>() >= total
    })
    .await;
    for (who, seen) in [("plain", &plain[..]), ("group", &group[..])] {
        assert!(
            seen.iter().all(|seen| seen.other_gaps.is_empty()),
            "{who}: every loss is a ClusterRoute gap: {seen:?}"
        );
        assert_eq!(
            seen.iter().map(Seen::accounted).sum::<u64>(),
            total,
            "{who}: nothing missing, nothing twice"
        );
        assert!(
            seen.iter().map(|seen| seen.route_gaps).sum::<u64>() > 0,
            "{who}: the drops were announced"
        );
        for seen in seen {
            assert!(
                seen.received.windows(2).all(|pair| pair[0] < pair[1]),
                "{who}: in order: {:?}",
                seen.received
            );
        }
    }
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_queue_group_hears_of_the_messages_lost_with_a_dead_members_node() {
    // The group has a member on node 2 and one on node 3; node 1 publishes and shares the
    // messages between them. Node 2 dies (cut off, then stopped) while node 1 still sends it
    // its share: that share is lost with node 2, and the group must hear of it through the
    // member that lives on (a `ClusterRoute` gap), not lose it silently.
    const BEFORE: u32 = 10;
    const AFTER: u32 = 20;
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, mut nodes) = three_nodes_with(&[None, Some(&cut), None]).await;
    // Node 2's client does not move when its node dies: the group lives on node 3 only.
    let doomed = nodes[1]
        .broker
        .client_builder("doomed")
        .reconnect(ReconnectPolicy::disabled())
        .connect()
        .await
        .expect("connect");
    let survivor = nodes[2].broker.client("survivor").await;
    let mut on2 = vec![doomed
        .subscribe_queue("work", "g")
        .await
        .expect("join the group")];
    let mut on3 = vec![survivor
        .subscribe_queue("work", "g")
        .await
        .expect("join the group")];
    let publisher = nodes[0].broker.client("publisher").await;
    let publish = |range: std::ops::Range<u32>| {
        let publisher = publisher.clone();
        async move {
            for i in range {
                publisher
                    .publish("work", Bytes::from(i.to_be_bytes().to_vec()))
                    .await
                    .expect("publish");
            }
        }
    };
    publish(0..BEFORE).await;
    let before_on2 = read_until(&mut on2, "node 2's member reads its share", |seen| {
        seen[0].received.len() >= (BEFORE / 2) as usize
    })
    .await;
    let before_on3 = read_until(&mut on3, "node 3's member reads its share", |seen| {
        seen[0].received.len() + before_on2[0].received.len() >= BEFORE as usize
    })
    .await;
    assert_eq!(
        before_on2[0].received.len() + before_on3[0].received.len(),
        BEFORE as usize,
        "shared, each message once"
    );

    eventually("node 1's forwards so far are confirmed", || async {
        let peers = nodes[0].cluster.port().peers();
        peers.iter().all(|peer| peer.unconfirmed == 0).then_some(())
    })
    .await;
    cut.set_blackhole(true);
    publish(BEFORE..BEFORE + AFTER).await;
    nodes.remove(1).stop_cut_off().await;

    let after = read_until(
        &mut on3,
        "node 3's member accounts for every message published after node 2 died",
        |seen| seen[0].accounted() >= u64::from(AFTER),
    )
    .await;
    assert!(after[0].other_gaps.is_empty(), "{after:?}");
    assert_eq!(
        after[0].accounted(),
        u64::from(AFTER),
        "received or announced once: {after:?}"
    );
    assert!(
        after[0].route_gaps > 0,
        "node 2's share was announced: {after:?}"
    );
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_forward_deeper_than_the_receiving_node_takes_reaches_its_wildcard_subscriber_as_a_gap() {
    // Node 2 takes topics of at most 3 levels; its subscriber to `deep.>` matches deeper ones.
    let mut shallow = BrokerConfig {
        cluster: Some(ClusterConfig::node("n2")),
        ..BrokerConfig::default()
    };
    shallow.limits.topics.max_depth = 3;
    let configs = [
        BrokerConfig {
            cluster: Some(ClusterConfig::node("n1")),
            ..BrokerConfig::default()
        },
        shallow,
        BrokerConfig {
            cluster: Some(ClusterConfig::node("n3")),
            ..BrokerConfig::default()
        },
    ];
    let (_pki, nodes) = mesh_of(configs, &[None, None, None]).await;
    let subscriber = nodes[1].broker.client("sub").await;
    let mut deep = subscriber.subscribe("deep.>").await.expect("subscribe");
    let publisher = nodes[0].broker.client("publisher").await;
    for topic in ["deep.a", "deep.a.b.c.d", "deep.b"] {
        publisher
            .publish(topic, Bytes::from_static(b"x"))
            .await
            .expect("node 1 takes every depth");
    }
    let first = within("the first message", deep.next())
        .await
        .expect("a message");
    assert_eq!(first.topic(), "deep.a");
    match within("the refused one's gap", deep.next_event()).await {
        Some(SubscriptionEvent::Gap(Gap::Missed {
            from: 2,
            to: 2,
            reason: Some(GapReason::ClusterRoute),
        })) => {}
        other => panic!("expected a ClusterRoute gap of sequence 2, got {other:?}"),
    }
    let last = within("the last message", deep.next())
        .await
        .expect("a message");
    assert_eq!((last.topic(), last.sequence()), ("deep.b", 3));
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_forward_the_receiving_node_refuses_reaches_its_subscribers_as_a_cluster_route_gap() {
    // Node 2 takes payloads of at most 1 KiB; node 1 takes the default (1 MiB).
    let mut small = BrokerConfig {
        cluster: Some(ClusterConfig::node("n2")),
        ..BrokerConfig::default()
    };
    small.limits.max_payload_bytes = 1024;
    let configs = [
        BrokerConfig {
            cluster: Some(ClusterConfig::node("n1")),
            ..BrokerConfig::default()
        },
        small,
        BrokerConfig {
            cluster: Some(ClusterConfig::node("n3")),
            ..BrokerConfig::default()
        },
    ];
    let (_pki, nodes) = mesh_of(configs, &[None, None, None]).await;
    let subscriber = nodes[1].broker.client("sub").await;
    let mut plain = vec![subscriber.subscribe("sized").await.expect("subscribe")];
    let mut group = vec![subscriber
        .subscribe_queue("sized", "g")
        .await
        .expect("join the group")];
    let publisher = nodes[0].broker.client("publisher").await;
    for payload in [vec![0u8; 4], vec![1u8; 4096], vec![2u8; 4]] {
        publisher
            .publish("sized", Bytes::from(payload))
            .await
            .expect("node 1 takes every size");
    }
    for (who, subscription) in [("plain", &mut plain), ("group", &mut group)] {
        let first = within("the first small message", subscription[0].next())
            .await
            .expect("a message");
        assert_eq!(first.payload().as_ref(), [0u8; 4], "{who}");
        match within("the refused one's gap", subscription[0].next_event()).await {
            Some(SubscriptionEvent::Gap(Gap::Missed {
                from: 2,
                to: 2,
                reason: Some(GapReason::ClusterRoute),
            })) => {}
            other => panic!("{who}: expected a ClusterRoute gap of sequence 2, got {other:?}"),
        }
        let last = within("the last small message", subscription[0].next())
            .await
            .expect("a message");
        assert_eq!(last.payload().as_ref(), [2u8; 4], "{who}");
        assert_eq!(last.sequence(), 3, "{who}");
    }
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_client_of_a_node_that_shuts_down_moves_to_a_node_it_learned_with_a_session_lost_gap() {
    let (_pki, mut nodes) = three_nodes().await;
    // Given node 3's address only: the others come from `Welcome`.
    let mover = nodes[2]
        .broker
        .client_builder("mover")
        .reconnect(ReconnectPolicy {
            initial_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            ..ReconnectPolicy::default()
        })
        .connect()
        .await
        .expect("client connects");
    let mut feed = mover.subscribe("feed").await.expect("subscribe");
    let on_node_3 = mover.session_id();
    let publisher = nodes[0].broker.client("publisher").await;

    nodes.remove(2).stop().await;
    within("the client receives again on another node", async {
        for i in 0..1_000u32 {
            publisher
                .publish("feed", Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .expect("publish");
            if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(100), feed.next()).await
            {
                return;
            }
        }
        panic!("nothing arrived after 1000 publishes");
    })
    .await;
    assert_ne!(mover.session_id(), on_node_3, "a session stays on its node");
    assert!(
        feed.take_gaps()
            .iter()
            .any(|gap| matches!(gap, Gap::SessionLost { .. })),
        "moving to another node is an explicit SessionLost"
    );
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_subscribe_waiting_for_the_peers_does_not_hold_the_clients_other_requests() {
    // Node 3's peers never acknowledge its interest once its cluster traffic is cut: a
    // `Subscribed` there waits until the links are declared dead (2 s).
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, nodes) = three_nodes_with(&[None, None, Some(&cut)]).await;
    let client = nodes[2].broker.client("busy").await;
    cut.set_blackhole(true);
    let subscribing = tokio::spawn({
        let client = client.clone();
        async move { client.subscribe("waits.for.peers").await.map(|_| ()) }
    });
    // The subscribe is on its way before the ping: the broker serves it first.
    eventually("the subscription exists on node 3", || async {
        let stats = nodes[2].broker.stats().await;
        (stats.subscribers > 0).then_some(())
    })
    .await;
    within("a ping while the subscribe waits", client.ping())
        .await
        .expect("pong");
    assert!(
        !subscribing.is_finished(),
        "the ping was answered before the subscribe it followed, not behind it"
    );
    within(
        "the subscribe is answered once the peers are gone",
        subscribing,
    )
    .await
    .expect("the task")
    .expect("subscribed");
    cut.set_blackhole(false);
    stop_all(nodes).await;
}

#[tokio::test]
async fn a_node_reached_at_two_addresses_keeps_one_link_and_loses_nothing() {
    const COUNT: u32 = 20_000;
    let pki = Pki::new();
    let n1 = Node::start(&pki, "n1").await;
    let n2 = Node::start_on(&pki, ClusterConfig::node("n2"), None, "0.0.0.0:0").await;
    let port = n2.cluster_addr().port();
    // Node 1 knows node 2 under two addresses; one link must serve, not two in turn.
    n1.cluster
        .dial(format!("127.0.0.1:{port}").parse().expect("addr"));
    n1.cluster
        .dial(format!("127.0.0.2:{port}").parse().expect("addr"));
    eventually("the two nodes are linked both ways", || async {
        (n1.meshed_with(1) && n2.meshed_with(1)).then_some(())
    })
    .await;
    let subscriber = n2.broker.client("sub").await;
    let mut subscription = subscriber.subscribe("steady").await.expect("subscribe");
    let publisher = n1.broker.client("pub").await;
    // Long enough for a second link to the same node to have replaced the first several
    // times (each dial retries within 100 ms to 5 s).
    let started = std::time::Instant::now();
    let mut sent = 0u32;
    while started.elapsed() < Duration::from_millis(1500) && sent < COUNT {
        publisher
            .publish("steady", Bytes::from(sent.to_be_bytes().to_vec()))
            .await
            .expect("publish");
        sent += 1;
        if sent.is_multiple_of(100) {
            // Paced: the subscriber keeps up, so any loss is the links'.
            within("the subscriber keeps up", async {
                for i in sent - 100..sent {
                    let message = subscription.recv().await.expect("a message");
                    assert_eq!(message.payload().as_ref(), i.to_be_bytes(), "in order");
                }
            })
            .await;
        }
    }
    assert_eq!(subscription.gaps(), 0, "nothing lost");
    n1.stop().await;
    n2.stop().await;
}

#[tokio::test]
async fn what_a_just_started_node_published_before_it_knew_a_peers_interest_reaches_that_peer_as_gaps(
) {
    // Node 2 has a subscriber; node 1's broker takes publishes before its cluster endpoint is
    // up, so before it knows node 2's interest. Once the links are up, node 2's subscriber must
    // hear of every matching one as a `ClusterRoute` gap, though nothing more is published,
    // and the next message after the gaps.
    let pki = Pki::new();
    // Node 2 counts as running long (no startup window): its subscription gets no floor when
    // node 1 first knows it (see the test of a new node below), only node 1's exact counts.
    let peer = Node::start_with(&pki, long_running("n2"), None).await;
    let subscriber = peer.broker.client("sub").await;
    let mut feed = subscriber.subscribe("t.>").await.expect("subscribe");
    let config = BrokerConfig {
        cluster: Some(ClusterConfig::node("n1")),
        ..BrokerConfig::default()
    };
    let started = TestBroker::start_sharing_ca(&pki, config).await;
    let publisher = started.client("publisher").await;
    publish_each(&publisher, &["t.a", "t.a", "u", "t.b"], b"early").await;
    let node = join_late(&pki, started, "n1", peer.cluster_addr());
    // The two on `t.a` and the one on `t.b`, not `u`.
    cluster_route_gaps_up_to(&mut feed, 3, "node 1's early publishes announced").await;
    the_next_message_follows([&node, &peer], &publisher, &mut feed, 4).await;
    stop_all(vec![node, peer]).await;
}

/// Node `name`'s settings, with no startup window: it behaves as a node running for long.
fn long_running(name: &str) -> ClusterConfig {
    ClusterConfig {
        startup_window: Duration::ZERO,
        ..ClusterConfig::node(name)
    }
}

/// Reads `subscription`'s next event (within the test deadline): it must be a `ClusterRoute`
/// gap, `what` the subscriber is waiting for.
async fn next_is_a_cluster_route_gap(subscription: &mut Subscription, what: &str) {
    let event = within(what, subscription.next_event())
        .await
        .expect("an event");
    assert!(
        matches!(
            event,
            SubscriptionEvent::Gap(Gap::Missed {
                reason: Some(GapReason::ClusterRoute),
                ..
            })
        ),
        "{what}: a ClusterRoute gap, got {event:?}"
    );
}

/// Reads `subscription`'s events until `ClusterRoute` gaps have covered sequences 1 to `count`
/// (each gap starting where the last ended); anything else fails the test.
async fn cluster_route_gaps_up_to(subscription: &mut Subscription, count: u64, what: &str) {
    let mut missed = 0;
    while missed < count {
        match within(what, subscription.next_event()).await {
            Some(SubscriptionEvent::Gap(Gap::Missed {
                from,
                to,
                reason: Some(GapReason::ClusterRoute),
            })) if from == missed + 1 => missed = to,
            other => panic!("expected ClusterRoute gaps of sequences 1-{count}, got {other:?}"),
        }
    }
    assert_eq!(missed, count, "{what}: exactly {count}");
}

/// Publishes `payload` to each of `topics` in turn, acknowledged.
async fn publish_each(publisher: &Client, topics: &[&str], payload: &'static [u8]) {
    for topic in topics {
        publisher
            .publish_acked(topic, Bytes::from_static(payload))
            .await
            .expect("acknowledged");
    }
}

/// `broker`, started without its cluster endpoint, now starts it as node `name`, dialing
/// `peer`.
fn join_late(pki: &Pki, broker: TestBroker, name: &str, peer: SocketAddr) -> Node {
    let options = ClusterOptions::new("test", "127.0.0.1:0".parse().expect("addr"), vec![peer]);
    Node {
        cluster: start_endpoint(pki, &broker, name, options),
        broker,
    }
}

/// Once the two nodes are linked both ways, `publisher` publishes `late` on `t.a` and it is
/// `feed`'s next message, at `sequence` (right after the gaps).
async fn the_next_message_follows(
    nodes: [&Node; 2],
    publisher: &Client,
    feed: &mut Subscription,
    sequence: u64,
) {
    eventually("the links are up both ways", || async {
        (nodes[0].meshed_with(1) && nodes[1].meshed_with(1)).then_some(())
    })
    .await;
    publisher
        .publish("t.a", Bytes::from_static(b"late"))
        .await
        .expect("publish");
    let late = within("the next message", feed.next())
        .await
        .expect("a message");
    assert_eq!(
        (late.payload().as_ref(), late.sequence()),
        (&b"late"[..], sequence)
    );
}

#[tokio::test]
async fn a_subscription_made_while_a_peers_link_is_down_hears_what_the_peer_published_meanwhile() {
    // Node 2 is cut off; once both nodes see the links down, a client of node 2 subscribes
    // (its `Subscribed` waits for no peer) and node 1 publishes on topics node 2's last
    // interest did not have. After the heal, the subscriber must hear of them as
    // `ClusterRoute` gaps, though nothing more is published, then get the next message.
    let pki = Pki::new();
    let cut = FaultControl::new(FaultPlan::default());
    let publishing = Node::start(&pki, "n1").await;
    // No startup window: on a loaded machine node 1's first acknowledgement of node 2's
    // interest can come after the heal, within the window, and add the floor's gap of one
    // (docs/CLUSTERING.md, "up to one too many per peer"); this test is of the tally alone.
    let away = Node::start_with(&pki, long_running("n2"), Some(&cut)).await;
    dial_full_mesh([&publishing.cluster, &away.cluster]);
    eventually("the two nodes are linked", || async {
        (publishing.meshed_with(1) && away.meshed_with(1)).then_some(())
    })
    .await;
    cut.set_blackhole(true);
    eventually("each node sees both links down", || async {
        let down = |node: &Node| {
            node.cluster
                .port()
                .peers()
                .iter()
                .all(|peer| !peer.inbound && !peer.outbound)
        };
        (down(&publishing) && down(&away)).then_some(())
    })
    .await;
    let subscriber = away.broker.client("sub").await;
    let mut feed = subscriber.subscribe("t.>").await.expect("subscribe");
    let publisher = publishing.broker.client("publisher").await;
    publish_each(&publisher, &["t.a", "t.a", "u", "t.b"], b"meanwhile").await;
    cut.set_blackhole(false);
    cluster_route_gaps_up_to(&mut feed, 3, "node 1's publishes while node 2 was away").await;
    the_next_message_follows([&publishing, &away], &publisher, &mut feed, 4).await;
    stop_all(vec![publishing, away]).await;
}

#[tokio::test]
async fn a_restarted_nodes_subscription_made_before_its_links_are_up_hears_what_a_peer_published() {
    // Node 2 ran with node 1 and stopped. Started again, its broker takes a subscription
    // before its cluster endpoint is up (no peer to wait for); node 1 publishes; then node 2's
    // endpoint dials node 1. The subscriber must hear of node 1's matching publishes as
    // `ClusterRoute` gaps: node 1 counted them for node 2 while it was away. (Node 2 restarts
    // with no startup window, so no floor adds to those counts.)
    let pki = Pki::new();
    let publishing = Node::start(&pki, "n1").await;
    let before = Node::start(&pki, "n2").await;
    dial_full_mesh([&publishing.cluster, &before.cluster]);
    eventually("the two nodes are linked", || async {
        (publishing.meshed_with(1) && before.meshed_with(1)).then_some(())
    })
    .await;
    before.stop().await;
    publishing.forgets_every_peers_interest().await;
    let config = BrokerConfig {
        cluster: Some(long_running("n2")),
        ..BrokerConfig::default()
    };
    let restarted = TestBroker::start_sharing_ca(&pki, config).await;
    let subscriber = restarted.client("sub").await;
    let mut feed = subscriber.subscribe("t.>").await.expect("subscribe");
    let publisher = publishing.broker.client("publisher").await;
    publish_each(&publisher, &["t.a", "u", "t.b"], b"meanwhile").await;
    let node = join_late(&pki, restarted, "n2", publishing.cluster_addr());
    cluster_route_gaps_up_to(&mut feed, 2, "node 1's publishes before node 2's links").await;
    stop_all(vec![publishing, node]).await;
}

#[tokio::test]
async fn a_new_nodes_subscription_made_before_its_links_are_up_hears_of_a_peers_publishes() {
    // Node 1 runs (long, in effect) and has never heard of node 2. Node 2 starts: its broker
    // takes a subscription before its cluster endpoint is up, node 1 publishes, then node 2's
    // endpoint dials node 1. Node 1 holds no count for node 2, so node 2 announces a floor:
    // one `ClusterRoute` lost message on its subscription when node 1 first knows its
    // interest, though nothing more is published, then the next message.
    let pki = Pki::new();
    let publishing = Node::start_with(&pki, long_running("n1"), None).await;
    let config = BrokerConfig {
        cluster: Some(ClusterConfig::node("n2")),
        ..BrokerConfig::default()
    };
    let started = TestBroker::start_sharing_ca(&pki, config).await;
    let subscriber = started.client("sub").await;
    let mut feed = subscriber.subscribe("t.>").await.expect("subscribe");
    let publisher = publishing.broker.client("publisher").await;
    publish_each(&publisher, &["t.a", "t.b"], b"before").await;
    let node = join_late(&pki, started, "n2", publishing.cluster_addr());
    cluster_route_gaps_up_to(&mut feed, 1, "the floor for node 1's publishes").await;
    the_next_message_follows([&publishing, &node], &publisher, &mut feed, 2).await;
    stop_all(vec![publishing, node]).await;
}

/// A publisher whose `PublishAck` never came sends its acknowledged publish again through
/// another node, which has no dedupe pair for it (here: no `members`, so each node has only
/// its own window). Every subscriber that got the first copy, on any node, gets no second one.
#[tokio::test]
async fn an_acknowledged_publish_resent_through_another_node_reaches_each_subscriber_once() {
    let (_pki, nodes) = three_nodes().await;
    let mut readers = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let reader = node.broker.client(&format!("reader{i}")).await;
        let subscription = reader.subscribe("orders.>").await.expect("subscribes");
        readers.push((reader, subscription));
    }
    let device = nodes[2]
        .broker
        .client_builder("device")
        .session_name("device")
        .connect()
        .await
        .expect("connects with a named session");
    let mut stored = device
        .subscribe_at_least_once("orders.>")
        .await
        .expect("subscribes at least once");
    let on_n1 = nodes[0].broker.client("shop").await;
    let first = within(
        "acknowledged on n1",
        on_n1.publish_acked("orders.new", Bytes::from_static(b"order 1")),
    )
    .await
    .expect("acknowledged");
    for (_, subscription) in &mut readers {
        let order = within("the first copy", subscription.recv())
            .await
            .expect("open");
        assert_eq!(order.payload().as_ref(), b"order 1");
    }
    let order = within("the first copy", stored.recv()).await.expect("open");
    assert_eq!(order.payload().as_ref(), b"order 1");

    let on_n2 = nodes[1].broker.client("shop").await;
    let again = within(
        "the resend answered on n2",
        on_n2.publish_acked_with(
            "orders.new",
            Bytes::from_static(b"order 1"),
            cassini_client::PublishOptions::new().message_id(first.message_id),
        ),
    )
    .await
    .expect("acknowledged");
    assert!(!again.duplicate, "no dedupe window of n2 holds it");
    on_n2
        .publish_acked("orders.end", Bytes::from_static(b"marker"))
        .await
        .expect("marker");
    for (_, subscription) in &mut readers {
        let next = within("the marker", subscription.recv())
            .await
            .expect("open");
        assert_eq!(next.topic(), "orders.end", "no second copy of the order");
    }
    let next = within("the marker", stored.recv()).await.expect("open");
    assert!(
        next.topic() == "orders.end" || next.is_redelivered(),
        "no unmarked second copy of the order at least once"
    );
    let skipped: u64 = nodes
        .iter()
        .map(|node| node.broker.broker.counters().snapshot().duplicates_skipped)
        .sum();
    assert_eq!(skipped, 4, "one copy kept from each subscription");
    drop((readers, stored));
    for client in [device, on_n1, on_n2] {
        client.close().await.expect("close");
    }
    stop_all(nodes).await;
}
