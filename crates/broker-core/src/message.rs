//! The broker's in-memory form of a published message.

use bytes::Bytes;
use cassini_protocol::{Headers, TopicName};

/// One published message, shared by every subscription it is delivered to: fan-out clones an
/// `Arc`, never the payload.
#[derive(Debug)]
pub struct PublishedMessage {
    /// The topic it was published to.
    pub topic: TopicName,
    /// Application headers.
    pub headers: Headers,
    /// The payload.
    pub payload: Bytes,
}

impl PublishedMessage {
    /// Bytes this message counts against a queue's byte bound.
    pub fn queued_size(&self) -> usize {
        self.payload.len() + self.topic.as_str().len()
    }
}
