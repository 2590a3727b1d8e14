//! Bad input closes only the offending connection, with a code and a reason; everyone else
//! carries on, and nothing is left behind.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cassini_broker::BrokerConfig;
use cassini_client::Subscription;
use cassini_e2e::raw::{self, close_of, encoded, read_frame};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::{ErrorCode, Frame, Hello, PROTOCOL_VERSION};
use cassini_quic::server::ServerOptions;
use cassini_quic::tls::QuicOptions;
use futures_util::StreamExt;

fn hello_frame(version: u32) -> Frame {
    Frame::Hello(Hello {
        protocol_version: version,
        resume: None,
        client_name: Some("raw".into()),
        positions: Vec::new(),
        session_name: None,
    })
}

/// Opens the control stream and completes Hello/Welcome by hand.
async fn handshake(connection: &quinn::Connection) -> (quinn::SendStream, quinn::RecvStream) {
    let (_welcome, send, recv) = raw::hello(connection, None).await.expect("welcome");
    (send, recv)
}

/// A client subscribed to `probe.x`, to show other clients keep working.
async fn bystander(broker: &TestBroker) -> (cassini_client::Client, Subscription) {
    let client = broker.client("bystander").await;
    let subscription = client.subscribe("probe.x").await.expect("subscribe");
    (client, subscription)
}

async fn assert_bystander_still_receives(broker: &TestBroker, subscription: &mut Subscription) {
    let publisher = broker.client("prober").await;
    publisher
        .publish("probe.x", Bytes::from_static(b"still here"))
        .await
        .expect("publish");
    let message = within("bystander delivery", subscription.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"still here"[..]);
    publisher.close().await.expect("close");
}

#[tokio::test]
async fn garbage_on_the_control_stream_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let (_bystander, mut subscription) = bystander(&broker).await;
    let (_endpoint, connection) = broker.raw_connection("vandal").await;
    let (mut send, _recv) = connection.open_bi().await.expect("stream");
    let mut garbage = BytesMut::new();
    garbage.put_u32(8);
    garbage.put_slice(b"\xc1\xc1\xc1\xc1\xc1\xc1\xc1\xc1");
    send.write_all(&garbage).await.expect("write");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::MALFORMED_FRAME);
    assert!(reason.contains("malformed"), "reason: {reason}");
    assert_bystander_still_receives(&broker, &mut subscription).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_oversized_declared_length_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let (_bystander, mut subscription) = bystander(&broker).await;
    let (_endpoint, connection) = broker.raw_connection("vandal").await;
    let (mut send, _recv) = handshake(&connection).await;
    let mut declaration = BytesMut::new();
    declaration.put_u32(256 * 1024 * 1024);
    send.write_all(&declaration).await.expect("write");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::FRAME_TOO_LARGE);
    assert!(reason.contains("exceeds the maximum"), "reason: {reason}");
    assert_bystander_still_receives(&broker, &mut subscription).await;
    broker.stop().await;
}

#[tokio::test]
async fn garbage_on_a_publish_stream_closes_only_that_connection() {
    let broker = TestBroker::start().await;
    let (_bystander, mut subscription) = bystander(&broker).await;
    let (_endpoint, connection) = broker.raw_connection("vandal").await;
    let (_control_send, _control_recv) = handshake(&connection).await;
    let (mut publish, _replies) = connection.open_bi().await.expect("publish stream");
    publish
        .write_all(b"\x00\x00\x00\x03abc")
        .await
        .expect("write");
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::MALFORMED_FRAME);
    assert_bystander_still_receives(&broker, &mut subscription).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_frame_other_than_publish_on_a_publish_stream_is_a_protocol_violation() {
    let broker = TestBroker::start().await;
    let (_bystander, mut subscription) = bystander(&broker).await;
    let (_endpoint, connection) = broker.raw_connection("confused").await;
    let (_control_send, _control_recv) = handshake(&connection).await;
    let (mut publish, _replies) = connection.open_bi().await.expect("publish stream");
    let valid = Frame::Publish(cassini_protocol::Publish {
        topic: "probe.x".into(),
        payload: Bytes::from_static(b"first"),
        ..Default::default()
    });
    let mut frames = encoded(&valid);
    frames.extend_from_slice(&encoded(&Frame::Ping(cassini_protocol::Ping { nonce: 7 })));
    publish.write_all(&frames).await.expect("write");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION);
    assert!(
        reason.contains("Ping frame on a publish stream"),
        "reason: {reason}"
    );
    let first = within("the publish before it", subscription.next())
        .await
        .expect("delivered");
    assert_eq!(first.payload().as_ref(), b"first");
    assert_bystander_still_receives(&broker, &mut subscription).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_protocol_version_is_refused_with_its_code() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("future-client").await;
    let (mut send, _recv) = connection.open_bi().await.expect("stream");
    send.write_all(&encoded(&hello_frame(PROTOCOL_VERSION + 1)))
        .await
        .expect("hello");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::UNSUPPORTED_VERSION);
    assert!(
        reason.contains("unsupported protocol version"),
        "reason: {reason}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_first_frame_other_than_hello_is_a_protocol_violation() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("rude").await;
    let (mut send, _recv) = connection.open_bi().await.expect("stream");
    send.write_all(&encoded(&Frame::Ping(cassini_protocol::Ping { nonce: 1 })))
        .await
        .expect("ping");
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_never_says_hello_is_closed_after_the_deadline() {
    let mut config = BrokerConfig::default();
    config.limits.hello_timeout = Duration::from_millis(300);
    let broker = TestBroker::start_with(config, ServerOptions::default()).await;
    let (_endpoint, connection) = broker.raw_connection("silent").await;
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::HELLO_TIMEOUT);
    broker
        .wait_for_stats("listener cleaned up", |s| {
            s.connections == 0 && s.sessions == 0
        })
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_closes_leaves_nothing_behind() {
    let broker = TestBroker::start().await;
    let client = broker.client("tidy").await;
    let _a = client.subscribe("tidy.a").await.expect("subscribe");
    let _b = client.subscribe("tidy.>").await.expect("subscribe");
    let stats = broker.stats().await;
    assert_eq!(
        (
            stats.connections,
            stats.sessions,
            stats.subscribers,
            stats.topics
        ),
        (1, 1, 2, 2)
    );
    client.close().await.expect("close");
    broker.wait_until_empty("everything cleaned up").await;
    broker.stop().await;
}

#[tokio::test]
async fn an_invalid_publish_is_rejected_and_the_stream_stays_usable() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("valid.x").await.expect("subscribe");
    let (_endpoint, connection) = broker.raw_connection("raw-publisher").await;
    let (_control_send, _control_recv) = handshake(&connection).await;
    let (mut publish, mut replies) = connection.open_bi().await.expect("publish stream");
    let bad = Frame::Publish(cassini_protocol::Publish {
        topic: "valid.*".into(),
        headers: vec![],
        payload: Bytes::from_static(b"wildcard"),
        ..Default::default()
    });
    let good = Frame::Publish(cassini_protocol::Publish {
        topic: "valid.x".into(),
        headers: vec![("k".into(), "v".into())],
        payload: Bytes::from_static(b"fine"),
        ..Default::default()
    });
    publish.write_all(&encoded(&bad)).await.expect("write");
    publish.write_all(&encoded(&good)).await.expect("write");
    let mut buf = BytesMut::new();
    match read_frame(&mut replies, &mut buf).await.expect("a reply") {
        Frame::PublishRejected(rejected) => {
            assert_eq!(rejected.code, ErrorCode::INVALID_TOPIC);
            assert_eq!(rejected.topic, "valid.*");
        }
        other => panic!("expected PublishRejected, got {}", other.kind()),
    }
    let message = within("delivery", subscription.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"fine"[..]);
    assert_eq!(message.headers(), &[("k".to_string(), "v".to_string())][..]);
    broker.stop().await;
}

#[tokio::test]
async fn a_control_stream_reset_by_the_client_is_a_protocol_violation_that_keeps_the_session() {
    let broker = TestBroker::start().await;
    let (_bystander, mut subscription) = bystander(&broker).await;
    let (_endpoint, connection) = broker.raw_connection("resetter").await;
    let (welcome, mut send, _recv) = raw::hello(&connection, None).await.expect("welcome");
    send.reset(quinn::VarInt::from_u32(7)).expect("reset");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION, "reason: {reason}");
    assert!(reason.contains("control stream reset"), "reason: {reason}");

    // Like any close without a goodbye, the reset only detached the session.
    let (_endpoint, again) = broker.raw_connection("resetter").await;
    let (resumed, _send, _recv) = raw::hello(&again, Some(welcome.session_id))
        .await
        .expect("the detached session is resumed");
    assert!(resumed.resumed);
    assert_eq!(resumed.session_id, welcome.session_id);
    assert_bystander_still_receives(&broker, &mut subscription).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_stream_whose_answers_go_unread_is_ended_and_the_connection_goes_on() {
    answers_go_unread(TestBroker::start().await).await;
}

#[tokio::test]
async fn on_disk_a_publish_stream_whose_answers_go_unread_is_ended_too() {
    let dir = tempfile::tempdir().expect("a directory");
    let mut config = BrokerConfig::default();
    config.storage.mode = cassini_broker::config::StorageMode::Disk;
    config.storage.data_dir = dir.path().to_path_buf();
    answers_go_unread(TestBroker::start_with(config, ServerOptions::default()).await).await;
}

/// A client that never reads the answers on its publish stream: the broker ends that stream
/// with `SLOW_CONSUMER` (its answers wait at most 10 s), and the connection goes on.
async fn answers_go_unread(broker: TestBroker) {
    // A client that takes at most 4 KiB from the broker ahead of what it has read: the
    // answers to its acknowledged publishes soon wait for it.
    let options = QuicOptions {
        receive_window_bytes: 4096,
        ..QuicOptions::default()
    };
    let (_endpoint, connection) = broker.raw_connection_with("deaf", &options).await;
    let (_control_send, _control_recv) = handshake(&connection).await;
    let (mut publish, _answers_never_read) = connection.open_bi().await.expect("publish stream");
    let mut batch = BytesMut::new();
    for n in 0..100u64 {
        batch.put_slice(&encoded(&Frame::Publish(cassini_protocol::Publish {
            topic: "deaf.x".into(),
            payload: Bytes::from_static(b"x"),
            message_id: Some(n),
            ack: true,
            ..Default::default()
        })));
    }
    let batch = batch.freeze();
    // Acknowledged publishes, their answers never read, until the broker ends the stream (its
    // answers may wait 10 s); bounded in count and time.
    let ended = tokio::time::timeout(Duration::from_secs(40), async {
        for _ in 0..100_000 {
            if let Err(err) = publish.write_all(&batch).await {
                return err;
            }
        }
        panic!("never ended");
    })
    .await
    .expect("the stream ends within 40 s");
    assert_eq!(
        ended,
        quinn::WriteError::Stopped(quinn::VarInt::from_u32(ErrorCode::SLOW_CONSUMER.0)),
        "{ended}"
    );
    // The connection goes on: another publish stream is answered.
    let (mut again, mut answers) = connection.open_bi().await.expect("publish stream");
    let one = Frame::Publish(cassini_protocol::Publish {
        topic: "deaf.x".into(),
        payload: Bytes::from_static(b"x"),
        message_id: Some(1_000_000),
        ack: true,
        ..Default::default()
    });
    again.write_all(&encoded(&one)).await.expect("write");
    let mut buf = BytesMut::new();
    match within("an answer", read_frame(&mut answers, &mut buf)).await {
        Some(Frame::PublishAck(ack)) => assert_eq!(ack.message_id, 1_000_000),
        other => panic!("expected PublishAck, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_its_control_answers_unread_is_closed_with_slow_consumer() {
    let broker = TestBroker::start().await;
    let (_bystander, mut bystanding) = bystander(&broker).await;
    let options = QuicOptions {
        receive_window_bytes: 4096,
        ..QuicOptions::default()
    };
    let (_endpoint, connection) = broker.raw_connection_with("deaf", &options).await;
    let (mut control, _pongs_never_read) = handshake(&connection).await;
    let mut batch = BytesMut::new();
    for nonce in 0..100u64 {
        batch.put_slice(&encoded(&Frame::Ping(cassini_protocol::Ping { nonce })));
    }
    let batch = batch.freeze();
    // Pings, their pongs never read, until the broker gives up on the connection (a pong may
    // wait 10 s); bounded in count and time.
    let closed = tokio::time::timeout(Duration::from_secs(40), async {
        for _ in 0..100_000 {
            if control.write_all(&batch).await.is_err() {
                return;
            }
        }
        panic!("never closed");
    })
    .await;
    assert!(closed.is_ok(), "the connection is closed within 40 s");
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::SLOW_CONSUMER, "{reason}");
    assert_bystander_still_receives(&broker, &mut bystanding).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_rejection_names_an_overlong_topic_cut_to_twice_the_longest_a_topic_may_be() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("verbose").await;
    let (_control_send, _control_recv) = handshake(&connection).await;
    let (mut publish, mut replies) = connection.open_bi().await.expect("publish stream");
    let topic = format!("long.{}", "é".repeat(4_000));
    let frame = Frame::Publish(cassini_protocol::Publish {
        topic: topic.clone(),
        payload: Bytes::from_static(b"x"),
        ..Default::default()
    });
    publish.write_all(&encoded(&frame)).await.expect("write");
    let mut buf = BytesMut::new();
    match within("a reply", read_frame(&mut replies, &mut buf)).await {
        Some(Frame::PublishRejected(rejected)) => {
            assert_eq!(rejected.code, ErrorCode::INVALID_TOPIC);
            let most = 2 * BrokerConfig::default().limits.topics.max_bytes;
            assert!(
                rejected.topic.len() <= most,
                "{} bytes",
                rejected.topic.len()
            );
            assert!(topic.starts_with(&rejected.topic));
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    broker.stop().await;
}
