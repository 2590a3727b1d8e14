//! The Cassini wire protocol, sans-IO.
//!
//! This crate owns everything two Cassini peers must agree on and nothing about how bytes move:
//! no tokio, no quinn, no sockets, no clocks.
//!
//! Layering: `error_code` and `headers` at the bottom, `frame` on them, `codec` on `frame`, and
//! `topic` on `inbox`; no module imports one above it.
//!
//! # Layout
//! - [`frame`]: every frame that crosses the wire, grouped by the stream it travels on.
//! - [`headers`]: the header list type and the bound on how many headers a decoder keeps.
//! - [`codec`]: the length-prefixed MessagePack framing, with a maximum frame length that is
//!   checked before anything is allocated.
//! - [`topic`]: topic names, subscription filters with `*` and `>`, their validation and matching.
//! - [`inbox`]: how reply inboxes are named after an identity, and the topics leading wildcards
//!   never match.
//! - [`error_code`]: every error code a peer can see, with its number and meaning, in one place.

pub mod codec;
pub mod error_code;
pub mod frame;
pub mod headers;
pub mod inbox;
pub mod topic;

pub use codec::{decode_frame, encode_frame, DecodeError, EncodeError, FrameDecoder};
pub use error_code::ErrorCode;
pub use frame::*;
pub use topic::{TopicError, TopicFilter, TopicLimits, TopicName};

/// ALPN protocol identifier negotiated in the TLS handshake.
pub const ALPN: &[u8] = b"cassini/1";

/// The protocol version this crate speaks, carried in `Hello` and `Welcome`.
pub const PROTOCOL_VERSION: u32 = 1;
