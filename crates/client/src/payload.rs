//! Typed payloads: JSON and MessagePack on top of the broker's opaque bytes.
//!
//! The broker never looks inside a payload; this module only converts between a serde type and
//! bytes, and names the `content-type` header value that says which format was used. It owns no
//! I/O: [`crate::Client::publish_json`] and [`crate::Message::decode_json`] (and their
//! MessagePack twins) call it.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header that names a payload's format. [`crate::Client::publish_json`] and
/// [`crate::Client::publish_msgpack`] set it; decoding does not require it.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The [`CONTENT_TYPE_HEADER`] value of a JSON payload.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The [`CONTENT_TYPE_HEADER`] value of a MessagePack payload.
pub const MSGPACK_CONTENT_TYPE: &str = "application/msgpack";

/// A value could not be turned into a payload, or a payload into a value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The value cannot be written as JSON (e.g. a map whose keys are not strings).
    #[error("cannot encode the payload as JSON: {0}")]
    EncodeJson(#[source] serde_json::Error),
    /// The value cannot be written as MessagePack.
    #[error("cannot encode the payload as MessagePack: {0}")]
    EncodeMsgpack(#[source] rmp_serde::encode::Error),
    /// The payload is not JSON, or not JSON of the expected shape.
    #[error("cannot decode the payload as JSON: {0}")]
    DecodeJson(#[source] serde_json::Error),
    /// The payload is not MessagePack, or not MessagePack of the expected shape.
    #[error("cannot decode the payload as MessagePack: {0}")]
    DecodeMsgpack(#[source] rmp_serde::decode::Error),
}

/// `value` as a JSON payload.
pub(crate) fn encode_json<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PayloadError> {
    serde_json::to_vec(value)
        .map(Bytes::from)
        .map_err(PayloadError::EncodeJson)
}

/// `value` as a MessagePack payload; structs are written as maps with field names, so a reader
/// with added or reordered fields still decodes it.
pub(crate) fn encode_msgpack<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PayloadError> {
    rmp_serde::to_vec_named(value)
        .map(Bytes::from)
        .map_err(PayloadError::EncodeMsgpack)
}

/// A JSON payload as a `T`.
pub(crate) fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    serde_json::from_slice(payload).map_err(PayloadError::DecodeJson)
}

/// A MessagePack payload as a `T`.
pub(crate) fn decode_msgpack<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    rmp_serde::from_slice(payload).map_err(PayloadError::DecodeMsgpack)
}

#[cfg(test)]
mod tests;
