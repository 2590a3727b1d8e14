//! The client's inbox: one subscription that receives the replies to every request it makes.
//!
//! The inbox is `_INBOX.<identity token>.<16 random hex digits>`, the token being the client's
//! certificate identity (from `Welcome`) encoded as one topic token
//! ([`cassini_protocol::inbox::identity_token`]): the broker lets each identity subscribe to its
//! own inboxes only, so no other client can read its replies. Request `n` asks for its reply on
//! `_INBOX.<token>.<hex>.<n>`, and the inbox subscribes once to `_INBOX.<token>.<hex>.>` (the
//! broker gives `_INBOX.` subscriptions a higher stream priority). The subscription is made by the
//! first request, not at connect, so a client that never makes a request never has one. A
//! dispatcher task reads the subscription and hands each delivery to the [`PendingReplies`] entry
//! its topic names.
//!
//! The inbox subscription survives reconnects like any other (after a lost session it is made
//! again under the same name, so replies still find it). If the subscription ends, the
//! dispatcher marks it ended, then fails every request waiting
//! on it; the next request subscribes again under a fresh random inbox, so a late reply to the
//! old one cannot reach it. A request checks the mark after registering: if the inbox ended
//! meanwhile it registers again under the new one, so no request waits on an inbox that is gone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cassini_protocol::inbox::inbox_prefix;
use cassini_protocol::SubscribeOptions;
use tokio::sync::Mutex;

use crate::connect::session::SessionCore;
use crate::error::{ConnectionError, RequestError};
use crate::request::replies::{PendingReplies, PendingReply};
use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::subscription::Subscription;

/// How many inbox subscriptions one request may try before giving up: one, and one more if the
/// first ended while the request was registering.
const SUBSCRIBE_ATTEMPTS: usize = 2;

/// The inbox of one client.
#[derive(Debug)]
pub(crate) struct Inbox {
    /// The client's certificate identity, which names its inboxes.
    identity: String,
    /// Messages buffered by the inbox subscription.
    buffer: usize,
    /// The number of the next request, which names its reply topic.
    next_request: AtomicU64,
    /// Requests waiting for a reply; shared with the publish lanes for `NoResponders`.
    replies: Arc<PendingReplies>,
    /// The session, for what a waiting request reports when the inbox ends.
    session: Arc<SessionCore>,
    /// The current inbox subscription, once a request has made one. An async lock, held while
    /// subscribing, so that concurrent first requests subscribe only once.
    current: Mutex<Option<Arc<LiveInbox>>>,
}

/// One inbox subscription, as the requests and its dispatcher share it.
#[derive(Debug)]
struct LiveInbox {
    /// `_INBOX.<identity token>.<16 hex digits>`: the identity makes it readable by this
    /// identity only; the random part keeps two clients of one identity apart.
    prefix: String,
    /// Set by the dispatcher when the subscription has ended, before it fails the requests
    /// waiting on it.
    ended: AtomicBool,
}

impl Inbox {
    /// An inbox with nothing subscribed yet.
    pub(crate) fn new(
        session: Arc<SessionCore>,
        replies: Arc<PendingReplies>,
        identity: String,
        buffer: usize,
    ) -> Self {
        Self {
            identity,
            buffer,
            next_request: AtomicU64::new(1),
            replies,
            session,
            current: Mutex::new(None),
        }
    }

    /// Registers a request to `topic` under a new reply topic, subscribing to the inbox first
    /// if there is no live inbox subscription.
    pub(crate) async fn register(&self, topic: &str) -> Result<PendingReply, RequestError> {
        for _ in 0..SUBSCRIBE_ATTEMPTS {
            let inbox = self.live().await?;
            let number = self.next_request.fetch_add(1, Ordering::Relaxed);
            let pending = self
                .replies
                .register(format!("{}.{number}", inbox.prefix), topic);
            // The dispatcher sets `ended` before it takes the table's lock to fail the waiting
            // requests, and `register` took that lock: if `ended` is still clear, the
            // dispatcher will find this entry.
            if !inbox.ended.load(Ordering::Acquire) {
                return Ok(pending);
            }
        }
        Err(RequestError::InboxEnded {
            reason: "it ended again as soon as it was made".to_owned(),
        })
    }

    /// The live inbox subscription, made through `client` if there is none.
    async fn live(&self) -> Result<Arc<LiveInbox>, RequestError> {
        let mut current = self.current.lock().await;
        if let Some(inbox) = current.as_ref() {
            if !inbox.ended.load(Ordering::Acquire) {
                return Ok(Arc::clone(inbox));
            }
        }
        let inbox = Arc::new(LiveInbox {
            prefix: format!(
                "{}.{:016x}",
                inbox_prefix(&self.identity),
                rand::random::<u64>()
            ),
            ended: AtomicBool::new(false),
        });
        let filter = format!("{}.>", inbox.prefix);
        let subscription = Subscription::open(
            &self.session,
            self.buffer,
            &filter,
            SubscribeOptions::default(),
        )
        .await?;
        tracing::debug!(inbox = %inbox.prefix, "subscribed to the reply inbox");
        tokio::spawn(dispatch(
            subscription,
            Arc::clone(&inbox),
            Arc::clone(&self.replies),
            Arc::clone(&self.session),
        ));
        *current = Some(Arc::clone(&inbox));
        Ok(inbox)
    }
}

/// Hands each delivery on the inbox to the request waiting for it; when the subscription ends,
/// fails every request still waiting on it.
async fn dispatch(
    mut subscription: Subscription,
    inbox: Arc<LiveInbox>,
    replies: Arc<PendingReplies>,
    session: Arc<SessionCore>,
) {
    while let Some(message) = subscription.recv().await {
        let topic = message.topic().to_owned();
        if !replies.complete(message) {
            tracing::debug!(%topic, "a reply for no waiting request (late, or a second reply)");
        }
    }
    let end = subscription.end_reason();
    tracing::debug!(inbox = %inbox.prefix, ?end, "the reply inbox subscription ended");
    inbox.ended.store(true, Ordering::Release);
    replies.fail_inbox(&inbox.prefix, || match &end {
        Some(SubscriptionEnd::Closed) => ConnectionError::Closed.into(),
        Some(SubscriptionEnd::ConnectionLost { .. } | SubscriptionEnd::ProtocolError { .. }) => {
            session.error().into()
        }
        Some(other) => RequestError::InboxEnded {
            reason: other.to_string(),
        },
        None => RequestError::InboxEnded {
            reason: "unknown reason".to_owned(),
        },
    });
}
