//! Whole frames over quinn streams.
//!
//! [`FrameReader`] turns a quinn receive stream into frames, buffering at most one frame plus one
//! read chunk, so a reader that stops calling [`FrameReader::next`] stops reading the stream and
//! QUIC flow control pushes back on the broker. [`encode`] encodes one frame for a stream or a
//! datagram.

use bytes::BytesMut;
use cassini_protocol::codec::{DecodedInto, LENGTH_PREFIX_BYTES};
use cassini_protocol::{
    encode_frame, DecodeError, Delivery, EncodeError, ErrorCode, Frame, FrameDecoder,
};
use quinn::VarInt;

/// Most bytes taken from quinn in one read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why no frame could be read.
#[derive(Debug)]
pub(crate) enum ReadFrameError {
    /// The stream failed: reset by the broker, or the connection is gone.
    Stream(quinn::ReadError),
    /// The bytes are not a valid frame (or the stream ended mid-frame).
    Decode(DecodeError),
}

/// The code this client closes the connection with when the broker sent undecodable bytes.
pub(crate) fn decode_close_code(error: &DecodeError) -> ErrorCode {
    match error {
        DecodeError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        _ => ErrorCode::MALFORMED_FRAME,
    }
}

/// Reads frames from one receive stream.
pub(crate) struct FrameReader {
    /// The stream, read only when the buffer holds no whole frame.
    stream: quinn::RecvStream,
    /// Bytes read but not yet decoded: at most one frame plus one chunk.
    buf: BytesMut,
    /// Knows the maximum frame size and refuses larger frames before buffering them.
    decoder: FrameDecoder,
}

impl FrameReader {
    /// A reader refusing frames larger than `max_frame_bytes`.
    pub(crate) fn new(stream: quinn::RecvStream, max_frame_bytes: u32) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(max_frame_bytes),
        }
    }

    /// The next frame, or `None` when the broker finished the stream cleanly.
    ///
    /// Cancel-safe: dropping the future loses no bytes.
    pub(crate) async fn next(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            if let Some(frame) = self.next_buffered()? {
                return Ok(Some(frame));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// The next frame if the buffer already holds a whole one; never reads the stream.
    pub(crate) fn next_buffered(&mut self) -> Result<Option<Frame>, ReadFrameError> {
        self.decoder
            .decode(&mut self.buf)
            .map_err(ReadFrameError::Decode)
    }

    /// [`FrameReader::next`] for a subscription stream: a `Message` is written into `delivery`
    /// (its topic string kept or reused, the frame never moved: see
    /// [`FrameDecoder::decode_delivery_into`]), any other frame returned.
    ///
    /// Cancel-safe: dropping the future loses no bytes.
    pub(crate) async fn next_into(
        &mut self,
        delivery: &mut Delivery,
    ) -> Result<Option<DecodedInto>, ReadFrameError> {
        loop {
            if let Some(decoded) = self.next_buffered_into(delivery)? {
                return Ok(Some(decoded));
            }
            if !self.read_more().await? {
                return Ok(None);
            }
        }
    }

    /// [`FrameReader::next_into`] if the buffer already holds a whole frame; never reads the
    /// stream.
    pub(crate) fn next_buffered_into(
        &mut self,
        delivery: &mut Delivery,
    ) -> Result<Option<DecodedInto>, ReadFrameError> {
        self.decoder
            .decode_delivery_into(&mut self.buf, delivery)
            .map_err(ReadFrameError::Decode)
    }

    /// Reads one chunk of the stream into the buffer; `false` when the broker finished the
    /// stream with nothing left over.
    async fn read_more(&mut self) -> Result<bool, ReadFrameError> {
        match self
            .stream
            .read_chunk(READ_CHUNK_BYTES, true)
            .await
            .map_err(ReadFrameError::Stream)?
        {
            Some(chunk) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            None if self.buf.is_empty() => Ok(false),
            None => Err(ReadFrameError::Decode(DecodeError::Truncated {
                needed: missing_bytes(&self.buf),
            })),
        }
    }

    /// Changes the maximum frame size, e.g. to the one the broker announced.
    pub(crate) fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.decoder = FrameDecoder::new(max_frame_bytes);
    }

    /// Asks the broker to stop sending on this stream, with `code`.
    pub(crate) fn stop(&mut self, code: ErrorCode) {
        // Fails only if the stream already ended, when there is nothing left to stop.
        let _ = self.stream.stop(VarInt::from_u32(code.value()));
    }
}

/// How many bytes the partial frame at the front of `buf` still lacks.
fn missing_bytes(buf: &[u8]) -> usize {
    match buf.get(..LENGTH_PREFIX_BYTES) {
        Some(prefix) => {
            let declared = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]);
            (declared as usize)
                .saturating_add(LENGTH_PREFIX_BYTES)
                .saturating_sub(buf.len())
        }
        None => LENGTH_PREFIX_BYTES - buf.len(),
    }
}

/// Encodes `frame` on its own, ready to be written.
pub(crate) fn encode(frame: &Frame, max_frame_bytes: u32) -> Result<BytesMut, EncodeError> {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf, max_frame_bytes)?;
    Ok(buf)
}
