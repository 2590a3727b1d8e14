//! The broker's in-memory form of a published message.

use bytes::Bytes;
use cassini_protocol::codec::DeliveryRef;
use cassini_protocol::{Headers, TopicName};

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
}

impl PublishedMessage {
    /// Bytes this message counts against a queue's byte bound.
    pub fn queued_size(&self) -> usize {
        self.payload.len() + self.topic.as_str().len()
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
