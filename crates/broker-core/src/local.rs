//! In-process clients: a program that embeds the broker publishes and subscribes without a
//! network hop, and local ractor actors can receive messages.
//!
//! A [`LocalClient`] is a session of the embedding program, with a session id of its own so
//! that remote clients can address it with direct messages. Its publishes go through the same
//! admission as a publish stream's (every check, the same router, the same counters; only the
//! ACL does not apply, see below); its subscriptions are members of their filter's route like
//! any other, each with its own bounded [`SubscriptionQueue`] and overflow policy, joined and
//! left through the filter's topic actor (so retained values are replayed to them too). A
//! [`LocalSubscription`] reads its queue directly: no stream, no encoding, no copy of the
//! payload. [`LocalSubscription::forward_to`] feeds a ractor actor, with at most a window
//! of messages in the actor's (unbounded) mailbox at once, so a slow actor fills only its
//! subscription's queue, whose policy then applies, exactly like a slow network subscriber.
//!
//! Local subscriptions are not session actors' subscriptions: they are owned by the value, end
//! when it is dropped, and are not counted in [`crate::BrokerStats::subscribers`].
//!
//! The ACL does not apply here: a local client is the embedding program itself, with no
//! certificate identity, so its publishes (any `reply_to` included), subscriptions and queue
//! groups are not checked against it. A request a remote client sends to a local responder had
//! its `reply_to` checked against that client's rights when it entered the broker.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use cassini_protocol::{Headers, SessionId, SubscribeOptions, SubscriptionId, TopicFilter};
use ractor::{ActorRef, Message as ActorMessage};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;

use crate::actors::ask;
use crate::actors::session::valid_group_name;
use crate::actors::topic_manager::TopicManagerMsg;
use crate::admission::{Admitted, Publisher};
use crate::context::Shared;
use crate::error::BrokerError;
use crate::message::PublishedMessage;
use crate::queue::{Attachment, Popped, Queued, SubscriptionQueue};
use crate::router::{RouteMember, SubscriberKey};

/// Most messages a local subscription takes from its queue at once.
const LOCAL_BATCH: usize = 256;

/// A publish from the embedding program.
#[derive(Debug, Clone, Default)]
pub struct LocalPublish {
    /// A topic name without wildcards.
    pub topic: String,
    /// Application headers.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// An id passed through to subscribers.
    pub message_id: Option<u64>,
    /// Where replies go: makes it a request.
    pub reply_to: Option<String>,
    /// Keep as the topic's retained value (an empty payload clears it).
    pub retain: bool,
    /// Deliver only to this session's subscriptions.
    pub to_session: Option<SessionId>,
}

/// What a local publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalPublished {
    /// How many subscriptions the message was offered to.
    pub offered: usize,
}

/// The embedding program's session: publish and subscribe in process.
#[derive(Debug, Clone)]
pub struct LocalClient {
    shared: Arc<Shared>,
    topics: ActorRef<TopicManagerMsg>,
    session: SessionId,
    next_subscription: Arc<AtomicU64>,
}

impl LocalClient {
    pub(crate) fn new(shared: Arc<Shared>, topics: ActorRef<TopicManagerMsg>) -> Self {
        Self {
            shared,
            topics,
            session: SessionId(rand::random()),
            next_subscription: Arc::new(AtomicU64::new(0)),
        }
    }

    /// This local session's id: remote clients address direct messages to it.
    pub fn session_id(&self) -> SessionId {
        self.session
    }

    /// Publishes `payload` to `topic`. Never waits on subscribers.
    pub fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<LocalPublished, BrokerError> {
        self.publish_with(LocalPublish {
            topic: topic.to_owned(),
            payload: payload.into(),
            ..LocalPublish::default()
        })
    }

    /// Publishes with every option. It goes through the same admission as a network publish:
    /// the same limits, memory budget and, in disk mode, store health and disk limit (a full
    /// store refuses it with `STORAGE_FULL`), and the same counters (`messages_received`,
    /// `publishes_rejected`, ...); only the ACL does not apply. A request (with `reply_to`) that reached nobody shows as
    /// `offered == 0`.
    pub fn publish_with(&self, publish: LocalPublish) -> Result<LocalPublished, BrokerError> {
        let mut frame = cassini_protocol::Publish {
            topic: publish.topic,
            headers: publish.headers,
            payload: publish.payload,
            message_id: publish.message_id,
            reply_to: publish.reply_to,
            retain: publish.retain,
            to_session: publish.to_session,
            ack: false,
        };
        match Publisher::local().admit(&self.shared, &mut frame)? {
            Admitted::Routed { offered, .. } => Ok(LocalPublished { offered }),
            // A local publish is never acknowledged, so it is never taken for a retry.
            Admitted::Duplicate { .. } => Ok(LocalPublished { offered: 0 }),
        }
    }

    /// Subscribes to `filter` with the broker's default options.
    pub async fn subscribe(&self, filter: &str) -> Result<LocalSubscription, BrokerError> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `filter` with `options` (queue bounds, overflow policy, queue group).
    /// At-least-once options are refused: a local subscription lives and dies with the
    /// program, so there is nothing to redeliver to.
    pub async fn subscribe_with(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<LocalSubscription, BrokerError> {
        let config = &self.shared.config;
        if options.acks.is_some() {
            return Err(BrokerError::InvalidOption(
                "a local subscription cannot be at least once".into(),
            ));
        }
        let filter = TopicFilter::parse(filter, &config.limits.topics)
            .map_err(BrokerError::InvalidFilter)?;
        // A subscription needs room for at least one message of the largest size.
        self.shared
            .memory
            .check_room(config.limits.max_frame_bytes as usize)?;
        let group = match &options.queue_group {
            None => None,
            Some(name) => Some(Arc::from(valid_group_name(
                name,
                config.limits.max_queue_group_bytes,
            )?)),
        };
        let key = SubscriberKey {
            session: self.session,
            subscription: self.next_subscription.fetch_add(1, Ordering::Relaxed) + 1,
        };
        let queue = Arc::new(SubscriptionQueue::new(config.queue.bounds_for(&options)));
        queue.charge_entries_to(&self.shared.memory);
        let attachment = queue.attach(None);
        queue.set_attached(true);
        let member = RouteMember {
            key,
            queue: Arc::clone(&queue),
            group,
        };
        ask(&self.topics, |reply| TopicManagerMsg::Join {
            filter: filter.clone(),
            member,
            reply,
        })
        .await??;
        Ok(LocalSubscription {
            topics: self.topics.clone(),
            key,
            filter,
            queue,
            attachment,
            batch: VecDeque::new(),
        })
    }
}

/// One message delivered to a local subscription. The payload is the publisher's buffer,
/// shared, not copied.
#[derive(Debug)]
pub struct LocalMessage {
    sequence: u64,
    message: Arc<PublishedMessage>,
    /// Held while a forwarded message waits in an actor's mailbox; released when dropped.
    _permit: Option<OwnedSemaphorePermit>,
}

impl LocalMessage {
    /// Position in the subscription, from 1; a jump means the overflow policy dropped messages.
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// The concrete topic it was published to.
    pub fn topic(&self) -> &str {
        self.message.topic.as_str()
    }

    /// The publisher's headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.message.payload
    }

    /// The publisher's message id.
    pub fn message_id(&self) -> Option<u64> {
        self.message.message_id
    }

    /// Where a reply goes, for requests.
    pub fn reply_to(&self) -> Option<&str> {
        self.message.reply_to.as_deref()
    }

    /// Whether this is a retained value replayed to a new subscription.
    pub fn is_retained(&self) -> bool {
        self.message.retained
    }
}

/// A subscription of the embedding program. Dropping it ends the subscription.
#[derive(Debug)]
pub struct LocalSubscription {
    topics: ActorRef<TopicManagerMsg>,
    key: SubscriberKey,
    filter: TopicFilter,
    queue: Arc<SubscriptionQueue>,
    attachment: Attachment,
    batch: VecDeque<Queued>,
}

impl LocalSubscription {
    /// The subscription's id within its local session.
    pub fn id(&self) -> SubscriptionId {
        self.key.subscription
    }

    /// The filter as subscribed.
    pub fn filter(&self) -> &str {
        self.filter.as_str()
    }

    /// Messages dropped by the overflow policy so far.
    pub fn dropped(&self) -> u64 {
        self.queue.stats().dropped_total
    }

    /// The next message; `None` once the subscription ended (its queue closed: the `Close`
    /// policy overflowed, or the broker stopped).
    pub async fn recv(&mut self) -> Option<LocalMessage> {
        loop {
            if let Some(queued) = self.batch.pop_front() {
                return Some(LocalMessage {
                    sequence: queued.sequence,
                    message: queued.message,
                    _permit: None,
                });
            }
            let mut batch = Vec::new();
            match self
                .queue
                .pop_batch(&self.attachment, &mut batch, LOCAL_BATCH)
                .await
            {
                Popped::Batch { .. } => self.batch.extend(batch),
                Popped::Closed(_) | Popped::Superseded => return None,
            }
        }
    }

    /// Feeds every message to `actor` until the subscription ends or the actor stops, with at
    /// most `window` messages in the actor's mailbox at once: each [`LocalMessage`] holds a
    /// place in the window until the actor drops it. Returns the forwarding task; aborting it
    /// ends the subscription.
    pub fn forward_to<M>(mut self, actor: ActorRef<M>, window: usize) -> JoinHandle<()>
    where
        M: ActorMessage + From<LocalMessage>,
    {
        let places = Arc::new(Semaphore::new(window.max(1)));
        tokio::spawn(async move {
            while let Some(mut message) = self.recv().await {
                let Ok(permit) = Arc::clone(&places).acquire_owned().await else {
                    return;
                };
                message._permit = Some(permit);
                if actor.send_message(M::from(message)).is_err() {
                    return;
                }
            }
        })
    }
}

impl Drop for LocalSubscription {
    fn drop(&mut self) {
        self.queue.close();
        let _ = self.topics.send_message(TopicManagerMsg::Leave {
            filter: self.filter.clone(),
            key: self.key,
            reply: None,
        });
    }
}
