//! The registry pairs streams with subscriptions in either order, hands a subscription from
//! one connection's stream to the next in order, and ends subscriptions only when told.

#![allow(clippy::panic, clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_protocol::{Delivery, SubscribeOptions};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use super::*;
use crate::message::Message;
use crate::subscription::{Delivered, StreamItem, SubscriptionState};

fn sink() -> (Arc<SubscriptionSink>, mpsc::Receiver<Delivered>) {
    let (sender, receiver) = mpsc::channel(4);
    let sink = SubscriptionSink::new(
        "demo.>".into(),
        SubscribeOptions::default(),
        sender,
        Arc::new(SubscriptionState::default()),
    );
    (sink, receiver)
}

fn message(sequence: u64) -> Message {
    Message::from(Delivery {
        sequence,
        topic: "demo.a".into(),
        headers: vec![],
        payload: Bytes::new(),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    })
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(50)
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(10)
}

fn registry() -> Arc<SubscriptionRegistry> {
    Arc::new(SubscriptionRegistry::default())
}

#[tokio::test]
async fn a_stream_arriving_after_the_answer_finds_its_subscription() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    assert_eq!(sink.state.id(), 7);
    assert!(registry.claim(7, soon()).await.is_ok());
}

#[tokio::test]
async fn a_stream_arriving_before_the_answer_waits_for_it() {
    let registry = registry();
    let waiting = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move { registry.claim(7, later()).await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    let (sink, _receiver) = sink();
    registry.register(7, sink);
    let claimed = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("claimed in time")
        .expect("claim task");
    assert_eq!(claimed, Ok(()));
}

#[tokio::test]
async fn a_stream_for_an_unknown_subscription_gives_up_at_the_deadline() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(8, sink);
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::TimedOut)
    );
}

#[tokio::test]
async fn the_next_stream_takes_over_only_after_the_previous_reader_lets_go() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(7, sink);
    let first = registry.claim(7, soon()).await.expect("first stream");
    let mut second = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move { registry.claim(7, soon()).await.map(|_| ()) }
    });
    assert!(
        timeout(Duration::from_millis(100), &mut second)
            .await
            .is_err(),
        "the second stream must wait while the first reader holds the subscription"
    );
    first.release();
    let claimed = timeout(Duration::from_secs(5), second)
        .await
        .expect("claimed in time")
        .expect("claim task");
    assert_eq!(claimed, Ok(()));
}

#[tokio::test]
async fn a_released_subscription_stays_open_for_the_next_connection() {
    let registry = registry();
    let (sink, mut receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    registry.claim(7, soon()).await.expect("claim").release();
    assert_eq!(sink.state.end(), None);
    assert!(receiver.try_recv().is_err(), "the channel stays open");
    let claimed = registry.claim(7, soon()).await.expect("claimed again");
    claimed
        .sender()
        .expect("open")
        .send(Delivered {
            epoch: claimed.epoch(),
            item: StreamItem::Message(message(1)),
        })
        .await
        .expect("send");
    let received = receiver.recv().await.map(|delivered| match delivered.item {
        StreamItem::Message(message) => message.sequence(),
        StreamItem::Gap(gap) => panic!("a gap: {gap:?}"),
    });
    assert_eq!(received, Some(1));
}

#[tokio::test]
async fn a_finished_subscription_is_forgotten_and_its_channel_closed() {
    let registry = registry();
    let (sink, mut receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    let claimed = registry.claim(7, soon()).await.expect("claim");
    claimed.finish(SubscriptionEnd::SlowConsumer);
    assert!(receiver.recv().await.is_none());
    assert_eq!(sink.state.end(), Some(SubscriptionEnd::SlowConsumer));
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::TimedOut)
    );
}

#[tokio::test]
async fn releasing_a_subscription_being_unsubscribed_ends_it() {
    let registry = registry();
    let (sink, mut receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    let claimed = registry.claim(7, soon()).await.expect("claim");
    sink.state.start_unsubscribing();
    claimed.release();
    assert!(receiver.recv().await.is_none());
    assert_eq!(sink.state.end(), Some(SubscriptionEnd::Unsubscribed));
}

#[tokio::test]
async fn closing_ends_free_subscriptions_at_once_and_held_ones_on_release() {
    let registry = registry();
    let (free, mut free_receiver) = sink();
    let (held, mut held_receiver) = sink();
    registry.register(7, Arc::clone(&free));
    registry.register(8, Arc::clone(&held));
    let claimed = registry.claim(8, soon()).await.expect("claim");
    let lost = SubscriptionEnd::ConnectionLost {
        reason: "timed out".into(),
    };
    registry.close(lost.clone());
    assert!(free_receiver.recv().await.is_none());
    assert_eq!(free.state.end(), Some(lost.clone()));
    assert!(
        held_receiver.try_recv().is_err(),
        "still open while its reader holds it"
    );
    claimed.release();
    assert!(held_receiver.recv().await.is_none());
    assert_eq!(held.state.end(), Some(lost));
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::Closed)
    );
}

#[tokio::test]
async fn a_registration_after_close_ends_at_once() {
    let registry = registry();
    registry.close(SubscriptionEnd::Closed);
    let (sink, mut receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    assert!(receiver.recv().await.is_none());
    assert_eq!(sink.state.end(), Some(SubscriptionEnd::Closed));
}

#[tokio::test]
async fn closing_wakes_a_waiting_stream() {
    let registry = registry();
    let waiting = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move { registry.claim(7, later()).await.map(|_| ()) }
    });
    tokio::task::yield_now().await;
    registry.close(SubscriptionEnd::Closed);
    let claimed = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("woken in time")
        .expect("claim task");
    assert_eq!(claimed, Err(ClaimError::Closed));
}

#[tokio::test]
async fn a_stream_for_an_abandoned_subscription_is_refused_at_once() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(7, Arc::clone(&sink));
    sink.state.start_unsubscribing();
    registry.unsubscribing(&sink.state);
    assert_eq!(registry.abandoned(), vec![7]);
    // Its stream was lost with the connection while the answer was awaited: it ends here.
    registry.claim(7, soon()).await.expect("claim").release();
    assert_eq!(sink.state.end(), Some(SubscriptionEnd::Unsubscribed));
    // The broker may still have it and open a stream for it after a resume.
    assert_eq!(
        registry.claim(7, later()).await.err(),
        Some(ClaimError::Abandoned)
    );
    registry.unsubscribe_confirmed(7);
    assert!(registry.abandoned().is_empty());
}

#[tokio::test]
async fn an_orphan_has_no_id_to_unsubscribe() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(1, Arc::clone(&sink));
    registry.session_lost();
    registry.unsubscribing(&sink.state);
    assert!(
        registry.abandoned().is_empty(),
        "id 1 may name another subscription in the new session"
    );
}

#[tokio::test]
async fn a_lost_session_orphans_live_subscriptions_in_a_new_epoch() {
    let registry = registry();
    let (kept, _kept_receiver) = sink();
    let (dropped, mut dropped_receiver) = sink();
    registry.register(1, Arc::clone(&kept));
    registry.register(2, Arc::clone(&dropped));
    dropped.state.start_unsubscribing();
    registry.unsubscribing(&dropped.state);

    assert_eq!(registry.session_lost(), 1);
    assert!(registry.abandoned().is_empty(), "the new session has none");
    assert!(dropped_receiver.recv().await.is_none());
    assert_eq!(kept.state.epoch(), 1);
    assert_eq!(
        registry.claim(1, soon()).await.err(),
        Some(ClaimError::TimedOut),
        "old ids mean nothing in the new session"
    );

    let orphans = registry.take_orphans();
    assert_eq!(orphans.len(), 1);
    assert!(Arc::ptr_eq(&orphans[0], &kept));
    registry.register(30, Arc::clone(&orphans[0]));
    assert_eq!(kept.state.id(), 30);
    let claimed = registry
        .claim(30, soon())
        .await
        .expect("claimed by its new id");
    assert_eq!(claimed.epoch(), 1);
}

#[tokio::test]
async fn an_orphan_that_could_not_be_made_again_waits_for_the_next_attempt() {
    let registry = registry();
    let (sink, _receiver) = sink();
    registry.register(1, Arc::clone(&sink));
    registry.session_lost();
    let orphans = registry.take_orphans();
    registry.return_orphan(Arc::clone(&orphans[0]));
    assert_eq!(registry.take_orphans().len(), 1);
}

#[tokio::test]
async fn a_refused_orphan_ends_even_while_an_old_reader_holds_it() {
    let registry = registry();
    let (sink, mut receiver) = sink();
    registry.register(1, Arc::clone(&sink));
    let old_reader = registry.claim(1, soon()).await.expect("claim");
    registry.session_lost();
    let orphans = registry.take_orphans();
    registry.orphan_refused(&orphans[0], "too many subscriptions".into());
    old_reader.release();
    assert!(receiver.recv().await.is_none());
    assert!(matches!(
        sink.state.end(),
        Some(SubscriptionEnd::ResubscribeFailed { .. })
    ));
}
