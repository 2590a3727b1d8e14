//! Decoding the hot frames in the form the encoder writes; `None` for anything else.

use bytes::Bytes;

use crate::codec::msgpack::Reader;
use crate::codec::topic_memo::reuse_for;
use crate::codec::TopicMemo;
use crate::frame::{
    Ack, DatagramDelivery, Delivery, Frame, Headers, Publish, PublishAck, SequenceRange, SessionId,
};
use crate::headers::MAX_DECODED_HEADERS;

const PUBLISH_FIELDS: usize = 8;
const DELIVERY_FIELDS: usize = 8;
/// A `Delivery` from a sender that predates `redelivered`.
const DELIVERY_FIELDS_WITHOUT_REDELIVERED: usize = 7;
const DATAGRAM_FIELDS: usize = 2;
const PUBLISH_ACK_FIELDS: usize = 2;
const ACK_FIELDS: usize = 2;
const PAIR_LEN: usize = 2;
const SESSION_ID_LEN: usize = 16;
/// The fewest bytes a `[key, value]` header pair or a `SequenceRange` takes: an array marker
/// and two one-byte values.
const MIN_PAIR_BYTES: usize = 3;

/// Decodes a frame body that is one of the hot frames in the form the encoder writes (see the
/// module above), using every byte of it. `None` says only that this is not such a body: the
/// caller then decodes it through the reference path, which accepts or refuses it.
pub fn decode(body: &[u8]) -> Option<Frame> {
    decode_with(body, &mut TopicMemo::default())
}

/// [`decode`], taking the topic of a `Publish`, `Message` or `Datagram` from `memo` (see
/// there): the same frame, cheaper when the topic is the one given back last.
pub fn decode_with(body: &[u8], memo: &mut TopicMemo) -> Option<Frame> {
    let mut reader = Reader::new(body);
    if reader.fixmap_len()? != 1 {
        return None;
    }
    // The frame type's name, compared as bytes: matching one of these ASCII names proves it
    // UTF-8, and any other name is not a hot frame.
    let frame = match reader.str_bytes()? {
        b"Publish" => Frame::Publish(publish(&mut reader, memo)?),
        b"Message" => Frame::Message(delivery(&mut reader, memo)?),
        b"Datagram" => Frame::Datagram(datagram(&mut reader, memo)?),
        b"PublishAck" => Frame::PublishAck(publish_ack(&mut reader)?),
        b"Ack" => Frame::Ack(ack(&mut reader)?),
        _ => return None,
    };
    reader.is_empty().then_some(frame)
}

/// [`decode`] for a `Publish` body, written field by field into `out`, whose topic string is
/// kept when the bytes are the same and its allocation reused when they are not (as
/// [`TopicMemo`] does): a publish stream's reader decodes every frame into one `Publish`, with
/// no move of the frame. `None` when the body is not a `Publish` in the encoder's form; `out`
/// may then hold some of its fields, and the caller decodes the body the other way.
pub fn publish_into(body: &[u8], out: &mut Publish) -> Option<()> {
    let mut reader = named(body, b"Publish")?;
    publish_fields(&mut reader, out)?;
    reader.is_empty().then_some(())
}

/// [`publish_into`] for a `Message` body: a subscription stream's reader decodes every
/// delivery into one `Delivery`.
pub fn delivery_into(body: &[u8], out: &mut Delivery) -> Option<()> {
    let mut reader = named(body, b"Message")?;
    delivery_fields(&mut reader, out)?;
    reader.is_empty().then_some(())
}

/// A reader past the frame type of a body whose type is `name`.
fn named<'a>(body: &'a [u8], name: &[u8]) -> Option<Reader<'a>> {
    let mut reader = Reader::new(body);
    (reader.fixmap_len()? == 1 && reader.str_bytes()? == name).then_some(reader)
}

fn publish(reader: &mut Reader<'_>, memo: &mut TopicMemo) -> Option<Publish> {
    let mut publish = Publish {
        topic: memo.take(),
        ..Publish::default()
    };
    publish_fields(reader, &mut publish)?;
    Some(publish)
}

/// A `Publish`'s fields, read in the order written into `out`; its topic string is reused
/// ([`reuse_for`]).
fn publish_fields(reader: &mut Reader<'_>, out: &mut Publish) -> Option<()> {
    if reader.array_len()? != PUBLISH_FIELDS {
        return None;
    }
    reuse_for(&mut out.topic, reader.str_bytes()?)?;
    out.headers = headers(reader)?;
    out.payload = Bytes::copy_from_slice(reader.bin()?);
    out.message_id = optional(reader, Reader::uint)?;
    out.reply_to = optional(reader, Reader::str)?.map(str::to_owned);
    out.retain = reader.bool()?;
    out.to_session = optional(reader, session_id)?;
    out.ack = reader.bool()?;
    Some(())
}

fn delivery(reader: &mut Reader<'_>, memo: &mut TopicMemo) -> Option<Delivery> {
    let mut delivery = Delivery {
        topic: memo.take(),
        ..Delivery::default()
    };
    delivery_fields(reader, &mut delivery)?;
    Some(delivery)
}

/// [`publish_fields`] for a `Delivery`.
fn delivery_fields(reader: &mut Reader<'_>, out: &mut Delivery) -> Option<()> {
    let fields = reader.array_len()?;
    if fields != DELIVERY_FIELDS && fields != DELIVERY_FIELDS_WITHOUT_REDELIVERED {
        return None;
    }
    out.sequence = reader.uint()?;
    reuse_for(&mut out.topic, reader.str_bytes()?)?;
    out.headers = headers(reader)?;
    out.payload = Bytes::copy_from_slice(reader.bin()?);
    out.message_id = optional(reader, Reader::uint)?;
    out.reply_to = optional(reader, Reader::str)?.map(str::to_owned);
    out.retained = reader.bool()?;
    out.redelivered = if fields == DELIVERY_FIELDS {
        reader.bool()?
    } else {
        false
    };
    Some(())
}

fn datagram(reader: &mut Reader<'_>, memo: &mut TopicMemo) -> Option<DatagramDelivery> {
    if reader.array_len()? != DATAGRAM_FIELDS {
        return None;
    }
    Some(DatagramDelivery {
        subscription: reader.uint()?,
        message: delivery(reader, memo)?,
    })
}

fn publish_ack(reader: &mut Reader<'_>) -> Option<PublishAck> {
    if reader.array_len()? != PUBLISH_ACK_FIELDS {
        return None;
    }
    Some(PublishAck {
        message_id: reader.uint()?,
        duplicate: reader.bool()?,
    })
}

fn ack(reader: &mut Reader<'_>) -> Option<Ack> {
    if reader.array_len()? != ACK_FIELDS {
        return None;
    }
    let subscription = reader.uint()?;
    let count = pair_count(reader)?;
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        if reader.array_len()? != PAIR_LEN {
            return None;
        }
        ranges.push(SequenceRange {
            from: reader.uint()?,
            to: reader.uint()?,
        });
    }
    Some(Ack {
        subscription,
        ranges,
    })
}

/// Header lists longer than the reference path keeps (it cuts them, see
/// [`MAX_DECODED_HEADERS`]) are left to it.
fn headers(reader: &mut Reader<'_>) -> Option<Headers> {
    let count = pair_count(reader)?;
    if count > MAX_DECODED_HEADERS + 1 {
        return None;
    }
    let mut headers = Vec::with_capacity(count);
    for _ in 0..count {
        if reader.array_len()? != PAIR_LEN {
            return None;
        }
        let key = reader.str()?.to_owned();
        let value = reader.str()?.to_owned();
        headers.push((key, value));
    }
    Some(headers)
}

/// The length of an array of pairs, if the rest of the input could hold that many: a peer's
/// declared count reserves no more memory than its frame could fill.
fn pair_count(reader: &mut Reader<'_>) -> Option<usize> {
    let count = reader.array_len()?;
    (count <= reader.remaining() / MIN_PAIR_BYTES).then_some(count)
}

fn session_id(reader: &mut Reader<'_>) -> Option<SessionId> {
    if reader.array_len()? != SESSION_ID_LEN {
        return None;
    }
    let mut bytes = [0u8; SESSION_ID_LEN];
    for byte in &mut bytes {
        *byte = u8::try_from(reader.uint()?).ok()?;
    }
    Some(SessionId(bytes))
}

/// An optional value: `nil` when absent, else the value itself.
fn optional<'a, T>(
    reader: &mut Reader<'a>,
    read: impl FnOnce(&mut Reader<'a>) -> Option<T>,
) -> Option<Option<T>> {
    if reader.nil() {
        Some(None)
    } else {
        read(reader).map(Some)
    }
}
