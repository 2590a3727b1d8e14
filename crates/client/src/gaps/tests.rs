//! Gap accounting: jumps are recorded, duplicates refused, a new session starts afresh.

use super::*;

fn yielded(tracker: &mut GapTracker, epoch: u64, sequences: &[u64]) -> Vec<u64> {
    sequences
        .iter()
        .copied()
        .filter(|&sequence| tracker.accept(epoch, sequence))
        .collect()
}

#[test]
fn consecutive_sequences_have_no_gaps() {
    let mut tracker = GapTracker::default();
    assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
    assert_eq!(tracker.missed(), 0);
    assert!(tracker.take().is_empty());
}

#[test]
fn a_jump_is_recorded_as_the_range_it_skipped() {
    let mut tracker = GapTracker::default();
    assert_eq!(
        yielded(&mut tracker, 0, &[1, 2, 6, 7, 9]),
        vec![1, 2, 6, 7, 9]
    );
    assert_eq!(tracker.missed(), 4);
    assert_eq!(
        tracker.take(),
        vec![
            Gap::Missed {
                from: 3,
                to: 5,
                reason: None
            },
            Gap::Missed {
                from: 8,
                to: 8,
                reason: None
            }
        ]
    );
    assert!(tracker.take().is_empty(), "taken gaps are gone");
    assert_eq!(tracker.missed(), 4, "the total stays");
}

#[test]
fn messages_dropped_before_the_first_one_read_are_a_gap_too() {
    let mut tracker = GapTracker::default();
    assert!(tracker.accept(0, 4));
    assert_eq!(
        tracker.take(),
        vec![Gap::Missed {
            from: 1,
            to: 3,
            reason: None
        }]
    );
}

#[test]
fn duplicates_and_older_sequences_are_refused() {
    let mut tracker = GapTracker::default();
    assert_eq!(
        yielded(&mut tracker, 0, &[1, 2, 2, 3, 1, 3, 4]),
        vec![1, 2, 3, 4]
    );
    assert_eq!(tracker.missed(), 0);
}

#[test]
fn a_new_session_records_the_loss_and_starts_again_at_one() {
    let mut tracker = GapTracker::default();
    assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
    assert_eq!(yielded(&mut tracker, 1, &[1, 2]), vec![1, 2]);
    assert_eq!(tracker.take(), vec![Gap::SessionLost { last_sequence: 3 }]);
    assert_eq!(tracker.missed(), 0, "an unknown number is not counted");
}

#[test]
fn gap_sizes_are_known_only_for_missed_ranges() {
    assert_eq!(
        Gap::Missed {
            from: 3,
            to: 5,
            reason: None
        }
        .missed(),
        Some(3)
    );
    assert_eq!(Gap::SessionLost { last_sequence: 9 }.missed(), None);
}

#[test]
fn only_the_latest_gaps_are_kept_but_all_are_counted() {
    let mut tracker = GapTracker::default();
    let total = MAX_RECORDED_GAPS as u64 + 10;
    for n in 0..total {
        assert!(tracker.accept(0, 2 * n + 2));
    }
    assert_eq!(tracker.missed(), total);
    let gaps = tracker.take();
    assert_eq!(gaps.len(), MAX_RECORDED_GAPS);
    assert_eq!(
        gaps.last(),
        Some(&Gap::Missed {
            from: 2 * total - 1,
            to: 2 * total - 1,
            reason: None
        })
    );
}

#[test]
fn an_announced_gap_is_recorded_with_its_reason_and_the_next_message_makes_none() {
    let mut tracker = GapTracker::default();
    assert!(tracker.accept(0, 1));
    tracker.announced(0, 2, 901, GapReason::Overflow);
    assert!(tracker.accept(0, 902));
    assert_eq!(tracker.missed(), 900);
    assert_eq!(
        tracker.take(),
        vec![Gap::Missed {
            from: 2,
            to: 901,
            reason: Some(GapReason::Overflow)
        }]
    );
}

#[test]
fn an_announced_gap_behind_what_was_yielded_is_ignored() {
    let mut tracker = GapTracker::default();
    assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
    tracker.announced(0, 1, 2, GapReason::Undelivered);
    assert!(tracker.take().is_empty());
    assert_eq!(tracker.last_sequence(), 3);
}

#[test]
fn numbers_at_the_end_of_the_sequence_space_neither_wrap_nor_panic() {
    let mut tracker = GapTracker::default();
    assert_eq!(yielded(&mut tracker, 0, &[1, u64::MAX]), vec![1, u64::MAX]);
    let missed = tracker.missed();
    assert_eq!(missed, u64::MAX - 2);
    tracker.announced(0, u64::MAX, u64::MAX, GapReason::Overflow);
    tracker.announced(0, 0, u64::MAX, GapReason::Overflow);
    assert_eq!(tracker.missed(), missed, "nothing after the last sequence");
    let gap = Gap::Missed {
        from: 0,
        to: u64::MAX,
        reason: None,
    };
    assert_eq!(gap.missed(), Some(u64::MAX));
}

#[test]
fn a_subscription_taken_up_starts_at_its_first_message_or_gap() {
    let mut tracker = GapTracker::taken_up();
    assert_eq!(yielded(&mut tracker, 0, &[5, 6, 8]), vec![5, 6, 8]);
    assert_eq!(
        tracker.take(),
        vec![Gap::Missed {
            from: 7,
            to: 7,
            reason: None
        }],
        "only what this client missed after taking it up"
    );

    let mut tracker = GapTracker::taken_up();
    tracker.announced(0, 3, 4, GapReason::Overflow);
    assert_eq!(
        tracker.take(),
        vec![Gap::Missed {
            from: 3,
            to: 4,
            reason: Some(GapReason::Overflow)
        }],
        "an announced gap is kept whole, without the sequences before it"
    );
    assert_eq!(yielded(&mut tracker, 0, &[5]), vec![5]);
    assert!(tracker.take().is_empty());
}
