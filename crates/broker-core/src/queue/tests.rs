use super::*;
use bytes::Bytes;
use cassini_protocol::{TopicLimits, TopicName};

fn message(payload_len: usize) -> Arc<PublishedMessage> {
    Arc::new(PublishedMessage {
        topic: TopicName::parse("t", &TopicLimits::default()).expect("valid"),
        headers: Vec::new(),
        payload: Bytes::from(vec![0u8; payload_len]),
        message_id: None,
        reply_to: None,
        retained: false,
    })
}

fn queue(max_messages: usize, overflow: OverflowPolicy) -> SubscriptionQueue {
    SubscriptionQueue::new(QueueBounds {
        max_messages,
        max_bytes: usize::MAX,
        overflow,
    })
}

async fn drain(queue: &SubscriptionQueue) -> (Vec<u64>, u64) {
    let mut batch = Vec::new();
    match queue.pop_batch(&mut batch, usize::MAX).await {
        Popped::Batch { dropped } => (batch.iter().map(|q| q.sequence).collect(), dropped),
        Popped::Closed(reason) => panic!("closed: {reason:?}"),
    }
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_and_reports_the_gap() {
    let q = queue(3, OverflowPolicy::DropOldest);
    for _ in 0..5 {
        q.push(&message(1));
    }
    assert_eq!(drain(&q).await, (vec![3, 4, 5], 2));
    assert_eq!(q.stats().dropped_total, 2);
}

#[tokio::test]
async fn drop_newest_keeps_the_oldest_and_burns_sequence_numbers() {
    let q = queue(3, OverflowPolicy::DropNewest);
    let outcomes: Vec<_> = (0..5).map(|_| q.push(&message(1))).collect();
    assert_eq!(outcomes[3], PushOutcome::DroppedNewest);
    assert_eq!(drain(&q).await, (vec![1, 2, 3], 2));
    q.push(&message(1));
    assert_eq!(drain(&q).await, (vec![6], 0));
}

#[tokio::test]
async fn drops_are_reported_even_when_nothing_follows_them() {
    let q = queue(1, OverflowPolicy::DropNewest);
    q.push(&message(1));
    q.push(&message(1));
    assert_eq!(
        drain(&q).await,
        (vec![1], 1),
        "the dropped newest is reported with the last batch"
    );
}

#[tokio::test]
async fn latest_keeps_only_the_newest_message() {
    let q = queue(100, OverflowPolicy::Latest);
    for _ in 0..10 {
        q.push(&message(1));
    }
    assert_eq!(drain(&q).await, (vec![10], 9));
}

#[tokio::test]
async fn close_policy_closes_the_queue_on_overflow() {
    let q = queue(2, OverflowPolicy::Close);
    assert_eq!(q.push(&message(1)), PushOutcome::Queued);
    assert_eq!(q.push(&message(1)), PushOutcome::Queued);
    assert_eq!(q.push(&message(1)), PushOutcome::Overflowed);
    assert_eq!(q.push(&message(1)), PushOutcome::Closed);
    let mut batch = Vec::new();
    assert_eq!(
        q.pop_batch(&mut batch, 10).await,
        Popped::Closed(CloseReason::Overflow)
    );
}

#[tokio::test]
async fn the_byte_bound_holds_except_for_a_single_message() {
    let q = SubscriptionQueue::new(QueueBounds {
        max_messages: 1000,
        max_bytes: 100,
        overflow: OverflowPolicy::DropOldest,
    });
    for _ in 0..10 {
        q.push(&message(39));
    }
    assert!(q.stats().bytes <= 100);
    assert_eq!(q.stats().depth, 2);
    q.push(&message(500));
    assert_eq!(
        q.stats().depth,
        1,
        "an oversized message replaces everything"
    );
}

#[tokio::test]
async fn an_ended_queue_drains_before_reporting_closed() {
    let q = queue(10, OverflowPolicy::DropOldest);
    q.push(&message(1));
    q.close();
    assert_eq!(q.push(&message(1)), PushOutcome::Closed);
    assert_eq!(drain(&q).await, (vec![1], 0));
    let mut batch = Vec::new();
    assert_eq!(
        q.pop_batch(&mut batch, 10).await,
        Popped::Closed(CloseReason::Ended)
    );
}

#[tokio::test]
async fn a_waiting_consumer_wakes_on_push() {
    let q = Arc::new(queue(10, OverflowPolicy::DropOldest));
    let consumer = {
        let q = Arc::clone(&q);
        tokio::spawn(async move { drain(&q).await })
    };
    tokio::task::yield_now().await;
    q.push(&message(1));
    let drained = tokio::time::timeout(std::time::Duration::from_secs(5), consumer)
        .await
        .expect("consumer woke")
        .expect("consumer ran");
    assert_eq!(drained, (vec![1], 0));
}
