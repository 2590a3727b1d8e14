//! The MQTT 5 subscription options Cassini's subscriptions have no field for (Subscription
//! Identifier, No Local, Retain As Published), kept per client id for as long as its session may
//! be resumed, so that a resumed session's subscriptions keep them (MQTT 5 §3.8.3.1: they are
//! part of the session state).
//!
//! Held in the gateway's memory: a gateway or broker restart forgets them (a stored session's
//! subscriptions then carry on without them; docs/MQTT.md). Bounded by the sessions: a client
//! id's options go when its session ends with its connection, at a clean start, and, for a
//! session left detached, once its expiry has passed (checked whenever options are stored).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The options of one MQTT 5 subscription that Cassini's subscription does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SubOptions {
    /// The Subscription Identifier, sent back in each `PUBLISH` for it.
    pub(crate) subscription_id: Option<usize>,
    /// No Local: this client id's own publishes are not delivered to it.
    pub(crate) no_local: bool,
    /// Retain As Published: a delivery's retain flag is its publish's.
    pub(crate) retain_as_published: bool,
}

#[derive(Default)]
struct ClientOptions {
    /// MQTT filter → its options (only options other than the defaults).
    filters: HashMap<String, SubOptions>,
    /// While no connection holds the session: when it expires.
    expires: Option<Instant>,
}

/// The options of every client id, shared by the gateway's connections.
#[derive(Clone, Default)]
pub(crate) struct OptionsTable {
    clients: Arc<Mutex<HashMap<String, ClientOptions>>>,
}

impl OptionsTable {
    /// A connection holds `client_id`'s session: its options are no longer expiring. With
    /// `resumed` false (a new session), what was kept for the id is forgotten.
    pub(crate) fn attach(&self, client_id: &str, resumed: bool) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if resumed {
            if let Some(client) = clients.get_mut(client_id) {
                client.expires = None;
            }
        } else {
            clients.remove(client_id);
        }
    }

    /// The options of `client_id`'s subscription to `filter` (the defaults if none were kept).
    pub(crate) fn get(&self, client_id: &str, filter: &str) -> SubOptions {
        self.clients
            .lock()
            .ok()
            .and_then(|clients| clients.get(client_id)?.filters.get(filter).copied())
            .unwrap_or_default()
    }

    /// Keeps `options` for `client_id`'s subscription to `filter` (`None`: it is gone).
    pub(crate) fn set(&self, client_id: &str, filter: &str, options: Option<SubOptions>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let now = Instant::now();
        clients.retain(|_, client| client.expires.is_none_or(|expires| expires > now));
        match options.filter(|options| *options != SubOptions::default()) {
            Some(options) => {
                clients
                    .entry(client_id.to_string())
                    .or_default()
                    .filters
                    .insert(filter.to_string(), options);
            }
            None => {
                if let Some(client) = clients.get_mut(client_id) {
                    client.filters.remove(filter);
                    if client.filters.is_empty() {
                        clients.remove(client_id);
                    }
                }
            }
        }
    }

    /// The connection holding `client_id`'s session ended: the session outlives it for
    /// `expiry` (`None`: it ended too, and its options go).
    pub(crate) fn detach(&self, client_id: &str, expiry: Option<Duration>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        match expiry {
            Some(expiry) => {
                if let Some(client) = clients.get_mut(client_id) {
                    client.expires = Some(Instant::now() + expiry);
                }
            }
            None => {
                clients.remove(client_id);
            }
        }
    }
}
