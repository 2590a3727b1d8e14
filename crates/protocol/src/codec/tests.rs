use super::reference::{self, decode_body_copying, encode_value};
use super::*;
use crate::frame::*;
use crate::ErrorCode;

fn one_of_every_frame() -> Vec<Frame> {
    let session_id = SessionId([7; 16]);
    vec![
        Frame::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            resume: Some(session_id),
            client_name: Some("sensor-7".into()),
            positions: vec![ResumePosition {
                subscription: 42,
                last_sequence: 1000,
            }],
            session_name: Some("kitchen".into()),
        }),
        Frame::Welcome(Welcome {
            protocol_version: 1,
            session_id,
            resumed: false,
            identity: "alice".into(),
            limits: Limits {
                max_payload_bytes: 1 << 20,
                max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
                max_subscriptions: 1000,
                max_topic_bytes: 256,
                max_topic_depth: 16,
                max_headers: 256,
                max_header_bytes: 32 * 1024,
                max_datagram_bytes: 1200,
            },
            subscriptions: vec![SessionSubscription {
                subscription: 3,
                filter: "orders.>".into(),
                options: SubscribeOptions::default(),
            }],
            cluster_addresses: vec!["10.0.0.2:7700".into(), "broker-3.example:7700".into()],
        }),
        Frame::Subscribe(Subscribe {
            request_id: 1,
            filter: "orders.*.created".into(),
            options: SubscribeOptions {
                overflow: OverflowPolicy::Latest,
                max_queued_messages: Some(10),
                max_queued_bytes: None,
                queue_group: Some("workers".into()),
                acks: Some(AckOptions {
                    max_in_flight: Some(64),
                    ack_timeout_ms: None,
                }),
                delivery: DeliveryClass::Datagram {
                    oversize: OversizeRule::Stream,
                },
            },
        }),
        Frame::Subscribed(Subscribed {
            request_id: 1,
            subscription: 42,
        }),
        Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            subscription: 42,
        }),
        Frame::Unsubscribed(Unsubscribed {
            request_id: 2,
            subscription: 42,
        }),
        Frame::Ping(Ping { nonce: u64::MAX }),
        Frame::Ack(Ack {
            subscription: 42,
            ranges: vec![
                SequenceRange { from: 1, to: 9 },
                SequenceRange { from: 12, to: 12 },
            ],
        }),
        Frame::Pong(Ping { nonce: 0 }),
        Frame::Error(ErrorFrame {
            request_id: None,
            code: ErrorCode::INVALID_FILTER,
            reason: "empty token".into(),
        }),
        Frame::GoingAway(GoingAway {
            reason: "maintenance".into(),
            reconnect_after_ms: 2500,
        }),
        Frame::Publish(Publish {
            topic: "demo.x".into(),
            headers: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
            payload: Bytes::from_static(b"hello"),
            message_id: Some(77),
            reply_to: Some("_INBOX.abc.1".into()),
            retain: true,
            to_session: Some(session_id),
            ack: true,
        }),
        Frame::PublishAck(PublishAck {
            message_id: 77,
            duplicate: true,
        }),
        Frame::NoResponders(NoResponders {
            reply_to: "_INBOX.abc.1".into(),
        }),
        Frame::PublishRejected(PublishRejected {
            topic: "demo.x".into(),
            message_id: Some(77),
            code: ErrorCode::PAYLOAD_TOO_LARGE,
            reason: "2000000 > 1048576".into(),
        }),
        Frame::SubscriptionStart(SubscriptionStart { subscription: 42 }),
        Frame::Message(Delivery {
            sequence: 9,
            topic: "demo.x".into(),
            headers: vec![],
            payload: Bytes::from(vec![0u8; 1000]),
            message_id: None,
            reply_to: Some("_INBOX.abc.2".into()),
            retained: true,
            redelivered: true,
        }),
        Frame::Gap(Gap {
            subscription: 42,
            from: 10,
            to: 19,
            reason: GapReason::Overflow,
        }),
        Frame::Datagram(DatagramDelivery {
            subscription: 42,
            message: Delivery {
                sequence: 20,
                topic: "sensor.t".into(),
                headers: vec![],
                payload: Bytes::from_static(b"21.5"),
                message_id: None,
                reply_to: None,
                retained: false,
                redelivered: false,
            },
        }),
        Frame::SubscriptionEnded(SubscriptionEnded {
            subscription: 42,
            code: ErrorCode::SLOW_CONSUMER,
            reason: "slow consumer".into(),
        }),
        Frame::DatagramsSent(DatagramsSent {
            subscription: 42,
            through: 20,
        }),
    ]
}

fn encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    buf
}

/// The encoding by the reference (rmp-serde) path, which the hand-written hot frames match.
fn reference_encoded(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    reference::encode_frame(frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    buf
}

#[test]
fn every_frame_round_trips() {
    let decoder = FrameDecoder::default();
    for frame in one_of_every_frame() {
        let mut buf = encoded(&frame);
        let decoded = decoder.decode(&mut buf).expect("decodes");
        assert_eq!(decoded.as_ref(), Some(&frame), "{}", frame.kind());
        assert!(buf.is_empty(), "{} left bytes behind", frame.kind());
    }
}

#[test]
fn every_truncation_of_every_frame_waits_for_more_bytes() {
    let decoder = FrameDecoder::default();
    for frame in one_of_every_frame() {
        let whole = encoded(&frame);
        for cut in 0..whole.len() {
            let mut partial = BytesMut::from(&whole[..cut]);
            assert_eq!(
                decoder.decode(&mut partial),
                Ok(None),
                "{} cut at {cut}",
                frame.kind()
            );
            assert_eq!(partial.len(), cut, "a partial frame must not be consumed");
            assert!(matches!(
                decode_frame(&whole[..cut], DEFAULT_MAX_FRAME_BYTES),
                Err(DecodeError::Truncated { .. })
            ));
        }
    }
}

#[test]
fn every_frame_is_refused_when_over_the_limit() {
    for frame in one_of_every_frame() {
        let whole = encoded(&frame);
        let body_len = (whole.len() - LENGTH_PREFIX_BYTES) as u32;
        let tight = FrameDecoder::new(body_len - 1);
        let mut buf = whole.clone();
        assert_eq!(
            tight.decode(&mut buf),
            Err(DecodeError::FrameTooLarge {
                declared: body_len,
                max: body_len - 1
            }),
            "{}",
            frame.kind()
        );
        let mut out = BytesMut::new();
        assert!(matches!(
            encode_frame(&frame, &mut out, body_len - 1),
            Err(EncodeError::FrameTooLarge { .. })
        ));
        assert!(
            out.is_empty(),
            "a refused encode leaves the buffer as it was"
        );
    }
}

#[test]
fn an_oversized_declared_length_is_refused_before_any_allocation() {
    let decoder = FrameDecoder::new(1024);
    let mut buf = BytesMut::with_capacity(8);
    buf.put_u32(256 * 1024 * 1024);
    let capacity_before = buf.capacity();
    assert_eq!(
        decoder.decode(&mut buf),
        Err(DecodeError::FrameTooLarge {
            declared: 256 * 1024 * 1024,
            max: 1024
        })
    );
    assert_eq!(buf.capacity(), capacity_before);
}

#[test]
fn a_partial_frame_reserves_only_what_it_declared() {
    let decoder = FrameDecoder::default();
    let whole = encoded(&Frame::Message(Delivery {
        sequence: 1,
        topic: "a".into(),
        headers: vec![],
        payload: Bytes::from(vec![1u8; 100_000]),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    }));
    let mut partial = BytesMut::from(&whole[..10]);
    assert_eq!(decoder.decode(&mut partial), Ok(None));
    assert!(partial.capacity() >= whole.len());
    assert!(partial.capacity() < 2 * whole.len());
}

#[test]
fn frames_split_at_every_byte_decode_in_order() {
    let decoder = FrameDecoder::default();
    let frames = one_of_every_frame();
    let mut stream = BytesMut::new();
    for frame in &frames {
        encode_frame(frame, &mut stream, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    }
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for byte in stream.iter() {
        buf.put_u8(*byte);
        while let Some(frame) = decoder.decode(&mut buf).expect("valid stream") {
            decoded.push(frame);
        }
    }
    assert_eq!(decoded, frames);
}

#[test]
fn garbage_is_malformed_not_a_panic() {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    buf.put_u32(5);
    buf.put_slice(b"\xc1\xc1\xc1\xc1\xc1");
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn an_unknown_variant_is_malformed() {
    let mut body = Vec::new();
    rmp_serde::encode::write(
        &mut body,
        &std::collections::BTreeMap::from([("Teleport", 1u8)]),
    )
    .expect("encodes");
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    assert!(matches!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::Malformed(_))
    ));
}

/// A `Ping` frame whose body has `byte` appended, its length prefix counting it.
fn ping_with_one_more_byte(byte: u8) -> BytesMut {
    let whole = encoded(&Frame::Ping(Ping { nonce: 1 }));
    let mut body = whole[LENGTH_PREFIX_BYTES..].to_vec();
    body.push(byte);
    let mut buf = BytesMut::new();
    buf.put_u32(body.len() as u32);
    buf.put_slice(&body);
    buf
}

#[test]
fn trailing_bytes_inside_a_frame_are_refused() {
    let mut buf = ping_with_one_more_byte(0);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::TrailingBytes(1))
    );
}

#[test]
fn an_empty_frame_is_refused() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::EmptyFrame)
    );
}

#[test]
fn encode_publish_matches_encoding_the_frame() {
    let headers = vec![("trace".to_string(), "abc".to_string())];
    let payload = Bytes::from_static(b"payload");
    for (reply_to, to_session, flags) in [
        (None, None, false),
        (Some("_INBOX.x.1"), Some(SessionId([7; 16])), true),
    ] {
        let mut fast = BytesMut::new();
        let publish = PublishRef {
            topic: "a.b",
            headers: &headers,
            payload: &payload,
            message_id: Some(3),
            reply_to,
            retain: flags,
            to_session,
            ack: flags,
        };
        encode_publish(&publish, &mut fast, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
        let slow = reference_encoded(&Frame::Publish(Publish {
            topic: "a.b".into(),
            headers: headers.clone(),
            payload: payload.clone(),
            message_id: Some(3),
            reply_to: reply_to.map(str::to_owned),
            retain: flags,
            to_session,
            ack: flags,
        }));
        assert_eq!(fast, slow);
    }
}

#[test]
fn encode_delivery_matches_encoding_the_frame() {
    let headers = vec![("trace".to_string(), "abc".to_string())];
    let payload = Bytes::from_static(b"payload");
    let mut fast = BytesMut::new();
    let delivery = DeliveryRef {
        sequence: 5,
        topic: "a.b",
        headers: &headers,
        payload: &payload,
        message_id: Some(3),
        reply_to: Some("_INBOX.x.1"),
        retained: false,
        redelivered: true,
    };
    encode_delivery(&delivery, &mut fast, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    let slow = reference_encoded(&Frame::Message(Delivery {
        sequence: 5,
        topic: "a.b".into(),
        headers,
        payload,
        message_id: Some(3),
        reply_to: Some("_INBOX.x.1".into()),
        retained: false,
        redelivered: true,
    }));
    assert_eq!(fast, slow);
}

#[test]
fn fields_added_at_the_end_decode_with_defaults_from_an_older_peer() {
    // A `Hello` as a peer that predates `positions` encodes it: three fields.
    #[derive(serde::Serialize)]
    enum OldFrame {
        Hello(u32, Option<SessionId>, Option<String>),
    }
    let mut buf = BytesMut::new();
    encode_value(
        &OldFrame::Hello(crate::PROTOCOL_VERSION, None, None),
        &mut buf,
        DEFAULT_MAX_FRAME_BYTES,
    )
    .expect("encodes");
    let decoded = FrameDecoder::default().decode(&mut buf).expect("decodes");
    assert_eq!(
        decoded,
        Some(Frame::Hello(Hello {
            protocol_version: crate::PROTOCOL_VERSION,
            resume: None,
            client_name: None,
            positions: vec![],
            session_name: None,
        }))
    );
}

#[test]
fn a_gap_counts_its_range() {
    let gap = Gap {
        subscription: 1,
        from: 2,
        to: 901,
        reason: GapReason::Overflow,
    };
    assert_eq!(gap.len(), 900);
    assert!(!gap.is_empty());
}

#[test]
fn encode_datagram_matches_encoding_the_frame() {
    let headers = vec![];
    let payload = Bytes::from_static(b"21.5");
    let delivery = DeliveryRef {
        sequence: 20,
        topic: "sensor.t",
        headers: &headers,
        payload: &payload,
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    };
    let mut fast = BytesMut::new();
    encode_datagram(42, &delivery, &mut fast, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    let slow = reference_encoded(&Frame::Datagram(DatagramDelivery {
        subscription: 42,
        message: Delivery {
            sequence: 20,
            topic: "sensor.t".into(),
            headers: vec![],
            payload,
            message_id: None,
            reply_to: None,
            retained: false,
            redelivered: false,
        },
    }));
    assert_eq!(fast, slow);
}

#[test]
fn a_truncated_value_after_a_frame_is_refused_as_trailing_bytes() {
    // 0xcd starts a u16 whose two bytes are missing: the fast path cannot prove the frame used
    // the whole body, so the exact error comes from the copying path.
    let mut buf = ping_with_one_more_byte(0xcd);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::TrailingBytes(1))
    );
}

/// A `Hello` as a newer peer might encode it: every field this build knows, then more.
#[derive(serde::Serialize)]
enum NewerFrame {
    Hello(
        u32,
        Option<SessionId>,
        Option<String>,
        Vec<ResumePosition>,
        Option<String>,
        String,
        Vec<u64>,
    ),
    Subscribe(u64, String, NewerOptions, bool),
}

#[derive(serde::Serialize)]
struct NewerOptions {
    overflow: OverflowPolicy,
    max_queued_messages: Option<u32>,
    max_queued_bytes: Option<u64>,
    queue_group: Option<String>,
    acks: Option<AckOptions>,
    delivery: DeliveryClass,
    later: Option<u64>,
}

fn encode_newer(frame: &NewerFrame) -> BytesMut {
    let mut buf = BytesMut::new();
    encode_value(frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("encodes");
    buf
}

#[test]
fn trailing_fields_from_a_newer_peer_are_ignored() {
    let positions = vec![ResumePosition {
        subscription: 3,
        last_sequence: 9,
    }];
    let newer = NewerFrame::Hello(
        crate::PROTOCOL_VERSION,
        Some(SessionId([1; 16])),
        Some("newer".into()),
        positions.clone(),
        Some("plant-7".into()),
        "a field this build does not know".into(),
        vec![1, 2, 3],
    );
    let expected = Frame::Hello(Hello {
        protocol_version: crate::PROTOCOL_VERSION,
        resume: Some(SessionId([1; 16])),
        client_name: Some("newer".into()),
        positions,
        session_name: Some("plant-7".into()),
    });
    let mut buf = encode_newer(&newer);
    let whole = buf.clone();
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Ok(Some(expected.clone()))
    );
    assert!(buf.is_empty());
    // The copying path (exact errors) agrees with the borrowing one.
    assert_eq!(
        decode_body_copying(&whole[LENGTH_PREFIX_BYTES..]),
        Ok(expected)
    );
}

#[test]
fn trailing_fields_of_a_nested_struct_are_ignored() {
    let newer = NewerFrame::Subscribe(
        7,
        "orders.>".into(),
        NewerOptions {
            overflow: OverflowPolicy::Close,
            max_queued_messages: Some(5),
            max_queued_bytes: None,
            queue_group: None,
            acks: None,
            delivery: DeliveryClass::Reliable,
            later: Some(1),
        },
        true,
    );
    let decoded = FrameDecoder::default()
        .decode(&mut encode_newer(&newer))
        .expect("decodes");
    assert_eq!(
        decoded,
        Some(Frame::Subscribe(Subscribe {
            request_id: 7,
            filter: "orders.>".into(),
            options: SubscribeOptions {
                overflow: OverflowPolicy::Close,
                max_queued_messages: Some(5),
                ..SubscribeOptions::default()
            },
        }))
    );
}

#[test]
fn an_extra_element_in_a_tuple_is_still_malformed() {
    // Only structs are lenient: a header pair of three strings is not a header.
    #[derive(serde::Serialize)]
    enum Odd {
        Publish(
            String,
            Vec<(String, String, String)>,
            Bytes,
            Option<u64>,
            Option<String>,
            bool,
            Option<SessionId>,
            bool,
        ),
    }
    let mut buf = BytesMut::new();
    encode_value(
        &Odd::Publish(
            "a".into(),
            vec![("k".into(), "v".into(), "extra".into())],
            Bytes::from_static(b"x"),
            None,
            None,
            false,
            None,
            false,
        ),
        &mut buf,
        DEFAULT_MAX_FRAME_BYTES,
    )
    .expect("encodes");
    assert!(matches!(
        FrameDecoder::default().decode(&mut buf),
        Err(DecodeError::Malformed(_))
    ));
}

/// `{"Ping": [1, [[...[]...]]]}` with `extra_depth` nested arrays as an unknown trailing field:
/// the frame's map and the `Ping` array are two levels, the trailing field adds the rest.
fn ping_with_nested_trailing_field(extra_depth: usize) -> BytesMut {
    let mut body = vec![0x81, 0xa4, b'P', b'i', b'n', b'g', 0x92, 0x01];
    body.extend(std::iter::repeat_n(0x91, extra_depth.saturating_sub(1)));
    body.push(0x90);
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).expect("small"));
    buf.put_slice(&body);
    buf
}

#[test]
fn nesting_is_limited_to_sixteen_levels_counting_the_frame_map() {
    let decoder = FrameDecoder::default();
    assert_eq!(
        decoder.decode(&mut ping_with_nested_trailing_field(14)),
        Ok(Some(Frame::Ping(Ping { nonce: 1 })))
    );
    assert!(matches!(
        decoder.decode(&mut ping_with_nested_trailing_field(15)),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn a_struct_sent_as_a_map_keyed_by_field_name_decodes() {
    // {"Ping": {"nonce": 9, "later": true}}
    let mut body = vec![0x81, 0xa4, b'P', b'i', b'n', b'g', 0x82, 0xa5];
    body.extend_from_slice(b"nonce");
    body.extend_from_slice(&[0x09, 0xa5]);
    body.extend_from_slice(b"later");
    body.push(0xc3);
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).expect("small"));
    buf.put_slice(&body);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Ok(Some(Frame::Ping(Ping { nonce: 9 })))
    );
}

#[test]
fn a_header_list_longer_than_the_decoder_keeps_is_cut_but_still_over_any_limit() {
    let publish = Frame::Publish(Publish {
        topic: "h.x".into(),
        headers: vec![(String::new(), String::new()); MAX_DECODED_HEADERS + 5_000],
        ..Publish::default()
    });
    let mut buf = BytesMut::new();
    encode_frame(&publish, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("encode");
    let decoded = FrameDecoder::default().decode(&mut buf).expect("decode");
    match decoded {
        Some(Frame::Publish(publish)) => {
            assert_eq!(publish.headers.len(), MAX_DECODED_HEADERS + 1);
            assert!(publish.headers.capacity() <= MAX_DECODED_HEADERS + 1);
        }
        other => panic!("expected a publish, got {other:?}"),
    }
    assert!(
        buf.is_empty(),
        "the rest of the list was read and discarded"
    );
}

#[test]
fn header_size_counts_keys_and_values() {
    let headers = vec![
        ("ab".to_owned(), "cde".to_owned()),
        (String::new(), "f".to_owned()),
    ];
    assert_eq!(header_size(&headers), (2, 6));
}
