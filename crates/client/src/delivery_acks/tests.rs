use super::*;

fn ranges(ack: &Ack) -> Vec<(u64, u64)> {
    ack.ranges
        .iter()
        .map(|range| (range.from, range.to))
        .collect()
}

#[test]
fn a_message_is_acknowledged_once_the_application_asks_for_the_next() {
    let mut acks = PendingAcks::default();
    acks.yielded(0, 1);
    assert!(!acks.due(true), "still held by the application");
    acks.last_processed();
    assert!(acks.due(true));
    let ack = acks.take(0, 7).expect("an ack");
    assert_eq!(ack.subscription, 7);
    assert_eq!(ranges(&ack), vec![(1, 1)]);
    assert!(acks.take(0, 7).is_none(), "sent once");
}

#[test]
fn consecutive_sequences_coalesce_and_a_full_batch_is_due_while_busy() {
    let mut acks = PendingAcks::default();
    for sequence in 1..ACK_BATCH {
        acks.add(0, sequence);
    }
    acks.add(0, 100);
    assert!(acks.due(false));
    let ack = acks.take(0, 1).expect("an ack");
    assert_eq!(ranges(&ack), vec![(1, ACK_BATCH - 1), (100, 100)]);
}

#[test]
fn acknowledgements_of_a_lost_session_are_discarded() {
    let mut acks = PendingAcks::default();
    acks.add(0, 1);
    assert!(acks.take(1, 9).is_none());
    acks.add(1, 1);
    assert!(acks.take(1, 9).is_some());
}

#[test]
fn an_ack_that_could_not_be_sent_is_kept_in_order() {
    let mut acks = PendingAcks::default();
    acks.add(0, 1);
    let ack = acks.take(0, 1).expect("an ack");
    acks.add(0, 5);
    acks.put_back(0, ack);
    assert!(acks.due(true));
    assert_eq!(
        ranges(&acks.take(0, 1).expect("an ack")),
        vec![(1, 1), (5, 5)]
    );
}
