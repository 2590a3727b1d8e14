//! The MQTT session state Cassini's session has no field for, kept per client id for as long as
//! its session may be resumed:
//! - the MQTT 5 subscription options (Subscription Identifier, No Local, Retain As Published),
//!   so that a resumed session's subscriptions keep them (MQTT 5 §3.8.3.1: they are part of the
//!   session state);
//! - the packet ids of QoS 2 publishes between their `PUBLISH` and their `PUBREL` (MQTT 3.1.1
//!   §4.3.3), so that a `PUBLISH` sent again on the session's next connection is not published
//!   twice;
//! - the packet ids of QoS 1 deliveries a connection ended without their `PUBACK`, so that the
//!   session's next connection sends them again under the same ids (MQTT 3.1.1 §4.4, MQTT 5
//!   §4.4).
//!
//! The options are held in the gateway's memory and, in disk mode, in the broker's store beside
//! the session (one record per client id, `mqtt/options/<client id>`, rewritten whenever its
//! options change, read back by [`OptionsTable::restore`] when the gateway starts), so a restart
//! keeps them as it keeps the session. In memory mode a restart forgets them with the sessions.
//! The packet ids are held in memory only: a gateway restart forgets them. Bounded by the
//! sessions: a client id's state goes when its session ends with its connection, at a clean
//! start, and, for a session left detached, once its expiry has passed (checked whenever options
//! are stored, and on restore); and an identity keeps state for at most
//! `limits.max_sessions_per_identity` client ids (the sessions the broker keeps for it: beyond
//! that, the client id detached longest has lost its session, and its state goes). The QoS 1
//! packet ids of one client id are at most 65,535 (one per packet id), its QoS 2 ones at most
//! [`crate::session::MAX_AWAITING_RELEASE`] (the session's connection refuses more).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// Where a QoS 2 publish stands between its `PUBLISH` and its `PUBREL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Qos2 {
    /// Sent into Cassini as the acknowledged publish `message_id`, not answered yet: sent again,
    /// it goes with the same `message_id`, so the broker's dedupe window takes it as a retry.
    Sent { message_id: u64 },
    /// Taken (`PUBREC` sent, or refused): sent again, it is not published again.
    Received,
}

/// One client id's state, as held and (its options) as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ClientOptions {
    /// MQTT filter → its options (only options other than the defaults).
    filters: HashMap<String, SubOptions>,
    /// QoS 2 packet id → where its publish stands (memory only).
    #[serde(skip)]
    qos2: HashMap<u16, Qos2>,
    /// (subscription, sequence) of a QoS 1 delivery left unacknowledged → its packet id
    /// (memory only).
    #[serde(skip)]
    unacked: HashMap<(u64, u64), u16>,
    /// While no connection holds the session: when it expires, in ms since the Unix epoch.
    expires_at_ms: Option<u64>,
    /// The client's identity (empty in records written before it was kept).
    #[serde(default)]
    identity: String,
}

impl ClientOptions {
    /// Whether there is nothing to keep for the client id.
    fn holds_nothing(&self) -> bool {
        self.filters.is_empty() && self.qos2.is_empty() && self.unacked.is_empty()
    }
}

/// The options of every client id, shared by the gateway's connections.
#[derive(Clone, Default)]
pub(crate) struct OptionsTable {
    clients: Arc<Mutex<HashMap<String, ClientOptions>>>,
    /// The broker whose store keeps the options (set by `restore`; nothing is stored before).
    broker: Arc<OnceLock<BrokerHandle>>,
    /// Whether that broker has a store (disk mode): in memory mode nothing is encoded.
    durable: Arc<AtomicBool>,
}

impl OptionsTable {
    /// Reads back the options the broker's store kept (disk mode), and stores every later
    /// change there. A session that was attached when the broker stopped counts as detached
    /// from now, for at most `sessions.expiry`, as the broker counts it.
    pub(crate) fn restore(&self, broker: &BrokerHandle) {
        if self.broker.set(broker.clone()).is_err() {
            return;
        }
        self.durable
            .store(broker.storage().is_some(), Ordering::Release);
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
        match options.filter(|options| *options != SubOptions::default()) {
            Some(options) => {
                let client = self.client_entry(&mut clients, identity, client_id);
                if client.filters.get(filter) != Some(&options) {
                    client.filters.insert(filter.to_string(), options);
                    self.store(client_id, Some(client));
                }
            }
            None => {
                if let Some(client) = clients.get_mut(client_id) {
                    if client.filters.remove(filter).is_some() {
                        if client.filters.is_empty() {
                            self.store(client_id, None);
                            if client.holds_nothing() {
                                clients.remove(client_id);
                            }
                        } else {
                            self.store(client_id, Some(client));
                        }
                    }
                }
            }
        }
    }

    /// Where `client_id`'s QoS 2 publish with packet id `pkid` stands (`None`: no publish with
    /// that packet id waits for its `PUBREL`).
    pub(crate) fn qos2(&self, client_id: &str, pkid: u16) -> Option<Qos2> {
        self.clients
            .lock()
            .ok()
            .and_then(|clients| clients.get(client_id)?.qos2.get(&pkid).copied())
    }

    /// How many of `client_id`'s QoS 2 publishes wait for their `PUBREL`.
    pub(crate) fn qos2_count(&self, client_id: &str) -> usize {
        self.clients
            .lock()
            .ok()
            .and_then(|clients| Some(clients.get(client_id)?.qos2.len()))
            .unwrap_or(0)
    }

    /// Records where `client_id`'s QoS 2 publish `pkid` stands (`None`: released, forgotten);
    /// the client is of `identity`.
    pub(crate) fn set_qos2(&self, identity: &str, client_id: &str, pkid: u16, state: Option<Qos2>) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        match state {
            Some(state) => {
                self.client_entry(&mut clients, identity, client_id)
                    .qos2
                    .insert(pkid, state);
            }
            None => {
                if let Some(client) = clients.get_mut(client_id) {
                    client.qos2.remove(&pkid);
                    if client.holds_nothing() {
                        // Only options are stored, and it has none: nothing to remove there.
                        clients.remove(client_id);
                    }
                }
            }
        }
    }

    /// The connection ended with these QoS 1 deliveries of `client_id` unacknowledged
    /// (subscription, sequence, packet id): their packet ids wait for the session's next
    /// connection, replacing any kept before.
    pub(crate) fn keep_unacked(
        &self,
        identity: &str,
        client_id: &str,
        unacked: impl Iterator<Item = (u64, u64, u16)>,
    ) {
        let Ok(mut clients) = self.clients.lock() else {
            return;
        };
        let unacked: HashMap<(u64, u64), u16> = unacked
            .map(|(subscription, sequence, pkid)| ((subscription, sequence), pkid))
            .collect();
        if unacked.is_empty() {
            if let Some(client) = clients.get_mut(client_id) {
                client.unacked.clear();
            }
            return;
        }
        self.client_entry(&mut clients, identity, client_id).unacked = unacked;
    }

    /// The packet id the delivery `sequence` of `subscription` had when `client_id`'s previous
    /// connection ended without its `PUBACK`, if it had one; taken.
    pub(crate) fn take_unacked(
        &self,
        client_id: &str,
        subscription: u64,
        sequence: u64,
    ) -> Option<u16> {
        let mut clients = self.clients.lock().ok()?;
        clients
            .get_mut(client_id)?
            .unacked
            .remove(&(subscription, sequence))
    }

    /// `client_id`'s entry, of `identity`. A new one first sweeps out the expired entries (only
    /// then, so that changing a client id's state costs no walk over every other one), and then
    /// keeps the identity within its sessions ([`OptionsTable::forget_beyond`]).
    fn client_entry<'a>(
        &self,
        clients: &'a mut HashMap<String, ClientOptions>,
        identity: &str,
        client_id: &str,
    ) -> &'a mut ClientOptions {
        if !clients.contains_key(client_id) {
            let now = unix_millis();
            clients.retain(|client_id, client| {
                let live = client.expires_at_ms.is_none_or(|at| at > now);
                if !live {
                    self.store(client_id, None);
                }
                live
            });
            let client = ClientOptions {
                identity: identity.to_string(),
                ..ClientOptions::default()
            };
            clients.insert(client_id.to_string(), client);
            let most = self.broker.get().map_or(usize::MAX, |broker| {
                broker.config().limits.max_sessions_per_identity
            });
            self.forget_beyond(clients, identity, most);
        }
        let client = clients.entry(client_id.to_string()).or_default();
        client.identity = identity.to_string();
        client
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
    /// A client id has a record while it has options: one without (only QoS 2 packet ids, which
    /// are not stored) is not written.
    fn store(&self, client_id: &str, client: Option<&ClientOptions>) {
        let Some(broker) = self.broker.get() else {
            return;
        };
        if !self.durable.load(Ordering::Acquire)
            || client.is_some_and(|client| client.filters.is_empty())
        {
            return;
        }
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

    #[test]
    fn qos2_packet_ids_outlive_a_connection_of_the_session_and_go_with_it() {
        let table = OptionsTable::default();
        let sent = Qos2::Sent { message_id: 5 };
        table.set_qos2("fleet", "d1", 7, Some(sent));
        table.set_qos2("fleet", "d1", 8, Some(Qos2::Received));
        table.detach("d1", Some(Duration::from_secs(60)));
        table.attach("d1", true);
        assert_eq!(table.qos2("d1", 7), Some(sent));
        table.set_qos2("fleet", "d1", 7, None);
        assert_eq!(table.qos2("d1", 7), None);
        assert_eq!(table.qos2("d1", 8), Some(Qos2::Received));
        // A new session (a clean start) forgets them.
        table.attach("d1", false);
        assert_eq!(table.qos2("d1", 8), None);
        // Released, the last one takes the client id's entry with it.
        table.set_qos2("fleet", "d2", 1, Some(Qos2::Received));
        table.set_qos2("fleet", "d2", 1, None);
        assert!(table.clients.lock().expect("lock").is_empty());
    }
}
