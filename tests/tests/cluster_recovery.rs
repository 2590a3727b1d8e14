//! Two ways a node's copy of a replicated named session recovers when the cluster's records
//! moved past it (docs/CLUSTERING.md, "Replicated sessions" and "Expiry"): three brokers in one
//! process with `members`, talking real QUIC on port 0 with node certificates made in the test.
//!
//! - A copy whose change under an older claim of its own node was refused by the log (its
//!   client attached again on the same node while the change was on its way) writes it again
//!   under the newer claim, with its dedupe pair: the publish it stored is acknowledged, a
//!   resend on another node is a duplicate, and the session delivers every acknowledged
//!   publish once, in order. The change is kept on its way with the
//!   broker's test hook `hold_replicated_entries`.
//! - A detached copy ends when the cluster forgets its session (expired by the leader, or
//!   forgotten to make room for another claim of its identity), whatever its own expiry timer
//!   says: a client naming the session on that node gets a new session.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_broker::cluster::ClusterConfig;
use cassini_broker::replication::{Owner, SessionKey};
use cassini_broker::BrokerConfig;
use cassini_client::{ConnectionState, DisconnectReason, PublishOptions, Subscription};
use cassini_e2e::cluster::{dial_full_mesh, start_endpoint};
use cassini_e2e::edge::wait_for_state;
use cassini_e2e::{eventually, identity_of, raw, raw_connect, within, Pki, TestBroker};
use cassini_protocol::{Frame, Hello, PROTOCOL_VERSION};
use cassini_quic::cluster::{ClusterNode, ClusterOptions};

const MEMBERS: [&str; 3] = ["n1", "n2", "n3"];

struct Node {
    broker: TestBroker,
    cluster: ClusterNode,
}

impl Node {
    fn owner(&self, session: &SessionKey) -> Option<Owner> {
        self.cluster
            .port()
            .replica()
            .and_then(|replica| replica.owner(session))
    }

    fn leader(&self) -> Option<String> {
        self.cluster.port().replica().and_then(|r| r.leader())
    }

    async fn sessions(&self) -> usize {
        self.broker.stats().await.sessions
    }

    async fn stop(self) {
        self.cluster.close(Duration::from_secs(1)).await;
        self.broker.stop().await;
    }
}

/// The three members, each configured by `config(name)`, in a full mesh with one leader they all know.
async fn three_members(config: impl Fn(&str) -> BrokerConfig) -> (Pki, Vec<Node>) {
    let pki = Pki::new();
    let mut nodes = Vec::new();
    for name in MEMBERS {
        let base = config(name);
        let config = BrokerConfig {
            cluster: Some(ClusterConfig {
                members: MEMBERS.iter().map(|member| member.to_string()).collect(),
                ..ClusterConfig::node(name)
            }),
            ..base
        };
        let broker = TestBroker::start_sharing_ca(&pki, config).await;
        let options = ClusterOptions::new("test", "127.0.0.1:0".parse().expect("addr"), vec![]);
        let cluster = start_endpoint(&pki, &broker, name, options);
        nodes.push(Node { broker, cluster });
    }
    dial_full_mesh(nodes.iter().map(|node| &node.cluster));
    eventually("the members elect a leader they all know", || async {
        let leaders: Vec<Option<String>> = nodes.iter().map(Node::leader).collect();
        (leaders[0].is_some() && leaders.iter().all(|l| *l == leaders[0])).then_some(())
    })
    .await;
    (pki, nodes)
}

fn alice(name: &str) -> SessionKey {
    SessionKey {
        identity: "alice".into(),
        name: name.into(),
    }
}

/// A raw connection attached to a named session, its control stream open.
struct Attached {
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    _control: (quinn::SendStream, quinn::RecvStream),
}

impl Attached {
    /// The client goes away without a goodbye: its session detaches.
    async fn vanish(self) {
        raw::vanish(&self.endpoint, &self.connection).await;
    }
}

/// A raw connection of identity `alice` to `node`, attached to the session named `name`, with
/// an at-most-once subscription to `filter` made (so the session has records).
async fn attach_with_subscription(pki: &Pki, node: &Node, name: &str, filter: &str) -> Attached {
    let (chain, key) = identity_of(&pki.client("alice"));
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
    let (_, mut send, mut recv) = raw::send_hello(&connection, hello)
        .await
        .expect("the claim is committed and the session attached");
    raw::send_subscribe(&mut send, 1, filter).await;
    let answer = raw::read_frame(&mut recv, &mut bytes::BytesMut::new()).await;
    assert!(
        matches!(answer, Some(Frame::Subscribed(_))),
        "the subscription is made: {answer:?}"
    );
    Attached {
        endpoint,
        connection,
        _control: (send, recv),
    }
}

/// Alice's client attached to her session `device` on `node`, with its at-least-once
/// subscription to `device.cmd` (made, or taken up).
async fn attach_device(node: &Node) -> (cassini_client::Client, Subscription) {
    let client = node
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("attaches to its named session");
    let subscription = client
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("subscribes at least once");
    (client, subscription)
}

/// Receives `count` messages from `subscription`: payload and whether it was marked
/// redelivered.
async fn receive(subscription: &mut Subscription, count: usize) -> Vec<(String, bool)> {
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

/// The fault run's case (seed 8768459929076008186): the session's client attached again on
/// the node serving it while a change the session made under the older claim was on its way
/// to the log, which then refused it (the newer claim owns the session). The copy moved on to
/// the newer claim (no other node claimed the session in between), so the change is written
/// again under that claim, before anything the copy wrote later, with the entry's dedupe
/// pairs: the acknowledged publish it held is acknowledged, a resend of it on another node is
/// a duplicate (seed 14638965006975016213), and every publish reaches the session once, in
/// order.
#[tokio::test]
async fn a_copy_whose_change_under_its_older_claim_was_refused_writes_it_again_under_the_newer_one()
{
    let (pki, nodes) = three_members(|_| BrokerConfig::default()).await;
    let node = &nodes[2];
    let session = alice("device");

    let (first, mut subscription) = attach_device(node).await;
    let publisher = node.broker.client("publisher").await;
    publisher
        .publish_acked("device.cmd", Bytes::from_static(b"one"))
        .await
        .expect("acknowledged");
    assert_eq!(
        receive(&mut subscription, 1).await,
        [("one".to_owned(), false)],
        "sent, not acknowledged"
    );
    let older = node.owner(&session).expect("the first claim").epoch;

    // A publish to the session stores its message under the older claim, and the entry
    // holding it is on its way to the log (held by the test's hook) ...
    node.broker.broker.hold_replicated_entries(true);
    let in_flight = tokio::spawn({
        let publisher = publisher.clone();
        async move {
            publisher
                .publish_acked("device.cmd", Bytes::from_static(b"two"))
                .await
        }
    });
    within(
        "the entry is on its way",
        node.broker.broker.replicated_entry_held(),
    )
    .await;
    // ... when the client attaches again on the same node (its first connection looked dead
    // to it): the newer claim is committed, and the session moves on to it, closing the first
    // connection.
    let (chain, key) = identity_of(&pki.client("alice"));
    let (_endpoint, again) = raw_connect(node.broker.addr, pki.ca_certs(), chain, key)
        .await
        .expect("raw connection");
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: None,
        client_name: Some("raw".into()),
        positions: Vec::new(),
        session_name: Some("device".into()),
    };
    let hello = tokio::spawn({
        let again = again.clone();
        async move { raw::send_hello(&again, hello).await }
    });
    wait_for_state(&first, "the first connection is taken over", |state| {
        matches!(
            state,
            ConnectionState::Disconnected {
                reason: DisconnectReason::SessionTakenOver
            }
        )
    })
    .await;
    let newer = node.owner(&session).expect("the newer claim");
    assert!(newer.epoch > older, "{newer:?} after {older}");
    assert!(!in_flight.is_finished(), "the publish waits for its entry");

    // The entry reaches the log after the newer claim, which refuses it; the copy moved on to
    // the newer claim, so the change is written again under it.
    node.broker.broker.hold_replicated_entries(false);
    let acknowledged = within("the publish is answered", in_flight)
        .await
        .expect("publish task");
    let two = match acknowledged {
        Ok(ack) => ack.message_id,
        Err(err) => panic!("the change is written again under the newer claim: {err:?}"),
    };
    // Its dedupe pair goes again with it: every node remembers the publish.
    eventually("n1 remembers the publish", || async {
        nodes[0]
            .cluster
            .port()
            .replica()
            .is_some_and(|replica| replica.seen("publisher", two, unix_ms()))
            .then_some(())
    })
    .await;
    let _answered = within("the second connection's hello is answered", hello)
        .await
        .expect("hello task");
    again.close(0u32.into(), b"gone");

    // The client resumes on the node: the same session, its copy whole.
    let resumed = node
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("resumes its named session");
    assert!(
        matches!(
            resumed.state(),
            ConnectionState::Connected { resumed: true, .. }
        ),
        "the session is resumed: {}",
        resumed.state()
    );
    assert_eq!(resumed.session_id(), first.session_id(), "the same session");
    let mut taken = resumed
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("takes the subscription up");
    assert_eq!(taken.id(), subscription.id(), "the same subscription");

    // Its acknowledgement lost, the publisher sends "two" again through n1: a duplicate.
    let elsewhere = nodes[0].broker.client("publisher").await;
    let again = elsewhere
        .publish_acked_with(
            "device.cmd",
            Bytes::from_static(b"two"),
            PublishOptions::new().message_id(two),
        )
        .await
        .expect("answered");
    assert!(again.duplicate, "n1 knows the publish n3 wrote again");

    // Every acknowledged publish reaches the session once, in order.
    publisher
        .publish_acked("device.cmd", Bytes::from_static(b"three"))
        .await
        .expect("acknowledged");
    assert_eq!(
        receive(&mut taken, 3).await,
        [
            ("one".to_owned(), true),
            ("two".to_owned(), true),
            ("three".to_owned(), false)
        ],
        "what the first two connections were sent comes again, marked; the rest once"
    );
    taken.acknowledge();
    drop(first);
    resumed.close().await.expect("close");
    publisher.close().await.expect("close");
    elsewhere.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

/// A resend answered as a duplicate is acknowledged only once the first publish is (seed
/// 14638965006975016213): while the entry holding the first is on its way, a resend with the
/// same message id on the same node waits for it; when the log refuses that entry (another
/// node took the session over meanwhile), the resend is refused too, and the client's next
/// resend is taken as new and reaches the session.
#[tokio::test]
async fn a_duplicate_is_acknowledged_only_once_the_first_publish_is() {
    let (_pki, nodes) = three_members(|_| BrokerConfig::default()).await;
    let node = &nodes[2];
    let (first, _subscription) = attach_device(node).await;
    let publisher = node.broker.client("publisher").await;
    let resending = node.broker.client("publisher").await;
    let publish = |client: &cassini_client::Client| {
        let client = client.clone();
        async move {
            client
                .publish_acked_with(
                    "device.cmd",
                    Bytes::from_static(b"order"),
                    PublishOptions::new().message_id(7),
                )
                .await
        }
    };

    // The first publish stores its message for the session, and its entry is on its way.
    node.broker.broker.hold_replicated_entries(true);
    let in_flight = tokio::spawn(publish(&publisher));
    within(
        "the entry is on its way",
        node.broker.broker.replicated_entry_held(),
    )
    .await;
    // A resend on the same node is a duplicate, and its answer waits for the first's entry.
    let resent = tokio::spawn(publish(&resending));
    eventually("the resend is taken for a duplicate", || async {
        (node.broker.broker.counters().snapshot().duplicates == 1).then_some(())
    })
    .await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), async {
            while !resent.is_finished() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .is_err(),
        "the duplicate is not acknowledged while the first publish's entry is on its way"
    );

    // The session's client attaches on another node: the log refuses the held entry.
    let (moved, mut taken) = attach_device(&nodes[0]).await;
    node.broker.broker.hold_replicated_entries(false);
    let refused = within("the first publish is answered", in_flight)
        .await
        .expect("publish task");
    assert!(refused.is_err(), "its entry was refused: {refused:?}");
    let resent = within("the resend is answered", resent)
        .await
        .expect("publish task");
    assert!(
        resent.is_err(),
        "a duplicate of a refused publish is refused too: {resent:?}"
    );

    // The client's next resend is new, and reaches the session once.
    let accepted = within("the next resend is answered", publish(&resending))
        .await
        .expect("acknowledged");
    assert!(!accepted.duplicate, "taken as new");
    assert_eq!(receive(&mut taken, 1).await, [("order".to_owned(), false)]);
    moved.close().await.expect("close");
    publisher.close().await.expect("close");
    resending.close().await.expect("close");
    drop(first);
    for node in nodes {
        node.stop().await;
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// `sessions.expiry` of the members that expire the session (one of them leads).
const SHORT_EXPIRY: Duration = Duration::from_secs(2);

/// The session's detached copy is on n3, whose own expiry timer would keep it for an hour (as a
/// node whose clock runs behind the leader's, or one healed after the leader's sweep, would
/// keep it past the cluster's expiry). The leader expires the session; n3 forgets the records
/// and ends its copy; a client naming the session on n3 gets a new one.
#[tokio::test]
async fn a_detached_copy_ends_when_the_cluster_expires_its_session() {
    let (pki, nodes) = three_members(|name| {
        let mut config = BrokerConfig::default();
        config.sessions.expiry = if name == "n3" {
            Duration::from_secs(3600)
        } else {
            SHORT_EXPIRY
        };
        config
    })
    .await;
    eventually("a member with the short expiry leads", || async {
        nodes[2]
            .leader()
            .filter(|leader| leader != "n3")
            .map(|_| ())
    })
    .await;
    let session = alice("device");
    let attached = attach_with_subscription(&pki, &nodes[2], "device", "device.log").await;
    eventually("n3's copy is served", || async {
        (nodes[2].sessions().await == 1).then_some(())
    })
    .await;
    let detached = Instant::now();
    attached.vanish().await;

    // Released, then expired by the leader: no member holds the claim or the records.
    eventually("every member forgets the session", || async {
        nodes
            .iter()
            .all(|node| {
                let replica = node.cluster.port().replica().expect("a member");
                replica.owner(&session).is_none() && replica.records(&session).is_none()
            })
            .then_some(())
    })
    .await;
    assert!(
        detached.elapsed() >= SHORT_EXPIRY,
        "not before its expiry: {:?}",
        detached.elapsed()
    );
    eventually("n3's detached copy ends", || async {
        (nodes[2].sessions().await == 0).then_some(())
    })
    .await;

    let client = nodes[2]
        .broker
        .client_builder("alice")
        .session_name("device")
        .connect()
        .await
        .expect("connects");
    assert!(
        matches!(
            client.state(),
            ConnectionState::Connected { resumed: false, .. }
        ),
        "a new session, not n3's old copy: {}",
        client.state()
    );
    assert!(
        client.unclaimed_subscriptions().is_empty(),
        "a new session has no subscriptions"
    );
    client.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}

/// One session per identity: a detached session's released claim is forgotten, with its
/// records, when its identity claims another session on another node. Its detached copy
/// (kept by the node's own timer for `sessions.expiry`, 300 s) ends there; a client naming
/// it again on that node gets a new session.
#[tokio::test]
async fn a_detached_copy_ends_when_the_cluster_forgets_its_session_to_make_room() {
    let (pki, nodes) = three_members(|_| {
        let mut config = BrokerConfig::default();
        config.limits.max_sessions_per_identity = 1;
        config
    })
    .await;
    attach_with_subscription(&pki, &nodes[2], "first", "device.log")
        .await
        .vanish()
        .await;
    eventually("n3 released its claim", || async {
        nodes[0]
            .cluster
            .port()
            .replica()
            .expect("a member")
            .released(0, 16)
            .iter()
            .any(|claim| claim.session == alice("first"))
            .then_some(())
    })
    .await;
    assert_eq!(nodes[2].sessions().await, 1, "n3 keeps the detached copy");

    // The identity's one claim goes to another session, on n1: "first" is forgotten.
    let second = attach_with_subscription(&pki, &nodes[0], "second", "device.log").await;
    eventually("n3 forgets the first session's records", || async {
        nodes[2]
            .cluster
            .port()
            .replica()
            .expect("a member")
            .records(&alice("first"))
            .is_none()
            .then_some(())
    })
    .await;
    eventually("n3's detached copy ends", || async {
        (nodes[2].sessions().await == 0).then_some(())
    })
    .await;
    second.vanish().await;

    let client = eventually("the identity's claim is free again", || async {
        nodes[2]
            .broker
            .client_builder("alice")
            .session_name("first")
            .connect()
            .await
            .ok()
    })
    .await;
    assert!(
        matches!(
            client.state(),
            ConnectionState::Connected { resumed: false, .. }
        ),
        "a new session, not n3's old copy: {}",
        client.state()
    );
    assert!(client.unclaimed_subscriptions().is_empty());
    client.close().await.expect("close");
    for node in nodes {
        node.stop().await;
    }
}
