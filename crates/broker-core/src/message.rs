//! The broker's in-memory form of a published message.

use std::mem::size_of;

use bytes::Bytes;
use cassini_protocol::codec::DeliveryRef;
use cassini_protocol::{Headers, TopicName};

use crate::memory::MemoryCharge;

/// What one header costs beyond the bytes of its key and value: its `(String, String)` slot in
/// the list (two pointers, two lengths, two capacities).
pub const HEADER_OVERHEAD_BYTES: usize = size_of::<(String, String)>();

/// What a shared message costs beyond its fields' heap bytes: the struct inside its `Arc`
/// (with the two reference counts) and the topic's `Arc<str>` counts.
const MESSAGE_OVERHEAD_BYTES: usize = size_of::<PublishedMessage>() + 4 * size_of::<usize>();

/// One published message, shared by every subscription it is delivered to: fan-out clones an
/// `Arc`, never the payload.
#[derive(Debug, Clone)]
pub struct PublishedMessage {
    /// The topic it was published to.
    pub topic: TopicName,
    /// Application headers.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
    /// The publisher's message id.
    pub message_id: Option<u64>,
    /// Where a reply goes, for requests.
    pub reply_to: Option<String>,
    /// Whether this copy is a retained value replayed to a new subscription.
    pub retained: bool,
    /// This message's share of the broker's memory budget, released when it is dropped
    /// ([`MemoryCharge::none`] for a message the broker did not accept itself).
    pub charge: MemoryCharge,
}

impl PublishedMessage {
    /// The bytes this message really holds in memory: payload, topic, every header key and
    /// value with its slot in the list (the list's spare capacity included), `reply_to`, and
    /// the shared struct itself. The one measure of a message everywhere a bound is checked or
    /// reported: queue and in-flight byte bounds, the session pending-bytes budget, the
    /// retained store, the disk store's pending bytes, the broker's memory budget, `/subz`.
    pub fn memory_size(&self) -> usize {
        let headers = self
            .headers
            .iter()
            .fold(0usize, |sum, (key, value)| {
                sum.saturating_add(key.capacity())
                    .saturating_add(value.capacity())
            })
            .saturating_add(
                self.headers
                    .capacity()
                    .saturating_mul(HEADER_OVERHEAD_BYTES),
            );
        MESSAGE_OVERHEAD_BYTES
            .saturating_add(self.payload.len())
            .saturating_add(self.topic.as_str().len())
            .saturating_add(headers)
            .saturating_add(self.reply_to.as_ref().map_or(0, String::capacity))
    }

    /// The message as a delivery with the given sequence number, ready to encode.
    pub fn as_delivery(&self, sequence: u64, redelivered: bool) -> DeliveryRef<'_> {
        DeliveryRef {
            sequence,
            topic: self.topic.as_str(),
            headers: &self.headers,
            payload: &self.payload,
            message_id: self.message_id,
            reply_to: self.reply_to.as_deref(),
            retained: self.retained,
            redelivered,
        }
    }
}
