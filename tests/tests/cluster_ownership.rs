//! Replicated session ownership (docs/CLUSTERING.md, "Session ownership"): three brokers in one
//! process with `members`, talking real QUIC on port 0 with node certificates made in the
//! test. A named session claimed on another node fences the old connection with
//! `SESSION_TAKEN_OVER`; claims get strictly increasing epochs on every node; a node cut off
//! from the majority refuses claims with `NO_QUORUM` after its claim timeout, and closes the
//! connections of its claimed sessions with `NO_QUORUM` once its lease runs out, before the
//! majority gives the session to another node; one identity holds at most
//! `limits.max_sessions_per_identity` claims in use across the cluster (beyond,
//! `TOO_MANY_SESSIONS_FOR_IDENTITY`, and other identities unaffected); of five members split
//! with the old leader on the minority side, the minority's follower lets its client go before
//! the majority attaches the session; the first member, restarted empty, rejoins the group
//! without initializing a second one.

use std::time::{Duration, Instant};

use cassini_broker::cluster::ClusterConfig;
use cassini_broker::replication::{Owner, SessionKey};
use cassini_broker::BrokerConfig;
use cassini_e2e::cluster::{dial_full_mesh, start_endpoint};
use cassini_e2e::{eventually, identity_of, raw, raw_connect, within, Pki, TestBroker};
use cassini_protocol::{ErrorCode, Hello, PROTOCOL_VERSION};
use cassini_quic::cluster::{ClusterNode, ClusterOptions};
use cassini_quic::faults::{FaultControl, FaultPlan};

const MEMBERS: [&str; 3] = ["n1", "n2", "n3"];

const FIVE: [&str; 5] = ["n1", "n2", "n3", "n4", "n5"];

/// The claim timeout of these tests' nodes (the default is 3 s).
const CLAIM_TIMEOUT: Duration = Duration::from_millis(1500);

/// The lease of these tests' nodes (the default, 2 s): longer than an election after the
/// leader stops (the election timeout is 0.5 s to 1 s), so only a cut-off node loses it.
const LEASE: Duration = Duration::from_secs(2);

struct Node {
    broker: TestBroker,
    cluster: ClusterNode,
}

impl Node {
    async fn start(pki: &Pki, name: &str, faults: Option<&FaultControl>) -> Self {
        Self::start_among(pki, &MEMBERS, name, faults).await
    }

    async fn start_among(
        pki: &Pki,
        members: &[&str],
        name: &str,
        faults: Option<&FaultControl>,
    ) -> Self {
        Self::start_with(pki, members, name, faults, BrokerConfig::default()).await
    }

    async fn start_with(
        pki: &Pki,
        members: &[&str],
        name: &str,
        faults: Option<&FaultControl>,
        base: BrokerConfig,
    ) -> Self {
        let config = BrokerConfig {
            cluster: Some(ClusterConfig {
                members: members.iter().map(|member| member.to_string()).collect(),
                claim_timeout: CLAIM_TIMEOUT,
                lease: LEASE,
                ..ClusterConfig::node(name)
            }),
            ..base
        };
        let broker = TestBroker::start_sharing_ca(pki, config).await;
        let mut options = ClusterOptions::new("test", "127.0.0.1:0".parse().expect("addr"), vec![]);
        options.layer = faults.map(FaultControl::layer);
        let cluster = start_endpoint(pki, &broker, name, options);
        Self { broker, cluster }
    }

    fn leader(&self) -> Option<String> {
        self.cluster.port().replica().and_then(|r| r.leader())
    }

    fn owner(&self, session: &SessionKey) -> Option<Owner> {
        self.cluster
            .port()
            .replica()
            .and_then(|replica| replica.owner(session))
    }

    async fn stop(self) {
        self.cluster.close(Duration::from_secs(1)).await;
        self.broker.stop().await;
    }
}

/// Three members in a full mesh with one leader they all know.
async fn three_members(faults: [Option<&FaultControl>; 3]) -> (Pki, Vec<Node>) {
    members(&MEMBERS, &faults).await
}

/// `names` in a full mesh with one leader they all know.
async fn members(names: &[&str], faults: &[Option<&FaultControl>]) -> (Pki, Vec<Node>) {
    members_with(names, faults, BrokerConfig::default).await
}

/// `names`, each configured from `base()`, in a full mesh with one leader they all know.
async fn members_with(
    names: &[&str],
    faults: &[Option<&FaultControl>],
    base: impl Fn() -> BrokerConfig,
) -> (Pki, Vec<Node>) {
    let pki = Pki::new();
    let mut nodes = Vec::new();
    for (name, faults) in names.iter().zip(faults) {
        nodes.push(Node::start_with(&pki, names, name, *faults, base()).await);
    }
    dial_full_mesh(nodes.iter().map(|node| &node.cluster));
    eventually("the members elect a leader they all know", || async {
        let leaders: Vec<Option<String>> = nodes.iter().map(Node::leader).collect();
        (leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])).then_some(())
    })
    .await;
    (pki, nodes)
}

/// A raw client connection of identity `alice` to `node`, attached to the session named
/// `name`; `Err` with the close code if the broker refused it.
async fn attach_named(pki: &Pki, node: &Node, name: &str) -> Result<Attached, ErrorCode> {
    attach_named_as(pki, node, "alice", name).await
}

/// A raw connection: its endpoint, the connection, and its control stream.
type Attached = (quinn::Endpoint, quinn::Connection, quinn::SendStream);

/// [`attach_named`] for the client certificate of `identity`.
async fn attach_named_as(
    pki: &Pki,
    node: &Node,
    identity: &str,
    name: &str,
) -> Result<Attached, ErrorCode> {
    let (chain, key) = identity_of(&pki.client(identity));
    let (endpoint, connection) = raw_connect(node.broker.addr, pki.ca_certs(), chain, key)
        .await
        .expect("raw connection");
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: None,
        client_name: Some("raw".into()),
        positions: Vec::new(),
        session_name: Some(name.into()),
    };
    match raw::send_hello(&connection, hello).await {
        Some((_, send, _)) => Ok((endpoint, connection, send)),
        None => Err(raw::close_of(&connection).await.0),
    }
}

fn alice(name: &str) -> SessionKey {
    SessionKey {
        identity: "alice".into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn a_takeover_from_another_node_fences_the_old_connection_and_epochs_strictly_increase() {
    let (pki, nodes) = three_members([None, None, None]).await;
    let session = alice("orders");
    let mut epochs = Vec::new();
    let mut previous: Option<Attached> = None;
    // Around the cluster twice: each attach takes the session from the node before.
    for round in 0..6 {
        let node = &nodes[round % 3];
        let attached = attach_named(&pki, node, "orders")
            .await
            .expect("the claim is committed and the session attached");
        let welcomed = Instant::now();
        let owner = node
            .owner(&session)
            .expect("the claimant applied its claim");
        assert_eq!(owner.node, MEMBERS[round % 3]);
        epochs.push(owner.epoch);
        if let Some((_endpoint, old, _send)) = previous.take() {
            let (code, reason) = within("the old connection is fenced", raw::close_of(&old)).await;
            assert_eq!(code, ErrorCode::SESSION_TAKEN_OVER, "{reason}");
            assert!(reason.contains(MEMBERS[round % 3]), "{reason}");
            assert!(
                welcomed.elapsed() < Duration::from_secs(1),
                "fenced as soon as the old node applies the claim, not at some timeout"
            );
        }
        // The new connection stays up: it is the only one serving the session.
        assert!(attached.1.close_reason().is_none());
        previous = Some(attached);
    }
    assert!(
        epochs.windows(2).all(|pair| pair[0] < pair[1]),
        "epochs strictly increase: {epochs:?}"
    );
    let last = *epochs.last().expect("epochs");
    eventually("every node applied the last claim", || async {
        nodes
            .iter()
            .all(|node| {
                node.owner(&session)
                    .is_some_and(|owner| owner.epoch == last)
            })
            .then_some(())
    })
    .await;
    // Another identity's session of the same name is another session: nothing is fenced.
    let (_endpoint, survivor, _send) = previous.expect("the last connection");
    let _bob = attach_named_as(&pki, &nodes[0], "bob", "orders")
        .await
        .expect("bob's session of the same name is attached");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        survivor.close_reason().is_none(),
        "alice's session is untouched"
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_cut_off_from_the_majority_refuses_claims_with_no_quorum() {
    let cut = FaultControl::new(FaultPlan::default());
    let (pki, nodes) = three_members([None, None, Some(&cut)]).await;
    cut.set_blackhole(true);
    let started = Instant::now();
    assert_eq!(
        attach_named(&pki, &nodes[2], "orders").await.err(),
        Some(ErrorCode::NO_QUORUM),
        "the cut-off node refuses the claim"
    );
    assert!(
        started.elapsed() >= CLAIM_TIMEOUT,
        "refused only after the claim timeout"
    );
    // The majority goes on (electing a new leader first if the cut-off node led).
    let attached = eventually("the majority commits a claim", || async {
        attach_named(&pki, &nodes[0], "orders").await.ok()
    })
    .await;
    assert_eq!(
        nodes[0].owner(&alice("orders")).map(|owner| owner.node),
        Some("n1".to_owned())
    );
    drop(attached);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn the_first_member_restarted_empty_rejoins_without_a_second_bootstrap() {
    let (pki, mut nodes) = three_members([None, None, None]).await;
    let before = attach_named(&pki, &nodes[1], "orders")
        .await
        .expect("claimed on n2");
    let first_epoch = nodes[1].owner(&alice("orders")).expect("claimed").epoch;
    let initialized_by: Vec<bool> = nodes
        .iter()
        .map(|node| {
            node.cluster
                .port()
                .replica()
                .expect("a replica")
                .initialized_here()
        })
        .collect();
    assert_eq!(
        initialized_by,
        [true, false, false],
        "n1 initialized the group"
    );
    // n1, the member that bootstrapped the group, comes back in memory mode: no vote, no log.
    let n1 = nodes.remove(0);
    n1.stop().await;
    let n1 = Node::start(&pki, "n1", None).await;
    let addr = n1.cluster.local_addr().expect("cluster address");
    for node in &nodes {
        n1.cluster
            .dial(node.cluster.local_addr().expect("cluster address"));
        node.cluster.dial(addr);
    }
    nodes.insert(0, n1);
    eventually(
        "the restarted n1 learns the group from its leader",
        || async {
            nodes[0]
                .leader()
                .filter(|leader| Some(leader) == nodes[1].leader().as_ref())
        },
    )
    .await;
    let _after = attach_named(&pki, &nodes[0], "orders")
        .await
        .expect("the restarted n1 claims through the same group");
    let owner = nodes[0].owner(&alice("orders")).expect("claimed");
    assert_eq!(owner.node, "n1");
    let restarted = nodes[0].cluster.port().replica().expect("a replica");
    assert!(
        !restarted.initialized_here(),
        "its peers have been in a group: it waits to be told the membership"
    );
    assert!(owner.epoch > first_epoch, "the same log goes on: {owner:?}");
    // Fenced by n1's claim; or closed before it, when n2's lease ran out while n2 and n3
    // elected a leader after n1 stopped (a loaded machine): never served next to n1's claim.
    let (code, _) = within("n2's connection is fenced", raw::close_of(&before.1)).await;
    assert!(
        code == ErrorCode::SESSION_TAKEN_OVER || code == ErrorCode::NO_QUORUM,
        "closed with {code:?}"
    );
    for node in nodes {
        let replica = node.cluster.port().replica().expect("a replica");
        assert_eq!(
            replica.membership_log_index(),
            Some(0),
            "{}: one membership entry, the first bootstrap's",
            replica.node()
        );
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_cut_off_closes_its_claimed_connections_after_its_lease_before_the_majority_attaches(
) {
    let cut = FaultControl::new(FaultPlan::default());
    let (pki, nodes) = three_members([None, None, Some(&cut)]).await;
    let (_endpoint, old, _send) = attach_named(&pki, &nodes[2], "orders")
        .await
        .expect("claimed on n3");
    cut.set_blackhole(true);
    let cut_at = Instant::now();
    let closed = tokio::spawn(async move {
        let (code, reason) = raw::close_of(&old).await;
        (code, reason, Instant::now())
    });
    let (_endpoint, _new, _send) = eventually("the majority gives n1 the session", || async {
        attach_named(&pki, &nodes[0], "orders").await.ok()
    })
    .await;
    let welcomed = Instant::now();
    let (code, reason, closed_at) = within("n3 lets its client go", closed)
        .await
        .expect("close task");
    assert_eq!(code, ErrorCode::NO_QUORUM, "{reason}");
    assert!(
        closed_at <= welcomed + Duration::from_millis(100),
        "n3 closed its connection ({:?} after the cut) before n1 attached the session ({:?})",
        closed_at - cut_at,
        welcomed - cut_at
    );
    assert!(
        closed_at - cut_at <= LEASE * 2,
        "closed within its lease and a check: {:?}",
        closed_at - cut_at
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn five_members_split_with_the_old_leader_on_the_minority_side_never_serve_a_session_twice() {
    let faults: Vec<FaultControl> = FIVE
        .iter()
        .map(|_| FaultControl::new(FaultPlan::default()))
        .collect();
    let layers: Vec<Option<&FaultControl>> = faults.iter().map(Some).collect();
    let (pki, nodes) = members(&FIVE, &layers).await;
    let leader = nodes[0].leader().expect("a leader");
    let old_leader = FIVE
        .iter()
        .position(|name| *name == leader)
        .expect("a member");
    let follower = (0..FIVE.len())
        .find(|&i| i != old_leader)
        .expect("a follower");
    let (_endpoint, old, _send) = attach_named(&pki, &nodes[follower], "orders")
        .await
        .expect("claimed on the follower");
    // The old leader and the follower serving the session, cut off from the three others but
    // not from each other: the old leader goes on sending heartbeats to its follower.
    let majority: Vec<usize> = (0..FIVE.len())
        .filter(|&i| i != old_leader && i != follower)
        .collect();
    let majority_addrs: Vec<_> = majority
        .iter()
        .map(|&i| nodes[i].cluster.local_addr().expect("cluster address"))
        .collect();
    faults[old_leader].set_cut_off_from(majority_addrs.clone());
    faults[follower].set_cut_off_from(majority_addrs);
    let closed = tokio::spawn(async move {
        let (code, reason) = raw::close_of(&old).await;
        (code, reason, Instant::now())
    });
    let claimant = &nodes[majority[0]];
    let (_endpoint, new, _send) =
        eventually("the majority gives the session to another node", || async {
            attach_named(&pki, claimant, "orders").await.ok()
        })
        .await;
    let welcomed = Instant::now();
    // Exact: the follower's connection was closed when the new one got its Welcome, not later.
    let (code, reason, closed_at) = tokio::time::timeout(Duration::from_millis(200), closed)
        .await
        .expect("the minority's connection was closed before the majority attached the session")
        .expect("close task");
    assert_eq!(code, ErrorCode::NO_QUORUM, "{reason}");
    assert!(
        closed_at <= welcomed,
        "closed {:?} after the new connection's Welcome",
        closed_at - welcomed
    );
    assert!(
        new.close_reason().is_none(),
        "the new connection serves the session"
    );
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn an_identity_holds_at_most_its_maximum_of_sessions_in_use_across_the_cluster() {
    let (pki, nodes) = members_with(&MEMBERS, &[None, None, None], || {
        let mut config = BrokerConfig::default();
        config.limits.max_sessions_per_identity = 2;
        config
    })
    .await;
    // Two sessions in use on n1, so n1's own bound is reached nowhere else.
    let first = attach_named(&pki, &nodes[0], "a").await.expect("a on n1");
    let _second = attach_named(&pki, &nodes[0], "b").await.expect("b on n1");
    assert_eq!(
        attach_named(&pki, &nodes[1], "c").await.err(),
        Some(ErrorCode::TOO_MANY_SESSIONS_FOR_IDENTITY),
        "a third session on another node is refused"
    );
    let _bob = attach_named_as(&pki, &nodes[1], "bob", "c")
        .await
        .expect("another identity is not affected");
    let _again = attach_named(&pki, &nodes[2], "b")
        .await
        .expect("a session in use can be taken over from another node");
    // A session let go makes room.
    let (_endpoint, connection, _send) = first;
    connection.close(0u32.into(), b"done");
    eventually("a released claim makes room", || async {
        attach_named(&pki, &nodes[1], "c").await.ok()
    })
    .await;
    for node in nodes {
        node.stop().await;
    }
}

/// Receives `count` messages from `subscription`: payload and whether it was marked
/// redelivered.
async fn receive(
    subscription: &mut cassini_client::Subscription,
    count: usize,
) -> Vec<(String, bool)> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = within("the messages arrive", subscription.recv())
            .await
            .expect("the subscription is open");
        received.push((
            String::from_utf8_lossy(message.payload()).into_owned(),
            message.is_redelivered(),
        ));
    }
    received
}

#[tokio::test]
async fn a_session_taken_over_on_another_node_keeps_its_subscriptions_and_unacknowledged_messages()
{
    let (_pki, nodes) = three_members([None, None, None]).await;
    let first = nodes[0]
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("connects to its named session on n1");
    let mut subscription = first
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("subscribes at least once");
    let quiet = first
        .subscribe("device.log")
        .await
        .expect("subscribes at most once");
    nodes[0]
        .broker
        .publish_acked("device.cmd", &["one", "two"])
        .await;
    assert_eq!(
        receive(&mut subscription, 2).await,
        [("one".to_owned(), false), ("two".to_owned(), false)]
    );
    subscription.acknowledge();
    first.ping().await.expect("the acknowledgement reached n1");
    nodes[0]
        .broker
        .publish_acked("device.cmd", &["three", "four"])
        .await;
    assert_eq!(
        receive(&mut subscription, 2).await.len(),
        2,
        "sent, not acknowledged"
    );

    // The same session on n3: taken over, with what n1 wrote through the cluster's log.
    let second = nodes[2]
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("connects to its named session on n3");
    assert!(
        matches!(
            second.state(),
            cassini_client::ConnectionState::Connected { resumed: true, .. }
        ),
        "the session is resumed on n3, not made anew"
    );
    assert_eq!(second.session_id(), first.session_id(), "the same session");
    let mut filters: Vec<String> = second
        .unclaimed_subscriptions()
        .into_iter()
        .map(|subscription| subscription.filter)
        .collect();
    filters.sort();
    assert_eq!(filters, ["device.cmd", "device.log"]);
    let mut taken = second
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("takes the subscription up");
    assert_eq!(taken.id(), subscription.id());
    assert_eq!(
        receive(&mut taken, 2).await,
        [("three".to_owned(), true), ("four".to_owned(), true)],
        "what n1 sent and the client did not acknowledge comes again, marked"
    );
    // New messages reach the session where it is now, published on any node.
    nodes[1].broker.publish_acked("device.cmd", &["five"]).await;
    assert_eq!(receive(&mut taken, 1).await, [("five".to_owned(), false)]);
    taken.acknowledge();
    assert_eq!(
        taken.take_gaps(),
        [cassini_client::Gap::Missed {
            from: 5,
            to: 5,
            reason: Some(cassini_protocol::GapReason::ClusterRoute),
        }],
        "one sequence stands for what was published while no node served the session: a \
         floor (here, nothing was)"
    );
    drop(quiet);
    second.close().await.expect("close");
    drop(first);
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_client_refused_with_no_quorum_by_its_first_address_connects_to_the_next() {
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, nodes) = three_members([None, None, Some(&cut)]).await;
    cut.set_blackhole(true);
    let addresses = format!("{},{}", nodes[2].broker.addr, nodes[0].broker.addr);
    let client = within(
        "the client connects past the cut-off node",
        nodes[0]
            .broker
            .client_builder("alice")
            .address(addresses.as_str())
            .session_name("device")
            .connect_timeout(Duration::from_secs(20))
            .connect(),
    )
    .await
    .expect("a node of the majority takes the session");
    eventually("n1 owns the session", || async {
        (nodes[0].owner(&alice("device")).map(|owner| owner.node) == Some("n1".to_owned()))
            .then_some(())
    })
    .await;
    cut.set_blackhole(false);
    client.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_cut_off_refuses_acknowledged_publishes_to_a_named_session_with_no_quorum() {
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, nodes) = three_members([None, None, Some(&cut)]).await;
    let subscriber = nodes[2]
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("connects to its named session on n3");
    let _subscription = subscriber
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("subscribes at least once");
    // An unnamed publisher: its own connection holds no claim, so only the publish needs one.
    let publisher = nodes[2].broker.client("publisher").await;
    within(
        "an acknowledged publish while n3 is in the majority",
        publisher.publish_acked("device.cmd", bytes::Bytes::from_static(b"before")),
    )
    .await
    .expect("acknowledged");
    cut.set_blackhole(true);
    let refused = within(
        "n3 answers the publish without a quorum",
        publisher.publish_acked("device.cmd", bytes::Bytes::from_static(b"cut off")),
    )
    .await;
    match refused {
        Err(cassini_client::PublishError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::NO_QUORUM)
        }
        other => panic!("expected NO_QUORUM, got {other:?}"),
    }
    cut.set_blackhole(false);
    drop(subscriber);
    publisher.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_node_cut_off_refuses_every_acknowledged_publish_and_still_routes_at_most_once_ones() {
    let cut = FaultControl::new(FaultPlan::default());
    let (_pki, nodes) = three_members([None, None, Some(&cut)]).await;
    let subscriber = nodes[2].broker.client("bob").await;
    let mut subscription = subscriber.subscribe("metrics").await.expect("subscribes");
    let publisher = nodes[2].broker.client("publisher").await;
    cut.set_blackhole(true);
    // Its dedupe pair needs a quorum, whatever the publish stores: a resend on another node
    // must be known as one.
    let refused = within(
        "n3 answers the acknowledged publish without a quorum",
        publisher.publish_acked("metrics", bytes::Bytes::from_static(b"acked")),
    )
    .await;
    match refused {
        Err(cassini_client::PublishError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::NO_QUORUM)
        }
        other => panic!("expected NO_QUORUM, got {other:?}"),
    }
    let retained = within(
        "n3 answers the retained publish without a quorum",
        publisher.publish_acked_with(
            "metrics",
            bytes::Bytes::from_static(b"state"),
            cassini_client::PublishOptions::new().retain(true),
        ),
    )
    .await;
    assert!(
        matches!(&retained, Err(cassini_client::PublishError::Rejected { code, .. }) if *code == ErrorCode::NO_QUORUM),
        "{retained:?}"
    );
    publisher
        .publish("metrics", bytes::Bytes::from_static(b"at most once"))
        .await
        .expect("published");
    // Before its lease ran out n3 routed the refused publishes (a resend may deliver them
    // again, as a refusal allows); the at-most-once one arrives after them.
    loop {
        let message = within("at-most-once pub/sub keeps working", subscription.recv())
            .await
            .expect("open");
        if message.payload().as_ref() == b"at most once" {
            break;
        }
    }
    cut.set_blackhole(false);
    drop(subscriber);
    publisher.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn a_retained_value_published_on_one_node_reaches_a_subscriber_on_another_after_it_stopped() {
    let (_pki, mut nodes) = three_members([None, None, None]).await;
    let publisher = nodes[0].broker.client("sensor").await;
    within(
        "the retained publish on n1 is acknowledged",
        publisher.publish_acked_with(
            "state.door",
            bytes::Bytes::from_static(b"open"),
            cassini_client::PublishOptions::new().retain(true),
        ),
    )
    .await
    .expect("acknowledged once committed");
    publisher.close().await.expect("close");
    let first = nodes.remove(0);
    first.stop().await;
    let replica = nodes[1].cluster.port().replica().expect("a member");
    eventually("n3 applied the retained value", || async {
        replica.retained("state.door").map(|_| ())
    })
    .await;
    let subscriber = nodes[1].broker.client("display").await;
    let mut subscription = subscriber.subscribe("state.>").await.expect("subscribes");
    let value = within("the retained value on n3", subscription.recv())
        .await
        .expect("open");
    assert_eq!(value.payload().as_ref(), b"open");
    assert!(value.is_retained());
    // Cleared on n2: gone on n3 too.
    eventually("n2 and n3 have a leader between them", || async {
        let leaders: Vec<Option<String>> = nodes.iter().map(Node::leader).collect();
        (leaders[0].as_deref().is_some_and(|leader| leader != "n1") && leaders[1] == leaders[0])
            .then_some(())
    })
    .await;
    let clearer = nodes[0].broker.client("sensor").await;
    within(
        "the clear on n2 is acknowledged",
        clearer.publish_acked_with(
            "state.door",
            bytes::Bytes::new(),
            cassini_client::PublishOptions::new().retain(true),
        ),
    )
    .await
    .expect("acknowledged");
    eventually("n3 applied the clear", || async {
        replica.retained("state.door").is_none().then_some(())
    })
    .await;
    let late = nodes[1].broker.client("late").await;
    let mut nothing = late.subscribe("state.>").await.expect("subscribes");
    clearer
        .publish_acked("state.marker", bytes::Bytes::from_static(b"m"))
        .await
        .expect("marker");
    let next = within("the marker", nothing.recv()).await.expect("open");
    assert_eq!(next.topic(), "state.marker", "no retained value replayed");
    drop((subscriber, late));
    clearer.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn an_acknowledged_publish_resent_on_another_node_is_a_duplicate_and_delivered_once() {
    let (_pki, nodes) = three_members([None, None, None]).await;
    let subscriber = nodes[2].broker.client("warehouse").await;
    let mut subscription = subscriber.subscribe("orders.>").await.expect("subscribes");
    let on_n1 = nodes[0].broker.client("shop").await;
    let first = within(
        "acknowledged on n1",
        on_n1.publish_acked("orders.new", bytes::Bytes::from_static(b"order 1")),
    )
    .await
    .expect("acknowledged");
    assert!(!first.duplicate);
    // Its acknowledgement lost, the publisher sends it again through n2.
    let replica = nodes[1].cluster.port().replica().expect("a member");
    let now_ms = || {
        u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_millis(),
        )
        .expect("ms")
    };
    eventually("n2 applied the publish's entry", || async {
        replica
            .seen("shop", first.message_id, now_ms())
            .then_some(())
    })
    .await;
    let on_n2 = nodes[1].broker.client("shop").await;
    let again = within(
        "answered on n2",
        on_n2.publish_acked_with(
            "orders.new",
            bytes::Bytes::from_static(b"order 1"),
            cassini_client::PublishOptions::new().message_id(first.message_id),
        ),
    )
    .await
    .expect("acknowledged");
    assert!(again.duplicate, "n2 knows the publish n1 accepted");
    on_n2
        .publish_acked("orders.end", bytes::Bytes::from_static(b"marker"))
        .await
        .expect("marker");
    let order = within("the order", subscription.recv())
        .await
        .expect("open");
    assert_eq!(order.payload().as_ref(), b"order 1");
    let marker = within("the marker", subscription.recv())
        .await
        .expect("open");
    assert_eq!(
        marker.topic(),
        "orders.end",
        "the resend was not routed again"
    );
    drop(subscriber);
    on_n1.close().await.expect("close");
    on_n2.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}
