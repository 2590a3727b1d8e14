//! The MessagePack primitives the hot frames are written and read with, in exactly the forms
//! rmp-serde writes: the shortest marker for every integer, string, byte string and array
//! length. Writing comes in pairs (`*_size` says how many bytes `put_*` appends) so that a
//! frame's size is known before any of it is written. [`Reader`] reads these forms from a
//! slice and answers `None` for anything else, valid MessagePack or not.

use bytes::{BufMut, BytesMut};

const FIXMAP_MAX_LEN: usize = 15;
const FIXMAP: u8 = 0x80;
const FIXARRAY: u8 = 0x90;
const FIXARRAY_MAX_LEN: usize = 15;
const FIXSTR: u8 = 0xa0;
const FIXSTR_MAX_LEN: usize = 31;
const NIL: u8 = 0xc0;
const FALSE: u8 = 0xc2;
const TRUE: u8 = 0xc3;
const BIN8: u8 = 0xc4;
const BIN16: u8 = 0xc5;
const BIN32: u8 = 0xc6;
const UINT8: u8 = 0xcc;
const UINT16: u8 = 0xcd;
const UINT32: u8 = 0xce;
const UINT64: u8 = 0xcf;
const STR8: u8 = 0xd9;
const STR16: u8 = 0xda;
const STR32: u8 = 0xdb;
const ARRAY16: u8 = 0xdc;
const ARRAY32: u8 = 0xdd;
const POSITIVE_FIXINT_MAX: u64 = 0x7f;

/// Bytes [`put_uint`] appends for `value`.
pub(super) fn uint_size(value: u64) -> usize {
    match value {
        0..=POSITIVE_FIXINT_MAX => 1,
        0x80..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// Appends an unsigned integer in its shortest form.
pub(super) fn put_uint(buf: &mut BytesMut, value: u64) {
    match value {
        // The match arms bound each value, so the casts below never truncate.
        0..=POSITIVE_FIXINT_MAX => buf.put_u8(value as u8),
        0x80..=0xff => buf.put_slice(&[UINT8, value as u8]),
        0x100..=0xffff => {
            buf.put_u8(UINT16);
            buf.put_u16(value as u16);
        }
        0x1_0000..=0xffff_ffff => {
            buf.put_u8(UINT32);
            buf.put_u32(value as u32);
        }
        _ => {
            buf.put_u8(UINT64);
            buf.put_u64(value);
        }
    }
}

/// Bytes [`put_bool`] appends.
pub(super) const BOOL_SIZE: usize = 1;

/// Appends `true` or `false`.
pub(super) fn put_bool(buf: &mut BytesMut, value: bool) {
    buf.put_u8(if value { TRUE } else { FALSE });
}

/// Bytes [`put_nil`] appends.
pub(super) const NIL_SIZE: usize = 1;

/// Appends `nil`, an absent optional value.
pub(super) fn put_nil(buf: &mut BytesMut) {
    buf.put_u8(NIL);
}

/// Bytes [`put_str`] appends for a string of `len` bytes.
pub(super) fn str_size(len: usize) -> usize {
    let header = match len {
        0..=FIXSTR_MAX_LEN => 1,
        0x20..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    header + len
}

/// Appends a string. The caller has checked that the frame, so the string, is shorter than
/// 4 GiB.
pub(super) fn put_str(buf: &mut BytesMut, value: &str) {
    let len = value.len();
    match len {
        0..=FIXSTR_MAX_LEN => buf.put_u8(FIXSTR | len as u8),
        0x20..=0xff => buf.put_slice(&[STR8, len as u8]),
        0x100..=0xffff => {
            buf.put_u8(STR16);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(STR32);
            buf.put_u32(len as u32);
        }
    }
    buf.put_slice(value.as_bytes());
}

/// Bytes [`put_bin`] appends for `len` bytes.
pub(super) fn bin_size(len: usize) -> usize {
    let header = match len {
        0..=0xff => 2,
        0x100..=0xffff => 3,
        _ => 5,
    };
    header + len
}

/// Appends a byte string. The caller has checked that it is shorter than 4 GiB.
pub(super) fn put_bin(buf: &mut BytesMut, value: &[u8]) {
    let len = value.len();
    match len {
        0..=0xff => buf.put_slice(&[BIN8, len as u8]),
        0x100..=0xffff => {
            buf.put_u8(BIN16);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(BIN32);
            buf.put_u32(len as u32);
        }
    }
    buf.put_slice(value);
}

/// Bytes [`put_array_len`] appends for an array of `len` elements.
pub(super) fn array_len_size(len: usize) -> usize {
    match len {
        0..=FIXARRAY_MAX_LEN => 1,
        0x10..=0xffff => 3,
        _ => 5,
    }
}

/// Appends the header of an array of `len` elements, which follow it. The caller has checked
/// that `len` fits in 32 bits (every element takes at least a byte of a frame under 4 GiB).
pub(super) fn put_array_len(buf: &mut BytesMut, len: usize) {
    match len {
        0..=FIXARRAY_MAX_LEN => buf.put_u8(FIXARRAY | len as u8),
        0x10..=0xffff => {
            buf.put_u8(ARRAY16);
            buf.put_u16(len as u16);
        }
        _ => {
            buf.put_u8(ARRAY32);
            buf.put_u32(len as u32);
        }
    }
}

/// Bytes [`put_fixmap_len`] appends.
pub(super) const FIXMAP_LEN_SIZE: usize = 1;

/// Appends the header of a map of `len` (at most 15) entries.
pub(super) fn put_fixmap_len(buf: &mut BytesMut, len: usize) {
    debug_assert!(len <= FIXMAP_MAX_LEN);
    buf.put_u8(FIXMAP | (len & FIXMAP_MAX_LEN) as u8);
}

/// Reads the forms above from the front of a slice. Every method consumes what it read and
/// answers `None` (leaving the reader in no particular place) for input that is short or not in
/// the form asked for.
pub(super) struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(input: &'a [u8]) -> Self {
        Self { rest: input }
    }

    /// Whether everything was read.
    pub(super) fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// How many bytes are left.
    pub(super) fn remaining(&self) -> usize {
        self.rest.len()
    }

    fn byte(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    fn take(&mut self, len: usize) -> Option<&'a [u8]> {
        if len > self.rest.len() {
            return None;
        }
        let (taken, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (taken, rest) = self.rest.split_first_chunk::<N>()?;
        self.rest = rest;
        Some(*taken)
    }

    fn be_u16(&mut self) -> Option<u16> {
        self.array().map(u16::from_be_bytes)
    }

    fn be_u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_be_bytes)
    }

    fn be_u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_be_bytes)
    }

    /// Whether the next value is `nil`; consumes it if so.
    pub(super) fn nil(&mut self) -> bool {
        if self.rest.first() == Some(&NIL) {
            self.rest = &self.rest[1..];
            true
        } else {
            false
        }
    }

    /// An unsigned integer in any of the unsigned forms.
    pub(super) fn uint(&mut self) -> Option<u64> {
        match self.byte()? {
            small @ 0..=0x7f => Some(u64::from(small)),
            UINT8 => self.byte().map(u64::from),
            UINT16 => self.be_u16().map(u64::from),
            UINT32 => self.be_u32().map(u64::from),
            UINT64 => self.be_u64(),
            _ => None,
        }
    }

    /// `true` or `false`.
    pub(super) fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            TRUE => Some(true),
            FALSE => Some(false),
            _ => None,
        }
    }

    /// A string (str, valid UTF-8).
    pub(super) fn str(&mut self) -> Option<&'a str> {
        std::str::from_utf8(self.str_bytes()?).ok()
    }

    /// The bytes of a string, not checked to be UTF-8: for comparing with known names.
    pub(super) fn str_bytes(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            marker @ FIXSTR..=0xbf => usize::from(marker & 0x1f),
            STR8 => usize::from(self.byte()?),
            STR16 => usize::from(self.be_u16()?),
            STR32 => usize::try_from(self.be_u32()?).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    /// A byte string (bin).
    pub(super) fn bin(&mut self) -> Option<&'a [u8]> {
        let len = match self.byte()? {
            BIN8 => usize::from(self.byte()?),
            BIN16 => usize::from(self.be_u16()?),
            BIN32 => usize::try_from(self.be_u32()?).ok()?,
            _ => return None,
        };
        self.take(len)
    }

    /// The header of an array: its number of elements.
    pub(super) fn array_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ FIXARRAY..=0x9f => Some(usize::from(marker & 0x0f)),
            ARRAY16 => self.be_u16().map(usize::from),
            ARRAY32 => usize::try_from(self.be_u32()?).ok(),
            _ => None,
        }
    }

    /// The header of a map of at most 15 entries: its number of entries.
    pub(super) fn fixmap_len(&mut self) -> Option<usize> {
        match self.byte()? {
            marker @ FIXMAP..=0x8f => Some(usize::from(marker & 0x0f)),
            _ => None,
        }
    }
}
