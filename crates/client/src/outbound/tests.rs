//! The outbound buffer keeps publishes in order, within its bounds, and drops them with age.

#![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::time::{Duration, Instant};

use super::*;

fn queue(max_messages: usize, max_age_secs: u64) -> OutboundQueue<u32> {
    OutboundQueue::new(OutboundBuffer {
        max_messages,
        max_age: Duration::from_secs(max_age_secs),
    })
}

fn drain(queue: &mut OutboundQueue<u32>, now: Instant) -> Vec<u32> {
    std::iter::from_fn(|| queue.pop(now).map(|buffered| buffered.item)).collect()
}

#[test]
fn the_defaults_hold_1024_messages_for_a_minute() {
    let defaults = OutboundBuffer::default();
    assert_eq!(defaults.max_messages, 1024);
    assert_eq!(defaults.max_age, Duration::from_secs(60));
    assert!(defaults.check().is_ok());
    assert_eq!(OutboundBuffer::disabled().max_messages, 0);
}

#[test]
fn messages_come_out_in_the_order_they_were_published() {
    let now = Instant::now();
    let mut queue = queue(10, 60);
    for n in 0..5 {
        queue.push(n, now).expect("room");
    }
    assert_eq!(queue.stats().buffered, 5);
    assert_eq!(drain(&mut queue, now), vec![0, 1, 2, 3, 4]);
    assert_eq!(queue.stats().buffered, 0);
}

#[test]
fn a_full_buffer_refuses_instead_of_growing() {
    let now = Instant::now();
    let mut queue = queue(3, 60);
    for n in 0..3 {
        queue.push(n, now).expect("room");
    }
    assert_eq!(queue.push(3, now), Err(BufferRefusal::Full { capacity: 3 }));
    assert_eq!(drain(&mut queue, now), vec![0, 1, 2]);
}

#[test]
fn a_disabled_buffer_refuses_everything() {
    let mut queue = queue(0, 60);
    assert_eq!(queue.push(1, Instant::now()), Err(BufferRefusal::Disabled));
}

#[test]
fn expired_messages_are_dropped_and_counted() {
    let start = Instant::now();
    let mut queue = queue(10, 60);
    queue.push(1, start).expect("room");
    queue
        .push(2, start + Duration::from_secs(30))
        .expect("room");
    queue
        .push(3, start + Duration::from_secs(50))
        .expect("room");
    // At 61 s the first is older than a minute; the others are not.
    assert_eq!(
        drain(&mut queue, start + Duration::from_secs(61)),
        vec![2, 3]
    );
    assert_eq!(queue.stats().expired, 1);
}

#[test]
fn expired_messages_make_room_for_new_ones() {
    let start = Instant::now();
    let mut queue = queue(2, 60);
    queue.push(1, start).expect("room");
    queue
        .push(2, start + Duration::from_secs(10))
        .expect("room");
    let later = start + Duration::from_secs(65);
    queue.push(3, later).expect("the first one expired");
    assert_eq!(drain(&mut queue, later), vec![2, 3]);
    assert_eq!(queue.stats().expired, 1);
}

#[test]
fn a_message_that_could_not_be_sent_goes_first_again() {
    let now = Instant::now();
    let mut queue = queue(3, 60);
    for n in 0..3 {
        queue.push(n, now).expect("room");
    }
    let first = queue.pop(now).expect("a message");
    queue.push(3, now).expect("room again");
    queue.push_front(first);
    assert_eq!(drain(&mut queue, now), vec![0, 1, 2, 3]);
}

#[test]
fn discarding_counts_what_was_lost() {
    let now = Instant::now();
    let mut queue = queue(10, 60);
    queue.push(1, now).expect("room");
    queue.push(2, now).expect("room");
    assert_eq!(queue.discard_all(), 2);
    assert_eq!(
        queue.stats(),
        OutboundStats {
            buffered: 0,
            expired: 0,
            discarded: 2
        }
    );
}

#[test]
fn a_buffer_whose_messages_expire_at_once_is_refused() {
    let instant_expiry = OutboundBuffer {
        max_messages: 10,
        max_age: Duration::ZERO,
    };
    assert!(instant_expiry.check().is_err());
    let disabled = OutboundBuffer {
        max_messages: 0,
        max_age: Duration::ZERO,
    };
    assert!(disabled.check().is_ok());
}
