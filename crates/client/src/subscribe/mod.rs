//! Subscribing: the application's [`Subscription`](subscription::Subscription), what it shares
//! with the tasks reading its streams and datagrams, the session's table of subscriptions, and
//! what a subscription missed.

pub(crate) mod acks;
pub(crate) mod end;
pub(crate) mod gap;
pub(crate) mod incoming;
pub(crate) mod registry;
pub(crate) mod sink;
pub(crate) mod subscription;
