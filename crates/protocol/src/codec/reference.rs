//! The reference encoding: every frame through rmp-serde's derive path (structs as arrays,
//! enum variants by name), with the compatibility rule applied by `lenient`. It defines the
//! encoding; the hand-written hot frames (`hot_frames`) are held to it by tests. Public so that
//! tests and benchmarks outside the crate can compare against it; peers use
//! [`crate::codec::encode_frame`] and [`crate::codec::FrameDecoder`].

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::lenient::Lenient;
use super::{DecodeError, EncodeError, LENGTH_PREFIX_BYTES, MAX_NESTING_DEPTH};
use crate::frame::Frame;

/// Decodes a whole frame body (no length prefix) through rmp-serde.
pub fn decode_body(body: &[u8]) -> Result<Frame, DecodeError> {
    if let Some(frame) = decode_body_borrowing(body) {
        return Ok(frame);
    }
    decode_body_copying(body)
}

/// The fast path of [`decode_body`]: rmp-serde's slice deserializer, which hands strings and
/// bytes to the frame's fields straight from `body` (the reader-based one copies each through a
/// scratch buffer it allocates per frame). It cannot say how many bytes it left over, so it
/// answers only when it can prove it used them all: after the frame, reading the next marker
/// must find the input's end. Anything else (a malformed frame, trailing bytes) returns `None`,
/// and the copying path decodes again to report the exact error.
fn decode_body_borrowing(body: &[u8]) -> Option<Frame> {
    let mut deserializer = rmp_serde::Deserializer::from_read_ref(body);
    deserializer.set_max_depth(MAX_NESTING_DEPTH);
    let frame: Frame = serde::Deserialize::deserialize(Lenient(&mut deserializer)).ok()?;
    match serde::de::IgnoredAny::deserialize(&mut deserializer) {
        Err(rmp_serde::decode::Error::InvalidMarkerRead(err))
            if err.kind() == std::io::ErrorKind::UnexpectedEof =>
        {
            Some(frame)
        }
        _ => None,
    }
}

/// The reference path of [`decode_body`]: exact errors, including the count of trailing bytes.
pub(super) fn decode_body_copying(body: &[u8]) -> Result<Frame, DecodeError> {
    let mut rest = body;
    let mut deserializer = rmp_serde::Deserializer::new(&mut rest);
    deserializer.set_max_depth(MAX_NESTING_DEPTH);
    let frame = serde::Deserialize::deserialize(Lenient(&mut deserializer))
        .map_err(|err: rmp_serde::decode::Error| DecodeError::Malformed(err.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes(rest.len()));
    }
    Ok(frame)
}

/// Appends `frame`, length prefix included, to `buf`, encoded through rmp-serde.
///
/// On error `buf` is left as it was.
pub fn encode_frame(
    frame: &Frame,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    encode_value(frame, buf, max_frame_bytes)
}

/// Appends any serializable value as a frame, length prefix included.
pub(super) fn encode_value<T: Serialize>(
    value: &T,
    buf: &mut BytesMut,
    max_frame_bytes: u32,
) -> Result<(), EncodeError> {
    let start = buf.len();
    buf.put_u32(0);
    let mut writer = buf.writer();
    if let Err(err) = rmp_serde::encode::write(&mut writer, value) {
        let buf = writer.into_inner();
        buf.truncate(start);
        return Err(EncodeError::Serialize(err.to_string()));
    }
    let buf = writer.into_inner();
    let size = buf.len() - start - LENGTH_PREFIX_BYTES;
    match u32::try_from(size) {
        Ok(len) if len <= max_frame_bytes => {
            buf[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
            Ok(())
        }
        _ => {
            buf.truncate(start);
            Err(EncodeError::FrameTooLarge {
                size,
                max: max_frame_bytes,
            })
        }
    }
}
