//! System events end to end: the broker publishes what happens to it on `$SYS.event.<kind>`
//! as JSON; only identities an ACL rule naming `$SYS` allows may read them, and nobody may
//! publish there.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_broker::config::EventsConfig;
use cassini_broker::{Acl, BrokerConfig};
use cassini_client::{Client, ClientError, Subscription};
use cassini_e2e::raw::{encoded, hello, read_frame};
use cassini_e2e::{eventually, identity_of, within, Pki, TestBroker};
use cassini_protocol::{ErrorCode, Frame, OverflowPolicy, Publish, SubscribeOptions};
use cassini_quic::server::ServerOptions;
use futures_util::StreamExt;
use serde_json::Value;

const ACL: &str = r#"
default = "allow"

[[rule]]
identity = "ops"
subscribe = ["$SYS.>"]
publish = ["$SYS.>"]

[[rule]]
identity = "sensor-*"
deny_publish = ["orders.>"]
"#;

async fn broker_with(events: EventsConfig) -> TestBroker {
    let config = BrokerConfig {
        acl: Acl::parse(ACL, "test ACL").expect("valid ACL"),
        events,
        ..BrokerConfig::default()
    };
    TestBroker::start_with(config, ServerOptions::default()).await
}

/// The next event on `events` whose `kind` is `kind` (others are skipped), as JSON.
async fn next_event(events: &mut Subscription, kind: &str) -> Value {
    within(&format!("a {kind} event"), async {
        loop {
            let message = events.next().await.expect("the events subscription ended");
            let event: Value = serde_json::from_slice(message.payload()).expect("JSON payload");
            assert_eq!(
                message.topic(),
                format!("$SYS.event.{}", event["kind"].as_str().expect("kind")),
                "each kind has its own topic"
            );
            assert!(event["time_ms"].as_u64().is_some_and(|ms| ms > 0));
            if event["kind"] == kind {
                return event;
            }
        }
    })
    .await
}

fn assert_not_authorized<T: std::fmt::Debug, E: Into<ClientError>>(
    result: Result<T, E>,
    what: &str,
) {
    match result.map_err(Into::into) {
        Err(ClientError::Request { code, .. }) => {
            assert_eq!(code, ErrorCode::NOT_AUTHORIZED, "{what}")
        }
        other => panic!("{what}: expected NOT_AUTHORIZED, got {other:?}"),
    }
}

#[tokio::test]
async fn an_allowed_identity_sees_connects_disconnects_and_authorization_failures() {
    let broker = broker_with(EventsConfig::default()).await;
    let ops = broker.client("ops").await;
    let mut events = ops.subscribe("$SYS.event.>").await.expect("ops may read");

    let sensor = broker.client("sensor-1").await;
    let connect = next_event(&mut events, "connect").await;
    assert_eq!(connect["identity"], "sensor-1");
    assert_eq!(connect["resumed"], false);
    let session = connect["session"].as_str().expect("session").to_string();
    assert_eq!(session.len(), 32, "a session id in hex: {session}");
    assert!(connect["remote"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:")));

    // A denied publish and a denied subscription are both authorization failures.
    let denied = sensor
        .publish_acked("orders.new", Bytes::from_static(b"no"))
        .await;
    assert!(denied.is_err(), "the ACL denies it: {denied:?}");
    let failure = next_event(&mut events, "authorization_failed").await;
    assert_eq!(failure["identity"], "sensor-1");
    assert_eq!(failure["action"], "publish to");
    assert_eq!(failure["target"], "orders.new");
    assert_not_authorized(sensor.subscribe("$SYS.>").await, "sensor reads $SYS");
    let failure = next_event(&mut events, "authorization_failed").await;
    assert_eq!(failure["action"], "subscribe to");
    assert_eq!(failure["target"], "$SYS.>");

    sensor.close().await.expect("goodbye");
    let disconnect = next_event(&mut events, "disconnect").await;
    assert_eq!(disconnect["identity"], "sensor-1");
    assert_eq!(disconnect["session"], session.as_str());
    assert_eq!(disconnect["clean"], true);
    assert_eq!(disconnect["reason"], "goodbye");
    assert!(disconnect["connected_ms"].as_u64().is_some());

    assert!(broker.broker.counters().snapshot().events_published >= 4);
    broker.stop().await;
}

#[tokio::test]
async fn identities_the_acl_does_not_name_cannot_read_system_events() {
    let broker = broker_with(EventsConfig::default()).await;
    let sensor = broker.client("sensor-1").await;
    for filter in ["$SYS.>", "$SYS.event.>", "$SYS.event.connect"] {
        assert_not_authorized(sensor.subscribe(filter).await, filter);
    }
    // A filter starting with a wildcard never matches a system topic.
    let mut everything = sensor.subscribe(">").await.expect("allowed");
    let other = broker.client("sensor-2").await;
    other.close().await.expect("goodbye");
    other_traffic_only(&broker, &mut everything).await;
    broker.stop().await;

    // Without an ACL file nobody may read them.
    let open = TestBroker::start().await;
    let anyone = open.client("ops").await;
    assert_not_authorized(anyone.subscribe("$SYS.event.>").await, "allow-all ACL");
    open.stop().await;
}

/// Publishes a marker and asserts it is the first thing `everything` receives: no system
/// event reached it.
async fn other_traffic_only(broker: &TestBroker, everything: &mut Subscription) {
    let publisher = broker.client("marker").await;
    publisher
        .publish_acked("marker.x", Bytes::from_static(b"m"))
        .await
        .expect("publish");
    let first = within("the marker", everything.next())
        .await
        .expect("a message");
    assert_eq!(first.topic(), "marker.x");
}

#[tokio::test]
async fn no_client_may_publish_on_system_topics_even_with_an_acl_rule() {
    let broker = broker_with(EventsConfig::default()).await;
    let ops = broker.client("ops").await;
    let mut events = ops.subscribe("$SYS.event.>").await.expect("ops may read");

    // Spoken by hand, so no client-side check stands in the way.
    let (_endpoint, raw) = broker.raw_connection("ops").await;
    let (_welcome, _control_send, _control_recv) = hello(&raw, None).await.expect("welcome");
    let (mut send, mut recv) = raw.open_bi().await.expect("publish stream");
    let forged = Frame::Publish(Publish {
        topic: "$SYS.event.connect".into(),
        payload: Bytes::from_static(br#"{"kind":"connect","identity":"forged"}"#),
        message_id: Some(1),
        ack: true,
        ..Publish::default()
    });
    send.write_all(&encoded(&forged)).await.expect("write");
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::PublishRejected(rejected)) => {
            assert_eq!(rejected.code, ErrorCode::INVALID_TOPIC);
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    // The raw connection's own connect event comes; the forged one never does.
    let connect = next_event(&mut events, "connect").await;
    assert_eq!(connect["identity"], "ops");
    let client = broker.client("after").await;
    let next = next_event(&mut events, "connect").await;
    assert_eq!(next["identity"], "after", "no forged event in between");
    client.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn authentication_failures_and_periodic_stats_are_published() {
    let broker = broker_with(EventsConfig {
        stats_interval: Duration::from_millis(200),
        ..EventsConfig::default()
    })
    .await;
    let ops = broker.client("ops").await;
    let mut events = ops.subscribe("$SYS.event.>").await.expect("ops may read");

    let stranger = Pki::new();
    let (chain, key) = identity_of(&stranger.client("mallory"));
    let refused = Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .connect()
        .await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
    let failure = next_event(&mut events, "authentication_failed").await;
    assert_eq!(failure["failure"], "tls");
    assert!(failure["remote"]
        .as_str()
        .is_some_and(|r| r.starts_with("127.0.0.1:")));

    let stats = next_event(&mut events, "stats").await;
    assert_eq!(stats["connections"], 1, "ops is connected");
    assert_eq!(stats["subscriptions"], 1, "ops's events subscription");
    assert!(stats["memory_limit_bytes"].as_u64().is_some_and(|b| b > 0));
    broker.stop().await;
}

#[tokio::test]
async fn a_flood_of_events_never_holds_up_the_data_path() {
    // A queue of one event: whatever the system publisher cannot take at once is dropped and
    // counted, and every refusal still reaches the client at once.
    let broker = broker_with(EventsConfig {
        queue: 1,
        ..EventsConfig::default()
    })
    .await;
    let sensor = broker.client("sensor-1").await;
    let mut errors = sensor.publish_errors().expect("publish error channel");
    // Read as they come: the client keeps a bounded number of refusals nobody reads.
    let refusals = tokio::spawn(async move {
        for _ in 0..500 {
            let refusal = within("refusal", errors.recv()).await.expect("a refusal");
            assert_eq!(refusal.code, ErrorCode::NOT_AUTHORIZED);
        }
    });
    for _ in 0..500 {
        sensor
            .publish("orders.denied", Bytes::from_static(b"x"))
            .await
            .expect("sent");
    }
    within("every refusal reaches the client", refusals)
        .await
        .expect("the refusals' reader");
    // The connect event and 500 authorization failures: each published or counted as dropped.
    eventually("every event accounted for", || async {
        let counters = broker.broker.counters().snapshot();
        (counters.events_published + counters.events_dropped >= 501).then_some(())
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn slow_consumers_and_session_expiries_are_published() {
    let config = BrokerConfig {
        acl: Acl::parse(ACL, "test ACL").expect("valid ACL"),
        sessions: cassini_broker::config::SessionConfig {
            expiry: Duration::from_millis(300),
        },
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start_with(config, ServerOptions::default()).await;
    let ops = broker.client("ops").await;
    let mut events = ops.subscribe("$SYS.event.>").await.expect("ops may read");

    // A subscriber that never reads: its two queues overflow, one closing, one dropping.
    let subscriber = broker.client_with_buffer("stalled", 1).await;
    let bounded = |overflow| SubscribeOptions {
        overflow,
        max_queued_messages: Some(2),
        ..SubscribeOptions::default()
    };
    let _closing = subscriber
        .subscribe_with("slow.close", bounded(OverflowPolicy::Close))
        .await
        .expect("subscribe");
    let _dropping = subscriber
        .subscribe_with("slow.drop", bounded(OverflowPolicy::DropOldest))
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;
    let payload = Bytes::from(vec![7u8; 64 * 1024]);
    for _ in 0..200 {
        for topic in ["slow.close", "slow.drop"] {
            publisher
                .publish(topic, payload.clone())
                .await
                .expect("publish");
        }
    }
    let mut closed = None;
    let mut dropping = None;
    while closed.is_none() || dropping.is_none() {
        let event = next_event(&mut events, "slow_consumer").await;
        assert_eq!(event["identity"], "stalled");
        assert!(event["dropped"].as_u64().is_some_and(|n| n > 0), "{event}");
        match event["filter"].as_str() {
            Some("slow.close") => closed = Some(event),
            Some("slow.drop") => dropping = Some(event),
            other => panic!("unexpected filter {other:?}"),
        }
    }
    let (closed, dropping) = (closed.expect("closed"), dropping.expect("dropping"));
    assert_eq!(
        (closed["policy"].as_str(), closed["closed"].as_bool()),
        (Some("close"), Some(true))
    );
    assert_eq!(
        (dropping["policy"].as_str(), dropping["closed"].as_bool()),
        (Some("drop_oldest"), Some(false))
    );
    publisher.close().await.expect("close");

    // A session left without a goodbye expires.
    let leaver = broker.client("leaver").await;
    leaver.leave().await.expect("leave");
    let disconnect = loop {
        let disconnect = next_event(&mut events, "disconnect").await;
        if disconnect["identity"] == "leaver" {
            break disconnect;
        }
    };
    assert_eq!(disconnect["clean"], false);
    let expired = next_event(&mut events, "session_expired").await;
    assert_eq!(expired["identity"], "leaver");
    assert_eq!(expired["session"], disconnect["session"]);
    assert!(expired["detached_ms"].as_u64().is_some_and(|ms| ms >= 300));
    broker.stop().await;
}

#[tokio::test]
async fn a_store_nearly_full_is_a_store_warning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig {
        acl: Acl::parse(ACL, "test ACL").expect("valid ACL"),
        ..BrokerConfig::default()
    };
    config.storage.mode = cassini_broker::config::StorageMode::Disk;
    config.storage.data_dir = dir.path().to_path_buf();
    config.storage.max_disk_bytes = 256 * 1024;
    let broker = TestBroker::start_with(config, ServerOptions::default()).await;
    let ops = broker.client("ops").await;
    let mut events = ops.subscribe("$SYS.event.>").await.expect("ops may read");

    // An at-least-once subscription that is never read keeps what is published in the store.
    let keeper = broker.client("keeper").await;
    let _kept = keeper
        .subscribe_at_least_once("kept.x")
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;
    let payload = Bytes::from(vec![1u8; 8 * 1024]);
    let mut refused = false;
    for _ in 0..64 {
        if publisher
            .publish_acked("kept.x", payload.clone())
            .await
            .is_err()
        {
            refused = true;
            break;
        }
    }
    assert!(refused, "the store fills up");
    let warning = next_event(&mut events, "store_warning").await;
    assert_eq!(warning["warning"], "nearly_full");
    assert_eq!(warning["max_bytes"], 256 * 1024);
    assert!(warning["live_bytes"]
        .as_u64()
        .is_some_and(|b| b * 10 > 256 * 1024 * 9));
    broker.stop().await;
}

#[tokio::test]
async fn the_embedding_program_reads_system_events_without_an_acl_rule() {
    let broker = TestBroker::start().await;
    let local = broker.broker.local_client();
    let mut events = local
        .subscribe("$SYS.event.connect")
        .await
        .expect("the embedding program may read");
    let _client = broker.client("anyone").await;
    let message = within("a connect event", events.recv())
        .await
        .expect("a message");
    let event: Value = serde_json::from_slice(message.payload()).expect("JSON");
    assert_eq!(event["identity"], "anyone");
    broker.stop().await;
}
