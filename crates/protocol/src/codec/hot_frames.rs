//! Hand-written MessagePack for the frames sent once per message: `Publish` (client → broker),
//! `Message` and `Datagram` (broker → client), `PublishAck` and `Ack`. Encoding them through
//! rmp-serde's derive path cost about as much as the rest of the broker's publish path; here
//! each is a size computed up front and a run of writes into a buffer reserved once.
//!
//! The rmp-serde path (`codec::reference`) stays the definition of the encoding: these
//! encoders write the same bytes, and [`decode`] answers only for bodies in the form they write
//! (integers in any unsigned width, and `Delivery.redelivered` may be left off, as an older
//! broker sends it), answering `None` for anything else — trailing fields of a newer peer,
//! signed integers, strings as bytes, structs as maps, malformed input — which the reference
//! path then decodes or refuses. Property tests hold both halves to the reference byte for
//! byte and value for value, on valid bodies and on bodies in other forms or edited.

mod decode;
mod encode;

pub use decode::{decode, decode_with, delivery_into, publish_into};
pub(super) use encode::HotFrame;
