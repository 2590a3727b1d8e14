//! Length-prefixed MessagePack framing.
//!
//! On the wire every frame is a 4-byte big-endian body length followed by the body: a
//! [`Frame`] encoded as rmp-serde encodes it (structs as arrays, enum variants by name; the
//! [`reference`](mod@reference) path). A struct may carry trailing fields this build does not
//! know (a newer peer's): they are skipped (see `lenient`), and fields added later are
//! `#[serde(default)]`, so an older peer's frame decodes too. The frames sent once per message are encoded and
//! decoded by hand ([`hot_frames`]), to the same bytes and the same values; a body in any
//! other form falls back to the reference path. The decoder reads
//! the length first and refuses any length above its maximum before it reserves or allocates
//! anything for the body, so a peer cannot make the broker allocate by *declaring* a large frame.
//!
//! The decoder works on any byte buffer the caller fills (sans-IO): feed it bytes as they arrive
//! and call [`FrameDecoder::decode`] until it returns `Ok(None)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::frame::{Delivery, Frame, Headers, Publish};
pub use crate::headers::{header_size, MAX_DECODED_HEADERS};
use hot_frames::HotFrame;

pub mod hot_frames;
mod lenient;
mod msgpack;
pub mod reference;
mod topic_memo;

pub use topic_memo::{TopicMemo, MAX_KEPT_TOPIC_BYTES};

/// Size of the length prefix in front of every frame body.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// No frame nests deeper than a few levels; refusing deeper input bounds the decoder's stack use.
const MAX_NESTING_DEPTH: usize = 16;

/// The default maximum frame body size: a 1 MiB payload plus room for topic and headers.
pub const DEFAULT_MAX_FRAME_BYTES: u32 = 1024 * 1024 + 64 * 1024;

/// A frame could not be decoded. Every variant is fatal for the stream it came from.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// The length prefix declared a body larger than the maximum.
    #[error("frame of {declared} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The length the peer declared.
        declared: u32,
        /// The maximum in force.
        max: u32,
    },
    /// A zero-length frame: there is no empty frame in the protocol.
    #[error("empty frame")]
    EmptyFrame,
    /// The body is not a valid MessagePack encoding of a frame.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The body decoded to a frame but bytes were left over.
    #[error("malformed frame: {0} trailing bytes after the frame")]
    TrailingBytes(usize),
    /// The input ended in the middle of a frame (only from [`decode_frame`] on a complete input).
    #[error("truncated frame: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the frame needs.
        needed: usize,
    },
}

/// A frame could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded frame is larger than the maximum frame size.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    FrameTooLarge {
        /// The encoded body size.
        size: usize,
        /// The maximum in force.
        max: u32,
    },
    /// rmp-serde refused the value (only possible for values serde cannot describe).
    #[error("cannot encode frame: {0}")]
    Serialize(String),
}

/// Incremental frame decoder with a maximum frame size.
#[derive(Debug, Clone, Copy)]
pub struct FrameDecoder {
    max_frame_bytes: u32,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_BYTES)
    }
}

impl FrameDecoder {
    /// A decoder that refuses frame bodies longer than `max_frame_bytes`.
    pub fn new(max_frame_bytes: u32) -> Self {
        Self { max_frame_bytes }
    }

    /// The maximum frame body size this decoder accepts.
    pub fn max_frame_bytes(&self) -> u32 {
        self.max_frame_bytes
    }

    /// Decodes one frame from the front of `buf`, consuming its bytes.
    ///
    /// Returns `Ok(None)` when `buf` does not yet hold a whole frame; in that case it reserves
    /// room for the rest of the frame (never more than the maximum). An error leaves the
    /// stream unusable: the caller must close it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, DecodeError> {
        self.decode_with(buf, &mut TopicMemo::default())
    }

    /// [`FrameDecoder::decode`], taking a `Publish`'s or a `Message`'s topic from `memo`: the
    /// same frames, without a check, allocation or copy of a topic the caller gave back last
    /// ([`TopicMemo`]).
    pub fn decode_with(
        &self,
        buf: &mut BytesMut,
        memo: &mut TopicMemo,
    ) -> Result<Option<Frame>, DecodeError> {
        let Some(body_len) = self.peek_body_len(buf)? else {
            return Ok(None);
        };
        let total = LENGTH_PREFIX_BYTES + body_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        // Decoded in place: the frame owns copies of what it keeps, so the body's bytes need
        // not be split off into a buffer of their own.
        let frame = decode_body_with(&buf[LENGTH_PREFIX_BYTES..total], memo);
        buf.advance(total);
        frame.map(Some)
    }

    /// [`FrameDecoder::decode`] for a publish stream: a `Publish` is written into `out` (see
    /// [`hot_frames::publish_into`]: its topic string kept or reused, and no move of the
    /// frame), any other frame is returned as it is. The same frames and errors as
    /// [`FrameDecoder::decode`].
    pub fn decode_publish_into(
        &self,
        buf: &mut BytesMut,
        out: &mut Publish,
    ) -> Result<Option<DecodedInto>, DecodeError> {
        self.decode_into(
            buf,
            out,
            hot_frames::publish_into,
            |frame, out| match frame {
                Frame::Publish(publish) => {
                    *out = publish;
                    None
                }
                other => Some(other),
            },
        )
    }

    /// [`FrameDecoder::decode_publish_into`] for a subscription stream: a `Message` is written
    /// into `out` ([`hot_frames::delivery_into`]).
    pub fn decode_delivery_into(
        &self,
        buf: &mut BytesMut,
        out: &mut Delivery,
    ) -> Result<Option<DecodedInto>, DecodeError> {
        self.decode_into(
            buf,
            out,
            hot_frames::delivery_into,
            |frame, out| match frame {
                Frame::Message(delivery) => {
                    *out = delivery;
                    None
                }
                other => Some(other),
            },
        )
    }

    /// One frame from the front of `buf`: written into `out` by `by_hand` when it can, else
    /// decoded the general way and stored in `out` by `store`, which hands back a frame of
    /// another type.
    fn decode_into<T>(
        &self,
        buf: &mut BytesMut,
        out: &mut T,
        by_hand: fn(&[u8], &mut T) -> Option<()>,
        store: fn(Frame, &mut T) -> Option<Frame>,
    ) -> Result<Option<DecodedInto>, DecodeError> {
        let Some(body_len) = self.peek_body_len(buf)? else {
            return Ok(None);
        };
        let total = LENGTH_PREFIX_BYTES + body_len;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let body = &buf[LENGTH_PREFIX_BYTES..total];
        let decoded = match by_hand(body, out) {
            Some(()) => Ok(DecodedInto::Written),
            None => decode_body(body).map(|frame| match store(frame, out) {
                None => DecodedInto::Written,
                Some(other) => DecodedInto::Other(other),
            }),
        };
        buf.advance(total);
        decoded.map(Some)
    }

    fn peek_body_len(&self, buf: &[u8]) -> Result<Option<usize>, DecodeError> {
        let Some(prefix) = buf.get(..LENGTH_PREFIX_BYTES) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
        if declared == 0 {
            return Err(DecodeError::EmptyFrame);
        }
        if declared > self.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                declared,
                max: self.max_frame_bytes,
            });
        }
        Ok(Some(declared as usize))
    }
}

/// What [`FrameDecoder::decode_publish_into`] or [`FrameDecoder::decode_delivery_into`]
/// decoded.
#[derive(Debug)]
pub enum DecodedInto {
    /// The frame the stream carries, written into the caller's value.
    Written,
    /// Another frame.
    Other(Frame),
}

/// Decodes exactly one frame from the front of a complete input, returning it and the number of
/// bytes it used. Unlike [`FrameDecoder::decode`] a short input is an error.
pub fn decode_frame(input: &[u8], max_frame_bytes: u32) -> Result<(Frame, usize), DecodeError> {
    let decoder = FrameDecoder::new(max_frame_bytes);
    let Some(body_len) = decoder.peek_body_len(input)? else {
        return Err(DecodeError::Truncated {
            needed: LENGTH_PREFIX_BYTES - input.len(),
        });
    };
    let total = LENGTH_PREFIX_BYTES + body_len;
    let Some(body) = input.get(LENGTH_PREFIX_BYTES..total) else {
        return Err(DecodeError::Truncated {
            needed: total - input.len(),
        });
    };
    Ok((decode_body(body)?, total))
}

fn decode_body(body: &[u8]) -> Result<Frame, DecodeError> {
    decode_body_with(body, &mut TopicMemo::default())
}

fn decode_body_with(body: &[u8], memo: &mut TopicMemo) -> Result<Frame, DecodeError> {
    if let Some(frame) = hot_frames::decode_with(body, memo) {
        return Ok(frame);
    }
    reference::decode_body(body)
}

/// Appends `frame`, length prefix included, to `buf`.
///
/// On error `buf` is left as it was.
pub fn encode_frame(
    frame: &Frame,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    let hot = match frame {
        Frame::Publish(publish) => HotFrame::Publish(PublishRef::from(publish)),
        Frame::Message(delivery) => HotFrame::Message(DeliveryRef::from(delivery)),
        Frame::Datagram(datagram) => {
            HotFrame::Datagram(datagram.subscription, DeliveryRef::from(&datagram.message))
        }
        Frame::PublishAck(ack) => HotFrame::PublishAck(*ack),
        Frame::Ack(ack) => HotFrame::Ack(ack),
        _ => return reference::encode_frame(frame, buf, max_frame_bytes),
    };
    encode_hot(hot, buf, max_frame_bytes)
}

/// A `Frame::Publish` by reference: a client encodes each publish once, straight from the
/// caller's topic and options, instead of copying them into an owned [`crate::Publish`] first.
/// Its encoding is identical to that of the owned `Publish`.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PublishRef<'a> {
    /// A topic name without wildcards.
    pub topic: &'a str,
    /// Application headers.
    pub headers: &'a Headers,
    /// The payload.
    pub payload: &'a Bytes,
    /// A publisher-chosen id.
    pub message_id: Option<u64>,
    /// Where replies go.
    pub reply_to: Option<&'a str>,
    /// Keep as the topic's retained value.
    pub retain: bool,
    /// Deliver only to this session.
    pub to_session: Option<crate::SessionId>,
    /// Ask for a `PublishAck`.
    pub ack: bool,
}

/// Appends a `Frame::Publish` built from borrowed parts to `buf`.
pub fn encode_publish(
    publish: &PublishRef<'_>,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    encode_hot(HotFrame::Publish(*publish), buf, max_frame_bytes)
}

impl<'a> From<&'a Publish> for PublishRef<'a> {
    fn from(publish: &'a Publish) -> Self {
        Self {
            topic: &publish.topic,
            headers: &publish.headers,
            payload: &publish.payload,
            message_id: publish.message_id,
            reply_to: publish.reply_to.as_deref(),
            retain: publish.retain,
            to_session: publish.to_session,
            ack: publish.ack,
        }
    }
}

/// A `Frame::Message` by reference: the broker encodes one delivery per subscriber from one
/// shared message, so it borrows instead of cloning the topic and headers. Its encoding is
/// identical to that of the owned [`crate::Delivery`].
#[derive(Debug, Clone, Copy, Serialize)]
pub struct DeliveryRef<'a> {
    /// Position in the subscription.
    pub sequence: u64,
    /// The concrete topic.
    pub topic: &'a str,
    /// Application headers.
    pub headers: &'a Headers,
    /// The payload.
    pub payload: &'a Bytes,
    /// The publisher's message id.
    pub message_id: Option<u64>,
    /// Where a reply goes.
    pub reply_to: Option<&'a str>,
    /// Whether this is a retained replay.
    pub retained: bool,
    /// Whether this delivery was sent before.
    pub redelivered: bool,
}

/// Appends a `Frame::Message` built from borrowed parts to `buf`.
pub fn encode_delivery(
    delivery: &DeliveryRef<'_>,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    encode_hot(HotFrame::Message(*delivery), buf, max_frame_bytes)
}

impl<'a> From<&'a Delivery> for DeliveryRef<'a> {
    fn from(delivery: &'a Delivery) -> Self {
        Self {
            sequence: delivery.sequence,
            topic: &delivery.topic,
            headers: &delivery.headers,
            payload: &delivery.payload,
            message_id: delivery.message_id,
            reply_to: delivery.reply_to.as_deref(),
            retained: delivery.retained,
            redelivered: delivery.redelivered,
        }
    }
}

/// Appends a `Frame::Datagram` for `subscription` built from borrowed parts to `buf`: the
/// content of one QUIC datagram. Its encoding is identical to that of the owned
/// [`crate::DatagramDelivery`].
pub fn encode_datagram(
    subscription: crate::SubscriptionId,
    delivery: &DeliveryRef<'_>,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    encode_hot(
        HotFrame::Datagram(subscription, *delivery),
        buf,
        max_frame_bytes,
    )
}

/// Appends a hot frame, length prefix included, sized before anything is written: a frame over
/// the limit leaves `buf` as it was, and the buffer grows at most once.
fn encode_hot(
    frame: HotFrame<'_>,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    let size = frame.body_size();
    let len = match u32::try_from(size) {
        Ok(len) if len <= max_frame_bytes => len,
        _ => {
            return Err(EncodeError::FrameTooLarge {
                size,
                max: max_frame_bytes,
            })
        }
    };
    buf.reserve(LENGTH_PREFIX_BYTES + size);
    let start = buf.len();
    buf.put_u32(len);
    frame.put_body(buf);
    debug_assert_eq!(buf.len() - start, LENGTH_PREFIX_BYTES + size, "{frame:?}");
    Ok(())
}

#[cfg(test)]
mod tests;
