//! A subscription whose reader stalls never delays another subscription on the same
//! connection, never slows the publisher, and reports every message it lost.

use bytes::Bytes;
use cassini_client::{Client, Subscription, SubscriptionEnd};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::{OverflowPolicy, SubscribeOptions};
use futures_util::StreamExt;

const SLOW_MESSAGES: u64 = 400;
const FAST_MESSAGES: u64 = 200;
const SLOW_PAYLOAD: usize = 64 * 1024;

fn slow_options(overflow: OverflowPolicy) -> SubscribeOptions {
    SubscribeOptions {
        overflow,
        max_queued_messages: Some(32),
        max_queued_bytes: Some(2 * 1024 * 1024),
        ..SubscribeOptions::default()
    }
}

/// One client subscribed to `slow.*` (never read during the flood) and `fast.*`; a publisher
/// floods `slow.x` with 64 KiB messages while publishing `fast.x`. Returns the subscriber's two
/// subscriptions after every fast message arrived in order.
async fn flood(
    broker: &TestBroker,
    overflow: OverflowPolicy,
) -> (Client, Subscription, Subscription) {
    let subscriber = broker.client_with_buffer("subscriber", 8).await;
    let slow = subscriber
        .subscribe_with("slow.*", slow_options(overflow))
        .await
        .expect("subscribe slow");
    let mut fast = subscriber
        .subscribe("fast.*")
        .await
        .expect("subscribe fast");

    let publisher = broker.client("publisher").await;
    let flood_payload = Bytes::from(vec![7u8; SLOW_PAYLOAD]);
    let flooding = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for _ in 0..SLOW_MESSAGES {
                publisher
                    .publish("slow.x", flood_payload.clone())
                    .await
                    .expect("publish slow");
            }
        })
    };
    let fast_publisher = broker.client("fast-publisher").await;
    for i in 0..FAST_MESSAGES {
        fast_publisher
            .publish("fast.x", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish fast");
    }
    for expected in 0..FAST_MESSAGES {
        let message = within("every fast message arrives during the flood", fast.next())
            .await
            .expect("fast subscription open");
        assert_eq!(
            message.payload()[..8],
            expected.to_be_bytes(),
            "fast messages in order"
        );
    }
    within("the flood is published", flooding)
        .await
        .expect("flood task");
    publisher.close().await.expect("publisher close");
    fast_publisher.close().await.expect("fast publisher close");
    (subscriber, slow, fast)
}

/// Reads the slow subscription until every flooded message is accounted for, delivered or
/// dropped. Returns (delivered, dropped).
async fn account_for_flood(slow: &mut Subscription, already_delivered: u64) -> (u64, u64) {
    let mut delivered = already_delivered;
    let mut last_sequence = 0u64;
    while delivered + slow.dropped() < SLOW_MESSAGES {
        let message = within("slow subscription drains", slow.next())
            .await
            .expect("slow subscription open");
        assert!(
            message.sequence() > last_sequence,
            "sequence numbers only grow"
        );
        last_sequence = message.sequence();
        delivered += 1;
    }
    (delivered, slow.dropped())
}

/// Reads the slow subscription to the end of the flood ([`account_for_flood`]) and asserts
/// that it dropped messages and that every message was delivered or counted as dropped.
async fn assert_flood_delivered_or_dropped(slow: &mut Subscription, already_delivered: u64) {
    let (delivered, dropped) = account_for_flood(slow, already_delivered).await;
    assert!(dropped > 0, "the stalled subscription dropped messages");
    assert_eq!(
        delivered + dropped,
        SLOW_MESSAGES,
        "every message delivered or counted"
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_counts_the_rest() {
    let broker = TestBroker::start().await;
    let (_client, mut slow, _fast) = flood(&broker, OverflowPolicy::DropOldest).await;
    assert_flood_delivered_or_dropped(&mut slow, 0).await;
    broker.stop().await;
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_and_counts_the_rest() {
    let broker = TestBroker::start().await;
    let (_client, mut slow, _fast) = flood(&broker, OverflowPolicy::DropNewest).await;
    let first = within("first slow message", slow.next())
        .await
        .expect("message");
    assert_eq!(
        first.sequence(),
        1,
        "the oldest message survives drop-newest"
    );
    assert_flood_delivered_or_dropped(&mut slow, 1).await;
    broker.stop().await;
}

#[tokio::test]
async fn latest_delivers_the_newest_message() {
    let broker = TestBroker::start().await;
    let (_client, mut slow, _fast) = flood(&broker, OverflowPolicy::Latest).await;
    let mut last = 0;
    while last < SLOW_MESSAGES {
        let message = within("latest value", slow.next()).await.expect("message");
        last = message.sequence();
    }
    assert_eq!(
        last, SLOW_MESSAGES,
        "the newest message is always delivered"
    );
    assert!(slow.dropped() > 0);
    broker.stop().await;
}

#[tokio::test]
async fn close_ends_only_the_slow_subscription() {
    let broker = TestBroker::start().await;
    let (client, mut slow, mut fast) = flood(&broker, OverflowPolicy::Close).await;
    while within("slow subscription ends", slow.next())
        .await
        .is_some()
    {}
    assert_eq!(slow.end_reason(), Some(SubscriptionEnd::SlowConsumer));
    let publisher = broker.client("after").await;
    publisher
        .publish("fast.x", Bytes::from_static(b"still flowing"))
        .await
        .expect("publish");
    let message = within("fast still works", fast.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"still flowing"[..]);
    broker
        .wait_for_stats("only the fast subscriber remains", |s| s.subscribers == 1)
        .await;
    drop(client);
    broker.stop().await;
}

#[tokio::test]
async fn a_stalled_subscription_does_not_hold_up_publishers() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client_with_buffer("stalled", 1).await;
    let _stalled = subscriber
        .subscribe_with("stall.x", slow_options(OverflowPolicy::DropOldest))
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;
    let payload = Bytes::from(vec![1u8; SLOW_PAYLOAD]);
    within(
        "publishing 1,000 large messages to a stalled subscriber",
        async {
            for _ in 0..1_000 {
                publisher
                    .publish("stall.x", payload.clone())
                    .await
                    .expect("publish");
            }
            publisher.close().await.expect("close");
        },
    )
    .await;
    broker.stop().await;
}
