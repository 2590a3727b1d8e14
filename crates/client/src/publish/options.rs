//! [`PublishOptions`]: what a publish carries besides its topic and payload.

use cassini_protocol::Headers;

/// Options for [`crate::Client::publish_with`]. `PublishOptions::default()` publishes a plain
/// message, the same as [`crate::Client::publish`]; the setters chain:
///
/// ```
/// use cassini_client::PublishOptions;
///
/// let options = PublishOptions::new()
///     .header("trace", "abc")
///     .message_id(7)
///     .retain(true);
/// assert_eq!(options.headers, vec![("trace".to_owned(), "abc".to_owned())]);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Application headers, in order; keys may repeat. They count towards the broker's maximum
    /// frame size, not its maximum payload size, and are bounded by the broker's `max_headers`
    /// and `max_header_bytes` (announced in `Welcome`; the client refuses a publish over them
    /// with [`crate::PublishError::TooManyHeaders`] / [`crate::PublishError::HeadersTooLarge`]).
    pub headers: Headers,
    /// An id of the publisher's choosing, passed through to subscribers
    /// ([`crate::Message::message_id`]). Without [`PublishOptions::ack`] the broker neither
    /// checks nor deduplicates it; with it, the broker deduplicates on (certificate identity,
    /// id) for its dedupe window, so an id must not be reused for a different message. With
    /// `ack` and no id the client assigns one.
    pub message_id: Option<u64>,
    /// Keep this message as the topic's retained value: the broker replays it (marked
    /// [`crate::Message::is_retained`]) to every new subscription whose filter matches the
    /// topic, queue-group members excepted. A retained message with an empty payload clears the
    /// topic's retained value. Costs broker memory for as long as the value is kept.
    pub retain: bool,
    /// Where replies go, which makes the message a request. It must be a valid topic name. If
    /// the message reaches no subscription the broker answers `NoResponders`;
    /// [`crate::Client::request`] sets this itself and turns that answer into
    /// [`crate::RequestError::NoResponders`], while for a publish made with this option the answer
    /// is only logged.
    pub reply_to: Option<String>,
    /// Ask the broker to acknowledge the message once it was routed, and deliver it at least
    /// once across reconnects: [`crate::Client::publish_with`] then waits for the
    /// acknowledgement (see [`crate::Client::publish_acked`] for the details and the receipt).
    pub ack: bool,
}

impl PublishOptions {
    /// Options for a plain message: no headers, no id, not retained, no reply topic, no
    /// acknowledgement.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the header `name: value`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Replaces every header with `headers`.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Sets [`PublishOptions::message_id`].
    pub fn message_id(mut self, id: u64) -> Self {
        self.message_id = Some(id);
        self
    }

    /// Sets [`PublishOptions::retain`].
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Sets [`PublishOptions::ack`].
    pub fn ack(mut self, ack: bool) -> Self {
        self.ack = ack;
        self
    }

    /// Sets [`PublishOptions::reply_to`].
    pub fn reply_to(mut self, topic: impl Into<String>) -> Self {
        self.reply_to = Some(topic.into());
        self
    }
}
