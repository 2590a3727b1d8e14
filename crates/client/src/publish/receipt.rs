//! Acknowledged publishes ([`PublishReceipt`]): message ids, the bounded table of publishes waiting
//! for their `PublishAck`, and which of them must be sent again after a reconnect.
//!
//! [`crate::Client::publish_acked`] takes a permit (at most `max_unacked` publishes wait at once),
//! registers its message id here and waits on the entry. Whichever comes first completes it: a
//! `PublishAck` or a `PublishRejected` with that id, read by any publish lane
//! ([`crate::publish::lane`]), or the end of the client. The [`PendingAck`] the caller holds
//! removes the entry and frees the permit when dropped, so a publish that timed out or was
//! cancelled leaves nothing behind.
//!
//! Each entry keeps its encoded frame and the connection it was last handed to. After a
//! reconnect, every entry handed to an earlier connection is sent again on the new one, same
//! message id, in the order the publishes were made (see [`crate::connect::session`]); the broker's
//! dedupe answers a copy it had already accepted with `duplicate: true`. This module does no
//! I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use cassini_protocol::{PublishAck, PublishRejected, TopicName};
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

use crate::error::{ConnectionError, PublishError};
use crate::publish::outgoing::Outgoing;
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
pub(crate) type AckResult = Result<PublishReceipt, PublishError>;

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
    /// The connection it was last handed to ([`crate::connect::attachment::Attachment::id`]);
    /// `None` while it waits in the outbound buffer.
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
    pub(crate) async fn permit(&self) -> Result<OwnedSemaphorePermit, PublishError> {
        Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|_| ConnectionError::Closed.into())
    }

    /// Registers `outgoing` (which must carry `message_id` with ack set) as waiting. Refused if
    /// a publish with the same id still waits.
    pub(crate) fn register(
        self: &Arc<Self>,
        message_id: u64,
        outgoing: &Outgoing,
        permit: OwnedSemaphorePermit,
    ) -> Result<PendingAck, PublishError> {
        let (outcome, receiver) = oneshot::channel();
        {
            let mut table = lock(&self.table);
            if table.waiting.contains_key(&message_id) {
                return Err(PublishError::MessageIdInFlight { message_id });
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

    /// Fails the publish `rejected` names with [`PublishError::Rejected`]. Returns `false`
    /// if it names no waiting publish.
    pub(crate) fn rejected(&self, rejected: &PublishRejected) -> bool {
        let Some(message_id) = rejected.message_id else {
            return false;
        };
        self.finish(
            message_id,
            Err(PublishError::Rejected {
                topic: rejected.topic.clone(),
                message_id: Some(message_id),
                code: rejected.code,
                reason: rejected.reason.clone(),
            }),
        )
    }

    /// Fails the publish `message_id` with `error`.
    pub(crate) fn fail(&self, message_id: u64, error: PublishError) -> bool {
        self.finish(message_id, Err(error))
    }

    /// Fails every waiting publish with the error `error` makes: the client ended.
    pub(crate) fn fail_all(&self, error: impl Fn() -> PublishError) {
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
mod tests {
    //! Message ids never repeat; a waiting publish ends exactly once (acknowledged, rejected,
    //! failed or dropped), leaves no entry behind and frees its slot; after a reconnect exactly the
    //! publishes handed to an earlier connection are sent again, oldest first.

    #![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

    use std::collections::HashSet;
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::BytesMut;
    use cassini_protocol::{ErrorCode, PublishAck, PublishRejected, TopicLimits, TopicName};
    use tokio::time::timeout;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    fn outgoing(topic: &str, message_id: u64) -> Outgoing {
        Outgoing {
            topic: TopicName::parse(topic, &TopicLimits::default()).expect("topic"),
            frame: BytesMut::from(topic.as_bytes()),
            ack: Some(message_id),
        }
    }

    async fn register(acks: &Arc<PendingAcks>, topic: &str, message_id: u64) -> PendingAck {
        let permit = timeout(WAIT, acks.permit())
            .await
            .expect("a permit in time")
            .expect("a permit");
        acks.register(message_id, &outgoing(topic, message_id), permit)
            .expect("registered")
    }

    #[test]
    fn message_ids_never_repeat_and_start_at_the_base() {
        let ids = MessageIds::starting_at(u64::MAX - 1);
        let taken: Vec<u64> = (0..4).map(|_| ids.next()).collect();
        assert_eq!(taken, vec![u64::MAX - 1, u64::MAX, 0, 1]);
        let random = MessageIds::random();
        let distinct: HashSet<u64> = (0..1000).map(|_| random.next()).collect();
        assert_eq!(distinct.len(), 1000);
    }

    #[tokio::test]
    async fn an_acknowledgement_completes_only_its_publish_and_removes_it() {
        let acks = Arc::new(PendingAcks::new(8));
        let mut first = register(&acks, "demo.a", 1).await;
        let mut second = register(&acks, "demo.b", 2).await;
        assert!(acks.acknowledged(PublishAck {
            message_id: 2,
            duplicate: true,
        }));
        let receipt = second.outcome().await.expect("an outcome").expect("acked");
        assert_eq!(
            receipt,
            PublishReceipt {
                message_id: 2,
                duplicate: true,
            }
        );
        assert!(!acks.acknowledged(PublishAck {
            message_id: 2,
            duplicate: false,
        }));
        assert_eq!(acks.len(), 1);
        assert!(acks.acknowledged(PublishAck {
            message_id: 1,
            duplicate: false,
        }));
        assert!(
            !first
                .outcome()
                .await
                .expect("an outcome")
                .expect("acked")
                .duplicate
        );
    }

    #[tokio::test]
    async fn a_rejection_with_the_id_fails_the_publish_with_the_code() {
        let acks = Arc::new(PendingAcks::new(8));
        let mut pending = register(&acks, "demo.a", 9).await;
        let without_id = PublishRejected {
            topic: "demo.a".into(),
            message_id: None,
            code: ErrorCode::INVALID_TOPIC,
            reason: "no".into(),
        };
        assert!(!acks.rejected(&without_id));
        let rejected = PublishRejected {
            message_id: Some(9),
            code: ErrorCode::PAYLOAD_TOO_LARGE,
            ..without_id
        };
        assert!(acks.rejected(&rejected));
        match pending.outcome().await.expect("an outcome") {
            Err(PublishError::Rejected {
                code, message_id, ..
            }) => {
                assert_eq!(code, ErrorCode::PAYLOAD_TOO_LARGE);
                assert_eq!(message_id, Some(9));
            }
            other => panic!("expected PublishRejected, got {other:?}"),
        }
        assert_eq!(acks.len(), 0);
    }

    #[tokio::test]
    async fn an_id_still_waiting_is_refused() {
        let acks = Arc::new(PendingAcks::new(8));
        let _pending = register(&acks, "demo.a", 5).await;
        let permit = acks.permit().await.expect("a permit");
        match acks.register(5, &outgoing("demo.b", 5), permit) {
            Err(PublishError::MessageIdInFlight { message_id }) => assert_eq!(message_id, 5),
            other => panic!("expected MessageIdInFlight, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn dropping_a_publish_removes_its_entry_and_frees_its_slot() {
        let acks = Arc::new(PendingAcks::new(1));
        let pending = register(&acks, "demo.a", 1).await;
        assert!(
            timeout(Duration::from_millis(50), acks.permit())
                .await
                .is_err(),
            "the only slot is taken"
        );
        drop(pending);
        assert_eq!(acks.len(), 0);
        let _again = register(&acks, "demo.a", 1).await;
    }

    #[tokio::test]
    async fn only_publishes_handed_to_an_earlier_connection_are_sent_again_oldest_first() {
        let acks = Arc::new(PendingAcks::new(8));
        let _buffered = register(&acks, "demo.a", 30).await;
        let _first = register(&acks, "demo.a", 20).await;
        let _second = register(&acks, "demo.b", 10).await;
        let _current = register(&acks, "demo.c", 40).await;
        acks.mark_sent(20, 1);
        acks.mark_sent(10, 1);
        acks.mark_sent(40, 2);
        let resend: Vec<u64> = acks
            .take_for_resend(2)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(resend, vec![20, 10]);
        assert!(
            acks.take_for_resend(2).is_empty(),
            "now marked as on connection 2"
        );
        assert!(
            !acks.mark_unsent(20, 1),
            "it was sent again on connection 2"
        );
        assert!(acks.mark_unsent(20, 2));
        let next: Vec<u64> = acks
            .take_for_resend(3)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(next, vec![10, 40]);
    }

    #[tokio::test]
    async fn fail_all_ends_every_waiting_publish() {
        let acks = Arc::new(PendingAcks::new(8));
        let mut first = register(&acks, "demo.a", 1).await;
        let mut second = register(&acks, "demo.b", 2).await;
        acks.fail_all(|| PublishError::Connection(ConnectionError::Closed));
        assert!(matches!(
            first.outcome().await,
            Some(Err(PublishError::Connection(ConnectionError::Closed)))
        ));
        assert!(matches!(
            second.outcome().await,
            Some(Err(PublishError::Connection(ConnectionError::Closed)))
        ));
        assert_eq!(acks.len(), 0);
    }
}
