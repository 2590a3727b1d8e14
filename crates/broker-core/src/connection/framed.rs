//! Whole frames over the transport's byte streams.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use cassini_protocol::codec::{DecodedInto, TopicMemo};
use cassini_protocol::{encode_frame, DecodeError, ErrorCode, Frame, FrameDecoder, Publish};

use crate::error::BrokerError;
use crate::memory::FrameBufferCharge;
use crate::transport::{RecvStream, SendStream};

/// A buffer that grew larger than this is given back once it holds nothing: a stream of small
/// frames keeps its buffer between them.
const KEPT_BUFFER_BYTES: usize = 64 * 1024;

/// Reads frames from one stream, buffering at most one frame. What its buffer holds is charged
/// to the connection's identity and the memory budget ([`FrameBufferCharge`]): growth past
/// either fails the read with `PARTIAL_FRAMES_LIMIT`. A buffer grown for a large frame is given
/// back once the frame is decoded and nothing follows it.
pub(crate) struct FrameReader {
    stream: Box<dyn RecvStream>,
    buf: BytesMut,
    decoder: FrameDecoder,
    charge: FrameBufferCharge,
    /// The topic of the frame read last, when its user gave it back ([`FrameReader::give_back`]).
    topics: TopicMemo,
}

impl FrameReader {
    pub(crate) fn new(
        stream: Box<dyn RecvStream>,
        max_frame_bytes: u32,
        charge: FrameBufferCharge,
    ) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame_bytes),
            charge,
            topics: TopicMemo::default(),
        }
    }

    /// Tells the peer to stop sending on this stream, with `code`; what QUIC holds unread of it
    /// is dropped.
    pub(crate) fn stop(&mut self, code: ErrorCode) {
        self.stream.stop(code);
    }

    /// Hands back the topic of a frame this reader returned, once its user is done with it: the
    /// next frame naming the same topic reuses it ([`TopicMemo`]).
    pub(crate) fn give_back(&mut self, topic: String) {
        self.topics.give_back(topic);
    }

    /// The next frame of a publish stream, written into `publish` (its topic string kept or
    /// reused, and the frame never moved: see [`FrameDecoder::decode_publish_into`]); `false`
    /// at a clean end of stream. Any other frame is a protocol violation.
    pub(crate) async fn next_publish(
        &mut self,
        publish: &mut Publish,
    ) -> Result<bool, BrokerError> {
        loop {
            if let Some(decoded) = self.decoder.decode_publish_into(&mut self.buf, publish)? {
                self.after_frame()?;
                return match decoded {
                    DecodedInto::Written => Ok(true),
                    DecodedInto::Other(frame) => Err(not_a_publish(&frame)),
                };
            }
            if !self.read_more().await? {
                return Ok(false);
            }
        }
    }

    /// The next frame, or `None` at a clean end of stream.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, BrokerError> {
        loop {
            if let Some(frame) = self.decoder.decode_with(&mut self.buf, &mut self.topics)? {
                self.after_frame()?;
                return Ok(Some(frame));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// Gives back a buffer grown for a large frame once nothing follows the frame.
    fn after_frame(&mut self) -> Result<(), BrokerError> {
        if self.buf.is_empty() && self.charge.bytes() > KEPT_BUFFER_BYTES {
            self.buf = BytesMut::new();
            self.charge.resize(0)?;
        }
        Ok(())
    }

    /// Reads more of the stream into the buffer; `false` at a clean end (nothing left over).
    async fn read_more(&mut self) -> Result<bool, BrokerError> {
        // The decoder reserved room for the whole frame once its length was known.
        self.charge.grow_to(self.buf.capacity())?;
        let more = self.stream.read_into(&mut self.buf).await?;
        self.charge.grow_to(self.buf.capacity())?;
        if more {
            return Ok(true);
        }
        if self.buf.is_empty() {
            return Ok(false);
        }
        Err(DecodeError::Truncated {
            needed: missing_bytes(&self.buf),
        }
        .into())
    }
}

/// The error for a frame other than `Publish` on a publish stream.
pub(crate) fn not_a_publish(frame: &Frame) -> BrokerError {
    BrokerError::ProtocolViolation(format!("{} frame on a publish stream", frame.kind()))
}

/// How many bytes the partial frame at the front of `buf` still lacks (for error reports).
fn missing_bytes(buf: &[u8]) -> usize {
    match buf.get(..4) {
        Some(prefix) => {
            let declared =
                u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            declared.saturating_add(4).saturating_sub(buf.len())
        }
        None => 4 - buf.len(),
    }
}

/// The longest an answer may wait for the client to make room for it (by reading what the
/// broker wrote before it on the same stream) before the broker gives up on the stream.
pub(crate) const ANSWER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes one answer; `Ok(false)` if the client made no room for it within
/// [`ANSWER_WRITE_TIMEOUT`]. An answer written at once, as almost every one is, reads no clock.
pub(crate) async fn write_answer(
    stream: &mut dyn SendStream,
    frame: &Frame,
    max_frame_bytes: u32,
) -> Result<bool, BrokerError> {
    let mut write = pin!(write_frame(stream, frame, max_frame_bytes));
    // One poll first: the write that needs no wait finishes here, and the one that does is
    // polled again below with the task's waker.
    if let Poll::Ready(written) = write.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        return written.map(|()| true);
    }
    match tokio::time::timeout(ANSWER_WRITE_TIMEOUT, write).await {
        Ok(written) => written.map(|()| true),
        Err(_) => Ok(false),
    }
}

/// Encodes and writes one frame.
pub(crate) async fn write_frame(
    stream: &mut dyn SendStream,
    frame: &Frame,
    max_frame_bytes: u32,
) -> Result<(), BrokerError> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf, max_frame_bytes)
        .map_err(|err| BrokerError::Internal(format!("encoding {}: {err}", frame.kind())))?;
    stream.write_all(&buf).await?;
    Ok(())
}
