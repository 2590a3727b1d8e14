//! A message delivered to a subscription.

use bytes::Bytes;
use cassini_protocol::{Delivery, Headers};

/// One message delivered to a [`crate::Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The concrete topic it was published to (a filter with wildcards matches many).
    topic: String,
    /// The publisher's headers, in order.
    headers: Headers,
    /// The publisher's payload, untouched.
    payload: Bytes,
    /// Position in the subscription: starts at 1, grows by one per message the subscription
    /// accepted, so a gap means the broker dropped messages.
    sequence: u64,
}

impl Message {
    /// The concrete topic the message was published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The publisher's headers, in order; keys may repeat.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// The value of the first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The payload.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The message's position in its subscription, starting at 1. Consecutive messages differ by
    /// one unless the broker dropped messages in between (see [`crate::Subscription::dropped`]).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Takes the payload out of the message without copying it.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }
}

impl From<Delivery> for Message {
    fn from(delivery: Delivery) -> Self {
        Self {
            topic: delivery.topic,
            headers: delivery.headers,
            payload: delivery.payload,
            sequence: delivery.sequence,
        }
    }
}
