//! The table of requests waiting for their reply, keyed by the reply topic each one sent.
//!
//! [`crate::Client::request`] registers an entry and waits on it; whichever comes first completes
//! it: a delivery on the reply topic (the inbox dispatcher in [`crate::request::inbox`]), a
//! `NoResponders` answer on the request's publish stream (the lane in [`crate::publish::lane`]), or
//! the end of the inbox subscription it waits on. The [`PendingReply`] a request holds removes its
//! entry when dropped, so a request that times out or is cancelled leaves nothing behind: the table
//! holds exactly the requests still waiting. This module does no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::RequestError;
use crate::message::Message;
use crate::sync::lock;

/// What a waiting request receives.
pub(crate) type ReplyResult = Result<Message, RequestError>;

/// Requests waiting for a reply, by reply topic.
#[derive(Debug, Default)]
pub(crate) struct PendingReplies {
    /// One entry per request still waiting.
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// One waiting request.
#[derive(Debug)]
struct Waiting {
    /// The topic the request was published to, for [`RequestError::NoResponders`].
    topic: String,
    /// Where its outcome goes.
    outcome: oneshot::Sender<ReplyResult>,
}

impl PendingReplies {
    /// Registers a request to `topic` whose replies go to `reply_to`.
    pub(crate) fn register(self: &Arc<Self>, reply_to: String, topic: &str) -> PendingReply {
        let (outcome, receiver) = oneshot::channel();
        let waiting = Waiting {
            topic: topic.to_owned(),
            outcome,
        };
        lock(&self.waiting).insert(reply_to.clone(), waiting);
        PendingReply {
            replies: Arc::clone(self),
            reply_to,
            receiver,
        }
    }

    /// Completes the request whose reply topic is `message`'s topic with `message`. Returns
    /// `false` if no request waits for it (it timed out, or was answered already).
    pub(crate) fn complete(&self, message: Message) -> bool {
        let waiting = lock(&self.waiting).remove(message.topic());
        match waiting {
            Some(waiting) => {
                let _ = waiting.outcome.send(Ok(message));
                true
            }
            None => false,
        }
    }

    /// Fails the request whose reply topic is `reply_to` with [`RequestError::NoResponders`].
    /// Returns `false` if no request waits on that topic.
    pub(crate) fn no_responders(&self, reply_to: &str) -> bool {
        let waiting = lock(&self.waiting).remove(reply_to);
        match waiting {
            Some(Waiting { topic, outcome }) => {
                let _ = outcome.send(Err(RequestError::NoResponders { topic }));
                true
            }
            None => false,
        }
    }

    /// Fails every request whose reply topic is under the inbox `prefix` (`prefix.` followed
    /// by anything) with the error `error` makes.
    pub(crate) fn fail_inbox(&self, prefix: &str, error: impl Fn() -> RequestError) {
        let failed: Vec<Waiting> = {
            let mut waiting = lock(&self.waiting);
            let keys: Vec<String> = waiting
                .keys()
                .filter(|reply_to| {
                    reply_to
                        .strip_prefix(prefix)
                        .is_some_and(|rest| rest.starts_with('.'))
                })
                .cloned()
                .collect();
            keys.iter().filter_map(|key| waiting.remove(key)).collect()
        };
        for waiting in failed {
            let _ = waiting.outcome.send(Err(error()));
        }
    }

    /// How many requests are waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.waiting).len()
    }
}

/// A request's claim on its entry in [`PendingReplies`]; dropping it removes the entry.
#[derive(Debug)]
pub(crate) struct PendingReply {
    /// The table holding the entry.
    replies: Arc<PendingReplies>,
    /// The entry's key.
    reply_to: String,
    /// The outcome, once the entry is completed.
    receiver: oneshot::Receiver<ReplyResult>,
}

impl PendingReply {
    /// The topic the reply must be published to.
    pub(crate) fn reply_to(&self) -> &str {
        &self.reply_to
    }

    /// Waits for the outcome. `None` if the entry was dropped without one, which only happens
    /// when the client itself is gone.
    pub(crate) async fn outcome(&mut self) -> Option<ReplyResult> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        lock(&self.replies.waiting).remove(&self.reply_to);
    }
}

#[cfg(test)]
mod tests {
    //! A waiting request ends exactly once, by reply, `NoResponders`, the end of its inbox or being
    //! dropped, and leaves no entry behind.

    #![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::error::ConnectionError;

    fn reply(topic: &str, payload: &'static str) -> Message {
        Message::plain(1, topic, payload)
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
            Some(Err(RequestError::NoResponders { topic })) => assert_eq!(topic, "svc.none"),
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
        replies.fail_inbox("_INBOX.old", || {
            RequestError::Connection(ConnectionError::Closed)
        });
        for pending in &mut old {
            assert!(matches!(
                pending.outcome().await,
                Some(Err(RequestError::Connection(ConnectionError::Closed)))
            ));
        }
        assert_eq!(replies.len(), 1, "a request on another inbox still waits");
    }
}
