use super::*;
use crate::config::AckBounds;
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
        charge: crate::memory::MemoryCharge::none(),
    })
}

fn queue(max_messages: usize, overflow: OverflowPolicy) -> SubscriptionQueue {
    SubscriptionQueue::new(QueueBounds {
        max_messages,
        max_bytes: usize::MAX,
        overflow,
        acks: None,
        max_age: None,
    })
}

fn at_least_once(max_messages: usize, max_in_flight: usize) -> SubscriptionQueue {
    SubscriptionQueue::new(QueueBounds {
        max_messages,
        max_bytes: usize::MAX,
        overflow: OverflowPolicy::DropOldest,
        acks: Some(AckBounds {
            max_in_flight,
            timeout: Duration::from_secs(30),
        }),
        max_age: None,
    })
}

async fn drain(queue: &SubscriptionQueue) -> (Vec<u64>, u64) {
    let attachment = queue.attach(None);
    let mut batch = Vec::new();
    match queue.pop_batch(&attachment, &mut batch, usize::MAX).await {
        Popped::Batch { dropped, .. } => (batch.iter().map(|q| q.sequence).collect(), dropped),
        other => panic!("no batch: {other:?}"),
    }
}

/// The next batch for `attachment` as (sequence, redelivered) pairs, or `None` if nothing
/// comes within `wait` (of paused, virtual time).
async fn next_batch(
    queue: &SubscriptionQueue,
    attachment: &Attachment,
    wait: Duration,
) -> Option<Vec<(u64, bool)>> {
    let mut batch = Vec::new();
    match tokio::time::timeout(wait, queue.pop_batch(attachment, &mut batch, usize::MAX)).await {
        Ok(Popped::Batch { .. }) => Some(
            batch
                .iter()
                .map(|queued| (queued.sequence, queued.redelivered))
                .collect(),
        ),
        Ok(other) => panic!("no batch: {other:?}"),
        Err(_) => None,
    }
}

fn range(from: u64, to: u64) -> SequenceRange {
    SequenceRange { from, to }
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
        q.pop_batch(&q.attach(None), &mut batch, 10).await,
        Popped::Closed(CloseReason::Overflow)
    );
}

#[tokio::test]
async fn the_byte_bound_holds_except_for_a_single_message() {
    let each = message(39).memory_size();
    let max_bytes = 2 * each + each / 2;
    let q = SubscriptionQueue::new(QueueBounds {
        max_messages: 1000,
        max_bytes,
        overflow: OverflowPolicy::DropOldest,
        acks: None,
        max_age: None,
    });
    for _ in 0..10 {
        q.push(&message(39));
    }
    assert!(q.stats().bytes <= max_bytes);
    assert_eq!(q.stats().depth, 2);
    q.push(&message(2 * max_bytes));
    assert_eq!(
        q.stats().depth,
        1,
        "an oversized message replaces everything"
    );
}

#[test]
fn headers_count_against_the_byte_bound() {
    let q = SubscriptionQueue::new(QueueBounds {
        max_messages: 1000,
        max_bytes: 64 * 1024,
        overflow: OverflowPolicy::DropOldest,
        acks: None,
        max_age: None,
    });
    let mut heavy = PublishedMessage::clone(&message(1));
    heavy.headers = vec![(String::new(), String::new()); 1000];
    let heavy = Arc::new(heavy);
    assert!(heavy.memory_size() > 1000 * crate::message::HEADER_OVERHEAD_BYTES);
    for _ in 0..10 {
        q.push(&heavy);
    }
    assert_eq!(
        q.stats().depth,
        1,
        "each message holds ~48 KB of empty headers"
    );
    assert_eq!(q.stats().bytes, heavy.memory_size());
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
        q.pop_batch(&q.attach(None), &mut batch, 10).await,
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

#[tokio::test]
async fn a_writer_of_an_older_attachment_gets_nothing_more() {
    let q = queue(10, OverflowPolicy::DropOldest);
    let old = q.attach(None);
    q.push(&message(1));
    let new = q.attach(None);
    let mut batch = Vec::new();
    assert_eq!(q.pop_batch(&old, &mut batch, 10).await, Popped::Superseded);
    assert!(batch.is_empty());
    assert_eq!(
        next_batch(&q, &new, Duration::from_secs(1)).await,
        Some(vec![(1, false)])
    );
}

#[tokio::test]
async fn an_attachment_continues_after_what_the_client_received() {
    let q = queue(10, OverflowPolicy::DropOldest);
    let first = q.attach(None);
    for _ in 0..5 {
        q.push(&message(1));
    }
    next_batch(&q, &first, Duration::from_secs(1)).await;
    // The client received 1..=3 of the five sent before its connection dropped.
    let second = q.attach(Some(3));
    assert_eq!(second.next_expected, 4);
    assert_eq!(second.undelivered_through, 5);
    // A client claiming more than was ever sent is held to what was sent.
    assert_eq!(q.attach(Some(99)).next_expected, 6);
}

#[tokio::test(start_paused = true)]
async fn at_least_once_sends_no_more_than_the_in_flight_window_until_acked() {
    let q = at_least_once(100, 2);
    for _ in 0..5 {
        q.push(&message(1));
    }
    let attachment = q.attach(None);
    let wait = Duration::from_secs(1);
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        Some(vec![(1, false), (2, false)])
    );
    assert_eq!(next_batch(&q, &attachment, wait).await, None, "window full");
    assert_eq!(q.stats().in_flight, 2);
    assert_eq!(q.ack(&[range(1, 1)]), 1);
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        Some(vec![(3, false)])
    );
    assert_eq!(q.ack(&[range(2, 3), range(40, 50)]), 2);
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        Some(vec![(4, false), (5, false)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_new_attachment_redelivers_everything_unacknowledged_first() {
    let q = at_least_once(100, 10);
    let first = q.attach(None);
    for _ in 0..4 {
        q.push(&message(1));
    }
    next_batch(&q, &first, Duration::from_secs(1)).await;
    q.ack(&[range(2, 2)]);
    q.push(&message(1));
    let second = q.attach(Some(1));
    assert_eq!(second.next_expected, 5, "redeliveries never count as a gap");
    assert_eq!(
        next_batch(&q, &second, Duration::from_secs(1)).await,
        Some(vec![(1, true), (3, true), (4, true), (5, false)])
    );
    assert_eq!(q.stats().redelivered_total, 3);
}

#[tokio::test(start_paused = true)]
async fn an_unacknowledged_message_is_sent_again_after_the_ack_timeout() {
    let q = at_least_once(100, 10);
    let attachment = q.attach(None);
    q.push(&message(1));
    q.push(&message(1));
    next_batch(&q, &attachment, Duration::from_secs(1)).await;
    q.ack(&[range(1, 1)]);
    assert_eq!(
        next_batch(&q, &attachment, Duration::from_secs(29)).await,
        None,
        "not before the timeout"
    );
    assert_eq!(
        next_batch(&q, &attachment, Duration::from_secs(2)).await,
        Some(vec![(2, true)])
    );
}

#[tokio::test(start_paused = true)]
async fn messages_handed_out_at_different_times_fall_due_each_at_its_own_time() {
    let q = at_least_once(100, 10);
    let attachment = q.attach(None);
    let wait = |secs| Duration::from_secs(secs);
    q.push(&message(1));
    assert_eq!(
        next_batch(&q, &attachment, wait(1)).await,
        Some(vec![(1, false)])
    );
    tokio::time::advance(wait(10)).await;
    q.push(&message(1));
    assert_eq!(
        next_batch(&q, &attachment, wait(1)).await,
        Some(vec![(2, false)])
    );
    // Sent at 0 s and 10 s, with a 30 s timeout.
    assert_eq!(
        next_batch(&q, &attachment, wait(21)).await,
        Some(vec![(1, true)]),
        "the first at 30 s"
    );
    assert_eq!(
        next_batch(&q, &attachment, wait(11)).await,
        Some(vec![(2, true)]),
        "the second at 40 s"
    );
    assert_eq!(
        next_batch(&q, &attachment, wait(19)).await,
        None,
        "the first again only 30 s after it was sent again"
    );
    assert_eq!(
        next_batch(&q, &attachment, wait(2)).await,
        Some(vec![(1, true)])
    );
}

#[tokio::test(start_paused = true)]
async fn the_overflow_policy_never_drops_a_message_in_flight() {
    let q = at_least_once(2, 2);
    let first = q.attach(None);
    q.push(&message(1));
    q.push(&message(1));
    next_batch(&q, &first, Duration::from_secs(1)).await;
    for _ in 0..5 {
        q.push(&message(1));
    }
    assert_eq!(
        q.stats().dropped_total,
        3,
        "only queued messages were dropped"
    );
    let second = q.attach(None);
    assert_eq!(
        next_batch(&q, &second, Duration::from_secs(1)).await,
        Some(vec![(1, true), (2, true)])
    );
    q.ack(&[range(1, 2)]);
    assert_eq!(
        next_batch(&q, &second, Duration::from_secs(1)).await,
        Some(vec![(6, false), (7, false)])
    );
}

#[tokio::test(start_paused = true)]
async fn a_leaving_member_hands_on_its_unacknowledged_messages_in_order() {
    let q = at_least_once(100, 2);
    let attachment = q.attach(None);
    for _ in 0..4 {
        q.push(&message(1));
    }
    next_batch(&q, &attachment, Duration::from_secs(1)).await;
    assert_eq!(q.take_remaining().len(), 4);
    assert_eq!(q.stats().in_flight, 0);
}

fn bounds(acks: bool) -> QueueBounds {
    QueueBounds {
        max_messages: 100,
        max_bytes: usize::MAX,
        overflow: OverflowPolicy::DropOldest,
        acks: acks.then_some(AckBounds {
            max_in_flight: 2,
            timeout: Duration::from_secs(30),
        }),
        max_age: None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_restored_queue_redelivers_its_stored_messages_first_then_continues_the_sequence() {
    let stored = vec![(4, message(1)), (6, message(1)), (7, message(1))];
    let q = SubscriptionQueue::restore(bounds(true), None, 7, stored);
    assert!(
        !q.wants_retained(),
        "it had its retained values before the restart"
    );
    assert_eq!(
        q.stats().in_flight,
        3,
        "more than the window of 2: nothing is dropped"
    );
    q.push(&message(1));
    let attachment = q.attach(Some(5));
    let wait = Duration::from_secs(1);
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        Some(vec![(4, true), (6, true), (7, true)])
    );
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        None,
        "the window is full until acknowledgements come"
    );
    q.ack(&[SequenceRange { from: 4, to: 7 }]);
    assert_eq!(
        next_batch(&q, &attachment, wait).await,
        Some(vec![(8, false)])
    );
}

#[tokio::test]
async fn a_restored_queue_follows_a_client_that_received_beyond_the_stored_sequence() {
    // The broker died after the client got sequence 12 but before sequence 12 was stored.
    let q = SubscriptionQueue::restore(bounds(false), None, 10, Vec::new());
    let attachment = q.attach(Some(12));
    assert_eq!(attachment.next_expected, 13);
    q.push(&message(1));
    let (sequences, _) = drain(&q).await;
    assert_eq!(sequences, vec![13], "no sequence the client has is reused");
    // Only the first attachment after the restart may move the sequence.
    assert_eq!(q.attach(Some(99)).next_expected, 14);
}

#[tokio::test]
async fn a_restored_queue_ignores_a_position_no_uncommitted_batch_could_reach() {
    let q = SubscriptionQueue::restore(bounds(false), None, 10, Vec::new());
    let attachment = q.attach(Some(u64::MAX));
    assert_eq!(
        attachment.next_expected, 11,
        "continues after the stored sequence"
    );
    q.push(&message(1));
    let (sequences, _) = drain(&q).await;
    assert_eq!(sequences, vec![11], "the sequence does not wrap to 0");
}

#[tokio::test]
async fn a_queue_whose_sequences_are_used_up_closes_instead_of_reusing_one() {
    let q = SubscriptionQueue::restore(bounds(false), None, u64::MAX - 1, Vec::new());
    q.attach(None);
    assert_eq!(q.push(&message(1)), PushOutcome::Queued);
    assert_eq!(q.push(&message(1)), PushOutcome::Overflowed);
    assert_eq!(q.stats().last_sequence, u64::MAX);
}

#[tokio::test]
async fn an_at_most_once_client_behind_the_restored_sequence_gets_the_exact_gap() {
    let q = SubscriptionQueue::restore(bounds(false), None, 10, Vec::new());
    let attachment = q.attach(Some(6));
    assert_eq!(attachment.next_expected, 7);
    assert_eq!(
        attachment.undelivered_through, 10,
        "7..=10 were lost with the broker"
    );
}

#[tokio::test(start_paused = true)]
async fn messages_older_than_the_age_bound_are_dropped_unsent_and_reported() {
    let q = SubscriptionQueue::new(QueueBounds {
        max_age: Some(Duration::from_secs(10)),
        ..bounds(true)
    });
    q.push(&message(1));
    q.push(&message(1));
    tokio::time::advance(Duration::from_secs(11)).await;
    q.push(&message(1));
    let attachment = q.attach(None);
    let mut batch = Vec::new();
    let popped = q.pop_batch(&attachment, &mut batch, 10).await;
    assert!(
        matches!(popped, Popped::Batch { dropped: 2, .. }),
        "{popped:?}"
    );
    assert_eq!(
        batch.iter().map(|q| q.sequence).collect::<Vec<_>>(),
        vec![3]
    );
    assert_eq!(q.stats().dropped_total, 2);
    // Sent and unacknowledged: never dropped by age.
    tokio::time::advance(Duration::from_secs(60)).await;
    assert_eq!(q.stats().in_flight, 1);
}

#[tokio::test]
async fn a_popped_batch_counts_as_unwritten_until_its_writer_is_done() {
    let queue = queue(10, OverflowPolicy::DropOldest);
    queue.push(&message(8));
    queue.push(&message(8));
    let attachment = queue.attach(None);
    let mut batch = Vec::new();
    queue.pop_batch(&attachment, &mut batch, 10).await;
    let writing = queue.writing(&batch);
    let stats = queue.stats();
    assert_eq!(
        stats.depth, 0,
        "at most once: popped messages have left the queue"
    );
    assert_eq!(stats.unwritten, 2, "but a drain must still wait for them");
    drop(writing);
    assert_eq!(queue.stats().unwritten, 0);
}

#[tokio::test]
async fn an_attachment_with_messages_due_again_announces_no_gap_before_them() {
    // Taken up on another node: 4 and 5 unacknowledged, then one sequence lost between nodes.
    let stored = vec![(4, message(1)), (5, message(1))];
    let q = SubscriptionQueue::restore(bounds(true), None, 5, stored);
    q.lost_before_arrival(1);
    let attachment = q.attach(None);
    // A client in a new process counts from the first sequence it hears of: a gap of 6
    // announced with the stream's start would make it drop 4 and 5 as already seen.
    assert!(
        attachment.lost_through < attachment.next_expected,
        "nothing announced with the start, before the redeliveries: {attachment:?}"
    );
    assert_eq!(q.take_route_lost(), vec![(6, 6)], "announced after them");
}

fn charged_queue(
    queue: SubscriptionQueue,
) -> (SubscriptionQueue, Arc<crate::memory::MemoryBudget>) {
    let budget = Arc::new(crate::memory::MemoryBudget::new(1 << 30, 1 << 20));
    queue.charge_entries_to(&budget);
    (queue, budget)
}

#[tokio::test]
async fn a_queue_charges_the_entries_it_holds_in_steps_and_gives_them_back() {
    use super::entries::{ENTRY_BYTES, STEP};
    let (q, budget) = charged_queue(queue(1_000, OverflowPolicy::DropOldest));
    assert_eq!(budget.used(), 0, "an empty queue holds nothing");
    for _ in 0..100 {
        q.push(&message(1));
    }
    assert_eq!(
        budget.used(),
        100_usize.next_multiple_of(STEP) * ENTRY_BYTES,
        "100 entries, counted up to the next step"
    );
    drain(&q).await;
    assert_eq!(budget.used(), 0, "an emptied queue gives everything back");
    q.push(&message(1));
    assert_eq!(budget.used(), STEP * ENTRY_BYTES);
    drop(q);
    assert_eq!(budget.used(), 0, "a dropped queue gives everything back");
}

#[tokio::test]
async fn entries_in_flight_count_until_acknowledged() {
    use super::entries::{ENTRY_BYTES, STEP};
    let (q, budget) = charged_queue(at_least_once(1_000, 100));
    for _ in 0..40 {
        q.push(&message(1));
    }
    let (sequences, _) = drain(&q).await;
    assert_eq!(sequences.len(), 40);
    assert_eq!(
        budget.used(),
        40_usize.next_multiple_of(STEP) * ENTRY_BYTES,
        "handed to the writer, not yet acknowledged: still held"
    );
    q.ack(&[SequenceRange { from: 1, to: 40 }]);
    assert_eq!(budget.used(), 0);
}

#[tokio::test]
async fn a_full_queue_under_drop_oldest_holds_no_more_than_its_bound() {
    use super::entries::{ENTRY_BYTES, STEP};
    let (q, budget) = charged_queue(queue(10, OverflowPolicy::DropOldest));
    for _ in 0..1_000 {
        q.push(&message(1));
    }
    assert_eq!(budget.used(), STEP * ENTRY_BYTES, "ten entries held");
}

#[tokio::test]
async fn a_batch_is_drained_only_once_no_redelivery_is_left_for_a_later_one() {
    let q = at_least_once(1_000, 1_000);
    let first = q.attach(None);
    for _ in 0..300 {
        q.push(&message(1));
    }
    let mut batch = Vec::new();
    assert!(matches!(
        q.pop_batch(&first, &mut batch, usize::MAX).await,
        Popped::Batch { .. }
    ));
    assert_eq!(batch.len(), 300, "all sent, none acknowledged");
    // Sequences 301-310 were lost on the way (a taken-up session, a drop): the writer announces
    // them as a gap once a batch leaves nothing behind it.
    q.lost_before_arrival(10);
    let resumed = q.attach(Some(0));
    batch.clear();
    let popped = q.pop_batch(&resumed, &mut batch, 256).await;
    assert_eq!(batch.len(), 256);
    assert!(
        matches!(popped, Popped::Batch { drained: false, .. }),
        "44 redeliveries still to come: no gap may pass them yet, got {popped:?}"
    );
    batch.clear();
    let popped = q.pop_batch(&resumed, &mut batch, 256).await;
    assert_eq!(batch.len(), 44);
    assert!(
        matches!(
            popped,
            Popped::Batch {
                drained: true,
                last_sequence: 310,
                ..
            }
        ),
        "{popped:?}"
    );
}

#[tokio::test]
async fn a_batch_being_written_counts_in_the_byte_bound_until_written() {
    let size = message(1000).memory_size();
    let queue = SubscriptionQueue::new(QueueBounds {
        max_messages: 100,
        max_bytes: 2 * size,
        overflow: OverflowPolicy::DropOldest,
        acks: None,
        max_age: None,
    });
    queue.push(&message(1000));
    queue.push(&message(1000));
    let attachment = queue.attach(None);
    let mut batch = Vec::new();
    queue.pop_batch(&attachment, &mut batch, 10).await;
    let writing = queue.writing(&batch);
    // The writer holds the bound's worth: the queue keeps one message (never fewer), and
    // drops the older of two.
    queue.push(&message(1000));
    queue.push(&message(1000));
    let stats = queue.stats();
    assert_eq!((stats.depth, stats.dropped_total), (1, 1));
    drop(writing);
    queue.push(&message(1000));
    assert_eq!(
        queue.stats().depth,
        2,
        "written: the bound is the queue's again"
    );
}
