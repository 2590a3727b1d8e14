//! Typed payloads survive the trip through bytes, and bad bytes are a typed error.

#![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::collections::HashMap;

use bytes::Bytes;
use cassini_protocol::Delivery;
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
    Message::from(Delivery {
        sequence: 1,
        topic: "t".into(),
        headers: vec![],
        payload,
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    })
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
