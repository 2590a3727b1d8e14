//! Will messages: when one is due, after its delay, and how it is published.
//!
//! A will is published through a short-lived bridged connection of the client's identity (a
//! `Hello` without a session name, one acknowledged `Publish`, the goodbye), not through the
//! client's own connection, which may be gone by then (taken over, or closed long before the
//! will delay passed). So a will passes the same admission and ACL as any publish of that
//! identity, and counts for a moment as one more connection and session of it.
//!
//! [`Wills`] holds the wills waiting for their delay, one per client id at most (a client id
//! names one session, so they are bounded by the sessions): a new connection for the client id
//! cancels its will (MQTT 5 §3.1.3.2.2), unless it makes a clean start, which ends the session
//! and so publishes the will at once (§3.1.2.5); a gateway that stops drops the wills still
//! waiting.
//!
//! It also tells a connection taken over whether the newer one made a clean start (its
//! session then ended, and its will is due at once), through a flag per live connection, one
//! per client id (bounded by the connections).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use cassini_broker::{BrokerHandle, PeerInfo};
use cassini_protocol::{Frame, FrameDecoder, Hello, PROTOCOL_VERSION};
use tokio_util::sync::CancellationToken;

use crate::bridge::{self, ClientEnd};
use crate::frames;
use crate::headers;
use crate::packets::Will;
use crate::stats::MqttStats;
use crate::topics;

/// How long publishing one will may take, from opening its connection to the goodbye.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);

/// The wills waiting for their delay.
#[derive(Clone)]
pub(crate) struct Wills {
    /// Client id → the will waiting for its delay.
    waiting: Arc<Mutex<HashMap<String, Waiting>>>,
    /// Client id → the flag of the connection holding it: set when a newer connection with a
    /// clean start takes it over.
    holders: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>>,
    next: Arc<AtomicU64>,
    stats: Arc<MqttStats>,
    /// Cancelled when the gateway stops.
    closing: CancellationToken,
}

/// A will waiting for its delay.
struct Waiting {
    /// Its number, so that its task knows it is still the one waiting.
    number: u64,
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
    pub(crate) fn new(stats: Arc<MqttStats>, closing: CancellationToken) -> Self {
        Self {
            waiting: Arc::default(),
            holders: Arc::default(),
            next: Arc::default(),
            stats,
            closing,
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

    /// A connection with a clean start is about to take `client_id` over: the connection
    /// holding it learns that its session ends (before the broker closes it). Returns that
    /// connection's flag, to clear if the broker refuses the newer connection.
    pub(crate) fn clean_start_coming(&self, client_id: &str) -> Option<Arc<AtomicBool>> {
        let holder = self
            .holders
            .lock()
            .ok()
            .and_then(|holders| holders.get(client_id).cloned())?;
        holder.store(true, Ordering::Release);
        Some(holder)
    }

    /// A connection now holds `client_id`: the flag a newer connection with a clean start sets.
    pub(crate) fn hold(&self, client_id: &str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut holders) = self.holders.lock() {
            holders.insert(client_id.to_string(), Arc::clone(&flag));
        }
        flag
    }

    /// The connection with `flag` no longer holds `client_id`.
    pub(crate) fn release(&self, client_id: &str, flag: &Arc<AtomicBool>) {
        if let Ok(mut holders) = self.holders.lock() {
            if holders
                .get(client_id)
                .is_some_and(|held| Arc::ptr_eq(held, flag))
            {
                holders.remove(client_id);
            }
        }
    }

    /// Publishes `will` of `owner` after `delay` (at once if zero), unless a new connection
    /// for the client id cancels it first.
    pub(crate) fn schedule(&self, broker: BrokerHandle, owner: Owner, will: Will, delay: Duration) {
        let wills = self.clone();
        if delay.is_zero() {
            tokio::spawn(async move { wills.publish(&broker, owner, will).await });
            return;
        }
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = CancellationToken::new();
        let now = CancellationToken::new();
        if let Ok(mut waiting) = self.waiting.lock() {
            let entry = Waiting {
                number,
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
        }
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = now.cancelled() => {
                    // `connected` took it out of `waiting` already.
                    wills.publish(&broker, owner, will).await;
                    return;
                }
                () = cancel.cancelled() => return,
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
                wills.publish(&broker, owner, will).await;
            }
        });
    }

    async fn publish(&self, broker: &BrokerHandle, owner: Owner, will: Will) {
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
            }
            Ok(Err(reason)) => {
                self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client_id, %reason, "will not published");
            }
            Err(_) => {
                self.stats.wills_refused.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%client_id, "will not published: the broker did not take it in time");
            }
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
