//! The hot frames written in any of the MessagePack forms a peer could send, valid or not: a
//! test's own writer, independent of the codec, for holding the hand-written decoder to the
//! reference path on near-valid input.
//!
//! A frame becomes a [`Wire`] tree; [`write_in_forms`] writes it, taking one choice per value
//! from a list: 0 (and a list that ran out) is the form the encoder writes, other choices pick
//! another form — a wider integer or length, a signed or negative integer, a string as bytes
//! or the other way round, invalid UTF-8, a struct as a map or with a field added or missing,
//! an array that declares the wrong length, the frame type by index, a wrong type.

use cassini_protocol::{Delivery, Frame};

/// A value as the frame's serde description gives it.
#[derive(Debug, Clone)]
pub(crate) enum Wire {
    Uint(u64),
    Bool(bool),
    Nil,
    Str(Vec<u8>),
    Bin(Vec<u8>),
    /// A tuple or sequence: an array, and no trailing elements allowed.
    Tuple(Vec<Wire>),
    /// A struct: an array of its fields (or a map keyed by their names).
    Struct(&'static [&'static str], Vec<Wire>),
    /// A frame: a one-entry map from the variant's name (or index) to its struct.
    Variant(&'static str, u64, Box<Wire>),
}

const PUBLISH: &[&str] = &[
    "topic",
    "headers",
    "payload",
    "message_id",
    "reply_to",
    "retain",
    "to_session",
    "ack",
];
const DELIVERY: &[&str] = &[
    "sequence",
    "topic",
    "headers",
    "payload",
    "message_id",
    "reply_to",
    "retained",
    "redelivered",
];
const DATAGRAM: &[&str] = &["subscription", "message"];
const PUBLISH_ACK: &[&str] = &["message_id", "duplicate"];
const ACK: &[&str] = &["subscription", "ranges"];
const SEQUENCE_RANGE: &[&str] = &["from", "to"];

fn str(text: &str) -> Wire {
    Wire::Str(text.as_bytes().to_vec())
}

fn optional<T>(value: Option<T>, wire: impl FnOnce(T) -> Wire) -> Wire {
    value.map_or(Wire::Nil, wire)
}

fn headers(headers: &[(String, String)]) -> Wire {
    Wire::Tuple(
        headers
            .iter()
            .map(|(key, value)| Wire::Tuple(vec![str(key), str(value)]))
            .collect(),
    )
}

fn delivery(delivery: &Delivery) -> Wire {
    Wire::Struct(
        DELIVERY,
        vec![
            Wire::Uint(delivery.sequence),
            str(&delivery.topic),
            headers(&delivery.headers),
            Wire::Bin(delivery.payload.to_vec()),
            optional(delivery.message_id, Wire::Uint),
            optional(delivery.reply_to.as_deref(), str),
            Wire::Bool(delivery.retained),
            Wire::Bool(delivery.redelivered),
        ],
    )
}

/// The tree of a hot frame; `None` for any other frame.
pub(crate) fn to_wire(frame: &Frame) -> Option<Wire> {
    let (name, index, content) = match frame {
        Frame::Publish(publish) => (
            "Publish",
            11,
            Wire::Struct(
                PUBLISH,
                vec![
                    str(&publish.topic),
                    headers(&publish.headers),
                    Wire::Bin(publish.payload.to_vec()),
                    optional(publish.message_id, Wire::Uint),
                    optional(publish.reply_to.as_deref(), str),
                    Wire::Bool(publish.retain),
                    optional(publish.to_session, |session| {
                        Wire::Tuple(session.0.iter().map(|&b| Wire::Uint(b.into())).collect())
                    }),
                    Wire::Bool(publish.ack),
                ],
            ),
        ),
        Frame::Message(message) => ("Message", 16, delivery(message)),
        Frame::Datagram(datagram) => (
            "Datagram",
            18,
            Wire::Struct(
                DATAGRAM,
                vec![
                    Wire::Uint(datagram.subscription),
                    delivery(&datagram.message),
                ],
            ),
        ),
        Frame::PublishAck(ack) => (
            "PublishAck",
            14,
            Wire::Struct(
                PUBLISH_ACK,
                vec![Wire::Uint(ack.message_id), Wire::Bool(ack.duplicate)],
            ),
        ),
        Frame::Ack(ack) => (
            "Ack",
            7,
            Wire::Struct(
                ACK,
                vec![
                    Wire::Uint(ack.subscription),
                    Wire::Tuple(
                        ack.ranges
                            .iter()
                            .map(|range| {
                                Wire::Struct(
                                    SEQUENCE_RANGE,
                                    vec![Wire::Uint(range.from), Wire::Uint(range.to)],
                                )
                            })
                            .collect(),
                    ),
                ],
            ),
        ),
        _ => return None,
    };
    Some(Wire::Variant(name, index, Box::new(content)))
}

/// Writes `wire`, each value in the form its choice picks (see the module above).
pub(crate) fn write_in_forms(wire: &Wire, choices: &[u8]) -> Vec<u8> {
    let mut writer = FormWriter {
        choices: choices.iter(),
        out: Vec::new(),
    };
    writer.value(wire);
    writer.out
}

struct FormWriter<'a> {
    choices: std::slice::Iter<'a, u8>,
    out: Vec<u8>,
}

impl FormWriter<'_> {
    /// Which of `forms` forms to write: 0 is the encoder's own.
    fn choose(&mut self, forms: usize) -> usize {
        usize::from(self.choices.next().copied().unwrap_or(0)) % forms
    }

    fn put(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn value(&mut self, wire: &Wire) {
        match wire {
            Wire::Uint(value) => self.uint(*value),
            Wire::Bool(value) => match self.choose(3) {
                0 => self.put(&[if *value { 0xc3 } else { 0xc2 }]),
                1 => self.put(&[u8::from(*value)]),
                _ => self.put(&[0xc0]),
            },
            Wire::Nil => match self.choose(3) {
                0 => self.put(&[0xc0]),
                1 => self.put(&[0xc2]),
                _ => self.put(&[0x90]),
            },
            Wire::Str(bytes) => self.str(bytes),
            Wire::Bin(bytes) => self.bin(bytes),
            Wire::Tuple(items) => {
                self.array_header(items.len());
                for item in items {
                    self.value(item);
                }
            }
            Wire::Struct(names, fields) => self.structure(names, fields),
            Wire::Variant(name, index, content) => {
                match self.choose(5) {
                    0 => self.put(&[0x81]),
                    1 => self.put(&[0xde, 0, 1]),
                    2 => self.put(&[0x82]),
                    3 => {
                        // A bare name: the form of a variant without content.
                        self.canonical_str(name.as_bytes());
                        return;
                    }
                    _ => self.put(&[0x80]),
                }
                match self.choose(4) {
                    0 => self.canonical_str(name.as_bytes()),
                    1 => self.canonical_bin(name.as_bytes()),
                    2 => self.canonical_uint(*index),
                    _ => self.canonical_str(&name.as_bytes()[1..]),
                }
                self.value(content);
            }
        }
    }

    fn uint(&mut self, value: u64) {
        let be = value.to_be_bytes();
        match self.choose(12) {
            1 if value <= 0xff => self.put(&[0xcc, be[7]]),
            2 if value <= 0xffff => self.put(&[0xcd, be[6], be[7]]),
            3 if value <= 0xffff_ffff => self.put(&[0xce, be[4], be[5], be[6], be[7]]),
            4 => {
                self.put(&[0xcf]);
                self.put(&be);
            }
            5 if value <= 0x7f => self.put(&[0xd0, be[7]]),
            6 if value <= 0x7fff => self.put(&[0xd1, be[6], be[7]]),
            7 if value <= 0x7fff_ffff => self.put(&[0xd2, be[4], be[5], be[6], be[7]]),
            8 if value <= 0x7fff_ffff_ffff_ffff => {
                self.put(&[0xd3]);
                self.put(&be);
            }
            // Negative: -1 as a negative fixint, and a negative i8 whose byte reads as a u8.
            9 => self.put(&[0xff]),
            10 => self.put(&[0xd0, 0x80 | be[7]]),
            11 => {
                self.put(&[0xcb]);
                self.put(&(value as f64).to_be_bytes());
            }
            _ => self.canonical_uint(value),
        }
    }

    fn canonical_uint(&mut self, value: u64) {
        let be = value.to_be_bytes();
        match value {
            0..=0x7f => self.put(&[be[7]]),
            0x80..=0xff => self.put(&[0xcc, be[7]]),
            0x100..=0xffff => self.put(&[0xcd, be[6], be[7]]),
            0x1_0000..=0xffff_ffff => self.put(&[0xce, be[4], be[5], be[6], be[7]]),
            _ => {
                self.put(&[0xcf]);
                self.put(&be);
            }
        }
    }

    fn str(&mut self, bytes: &[u8]) {
        match self.choose(6) {
            1 => self.sized_header([None, Some(0xd9), Some(0xda), Some(0xdb)], bytes.len()),
            2 => self.sized_header([None, None, Some(0xda), Some(0xdb)], bytes.len()),
            3 => return self.canonical_bin(bytes),
            4 if !bytes.is_empty() => {
                // Not UTF-8: a lone continuation byte first.
                let mut invalid = bytes.to_vec();
                invalid[0] = 0x80;
                return self.canonical_str(&invalid);
            }
            5 => return self.canonical_uint(0),
            _ => return self.canonical_str(bytes),
        }
        self.put(bytes);
    }

    fn canonical_str(&mut self, bytes: &[u8]) {
        match bytes.len() {
            // The match arm bounds the length.
            len @ 0..=31 => self.put(&[0xa0 | len as u8]),
            len => self.sized_header([None, Some(0xd9), Some(0xda), Some(0xdb)], len),
        }
        self.put(bytes);
    }

    fn bin(&mut self, bytes: &[u8]) {
        match self.choose(6) {
            1 => self.sized_header([None, None, Some(0xc5), Some(0xc6)], bytes.len()),
            2 => self.sized_header([None, None, None, Some(0xc6)], bytes.len()),
            3 => return self.canonical_str(bytes),
            4 => {
                self.array_len(bytes.len(), 0);
                for &byte in bytes {
                    self.canonical_uint(byte.into());
                }
                return;
            }
            5 => return self.put(&[0xc0]),
            _ => return self.canonical_bin(bytes),
        }
        self.put(bytes);
    }

    fn canonical_bin(&mut self, bytes: &[u8]) {
        self.sized_header([None, Some(0xc4), Some(0xc5), Some(0xc6)], bytes.len());
        self.put(bytes);
    }

    /// A length header with the first marker available for `len` among a fixed form (not
    /// used here), 8-, 16- and 32-bit lengths.
    fn sized_header(&mut self, markers: [Option<u8>; 4], len: usize) {
        let fits = [false, len <= 0xff, len <= 0xffff, true];
        let width = (1..4)
            .find(|&width| fits[width] && markers[width].is_some())
            .unwrap_or(3);
        let marker = markers[width].unwrap_or(0xc1);
        let be = (len as u32).to_be_bytes();
        match width {
            1 => self.put(&[marker, be[3]]),
            2 => self.put(&[marker, be[2], be[3]]),
            _ => self.put(&[marker, be[0], be[1], be[2], be[3]]),
        }
    }

    /// An array header for `len` elements, in the form `form` picks (0 the shortest).
    fn array_len(&mut self, len: usize, form: usize) {
        let be = (len as u32).to_be_bytes();
        match form {
            1 if len <= 0xffff => self.put(&[0xdc, be[2], be[3]]),
            2 => self.put(&[0xdd, be[0], be[1], be[2], be[3]]),
            _ if len <= 15 => self.put(&[0x90 | be[3]]),
            _ if len <= 0xffff => self.put(&[0xdc, be[2], be[3]]),
            _ => self.put(&[0xdd, be[0], be[1], be[2], be[3]]),
        }
    }

    /// The header of a tuple's array, declaring its length or one more or one fewer.
    fn array_header(&mut self, len: usize) {
        match self.choose(5) {
            3 => self.array_len(len + 1, 0),
            4 if len > 0 => self.array_len(len - 1, 0),
            form => self.array_len(len, form),
        }
    }

    fn structure(&mut self, names: &[&str], fields: &[Wire]) {
        match self.choose(6) {
            1 => {
                // A map keyed by field name.
                self.put(&[0x80 | fields.len() as u8]);
                for (name, field) in names.iter().zip(fields) {
                    self.canonical_str(name.as_bytes());
                    self.value(field);
                }
            }
            2 => {
                // A newer peer's: one more field at the end.
                self.array_len(fields.len() + 1, 0);
                fields.iter().for_each(|field| self.value(field));
                self.canonical_str(b"newer");
            }
            3 => {
                // An older peer's: the last field left off.
                self.array_len(fields.len() - 1, 0);
                fields[..fields.len() - 1]
                    .iter()
                    .for_each(|field| self.value(field));
            }
            4 => {
                // A length that does not match the fields that follow.
                self.array_len(fields.len() + 1, 0);
                fields.iter().for_each(|field| self.value(field));
            }
            form => {
                self.array_len(fields.len(), if form == 5 { 1 } else { 0 });
                fields.iter().for_each(|field| self.value(field));
            }
        }
    }
}
