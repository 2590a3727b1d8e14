//! Acknowledged publishes: message ids, the bounded table of publishes waiting for their
//! `PublishAck`, and which of them must be sent again after a reconnect.
//!
//! [`crate::Client::publish_acked`] takes a permit (at most `max_unacked` publishes wait at
//! once), registers its message id here and waits on the entry. Whichever comes first completes
//! it: a `PublishAck` or a `PublishRejected` with that id, read by any publish lane
//! ([`crate::lane`]), or the end of the client. The [`PendingAck`] the caller holds removes the
//! entry and frees the permit when dropped, so a publish that timed out or was cancelled leaves
//! nothing behind.
//!
//! Each entry keeps its encoded frame and the connection it was last handed to. After a
//! reconnect, every entry handed to an earlier connection is sent again on the new one, same
//! message id, in the order the publishes were made (see [`crate::session`]); the broker's
//! dedupe answers a copy it had already accepted with `duplicate: true`. This module does no
//! I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use cassini_protocol::{PublishAck, PublishRejected, TopicName};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::ClientError;
use crate::publish::Outgoing;
use crate::sync::lock;

/// The broker's acknowledgement of one publish made with [`crate::PublishOptions::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishReceipt {
    /// The publish's message id: the one given in [`crate::PublishOptions::message_id`], or the
    /// one the client assigned.
    pub message_id: u64,
    /// The broker had already accepted a publish with this id from this certificate identity
    /// within its dedupe window, so this copy was not routed again. Expected when the client
    /// sent the publish again after a reconnect and the first copy had arrived.
    pub duplicate: bool,
}

/// What a waiting publish receives.
pub(crate) type AckResult = Result<PublishReceipt, ClientError>;

/// Message ids for acknowledged publishes that carry none: a random per-client base plus a
/// counter, so a client never repeats one and two clients of one identity are unlikely to
/// collide within the broker's dedupe window.
#[derive(Debug)]
pub(crate) struct MessageIds {
    /// Chosen at random when the client starts.
    base: u64,
    /// How many ids were handed out.
    counter: AtomicU64,
}

impl MessageIds {
    /// Ids starting at a random base.
    pub(crate) fn random() -> Self {
        Self::starting_at(rand::random())
    }

    /// Ids starting at `base`.
    pub(crate) fn starting_at(base: u64) -> Self {
        Self {
            base,
            counter: AtomicU64::new(0),
        }
    }

    /// The next id; distinct from every earlier one for 2^64 calls.
    pub(crate) fn next(&self) -> u64 {
        self.base
            .wrapping_add(self.counter.fetch_add(1, Ordering::Relaxed))
    }
}

/// Publishes waiting for their acknowledgement, by message id.
#[derive(Debug)]
pub(crate) struct PendingAcks {
    /// One permit per publish allowed to wait at once.
    permits: Arc<Semaphore>,
    /// The waiting publishes and the registration counter.
    table: Mutex<Table>,
    /// Ids for publishes that carry none.
    ids: MessageIds,
}

#[derive(Debug, Default)]
struct Table {
    /// One entry per publish still waiting.
    waiting: HashMap<u64, Waiting>,
    /// Increases with every registration: the order to send entries again in.
    registered: u64,
}

/// One waiting publish.
#[derive(Debug)]
struct Waiting {
    /// When it was registered, relative to the others.
    order: u64,
    /// Its topic, which picks the lane.
    topic: TopicName,
    /// The encoded `Publish` frame (ack set), kept to send again.
    frame: BytesMut,
    /// The connection it was last handed to ([`crate::attachment::Attachment::id`]); `None`
    /// while it waits in the outbound buffer.
    sent_on: Option<u64>,
    /// Where its outcome goes.
    outcome: oneshot::Sender<AckResult>,
}

impl PendingAcks {
    /// An empty table allowing `max_unacked` publishes (at least one) to wait at once.
    pub(crate) fn new(max_unacked: usize) -> Self {
        Self::with_ids(max_unacked, MessageIds::random())
    }

    /// An empty table with its id generator.
    pub(crate) fn with_ids(max_unacked: usize, ids: MessageIds) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max_unacked.max(1))),
            table: Mutex::new(Table::default()),
            ids,
        }
    }

    /// A fresh message id.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// Waits until fewer than `max_unacked` publishes wait.
    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit, ClientError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Registers `outgoing` (which must carry `message_id` with ack set) as waiting. Refused if
    /// a publish with the same id still waits.
    pub(crate) fn register(
        self: &Arc<Self>,
        message_id: u64,
        outgoing: &Outgoing,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingAck, ClientError> {
        let (outcome, receiver) = oneshot::channel();
        {
            let mut table = lock(&self.table);
            if table.waiting.contains_key(&message_id) {
                return Err(ClientError::MessageIdInFlight { message_id });
            }
            table.registered += 1;
            let waiting = Waiting {
                order: table.registered,
                topic: outgoing.topic.clone(),
                frame: outgoing.frame.clone(),
                sent_on: None,
                outcome,
            };
            table.waiting.insert(message_id, waiting);
        }
        Ok(PendingAck {
            acks: Arc::clone(self),
            message_id,
            receiver,
            _permit: permit,
        })
    }

    /// Records that the publish `message_id` is being handed to connection `connection`.
    pub(crate) fn mark_sent(&self, message_id: u64, connection: u64) {
        if let Some(waiting) = lock(&self.table).waiting.get_mut(&message_id) {
            waiting.sent_on = Some(connection);
        }
    }

    /// Records that handing `message_id` to `connection` failed, so it is not on any
    /// connection. Returns `false` if meanwhile it was sent again elsewhere (or completed):
    /// then nobody needs to send it.
    pub(crate) fn mark_unsent(&self, message_id: u64, connection: u64) -> bool {
        match lock(&self.table).waiting.get_mut(&message_id) {
            Some(waiting) if waiting.sent_on == Some(connection) => {
                waiting.sent_on = None;
                true
            }
            _ => false,
        }
    }

    /// The publish `message_id` as it waits, to hand to a connection again.
    pub(crate) fn outgoing(&self, message_id: u64) -> Option<Outgoing> {
        lock(&self.table)
            .waiting
            .get(&message_id)
            .map(|waiting| Outgoing {
                topic: waiting.topic.clone(),
                frame: waiting.frame.clone(),
                ack: Some(message_id),
            })
    }

    /// The publishes handed to a connection other than `connection`, oldest first, each now
    /// marked as handed to `connection`: what must be sent again on it.
    pub(crate) fn take_for_resend(&self, connection: u64) -> Vec<(u64, Outgoing)> {
        let mut table = lock(&self.table);
        let mut resend: Vec<(u64, u64, Outgoing)> = table
            .waiting
            .iter_mut()
            .filter(|(_, waiting)| waiting.sent_on.is_some_and(|on| on != connection))
            .map(|(&message_id, waiting)| {
                waiting.sent_on = Some(connection);
                let outgoing = Outgoing {
                    topic: waiting.topic.clone(),
                    frame: waiting.frame.clone(),
                    ack: Some(message_id),
                };
                (waiting.order, message_id, outgoing)
            })
            .collect();
        resend.sort_by_key(|(order, _, _)| *order);
        resend
            .into_iter()
            .map(|(_, message_id, outgoing)| (message_id, outgoing))
            .collect()
    }

    /// Completes the publish `ack` names. Returns `false` if none waits for it (it timed out,
    /// or this is a second answer).
    pub(crate) fn acknowledged(&self, ack: PublishAck) -> bool {
        self.finish(
            ack.message_id,
            Ok(PublishReceipt {
                message_id: ack.message_id,
                duplicate: ack.duplicate,
            }),
        )
    }

    /// Fails the publish `rejected` names with [`ClientError::PublishRejected`]. Returns `false`
    /// if it names no waiting publish.
    pub(crate) fn rejected(&self, rejected: &PublishRejected) -> bool {
        let Some(message_id) = rejected.message_id else {
            return false;
        };
        self.finish(
            message_id,
            Err(ClientError::PublishRejected {
                topic: rejected.topic.clone(),
                message_id: Some(message_id),
                code: rejected.code,
                reason: rejected.reason.clone(),
            }),
        )
    }

    /// Fails the publish `message_id` with `error`.
    pub(crate) fn fail(&self, message_id: u64, error: ClientError) -> bool {
        self.finish(message_id, Err(error))
    }

    /// Fails every waiting publish with the error `error` makes: the client ended.
    pub(crate) fn fail_all(&self, error: impl Fn() -> ClientError) {
        let failed: Vec<Waiting> = lock(&self.table)
            .waiting
            .drain()
            .map(|(_, waiting)| waiting)
            .collect();
        for waiting in failed {
            let _ = waiting.outcome.send(Err(error()));
        }
    }

    fn finish(&self, message_id: u64, result: AckResult) -> bool {
        let waiting = lock(&self.table).waiting.remove(&message_id);
        match waiting {
            Some(waiting) => {
                let _ = waiting.outcome.send(result);
                true
            }
            None => false,
        }
    }

    /// How many publishes wait.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.table).waiting.len()
    }
}

/// A publish's claim on its entry in [`PendingAcks`] and on its permit; dropping it removes the
/// entry and frees the permit.
#[derive(Debug)]
pub(crate) struct PendingAck {
    /// The table holding the entry.
    acks: Arc<PendingAcks>,
    /// The entry's key.
    message_id: u64,
    /// The outcome, once the entry is completed.
    receiver: oneshot::Receiver<AckResult>,
    /// Held while the publish waits: the bound on unacknowledged publishes.
    _permit: OwnedSemaphorePermit,
}

impl PendingAck {
    /// Waits for the outcome. `None` if the entry was dropped without one.
    pub(crate) async fn outcome(&mut self) -> Option<AckResult> {
        (&mut self.receiver).await.ok()
    }
}

impl Drop for PendingAck {
    fn drop(&mut self) {
        lock(&self.acks.table).waiting.remove(&self.message_id);
    }
}

#[cfg(test)]
mod tests;
