//! The checks of the MQTT decoder's fuzz target (`fuzz/fuzz_targets/mqtt_packets.rs`), shared
//! with `cargo test` (`tests/fuzz_corpus.rs`), which replays the corpus through them.
//!
//! The first input byte picks what the decoder expects (a `CONNECT`, or the packets of 3.1.1 or
//! 5.0 after it), the second how the rest arrives: whole, or in chunks of that many bytes. The
//! decoder must never panic, and must read the same packets and end the same way however the
//! bytes are cut.

use bytes::BytesMut;
use cassini_mqtt::packets::{decode, DecodeError, Inbound, Version};

/// The largest packet the checks allow (small, so that the size limit is reached too).
const MAX_PACKET: usize = 4096;

/// How a stream of packets ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StreamEnd {
    /// Every byte was read; the last packet may be incomplete.
    Waiting,
    /// The decoder refused the bytes.
    Failed(DecodeError),
}

/// What a stream decoded to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub(crate) packets: Vec<Inbound>,
    pub(crate) end: StreamEnd,
}

fn version_of(selector: u8) -> Option<Version> {
    match selector % 3 {
        0 => None,
        1 => Some(Version::V311),
        _ => Some(Version::V5),
    }
}

/// Decodes `chunks` as they arrive, as the gateway does: after a `CONNECT`, the version it
/// names.
fn run<'a>(mut version: Option<Version>, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut buf = BytesMut::new();
    let mut packets = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decode(&mut buf, version, MAX_PACKET) {
                Ok(Some(packet)) => {
                    if let Inbound::Connect(connect) = &packet {
                        version = Some(connect.version);
                    }
                    packets.push(packet);
                }
                Ok(None) => break,
                Err(err) => {
                    return Outcome {
                        packets,
                        end: StreamEnd::Failed(err),
                    }
                }
            }
        }
    }
    Outcome {
        packets,
        end: StreamEnd::Waiting,
    }
}

/// The fuzz target's check: whole and in chunks, the same packets and the same end.
pub(crate) fn check_packet_decoder(input: &[u8]) -> Outcome {
    let (Some(&selector), Some(&chunk)) = (input.first(), input.get(1)) else {
        return Outcome {
            packets: Vec::new(),
            end: StreamEnd::Waiting,
        };
    };
    let body = &input[2..];
    let version = version_of(selector);
    let whole = run(version, std::iter::once(body));
    let pieces = run(version, body.chunks(usize::from(chunk.max(1))));
    assert_eq!(
        whole, pieces,
        "cut into {chunk}-byte chunks, the stream decodes otherwise: {input:02x?}"
    );
    whole
}
