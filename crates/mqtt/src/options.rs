//! The MQTT 5 subscription options Cassini's subscriptions have no field for (Subscription
//! Identifier, No Local, Retain As Published), kept per client id for as long as its session may
//! be resumed, so that a resumed session's subscriptions keep them (MQTT 5 §3.8.3.1: they are
//! part of the session state).
//!
//! Held in the gateway's memory and, in disk mode, in the broker's store beside the session
//! (one record per client id, `mqtt/options/<client id>`, rewritten whenever its options change,
//! read back by [`OptionsTable::restore`] when the gateway starts), so a restart keeps them as it
//! keeps the session. In memory mode a restart forgets them with the sessions. Bounded by the
//! sessions: a client id's options go when its session ends with its connection, at a clean
//! start, and, for a session left detached, once its expiry has passed (checked whenever options
//! are stored, and on restore); and an identity keeps options for at most
//! `limits.max_sessions_per_identity` client ids (the sessions the broker keeps for it: beyond
//! that, the client id detached longest has lost its session, and its options go).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use cassini_broker::BrokerHandle;
use serde::{Deserialize, Serialize};

use crate::headers::unix_millis;

/// The prefix of the options' keys in the broker's store.
const KEY_PREFIX: &str = "mqtt/options/";

/// The options of one MQTT 5 subscription that Cassini's subscription does not hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubOptions {
    /// The Subscription Identifier, sent back in each `PUBLISH` for it.
    pub(crate) subscription_id: Option<usize>,
    /// No Local: this client id's own publishes are not delivered to it.
    pub(crate) no_local: bool,
    /// Retain As Published: a delivery's retain flag is its publish's.
    pub(crate) retain_as_published: bool,
}

/// One client id's options, as held and as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientOptions {
    /// MQTT filter → its options (only options other than the defaults).
    filters: HashMap<String, SubOptions>,
    /// While no connection holds the session: when it expires, in ms since the Unix epoch.
    expires_at_ms: Option<u64>,
    /// The client's identity (empty in records written before it was kept).
    #[serde(default)]
    identity: String,
}

/// The options of every client id, shared by the gateway's connections.
#[derive(Clone, Default)]
pub(crate) struct OptionsTable {
    clients: Arc<Mutex<HashMap<String, ClientOptions>>>,
    /// The broker whose store keeps the options (set by `restore`; nothing is stored before).
    broker: Arc<OnceLock<BrokerHandle>>,
}

impl OptionsTable {
    /// Reads back the options the broker's store kept (disk mode), and stores every later
    /// change there. A session that was attached when the broker stopped counts as detached
    /// from now, for at most `sessions.expiry`, as the broker counts it.
    pub(crate) fn restore(&self, broker: &BrokerHandle) {
        if self.broker.set(broker.clone()).is_err() {
            return;
        }
        let now = unix_millis();
        let longest = broker.config().sessions.expiry;
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        for (key, value) in broker.take_gateway_records(KEY_PREFIX) {
            let client_id = key[KEY_PREFIX.len()..].to_string();
            match rmp_serde::from_slice::<ClientOptions>(&value) {
                Ok(mut client) if client.expires_at_ms.is_none_or(|at| at > now) => {
                    client
                        .expires_at_ms
                        .get_or_insert(now.saturating_add(millis(longest)));
                    clients.insert(client_id, client);
                }
                Ok(_) => self.store(&client_id, None),
                Err(err) => {
                    tracing::warn!(%client_id, %err, "stored MQTT subscription options not readable: dropped");
                    self.store(&client_id, None);
                }
            }
        }
    }

    /// A connection holds `client_id`'s session: its options are no longer expiring. With
    /// `resumed` false (a new session), what was kept for the id is forgotten.
    pub(crate) fn attach(&self, client_id: &str, resumed: bool) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        if resumed {
            if let Some(client) = clients.get_mut(client_id) {
                client.expires_at_ms = None;
                self.store(client_id, Some(client));
            }
        } else if clients.remove(client_id).is_some() {
            self.store(client_id, None);
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

    /// Keeps `options` for `client_id`'s subscription to `filter` (`None`: it is gone); the
    /// client is of `identity`.
    pub(crate) fn set(
        &self,
        identity: &str,
        client_id: &str,
        filter: &str,
        options: Option<SubOptions>,
    ) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let now = unix_millis();
        clients.retain(|client_id, client| {
            let live = client.expires_at_ms.is_none_or(|at| at > now);
            if !live {
                self.store(client_id, None);
            }
            live
        });
        match options.filter(|options| *options != SubOptions::default()) {
            Some(options) => {
                let new = !clients.contains_key(client_id);
                let client = clients.entry(client_id.to_string()).or_default();
                client.identity = identity.to_string();
                if client.filters.get(filter) != Some(&options) {
                    client.filters.insert(filter.to_string(), options);
                    self.store(client_id, Some(client));
                }
                if new {
                    let most = self.broker.get().map_or(usize::MAX, |broker| {
                        broker.config().limits.max_sessions_per_identity
                    });
                    self.forget_beyond(&mut clients, identity, most);
                }
            }
            None => {
                if let Some(client) = clients.get_mut(client_id) {
                    if client.filters.remove(filter).is_some() {
                        if client.filters.is_empty() {
                            clients.remove(client_id);
                            self.store(client_id, None);
                        } else {
                            self.store(client_id, Some(client));
                        }
                    }
                }
            }
        }
    }

    /// Keeps options for at most `most` (`limits.max_sessions_per_identity`) client ids of
    /// `identity`:
    /// beyond, those detached longest go (their sessions are the ones the broker ended).
    fn forget_beyond(
        &self,
        clients: &mut HashMap<String, ClientOptions>,
        identity: &str,
        most: usize,
    ) {
        let most = most.max(1);
        let mut detached: Vec<(u64, String)> = Vec::new();
        let mut count: usize = 0;
        for (client_id, client) in clients.iter() {
            if client.identity == identity {
                count += 1;
                if let Some(at) = client.expires_at_ms {
                    detached.push((at, client_id.clone()));
                }
            }
        }
        detached.sort_unstable();
        for (_, client_id) in detached.into_iter().take(count.saturating_sub(most)) {
            clients.remove(&client_id);
            self.store(&client_id, None);
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
                    client.expires_at_ms = Some(unix_millis().saturating_add(millis(expiry)));
                    self.store(client_id, Some(client));
                }
            }
            None => {
                if clients.remove(client_id).is_some() {
                    self.store(client_id, None);
                }
            }
        }
    }

    /// Writes (or, with `None`, removes) `client_id`'s record in the broker's store. Called
    /// under the `clients` lock, so the store applies the changes in the order they were made.
    fn store(&self, client_id: &str, client: Option<&ClientOptions>) {
        let Some(broker) = self.broker.get() else {
            return;
        };
        let value = match client.map(rmp_serde::to_vec).transpose() {
            Ok(value) => value.map(Bytes::from),
            Err(err) => {
                tracing::warn!(%client_id, %err, "MQTT subscription options not stored");
                return;
            }
        };
        let key = format!("{KEY_PREFIX}{client_id}");
        if let Err(err) = broker.put_gateway_record(&key, value) {
            tracing::warn!(%client_id, %err, "MQTT subscription options not stored: a restart will forget them");
        }
    }
}

/// `duration` in milliseconds.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_id(id: usize) -> Option<SubOptions> {
        Some(SubOptions {
            subscription_id: Some(id),
            ..SubOptions::default()
        })
    }

    #[test]
    fn an_identity_keeps_options_for_no_more_client_ids_than_it_may_have_sessions() {
        let table = OptionsTable::default();
        for (n, client_id) in ["d1", "d2", "d3"].into_iter().enumerate() {
            table.set("fleet", client_id, "a/#", with_id(n + 1));
            table.detach(client_id, Some(Duration::from_secs(300 + n as u64)));
        }
        table.set("other", "o1", "a/#", with_id(9));
        let mut clients = table.clients.lock().expect("lock");
        table.forget_beyond(&mut clients, "fleet", 2);
        let mut kept: Vec<&str> = clients.keys().map(String::as_str).collect();
        kept.sort_unstable();
        // d1 was detached longest (it expires first): its session is the one the broker ended.
        assert_eq!(kept, ["d2", "d3", "o1"]);
    }
}
