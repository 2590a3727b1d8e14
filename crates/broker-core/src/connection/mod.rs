//! The tasks that serve one connection's streams.
//!
//! - [`framed`]: reading and writing whole frames over the transport's streams.
//! - [`driver`]: the handshake and the control stream loop, run for each connection by its
//!   listener.
//! - [`publish`]: one task per publish stream, the start of the hot path.
//! - [`subscription_writer`]: one task per attached subscription, the end of the hot path.
//! - [`gaps`]: which sequences a subscription's writer announces as a `Gap`.
//!
//! Every publish read here goes through [`crate::admission`]. The stream tasks work on
//! [`crate::context::Shared`] alone; the driver asks the session actors, and tells the
//! listener that runs it only through the slot it was given.

pub(crate) mod driver;
pub(crate) mod framed;
pub(crate) mod gaps;
pub(crate) mod publish;
pub(crate) mod subscription_writer;
pub(crate) mod unsent_acks;
