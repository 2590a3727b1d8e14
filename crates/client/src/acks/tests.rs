//! Message ids never repeat; a waiting publish ends exactly once (acknowledged, rejected, failed
//! or dropped), leaves no entry behind and frees its slot; after a reconnect exactly the
//! publishes handed to an earlier connection are sent again, oldest first.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use cassini_protocol::{ErrorCode, PublishAck, PublishRejected, TopicLimits, TopicName};
use tokio::time::timeout;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn outgoing(topic: &str, message_id: u64) -> Outgoing {
    Outgoing {
        topic: TopicName::parse(topic, &TopicLimits::default()).expect("topic"),
        frame: BytesMut::from(topic.as_bytes()),
        ack: Some(message_id),
    }
}

async fn register(acks: &Arc<PendingAcks>, topic: &str, message_id: u64) -> PendingAck {
    let permit = timeout(WAIT, acks.permit())
        .await
        .expect("a permit in time")
        .expect("a permit");
    acks.register(message_id, &outgoing(topic, message_id), permit)
        .expect("registered")
}

#[test]
fn message_ids_never_repeat_and_start_at_the_base() {
    let ids = MessageIds::starting_at(u64::MAX - 1);
    let taken: Vec<u64> = (0..4).map(|_| ids.next()).collect();
    assert_eq!(taken, vec![u64::MAX - 1, u64::MAX, 0, 1]);
    let random = MessageIds::random();
    let distinct: HashSet<u64> = (0..1000).map(|_| random.next()).collect();
    assert_eq!(distinct.len(), 1000);
}

#[tokio::test]
async fn an_acknowledgement_completes_only_its_publish_and_removes_it() {
    let acks = Arc::new(PendingAcks::new(8));
    let mut first = register(&acks, "demo.a", 1).await;
    let mut second = register(&acks, "demo.b", 2).await;
    assert!(acks.acknowledged(PublishAck {
        message_id: 2,
        duplicate: true,
    }));
    let receipt = second.outcome().await.expect("an outcome").expect("acked");
    assert_eq!(
        receipt,
        PublishReceipt {
            message_id: 2,
            duplicate: true,
        }
    );
    assert!(!acks.acknowledged(PublishAck {
        message_id: 2,
        duplicate: false,
    }));
    assert_eq!(acks.len(), 1);
    assert!(acks.acknowledged(PublishAck {
        message_id: 1,
        duplicate: false,
    }));
    assert!(
        !first
            .outcome()
            .await
            .expect("an outcome")
            .expect("acked")
            .duplicate
    );
}

#[tokio::test]
async fn a_rejection_with_the_id_fails_the_publish_with_the_code() {
    let acks = Arc::new(PendingAcks::new(8));
    let mut pending = register(&acks, "demo.a", 9).await;
    let without_id = PublishRejected {
        topic: "demo.a".into(),
        message_id: None,
        code: ErrorCode::INVALID_TOPIC,
        reason: "no".into(),
    };
    assert!(!acks.rejected(&without_id));
    let rejected = PublishRejected {
        message_id: Some(9),
        code: ErrorCode::PAYLOAD_TOO_LARGE,
        ..without_id
    };
    assert!(acks.rejected(&rejected));
    match pending.outcome().await.expect("an outcome") {
        Err(ClientError::PublishRejected {
            code, message_id, ..
        }) => {
            assert_eq!(code, ErrorCode::PAYLOAD_TOO_LARGE);
            assert_eq!(message_id, Some(9));
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    assert_eq!(acks.len(), 0);
}

#[tokio::test]
async fn an_id_still_waiting_is_refused() {
    let acks = Arc::new(PendingAcks::new(8));
    let _pending = register(&acks, "demo.a", 5).await;
    let permit = acks.permit().await.expect("a permit");
    match acks.register(5, &outgoing("demo.b", 5), permit) {
        Err(ClientError::MessageIdInFlight { message_id }) => assert_eq!(message_id, 5),
        other => panic!("expected MessageIdInFlight, got {other:?}"),
    }
}

#[tokio::test]
async fn dropping_a_publish_removes_its_entry_and_frees_its_slot() {
    let acks = Arc::new(PendingAcks::new(1));
    let pending = register(&acks, "demo.a", 1).await;
    assert!(
        timeout(Duration::from_millis(50), acks.permit())
            .await
            .is_err(),
        "the only slot is taken"
    );
    drop(pending);
    assert_eq!(acks.len(), 0);
    let _again = register(&acks, "demo.a", 1).await;
}

#[tokio::test]
async fn only_publishes_handed_to_an_earlier_connection_are_sent_again_oldest_first() {
    let acks = Arc::new(PendingAcks::new(8));
    let _buffered = register(&acks, "demo.a", 30).await;
    let _first = register(&acks, "demo.a", 20).await;
    let _second = register(&acks, "demo.b", 10).await;
    let _current = register(&acks, "demo.c", 40).await;
    acks.mark_sent(20, 1);
    acks.mark_sent(10, 1);
    acks.mark_sent(40, 2);
    let resend: Vec<u64> = acks
        .take_for_resend(2)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(resend, vec![20, 10]);
    assert!(
        acks.take_for_resend(2).is_empty(),
        "now marked as on connection 2"
    );
    assert!(
        !acks.mark_unsent(20, 1),
        "it was sent again on connection 2"
    );
    assert!(acks.mark_unsent(20, 2));
    let next: Vec<u64> = acks
        .take_for_resend(3)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(next, vec![10, 40]);
}

#[tokio::test]
async fn fail_all_ends_every_waiting_publish() {
    let acks = Arc::new(PendingAcks::new(8));
    let mut first = register(&acks, "demo.a", 1).await;
    let mut second = register(&acks, "demo.b", 2).await;
    acks.fail_all(|| ClientError::Closed);
    assert!(matches!(
        first.outcome().await,
        Some(Err(ClientError::Closed))
    ));
    assert!(matches!(
        second.outcome().await,
        Some(Err(ClientError::Closed))
    ));
    assert_eq!(acks.len(), 0);
}
