//! Properties of the codec and of topics that must hold for every value, not just the examples
//! in the unit tests: frames round-trip, any split of a stream decodes the same, filter matching
//! agrees with a reference, names refuse wildcards and empty tokens, and the one-pass topic
//! check refuses exactly what the rules as first written refuse, with the same error.
//!
//! Case counts are proptest's default (256 per property); set `PROPTEST_CASES` to run more.

#![allow(clippy::expect_used, clippy::panic)] // A failed property in a test panics on purpose.

#[allow(dead_code, reason = "these properties use only the reference matcher")]
#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES;
use cassini_protocol::{
    decode_frame, encode_frame, Ack, AckOptions, Delivery, DeliveryClass, ErrorCode, ErrorFrame,
    Frame, FrameDecoder, Gap, GapReason, GoingAway, Hello, Limits, NoResponders, OverflowPolicy,
    Ping, Publish, PublishAck, PublishRejected, ResumePosition, SequenceRange, SessionId,
    Subscribe, SubscribeOptions, Subscribed, SubscriptionEnded, SubscriptionStart, TopicError,
    TopicFilter, TopicLimits, TopicName, Unsubscribe, Unsubscribed, Welcome,
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
    let publish = (
        text(),
        headers(),
        payload(),
        any::<Option<u64>>(),
        proptest::option::of(text()),
        any::<bool>(),
        proptest::option::of(session_id()),
        any::<bool>(),
    )
        .prop_map(
            |(topic, headers, payload, message_id, reply_to, retain, to_session, ack)| {
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
        );
    let publish_ack = (any::<u64>(), any::<bool>()).prop_map(|(message_id, duplicate)| {
        Frame::PublishAck(PublishAck {
            message_id,
            duplicate,
        })
    });
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
    let message = (
        any::<u64>(),
        text(),
        headers(),
        payload(),
        any::<Option<u64>>(),
        proptest::option::of(text()),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(sequence, topic, headers, payload, message_id, reply_to, retained, redelivered)| {
                Frame::Message(Delivery {
                    sequence,
                    topic,
                    headers,
                    payload,
                    message_id,
                    reply_to,
                    retained,
                    redelivered,
                })
            },
        );
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
        .prop_map(|(subscription, ranges)| {
            Frame::Ack(Ack {
                subscription,
                ranges: ranges
                    .into_iter()
                    .map(|(from, to)| SequenceRange { from, to })
                    .collect(),
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
