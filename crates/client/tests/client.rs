//! The client against a scripted broker over real QUIC and mutual TLS.
//!
//! Each test plays the broker's side of one scenario by hand; the end-to-end tests against the
//! real broker live in the workspace's `tests/` crate.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

mod fake_broker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    Client, ClientError, ConnectionError, ConnectionState, DisconnectReason, ErrorCode,
    OverflowPolicy, PublishError, ReconnectPolicy, SubscribeError, SubscribeOptions, Subscription,
    SubscriptionEnd, SubscriptionEvent,
};
use cassini_protocol::{
    Delivery, ErrorFrame, Frame, Gap, GapReason, Ping, PublishRejected, Unsubscribed,
};
use fake_broker::{write, FakeBroker, Pki, Session, LIMITS, STEP};
use futures_util::StreamExt;
use tokio::time::timeout;

/// A delivery of `payload` on `topic` with one header, `k: v`.
fn delivery(sequence: u64, topic: &str, payload: &'static str) -> Frame {
    Frame::Message(Delivery {
        headers: vec![("k".into(), "v".into())],
        ..fake_broker::delivery(sequence, topic, payload)
    })
}

/// The broker's `Gap` frame on `subscription` for `from..=to`.
fn gap_frame(subscription: u64, from: u64, to: u64, reason: GapReason) -> Frame {
    Frame::Gap(Gap {
        subscription,
        from,
        to,
        reason,
    })
}

/// The gap the client reports for `from..=to` (`reason: None`: a jump nobody announced).
fn missed(from: u64, to: u64, reason: Option<GapReason>) -> cassini_client::Gap {
    cassini_client::Gap::Missed { from, to, reason }
}

/// Reads the next control frame, expecting a `Subscribe` for `filter`; returns its request id.
async fn expect_subscribe(session: &mut Session, filter: &str) -> u64 {
    let subscribe = session.expect_subscribe().await;
    assert_eq!(subscribe.filter, filter);
    subscribe.request_id
}

/// Subscribes `client` to `filter` while the broker answers it as `subscription` and opens
/// no stream yet.
async fn subscribe(
    client: &Client,
    session: &mut Session,
    filter: &str,
    subscription: u64,
) -> Subscription {
    let (subscribed, subscribe) = tokio::join!(
        client.subscribe(filter),
        session.answer_subscribe(subscription)
    );
    assert_eq!(subscribe.filter, filter);
    subscribed.expect("subscribe")
}

/// Subscribes `client` to `filter` while the broker answers it as `subscription` and opens its
/// stream, which it returns with the subscription.
async fn subscribe_with_stream(
    client: &Client,
    session: &mut Session,
    filter: &str,
    subscription: u64,
) -> (Subscription, quinn::SendStream) {
    let (subscribed, (subscribe, stream)) = tokio::join!(
        client.subscribe(filter),
        session.accept_subscribe(subscription)
    );
    assert_eq!(subscribe.filter, filter);
    (subscribed.expect("subscribe"), stream)
}

/// Subscribes `client` to `filter` while the broker answers it as `subscription`, then (the
/// answer processed) opens its stream, which it returns with the subscription.
async fn subscribe_then_open_stream(
    client: &Client,
    session: &mut Session,
    filter: &str,
    subscription: u64,
) -> (Subscription, quinn::SendStream) {
    let subscribed = subscribe(client, session, filter, subscription).await;
    let stream = session.open_subscription(subscription).await;
    (subscribed, stream)
}

/// Waits, at most [`STEP`], for `subscription` to end; returns why it ended.
async fn expect_end(subscription: &mut Subscription) -> Option<SubscriptionEnd> {
    assert_eq!(
        timeout(STEP, subscription.next())
            .await
            .expect("end in time"),
        None
    );
    subscription.end_reason()
}

/// Waits, at most [`STEP`], for the client to close the connection with `code`.
async fn expect_closed_with(session: &Session, code: quinn::VarInt, expected: &str) {
    match timeout(STEP, session.connection.closed())
        .await
        .expect("closed in time")
    {
        quinn::ConnectionError::ApplicationClosed(close) => assert_eq!(close.error_code, code),
        other => panic!("expected {expected}, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_reports_the_welcome_and_ping_round_trips() {
    let broker = FakeBroker::start();
    let builder = broker.client_builder("alice").client_name("unit-test");
    let (client, mut session) = broker.connect(builder).await;
    assert_eq!(client.identity(), "alice");
    assert_eq!(client.limits(), LIMITS);
    assert_eq!(client.session_id().to_string(), "2a".repeat(16));

    let (rtt, ()) = tokio::join!(client.ping(), session.answer_ping());
    assert!(rtt.expect("pong") < STEP);
}

#[tokio::test]
async fn a_subscription_stream_may_arrive_before_its_answer() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let broker_side = async {
        let request_id = expect_subscribe(&mut session, "demo.>").await;
        let mut stream = session.open_subscription(9).await;
        write(&mut stream, &delivery(1, "demo.a", "first")).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        session.subscribed(request_id, 9).await;
        write(&mut stream, &delivery(2, "demo.b", "second")).await;
        stream
    };
    let (subscription, _stream) = tokio::join!(client.subscribe("demo.>"), broker_side);
    let mut subscription = subscription.expect("subscribe");
    assert_eq!(subscription.id(), 9);
    assert_eq!(Subscription::filter(&subscription), "demo.>");

    let first = subscription.next().await.expect("first message");
    assert_eq!((first.topic(), first.sequence()), ("demo.a", 1));
    assert_eq!(first.payload(), &Bytes::from_static(b"first"));
    assert_eq!(first.header("k"), Some("v"));
    let second = subscription.next().await.expect("second message");
    assert_eq!((second.topic(), second.sequence()), ("demo.b", 2));
}

#[tokio::test]
async fn a_subscription_stream_waits_for_an_answer_that_comes_after_its_start_deadline() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let broker_side = async {
        let request_id = expect_subscribe(&mut session, "slow.>").await;
        let mut stream = session.open_subscription(4).await;
        write(&mut stream, &delivery(1, "slow.a", "first")).await;
        // A broker waiting for its disk: the answer comes later than the 10 s a stream naming
        // an unknown subscription is given when no `Subscribe` is unanswered.
        tokio::time::sleep(Duration::from_secs(11)).await;
        session.subscribed(request_id, 4).await;
        write(&mut stream, &delivery(2, "slow.b", "second")).await;
        stream
    };
    let (subscription, _stream) = tokio::join!(client.subscribe("slow.>"), broker_side);
    let mut subscription = subscription.expect("subscribe");
    let first = timeout(STEP, subscription.next()).await.expect("in time");
    assert_eq!(first.map(|m| m.sequence()), Some(1));
    let second = timeout(STEP, subscription.next()).await.expect("in time");
    assert_eq!(second.map(|m| m.sequence()), Some(2));
}

#[tokio::test]
async fn a_subscription_stream_may_arrive_after_its_answer_and_counts_drops() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    // The answer is processed before the stream is even opened.
    let (mut subscription, mut stream) =
        subscribe_then_open_stream(&client, &mut session, "demo.*", 3).await;
    write(&mut stream, &delivery(1, "demo.a", "one")).await;
    write(&mut stream, &gap_frame(3, 2, 5, GapReason::Overflow)).await;
    write(&mut stream, &gap_frame(3, 6, 6, GapReason::Undelivered)).await;
    write(&mut stream, &delivery(7, "demo.a", "seven")).await;
    write(&mut stream, &gap_frame(3, 8, 9, GapReason::ClusterRoute)).await;
    write(&mut stream, &delivery(10, "demo.a", "ten")).await;
    stream.finish().expect("finish");

    let sequences: Vec<u64> = subscription
        .by_ref()
        .map(|message| message.sequence())
        .collect()
        .await;
    assert_eq!(sequences, vec![1, 7, 10]);
    assert_eq!(
        subscription.dropped(),
        6,
        "overflow and cluster-route gaps count as drops, undelivered ones do not"
    );
    assert_eq!(
        subscription.gaps(),
        7,
        "every announced gap counts as missed"
    );
    assert_eq!(
        subscription.take_gaps(),
        vec![
            missed(2, 5, Some(GapReason::Overflow)),
            missed(6, 6, Some(GapReason::Undelivered)),
            missed(8, 9, Some(GapReason::ClusterRoute))
        ]
    );
    assert_eq!(
        subscription.end_reason(),
        Some(SubscriptionEnd::EndedByBroker)
    );
}

#[tokio::test]
async fn a_gap_with_no_message_after_it_wakes_the_application_at_once() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (mut subscription, mut stream) =
        subscribe_then_open_stream(&client, &mut session, "quiet.>", 4).await;
    write(&mut stream, &delivery(1, "quiet.a", "one")).await;
    write(&mut stream, &gap_frame(4, 2, 1000, GapReason::Undelivered)).await;

    match timeout(STEP, subscription.next_event())
        .await
        .expect("first event")
    {
        Some(SubscriptionEvent::Message(message)) => assert_eq!(message.sequence(), 1),
        other => panic!("expected message 1, got {other:?}"),
    }
    // Nothing follows the gap on this quiet topic, and the stream stays open: the gap alone
    // must reach the application.
    match timeout(STEP, subscription.next_event())
        .await
        .expect("the gap, not a wait")
    {
        Some(SubscriptionEvent::Gap(gap)) => {
            assert_eq!(gap, missed(2, 1000, Some(GapReason::Undelivered)))
        }
        other => panic!("expected the gap, got {other:?}"),
    }

    // A jump nobody announced is yielded as a gap before the message after it.
    write(&mut stream, &delivery(1005, "quiet.b", "late")).await;
    let mut events = subscription.events();
    match timeout(STEP, events.next()).await.expect("the jump") {
        Some(SubscriptionEvent::Gap(gap)) => assert_eq!(gap, missed(1001, 1004, None)),
        other => panic!("expected the unannounced gap, got {other:?}"),
    }
    match timeout(STEP, events.next()).await.expect("the message") {
        Some(SubscriptionEvent::Message(message)) => assert_eq!(message.sequence(), 1005),
        other => panic!("expected message 1005, got {other:?}"),
    }
    assert_eq!(subscription.gaps(), 999 + 4);
}

#[tokio::test]
async fn deliveries_read_with_a_stray_frame_reach_the_application_before_it_ends_the_stream() {
    // What one read of a subscription stream yields goes to the subscription as one batch: the
    // deliveries and gaps in front of a frame that has no place on the stream are delivered, in
    // order, before that frame ends the subscription as a protocol error.
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (mut subscription, mut stream) =
        subscribe_with_stream(&client, &mut session, "demo.a", 1).await;
    let mut frames = bytes::BytesMut::new();
    for frame in [
        delivery(1, "demo.a", "one"),
        gap_frame(1, 2, 3, GapReason::Overflow),
        delivery(4, "demo.a", "four"),
        Frame::Ping(Ping { nonce: 7 }),
    ] {
        cassini_protocol::encode_frame(
            &frame,
            &mut frames,
            cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES,
        )
        .expect("encode");
    }
    stream.write_all(&frames).await.expect("write frames");
    let mut events = Vec::new();
    while let Some(event) = timeout(STEP, subscription.next_event())
        .await
        .expect("in time")
    {
        events.push(event);
    }
    let sequences: Vec<_> = events
        .iter()
        .map(|event| match event {
            SubscriptionEvent::Message(message) => format!("message {}", message.sequence()),
            SubscriptionEvent::Gap(gap) => format!("gap {gap:?}"),
            other => panic!("unexpected event {other:?}"),
        })
        .collect();
    assert_eq!(
        sequences,
        [
            "message 1".to_string(),
            format!("gap {:?}", missed(2, 3, Some(GapReason::Overflow))),
            "message 4".to_string(),
        ]
    );
    assert!(matches!(
        subscription.end_reason(),
        Some(SubscriptionEnd::ProtocolError { .. })
    ));
}

#[tokio::test]
async fn a_slow_consumer_reset_ends_the_subscription_with_its_reason() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let options = SubscribeOptions {
        overflow: OverflowPolicy::Close,
        ..SubscribeOptions::default()
    };
    let broker_side = async {
        let (subscribe, mut stream) = session.accept_subscribe(1).await;
        assert_eq!(subscribe.options.overflow, OverflowPolicy::Close);
        write(&mut stream, &delivery(1, "demo.a", "one")).await;
        stream
    };
    let (subscription, mut stream) =
        tokio::join!(client.subscribe_with("demo.a", options), broker_side);
    let mut subscription = subscription.expect("subscribe");
    assert_eq!(subscription.next().await.map(|m| m.sequence()), Some(1));
    stream
        .reset(quinn::VarInt::from_u32(ErrorCode::SLOW_CONSUMER.value()))
        .expect("reset");
    assert_eq!(
        expect_end(&mut subscription).await,
        Some(SubscriptionEnd::SlowConsumer)
    );
}

#[tokio::test]
async fn unsubscribe_waits_for_the_answer_and_the_stream_then_ends() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (mut subscription, mut stream) =
        subscribe_with_stream(&client, &mut session, "demo.a", 5).await;

    let broker_side = async {
        let unsubscribe = session.expect_unsubscribe().await;
        assert_eq!(unsubscribe.subscription, 5);
        write(&mut stream, &delivery(1, "demo.a", "last")).await;
        stream.finish().expect("finish");
        session
            .send_control(&Frame::Unsubscribed(Unsubscribed {
                request_id: unsubscribe.request_id,
                subscription: 5,
            }))
            .await;
    };
    let (unsubscribed, ()) = tokio::join!(subscription.unsubscribe(), broker_side);
    unsubscribed.expect("unsubscribe");
    assert_eq!(subscription.next().await.map(|m| m.sequence()), Some(1));
    assert_eq!(
        expect_end(&mut subscription).await,
        Some(SubscriptionEnd::Unsubscribed)
    );
    subscription
        .unsubscribe()
        .await
        .expect("a second unsubscribe does nothing");
}

#[tokio::test]
async fn dropping_a_subscription_stops_its_stream_and_unsubscribes() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (subscription, stream) = subscribe_with_stream(&client, &mut session, "demo.a", 6).await;
    drop(subscription);

    session.expect_dropped(6, &stream).await;
}

#[tokio::test]
async fn a_refused_subscribe_is_a_request_error_and_the_connection_stays_usable() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let broker_side = async {
        let request_id = expect_subscribe(&mut session, "demo.a").await;
        session
            .send_control(&Frame::Error(ErrorFrame {
                request_id: Some(request_id),
                code: ErrorCode::TOO_MANY_SUBSCRIPTIONS,
                reason: "at most 100".into(),
            }))
            .await;
        session.answer_ping().await;
    };
    let client_side = async {
        let refused = client.subscribe("demo.a").await;
        let ping = client.ping().await;
        (refused, ping)
    };
    let ((refused, ping), ()) = tokio::join!(client_side, broker_side);
    match refused {
        Err(SubscribeError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::TOO_MANY_SUBSCRIPTIONS);
            assert_eq!(reason, "at most 100");
        }
        other => panic!("expected a request error, got {other:?}"),
    }
    ping.expect("the connection is still usable");
}

#[tokio::test]
async fn invalid_topics_filters_and_payloads_are_refused_before_sending() {
    let broker = FakeBroker::start();
    let (client, _session) = broker.connect_alice().await;
    assert!(matches!(
        client.publish("demo.*", "x").await,
        Err(PublishError::InvalidTopic(_))
    ));
    assert!(matches!(
        client.publish(&"a".repeat(65), "x").await,
        Err(PublishError::InvalidTopic(_))
    ));
    match client.publish("demo.a", vec![0u8; 1025]).await {
        Err(PublishError::PayloadTooLarge { size, max }) => assert_eq!((size, max), (1025, 1024)),
        other => panic!("expected PayloadTooLarge, got {other:?}"),
    }
    assert!(matches!(
        client.subscribe("demo.>.x").await,
        Err(SubscribeError::InvalidFilter(_))
    ));
}

#[tokio::test]
async fn a_datagram_to_an_invalid_topic_is_refused_before_sending() {
    let broker = FakeBroker::start();
    let (client, _session) = broker.connect_alice().await;
    for topic in ["demo.*", "demo.>", "", &"a".repeat(65)] {
        match client.publish_datagram(topic, "x").await {
            Err(PublishError::InvalidTopic(_)) => {}
            other => panic!("expected InvalidTopic for {topic:?}, got {other:?}"),
        }
    }
}

/// Plays the broker's publish side: reads every publish stream to its end, recording payloads
/// per topic in the order they were read, then finishes the stream's send half (as the broker
/// does once it has routed everything). On goodbye, waits for the publish streams and closes.
async fn serve_publishes(mut session: Session) -> (HashMap<String, Vec<u32>>, usize) {
    let received = Arc::new(Mutex::new(HashMap::<String, Vec<u32>>::new()));
    let mut streams = tokio::task::JoinSet::new();
    let mut stream_count = 0;
    loop {
        tokio::select! {
            frame = session.control.next() => {
                assert_eq!(frame, None, "only the goodbye is expected on the control stream");
                break;
            }
            accepted = session.connection.accept_bi() => {
                let (mut send, recv) = accepted.expect("publish stream");
                stream_count += 1;
                let received = Arc::clone(&received);
                streams.spawn(async move {
                    let mut reader = fake_broker::Reader::new(recv);
                    while let Some(frame) = reader.next().await {
                        let Frame::Publish(publish) = frame else { panic!("expected Publish, got {frame:?}") };
                        let number = std::str::from_utf8(&publish.payload).expect("utf8").parse().expect("number");
                        received.lock().expect("lock").entry(publish.topic).or_default().push(number);
                        // Let other streams interleave, as a busy broker would.
                        tokio::task::yield_now().await;
                    }
                    send.finish().expect("finish");
                });
            }
        }
    }
    while let Some(done) = streams.join_next().await {
        done.expect("publish stream task");
    }
    session.close(ErrorCode::NORMAL, "goodbye");
    let received = received.lock().expect("lock").clone();
    (received, stream_count)
}

#[tokio::test]
async fn publishes_keep_per_topic_order_across_evicted_lanes_and_close_delivers_them_all() {
    let broker = FakeBroker::start();
    let builder = broker.client_builder("alice").max_publish_lanes(2);
    let (client, session) = broker.connect(builder).await;
    let broker_side = tokio::spawn(serve_publishes(session));

    // Bursts per topic, so each lane carries many frames when it is evicted.
    let topics = ["t.a", "t.b", "t.c"];
    let mut next = HashMap::new();
    for _round in 0..8 {
        for topic in topics {
            for _ in 0..50 {
                let number: &mut u32 = next.entry(topic).or_default();
                client
                    .publish(topic, number.to_string())
                    .await
                    .expect("publish");
                *number += 1;
            }
        }
    }
    client.close().await.expect("clean close");
    let (received, streams) = timeout(STEP, broker_side)
        .await
        .expect("broker done")
        .expect("broker task");
    assert!(
        streams > topics.len(),
        "lanes were evicted and reopened ({streams} streams)"
    );
    let expected: Vec<u32> = (0..400).collect();
    for topic in topics {
        assert_eq!(received.get(topic), Some(&expected), "topic {topic}");
    }
    assert!(matches!(
        client.publish("t.a", "late").await,
        Err(PublishError::Connection(ConnectionError::Closed))
    ));
}

#[tokio::test]
async fn a_rejected_publish_reaches_publish_errors() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect_alice().await;
    let mut rejections = client.publish_errors().expect("the queue, once");
    assert!(client.publish_errors().is_none());

    client.publish("demo.a", "x").await.expect("publish");
    let (mut send, mut reader) = session.accept_publish().await;
    match reader.next().await {
        Some(Frame::Publish(publish)) => {
            write(
                &mut send,
                &Frame::PublishRejected(PublishRejected {
                    topic: publish.topic,
                    message_id: None,
                    code: ErrorCode::INVALID_TOPIC,
                    reason: "no".into(),
                }),
            )
            .await;
        }
        other => panic!("expected Publish, got {other:?}"),
    }
    let rejected = timeout(STEP, rejections.recv())
        .await
        .expect("in time")
        .expect("a rejection");
    assert_eq!(rejected.topic, "demo.a");
    assert_eq!(rejected.code, ErrorCode::INVALID_TOPIC);
}

#[tokio::test]
async fn a_slow_reader_pushes_back_on_the_broker_instead_of_buffering() {
    let broker = FakeBroker::start();
    let builder = broker.client_builder("alice").subscription_buffer(2);
    let (client, mut session) = broker.connect(builder).await;
    let mut subscription = subscribe(&client, &mut session, "bulk", 1).await;

    const MESSAGES: u64 = 2000;
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let mut stream = session.open_subscription(1).await;
    let writer = tokio::spawn(async move {
        for sequence in 1..=MESSAGES {
            let frame = Frame::Message(Delivery {
                sequence,
                topic: "bulk".into(),
                headers: vec![],
                payload: payload.clone(),
                message_id: None,
                reply_to: None,
                retained: false,
                redelivered: false,
            });
            write(&mut stream, &frame).await;
        }
        stream.finish().expect("finish");
        stream
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !writer.is_finished(),
        "32 MiB were accepted while the application read nothing"
    );
    let mut next = 1;
    while let Some(message) = timeout(STEP, subscription.next())
        .await
        .expect("a message in time")
    {
        assert_eq!(message.sequence(), next);
        next += 1;
    }
    assert_eq!(next, MESSAGES + 1);
    timeout(STEP, writer)
        .await
        .expect("writer done")
        .expect("writer task");
}

#[tokio::test]
async fn without_reconnecting_a_broker_close_with_a_code_is_reported_everywhere() {
    let broker = FakeBroker::start();
    let builder = broker
        .client_builder("alice")
        .reconnect(ReconnectPolicy::disabled());
    let (client, mut session) = broker.connect(builder).await;
    let (mut subscription, _stream) =
        subscribe_with_stream(&client, &mut session, "demo.a", 2).await;
    session.close(ErrorCode::SERVER_SHUTTING_DOWN, "maintenance");

    match expect_end(&mut subscription).await {
        Some(SubscriptionEnd::ConnectionLost { reason }) => {
            assert!(reason.contains("maintenance"), "{reason}");
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    match client.ping().await {
        Err(ClientError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::SERVER_SHUTTING_DOWN);
            assert_eq!(reason, "maintenance");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(client.is_closed());
    let mut states = client.state_changes();
    let state = timeout(STEP, states.wait_for(ConnectionState::is_disconnected))
        .await
        .expect("disconnected in time")
        .expect("state")
        .clone();
    match state {
        ConnectionState::Disconnected {
            reason: DisconnectReason::ConnectionLost { reason },
        } => assert!(reason.contains("maintenance"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(matches!(
        client.close().await,
        Err(ClientError::Refused { .. })
    ));
}

#[tokio::test]
async fn a_refusal_during_the_handshake_is_reported_by_connect() {
    let broker = FakeBroker::start();
    let broker_side = async {
        let connection = broker.accept_connection().await.expect("TLS handshake");
        let (_send, recv) = connection.accept_bi().await.expect("control stream");
        let mut control = fake_broker::Reader::new(recv);
        assert!(matches!(control.next().await, Some(Frame::Hello(_))));
        connection.close(
            quinn::VarInt::from_u32(ErrorCode::TOO_MANY_CONNECTIONS.value()),
            b"connection limit reached",
        );
        connection
    };
    let (client, _connection) = tokio::join!(broker.client_builder("alice").connect(), broker_side);
    match client {
        Err(ConnectionError::Refused { code, reason }) => {
            assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS);
            assert_eq!(reason, "connection limit reached");
        }
        other => panic!("expected Refused, got {other:?}"),
    }
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_as_unknown_ca() {
    let other_ca = cassini_quic::certs::CertificateAuthority::generate("other CA").expect("CA");
    let broker = FakeBroker::start_trusting(Pki::new(), other_ca.cert_der().clone());
    let (client, accepted) = tokio::join!(
        broker.client_builder("alice").connect(),
        broker.accept_connection()
    );
    assert!(accepted.is_err(), "the broker must refuse the certificate");
    match client {
        Err(ConnectionError::Certificate { reason }) => {
            assert!(
                reason.starts_with("the broker refused this client's certificate"),
                "{reason}"
            );
            assert!(reason.contains("(TLS alert 48)"), "{reason}");
        }
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn an_expired_certificate_is_refused_as_expired() {
    let broker = FakeBroker::start();
    let expired = broker.pki.expired_client("alice");
    let (client, accepted) = tokio::join!(
        broker.client_builder_with(&expired).connect(),
        broker.accept_connection()
    );
    assert!(accepted.is_err(), "the broker must refuse the certificate");
    match client {
        Err(ConnectionError::Certificate { reason }) => assert!(
            reason.contains("certificate expired or not yet valid (TLS alert 45)"),
            "{reason}"
        ),
        other => panic!("expected a certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_broker_certificate_from_another_ca_is_refused_by_the_client() {
    let broker = FakeBroker::start();
    let other_ca = cassini_quic::certs::CertificateAuthority::generate("other CA").expect("CA");
    let builder = broker
        .client_builder("alice")
        .ca_certs(vec![other_ca.cert_der().clone()]);
    let (client, _accepted) = tokio::join!(builder.connect(), broker.accept_connection());
    match client {
        Err(ConnectionError::BrokerCertificate { reason }) => {
            assert!(
                reason.starts_with("this client refused the broker's certificate"),
                "{reason}"
            );
        }
        other => panic!("expected a broker certificate error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_pong_for_another_request_kind_is_a_protocol_error() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let broker_side = async {
        let request_id = expect_subscribe(&mut session, "demo.a").await;
        session
            .send_control(&Frame::Pong(Ping { nonce: request_id }))
            .await;
    };
    let (subscribed, ()) = tokio::join!(client.subscribe("demo.a"), broker_side);
    match subscribed {
        Err(SubscribeError::Connection(ConnectionError::Protocol { reason })) => {
            assert!(reason.contains("Pong"), "{reason}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    expect_closed_with(
        &session,
        quinn::VarInt::from_u32(ErrorCode::PROTOCOL_VIOLATION.value()),
        "the client to close with PROTOCOL_VIOLATION",
    )
    .await;
}

#[tokio::test]
async fn dropping_the_client_closes_the_connection() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect_alice().await;
    let second_handle = client.clone();
    drop(client);
    assert!(
        !second_handle.is_closed(),
        "a clone keeps the connection open"
    );
    drop(second_handle);
    expect_closed_with(&session, quinn::VarInt::from_u32(0), "a normal close").await;
}

#[tokio::test]
async fn going_away_is_recorded_and_the_connection_stays_usable() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    assert_eq!(client.going_away(), None);
    session
        .send_control(&Frame::GoingAway(cassini_protocol::GoingAway {
            reason: "restarting".into(),
            reconnect_after_ms: 1500,
        }))
        .await;
    let (ping, ()) = tokio::join!(client.ping(), session.answer_ping());
    ping.expect("pong");
    let going_away = client.going_away().expect("GoingAway recorded");
    assert_eq!(going_away.reason, "restarting");
    assert_eq!(going_away.reconnect_after_ms, 1500);
}
