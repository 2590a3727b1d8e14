//! Cassini frames on a bridged stream, for the gateway's side: one frame written, the next
//! frame read.

use bytes::BytesMut;
use cassini_protocol::{encode_frame, Frame, FrameDecoder};

use crate::bridge::{PipeReader, PipeWriter};

/// Why no frame was read.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The stream ended, or the connection closed.
    Ended,
    /// Bytes that are not a frame.
    Malformed,
}

/// Encodes `frame` into `scratch` and writes it; false if it could not be encoded or written.
pub(crate) async fn send(
    stream: &mut PipeWriter,
    frame: &Frame,
    scratch: &mut BytesMut,
    max_frame: u32,
) -> bool {
    scratch.clear();
    if let Err(err) = encode_frame(frame, scratch, max_frame) {
        tracing::debug!(%err, "frame not encoded");
        return false;
    }
    stream.write(scratch).await.is_ok()
}

/// The next frame from `recv`, reading into `buf` (which keeps what follows it).
pub(crate) async fn next(
    recv: &mut PipeReader,
    buf: &mut BytesMut,
    decoder: &FrameDecoder,
) -> Result<Frame, ReadError> {
    loop {
        match decoder.decode(buf) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(_) => return Err(ReadError::Malformed),
        }
        match recv.read(buf).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return Err(ReadError::Ended),
        }
    }
}
