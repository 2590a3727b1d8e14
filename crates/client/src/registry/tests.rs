//! The registry lets a subscription's stream and its `Subscribed` answer arrive in either order.

#![allow(clippy::panic, clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::*;
use crate::message::Message;

fn sink() -> (SubscriptionSink, mpsc::Receiver<Message>) {
    let (sender, receiver) = mpsc::channel(4);
    let sink = SubscriptionSink {
        sender,
        state: Arc::default(),
    };
    (sink, receiver)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_millis(50)
}

#[tokio::test]
async fn a_stream_arriving_after_the_answer_finds_its_channel() {
    let registry = SubscriptionRegistry::default();
    let (sink, _receiver) = sink();
    registry.register(7, sink);
    assert!(registry.claim(7, soon()).await.is_ok());
}

#[tokio::test]
async fn a_stream_arriving_before_the_answer_waits_for_it() {
    let registry = Arc::new(SubscriptionRegistry::default());
    let waiting = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            registry
                .claim(7, Instant::now() + Duration::from_secs(10))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (sink, _receiver) = sink();
    registry.register(7, sink);
    let claimed = waiting.await.expect("claim task");
    assert!(claimed.is_ok());
}

#[tokio::test]
async fn a_stream_for_an_unknown_subscription_gives_up_at_the_deadline() {
    let registry = SubscriptionRegistry::default();
    let (sink, _receiver) = sink();
    registry.register(8, sink);
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::TimedOut)
    );
}

#[tokio::test]
async fn a_channel_is_claimed_only_once() {
    let registry = SubscriptionRegistry::default();
    let (sink, _receiver) = sink();
    registry.register(7, sink);
    assert!(registry.claim(7, soon()).await.is_ok());
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::TimedOut)
    );
}

#[tokio::test]
async fn closing_ends_unclaimed_subscriptions_with_the_reason() {
    let registry = SubscriptionRegistry::default();
    let (sink, mut receiver) = sink();
    let state = Arc::clone(&sink.state);
    registry.register(7, sink);
    let lost = SubscriptionEnd::ConnectionLost {
        reason: "timed out".into(),
    };
    registry.close(lost.clone());
    assert_eq!(receiver.recv().await, None);
    assert_eq!(state.end(), Some(lost));
    assert_eq!(
        registry.claim(7, soon()).await.err(),
        Some(ClaimError::Closed)
    );
}

#[tokio::test]
async fn a_registration_after_close_ends_at_once() {
    let registry = SubscriptionRegistry::default();
    registry.close(SubscriptionEnd::Closed);
    let (sink, mut receiver) = sink();
    let state = Arc::clone(&sink.state);
    registry.register(7, sink);
    assert_eq!(receiver.recv().await, None);
    assert_eq!(state.end(), Some(SubscriptionEnd::Closed));
}

#[tokio::test]
async fn closing_wakes_a_waiting_stream() {
    let registry = Arc::new(SubscriptionRegistry::default());
    let waiting = tokio::spawn({
        let registry = Arc::clone(&registry);
        async move {
            registry
                .claim(7, Instant::now() + Duration::from_secs(10))
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    registry.close(SubscriptionEnd::Closed);
    let claimed = waiting.await.expect("claim task");
    assert_eq!(claimed.err(), Some(ClaimError::Closed));
}
