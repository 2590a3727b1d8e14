//! Publishing: options, checking and encoding, the lanes that carry each topic, acknowledged
//! publishes, and the buffer that keeps publishes while reconnecting.

pub(crate) mod lane;
pub(crate) mod options;
pub(crate) mod outbound;
pub(crate) mod outgoing;
pub(crate) mod publisher;
pub(crate) mod receipt;
