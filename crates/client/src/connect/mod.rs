//! Connecting and staying connected: the builder, one connection and its control stream, and
//! the session that outlives connections and reconnects them.

pub(crate) mod attachment;
pub(crate) mod broker_address;
pub(crate) mod builder;
pub(crate) mod cluster_addresses;
pub(crate) mod connection_state;
pub(crate) mod connector;
pub(crate) mod control;
pub(crate) mod disconnect;
pub(crate) mod first_connect;
pub(crate) mod framed;
pub(crate) mod link;
pub(crate) mod liveness;
pub(crate) mod reconnect_policy;
pub(crate) mod session;
pub(crate) mod supervisor;
