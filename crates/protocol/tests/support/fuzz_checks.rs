//! The properties the decoders and topic parsers must keep on *any* input, written once.
//!
//! The fuzz targets in `fuzz/fuzz_targets/` include this file with `#[path]` and run these checks
//! on the inputs libFuzzer makes; `tests/fuzz_corpus.rs` runs the same checks on the committed
//! corpus in `fuzz/corpus/` under plain `cargo test`. Every check panics when a property fails,
//! which is what both libFuzzer and the test harness report.
//!
//! This module must not depend on anything but `cassini-protocol` and `bytes`: the fuzz crate
//! builds it outside the workspace.

// A failed check is a panic on purpose: that is how libFuzzer and the test harness see it.
#![allow(clippy::panic)]

use bytes::BytesMut;
use cassini_protocol::codec::{reference, LENGTH_PREFIX_BYTES};
use cassini_protocol::{
    decode_frame, encode_frame, DecodeError, Frame, FrameDecoder, TopicFilter, TopicLimits,
    TopicName,
};

/// How a run of [`FrameDecoder::decode`] over a stream ended.
#[derive(Debug, PartialEq)]
pub(crate) enum StreamEnd {
    /// The decoder asked for more bytes; this many were left unconsumed in the buffer.
    NeedsMore {
        /// Bytes of a partial frame still in the buffer.
        leftover: usize,
    },
    /// The decoder refused the stream.
    Failed(DecodeError),
}

/// Everything a decoder made of one stream: the frames in order, then how it ended.
#[derive(Debug, PartialEq)]
pub(crate) struct StreamOutcome {
    /// Every frame decoded, in order.
    pub(crate) frames: Vec<Frame>,
    /// Why decoding stopped.
    pub(crate) end: StreamEnd,
}

/// Decodes `input` as one stream, repeatedly, until the decoder needs more bytes or fails.
///
/// On every step it also checks that the incremental decoder and [`decode_frame`] agree on the
/// same bytes, that both agree with the reference (rmp-serde) path, that a partial frame is never
/// consumed, and that every decoded frame round-trips.
pub(crate) fn check_frame_decoder(input: &[u8]) -> StreamOutcome {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::from(input);
    let mut frames = Vec::new();
    loop {
        let before = buf.clone();
        let whole = decode_frame(&before, decoder.max_frame_bytes());
        check_body_decodes_as_the_reference_decodes_it(&before, &whole, decoder.max_frame_bytes());
        match decoder.decode(&mut buf) {
            Ok(Some(frame)) => {
                let consumed = before.len() - buf.len();
                assert_eq!(
                    whole,
                    Ok((frame.clone(), consumed)),
                    "decode_frame disagrees with FrameDecoder::decode"
                );
                check_frame_round_trips(&frame);
                frames.push(frame);
            }
            Ok(None) => {
                assert_eq!(buf, before, "a partial frame must not be consumed");
                assert!(
                    matches!(whole, Err(DecodeError::Truncated { .. })),
                    "FrameDecoder waits for more bytes but decode_frame said {whole:?}"
                );
                let leftover = buf.len();
                return StreamOutcome {
                    frames,
                    end: StreamEnd::NeedsMore { leftover },
                };
            }
            Err(err) => {
                assert_eq!(
                    whole,
                    Err(err.clone()),
                    "decode_frame disagrees with FrameDecoder::decode"
                );
                return StreamOutcome {
                    frames,
                    end: StreamEnd::Failed(err),
                };
            }
        }
    }
}

/// When `stream` starts with a whole frame of an allowed length, checks that `decoded` (what
/// [`decode_frame`] made of it, hand-written for the hot frames) is what the reference path
/// makes of its body: the same frame, or the same error.
fn check_body_decodes_as_the_reference_decodes_it(
    stream: &[u8],
    decoded: &Result<(Frame, usize), DecodeError>,
    max_frame_bytes: u32,
) {
    let Some(prefix) = stream.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return;
    };
    let declared = u32::from_be_bytes(*prefix);
    if declared == 0 || declared > max_frame_bytes {
        return;
    }
    let Some(body) = stream.get(LENGTH_PREFIX_BYTES..LENGTH_PREFIX_BYTES + declared as usize)
    else {
        return;
    };
    assert_eq!(
        decoded.clone().map(|(frame, _)| frame),
        reference::decode_body(body),
        "the decoder disagrees with the reference path"
    );
}

/// Checks that `frame` encodes, decodes back equal, and that its encoding is stable: encoding
/// the decoded frame again gives the same bytes, which are the reference path's.
pub(crate) fn check_frame_round_trips(frame: &Frame) {
    // A decoded frame may have arrived in a more compact form than the one the encoder writes,
    // so the round trip is checked without a size limit; the limit has its own unit tests.
    let mut encoded = BytesMut::new();
    assert!(
        encode_frame(frame, &mut encoded, u32::MAX).is_ok(),
        "a decoded {} frame must encode again",
        frame.kind()
    );
    let (decoded, used) = decode_frame(&encoded, u32::MAX)
        .unwrap_or_else(|err| panic!("a re-encoded {} frame must decode: {err}", frame.kind()));
    assert_eq!(used, encoded.len(), "the encoding is exactly one frame");
    assert_eq!(&decoded, frame, "a frame must decode back to itself");
    let mut encoded_again = BytesMut::new();
    assert!(encode_frame(&decoded, &mut encoded_again, u32::MAX).is_ok());
    assert_eq!(
        encoded_again, encoded,
        "encoding a frame must be deterministic"
    );
    let mut by_reference = BytesMut::new();
    assert!(reference::encode_frame(frame, &mut by_reference, u32::MAX).is_ok());
    assert_eq!(
        encoded, by_reference,
        "the encoder must write what the reference path writes"
    );
}

/// Splits a fuzz input into chunk lengths and a stream: the first byte says how many of the
/// following bytes are chunk lengths (0 to 7); the rest is the stream.
///
/// A chunk length byte `n` stands for `n + 1` bytes, and the lengths repeat in turn until the
/// stream is used up; with no lengths the stream is fed whole.
pub(crate) fn split_input(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&first, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let count = usize::from(first % 8).min(rest.len());
    let (lengths, stream) = rest.split_at(count);
    let chunk_lengths = lengths.iter().map(|&n| usize::from(n) + 1).collect();
    (chunk_lengths, stream)
}

/// Decodes a stream fed to the decoder in chunks, exactly as a connection reads it, stopping at
/// the first error.
pub(crate) fn decode_in_chunks(stream: &[u8], chunk_lengths: &[usize]) -> StreamOutcome {
    let decoder = FrameDecoder::default();
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut rest = stream;
    let mut lengths = chunk_lengths.iter().cycle();
    while !rest.is_empty() {
        let length = lengths
            .next()
            .copied()
            .unwrap_or(rest.len())
            .min(rest.len());
        let (chunk, after) = rest.split_at(length);
        rest = after;
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => {
                    return StreamOutcome {
                        frames,
                        end: StreamEnd::Failed(err),
                    }
                }
            }
        }
    }
    StreamOutcome {
        frames,
        end: StreamEnd::NeedsMore {
            leftover: buf.len(),
        },
    }
}

/// Checks that feeding a stream in chunks gives the same frames, and ends the same way, as
/// decoding it in one piece. The chunking comes from the front of `input` (see [`split_input`]).
pub(crate) fn check_frame_decoder_split(input: &[u8]) {
    let (chunk_lengths, stream) = split_input(input);
    let whole = check_frame_decoder(stream);
    let chunked = decode_in_chunks(stream, &chunk_lengths);
    assert_eq!(
        chunked, whole,
        "chunks of {chunk_lengths:?} decode differently from the whole stream"
    );
}

/// Checks topic parsing and matching on one input: the text before the first newline is tried
/// as a filter and the text after it as a name (with no newline, the whole text is both).
///
/// Parsing never panics, accepts exactly what [`reference_name_is_valid`] and
/// [`reference_filter_is_valid`] accept, every valid name is also a filter that matches it, and
/// whenever both parse, [`TopicFilter::matches`] agrees with [`reference_matches`]. Returns
/// whether the filter matched the name, or `None` when the input is not UTF-8 or either half
/// does not parse.
pub(crate) fn check_topic(input: &[u8]) -> Option<bool> {
    let text = std::str::from_utf8(input).ok()?;
    let limits = TopicLimits::default();
    let (filter_text, name_text) = text.split_once('\n').unwrap_or((text, text));
    for candidate in [filter_text, name_text] {
        check_topic_validation(candidate, &limits);
    }
    let filter = TopicFilter::parse(filter_text, &limits).ok()?;
    let name = TopicName::parse(name_text, &limits).ok()?;
    let matched = filter.matches(&name);
    assert_eq!(
        matched,
        reference_matches(filter_text, name_text),
        "{filter:?} against {name:?}"
    );
    Some(matched)
}

fn check_topic_validation(candidate: &str, limits: &TopicLimits) {
    let name = TopicName::parse(candidate, limits);
    let filter = TopicFilter::parse(candidate, limits);
    assert_eq!(
        name.is_ok(),
        reference_name_is_valid(candidate, limits),
        "TopicName::parse({candidate:?}) = {name:?}"
    );
    assert_eq!(
        filter.is_ok(),
        reference_filter_is_valid(candidate, limits),
        "TopicFilter::parse({candidate:?}) = {filter:?}"
    );
    if let Ok(name) = name {
        assert_eq!(name.as_str(), candidate);
        let Ok(filter) = filter else {
            panic!("the valid name {candidate:?} is refused as a filter")
        };
        assert!(
            filter.matches(&name),
            "a name used as a filter must match itself: {candidate:?}"
        );
    }
}

/// Whether `topic` obeys the rules shared by names and filters, as the `topic` module documents
/// them: not empty, within the limits, no whitespace or control character, no empty token.
fn reference_common_is_valid(topic: &str, limits: &TopicLimits) -> bool {
    let tokens: Vec<&str> = topic.split('.').collect();
    !topic.is_empty()
        && topic.len() <= limits.max_bytes
        && tokens.len() <= limits.max_depth
        && tokens.iter().all(|token| !token.is_empty())
        && !topic.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Whether `topic` is a valid name to publish to: the common rules, no wildcard character
/// anywhere, and not reserved (a leading `$`).
pub(crate) fn reference_name_is_valid(topic: &str, limits: &TopicLimits) -> bool {
    reference_common_is_valid(topic, limits)
        && !topic.contains(['*', '>'])
        && !topic.starts_with('$')
}

/// Whether `filter` is a valid subscription filter: the common rules, wildcards only as whole
/// tokens, and `>` only as the last token.
pub(crate) fn reference_filter_is_valid(filter: &str, limits: &TopicLimits) -> bool {
    let tokens: Vec<&str> = filter.split('.').collect();
    let last = tokens.len() - 1;
    reference_common_is_valid(filter, limits)
        && tokens
            .iter()
            .enumerate()
            .all(|(position, &token)| match token {
                "*" => true,
                ">" => position == last,
                literal => !literal.contains(['*', '>']),
            })
}

/// The matching rule, written as directly from the `topic` module documentation as possible:
/// a literal token matches the same token, `*` matches any one token, `>` as the last token
/// matches one or more remaining tokens, and a filter whose first token is a wildcard never
/// matches a reserved (`$`) topic. Both arguments must already be valid.
pub(crate) fn reference_matches(filter: &str, name: &str) -> bool {
    fn tokens_match(filter: &[&str], name: &[&str]) -> bool {
        match (filter, name) {
            ([], []) => true,
            ([">"], [_, ..]) => true,
            (["*", filter_rest @ ..], [_, name_rest @ ..]) => tokens_match(filter_rest, name_rest),
            ([literal, filter_rest @ ..], [token, name_rest @ ..]) => {
                literal == token && tokens_match(filter_rest, name_rest)
            }
            _ => false,
        }
    }
    let filter_tokens: Vec<&str> = filter.split('.').collect();
    let name_tokens: Vec<&str> = name.split('.').collect();
    let leading_wildcard = matches!(filter_tokens.first(), Some(&"*" | &">"));
    if leading_wildcard && name.starts_with('$') {
        return false;
    }
    tokens_match(&filter_tokens, &name_tokens)
}
