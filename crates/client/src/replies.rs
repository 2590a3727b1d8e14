//! The table of requests waiting for their reply, keyed by the reply topic each one sent.
//!
//! [`crate::Client::request`] registers an entry and waits on it; whichever comes first
//! completes it: a delivery on the reply topic (the inbox dispatcher in [`crate::inbox`]), a
//! `NoResponders` answer on the request's publish stream (the lane in [`crate::lane`]), or the
//! end of the inbox subscription it waits on. The [`PendingReply`] a request holds removes its entry when
//! dropped, so a request that times out or is cancelled leaves nothing behind: the table holds
//! exactly the requests still waiting. This module does no I/O.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::ClientError;
use crate::message::Message;
use crate::sync::lock;

/// What a waiting request receives.
pub(crate) type ReplyResult = Result<Message, ClientError>;

/// Requests waiting for a reply, by reply topic.
#[derive(Debug, Default)]
pub(crate) struct PendingReplies {
    /// One entry per request still waiting.
    waiting: Mutex<HashMap<String, Waiting>>,
}

/// One waiting request.
#[derive(Debug)]
struct Waiting {
    /// The topic the request was published to, for [`ClientError::NoResponders`].
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

    /// Fails the request whose reply topic is `reply_to` with [`ClientError::NoResponders`].
    /// Returns `false` if no request waits on that topic.
    pub(crate) fn no_responders(&self, reply_to: &str) -> bool {
        let waiting = lock(&self.waiting).remove(reply_to);
        match waiting {
            Some(Waiting { topic, outcome }) => {
                let _ = outcome.send(Err(ClientError::NoResponders { topic }));
                true
            }
            None => false,
        }
    }

    /// Fails every request whose reply topic is under the inbox `prefix` (`prefix.` followed
    /// by anything) with the error `error` makes.
    pub(crate) fn fail_inbox(&self, prefix: &str, error: impl Fn() -> ClientError) {
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
mod tests;
