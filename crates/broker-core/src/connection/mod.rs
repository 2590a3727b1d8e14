//! The tasks that serve one connection's streams.
//!
//! - [`framed`]: reading and writing whole frames over the transport's streams.
//! - [`driver`]: the handshake and the control stream loop, run for each connection by its
//!   listener actor.
//! - [`publish`]: one task per publish stream, the start of the hot path.
//! - [`subscription_writer`]: one task per attached subscription, the end of the hot path.

pub(crate) mod driver;
pub(crate) mod framed;
pub(crate) mod gaps;
pub(crate) mod publish;
pub(crate) mod subscription_writer;
