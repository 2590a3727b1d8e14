use super::*;

#[test]
fn a_skipped_sequence_is_lost_until_it_arrives_late() {
    let mut tracker = DatagramTracker::default();
    assert!(tracker.accept(0, 1));
    assert!(tracker.accept(0, 4));
    assert_eq!(tracker.lost(), 2);
    assert!(tracker.accept(0, 2), "a late arrival is still yielded");
    assert_eq!(tracker.lost(), 1);
    assert!(!tracker.accept(0, 2), "but only once");
    assert!(!tracker.accept(0, 4));
}

#[test]
fn announced_sequences_are_lost_for_good() {
    let mut tracker = DatagramTracker::default();
    assert!(tracker.accept(0, 1));
    assert!(tracker.accept(0, 5));
    tracker.announced(0, 3, 3);
    assert_eq!(tracker.lost(), 3, "2 and 4 may still come, 3 never will");
    assert!(!tracker.accept(0, 3));
    tracker.announced(0, 6, 10);
    assert_eq!(tracker.lost(), 8);
    assert!(tracker.accept(0, 11));
    assert_eq!(tracker.lost(), 8);
}

#[test]
fn holes_are_bounded_and_old_ones_count_as_lost() {
    let mut tracker = DatagramTracker::default();
    assert!(tracker.accept(0, 1));
    assert!(tracker.accept(0, 2 + MAX_HOLES as u64 * 2));
    assert_eq!(tracker.lost(), MAX_HOLES as u64 * 2);
    assert!(tracker.holes.len() <= MAX_HOLES);
}

#[test]
fn a_new_session_starts_again() {
    let mut tracker = DatagramTracker::default();
    assert!(tracker.accept(0, 10));
    assert!(tracker.accept(1, 1));
    assert!(tracker.accept(1, 2));
}

#[test]
fn an_inverted_or_extreme_announced_range_changes_nothing_and_never_panics() {
    let mut tracker = DatagramTracker::default();
    assert!(tracker.accept(0, 1));
    tracker.announced(0, 10, 5);
    assert_eq!(tracker.lost(), 0, "an empty range announces nothing");
    tracker.announced(0, u64::MAX, u64::MAX);
    assert!(tracker.lost() >= 1);
    assert!(!tracker.accept(0, u64::MAX));
}
