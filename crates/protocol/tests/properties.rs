//! Properties of the codec and of topics that must hold for every value, not just the examples
//! in the unit tests: frames round-trip, any split of a stream decodes the same, filter matching
//! agrees with a reference, names refuse wildcards and empty tokens, and the one-pass topic
//! check refuses exactly what the rules as first written refuse, with the same error; and the
//! hand-written hot frames encode to the reference encoding byte for byte, and decode every
//! body, valid or edited, to what the reference path decodes it to.
//!
//! Case counts are proptest's default (256 per property); set `PROPTEST_CASES` to run more.

#![allow(clippy::expect_used, clippy::panic)] // A failed property in a test panics on purpose.

#[allow(dead_code, reason = "these properties use only the reference matcher")]
#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;
#[path = "support/wire_forms.rs"]
mod wire_forms;

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{
    encode_datagram, encode_delivery, encode_publish, hot_frames, reference, DecodedInto,
    DeliveryRef, PublishRef, TopicMemo, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES,
};
use cassini_protocol::{
    decode_frame, encode_frame, Ack, AckOptions, DatagramDelivery, DatagramsSent, DecodeError,
    Delivery, DeliveryClass, EncodeError, ErrorCode, ErrorFrame, Frame, FrameDecoder, Gap,
    GapReason, GoingAway, Hello, Limits, NoResponders, OverflowPolicy, Ping, Publish, PublishAck,
    PublishRejected, ResumePosition, SequenceRange, SessionId, Subscribe, SubscribeOptions,
    Subscribed, SubscriptionEnded, SubscriptionStart, TopicError, TopicFilter, TopicLimits,
    TopicName, Unsubscribe, Unsubscribed, Welcome,
};
use fuzz_checks::reference_matches;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

fn text() -> impl Strategy<Value = String> {
    ".{0,24}"
}

/// Header lists as applications send them, and header-heavy ones: hundreds of empty or short
/// headers, or a few long values.
fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    prop_oneof![
        4 => vec((text(), text()), 0..4),
        1 => vec(("[a-z]{0,3}", "[a-z]{0,3}"), 100..600),
        1 => vec((text(), "[a-z]{1000,4000}"), 1..3),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..512).prop_map(Bytes::from)
}

fn session_id() -> impl Strategy<Value = SessionId> {
    any::<[u8; 16]>().prop_map(SessionId)
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    any::<u32>().prop_map(ErrorCode)
}

fn overflow_policy() -> impl Strategy<Value = OverflowPolicy> {
    prop_oneof![
        Just(OverflowPolicy::DropOldest),
        Just(OverflowPolicy::DropNewest),
        Just(OverflowPolicy::Latest),
        Just(OverflowPolicy::Close),
    ]
}

fn connection_limits() -> impl Strategy<Value = Limits> {
    any::<(u32, u32, u32, u32, u32, (u32, u32, u32))>().prop_map(
        |(
            max_payload_bytes,
            max_frame_bytes,
            max_subscriptions,
            max_topic_bytes,
            max_topic_depth,
            (max_headers, max_header_bytes, max_datagram_bytes),
        )| Limits {
            max_payload_bytes,
            max_frame_bytes,
            max_subscriptions,
            max_topic_bytes,
            max_topic_depth,
            max_headers,
            max_header_bytes,
            max_datagram_bytes,
        },
    )
}

/// The fields a `Publish` and a `Delivery` share: topic, headers, payload, message id, reply-to.
type Content = (
    String,
    Vec<(String, String)>,
    Bytes,
    Option<u64>,
    Option<String>,
);

/// [`Content`] drawn from the given generators of numbers, texts and payloads.
fn content_with<N, T, P>(
    number: fn() -> N,
    text: fn() -> T,
    payload: fn() -> P,
) -> impl Strategy<Value = Content>
where
    N: Strategy<Value = u64>,
    T: Strategy<Value = String>,
    P: Strategy<Value = Bytes>,
{
    (
        text(),
        headers(),
        payload(),
        proptest::option::of(number()),
        proptest::option::of(text()),
    )
}

/// `Publish` frames carrying `content`, every other field drawn independently.
fn publish_with(content: impl Strategy<Value = Content>) -> impl Strategy<Value = Frame> {
    (
        content,
        any::<bool>(),
        proptest::option::of(session_id()),
        any::<bool>(),
    )
        .prop_map(
            |((topic, headers, payload, message_id, reply_to), retain, to_session, ack)| {
                Frame::Publish(Publish {
                    topic,
                    headers,
                    payload,
                    message_id,
                    reply_to,
                    retain,
                    to_session,
                    ack,
                })
            },
        )
}

/// `Delivery`s numbered from `sequence` carrying `content`, their flags drawn independently.
fn delivery_with(
    sequence: impl Strategy<Value = u64>,
    content: impl Strategy<Value = Content>,
) -> impl Strategy<Value = Delivery> {
    (sequence, content, any::<bool>(), any::<bool>()).prop_map(
        |(sequence, (topic, headers, payload, message_id, reply_to), retained, redelivered)| {
            Delivery {
                sequence,
                topic,
                headers,
                payload,
                message_id,
                reply_to,
                retained,
                redelivered,
            }
        },
    )
}

fn publish_ack_frame((message_id, duplicate): (u64, bool)) -> Frame {
    Frame::PublishAck(PublishAck {
        message_id,
        duplicate,
    })
}

fn ack_frame((subscription, ranges): (u64, Vec<(u64, u64)>)) -> Frame {
    Frame::Ack(Ack {
        subscription,
        ranges: ranges
            .into_iter()
            .map(|(from, to)| SequenceRange { from, to })
            .collect(),
    })
}

/// Any frame of any kind, every field drawn independently.
fn frame() -> impl Strategy<Value = Frame> {
    let hello = (
        any::<u32>(),
        proptest::option::of(session_id()),
        proptest::option::of(text()),
        vec(any::<(u64, u64)>(), 0..4),
    )
        .prop_map(|(protocol_version, resume, client_name, positions)| {
            Frame::Hello(Hello {
                protocol_version,
                resume,
                client_name,
                positions: positions
                    .into_iter()
                    .map(|(subscription, last_sequence)| ResumePosition {
                        subscription,
                        last_sequence,
                    })
                    .collect(),
                session_name: None,
            })
        });
    let welcome = (
        any::<u32>(),
        session_id(),
        any::<bool>(),
        text(),
        connection_limits(),
    )
        .prop_map(
            |(protocol_version, session_id, resumed, identity, limits)| {
                Frame::Welcome(Welcome {
                    protocol_version,
                    session_id,
                    resumed,
                    identity,
                    limits,
                    subscriptions: Vec::new(),
                    cluster_addresses: Vec::new(),
                })
            },
        );
    let subscribe = (
        any::<u64>(),
        text(),
        overflow_policy(),
        any::<Option<u32>>(),
        any::<Option<u64>>(),
        proptest::option::of(text()),
        proptest::option::of(any::<(Option<u32>, Option<u32>)>()),
    )
        .prop_map(
            |(
                request_id,
                filter,
                overflow,
                max_queued_messages,
                max_queued_bytes,
                queue_group,
                acks,
            )| {
                Frame::Subscribe(Subscribe {
                    request_id,
                    filter,
                    options: SubscribeOptions {
                        overflow,
                        max_queued_messages,
                        max_queued_bytes,
                        queue_group,
                        acks: acks.map(|(max_in_flight, ack_timeout_ms)| AckOptions {
                            max_in_flight,
                            ack_timeout_ms,
                        }),
                        delivery: DeliveryClass::Reliable,
                    },
                })
            },
        );
    let subscribed = any::<(u64, u64)>().prop_map(|(request_id, subscription)| {
        Frame::Subscribed(Subscribed {
            request_id,
            subscription,
        })
    });
    let unsubscribe = any::<(u64, u64)>().prop_map(|(request_id, subscription)| {
        Frame::Unsubscribe(Unsubscribe {
            request_id,
            subscription,
        })
    });
    let unsubscribed = any::<(u64, u64)>().prop_map(|(request_id, subscription)| {
        Frame::Unsubscribed(Unsubscribed {
            request_id,
            subscription,
        })
    });
    let ping = any::<u64>().prop_map(|nonce| Frame::Ping(Ping { nonce }));
    let pong = any::<u64>().prop_map(|nonce| Frame::Pong(Ping { nonce }));
    let error =
        (any::<Option<u64>>(), error_code(), text()).prop_map(|(request_id, code, reason)| {
            Frame::Error(ErrorFrame {
                request_id,
                code,
                reason,
            })
        });
    let subscription_ended =
        (any::<u64>(), error_code(), text()).prop_map(|(subscription, code, reason)| {
            Frame::SubscriptionEnded(SubscriptionEnded {
                subscription,
                code,
                reason,
            })
        });
    let going_away = (text(), any::<u32>()).prop_map(|(reason, reconnect_after_ms)| {
        Frame::GoingAway(GoingAway {
            reason,
            reconnect_after_ms,
        })
    });
    let publish = publish_with(content_with(any::<u64>, text, payload));
    let publish_ack = (any::<u64>(), any::<bool>()).prop_map(publish_ack_frame);
    let publish_rejected = (text(), any::<Option<u64>>(), error_code(), text()).prop_map(
        |(topic, message_id, code, reason)| {
            Frame::PublishRejected(PublishRejected {
                topic,
                message_id,
                code,
                reason,
            })
        },
    );
    let no_responders = text().prop_map(|reply_to| Frame::NoResponders(NoResponders { reply_to }));
    let subscription_start = any::<u64>()
        .prop_map(|subscription| Frame::SubscriptionStart(SubscriptionStart { subscription }));
    let message = delivery_with(any::<u64>(), content_with(any::<u64>, text, payload))
        .prop_map(Frame::Message);
    let gap = (
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop_oneof![
            Just(GapReason::Overflow),
            Just(GapReason::Undelivered),
            Just(GapReason::TooLargeForDatagram),
            Just(GapReason::ClusterRoute)
        ],
    )
        .prop_map(|(subscription, from, to, reason)| {
            Frame::Gap(Gap {
                subscription,
                from,
                to,
                reason,
            })
        });
    let ack = (
        any::<u64>(),
        proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8),
    )
        .prop_map(ack_frame);
    let datagrams_sent = (any::<u64>(), any::<u64>()).prop_map(|(subscription, through)| {
        Frame::DatagramsSent(DatagramsSent {
            subscription,
            through,
        })
    });
    prop_oneof![
        hello.boxed(),
        welcome.boxed(),
        subscribe.boxed(),
        subscribed.boxed(),
        unsubscribe.boxed(),
        unsubscribed.boxed(),
        ping.boxed(),
        pong.boxed(),
        error.boxed(),
        going_away.boxed(),
        subscription_ended.boxed(),
        publish.boxed(),
        publish_rejected.boxed(),
        publish_ack.boxed(),
        no_responders.boxed(),
        subscription_start.boxed(),
        message.boxed(),
        gap.boxed(),
        ack.boxed(),
        datagrams_sent.boxed(),
    ]
}

fn encode(frames: &[Frame]) -> BytesMut {
    let mut stream = BytesMut::new();
    for frame in frames {
        encode_frame(frame, &mut stream, DEFAULT_MAX_FRAME_BYTES).expect("a small frame encodes");
    }
    stream
}

/// Tokens from a three-letter alphabet, so that generated filters and names often match.
fn token() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c")].prop_map(String::from)
}

fn name_tokens() -> impl Strategy<Value = Vec<String>> {
    vec(token(), 1..6)
}

/// A filter built independently of any name: literal tokens and `*`, with an optional `>` tail.
fn independent_filter() -> impl Strategy<Value = String> {
    let filter_token = prop_oneof![3 => token(), 1 => Just("*".to_string())];
    (vec(filter_token, 0..5), any::<bool>()).prop_map(|(mut tokens, tail)| {
        if tail || tokens.is_empty() {
            tokens.push(">".to_string());
        }
        tokens.join(".")
    })
}

/// A filter derived from `name`: some tokens turned into `*`, and possibly a tail replaced by
/// `>`, so that it usually matches.
fn filter_derived_from(name: Vec<String>) -> impl Strategy<Value = String> {
    let depth = name.len();
    (vec(any::<bool>(), depth), 0..=depth).prop_map(move |(stars, keep)| {
        let mut tokens: Vec<String> = name
            .iter()
            .zip(&stars)
            .map(|(token, &star)| if star { "*".to_string() } else { token.clone() })
            .collect();
        if keep < depth {
            tokens.truncate(keep);
            tokens.push(">".to_string());
        }
        tokens.join(".")
    })
}

fn filter_and_name() -> impl Strategy<Value = (String, String)> {
    name_tokens().prop_flat_map(|name| {
        let joined = name.join(".");
        let filter = prop_oneof![
            independent_filter().boxed(),
            filter_derived_from(name).boxed()
        ];
        (filter, Just(joined))
    })
}

fn derived_filter_and_name() -> impl Strategy<Value = (String, String)> {
    name_tokens().prop_flat_map(|name| {
        let joined = name.join(".");
        (filter_derived_from(name), Just(joined))
    })
}

fn limits() -> TopicLimits {
    TopicLimits::default()
}

/// Strings of the characters that matter to the topic rules: dots, wildcards, `$`, ASCII and
/// Unicode whitespace, ASCII and C1 controls, and ordinary ASCII and non-ASCII letters.
fn topic_like() -> impl Strategy<Value = String> {
    let chars = vec![
        'a', 'b', 'Z', '0', '-', '_', '.', '.', '.', '*', '>', '$', ' ', '\t', '\n', '\0',
        '\u{7f}', '\u{85}', '\u{a0}', '\u{2028}', '\u{3000}', 'é', 'ж', '字', '🚀',
    ];
    vec(proptest::sample::select(chars), 0..24).prop_map(|chars| chars.into_iter().collect())
}

/// The rules names and filters share, as first written (one pass per rule over the
/// characters): the reference the broker's one-pass check must agree with.
fn reference_common(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > limits.max_bytes {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: limits.max_bytes,
        });
    }
    if let Some(bad) = topic.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(TopicError::InvalidCharacter(bad));
    }
    if let Some(position) = topic.split('.').position(str::is_empty) {
        return Err(TopicError::EmptyToken { position });
    }
    let depth = topic.split('.').count();
    if depth > limits.max_depth {
        return Err(TopicError::TooDeep {
            depth,
            max: limits.max_depth,
        });
    }
    Ok(())
}

/// Topic names as first written: the common rules, then no wildcard, then not reserved.
fn reference_name(topic: &str, limits: &TopicLimits) -> Result<(), TopicError> {
    reference_common(topic, limits)?;
    if topic.contains(['*', '>']) {
        return Err(TopicError::WildcardInName);
    }
    if topic.starts_with('$') {
        return Err(TopicError::Reserved);
    }
    Ok(())
}

/// Parses a generated filter and name, both of which are valid by construction.
fn parse_valid(filter: &str, name: &str) -> (TopicFilter, TopicName) {
    let parsed_filter = TopicFilter::parse(filter, &limits()).expect("a generated filter is valid");
    let parsed_name = TopicName::parse(name, &limits()).expect("a generated name is valid");
    (parsed_filter, parsed_name)
}

proptest! {
    #[test]
    fn every_frame_round_trips_through_encode_and_decode(frame in frame()) {
        let mut buf = encode(std::slice::from_ref(&frame));
        let encoded_len = buf.len();
        prop_assert_eq!(
            decode_frame(&buf, DEFAULT_MAX_FRAME_BYTES),
            Ok((frame.clone(), encoded_len))
        );
        prop_assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(Some(frame)));
        prop_assert!(buf.is_empty(), "the decoder consumes exactly the frame");
    }

    #[test]
    fn any_split_of_an_encoded_stream_decodes_to_the_same_frames(
        frames in vec(frame(), 1..6),
        cuts in vec(any::<Index>(), 0..8),
    ) {
        let stream = encode(&frames);
        let mut cut_points: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len())).collect();
        cut_points.push(stream.len());
        cut_points.sort_unstable();
        let decoder = FrameDecoder::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut start = 0;
        for end in cut_points {
            buf.extend_from_slice(&stream[start..end]);
            start = end;
            while let Some(frame) = decoder.decode(&mut buf).expect("a valid stream decodes") {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty(), "no bytes are left after the last frame");
    }

    #[test]
    fn filter_matching_agrees_with_the_reference_matcher((filter, name) in filter_and_name()) {
        let (parsed_filter, parsed_name) = parse_valid(&filter, &name);
        prop_assert_eq!(
            parsed_filter.matches(&parsed_name),
            reference_matches(&filter, &name),
            "{} against {}", filter, name
        );
    }

    #[test]
    fn a_filter_derived_from_a_name_matches_it((filter, name) in derived_filter_and_name()) {
        let (parsed_filter, parsed_name) = parse_valid(&filter, &name);
        prop_assert!(parsed_filter.matches(&parsed_name), "{} against {}", filter, name);
    }

    #[test]
    fn names_refuse_a_wildcard_anywhere(
        tokens in name_tokens(),
        at in any::<Index>(),
        wildcard in prop_oneof![Just('*'), Just('>')],
        whole_token in any::<bool>(),
    ) {
        let mut tokens = tokens;
        let position = at.index(tokens.len());
        if whole_token {
            tokens[position] = wildcard.to_string();
        } else {
            tokens[position].push(wildcard);
        }
        let name = tokens.join(".");
        prop_assert_eq!(TopicName::parse(&name, &limits()), Err(TopicError::WildcardInName));
    }

    #[test]
    fn the_one_pass_name_check_agrees_with_the_rules_as_first_written(
        topic in topic_like(),
        max_bytes in 1usize..32,
        max_depth in 1usize..6,
    ) {
        let limits = TopicLimits { max_bytes, max_depth };
        prop_assert_eq!(
            TopicName::parse(&topic, &limits).map(|_| ()),
            reference_name(&topic, &limits)
        );
        // A filter applies the same common rules first.
        if let Err(error) = reference_common(&topic, &limits) {
            prop_assert_eq!(TopicFilter::parse(&topic, &limits).map(|_| ()), Err(error));
        }
    }

    #[test]
    fn names_and_filters_refuse_an_empty_token(
        tokens in name_tokens(),
        at in any::<Index>(),
    ) {
        let mut tokens = tokens;
        let position = at.index(tokens.len() + 1);
        tokens.insert(position, String::new());
        let topic = tokens.join(".");
        prop_assert_eq!(
            TopicName::parse(&topic, &limits()),
            Err(TopicError::EmptyToken { position })
        );
        prop_assert_eq!(
            TopicFilter::parse(&topic, &limits()),
            Err(TopicError::EmptyToken { position })
        );
    }
}

// The hand-written hot frames (`codec::hot_frames`) against the reference (rmp-serde) path.

/// Integers at the boundaries between MessagePack's integer forms, and anywhere.
fn number() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=300,
        65_500u64..=65_600,
        4_294_967_200u64..=4_294_967_400,
        any::<u64>(),
    ]
}

/// Lengths at the boundaries between MessagePack's string, byte string and array forms.
fn boundary_length() -> impl Strategy<Value = usize> {
    prop_oneof![0usize..=40, 250usize..=260, 65_530usize..=65_540]
}

fn sized_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => text(),
        1 => boundary_length().prop_map(|len| "t".repeat(len)),
    ]
}

fn sized_payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        3 => payload(),
        1 => boundary_length().prop_map(|len| Bytes::from(vec![0x5a; len])),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    delivery_with(number(), content_with(number, sized_text, sized_payload))
}

/// Any of the frames the codec encodes and decodes by hand, sized across the forms' boundaries.
fn hot_frame() -> impl Strategy<Value = Frame> {
    let publish = publish_with(content_with(number, sized_text, sized_payload));
    let datagram = (number(), delivery()).prop_map(|(subscription, message)| {
        Frame::Datagram(DatagramDelivery {
            subscription,
            message,
        })
    });
    let publish_ack = (number(), any::<bool>()).prop_map(publish_ack_frame);
    let ack = (number(), vec((number(), number()), 0..20)).prop_map(ack_frame);
    prop_oneof![
        publish.boxed(),
        delivery().prop_map(Frame::Message).boxed(),
        datagram.boxed(),
        publish_ack.boxed(),
        ack.boxed(),
    ]
}

/// The frame's body (no length prefix) as the reference path encodes it.
fn reference_body(frame: &Frame) -> Vec<u8> {
    let mut buf = BytesMut::new();
    reference::encode_frame(frame, &mut buf, u32::MAX).expect("a generated frame encodes");
    buf[LENGTH_PREFIX_BYTES..].to_vec()
}

fn with_length_prefix(body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a test body is small");
    [&len.to_be_bytes()[..], body].concat()
}

/// Bytes that start MessagePack values, so that edits often make another valid form.
const MARKERS: &[u8] = &[
    0x00, 0x01, 0x7f, 0x80, 0x81, 0x82, 0x90, 0x92, 0x97, 0x98, 0x99, 0x9f, 0xa0, 0xa3, 0xa7, 0xbf,
    0xc0, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xca, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd9, 0xda, 0xdb,
    0xdc, 0xdd, 0xde, 0xdf, 0xe0, 0xff,
];

/// One change to an encoded body.
#[derive(Debug, Clone)]
enum Edit {
    Overwrite(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

impl Edit {
    fn apply(&self, body: &mut Vec<u8>) {
        if body.is_empty() {
            return;
        }
        let len = body.len();
        match self {
            Edit::Overwrite(at, byte) => body[at.index(len)] = *byte,
            Edit::Insert(at, byte) => body.insert(at.index(len + 1), *byte),
            Edit::Remove(at) => {
                body.remove(at.index(len));
            }
            Edit::Truncate(at) => body.truncate(at.index(len)),
        }
    }
}

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![any::<u8>(), proptest::sample::select(MARKERS)];
    prop_oneof![
        4 => (any::<Index>(), byte.clone()).prop_map(|(at, byte)| Edit::Overwrite(at, byte)),
        1 => (any::<Index>(), byte).prop_map(|(at, byte)| Edit::Insert(at, byte)),
        1 => any::<Index>().prop_map(Edit::Remove),
        1 => any::<Index>().prop_map(Edit::Truncate),
    ]
}

/// Where a `Publish`'s or `Message`'s field array starts: after the frame's map marker and its
/// seven-letter name.
const FIELDS_AT: usize = 9;

/// Form choices for [`wire_forms::write_in_forms`]: mostly the encoder's own form (0), so that
/// a body usually differs from it in a value or two.
fn form_choices() -> impl Strategy<Value = Vec<u8>> {
    vec(prop_oneof![6 => Just(0u8), 1 => any::<u8>()], 0..48)
}

proptest! {
    #[test]
    fn a_hot_frame_in_any_wire_form_decodes_as_the_reference_decodes_it(
        frame in hot_frame(),
        choices in form_choices(),
    ) {
        let wire = wire_forms::to_wire(&frame).expect("a hot frame");
        let body = wire_forms::write_in_forms(&wire, &choices);
        let reference = reference::decode_body(&body);
        if let Some(by_hand) = hot_frames::decode(&body) {
            prop_assert_eq!(Ok(by_hand), reference.clone(), "the hand decoder accepted it");
        }
        let decoded = decode_frame(&with_length_prefix(&body), u32::MAX);
        prop_assert_eq!(decoded.map(|(frame, _)| frame), reference);
        if choices.iter().all(|&choice| choice == 0) {
            prop_assert_eq!(hot_frames::decode(&body), Some(frame), "the encoder's own form");
        }
    }

    #[test]
    fn every_frame_encodes_to_the_reference_encoding(
        frame in prop_oneof![frame(), hot_frame()],
    ) {
        let mut encoded = BytesMut::new();
        encode_frame(&frame, &mut encoded, u32::MAX).expect("a generated frame encodes");
        let mut reference = BytesMut::new();
        reference::encode_frame(&frame, &mut reference, u32::MAX).expect("it encodes");
        prop_assert_eq!(encoded, reference);
    }

    #[test]
    fn the_borrowed_encoders_write_the_encoding_of_the_owned_frame(frame in hot_frame()) {
        let mut borrowed = BytesMut::new();
        match &frame {
            Frame::Publish(publish) => {
                encode_publish(&PublishRef::from(publish), &mut borrowed, u32::MAX)
            }
            Frame::Message(delivery) => {
                encode_delivery(&DeliveryRef::from(delivery), &mut borrowed, u32::MAX)
            }
            Frame::Datagram(datagram) => encode_datagram(
                datagram.subscription,
                &DeliveryRef::from(&datagram.message),
                &mut borrowed,
                u32::MAX,
            ),
            _ => return Ok(()),
        }
        .expect("a generated frame encodes");
        prop_assert_eq!(borrowed.to_vec(), with_length_prefix(&reference_body(&frame)));
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_by_the_hand_encoder_as_by_the_reference(
        frame in hot_frame(),
        short_by in 1u32..4,
    ) {
        let size = u32::try_from(reference_body(&frame).len()).expect("a test frame is small");
        let mut buf = BytesMut::from(&b"before"[..]);
        let refused = encode_frame(&frame, &mut buf, size - short_by);
        let is_too_large = matches!(
            refused,
            Err(EncodeError::FrameTooLarge { size: refused_size, .. })
                if refused_size == size as usize
        );
        prop_assert!(is_too_large, "{:?}", refused);
        prop_assert_eq!(&buf[..], b"before", "a refused frame leaves the buffer as it was");
        encode_frame(&frame, &mut buf, size).expect("a frame at the limit encodes");
    }

    #[test]
    fn the_hand_decoder_takes_every_reference_encoding_of_a_hot_frame(frame in hot_frame()) {
        let body = reference_body(&frame);
        prop_assert_eq!(hot_frames::decode(&body), Some(frame.clone()));
        prop_assert_eq!(reference::decode_body(&body), Ok(frame));
    }

    #[test]
    fn an_edited_body_decodes_as_the_reference_decodes_it(
        frame in hot_frame(),
        edits in vec(edit(), 1..4),
    ) {
        let mut body = reference_body(&frame);
        for edit in &edits {
            edit.apply(&mut body);
        }
        let reference = reference::decode_body(&body);
        if let Some(by_hand) = hot_frames::decode(&body) {
            prop_assert_eq!(Ok(by_hand), reference.clone(), "the hand decoder accepted it");
        }
        if !body.is_empty() {
            let decoded = decode_frame(&with_length_prefix(&body), u32::MAX);
            prop_assert_eq!(decoded.map(|(frame, _)| frame), reference);
        }
    }

    #[test]
    fn decoding_with_a_topic_memo_gives_the_same_frames(
        frames in vec(hot_frame(), 1..8),
        same_topic in vec(any::<bool>(), 8),
        edits in vec(edit(), 0..3),
    ) {
        // As on a stream, a frame often names the topic of the one before; every second body
        // is edited, so that a memo also meets bodies in other forms and broken ones.
        let frames = with_repeated_topics(frames, &same_topic);
        let mut memo = TopicMemo::default();
        let mut stream = BytesMut::new();
        for (index, frame) in frames.iter().enumerate() {
            let mut body = reference_body(frame);
            if index % 2 == 1 {
                for edit in &edits {
                    edit.apply(&mut body);
                }
            }
            let plain = hot_frames::decode(&body);
            let with_memo = hot_frames::decode_with(&body, &mut memo);
            prop_assert_eq!(&with_memo, &plain);
            if let Some(topic) = with_memo.and_then(topic_of) {
                memo.give_back(topic);
            }
            stream.extend_from_slice(&with_length_prefix(&reference_body(frame)));
        }
        let decoder = FrameDecoder::default();
        let mut memo = TopicMemo::default();
        let mut decoded = Vec::new();
        while let Some(frame) = decoder.decode_with(&mut stream, &mut memo).expect("valid") {
            if let Some(topic) = topic_of(frame.clone()) {
                memo.give_back(topic);
            }
            decoded.push(frame);
        }
        prop_assert_eq!(decoded, frames);
    }

    #[test]
    fn decoding_into_one_publish_gives_the_same_frames_and_errors(
        frames in vec(hot_frame(), 1..8),
        same_topic in vec(any::<bool>(), 8),
        edits in vec(edit(), 0..3),
    ) {
        // A publish stream's reader decodes every frame into one `Publish`.
        decodes_into_one_as_decode_does(
            &with_repeated_topics(frames, &same_topic),
            &edits,
            FrameDecoder::decode_publish_into,
            |frame| match frame {
                Frame::Publish(publish) => Some(publish),
                _ => None,
            },
        )?;
    }

    #[test]
    fn decoding_into_one_delivery_gives_the_same_frames_and_errors(
        frames in vec(hot_frame(), 1..8),
        same_topic in vec(any::<bool>(), 8),
        edits in vec(edit(), 0..3),
    ) {
        // A subscription stream's reader decodes every delivery into one `Delivery`.
        decodes_into_one_as_decode_does(
            &with_repeated_topics(frames, &same_topic),
            &edits,
            FrameDecoder::decode_delivery_into,
            |frame| match frame {
                Frame::Message(delivery) => Some(delivery),
                _ => None,
            },
        )?;
    }

    #[test]
    fn a_delivery_from_a_broker_that_predates_redelivered_decodes_by_hand(
        delivery in delivery(),
    ) {
        let mut body = reference_body(&Frame::Message(delivery.clone()));
        prop_assert_eq!(body[FIELDS_AT], 0x98, "eight fields");
        body[FIELDS_AT] = 0x97;
        body.pop(); // `redelivered`, the last field: one byte.
        let older = Frame::Message(Delivery {
            redelivered: false,
            ..delivery
        });
        prop_assert_eq!(hot_frames::decode(&body), Some(older.clone()));
        prop_assert_eq!(reference::decode_body(&body), Ok(older));
    }

    #[test]
    fn a_hot_frame_with_a_newer_peers_trailing_field_decodes_through_the_reference(
        frame in prop_oneof![
            delivery().prop_map(Frame::Message),
            hot_frame().prop_filter("a publish", |frame| matches!(frame, Frame::Publish(_))),
        ],
        extra in any::<u64>(),
    ) {
        let mut body = reference_body(&frame);
        prop_assert_eq!(body[FIELDS_AT], 0x98, "eight fields");
        body[FIELDS_AT] = 0x99;
        body.push(0xcf); // A ninth field: a u64.
        body.extend_from_slice(&extra.to_be_bytes());
        prop_assert_eq!(hot_frames::decode(&body), None, "left to the reference path");
        let decoded = decode_frame(&with_length_prefix(&body), u32::MAX);
        prop_assert_eq!(decoded.map(|(frame, _)| frame), Ok(frame));
    }
}

/// `frames`, where each `Publish`, `Message` or `Datagram` whose `same_topic` entry is set names
/// the topic of the frame before it (when that one has a topic).
fn with_repeated_topics(mut frames: Vec<Frame>, same_topic: &[bool]) -> Vec<Frame> {
    for index in 1..frames.len() {
        if !same_topic.get(index).copied().unwrap_or(false) {
            continue;
        }
        let Some(previous) = topic_of(frames[index - 1].clone()) else {
            continue;
        };
        match &mut frames[index] {
            Frame::Publish(publish) => publish.topic = previous,
            Frame::Message(delivery) => delivery.topic = previous,
            Frame::Datagram(datagram) => datagram.message.topic = previous,
            _ => {}
        }
    }
    frames
}

/// The topic a frame names, if it is one that names a topic.
fn topic_of(frame: Frame) -> Option<String> {
    match frame {
        Frame::Publish(publish) => Some(publish.topic),
        Frame::Message(delivery) => Some(delivery.topic),
        Frame::Datagram(datagram) => Some(datagram.message.topic),
        _ => None,
    }
}

/// Each of `frames`, with the topic of the one before or not, in the encoder's form, in
/// another or broken (every second body edited by `edits`), decodes into one value as
/// `decode` decodes it, whatever the previous frame left in that value: the frame `wanted`
/// takes is written into it, any other is returned, and an error is the same error.
fn decodes_into_one_as_decode_does<T: Default + PartialEq + std::fmt::Debug>(
    frames: &[Frame],
    edits: &[Edit],
    decode_into: fn(
        &FrameDecoder,
        &mut BytesMut,
        &mut T,
    ) -> Result<Option<DecodedInto>, DecodeError>,
    wanted: fn(Frame) -> Option<T>,
) -> Result<(), TestCaseError> {
    let decoder = FrameDecoder::default();
    let mut into = T::default();
    for (index, frame) in frames.iter().enumerate() {
        let mut body = reference_body(frame);
        if index % 2 == 1 {
            for edit in edits {
                edit.apply(&mut body);
            }
        }
        if body.is_empty() {
            continue;
        }
        let framed = with_length_prefix(&body);
        let plain = decoder.decode(&mut BytesMut::from(&framed[..]));
        let mut buf = BytesMut::from(&framed[..]);
        let decoded = decode_into(&decoder, &mut buf, &mut into);
        prop_assert!(buf.is_empty() || decoded.is_err());
        match (plain, decoded) {
            (Ok(Some(expected)), Ok(Some(DecodedInto::Written))) => {
                let expected = wanted(expected);
                prop_assert_eq!(Some(&into), expected.as_ref());
            }
            (Ok(Some(expected)), Ok(Some(DecodedInto::Other(other)))) => {
                prop_assert!(wanted(expected.clone()).is_none());
                prop_assert_eq!(other, expected);
            }
            (Err(expected), Err(err)) => prop_assert_eq!(err, expected),
            (plain, decoded) => {
                prop_assert!(
                    false,
                    "decode gave {:?}, decoding into one {:?}",
                    plain,
                    decoded
                );
            }
        }
    }
    Ok(())
}
