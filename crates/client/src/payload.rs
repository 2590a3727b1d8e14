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
mod tests {
    //! Typed payloads survive the trip through bytes, and bad bytes are a typed error.

    #![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

    use std::collections::HashMap;

    use bytes::Bytes;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::message::Message;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Reading {
        sensor: String,
        celsius: f64,
        tags: Vec<String>,
    }

    /// A newer reader of the same payload, with a field the writer does not know.
    #[derive(Debug, PartialEq, Deserialize)]
    struct ReadingWithUnit {
        celsius: f64,
        #[serde(default)]
        unit: Option<String>,
    }

    fn reading() -> Reading {
        Reading {
            sensor: "kitchen".into(),
            celsius: 21.5,
            tags: vec!["indoor".into()],
        }
    }

    fn delivered(payload: Bytes) -> Message {
        Message::plain(1, "t", payload)
    }

    #[test]
    fn json_round_trips_through_a_message() {
        let payload = encode_json(&reading()).expect("encodes");
        assert!(payload.starts_with(b"{\"sensor\":\"kitchen\""));
        let decoded: Reading = delivered(payload).decode_json().expect("decodes");
        assert_eq!(decoded, reading());
    }

    #[test]
    fn msgpack_round_trips_and_names_fields_so_readers_may_differ() {
        let payload = encode_msgpack(&reading()).expect("encodes");
        let message = delivered(payload);
        assert_eq!(
            message.decode_msgpack::<Reading>().expect("decodes"),
            reading()
        );
        let newer: ReadingWithUnit = message.decode_msgpack().expect("decodes by field name");
        assert_eq!(
            newer,
            ReadingWithUnit {
                celsius: 21.5,
                unit: None
            }
        );
    }

    #[test]
    fn a_payload_of_the_wrong_shape_is_a_decode_error() {
        let message = delivered(Bytes::from_static(b"not json"));
        assert!(matches!(
            message.decode_json::<Reading>(),
            Err(PayloadError::DecodeJson(_))
        ));
        assert!(matches!(
            message.decode_msgpack::<Reading>(),
            Err(PayloadError::DecodeMsgpack(_))
        ));
    }

    #[test]
    fn a_value_json_cannot_write_is_an_encode_error() {
        let mut by_pair = HashMap::new();
        by_pair.insert((1, 2), "x");
        assert!(matches!(
            encode_json(&by_pair),
            Err(PayloadError::EncodeJson(_))
        ));
    }
}
