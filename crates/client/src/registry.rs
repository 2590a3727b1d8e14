//! Subscriptions the broker has confirmed whose stream has not been claimed yet.
//!
//! A subscription's stream may arrive before or after the `Subscribed` answer. The control
//! reader registers the subscription's channel when the answer arrives; the task reading a new
//! stream claims the channel for the id its `SubscriptionStart` names, waiting for the
//! registration if it has not happened yet. When the connection ends the registry is closed:
//! unclaimed channels are ended with the connection's reason and later registrations are ended
//! at once.

use std::collections::HashMap;
use std::pin::pin;
use std::sync::Mutex;

use cassini_protocol::SubscriptionId;
use tokio::sync::Notify;
use tokio::time::{timeout_at, Instant};

use crate::subscription::{SubscriptionEnd, SubscriptionSink};
use crate::sync::lock;

/// Why a stream could not claim its subscription's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// No subscription with that id was registered before the deadline.
    TimedOut,
    /// The connection ended.
    Closed,
}

/// Registered, unclaimed subscription channels.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionRegistry {
    /// Unclaimed channels and whether the connection ended.
    state: Mutex<RegistryState>,
    /// Woken on every registration and on close.
    changed: Notify,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// Channels waiting for their stream.
    unclaimed: HashMap<SubscriptionId, SubscriptionSink>,
    /// Set when the connection ended: how every subscription ends from then on.
    closed: Option<SubscriptionEnd>,
}

impl SubscriptionRegistry {
    /// Makes `sink` available to the stream of subscription `id`.
    pub(crate) fn register(&self, id: SubscriptionId, sink: SubscriptionSink) {
        {
            let mut state = lock(&self.state);
            if let Some(end) = &state.closed {
                let end = end.clone();
                drop(state);
                sink.finish(end);
                return;
            }
            state.unclaimed.insert(id, sink);
        }
        self.changed.notify_waiters();
    }

    /// Takes the channel of subscription `id`, waiting until `deadline` for it to be registered.
    pub(crate) async fn claim(
        &self,
        id: SubscriptionId,
        deadline: Instant,
    ) -> Result<SubscriptionSink, ClaimError> {
        loop {
            let mut changed = pin!(self.changed.notified());
            // Listen before looking, so a registration between the two is not missed.
            changed.as_mut().enable();
            {
                let mut state = lock(&self.state);
                if let Some(sink) = state.unclaimed.remove(&id) {
                    return Ok(sink);
                }
                if state.closed.is_some() {
                    return Err(ClaimError::Closed);
                }
            }
            if timeout_at(deadline, changed).await.is_err() {
                return Err(ClaimError::TimedOut);
            }
        }
    }

    /// Ends every unclaimed subscription with `end`, and every later registration too.
    pub(crate) fn close(&self, end: SubscriptionEnd) {
        let unclaimed = {
            let mut state = lock(&self.state);
            state.closed.get_or_insert(end.clone());
            std::mem::take(&mut state.unclaimed)
        };
        for sink in unclaimed.into_values() {
            sink.finish(end.clone());
        }
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests;
