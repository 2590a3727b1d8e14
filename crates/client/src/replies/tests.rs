//! A waiting request ends exactly once, by reply, `NoResponders`, the end of its inbox or being
//! dropped, and leaves no entry behind.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

use std::sync::Arc;

use bytes::Bytes;
use cassini_protocol::Delivery;

use super::*;

fn reply(topic: &str, payload: &'static str) -> Message {
    Message::from(Delivery {
        sequence: 1,
        topic: topic.into(),
        headers: vec![],
        payload: Bytes::from_static(payload.as_bytes()),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    })
}

#[tokio::test]
async fn a_reply_completes_the_request_waiting_on_its_topic_only() {
    let replies = Arc::new(PendingReplies::default());
    let mut first = replies.register("_INBOX.x.1".into(), "svc.a");
    let mut second = replies.register("_INBOX.x.2".into(), "svc.b");
    assert!(replies.complete(reply("_INBOX.x.2", "b")));
    let answer = second
        .outcome()
        .await
        .expect("an outcome")
        .expect("a reply");
    assert_eq!(answer.payload(), &Bytes::from_static(b"b"));
    assert_eq!(replies.len(), 1);
    assert!(
        !replies.complete(reply("_INBOX.x.2", "again")),
        "only the first reply counts"
    );
    assert!(replies.complete(reply("_INBOX.x.1", "a")));
    assert!(first.outcome().await.expect("an outcome").is_ok());
    assert_eq!(replies.len(), 0);
}

#[tokio::test]
async fn no_responders_fails_the_request_with_its_topic() {
    let replies = Arc::new(PendingReplies::default());
    let mut pending = replies.register("_INBOX.x.7".into(), "svc.none");
    assert!(replies.no_responders("_INBOX.x.7"));
    match pending.outcome().await {
        Some(Err(ClientError::NoResponders { topic })) => assert_eq!(topic, "svc.none"),
        other => panic!("expected NoResponders, got {other:?}"),
    }
    assert!(!replies.no_responders("_INBOX.x.7"));
}

#[test]
fn a_dropped_request_leaves_no_entry_and_its_late_reply_is_refused() {
    let replies = Arc::new(PendingReplies::default());
    let pending = replies.register("_INBOX.x.1".into(), "svc.slow");
    assert_eq!(replies.len(), 1);
    drop(pending);
    assert_eq!(replies.len(), 0);
    assert!(!replies.complete(reply("_INBOX.x.1", "late")));
}

#[tokio::test]
async fn the_end_of_an_inbox_fails_the_requests_waiting_on_it_only() {
    let replies = Arc::new(PendingReplies::default());
    let mut old: Vec<_> = (1..=3)
        .map(|n| replies.register(format!("_INBOX.old.{n}"), "svc"))
        .collect();
    let _new = replies.register("_INBOX.old2.4".into(), "svc");
    replies.fail_inbox("_INBOX.old", || ClientError::Closed);
    for pending in &mut old {
        assert!(matches!(
            pending.outcome().await,
            Some(Err(ClientError::Closed))
        ));
    }
    assert_eq!(replies.len(), 1, "a request on another inbox still waits");
}
