//! A `CONNECT` whose password is not UTF-8, made readable by the codec.
//!
//! MQTT's password is binary data in both versions, but rumqttc 0.25 reads it as a string and
//! refuses the packet otherwise, which would close the connection without a `CONNACK`. The
//! gateway ignores passwords (identities come from certificates), so such a password is taken
//! out of the packet before it is decoded. Any packet this cannot walk is left as it is, for the
//! codec to judge. No I/O here.

use bytes::{BufMut, BytesMut};

use super::Version;

/// The `CONNECT` flag saying a password follows.
const PASSWORD_FLAG: u8 = 0x40;
const USERNAME_FLAG: u8 = 0x80;
const WILL_FLAG: u8 = 0x04;

/// Takes a non-UTF-8 password out of the whole `CONNECT` at the front of `buf`, if there is one;
/// returns whether it did.
pub(crate) fn remove_binary_password(buf: &mut BytesMut, version: Version) -> bool {
    let Some(found) = locate(buf, version) else {
        return false;
    };
    let Some(password) = buf.get(found.password.0 + 2..found.password.1) else {
        return false;
    };
    if std::str::from_utf8(password).is_ok() {
        return false;
    }
    let mut content = BytesMut::with_capacity(found.password.0 - found.header_len);
    content.extend_from_slice(&buf[found.header_len..found.password.0]);
    content[found.flags_at - found.header_len] &= !PASSWORD_FLAG;
    let mut packet = BytesMut::with_capacity(content.len() + 5);
    packet.put_u8(buf[0]);
    put_remaining_length(content.len(), &mut packet);
    packet.extend_from_slice(&content);
    let rest = buf.split_off(found.total);
    buf.clear();
    buf.extend_from_slice(&packet);
    buf.unsplit(rest);
    true
}

/// Where a whole `CONNECT`'s parts are.
struct Found {
    header_len: usize,
    total: usize,
    flags_at: usize,
    /// Start (its length prefix) and end of the password field.
    password: (usize, usize),
}

fn locate(buf: &[u8], version: Version) -> Option<Found> {
    if buf.first()? >> 4 != 1 {
        return None;
    }
    let (remaining, length_bytes) = varint(buf, 1)?;
    let header_len = 1 + length_bytes;
    let total = header_len.checked_add(remaining)?;
    if buf.len() < total {
        return None;
    }
    let packet = &buf[..total];
    let mut at = header_len;
    at = skip_field(packet, at)?; // protocol name
    at = at.checked_add(1)?; // level
    let flags_at = at;
    let flags = *packet.get(flags_at)?;
    if flags & PASSWORD_FLAG == 0 {
        return None;
    }
    at = at.checked_add(3)?; // flags and keep-alive
    if version == Version::V5 {
        at = skip_properties(packet, at)?;
    }
    at = skip_field(packet, at)?; // client id
    if flags & WILL_FLAG != 0 {
        if version == Version::V5 {
            at = skip_properties(packet, at)?;
        }
        at = skip_field(packet, at)?; // will topic
        at = skip_field(packet, at)?; // will payload
    }
    if flags & USERNAME_FLAG != 0 {
        at = skip_field(packet, at)?;
    }
    let end = skip_field(packet, at)?;
    (end == total).then_some(Found {
        header_len,
        total,
        flags_at,
        password: (at, end),
    })
}

/// The end of the two-byte-length field at `at`.
fn skip_field(packet: &[u8], at: usize) -> Option<usize> {
    let high = *packet.get(at)?;
    let low = *packet.get(at.checked_add(1)?)?;
    let end = at
        .checked_add(2)?
        .checked_add(usize::from(u16::from_be_bytes([high, low])))?;
    (end <= packet.len()).then_some(end)
}

/// The end of the MQTT 5 properties at `at`.
fn skip_properties(packet: &[u8], at: usize) -> Option<usize> {
    let (length, length_bytes) = varint(packet, at)?;
    let end = at.checked_add(length_bytes)?.checked_add(length)?;
    (end <= packet.len()).then_some(end)
}

/// A variable byte integer at `at`: its value and how many bytes it took.
fn varint(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for i in 0..4 {
        let byte = *buf.get(at.checked_add(i)?)?;
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

fn put_remaining_length(mut len: usize, out: &mut BytesMut) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if len == 0 {
            return;
        }
    }
}
