//! Surviving a lost connection, against a scripted broker over real QUIC and mutual TLS: the
//! client resumes its session, keeps its subscriptions in order without duplicates, buffers
//! publishes, starts a new session when the broker forgot the old one, and stops for good when
//! it must.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

mod fake_broker;

use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    Client, ClientError, ConnectionError, ConnectionState, DisconnectReason, ErrorCode, Gap,
    OutboundBuffer, OverflowPolicy, PublishError, ReconnectPolicy, SessionId, SubscribeError,
    SubscribeOptions, Subscription, SubscriptionEnd, SubscriptionEvent,
};
use cassini_protocol::Frame;
use fake_broker::{quick_reconnect, write, FakeBroker, Reader, Session, SESSION, STEP};
use tokio::sync::watch;
use tokio::time::timeout;

/// A delivery of `payload` on `demo.a`.
fn delivery(sequence: u64, payload: &'static str) -> Frame {
    Frame::Message(fake_broker::delivery(sequence, "demo.a", payload))
}

/// Subscribes to `demo.>` as subscription `id`; returns it with its stream.
async fn subscribe(
    client: &Client,
    session: &mut Session,
    id: u64,
) -> (Subscription, quinn::SendStream) {
    let (subscription, (_subscribe, stream)) =
        tokio::join!(client.subscribe("demo.>"), session.accept_subscribe(id));
    (subscription.expect("subscribe"), stream)
}

/// The sequence of the next message, within [`STEP`].
async fn next_sequence(subscription: &mut Subscription) -> u64 {
    timeout(STEP, subscription.recv())
        .await
        .expect("a message in time")
        .expect("a message, not the end")
        .sequence()
}

/// Waits, within [`STEP`], for a state `wanted` accepts, and returns it.
async fn wait_for_state(
    states: &mut watch::Receiver<ConnectionState>,
    wanted: impl FnMut(&ConnectionState) -> bool,
) -> ConnectionState {
    timeout(STEP, states.wait_for(wanted))
        .await
        .expect("the state in time")
        .expect("the client is alive")
        .clone()
}

fn is_reconnecting(state: &ConnectionState) -> bool {
    matches!(state, ConnectionState::Reconnecting { .. })
}

/// Reads the next publish stream's frames until it has `count` payloads.
async fn published_payloads(reader: &mut Reader, count: usize) -> Vec<Bytes> {
    let mut payloads = Vec::new();
    while payloads.len() < count {
        match reader.next().await {
            Some(Frame::Publish(publish)) => payloads.push(publish.payload),
            other => panic!("expected Publish, got {other:?}"),
        }
    }
    payloads
}

#[tokio::test]
async fn a_lost_connection_is_resumed_and_the_subscription_continues_in_order_without_duplicates() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    assert_eq!(client.reconnects(), 0);
    let mut states = client.state_changes();
    let (mut subscription, mut stream) = subscribe(&client, &mut session, 7).await;
    write(&mut stream, &delivery(1, "one")).await;
    write(&mut stream, &delivery(2, "two")).await;
    assert_eq!(next_sequence(&mut subscription).await, 1);
    assert_eq!(next_sequence(&mut subscription).await, 2);

    // No goodbye: the broker keeps the session, and the client must come back for it.
    session.close(ErrorCode::INTERNAL, "crashed");
    match wait_for_state(&mut states, is_reconnecting).await {
        ConnectionState::Reconnecting { attempt, reason } => {
            assert_eq!(attempt, 1);
            assert!(reason.contains("crashed"), "{reason}");
        }
        other => panic!("expected Reconnecting, got {other:?}"),
    }
    client.publish("out.a", "first").await.expect("buffered");
    client.publish("out.a", "second").await.expect("buffered");
    assert_eq!(client.outbound_stats().buffered, 2);
    assert!(!client.is_closed(), "reconnecting is not closed");

    let resumed = broker.accept_resume(SESSION).await;
    let mut stream = resumed.open_subscription(7).await;
    // The broker continues the sequence; a repeated message must not be yielded twice.
    write(&mut stream, &delivery(2, "two again")).await;
    write(&mut stream, &delivery(3, "three")).await;
    write(&mut stream, &delivery(5, "five")).await;
    assert_eq!(next_sequence(&mut subscription).await, 3);
    assert_eq!(next_sequence(&mut subscription).await, 5);
    assert_eq!(subscription.gaps(), 1);
    assert_eq!(
        subscription.take_gaps(),
        vec![Gap::Missed {
            from: 4,
            to: 4,
            reason: None
        }]
    );
    assert_eq!(subscription.id(), 7);
    assert_eq!(subscription.end_reason(), None);

    let connected = wait_for_state(&mut states, ConnectionState::is_connected).await;
    assert_eq!(
        connected,
        ConnectionState::Connected {
            session_id: SESSION,
            resumed: true
        }
    );
    assert_eq!(client.reconnects(), 1, "one reconnect counted");
    let (_send, mut publishes) = resumed.accept_publish().await;
    assert_eq!(
        published_payloads(&mut publishes, 2).await,
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );
    assert_eq!(client.outbound_stats().buffered, 0);
}

#[tokio::test]
async fn session_taken_over_stops_reconnecting_and_reports_disconnected() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    let mut states = client.state_changes();
    let (mut subscription, _stream) = subscribe(&client, &mut session, 7).await;

    session.close(
        ErrorCode::SESSION_TAKEN_OVER,
        "session resumed by a newer connection",
    );
    let state = wait_for_state(&mut states, ConnectionState::is_disconnected).await;
    assert_eq!(
        state,
        ConnectionState::Disconnected {
            reason: DisconnectReason::SessionTakenOver
        }
    );
    assert!(client.is_closed());
    assert_eq!(
        timeout(STEP, subscription.recv())
            .await
            .expect("end in time"),
        None
    );
    assert_eq!(
        subscription.end_reason(),
        Some(SubscriptionEnd::SessionTakenOver),
        "the subscription says it lives on elsewhere, not that the network failed"
    );
    match client.publish("out.a", "late").await {
        Err(PublishError::Connection(ConnectionError::Refused { code, .. })) => {
            assert_eq!(code, ErrorCode::SESSION_TAKEN_OVER)
        }
        other => panic!("expected Refused, got {other:?}"),
    }
    assert!(matches!(
        client.ping().await,
        Err(ClientError::Refused { .. })
    ));
    broker
        .assert_no_connection_attempt(Duration::from_millis(300))
        .await;
}

/// Loss is announced promptly even on a quiet topic: once the subscription is made again in
/// a new session, `next_event` reports `Gap::SessionLost` without waiting for a message.
#[tokio::test]
async fn a_lost_session_is_reported_at_once_on_a_quiet_topic() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    let (subscription, (_subscribe, mut stream)) =
        tokio::join!(client.subscribe("demo.>"), session.accept_subscribe(7));
    let mut subscription = subscription.expect("subscribe");
    write(&mut stream, &delivery(1, "one")).await;
    assert_eq!(next_sequence(&mut subscription).await, 1);

    session.close(ErrorCode::INTERNAL, "restarted");
    let (refused, _) = broker.accept_hello().await;
    refused.close(ErrorCode::SESSION_NOT_FOUND, "no such session");
    let (mut fresh, _) = broker.accept_hello().await;
    fresh.welcome(SessionId([7; 16]), false).await;
    let (_subscribe, _stream) = fresh.accept_subscribe(30).await;

    // Nothing is published on the topic in the new session.
    let event = timeout(STEP, subscription.next_event())
        .await
        .expect("the loss is reported without a message")
        .expect("the subscription is open");
    match event {
        SubscriptionEvent::Gap(gap) => assert_eq!(gap, Gap::SessionLost { last_sequence: 1 }),
        other => panic!("expected the lost session, got {other:?}"),
    }
    assert_eq!(
        subscription.take_gaps(),
        vec![Gap::SessionLost { last_sequence: 1 }]
    );
}

#[tokio::test]
async fn an_expired_session_is_replaced_and_every_subscription_made_again() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    let mut states = client.state_changes();
    let options = SubscribeOptions {
        overflow: OverflowPolicy::DropNewest,
        max_queued_messages: Some(10),
        ..SubscribeOptions::default()
    };
    let (subscription, (_subscribe, mut stream)) = tokio::join!(
        client.subscribe_with("demo.>", options.clone()),
        session.accept_subscribe(7)
    );
    let mut subscription = subscription.expect("subscribe");
    write(&mut stream, &delivery(1, "one")).await;
    write(&mut stream, &delivery(2, "two")).await;
    assert_eq!(next_sequence(&mut subscription).await, 1);
    assert_eq!(next_sequence(&mut subscription).await, 2);

    session.close(ErrorCode::INTERNAL, "restarted");
    let (refused, hello) = broker.accept_hello().await;
    assert_eq!(hello.resume, Some(SESSION));
    refused.close(ErrorCode::SESSION_NOT_FOUND, "no such session");

    let new_session = SessionId([7; 16]);
    let (mut fresh, hello) = broker.accept_hello().await;
    assert_eq!(hello.resume, None, "a new session after SESSION_NOT_FOUND");
    fresh.welcome(new_session, false).await;
    let (subscribe, mut stream) = fresh.accept_subscribe(30).await;
    assert_eq!(subscribe.filter, "demo.>");
    assert_eq!(subscribe.options, options);
    write(&mut stream, &delivery(1, "new session")).await;

    let message = timeout(STEP, subscription.recv())
        .await
        .expect("a message in time")
        .expect("a message");
    assert_eq!(message.sequence(), 1);
    assert_eq!(message.payload(), &Bytes::from_static(b"new session"));
    assert_eq!(
        subscription.take_gaps(),
        vec![Gap::SessionLost { last_sequence: 2 }]
    );
    assert_eq!(subscription.id(), 30);
    let connected = wait_for_state(&mut states, ConnectionState::is_connected).await;
    assert_eq!(
        connected,
        ConnectionState::Connected {
            session_id: new_session,
            resumed: false
        }
    );
    assert_eq!(client.session_id(), new_session);
}

#[tokio::test]
async fn while_reconnecting_requests_fail_fast_and_the_outbound_buffer_is_bounded() {
    let broker = FakeBroker::start();
    let buffer = OutboundBuffer {
        max_messages: 2,
        max_age: Duration::from_secs(60),
    };
    let (client, session) = broker
        .connect(broker.reconnecting_builder().outbound_buffer(buffer))
        .await;
    let mut states = client.state_changes();
    session.close(ErrorCode::INTERNAL, "crashed");
    wait_for_state(&mut states, is_reconnecting).await;

    assert!(matches!(
        client.ping().await,
        Err(ClientError::Disconnected { .. })
    ));
    assert!(matches!(
        client.subscribe("demo.>").await,
        Err(SubscribeError::Connection(
            ConnectionError::Disconnected { .. }
        ))
    ));
    client.publish("out.a", "1").await.expect("buffered");
    client.publish("out.b", "2").await.expect("buffered");
    match client.publish("out.a", "3").await {
        Err(PublishError::OutboundBufferFull { capacity }) => assert_eq!(capacity, 2),
        other => panic!("expected OutboundBufferFull, got {other:?}"),
    }
    assert!(
        matches!(
            client.publish("out.*", "x").await,
            Err(PublishError::InvalidTopic(_))
        ),
        "publishes are still validated"
    );
    assert_eq!(client.outbound_stats().buffered, 2);
}

#[tokio::test]
async fn with_the_outbound_buffer_disabled_a_publish_while_reconnecting_fails_fast() {
    let broker = FakeBroker::start();
    let builder = broker
        .reconnecting_builder()
        .outbound_buffer(OutboundBuffer::disabled());
    let (client, session) = broker.connect(builder).await;
    let mut states = client.state_changes();
    session.close(ErrorCode::INTERNAL, "crashed");
    wait_for_state(&mut states, is_reconnecting).await;
    match client.publish("out.a", "1").await {
        Err(PublishError::Connection(ConnectionError::Disconnected { reason })) => {
            assert!(reason.contains("crashed"), "{reason}")
        }
        other => panic!("expected Disconnected, got {other:?}"),
    }
}

#[tokio::test]
async fn close_while_reconnecting_stops_for_good() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    let mut states = client.state_changes();
    let (mut subscription, _stream) = subscribe(&client, &mut session, 7).await;
    session.close(ErrorCode::INTERNAL, "crashed");
    wait_for_state(&mut states, is_reconnecting).await;
    client.publish("out.a", "1").await.expect("buffered");

    let closed = timeout(STEP, client.close()).await.expect("closed in time");
    assert!(
        matches!(closed, Err(ClientError::Disconnected { .. })),
        "{closed:?}"
    );
    assert_eq!(
        client.state(),
        ConnectionState::Disconnected {
            reason: DisconnectReason::Closed
        }
    );
    assert_eq!(client.outbound_stats().discarded, 1);
    assert_eq!(
        timeout(STEP, subscription.recv())
            .await
            .expect("end in time"),
        None
    );
    assert_eq!(subscription.end_reason(), Some(SubscriptionEnd::Closed));
    assert!(matches!(
        client.publish("out.a", "2").await,
        Err(PublishError::Connection(ConnectionError::Closed))
    ));
}

#[tokio::test]
async fn reconnecting_gives_up_after_give_up_after() {
    let broker = FakeBroker::start();
    let policy = ReconnectPolicy {
        give_up_after: Some(Duration::from_millis(300)),
        ..quick_reconnect()
    };
    let builder = broker
        .reconnecting_builder()
        .reconnect(policy)
        .connect_timeout(Duration::from_millis(500));
    let (client, session) = broker.connect(builder).await;
    let mut states = client.state_changes();
    session.close(ErrorCode::INTERNAL, "crashed");
    // The broker never answers again.
    match wait_for_state(&mut states, ConnectionState::is_disconnected).await {
        ConnectionState::Disconnected {
            reason: DisconnectReason::GaveUp { attempts, reason },
        } => {
            assert!(attempts >= 1, "{attempts}");
            assert!(reason.contains("no answer from"), "{reason}");
        }
        other => panic!("expected GaveUp, got {other:?}"),
    }
    assert!(matches!(
        client.publish("out.a", "1").await,
        Err(PublishError::Connection(
            ConnectionError::Disconnected { .. }
        ))
    ));
}

#[tokio::test]
async fn a_subscription_dropped_while_reconnecting_is_unsubscribed_after_the_resume() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect(broker.reconnecting_builder()).await;
    let mut states = client.state_changes();
    let (subscription, _stream) = subscribe(&client, &mut session, 7).await;
    session.close(ErrorCode::INTERNAL, "crashed");
    wait_for_state(&mut states, is_reconnecting).await;
    drop(subscription);

    let mut resumed = broker.accept_resume(SESSION).await;
    let stream = resumed.open_subscription(7).await;
    resumed.expect_dropped(7, &stream).await;
}
