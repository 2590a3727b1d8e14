//! Will messages: when one is due, after its delay, and how it is published.
//!
//! A will is published through a short-lived bridged connection of the client's identity (a
//! `Hello` without a session name, one acknowledged `Publish`, the goodbye), not through the
//! client's own connection, which may be gone by then (taken over, or closed long before the
//! will delay passed). So a will passes the same admission and ACL as any publish of that
//! identity, and counts for a moment as one more connection and session of it.
//!
//! [`Wills`] holds the wills waiting for their delay, one per client id at most and at most
//! `limits.max_sessions_per_identity` per identity (beyond that the oldest one's session has
//! ended, and it is published at once): a new connection for the client id
//! cancels its will (MQTT 5 §3.1.3.2.2), unless it makes a clean start, which ends the session
//! and so publishes the will at once (§3.1.2.5).
//!
//! In disk mode each connection's will is also kept in the broker's store (one record per client
//! id, `mqtt/will/<client id>`, counted in `storage.max_bytes`), from its `CONNECT` until it is
//! published or cancelled, with when it is due once its connection closed. [`Wills::restore`]
//! reads them back when the gateway starts: a will that was waiting is published when its time
//! comes (the downtime counts), and the will of a connection that was open when the broker
//! stopped is treated as if the connection closed at the restart (MQTT 5 §3.1.2.5 lets a server
//! publish it then): published after its delay from then, unless the client resumes the session
//! first. In memory mode a gateway that stops drops the wills still waiting.
//!
//! A will whose client certificate has been revoked by the time it is due (a reload installed a
//! CRL naming it) is never published: it is counted as refused. This covers the will of a
//! connection the reload itself cut off, a will waiting for its delay, and one restored from the
//! store.
//!
//! It also tells a connection taken over whether the newer one made a clean start (its
//! session then ended, and its will is due at once), through a flag per live connection, one
//! per client id (bounded by the connections).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_broker::{BrokerHandle, PeerInfo};
use cassini_protocol::{Frame, FrameDecoder, Hello, PROTOCOL_VERSION};
use cassini_quic::revocation::RevokedKeys;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, ClientEnd};
use crate::frames;
use crate::headers;
use crate::packets::Will;
use crate::stats::MqttStats;
use crate::topics;

/// How long publishing one will may take, from opening its connection to the goodbye.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
/// The prefix of the wills' keys in the broker's store.
const KEY_PREFIX: &str = "mqtt/will/";

/// The connection holding a client id: its flag (set when a newer connection with a clean
/// start takes it over), and whether its session ends with it.
type Holder = (Arc<AtomicBool>, bool);

/// The wills waiting for their delay.
#[derive(Clone)]
pub(crate) struct Wills {
    /// Client id → the will waiting for its delay.
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    /// Client id → the flag of the connection holding it (set when a newer connection with a
    /// clean start takes it over), and whether that connection's session ends with it.
    holders: Arc<Mutex<HashMap<String, Holder>>>,
    next: Arc<AtomicU64>,
    /// Client id → the number of the will whose record the broker's store holds for it.
    stored: Arc<Mutex<HashMap<String, u64>>>,
    /// The broker whose store keeps the wills (set by `restore`; nothing is stored before).
    broker: Arc<OnceLock<BrokerHandle>>,
    stats: Arc<MqttStats>,
    /// The keys of the certificates the gateway's TLS material revokes (replaced on reload).
    revoked: Arc<RwLock<RevokedKeys>>,
    /// Cancelled when the gateway stops.
    closing: CancellationToken,
}

/// A will as the broker's store keeps it.
#[derive(Debug, Serialize, Deserialize)]
struct StoredWill {
    /// The client's identity.
    identity: String,
    /// The client's address.
    remote_addr: SocketAddr,
    /// The key of the client's certificate, if any.
    certificate: Option<String>,
    /// MQTT 5 (else 3.1.1).
    v5: bool,
    /// The will.
    will: Will,
    /// How long after its connection closes it is due, in ms: its delay, or its session's
    /// expiry if shorter (0: at once).
    delay_ms: u64,
    /// When it is due, in ms since the Unix epoch; `None` while its connection is open.
    due_at_ms: Option<u64>,
}

impl StoredWill {
    /// The record of `owner`'s `will`.
    fn of(owner: &Owner, will: &Will, delay_ms: u64, due_at_ms: Option<u64>) -> Self {
        Self {
            identity: owner.peer.identity.to_string(),
            remote_addr: owner.peer.remote_addr,
            certificate: owner.peer.certificate.as_deref().map(str::to_owned),
            v5: owner.protocol == "mqtt/5",
            will: will.clone(),
            delay_ms,
            due_at_ms,
        }
    }
}

/// A will waiting for its delay.
struct Waiting {
    /// Its number, so that its task knows it is still the one waiting.
    number: u64,
    /// Its client's identity.
    identity: Arc<str>,
    /// Cancelled when a new connection for the client id cancels it.
    cancel: CancellationToken,
    /// Cancelled when its session ends before the delay (a clean start): published at once.
    now: CancellationToken,
}

/// Whose will it is.
pub(crate) struct Owner {
    /// The client's identity and address.
    pub(crate) peer: PeerInfo,
    /// Its protocol, as `/connz` shows it.
    pub(crate) protocol: &'static str,
    /// Its client id.
    pub(crate) client_id: String,
}

impl Wills {
    pub(crate) fn new(
        stats: Arc<MqttStats>,
        revoked: RevokedKeys,
        closing: CancellationToken,
    ) -> Self {
        Self {
            waiting: Arc::default(),
            holders: Arc::default(),
            next: Arc::default(),
            stored: Arc::default(),
            broker: Arc::default(),
            stats,
            revoked: Arc::new(RwLock::new(revoked)),
            closing,
        }
    }

    /// Installs the revoked certificate keys of reloaded TLS material: from now on, no will of
    /// those certificates is published.
    pub(crate) fn set_revoked(&self, revoked: RevokedKeys) {
        if let Ok(mut slot) = self.revoked.write() {
            *slot = revoked;
        }
    }

    /// Whether `peer`'s certificate is revoked (a poisoned lock counts as revoked: refuse).
    fn is_revoked(&self, peer: &PeerInfo) -> bool {
        let Some(key) = &peer.certificate else {
            return false;
        };
        self.revoked
            .read()
            .map_or(true, |revoked| revoked.contains(key.as_ref()))
    }

    /// Reads back the wills the broker's store kept (disk mode) and schedules each, and from now
    /// keeps every will there until it is published or cancelled.
    pub(crate) fn restore(&self, broker: &BrokerHandle) {
        if self.broker.set(broker.clone()).is_err() {
            return;
        }
        let now = headers::unix_millis();
        for (key, value) in broker.take_gateway_records(KEY_PREFIX) {
            let client_id = key[KEY_PREFIX.len()..].to_string();
            let stored = match rmp_serde::from_slice::<StoredWill>(&value) {
                Ok(stored) => stored,
                Err(err) => {
                    tracing::warn!(%client_id, %err, "stored will not readable: dropped");
                    let _ = broker.put_gateway_record(&key, None);
                    continue;
                }
            };
            let delay = match stored.due_at_ms {
                Some(at) => at.saturating_sub(now),
                None => stored.delay_ms,
            };
            tracing::info!(%client_id, due_in_ms = delay, open_at_stop = stored.due_at_ms.is_none(), "will restored from the store");
            let owner = Owner {
                peer: PeerInfo {
                    identity: Arc::from(stored.identity),
                    remote_addr: stored.remote_addr,
                    certificate: stored.certificate.map(Arc::from),
                },
                protocol: if stored.v5 { "mqtt/5" } else { "mqtt/3.1.1" },
                client_id: client_id.clone(),
            };
            let number = self.next.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut held) = self.stored.lock() {
                held.insert(client_id, number);
            }
            self.schedule_stored(
                broker.clone(),
                owner,
                stored.will,
                Duration::from_millis(delay),
                number,
            );
        }
    }

    /// A connection of `owner` with `will` was accepted; the will is due `delay` after the
    /// connection closes without a goodbye. In disk mode its record is stored, so a restart
    /// publishes it. Returns the will's number, for [`Wills::forget`] and [`Wills::schedule`].
    pub(crate) fn remember(&self, owner: &Owner, will: &Will, delay: Duration) -> u64 {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let Some(broker) = self.broker.get() else {
            return number;
        };
        if broker.config().storage.mode != cassini_broker::storage::StorageMode::Disk {
            return number;
        }
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        let record = StoredWill::of(owner, will, delay_ms, None);
        if let Ok(mut held) = self.stored.lock() {
            if store(broker, &owner.client_id, Some(&record)) {
                held.insert(owner.client_id.clone(), number);
            }
        }
        number
    }

    /// The will `number` of `client_id` is published, cancelled or not due: its record goes
    /// (unless a newer connection's will replaced it).
    pub(crate) fn forget(&self, client_id: &str, number: u64) {
        let Ok(mut held) = self.stored.lock() else {
            return;
        };
        if held.get(client_id) == Some(&number) {
            held.remove(client_id);
            if let Some(broker) = self.broker.get() {
                store(broker, client_id, None);
            }
        }
    }

    /// The will `number` of `client_id`, stored while its connection was open, is now due
    /// at `due_at_ms`.
    fn due(&self, owner: &Owner, will: &Will, number: u64, due_at_ms: u64) {
        let Ok(held) = self.stored.lock() else {
            return;
        };
        if held.get(&owner.client_id) != Some(&number) {
            return;
        }
        if let Some(broker) = self.broker.get() {
            let record = StoredWill::of(owner, will, 0, Some(due_at_ms));
            store(broker, &owner.client_id, Some(&record));
        }
    }

    /// A new connection for `client_id` was accepted: the will waiting for its delay, if any,
    /// is not published; with `clean_start` its session ended, and it is published at once.
    pub(crate) fn connected(&self, client_id: &str, clean_start: bool) {
        let waiting = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut waiting| waiting.remove(client_id));
        let Some(waiting) = waiting else {
            return;
        };
        self.stats.wills_waiting.fetch_sub(1, Ordering::Relaxed);
        if clean_start {
            tracing::debug!(
                client_id,
                "a clean start ended the session: the will waiting for its delay is published"
            );
            waiting.now.cancel();
        } else {
            waiting.cancel.cancel();
            self.stats.wills_cancelled.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                client_id,
                "a new connection cancelled the will waiting for its delay"
            );
        }
    }

    /// Keeps at most `most` wills of `identity` waiting: the broker keeps at most that many
    /// sessions of an identity, so the session of an older waiting will has ended (MQTT 5
    /// §3.1.2.5: its will is due then). The oldest beyond `most` are published at once.
    fn end_oldest_beyond(
        &self,
        waiting: &mut HashMap<String, Waiting>,
        identity: &Arc<str>,
        most: usize,
    ) {
        loop {
            let mut count = 0;
            let mut oldest: Option<(&String, u64)> = None;
            for (client_id, entry) in waiting.iter() {
                if entry.identity != *identity {
                    continue;
                }
                count += 1;
                if oldest.is_none_or(|(_, number)| entry.number < number) {
                    oldest = Some((client_id, entry.number));
                }
            }
            let Some((client_id, _)) = oldest.filter(|_| count > most.max(1)) else {
                return;
            };
            let client_id = client_id.clone();
            if let Some(entry) = waiting.remove(&client_id) {
                self.stats.wills_waiting.fetch_sub(1, Ordering::Relaxed);
                tracing::debug!(
                    %client_id,
                    "more wills of its identity waiting than it may have sessions: published now"
                );
                entry.now.cancel();
            }
        }
    }

    /// A connection with a clean start is about to take `client_id` over: the connection
    /// holding it learns that its session ends (before the broker closes it). Returns that
    /// connection's flag, to clear if the broker refuses the newer connection.
    pub(crate) fn clean_start_coming(&self, client_id: &str) -> Option<Arc<AtomicBool>> {
        let holder = self
            .holders
            .lock()
            .ok()
            .and_then(|holders| holders.get(client_id).map(|(flag, _)| Arc::clone(flag)))?;
        holder.store(true, Ordering::Release);
        Some(holder)
    }

    /// Whether the connection holding `client_id` now, if any, has a session that ends with
    /// it (a 3.1.1 clean session, an MQTT 5 Session Expiry of 0).
    pub(crate) fn held_session_ends(&self, client_id: &str) -> bool {
        self.holders
            .lock()
            .ok()
            .and_then(|holders| holders.get(client_id).map(|(_, ends)| *ends))
            .unwrap_or(false)
    }

    /// A connection now holds `client_id` (its session ending with it, or not): the flag a
    /// newer connection with a clean start sets.
    pub(crate) fn hold(&self, client_id: &str, session_ends: bool) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut holders) = self.holders.lock() {
            holders.insert(client_id.to_string(), (Arc::clone(&flag), session_ends));
        }
        flag
    }

    /// The connection with `flag` no longer holds `client_id`.
    pub(crate) fn release(&self, client_id: &str, flag: &Arc<AtomicBool>) {
        if let Ok(mut holders) = self.holders.lock() {
            if holders
                .get(client_id)
                .is_some_and(|(held, _)| Arc::ptr_eq(held, flag))
            {
                holders.remove(client_id);
            }
        }
    }

    /// Publishes `will` of `owner` (its number from [`Wills::remember`]) after `delay` (at
    /// once if zero), unless a new connection for the client id cancels it first.
    pub(crate) fn schedule(
        &self,
        broker: BrokerHandle,
        owner: Owner,
        will: Will,
        delay: Duration,
        number: u64,
    ) {
        if !delay.is_zero() {
            let due_at_ms = headers::unix_millis()
                .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX));
            self.due(&owner, &will, number, due_at_ms);
        }
        self.schedule_stored(broker, owner, will, delay, number);
    }

    /// [`Wills::schedule`] for a will whose record, if any, already says when it is due.
    fn schedule_stored(
        &self,
        broker: BrokerHandle,
        owner: Owner,
        will: Will,
        delay: Duration,
        number: u64,
    ) {
        let wills = self.clone();
        if delay.is_zero() {
            tokio::spawn(async move { wills.publish(&broker, owner, will, number).await });
            return;
        }
        let cancel = CancellationToken::new();
        let now = CancellationToken::new();
        if let Ok(mut waiting) = self.waiting.lock() {
            let entry = Waiting {
                number,
                identity: Arc::clone(&owner.peer.identity),
                cancel: cancel.clone(),
                now: now.clone(),
            };
            match waiting.insert(owner.client_id.clone(), entry) {
                // Not expected (a new connection cancels first), but never two for one id.
                Some(older) => older.cancel.cancel(),
                None => {
                    self.stats.wills_waiting.fetch_add(1, Ordering::Relaxed);
                }
            }
            let most = broker.config().limits.max_sessions_per_identity;
            self.end_oldest_beyond(&mut waiting, &owner.peer.identity, most);
        }
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = now.cancelled() => {
                    // `connected` took it out of `waiting` already.
                    wills.publish(&broker, owner, will, number).await;
                    return;
                }
                () = cancel.cancelled() => {
                    wills.forget(&owner.client_id, number);
                    return;
                }
                // Its record (disk mode) stays for the restart.
                () = wills.closing.cancelled() => return,
            }
            let due = wills.waiting.lock().ok().is_some_and(|mut waiting| {
                let ours = waiting
                    .get(&owner.client_id)
                    .is_some_and(|waiting| waiting.number == number);
                if ours {
                    waiting.remove(&owner.client_id);
                }
                ours
            });
            if due {
                wills.stats.wills_waiting.fetch_sub(1, Ordering::Relaxed);
                wills.publish(&broker, owner, will, number).await;
            }
        });
    }

    /// Publishes will `number`; then its record goes, unless the publish failed while the
    /// gateway is stopping (the stopping broker refused it): then it is published after the
    /// restart.
    async fn publish(&self, broker: &BrokerHandle, owner: Owner, will: Will, number: u64) {
        let client_id = owner.client_id.clone();
        let published = self.publish_once(broker, owner, will).await;
        if published || !self.closing.is_cancelled() {
            self.forget(&client_id, number);
        }
    }

    /// Whether the will is settled: the broker took it, or its certificate is revoked (then it
    /// is never published).
    async fn publish_once(&self, broker: &BrokerHandle, owner: Owner, will: Will) -> bool {
        if self.is_revoked(&owner.peer) {
            self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(client_id = %owner.client_id, "will not published: its certificate was revoked");
            return true;
        }
        let (broker_end, client) = bridge::connection(owner.peer, owner.protocol);
        broker.accept(Arc::new(broker_end));
        let client_id = owner.client_id;
        let max_frame = broker.config().limits.max_frame_bytes;
        let outcome =
            tokio::time::timeout(PUBLISH_WAIT, publish(&client, &client_id, will, max_frame)).await;
        client.close("will published");
        match outcome {
            Ok(Ok(())) => {
                self.stats.wills_published.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(Err(reason)) => {
                self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client_id, %reason, "will not published");
                false
            }
            Err(_) => {
                self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client_id, "will not published: the broker did not take it in time");
                false
            }
        }
    }
}

/// Writes (`Some`) or removes `client_id`'s will record in the broker's store; false if it
/// could not be written (then a restart does not publish it).
fn store(broker: &BrokerHandle, client_id: &str, record: Option<&StoredWill>) -> bool {
    let value = match record.map(rmp_serde::to_vec).transpose() {
        Ok(value) => value.map(Bytes::from),
        Err(err) => {
            tracing::warn!(%client_id, %err, "will not stored");
            return false;
        }
    };
    match broker.put_gateway_record(&format!("{KEY_PREFIX}{client_id}"), value) {
        Ok(()) => true,
        Err(err) => {
            tracing::warn!(%client_id, %err, "will not stored: a restart will not publish it");
            false
        }
    }
}

/// Publishes `will` of `client_id` on `client`, a connection of its own: `Hello`, one
/// acknowledged `Publish`, goodbye.
async fn publish(
    client: &ClientEnd,
    client_id: &str,
    will: Will,
    max_frame: u32,
) -> Result<(), String> {
    let topic = topics::topic_to_cassini(&will.topic).map_err(|err| err.to_string())?;
    // The will's Message Expiry Interval runs from its publication (MQTT 5 §3.1.3.2.4).
    let outgoing = headers::to_cassini(will.properties, will.retain, headers::unix_millis())
        .map_err(|err| format!("response topic: {err}"))?;
    let decoder = FrameDecoder::new(max_frame);
    let mut scratch = BytesMut::new();
    let refused = |what: &str| {
        let why = client
            .close_reason()
            .map_or_else(String::new, |(code, reason)| format!(": {code}: {reason}"));
        format!("{what}{why}")
    };
    let mut control = client
        .open_bi()
        .await
        .map_err(|_| refused("no connection"))?;
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: None,
        client_name: Some(format!("will of {client_id}")),
        positions: Vec::new(),
        session_name: None,
    });
    let mut buf = BytesMut::new();
    let welcomed = frames::send(&mut control.send, &hello, &mut scratch, max_frame).await
        && matches!(
            frames::next(&mut control.recv, &mut buf, &decoder).await,
            Ok(Frame::Welcome(_))
        );
    if !welcomed {
        return Err(refused("no Welcome"));
    }
    let mut stream = client
        .open_bi()
        .await
        .map_err(|_| refused("no publish stream"))?;
    let publish = Frame::Publish(cassini_protocol::Publish {
        topic,
        headers: outgoing.headers,
        payload: will.payload,
        // The broker's dedupe window is keyed by identity and message id: a fixed id would make
        // the identity's next will within the window a "duplicate", acknowledged and dropped.
        message_id: Some(rand::random::<u64>() >> 1),
        reply_to: outgoing.reply_to,
        retain: will.retain,
        to_session: None,
        ack: true,
    });
    let mut answers = BytesMut::new();
    let answer = if frames::send(&mut stream.send, &publish, &mut scratch, max_frame).await {
        frames::next(&mut stream.recv, &mut answers, &decoder).await
    } else {
        Err(frames::ReadError::Ended)
    };
    let result = match answer {
        Ok(Frame::PublishAck(_)) => Ok(()),
        Ok(Frame::PublishRejected(rejected)) => Err(format!(
            "refused by the broker: {}: {}",
            rejected.code, rejected.reason
        )),
        _ => Err(refused("no answer to the publish")),
    };
    // Finishing the control stream is the goodbye: the broker ends the will's session.
    let _ = stream.send.finish();
    let _ = control.send.finish();
    client.closed().await;
    result
}
