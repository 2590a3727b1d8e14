//! Sessions outlive a dropped connection, are resumed only by the identity that created them,
//! and expire when nobody comes back.

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_e2e::raw::{close_of, hello};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::{ErrorCode, SessionId};
use cassini_quic::server::ServerOptions;

async fn broker_with_expiry(expiry: Duration) -> TestBroker {
    let mut config = BrokerConfig::default();
    config.sessions.expiry = expiry;
    TestBroker::start_with(config, ServerOptions::default()).await
}

/// Opens a session as `name`, then drops the connection without a goodbye.
async fn abandoned_session(broker: &TestBroker, name: &str) -> SessionId {
    let (endpoint, connection) = broker.raw_connection(name).await;
    let (welcome, _send, _recv) = hello(&connection, None).await.expect("welcome");
    assert!(!welcome.resumed);
    assert_eq!(welcome.identity, name);
    cassini_e2e::raw::vanish(&endpoint, &connection).await;
    broker
        .wait_for_stats("connection gone", |s| s.connections == 0)
        .await;
    welcome.session_id
}

#[tokio::test]
async fn the_same_identity_resumes_its_session() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let id = abandoned_session(&broker, "edge-1").await;
    assert_eq!(
        broker.stats().await.sessions,
        1,
        "the session outlives its connection"
    );
    let (_endpoint, connection) = broker.raw_connection("edge-1").await;
    let (welcome, _send, _recv) = hello(&connection, Some(id)).await.expect("welcome");
    assert!(welcome.resumed);
    assert_eq!(welcome.session_id, id);
    assert_eq!(broker.stats().await.sessions, 1);
    broker.stop().await;
}

#[tokio::test]
async fn another_identity_cannot_resume_a_session() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let id = abandoned_session(&broker, "owner").await;
    let (_endpoint, thief) = broker.raw_connection("thief").await;
    assert!(hello(&thief, Some(id)).await.is_none());
    let (code, _) = close_of(&thief).await;
    assert_eq!(code, ErrorCode::SESSION_IDENTITY_MISMATCH);
    let (_endpoint, owner) = broker.raw_connection("owner").await;
    let (welcome, _send, _recv) = hello(&owner, Some(id)).await.expect("owner resumes");
    assert!(
        welcome.resumed,
        "the refused attempt left the session untouched"
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_session_is_refused() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let (_endpoint, connection) = broker.raw_connection("edge").await;
    assert!(hello(&connection, Some(SessionId([9; 16]))).await.is_none());
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::SESSION_NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn a_newer_connection_takes_the_session_over() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let (_first_endpoint, first) = broker.raw_connection("edge").await;
    let (welcome, _send, _recv) = hello(&first, None).await.expect("welcome");
    let (_second_endpoint, second) = broker.raw_connection("edge").await;
    let (resumed, _send2, _recv2) = hello(&second, Some(welcome.session_id))
        .await
        .expect("takeover");
    assert!(resumed.resumed);
    let (code, _) = close_of(&first).await;
    assert_eq!(code, ErrorCode::SESSION_TAKEN_OVER);
    broker
        .wait_for_stats("one connection, one session", |s| {
            s.connections == 1 && s.sessions == 1
        })
        .await;
    assert!(
        second.close_reason().is_none(),
        "the newer connection is not closed back"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_detached_session_expires() {
    let broker = broker_with_expiry(Duration::from_millis(200)).await;
    abandoned_session(&broker, "gone").await;
    broker
        .wait_for_stats("session expired", |s| s.sessions == 0 && s.subscribers == 0)
        .await;
    broker.stop().await;
}

async fn broker_with_sessions_per_identity(max: usize) -> TestBroker {
    let mut config = BrokerConfig::default();
    config.sessions.expiry = Duration::from_secs(60);
    config.limits.max_sessions_per_identity = max;
    TestBroker::start_with(config, ServerOptions::default()).await
}

/// Tries to resume `id` as `name`; the `Welcome`'s `resumed`, or the close code.
async fn resume(broker: &TestBroker, name: &str, id: SessionId) -> Result<bool, ErrorCode> {
    let (_endpoint, connection) = broker.raw_connection(name).await;
    match hello(&connection, Some(id)).await {
        Some((welcome, _send, _recv)) => Ok(welcome.resumed),
        None => Err(close_of(&connection).await.0),
    }
}

#[tokio::test]
async fn a_new_session_beyond_the_quota_ends_that_identitys_longest_detached_session() {
    let broker = broker_with_sessions_per_identity(3).await;
    let bobs = abandoned_session(&broker, "bob").await;
    let mut eves = Vec::new();
    for _ in 0..3 {
        eves.push(abandoned_session(&broker, "eve").await);
    }
    assert_eq!(broker.stats().await.sessions, 4);
    // eve abandons many more sessions: she only ever holds three.
    for _ in 0..5 {
        eves.push(abandoned_session(&broker, "eve").await);
    }
    broker
        .wait_for_stats("eve holds three sessions, bob one", |s| s.sessions == 4)
        .await;
    assert_eq!(
        resume(&broker, "eve", eves[0]).await,
        Err(ErrorCode::SESSION_NOT_FOUND),
        "eve's longest-detached session made room"
    );
    assert_eq!(
        resume(&broker, "bob", bobs).await,
        Ok(true),
        "another identity's session is never touched"
    );
    assert_eq!(
        resume(&broker, "eve", eves[7]).await,
        Ok(true),
        "eve's newest session is kept"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_new_session_is_refused_when_all_the_identitys_sessions_are_attached() {
    let broker = broker_with_sessions_per_identity(2).await;
    let (_e1, first) = broker.raw_connection("eve").await;
    let _first = hello(&first, None).await.expect("first session");
    let (_e2, second) = broker.raw_connection("eve").await;
    let _second = hello(&second, None).await.expect("second session");
    let (_e3, third) = broker.raw_connection("eve").await;
    assert!(hello(&third, None).await.is_none());
    let (code, _) = close_of(&third).await;
    assert_eq!(code, ErrorCode::TOO_MANY_SESSIONS_FOR_IDENTITY);
    assert!(
        first.close_reason().is_none() && second.close_reason().is_none(),
        "attached sessions are never ended for a newer one"
    );
    let (_e4, bob) = broker.raw_connection("bob").await;
    assert!(hello(&bob, None).await.is_some(), "bob is not refused");
    broker.stop().await;
}

/// Reads frames from the next subscription stream the broker opens until a `Message`; returns
/// the `Gap`s seen before it and the message's sequence.
async fn next_delivery(connection: &quinn::Connection) -> (Vec<cassini_protocol::Gap>, u64) {
    use cassini_e2e::raw::read_frame;
    use cassini_protocol::Frame;
    let mut recv = within("subscription stream", connection.accept_uni())
        .await
        .expect("subscription stream");
    let mut buf = bytes::BytesMut::new();
    let mut gaps = Vec::new();
    loop {
        match read_frame(&mut recv, &mut buf).await {
            Some(Frame::SubscriptionStart(_)) => {}
            Some(Frame::Gap(gap)) => gaps.push(gap),
            Some(Frame::Message(delivery)) => return (gaps, delivery.sequence),
            other => panic!("unexpected frame on a subscription stream: {other:?}"),
        }
    }
}

/// A broker configuration that keeps its state in `dir`.
fn durable(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.storage.mode = cassini_broker::config::StorageMode::Disk;
    config.storage.data_dir = dir.to_path_buf();
    config
}

/// alice, by hand over a raw connection, subscribes at most once to `topic` and receives
/// sequence 1 (published by `publisher`). Returns her session, the subscription id and the
/// connection, still open.
async fn raw_subscriber_with_one_message(
    broker: &TestBroker,
    publisher: &cassini_client::Client,
    topic: &str,
) -> (SessionId, u64, quinn::Endpoint, quinn::Connection) {
    use cassini_e2e::raw::read_frame;
    use cassini_protocol::Frame;

    let (endpoint, connection) = broker.raw_connection("alice").await;
    let (welcome, mut send, mut recv) = hello(&connection, None).await.expect("welcome");
    cassini_e2e::raw::send_subscribe(&mut send, 1, topic).await;
    let mut buf = bytes::BytesMut::new();
    let subscription = match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Subscribed(subscribed)) => subscribed.subscription,
        other => panic!("expected Subscribed, got {other:?}"),
    };
    publisher
        .publish(topic, bytes::Bytes::from_static(b"one"))
        .await
        .expect("publish");
    assert_eq!(next_delivery(&connection).await, (Vec::new(), 1));
    (welcome.session_id, subscription, endpoint, connection)
}

/// A durable broker in `dir` and a `publisher`; alice subscribed to `topic` by hand
/// ([`raw_subscriber_with_one_message`]), then vanished, and the broker has detached her
/// session. Returns the broker, the publisher, her session and the subscription id.
async fn durable_with_a_vanished_subscriber(
    dir: &std::path::Path,
    topic: &str,
) -> (TestBroker, cassini_client::Client, SessionId, u64) {
    let broker = TestBroker::start_with(durable(dir), ServerOptions::default()).await;
    let publisher = broker.client("publisher").await;
    let (session, subscription, endpoint, connection) =
        raw_subscriber_with_one_message(&broker, &publisher, topic).await;
    cassini_e2e::raw::vanish(&endpoint, &connection).await;
    broker
        .wait_for_stats("alice's session detached", |s| s.connections == 1)
        .await;
    (broker, publisher, session, subscription)
}

/// alice resumes `session` by hand, standing at `last_sequence` in `subscription`; the broker
/// must welcome her back into it. The control stream comes back too: dropping its send half
/// would finish it, which is a goodbye.
async fn raw_resume(
    broker: &TestBroker,
    session: SessionId,
    subscription: u64,
    last_sequence: u64,
) -> (
    quinn::Endpoint,
    quinn::Connection,
    (quinn::SendStream, quinn::RecvStream),
) {
    use cassini_protocol::{Hello, ResumePosition, PROTOCOL_VERSION};

    let (endpoint, connection) = broker.raw_connection("alice").await;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: Some(session),
        client_name: Some("raw".into()),
        positions: vec![ResumePosition {
            subscription,
            last_sequence,
        }],
        session_name: None,
    };
    let (welcome, send, recv) = cassini_e2e::raw::send_hello(&connection, hello)
        .await
        .expect("welcome");
    assert!(welcome.resumed);
    (endpoint, connection, (send, recv))
}

#[tokio::test]
async fn a_resume_at_the_last_sequence_after_a_durable_restart_does_not_wrap() {
    let dir = tempfile::tempdir().expect("tempdir");
    // alice subscribes by hand, receives sequence 1, and vanishes.
    let (broker, publisher, session, subscription) =
        durable_with_a_vanished_subscriber(dir.path(), "wrap.t").await;
    publisher.close().await.expect("close");

    let broker = broker.restart_with(durable(dir.path())).await;

    // She resumes claiming to stand at u64::MAX: a position the broker never gave out.
    let (_endpoint, connection, _control) =
        raw_resume(&broker, session, subscription, u64::MAX).await;
    let publisher = broker.client("publisher").await;
    publisher
        .publish("wrap.t", bytes::Bytes::from_static(b"two"))
        .await
        .expect("publish");
    let (gaps, sequence) = next_delivery(&connection).await;
    assert_eq!(
        sequence, 2,
        "the sequence continues after the last one stored, it does not wrap (gaps: {gaps:?})"
    );
    assert!(gaps.is_empty(), "no gap was announced: {gaps:?}");
    broker.stop().await;
}

#[tokio::test]
async fn after_a_durable_restart_a_resume_onto_a_quiet_topic_hears_its_gap_at_once() {
    use cassini_e2e::raw::read_frame;
    use cassini_protocol::{Frame, GapReason};

    let dir = tempfile::tempdir().expect("tempdir");
    // alice subscribes at most once, receives sequence 1, and vanishes; 2..=10 are queued for
    // her session while she is away.
    let (broker, publisher, session, subscription) =
        durable_with_a_vanished_subscriber(dir.path(), "quiet.t").await;
    for n in 2..=10u32 {
        publisher
            .publish("quiet.t", bytes::Bytes::from(n.to_string()))
            .await
            .expect("publish");
    }
    publisher.close().await.expect("close");

    // At-most-once messages are not kept across a restart: 2..=10 are lost with it.
    let broker = broker.restart_with(durable(dir.path())).await;
    let (_endpoint, connection, _control) = raw_resume(&broker, session, subscription, 1).await;

    // Nobody publishes again: the gap must come on its own, right after SubscriptionStart.
    let mut stream = within("subscription stream", connection.accept_uni())
        .await
        .expect("subscription stream");
    let mut buf = bytes::BytesMut::new();
    assert!(matches!(
        within("start", read_frame(&mut stream, &mut buf)).await,
        Some(Frame::SubscriptionStart(_))
    ));
    match within(
        "the gap, with no message after it",
        read_frame(&mut stream, &mut buf),
    )
    .await
    {
        Some(Frame::Gap(gap)) => {
            assert_eq!((gap.from, gap.to), (2, 10), "exactly what alice never got");
            assert_ne!(gap.reason, GapReason::Overflow, "{gap:?}");
        }
        other => panic!("expected a Gap, got {other:?}"),
    }
    broker.stop().await;
}

/// A broker whose detached sessions wait a minute.
async fn patient_broker() -> TestBroker {
    broker_with_expiry(Duration::from_secs(60)).await
}

/// Receives `count` messages from `subscription`, as strings.
async fn receive(subscription: &mut cassini_client::Subscription, count: usize) -> Vec<String> {
    let mut received = Vec::new();
    while received.len() < count {
        let message = within("the backlog arrives", subscription.recv())
            .await
            .expect("the subscription is open");
        received.push(String::from_utf8_lossy(message.payload()).into_owned());
    }
    received
}

/// Connects as `identity` to its session named `name`: creates it, resumes it, or takes it
/// over.
async fn named_session(broker: &TestBroker, identity: &str, name: &str) -> cassini_client::Client {
    broker
        .client_builder(identity)
        .session_name(name)
        .connect()
        .await
        .expect("connects to the named session")
}

fn resumed(client: &cassini_client::Client) -> bool {
    matches!(
        client.state(),
        cassini_client::ConnectionState::Connected { resumed: true, .. }
    )
}

#[tokio::test]
async fn a_new_client_resumes_a_session_by_id_and_gets_the_backlog_published_meanwhile() {
    let broker = patient_broker().await;
    let first = broker.client("device").await;
    let mut subscription = first
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("subscribe");
    broker.publish_acked("device.cmd", &["before"]).await;
    assert_eq!(receive(&mut subscription, 1).await, ["before"]);
    subscription.acknowledge();
    first
        .ping()
        .await
        .expect("the acknowledgement reached the broker");
    let id = first.session_id();
    // The process dies: no goodbye, the broker keeps the session.
    drop(first);
    drop(subscription);
    broker
        .wait_for_stats("the device is gone", |s| s.connections == 0)
        .await;

    broker
        .publish_acked("device.cmd", &["one", "two", "three"])
        .await;

    let second = broker
        .client_builder("device")
        .resume_session(id)
        .connect()
        .await
        .expect("resumes");
    assert!(resumed(&second), "the new client resumed the session");
    assert_eq!(second.session_id(), id);
    let unclaimed = second.unclaimed_subscriptions();
    assert_eq!(
        unclaimed.len(),
        1,
        "Welcome lists the session's subscription"
    );
    assert_eq!(unclaimed[0].filter, "device.cmd");
    let mut subscription = second
        .subscribe_at_least_once("device.cmd")
        .await
        .expect("takes the subscription up");
    assert_eq!(subscription.id(), unclaimed[0].subscription);
    assert_eq!(receive(&mut subscription, 3).await, ["one", "two", "three"]);
    assert_eq!(
        subscription.take_gaps(),
        [],
        "what the earlier process received is no gap for this one"
    );
    assert!(second.unclaimed_subscriptions().is_empty());
    assert_eq!(
        broker.stats().await.subscribers,
        1,
        "no second subscription"
    );
    second.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn a_resume_of_an_unknown_session_starts_a_new_one() {
    let broker = patient_broker().await;
    let client = broker
        .client_builder("device")
        .resume_session(SessionId([9; 16]))
        .connect()
        .await
        .expect("connects with a new session");
    assert!(!resumed(&client));
    assert_ne!(client.session_id(), SessionId([9; 16]));
    assert!(client.unclaimed_subscriptions().is_empty());
    client.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn a_named_session_is_resumed_by_name_and_names_are_per_identity() {
    let broker = patient_broker().await;
    let first = named_session(&broker, "device", "kitchen").await;
    assert!(!resumed(&first));
    let id = first.session_id();
    let mut subscription = first
        .subscribe_at_least_once("home.>")
        .await
        .expect("subscribe");
    subscription.acknowledge();
    first.leave().await.expect("leaves the session");
    drop(subscription);

    broker
        .publish_acked("home.light", &["on", "off", "dim"])
        .await;

    // Another identity with the same name gets a session of its own.
    let stranger = named_session(&broker, "stranger", "kitchen").await;
    assert!(!resumed(&stranger), "names are per identity");
    assert_ne!(stranger.session_id(), id);
    assert!(stranger.unclaimed_subscriptions().is_empty());
    stranger.close().await.expect("close");

    let second = named_session(&broker, "device", "kitchen").await;
    assert!(resumed(&second));
    assert_eq!(second.session_id(), id);
    let mut subscription = second
        .subscribe_at_least_once("home.>")
        .await
        .expect("takes the subscription up");
    assert_eq!(receive(&mut subscription, 3).await, ["on", "off", "dim"]);

    // A third connection with the name takes the session over.
    let mut states = second.state_changes();
    let third = named_session(&broker, "device", "kitchen").await;
    assert_eq!(third.session_id(), id);
    within(
        "the older connection hears of the takeover",
        states.wait_for(|state| {
            matches!(
                state,
                cassini_client::ConnectionState::Disconnected {
                    reason: cassini_client::DisconnectReason::SessionTakenOver,
                    ..
                }
            )
        }),
    )
    .await
    .expect("state");
    third.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn an_invalid_session_name_is_refused_with_its_code() {
    use cassini_e2e::raw::send_hello;
    use cassini_protocol::{Hello, PROTOCOL_VERSION};

    let broker = patient_broker().await;
    assert!(matches!(
        broker
            .client_builder("device")
            .session_name("no spaces")
            .connect()
            .await,
        Err(cassini_client::ConnectionError::Config { .. })
    ));
    for name in [String::new(), "a/b".into(), "x".repeat(129)] {
        let (_endpoint, connection) = broker.raw_connection("device").await;
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            resume: None,
            client_name: None,
            positions: Vec::new(),
            session_name: Some(name.clone()),
        };
        assert!(
            send_hello(&connection, hello).await.is_none(),
            "name {name:?}"
        );
        let (code, _) = close_of(&connection).await;
        assert_eq!(code, ErrorCode::INVALID_SESSION_NAME, "name {name:?}");
    }
    assert_eq!(broker.stats().await.sessions, 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_named_session_and_its_backlog_survive_a_durable_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = TestBroker::start_with(durable(dir.path()), ServerOptions::default()).await;
    let first = named_session(&broker, "device", "kitchen").await;
    let id = first.session_id();
    let subscription = first
        .subscribe_at_least_once("home.>")
        .await
        .expect("subscribe");
    first.leave().await.expect("leaves the session");
    drop(subscription);
    broker.publish_acked("home.door", &["open", "shut"]).await;

    let broker = broker.restart_with(durable(dir.path())).await;

    let second = named_session(&broker, "device", "kitchen").await;
    assert!(resumed(&second), "the name still leads to the session");
    assert_eq!(second.session_id(), id);
    let mut subscription = second
        .subscribe_at_least_once("home.>")
        .await
        .expect("takes the subscription up");
    assert_eq!(receive(&mut subscription, 2).await, ["open", "shut"]);
    second.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn a_named_session_ended_with_a_goodbye_is_created_afresh() {
    let broker = patient_broker().await;
    let first = named_session(&broker, "device", "kitchen").await;
    let id = first.session_id();
    first.close().await.expect("goodbye ends the session");
    broker
        .wait_for_stats("the session ended", |s| s.sessions == 0)
        .await;
    let second = named_session(&broker, "device", "kitchen").await;
    assert!(!resumed(&second), "the name ended with its session");
    assert_ne!(second.session_id(), id);
    assert_eq!(broker.stats().await.sessions, 1);
    second.close().await.expect("close");
    broker.stop().await;
}
