//! A publish checked against the broker's limits and encoded: [`prepare`] makes an [`Outgoing`].

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{encode_publish, header_size, PublishRef};
use cassini_protocol::{Headers, Limits, SessionId, TopicName};

use crate::connect::link::Link;
use crate::error::PublishError;
use crate::publish::options::PublishOptions;

/// A validated, encoded publish, ready for its topic's lane.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The topic, which picks the lane.
    pub(crate) topic: TopicName,
    /// The encoded `Publish` frame.
    pub(crate) frame: BytesMut,
    /// The message id, when the publish waits for an acknowledgement (see
    /// [`crate::publish::receipt`]).
    pub(crate) ack: Option<u64>,
}

/// Bytes a publish frame takes beyond its topic, payload, reply subject and headers, rounded
/// up: the length prefix, the variant and field markers, the integers and the session id.
const FRAME_OVERHEAD_BYTES: usize = 96;

/// Checks one message to `topic` (validated already, see
/// [`crate::publish::publisher::Publisher::topic_name`]) against the broker's limits as `link`
/// announced them, and encodes it; `to_session` makes it a direct message.
pub(crate) fn prepare(
    link: &Link,
    topic: TopicName,
    payload: Bytes,
    options: PublishOptions,
    to_session: Option<SessionId>,
) -> Result<Outgoing, PublishError> {
    let limits = link.topic_limits();
    if let Some(reply_to) = &options.reply_to {
        TopicName::parse(reply_to, &limits).map_err(PublishError::InvalidReplyTo)?;
    }
    let max = link.limits().max_payload_bytes;
    if payload.len() > max as usize {
        return Err(PublishError::PayloadTooLarge {
            size: payload.len(),
            max,
        });
    }
    check_headers(&options.headers, link.limits())?;
    let PublishOptions {
        headers,
        message_id,
        retain,
        reply_to,
        ack,
    } = options;
    let ack = message_id.filter(|_| ack);
    let publish = PublishRef {
        topic: topic.as_str(),
        headers: &headers,
        payload: &payload,
        message_id,
        reply_to: reply_to.as_deref(),
        retain,
        to_session,
        ack: ack.is_some(),
    };
    // Room for the whole frame up front, so encoding never grows the buffer: the fields'
    // bytes plus a generous allowance for MessagePack's markers and the length prefix.
    let capacity = FRAME_OVERHEAD_BYTES
        + topic.as_str().len()
        + payload.len()
        + reply_to.as_ref().map_or(0, String::len)
        + headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 10)
            .sum::<usize>();
    let mut frame = BytesMut::with_capacity(capacity);
    encode_publish(&publish, &mut frame, link.max_frame_bytes())?;
    Ok(Outgoing { topic, frame, ack })
}

/// Refuses headers beyond the broker's announced `max_headers` and `max_header_bytes` (a limit
/// of 0 was not announced: an older broker, which checks nothing either).
fn check_headers(headers: &Headers, limits: Limits) -> Result<(), PublishError> {
    let (count, size) = header_size(headers);
    let max = limits.max_headers;
    if max > 0 && count > max as usize {
        return Err(PublishError::TooManyHeaders { count, max });
    }
    let max = limits.max_header_bytes;
    if max > 0 && size > max as usize {
        return Err(PublishError::HeadersTooLarge { size, max });
    }
    Ok(())
}
