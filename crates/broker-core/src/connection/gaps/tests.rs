use super::*;

fn announcer(next_expected: u64, undelivered_through: u64) -> GapAnnouncer {
    GapAnnouncer::new(
        7,
        &Attachment {
            id: 1,
            next_expected,
            undelivered_through,
            lost_through: 0,
        },
    )
}

fn ranges(gaps: &[Gap]) -> Vec<(u64, u64, GapReason)> {
    gaps.iter()
        .map(|gap| (gap.from, gap.to, gap.reason))
        .collect()
}

#[test]
fn consecutive_messages_make_no_gap() {
    let mut gaps = announcer(1, 0);
    for sequence in 1..=5 {
        assert!(gaps.before(sequence).is_empty());
    }
    assert!(gaps.through(5).is_empty());
}

#[test]
fn messages_dropped_before_sending_are_an_overflow_gap() {
    let mut gaps = announcer(1, 0);
    assert!(gaps.before(1).is_empty());
    assert_eq!(
        ranges(&gaps.before(901)),
        vec![(2, 900, GapReason::Overflow)]
    );
    assert!(gaps.before(902).is_empty());
}

#[test]
fn messages_lost_with_a_connection_are_undelivered_and_drops_after_them_overflow() {
    // An earlier writer sent up to 50; the client received up to 40; then 51..=60 were dropped.
    let mut gaps = announcer(41, 50);
    assert_eq!(
        ranges(&gaps.before(61)),
        vec![
            (41, 50, GapReason::Undelivered),
            (51, 60, GapReason::Overflow)
        ]
    );
}

#[test]
fn drops_at_the_tail_are_announced_when_nothing_follows_them() {
    let mut gaps = announcer(1, 0);
    assert!(gaps.before(1).is_empty());
    assert_eq!(ranges(&gaps.through(3)), vec![(2, 3, GapReason::Overflow)]);
    assert!(gaps.through(3).is_empty(), "announced once");
    assert!(gaps.before(4).is_empty());
}

#[test]
fn redeliveries_below_the_expected_sequence_make_no_gap() {
    let mut gaps = announcer(11, 10);
    assert!(gaps.before(3).is_empty());
    assert!(gaps.before(11).is_empty());
}

#[test]
fn sequences_lost_on_a_cluster_route_have_their_own_reason_and_other_drops_stay_overflow() {
    // 2..=3 dropped by the overflow policy, 4..=6 lost on the route, 7 dropped again; then
    // 9..=10 lost on the route at the tail.
    let mut gaps = announcer(1, 0);
    gaps.lost_on_route([(4, 6), (9, 10)]);
    assert!(gaps.before(1).is_empty());
    assert_eq!(
        ranges(&gaps.before(8)),
        vec![
            (2, 3, GapReason::Overflow),
            (4, 6, GapReason::ClusterRoute),
            (7, 7, GapReason::Overflow)
        ]
    );
    assert_eq!(
        ranges(&gaps.through(10)),
        vec![(9, 10, GapReason::ClusterRoute)]
    );
    assert!(gaps.through(10).is_empty(), "announced once");
}
