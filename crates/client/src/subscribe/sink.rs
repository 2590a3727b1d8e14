//! What a subscription's handle shares with the tasks reading its streams and datagrams: the
//! [`SubscriptionState`], and the [`SubscriptionSink`] that holds the sending end of the
//! subscription's channel across connections.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use cassini_protocol::{DeliveryClass, Gap as GapFrame, SubscribeOptions, SubscriptionId};
use tokio::sync::{mpsc, Mutex};

use crate::message::Message;
use crate::subscribe::end::SubscriptionEnd;

/// What the application's handle, the stream-reading tasks and the session share.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionState {
    /// The broker's id for the subscription; a new one when it was made again in a new session.
    id: AtomicU64,
    /// Grows by one each time the subscription is made again in a new session, whose sequence
    /// numbers start again at 1.
    epoch: AtomicU64,
    /// Sum of the broker's overflow gaps.
    dropped: AtomicU64,
    /// The highest sequence read from the subscription's streams, and the epoch it was read in:
    /// where the client stands when it resumes the session. One lock for both, so a reader of
    /// a lost session cannot put its position back after the epoch moved on.
    last_received: std::sync::Mutex<(u64, u64)>,
    /// Set once, before the channel is closed.
    end: OnceLock<SubscriptionEnd>,
    /// Set when this client asked the broker to end the subscription, or dropped it.
    unsubscribing: AtomicBool,
}

impl SubscriptionState {
    pub(crate) fn id(&self) -> SubscriptionId {
        self.id.load(Ordering::Acquire)
    }

    pub(crate) fn set_id(&self, id: SubscriptionId) {
        self.id.store(id, Ordering::Release);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts a new epoch: the subscription is being made again in a new session.
    pub(crate) fn next_epoch(&self) {
        let mut position = crate::sync::lock(&self.last_received);
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        *position = (epoch, 0);
    }

    /// Records that sequences up to `sequence` of `epoch` were read from the stream; a reader
    /// of an earlier epoch (a lost session's) changes nothing.
    pub(crate) fn note_received(&self, epoch: u64, sequence: u64) {
        let mut position = crate::sync::lock(&self.last_received);
        if epoch == self.epoch() && position.0 == epoch {
            position.1 = position.1.max(sequence);
        }
    }

    /// The highest sequence read from the subscription's streams in this epoch.
    pub(crate) fn last_received(&self) -> u64 {
        let position = crate::sync::lock(&self.last_received);
        if position.0 == self.epoch() {
            position.1
        } else {
            0
        }
    }

    /// Sum of the broker's overflow gaps.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn add_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn is_unsubscribing(&self) -> bool {
        self.unsubscribing.load(Ordering::Acquire)
    }

    /// Marks the subscription as being unsubscribed; returns whether it already was.
    pub(crate) fn start_unsubscribing(&self) -> bool {
        self.unsubscribing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.end.get().is_some()
    }

    /// Why the subscription ended, once it has.
    pub(crate) fn end(&self) -> Option<SubscriptionEnd> {
        self.end.get().cloned()
    }
}

/// One message or announced gap on its way to the application, with the epoch it was read in.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// The subscription's epoch when the stream carrying the message was claimed.
    pub(crate) epoch: u64,
    /// The message or gap.
    pub(crate) item: StreamItem,
}

/// What a subscription stream carries to the application.
#[derive(Debug)]
pub(crate) enum StreamItem {
    /// A delivery.
    Message(Message),
    /// The broker's announcement that a range of sequences will never come.
    Gap(GapFrame),
    /// The session was lost: the subscription is being made again in this item's epoch, whose
    /// sequences start again at 1. The handle reports `Gap::SessionLost` at once, so a quiet
    /// topic hears of the loss too.
    NewEpoch,
    /// A datagram subscription's broker has sent every sequence through this one: one not
    /// received by now counts as lost (until it arrives late).
    SentThrough(u64),
}

/// The slot holding a subscription's sender: `None` once the subscription has ended. The task
/// reading the subscription's stream keeps it locked while it reads.
pub(crate) type SenderSlot = Arc<Mutex<Option<mpsc::Sender<Delivered>>>>;

/// The session's side of one subscription: what it was made with, so it can be made again, and
/// the sending end of its channel. It outlives connections.
#[derive(Debug)]
pub(crate) struct SubscriptionSink {
    /// The filter as subscribed.
    pub(crate) filter: String,
    /// The options as subscribed.
    pub(crate) options: SubscribeOptions,
    /// Shared with the handle.
    pub(crate) state: Arc<SubscriptionState>,
    /// The channel's sender. Bounded: a full channel stops the stream reader, and flow control
    /// stops the broker.
    sender: SenderSlot,
    /// For a datagram subscription, the sender the connection's datagram reader uses: it never
    /// waits (a datagram that finds the channel full is dropped and shows as lost). Cleared
    /// when the subscription ends, so the channel closes.
    datagram_sender: std::sync::Mutex<Option<mpsc::Sender<Delivered>>>,
}

impl SubscriptionSink {
    pub(crate) fn new(
        filter: String,
        options: SubscribeOptions,
        sender: mpsc::Sender<Delivered>,
        state: Arc<SubscriptionState>,
    ) -> Arc<Self> {
        let datagram_sender =
            matches!(options.delivery, DeliveryClass::Datagram { .. }).then(|| sender.clone());
        Arc::new(Self {
            filter,
            options,
            state,
            sender: Arc::new(Mutex::new(Some(sender))),
            datagram_sender: std::sync::Mutex::new(datagram_sender),
        })
    }

    /// The sender's slot, for a stream reader to lock.
    pub(crate) fn slot(&self) -> SenderSlot {
        Arc::clone(&self.sender)
    }

    /// Ends the subscription with `end`: records the reason at once, and closes the channel at
    /// once unless a stream reader holds it, which then closes it when it lets go. A
    /// subscription that had ended keeps its first reason.
    pub(crate) fn try_finish(&self, end: SubscriptionEnd) {
        let _ = self.state.end.set(end);
        self.close_datagrams();
        if let Ok(mut slot) = self.sender.try_lock() {
            *slot = None;
        }
    }

    /// Hands a delivery that arrived in a datagram to the application, if there is room now;
    /// returns whether it was taken.
    pub(crate) fn offer_datagram(&self, message: Message) -> bool {
        let sender = crate::sync::lock(&self.datagram_sender);
        let Some(sender) = sender.as_ref() else {
            return false;
        };
        sender
            .try_send(Delivered {
                epoch: self.state.epoch(),
                item: StreamItem::Message(message),
            })
            .is_ok()
    }

    /// Puts [`StreamItem::NewEpoch`] for `epoch` behind what the channel holds. If a reader of
    /// the lost session still holds the channel (waiting for room, with what it read), or the
    /// channel is full, a task of its own waits for its turn: it ends when the application
    /// reads or drops the subscription. If the channel is ended, nothing is sent.
    pub(crate) fn announce_new_epoch(&self, epoch: u64) {
        let marker = Delivered {
            epoch,
            item: StreamItem::NewEpoch,
        };
        if let Ok(slot) = self.sender.try_lock() {
            let Some(sender) = slot.as_ref() else {
                return;
            };
            if let Err(mpsc::error::TrySendError::Full(marker)) = sender.try_send(marker) {
                let sender = sender.clone();
                tokio::spawn(async move {
                    let _ = sender.send(marker).await;
                });
            }
            return;
        }
        // Behind what the lost session's reader still hands over: it lets go of the channel
        // when its connection's end reaches it. Items of the new epoch may come first; the
        // handle then knows of the new epoch already, and the marker changes nothing.
        let slot = Arc::clone(&self.sender);
        tokio::spawn(async move {
            let sender = slot.lock().await.clone();
            if let Some(sender) = sender {
                let _ = sender.send(marker).await;
            }
        });
    }

    /// Drops the datagram reader's sender (the subscription ended).
    pub(crate) fn close_datagrams(&self) {
        *crate::sync::lock(&self.datagram_sender) = None;
    }
}

/// Records why the subscription ended (unless it had ended already), then closes its channel:
/// the handle yields what is buffered, then `None`.
pub(crate) fn finish_slot(
    slot: &mut Option<mpsc::Sender<Delivered>>,
    state: &SubscriptionState,
    end: SubscriptionEnd,
) {
    let _ = state.end.set(end);
    *slot = None;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_of_a_lost_session_cannot_put_its_position_back() {
        let state = SubscriptionState::default();
        state.note_received(0, 40);
        assert_eq!(state.last_received(), 40);
        state.next_epoch();
        assert_eq!(state.last_received(), 0, "a new session starts at 0");
        state.note_received(0, 45);
        assert_eq!(
            state.last_received(),
            0,
            "what the lost session's reader read last does not count"
        );
        state.note_received(1, 3);
        assert_eq!(state.last_received(), 3);
    }

    #[tokio::test]
    async fn a_lost_session_is_announced_behind_a_reader_that_still_holds_the_channel() {
        let (sender, mut receiver) = mpsc::channel(4);
        let sink = SubscriptionSink {
            filter: "t".into(),
            options: SubscribeOptions::default(),
            state: Arc::new(SubscriptionState::default()),
            sender: Arc::new(Mutex::new(Some(sender))),
            datagram_sender: std::sync::Mutex::new(None),
        };
        let slot = sink.slot();
        let held = slot.lock().await;
        sink.announce_new_epoch(1);
        // The lost session's reader hands over what it read, then lets go.
        if let Some(sender) = held.as_ref() {
            sender
                .send(Delivered {
                    epoch: 0,
                    item: StreamItem::SentThrough(7),
                })
                .await
                .expect("room");
        }
        drop(held);
        let first = receiver.recv().await.expect("the reader's item");
        assert_eq!(first.epoch, 0);
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), receiver.recv())
            .await
            .expect("the marker comes once the reader lets go")
            .expect("open");
        assert!(matches!(second.item, StreamItem::NewEpoch) && second.epoch == 1);
    }
}
