//! Encoding the hot frames: each knows its body's size before writing it, so the caller checks
//! the frame limit and reserves the buffer once.

use bytes::BytesMut;

use crate::codec::msgpack::{
    array_len_size, bin_size, put_array_len, put_bin, put_bool, put_fixmap_len, put_nil, put_str,
    put_uint, str_size, uint_size, BOOL_SIZE, FIXMAP_LEN_SIZE, NIL_SIZE,
};
use crate::codec::{DeliveryRef, PublishRef};
use crate::frame::{Ack, Headers, PublishAck, SessionId, SubscriptionId};

/// A frame this module encodes, by reference.
#[derive(Debug, Clone, Copy)]
pub(in crate::codec) enum HotFrame<'a> {
    Publish(PublishRef<'a>),
    Message(DeliveryRef<'a>),
    Datagram(SubscriptionId, DeliveryRef<'a>),
    PublishAck(PublishAck),
    Ack(&'a Ack),
}

/// A frame is a map of one entry, from the frame type's name to its struct.
const FRAME_ENTRIES: usize = 1;
/// A `[key, value]` header pair, and a `SequenceRange`, are arrays of two.
const PAIR_LEN: usize = 2;
const PUBLISH_FIELDS: usize = 8;
const DELIVERY_FIELDS: usize = 8;
const DATAGRAM_FIELDS: usize = 2;
const PUBLISH_ACK_FIELDS: usize = 2;
const ACK_FIELDS: usize = 2;

impl HotFrame<'_> {
    fn name(&self) -> &'static str {
        match self {
            HotFrame::Publish(_) => "Publish",
            HotFrame::Message(_) => "Message",
            HotFrame::Datagram(..) => "Datagram",
            HotFrame::PublishAck(_) => "PublishAck",
            HotFrame::Ack(_) => "Ack",
        }
    }

    /// The size of the body [`HotFrame::put_body`] writes, length prefix excluded.
    pub(in crate::codec) fn body_size(&self) -> usize {
        let content = match self {
            HotFrame::Publish(publish) => publish_size(publish),
            HotFrame::Message(delivery) => delivery_size(delivery),
            HotFrame::Datagram(subscription, delivery) => {
                array_len_size(DATAGRAM_FIELDS) + uint_size(*subscription) + delivery_size(delivery)
            }
            HotFrame::PublishAck(ack) => {
                array_len_size(PUBLISH_ACK_FIELDS) + uint_size(ack.message_id) + BOOL_SIZE
            }
            HotFrame::Ack(ack) => ack_size(ack),
        };
        FIXMAP_LEN_SIZE + str_size(self.name().len()) + content
    }

    /// Appends the body, exactly [`HotFrame::body_size`] bytes. The caller has checked that
    /// the size fits the frame limit, so every length in it fits in 32 bits.
    pub(in crate::codec) fn put_body(&self, buf: &mut BytesMut) {
        put_fixmap_len(buf, FRAME_ENTRIES);
        put_str(buf, self.name());
        match self {
            HotFrame::Publish(publish) => put_publish(buf, publish),
            HotFrame::Message(delivery) => put_delivery(buf, delivery),
            HotFrame::Datagram(subscription, delivery) => {
                put_array_len(buf, DATAGRAM_FIELDS);
                put_uint(buf, *subscription);
                put_delivery(buf, delivery);
            }
            HotFrame::PublishAck(ack) => {
                put_array_len(buf, PUBLISH_ACK_FIELDS);
                put_uint(buf, ack.message_id);
                put_bool(buf, ack.duplicate);
            }
            HotFrame::Ack(ack) => put_ack(buf, ack),
        }
    }
}

fn publish_size(publish: &PublishRef<'_>) -> usize {
    array_len_size(PUBLISH_FIELDS)
        + str_size(publish.topic.len())
        + headers_size(publish.headers)
        + bin_size(publish.payload.len())
        + optional_size(publish.message_id, uint_size)
        + optional_size(publish.reply_to, |reply_to| str_size(reply_to.len()))
        + BOOL_SIZE
        + optional_size(publish.to_session.as_ref(), session_id_size)
        + BOOL_SIZE
}

fn put_publish(buf: &mut BytesMut, publish: &PublishRef<'_>) {
    put_array_len(buf, PUBLISH_FIELDS);
    put_str(buf, publish.topic);
    put_headers(buf, publish.headers);
    put_bin(buf, publish.payload);
    put_optional(buf, publish.message_id, put_uint);
    put_optional(buf, publish.reply_to, put_str);
    put_bool(buf, publish.retain);
    put_optional(buf, publish.to_session.as_ref(), put_session_id);
    put_bool(buf, publish.ack);
}

fn delivery_size(delivery: &DeliveryRef<'_>) -> usize {
    array_len_size(DELIVERY_FIELDS)
        + uint_size(delivery.sequence)
        + str_size(delivery.topic.len())
        + headers_size(delivery.headers)
        + bin_size(delivery.payload.len())
        + optional_size(delivery.message_id, uint_size)
        + optional_size(delivery.reply_to, |reply_to| str_size(reply_to.len()))
        + BOOL_SIZE
        + BOOL_SIZE
}

fn put_delivery(buf: &mut BytesMut, delivery: &DeliveryRef<'_>) {
    put_array_len(buf, DELIVERY_FIELDS);
    put_uint(buf, delivery.sequence);
    put_str(buf, delivery.topic);
    put_headers(buf, delivery.headers);
    put_bin(buf, delivery.payload);
    put_optional(buf, delivery.message_id, put_uint);
    put_optional(buf, delivery.reply_to, put_str);
    put_bool(buf, delivery.retained);
    put_bool(buf, delivery.redelivered);
}

fn ack_size(ack: &Ack) -> usize {
    let ranges: usize = ack
        .ranges
        .iter()
        .map(|range| array_len_size(PAIR_LEN) + uint_size(range.from) + uint_size(range.to))
        .sum();
    array_len_size(ACK_FIELDS)
        + uint_size(ack.subscription)
        + array_len_size(ack.ranges.len())
        + ranges
}

fn put_ack(buf: &mut BytesMut, ack: &Ack) {
    put_array_len(buf, ACK_FIELDS);
    put_uint(buf, ack.subscription);
    put_array_len(buf, ack.ranges.len());
    for range in &ack.ranges {
        put_array_len(buf, PAIR_LEN);
        put_uint(buf, range.from);
        put_uint(buf, range.to);
    }
}

fn headers_size(headers: &Headers) -> usize {
    let pairs: usize = headers
        .iter()
        .map(|(key, value)| array_len_size(PAIR_LEN) + str_size(key.len()) + str_size(value.len()))
        .sum();
    array_len_size(headers.len()) + pairs
}

fn put_headers(buf: &mut BytesMut, headers: &Headers) {
    put_array_len(buf, headers.len());
    for (key, value) in headers {
        put_array_len(buf, PAIR_LEN);
        put_str(buf, key);
        put_str(buf, value);
    }
}

/// A `SessionId` is its 16 bytes as an array of integers.
fn session_id_size(session: &SessionId) -> usize {
    let bytes: usize = session.0.iter().map(|&byte| uint_size(byte.into())).sum();
    array_len_size(session.0.len()) + bytes
}

fn put_session_id(buf: &mut BytesMut, session: &SessionId) {
    put_array_len(buf, session.0.len());
    for &byte in &session.0 {
        put_uint(buf, byte.into());
    }
}

/// An optional value is `nil` when absent, else the value itself.
fn optional_size<T>(value: Option<T>, size: impl FnOnce(T) -> usize) -> usize {
    value.map_or(NIL_SIZE, size)
}

fn put_optional<T>(buf: &mut BytesMut, value: Option<T>, put: impl FnOnce(&mut BytesMut, T)) {
    match value {
        Some(value) => put(buf, value),
        None => put_nil(buf),
    }
}
