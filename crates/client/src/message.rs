//! A message delivered to a subscription, and decoding its payload into a type.

use std::sync::Arc;

use bytes::Bytes;
use cassini_protocol::{Delivery, Headers};
use serde::de::DeserializeOwned;

use crate::payload::{self, PayloadError};

/// One message delivered to a [`crate::Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The concrete topic it was published to (a filter with wildcards matches many); shared
    /// by the messages a subscription stream delivers in a row to one topic.
    topic: Arc<str>,
    /// The publisher's payload, untouched.
    payload: Bytes,
    /// Position in the subscription: starts at 1, grows by one per message the subscription
    /// accepted, so a gap means the broker dropped messages.
    sequence: u64,
    /// What most messages do not carry, boxed only when one does: a message moves from the
    /// stream reader through the subscription's channel to the application, and a small one
    /// moves as a few register copies instead of a call to `memcpy` at each step.
    extras: Option<Box<Extras>>,
    /// Set when the broker replayed the topic's retained value to a new subscription.
    retained: bool,
    /// Set when the broker sent this message before (at-least-once subscriptions).
    redelivered: bool,
}

/// A message's rarer fields; never all empty (then [`Message::extras`] is `None`).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Extras {
    /// The publisher's headers, in order.
    headers: Headers,
    /// The id the publisher gave the message, passed through by the broker.
    message_id: Option<u64>,
    /// Where a reply goes: set when the message is a request.
    reply_to: Option<String>,
}

/// The headers of a message that has none.
static NO_HEADERS: Headers = Vec::new();

impl Message {
    /// The concrete topic the message was published to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The publisher's headers, in order; keys may repeat.
    pub fn headers(&self) -> &Headers {
        self.extras
            .as_ref()
            .map_or(&NO_HEADERS, |extras| &extras.headers)
    }

    /// The value of the first header named `name`, if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers()
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

    /// The id the publisher gave the message ([`crate::PublishOptions::message_id`]), if any.
    /// The broker passes it through unchecked: it is not unique unless the publisher made it so.
    pub fn message_id(&self) -> Option<u64> {
        self.extras.as_ref().and_then(|extras| extras.message_id)
    }

    /// Where a reply to this message goes, if the message is a request (sent with
    /// [`crate::Client::request`] or [`crate::PublishOptions::reply_to`]). Answer it with
    /// `client.publish(reply_to, ..)`, or use [`crate::Client::serve`].
    pub fn reply_to(&self) -> Option<&str> {
        self.extras
            .as_ref()
            .and_then(|extras| extras.reply_to.as_deref())
    }

    /// Whether this is the topic's retained value, replayed by the broker because this
    /// subscription is new, rather than a message published while it was live.
    pub fn is_retained(&self) -> bool {
        self.retained
    }

    /// Whether the broker sent this message before and is sending it again because it was not
    /// acknowledged (only on at-least-once subscriptions, after a lost connection or the ack
    /// timeout). The subscription yields a redelivery only if it did not yield the message
    /// before, so a redelivered message may still be new to the application; it is marked
    /// because the application may have seen it in an earlier life of the client.
    pub fn is_redelivered(&self) -> bool {
        self.redelivered
    }

    /// Takes the payload out of the message without copying it.
    pub fn into_payload(self) -> Bytes {
        self.payload
    }

    /// Decodes the payload as JSON (as [`crate::Client::publish_json`] sends it). The
    /// `content-type` header is not checked.
    pub fn decode_json<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        payload::decode_json(&self.payload)
    }

    /// Decodes the payload as MessagePack (as [`crate::Client::publish_msgpack`] sends it; maps
    /// and arrays are both accepted for structs). The `content-type` header is not checked.
    pub fn decode_msgpack<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        payload::decode_msgpack(&self.payload)
    }
}

impl From<Delivery> for Message {
    fn from(mut delivery: Delivery) -> Self {
        let topic = Arc::from(delivery.topic.as_str());
        Message::take_from(&mut delivery, topic)
    }
}

impl Message {
    /// The message `delivery` carries, its topic given as `topic`: takes the payload, headers
    /// and reply topic out of `delivery` and leaves its topic string, which a subscription
    /// stream's reader keeps for the next frame.
    pub(crate) fn take_from(delivery: &mut Delivery, topic: Arc<str>) -> Self {
        let plain = delivery.headers.is_empty()
            && delivery.message_id.is_none()
            && delivery.reply_to.is_none();
        Self {
            topic,
            payload: std::mem::take(&mut delivery.payload),
            sequence: delivery.sequence,
            extras: (!plain).then(|| {
                Box::new(Extras {
                    headers: std::mem::take(&mut delivery.headers),
                    message_id: delivery.message_id,
                    reply_to: delivery.reply_to.take(),
                })
            }),
            retained: delivery.retained,
            redelivered: delivery.redelivered,
        }
    }
}

#[cfg(test)]
impl Message {
    /// A plain message as a subscription delivers it: no headers, no message id, no reply
    /// topic, neither retained nor redelivered.
    pub(crate) fn plain(sequence: u64, topic: &str, payload: impl Into<Bytes>) -> Self {
        Message::from(Delivery {
            sequence,
            topic: topic.into(),
            headers: vec![],
            payload: payload.into(),
            message_id: None,
            reply_to: None,
            retained: false,
            redelivered: false,
        })
    }
}

#[cfg(test)]
mod tests {
    //! What a delivery carries reaches the application's message.

    use bytes::Bytes;
    use cassini_protocol::Delivery;

    use super::*;

    #[test]
    fn a_delivery_keeps_its_id_reply_topic_and_retained_flag() {
        let message = Message::from(Delivery {
            sequence: 4,
            topic: "svc.time".into(),
            headers: vec![("k".into(), "v".into())],
            payload: Bytes::from_static(b"now?"),
            message_id: Some(99),
            reply_to: Some("_INBOX.0123456789abcdef.1".into()),
            retained: true,
            redelivered: false,
        });
        assert_eq!(message.topic(), "svc.time");
        assert_eq!(message.sequence(), 4);
        assert_eq!(message.message_id(), Some(99));
        assert_eq!(message.reply_to(), Some("_INBOX.0123456789abcdef.1"));
        assert!(message.is_retained());
        assert_eq!(message.header("k"), Some("v"));
    }

    #[test]
    fn each_rare_field_is_kept_on_its_own() {
        let delivery = |headers: Headers, message_id, reply_to: Option<&str>| {
            Message::from(Delivery {
                sequence: 1,
                topic: "a".into(),
                headers,
                payload: Bytes::new(),
                message_id,
                reply_to: reply_to.map(str::to_owned),
                retained: false,
                redelivered: true,
            })
        };
        let with_header = delivery(vec![("k".into(), "v".into())], None, None);
        assert_eq!(with_header.header("k"), Some("v"));
        assert_eq!(with_header.message_id(), None);
        let with_id = delivery(vec![], Some(0), None);
        assert_eq!(with_id.message_id(), Some(0));
        assert!(with_id.headers().is_empty());
        let with_reply_to = delivery(vec![], None, Some("_INBOX.x.1"));
        assert_eq!(with_reply_to.reply_to(), Some("_INBOX.x.1"));
        assert!(with_reply_to.is_redelivered());
        assert!(
            delivery(vec![], None, None).extras.is_none(),
            "nothing boxed for a plain one"
        );
    }

    #[test]
    fn a_message_is_small_enough_to_move_without_memcpy() {
        assert!(
            std::mem::size_of::<Message>() <= 80,
            "{}",
            std::mem::size_of::<Message>()
        );
    }

    #[test]
    fn a_plain_delivery_is_neither_a_request_nor_retained() {
        let message = Message::plain(1, "a", Bytes::new());
        assert_eq!(message.message_id(), None);
        assert_eq!(message.reply_to(), None);
        assert!(!message.is_retained());
    }
}
