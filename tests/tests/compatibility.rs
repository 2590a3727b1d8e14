//! The compatibility rule and the places where the protocol document had to say more: a newer
//! peer's extra trailing fields are ignored, a publish stream reset by the client ends only that
//! stream, and a subscription the broker ends is always named to the client.

use bytes::{BufMut, Bytes, BytesMut};
use cassini_broker::{Acl, BrokerConfig};
use cassini_client::{Client, ConnectionState, Subscription, SubscriptionEnd};
use cassini_e2e::edge::{edge_client, quick_broker, wait_for_state};
use cassini_e2e::raw::{self, close_of, encoded, read_frame};
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{within, TestBroker};
use cassini_protocol::{
    ErrorCode, Frame, GapReason, Hello, OverflowPolicy, Publish, SubscribeOptions, Unsubscribe,
    PROTOCOL_VERSION,
};
use cassini_quic::tls;
use futures_util::StreamExt;

/// `body` with its 4-byte big-endian length prefix.
fn framed(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).expect("small"));
    buf.put_slice(body);
    buf
}

#[tokio::test]
async fn a_hello_with_an_extra_trailing_field_is_welcomed() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("newer-client").await;
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    // {"Hello": [1, nil, "raw", [], nil, "extra"]}: a Hello as a newer client might send it, with
    // a sixth field this broker does not know.
    assert_eq!(PROTOCOL_VERSION, 1);
    let mut body = vec![0x81, 0xa5];
    body.extend_from_slice(b"Hello");
    body.extend_from_slice(&[0x96, 0x01, 0xc0, 0xa3]);
    body.extend_from_slice(b"raw");
    body.extend_from_slice(&[0x90, 0xc0, 0xa5]);
    body.extend_from_slice(b"extra");
    send.write_all(&framed(&body)).await.expect("hello");
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Welcome(welcome)) => assert!(!welcome.resumed),
        other => panic!("expected Welcome, got {other:?}"),
    }
    // {"Ping": [5, true]}: a control request with an extra field is served too.
    send.write_all(&framed(&[
        0x81, 0xa4, b'P', b'i', b'n', b'g', 0x92, 0x05, 0xc3,
    ]))
    .await
    .expect("ping");
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Pong(pong)) => assert_eq!(pong.nonce, 5),
        other => panic!("expected Pong, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_frame_type_is_still_malformed() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("confused-client").await;
    let (_welcome, mut send, _recv) = raw::hello(&connection, None).await.expect("welcome");
    // {"Teleport": [1]}
    let mut body = vec![0x81, 0xa8];
    body.extend_from_slice(b"Teleport");
    body.extend_from_slice(&[0x91, 0x01]);
    send.write_all(&framed(&body)).await.expect("frame");
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, cassini_protocol::ErrorCode::MALFORMED_FRAME);
    broker.stop().await;
}

/// Cuts `edge` off, waits until the broker has detached its session (`connections` other
/// connections stay), runs `meanwhile`, then lets `edge` resume.
async fn while_detached<F: std::future::Future<Output = ()>>(
    broker: &TestBroker,
    relay: &UdpRelay,
    edge: &Client,
    connections: usize,
    meanwhile: F,
) {
    let session = edge.session_id();
    relay.cut();
    wait_for_state(edge, "the client notices the drop", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    broker
        .wait_for_stats("the broker detaches the session", |s| {
            s.connections == connections
        })
        .await;
    meanwhile.await;
    relay.restore();
    wait_for_state(edge, "the client resumes its session", |s| {
        matches!(s, ConnectionState::Connected { resumed: true, session_id } if *session_id == session)
    })
    .await;
}

#[tokio::test]
async fn a_close_policy_subscription_that_overflowed_while_detached_ends_as_a_slow_consumer() {
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let options = SubscribeOptions {
        overflow: OverflowPolicy::Close,
        max_queued_messages: Some(4),
        ..SubscribeOptions::default()
    };
    let mut slow = edge
        .subscribe_with("slow.x", options)
        .await
        .expect("subscribe");
    let mut other = edge.subscribe("other.x").await.expect("subscribe");
    let publisher = broker.client("publisher").await;

    while_detached(&broker, &relay, &edge, 1, async {
        for i in 0..10u8 {
            publisher
                .publish("slow.x", Bytes::from(vec![i]))
                .await
                .expect("publish");
        }
    })
    .await;

    assert!(
        within("the slow subscription ends", slow.next())
            .await
            .is_none(),
        "nothing of the overflowed queue is delivered"
    );
    assert_eq!(slow.end_reason(), Some(SubscriptionEnd::SlowConsumer));
    // The other subscription carries on.
    publisher
        .publish("other.x", Bytes::from_static(b"fine"))
        .await
        .expect("publish");
    let message = within("other delivery", other.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"fine"[..]);
    broker.stop().await;
}

/// The ACL of the two tests of an ACL reload while `edge` is away: `edge` may subscribe to
/// `feeds.>` and `sensors.>`, `publisher` may publish anywhere.
const FEEDS_AND_SENSORS_ACL: &str = r#"
[[rule]]
identity = "edge"
subscribe = ["feeds.>", "sensors.>"]

[[rule]]
identity = "publisher"
publish = [">"]
"#;

/// [`FEEDS_AND_SENSORS_ACL`] reloaded with `feeds.>` taken from `edge`.
fn sensors_only_acl() -> Acl {
    let narrowed = FEEDS_AND_SENSORS_ACL.replace(
        r#"subscribe = ["feeds.>", "sensors.>"]"#,
        r#"subscribe = ["sensors.>"]"#,
    );
    Acl::parse(&narrowed, "narrowed").expect("valid")
}

/// A quick broker with [`FEEDS_AND_SENSORS_ACL`], and `edge` behind a relay subscribed to
/// `feeds.>` and `sensors.>`.
struct FeedsAndSensors {
    broker: TestBroker,
    relay: UdpRelay,
    edge: Client,
    feeds: Subscription,
    sensors: Subscription,
    publisher: Client,
}

impl FeedsAndSensors {
    async fn start() -> Self {
        let config = BrokerConfig {
            acl: Acl::parse(FEEDS_AND_SENSORS_ACL, "test ACL").expect("valid ACL"),
            ..BrokerConfig::default()
        };
        let broker = quick_broker(config).await;
        let relay = UdpRelay::start(broker.addr).await.expect("relay");
        let edge = edge_client(&broker, &relay, "edge").await;
        let feeds = edge.subscribe("feeds.>").await.expect("feeds");
        let sensors = edge.subscribe("sensors.>").await.expect("sensors");
        let publisher = broker.client("publisher").await;
        Self {
            broker,
            relay,
            edge,
            feeds,
            sensors,
            publisher,
        }
    }
}

/// After the reload: `feeds` ended as not authorized, `sensors` still delivers.
async fn assert_feeds_not_authorized_and_sensors_delivered(
    feeds: &mut Subscription,
    sensors: &mut Subscription,
    publisher: &Client,
) {
    assert!(within("feeds ends", feeds.next()).await.is_none());
    assert_eq!(
        feeds.end_reason(),
        Some(SubscriptionEnd::Reset(ErrorCode::NOT_AUTHORIZED))
    );
    publisher
        .publish("sensors.t", Bytes::from_static(b"21.5"))
        .await
        .expect("publish");
    let message = within("sensors delivery", sensors.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"21.5"[..]);
}

#[tokio::test]
async fn a_subscription_an_acl_reload_ended_while_detached_ends_not_authorized() {
    let FeedsAndSensors {
        broker,
        relay,
        edge,
        mut feeds,
        mut sensors,
        publisher,
    } = FeedsAndSensors::start().await;

    while_detached(&broker, &relay, &edge, 1, async {
        broker.broker.set_acl(sensors_only_acl());
    })
    .await;

    assert_feeds_not_authorized_and_sensors_delivered(&mut feeds, &mut sensors, &publisher).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_publish_stream_reset_by_the_client_ends_only_that_stream() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("reset.x").await.expect("subscribe");
    let (_endpoint, connection) = broker.raw_connection("resetter").await;
    let (_welcome, mut control_send, mut control_recv) =
        raw::hello(&connection, None).await.expect("welcome");
    let publish = |payload: &'static [u8], ack: bool| {
        encoded(&Frame::Publish(Publish {
            topic: "reset.x".into(),
            payload: Bytes::from_static(payload),
            message_id: ack.then_some(1),
            ack,
            ..Publish::default()
        }))
    };

    // A stream reset by the client, half-way through a frame.
    let (mut first, _first_answers) = connection.open_bi().await.expect("stream");
    let whole = publish(b"first", false);
    first.write_all(&whole).await.expect("write");
    first
        .write_all(&publish(b"cut short", false)[..6])
        .await
        .expect("write");
    first.reset(quinn::VarInt::from_u32(7)).expect("reset");

    // A stream whose answers the client refuses to read.
    let (mut second, mut second_answers) = connection.open_bi().await.expect("stream");
    second_answers
        .stop(quinn::VarInt::from_u32(8))
        .expect("stop");
    second
        .write_all(&publish(b"second", true))
        .await
        .expect("write");

    // Neither ended the connection: a third stream still publishes.
    let (mut third, _third_answers) = connection.open_bi().await.expect("stream");
    third
        .write_all(&publish(b"third", false))
        .await
        .expect("write");
    let mut seen = Vec::new();
    while !seen.iter().any(|payload: &Bytes| &payload[..] == b"third") {
        let message = within("delivery", subscription.next())
            .await
            .expect("message");
        seen.push(message.payload().clone());
    }
    assert!(
        !seen.iter().any(|payload| &payload[..] == b"cut short"),
        "a partial frame is never routed"
    );
    // The control stream still answers.
    control_send
        .write_all(&encoded(&Frame::Ping(cassini_protocol::Ping { nonce: 42 })))
        .await
        .expect("ping");
    let mut buf = BytesMut::new();
    match read_frame(&mut control_recv, &mut buf).await {
        Some(Frame::Pong(pong)) => assert_eq!(pong.nonce, 42),
        other => panic!("expected Pong, got {other:?}"),
    }
    assert!(
        connection.close_reason().is_none(),
        "closed: {:?}",
        connection.close_reason()
    );
    broker.stop().await;
}

/// A raw connection whose client uses `options`.
async fn raw_with(
    broker: &TestBroker,
    name: &str,
    options: tls::QuicOptions,
) -> (quinn::Endpoint, quinn::Connection) {
    let (chain, key) = cassini_e2e::identity_of(&broker.pki.client(name));
    let crypto = tls::client_crypto(broker.pki.ca_certs(), chain, key).expect("crypto");
    let config = tls::client_config(crypto, &options).expect("config");
    let endpoint =
        cassini_quic::endpoint::bind_client("127.0.0.1:0".parse().expect("addr"), config, &options)
            .expect("endpoint");
    let connection = endpoint
        .connect(broker.addr, "localhost")
        .expect("connect")
        .await
        .expect("handshake");
    (endpoint, connection)
}

/// Subscribes to `filter` by hand on the control stream (`send`, `recv`); returns the
/// subscription of the broker's `Subscribed` answer.
async fn subscribed(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    request_id: u64,
    filter: &str,
) -> u64 {
    cassini_e2e::raw::send_subscribe(send, request_id, filter).await;
    match read_frame(recv, buf).await {
        Some(Frame::Subscribed(subscribed)) => subscribed.subscription,
        other => panic!("expected Subscribed, got {other:?}"),
    }
}

/// Accepts `connection`'s next subscription stream and checks that it starts `subscription`;
/// returns the stream and its read buffer.
async fn subscription_stream(
    connection: &quinn::Connection,
    subscription: u64,
) -> (quinn::RecvStream, BytesMut) {
    let mut stream = within("a subscription stream", connection.accept_uni())
        .await
        .expect("stream");
    let mut buf = BytesMut::new();
    match read_frame(&mut stream, &mut buf).await {
        Some(Frame::SubscriptionStart(start)) => assert_eq!(start.subscription, subscription),
        other => panic!("expected SubscriptionStart, got {other:?}"),
    }
    (stream, buf)
}

/// Reads the next frame of a subscription stream, which must be message `sequence`.
async fn read_message(stream: &mut quinn::RecvStream, buf: &mut BytesMut, sequence: u64) {
    match read_frame(stream, buf).await {
        Some(Frame::Message(message)) => assert_eq!(message.sequence, sequence),
        other => panic!("expected Message {sequence}, got {other:?}"),
    }
}

#[tokio::test]
async fn a_subscription_the_client_allows_no_stream_for_ends_with_stream_limit() {
    let broker = TestBroker::start().await;
    let options = tls::QuicOptions {
        max_concurrent_uni_streams: 1,
        ..tls::QuicOptions::default()
    };
    let (_endpoint, connection) = raw_with(&broker, "stingy", options).await;
    let (welcome, mut send, mut recv) = raw::hello(&connection, None).await.expect("welcome");
    assert!(welcome.limits.max_subscriptions > 1);
    let mut buf = BytesMut::new();

    let first = subscribed(&mut send, &mut recv, &mut buf, 1, "a.x").await;
    let _first_stream = subscription_stream(&connection, first).await;

    // The client allows one stream and holds it: the second subscription cannot get its own.
    let second = subscribed(&mut send, &mut recv, &mut buf, 2, "b.x").await;
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::SubscriptionEnded(ended)) => {
            assert_eq!(ended.subscription, second);
            assert_eq!(ended.code, ErrorCode::STREAM_LIMIT);
        }
        other => panic!("expected SubscriptionEnded, got {other:?}"),
    }
    // The broker forgot it, and the connection is fine.
    send.write_all(&encoded(&Frame::Unsubscribe(Unsubscribe {
        request_id: 3,
        subscription: second,
    })))
    .await
    .expect("unsubscribe");
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Error(error)) => assert_eq!(error.code, ErrorCode::UNKNOWN_SUBSCRIPTION),
        other => panic!("expected Error, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn welcome_announces_the_datagram_size() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("datagrams").await;
    let (welcome, _send, _recv) = raw::hello(&connection, None).await.expect("welcome");
    // At least what QUIC's minimum 1,200-byte packet leaves for a datagram; more once the
    // path MTU is discovered.
    let announced = welcome.limits.max_datagram_bytes;
    assert!(
        (1100..=65_535).contains(&announced),
        "announced {announced}"
    );

    let options = tls::QuicOptions {
        datagrams: false,
        ..tls::QuicOptions::default()
    };
    let (_endpoint, without) = raw_with(&broker, "no-datagrams", options).await;
    let (welcome, _send, _recv) = raw::hello(&without, None).await.expect("welcome");
    assert_eq!(welcome.limits.max_datagram_bytes, 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_subscription_left_out_of_positions_gets_its_sent_messages_announced_as_a_gap() {
    let broker = TestBroker::start().await;
    let publisher = broker.client("publisher").await;
    let (_endpoint, first) = broker.raw_connection("forgetful").await;
    let (welcome, mut send, mut recv) = raw::hello(&first, None).await.expect("welcome");
    let mut buf = BytesMut::new();
    let subscription = subscribed(&mut send, &mut recv, &mut buf, 1, "quiet.x").await;
    let (mut stream, mut stream_buf) = subscription_stream(&first, subscription).await;
    for i in 0..3u8 {
        publisher
            .publish_acked("quiet.x", Bytes::from(vec![i]))
            .await
            .expect("publish");
    }
    for sequence in 1..=3 {
        read_message(&mut stream, &mut stream_buf, sequence).await;
    }
    // No goodbye: the session is only detached.
    first.close(quinn::VarInt::from_u32(0), b"gone");

    // Resumed without a position for the subscription.
    let (_endpoint, second) = broker.raw_connection("forgetful").await;
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: Some(welcome.session_id),
        client_name: None,
        positions: Vec::new(),
        session_name: None,
    };
    let (welcome, _send, _recv) = raw::send_hello(&second, hello).await.expect("welcome");
    assert!(welcome.resumed);
    let (mut stream, mut stream_buf) = subscription_stream(&second, subscription).await;
    publisher
        .publish_acked("quiet.x", Bytes::from_static(b"next"))
        .await
        .expect("publish");
    match read_frame(&mut stream, &mut stream_buf).await {
        Some(Frame::Gap(gap)) => {
            assert_eq!((gap.from, gap.to), (1, 3));
            assert_eq!(gap.reason, GapReason::Undelivered);
        }
        other => panic!("expected a Gap for what the broker cannot vouch for, got {other:?}"),
    }
    read_message(&mut stream, &mut stream_buf, 4).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_end_announced_on_a_connection_that_was_then_lost_is_announced_again_on_resume() {
    let FeedsAndSensors {
        broker,
        relay,
        edge,
        mut feeds,
        mut sensors,
        publisher,
    } = FeedsAndSensors::start().await;
    let session = edge.session_id();

    // The network goes silently; before the broker notices, a reloaded ACL ends `feeds.>`: its
    // reset and its SubscriptionEnded are written to a connection that is already lost.
    relay.cut();
    broker.broker.set_acl(sensors_only_acl());
    broker
        .wait_for_stats("the broker forgets the subscription", |s| {
            s.subscribers == 1
        })
        .await;
    broker
        .wait_for_stats("the broker detaches the session", |s| s.connections == 1)
        .await;
    relay.restore();
    wait_for_state(&edge, "the client resumes its session", |s| {
        matches!(s, ConnectionState::Connected { resumed: true, session_id } if *session_id == session)
    })
    .await;

    assert_feeds_not_authorized_and_sensors_delivered(&mut feeds, &mut sensors, &publisher).await;
    broker.stop().await;
}
