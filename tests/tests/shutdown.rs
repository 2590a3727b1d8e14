//! Graceful shutdown: every client is told the broker is going away, with the reason and a
//! reconnect hint; what its subscriptions hold is delivered (and acknowledged) first; then its
//! connection is closed with `SERVER_SHUTTING_DOWN`.

use bytes::{Bytes, BytesMut};
use cassini_e2e::raw::{close_of, hello, read_frame};
use cassini_e2e::{eventually, within, TestBroker};
use cassini_protocol::{AckOptions, ErrorCode, Frame, SubscribeOptions};
use futures_util::StreamExt;

#[tokio::test]
async fn clients_hear_going_away_with_a_reconnect_hint_then_the_close_code() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("raw").await;
    let (_welcome, _send, mut recv) = hello(&connection, None).await.expect("welcome");
    let client = broker.client("client").await;

    let shutdown = {
        let handle = broker.broker.clone();
        tokio::spawn(async move { handle.shutdown("maintenance window").await })
    };
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::GoingAway(notice)) => {
            assert_eq!(notice.reason, "maintenance window");
            assert_eq!(notice.reconnect_after_ms, 2_000);
        }
        other => panic!("expected GoingAway, got {other:?}"),
    }
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::SERVER_SHUTTING_DOWN);
    assert_eq!(reason, "maintenance window");

    let notice = eventually("the client kept the notice", || async {
        client.going_away()
    })
    .await;
    assert_eq!(notice.reason, "maintenance window");
    shutdown.await.expect("shutdown task");
    assert!(!broker.broker.is_running(), "the actor tree stopped");
}

#[tokio::test]
async fn a_graceful_shutdown_first_delivers_every_queued_at_least_once_message() {
    const COUNT: u32 = 300;
    // 16 KiB each: together more than QUIC lets the client buffer, so most are still at the
    // broker when the shutdown begins.
    let payload = |i: u32| {
        let mut bytes = vec![0u8; 16 * 1024];
        bytes[..4].copy_from_slice(&i.to_be_bytes());
        Bytes::from(bytes)
    };
    let broker = TestBroker::start().await;
    let subscriber = broker.client_with_buffer("subscriber", 4).await;
    let options = SubscribeOptions {
        acks: Some(AckOptions::default()),
        max_queued_bytes: Some(32 * 1024 * 1024),
        ..SubscribeOptions::default()
    };
    let mut subscription = subscriber
        .subscribe_with("drain.x", options)
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;
    for i in 0..COUNT {
        publisher
            .publish_acked("drain.x", payload(i))
            .await
            .expect("routed before the shutdown starts");
    }

    // The subscriber has read nothing yet: the messages wait in the broker's queue and in
    // flight when the shutdown begins.
    let shutdown = {
        let handle = broker.broker.clone();
        tokio::spawn(async move { handle.shutdown("maintenance window").await })
    };
    for i in 0..COUNT {
        let message = within("the next message during the drain", subscription.next())
            .await
            .expect("the subscription stays open while draining");
        assert_eq!(message.payload(), &payload(i), "none lost, in order");
    }
    let notice = eventually("the subscriber saw the reason", || async {
        subscriber.going_away()
    })
    .await;
    assert_eq!(notice.reason, "maintenance window");
    within("the shutdown completes", shutdown)
        .await
        .expect("shutdown task");
    assert!(!broker.broker.is_running(), "the actor tree stopped");
}

#[tokio::test]
async fn a_client_told_to_wait_before_reconnecting_is_reconnecting_meanwhile() {
    use cassini_client::{ClientError, ConnectionState};
    // A hint longer than the test's deadline: the client waits it out before its first
    // attempt, and is to say so at once.
    let mut config = cassini_broker::BrokerConfig::default();
    config.shutdown.reconnect_hint = std::time::Duration::from_secs(600);
    let broker =
        TestBroker::start_with(config, cassini_quic::server::ServerOptions::default()).await;
    let client = broker.client("waiting").await;
    broker.stop().await;
    let mut states = client.state_changes();
    within("the client reports reconnecting", async {
        loop {
            if matches!(
                *states.borrow_and_update(),
                ConnectionState::Reconnecting { .. }
            ) {
                return;
            }
            states.changed().await.expect("state changes");
        }
    })
    .await;
    let refused = client.ping().await.expect_err("no connection");
    assert!(
        matches!(refused, ClientError::Disconnected { .. }),
        "requests fail with Disconnected at once: {refused:?}"
    );
}
