//! Acknowledged publishes: confirmed once routed, and a retry with the same message id inside
//! the dedupe window is confirmed as a duplicate and delivered only once.

use bytes::Bytes;
use cassini_client::{Client, Message, PublishError, PublishOptions, PublishReceipt, Subscription};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::ErrorCode;
use futures_util::StreamExt;

/// Publishes `orders.new` "order 1" again with `message_id`, as a retry after a lost
/// acknowledgement would.
async fn retry_order(publisher: &Client, message_id: u64) -> PublishReceipt {
    let retry = PublishOptions::new().message_id(message_id);
    publisher
        .publish_acked_with("orders.new", Bytes::from_static(b"order 1"), retry)
        .await
        .expect("acknowledged again")
}

/// Publishes a marker on `orders.end` and reads `subscription` up to it: first the order,
/// which must carry `message_id`, then the marker, returned.
async fn order_then_marker(
    publisher: &Client,
    subscription: &mut Subscription,
    message_id: u64,
) -> Message {
    publisher
        .publish_acked("orders.end", Bytes::from_static(b"marker"))
        .await
        .expect("marker");
    let delivered = within("the order", subscription.next())
        .await
        .expect("message");
    assert_eq!(delivered.message_id(), Some(message_id));
    within("the marker", subscription.next())
        .await
        .expect("message")
}

#[tokio::test]
async fn an_acknowledged_publish_is_confirmed_and_a_retry_is_delivered_once() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("orders.>").await.expect("subscribe");
    let publisher = broker.client("shop").await;

    let first = publisher
        .publish_acked("orders.new", Bytes::from_static(b"order 1"))
        .await
        .expect("acknowledged");
    assert!(!first.duplicate);

    let second = retry_order(&publisher, first.message_id).await;
    assert!(second.duplicate, "the broker recognised the retry");
    assert_eq!(second.message_id, first.message_id);

    let marker = order_then_marker(&publisher, &mut subscription, first.message_id).await;
    assert_eq!(marker.topic(), "orders.end");
    assert_eq!(marker.sequence(), 2, "the retry was never routed");
    broker.stop().await;
}

#[tokio::test]
async fn the_same_message_id_from_another_identity_is_not_a_duplicate() {
    let broker = TestBroker::start().await;
    let alice = broker.client("alice").await;
    let bob = broker.client("bob").await;
    let options = PublishOptions::new().message_id(7);
    let a = alice
        .publish_acked_with("ids.x", Bytes::from_static(b"a"), options.clone())
        .await
        .expect("ack");
    let b = bob
        .publish_acked_with("ids.x", Bytes::from_static(b"b"), options)
        .await
        .expect("ack");
    assert!(!a.duplicate && !b.duplicate, "ids are per identity");
    broker.stop().await;
}

#[tokio::test]
async fn a_refused_acknowledged_publish_fails_with_the_code() {
    let mut config = cassini_broker::BrokerConfig::default();
    config.limits.max_retained_topics = 1;
    let broker =
        TestBroker::start_with(config, cassini_quic::server::ServerOptions::default()).await;
    let publisher = broker.client("pub").await;
    publisher
        .publish_with(
            "state.a",
            Bytes::from_static(b"1"),
            PublishOptions::new().retain(true).ack(true),
        )
        .await
        .expect("first retained topic fits");
    let refused = publisher
        .publish_with(
            "state.b",
            Bytes::from_static(b"2"),
            PublishOptions::new().retain(true).ack(true),
        )
        .await;
    match refused {
        Err(PublishError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::RETAINED_STORE_FULL)
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn another_identitys_flood_does_not_push_a_publish_out_of_the_dedupe_window() {
    let mut config = cassini_broker::BrokerConfig::default();
    config.dedupe.max_entries = 200;
    let broker =
        TestBroker::start_with(config, cassini_quic::server::ServerOptions::default()).await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("orders.>").await.expect("subscribe");
    let alice = broker.client("alice").await;
    let eve = broker.client("eve").await;

    let first = alice
        .publish_acked("orders.new", Bytes::from_static(b"order 1"))
        .await
        .expect("acknowledged");
    // eve fills the whole window and more with her own acknowledged publishes.
    for _ in 0..=200 {
        eve.publish_acked("eve.spam", Bytes::from_static(b"x"))
            .await
            .expect("acknowledged");
    }
    let second = retry_order(&alice, first.message_id).await;
    assert!(
        second.duplicate,
        "alice's publish is still remembered after eve's flood"
    );

    let marker = order_then_marker(&alice, &mut subscription, first.message_id).await;
    assert_eq!(marker.topic(), "orders.end", "the retry was delivered once");
    broker.stop().await;
}
