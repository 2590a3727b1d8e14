//! The worked examples of docs/PROTOCOL.md, byte for byte: if the encoding changes, the
//! document must change with it.

#![allow(clippy::expect_used, clippy::panic)] // A failed check in a test panics on purpose.

use bytes::{Bytes, BytesMut};
use cassini_protocol::{
    decode_frame, encode_frame, DeliveryClass, Frame, Hello, OverflowPolicy, OversizeRule, Publish,
    Subscribe, SubscribeOptions,
};

fn hex(frame: &Frame) -> String {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf, u32::MAX).expect("encodes");
    buf.iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn bytes_of(hex: &str) -> Vec<u8> {
    hex.split_whitespace()
        .map(|byte| u8::from_str_radix(byte, 16).expect("hex"))
        .collect()
}

/// `frame` encodes to exactly `expected`, and `expected` decodes to `frame`.
fn assert_documented(frame: Frame, expected: &str) {
    assert_eq!(hex(&frame), expected, "{}", frame.kind());
    let bytes = bytes_of(expected);
    let (decoded, used) = decode_frame(&bytes, u32::MAX).expect("decodes");
    assert_eq!(decoded, frame);
    assert_eq!(used, bytes.len());
}

#[test]
fn the_hello_example() {
    assert_documented(
        Frame::Hello(Hello {
            protocol_version: 1,
            resume: None,
            client_name: Some("demo".into()),
            positions: vec![],
            session_name: None,
        }),
        "00 00 00 11 81 a5 48 65 6c 6c 6f 95 01 c0 a4 64 65 6d 6f 90 c0",
    );
}

#[test]
fn the_publish_example() {
    assert_documented(
        Frame::Publish(Publish {
            topic: "orders.eu".into(),
            headers: vec![("k".into(), "v".into())],
            payload: Bytes::from_static(b"hi"),
            message_id: Some(7),
            reply_to: None,
            retain: false,
            to_session: None,
            ack: true,
        }),
        "00 00 00 23 81 a7 50 75 62 6c 69 73 68 98 a9 6f 72 64 65 72 73 2e 65 75 91 92 a1 6b \
         a1 76 c4 02 68 69 07 c0 c2 c0 c3",
    );
}

#[test]
fn the_subscribe_example() {
    assert_documented(
        Frame::Subscribe(Subscribe {
            request_id: 1,
            filter: "a.>".into(),
            options: SubscribeOptions {
                overflow: OverflowPolicy::Latest,
                delivery: DeliveryClass::Datagram {
                    oversize: OversizeRule::Drop,
                },
                ..SubscribeOptions::default()
            },
        }),
        "00 00 00 2d 81 a9 53 75 62 73 63 72 69 62 65 93 01 a3 61 2e 3e 96 a6 4c 61 74 65 73 \
         74 c0 c0 c0 c0 81 a8 44 61 74 61 67 72 61 6d 91 a4 44 72 6f 70",
    );
}

#[test]
fn a_shorter_subscribe_options_takes_the_defaults_of_the_fields_left_off() {
    // [overflow, max_queued_messages, max_queued_bytes, queue_group]: `acks` and `delivery`
    // left off the end.
    let bytes = bytes_of(
        "00 00 00 1b 81 a9 53 75 62 73 63 72 69 62 65 93 01 a3 61 2e 3e 94 a5 43 6c 6f 73 65 \
         c0 c0 c0",
    );
    let (decoded, _) = decode_frame(&bytes, u32::MAX).expect("decodes");
    assert_eq!(
        decoded,
        Frame::Subscribe(Subscribe {
            request_id: 1,
            filter: "a.>".into(),
            options: SubscribeOptions {
                overflow: OverflowPolicy::Close,
                ..SubscribeOptions::default()
            },
        })
    );
}
