//! One way in for a publish, whatever it arrived by: a publish stream, a QUIC datagram or the
//! embedding program's [`LocalClient`](crate::local::LocalClient).
//!
//! [`Publisher::admit`] runs every check and every step, in this order: the topic name, the
//! payload and header limits and the `reply_to` name, the memory budget (the message is charged
//! to it here), the ACL (for a client: its topic and, for a request, its `reply_to`), the disk
//! store's health and disk limit (disk mode), then, for an acknowledged publish, the message id
//! and the dedupe window; then it keeps a retained value, routes the message (in a cluster:
//! also to each peer with matching interest, [`crate::cluster::Cluster::forward`]) and counts it
//! (`received`, `no_responders`, `duplicates`; a refusal counts as `publishes_rejected`). It
//! returns an [`Admitted`] outcome or the refusal; each entry point only turns that into frames
//! (or nothing, for a datagram) or a `Result`.
//!
//! What differs by source is stated once, in [`Source`]: the embedding program has no
//! certificate identity, so the ACL does not apply to it and its retained values count against
//! no identity's quota; only a publish stream answers, so only it honours `ack`. The broker's
//! own system events ([`Source::System`]) are the only publishes to a reserved (`$`) topic;
//! they are counted as `events_published`, not as received messages or topic traffic.
//!
//! A message forwarded by a cluster peer ([`Source::Peer`]) was checked against the ACL on the node where
//! it was published; here it goes only to local subscribers (one hop), to the queue groups the
//! peer named, and is never retained or forwarded again.
//!
//! In a cluster with `members` (docs/CLUSTERING.md, "Retained values and the dedupe window"),
//! a retained publish and an acknowledged one need the cluster's quorum (refused with
//! `NO_QUORUM` on a node without its lease), a publish is a duplicate if this node's window or
//! the cluster's holds its pair, and an accepted pair is appended to the Raft log with what the
//! publish stored, its `PublishAck` waiting for that entry.
//!
//! A client's refusal by the ACL is also emitted as an `authorization_failed` system event.

use std::sync::Arc;
use std::time::Instant;

use cassini_protocol::codec::header_size;
use cassini_protocol::{Headers, Publish, SessionId, SubscriptionId, TopicLimits, TopicName};

use crate::acl::{AclHandle, PermissionCache};
use crate::config::{BrokerConfig, BrokerLimits};
use crate::context::Shared;
use crate::error::BrokerError;
use crate::events::Event;
use crate::introspect::traffic::{TopicTraffic, TrafficSlot};
use crate::memory::MemoryCharge;
use crate::message::PublishedMessage;
use crate::router::{Acknowledged, FromPeer, RouteCache, Router};
use crate::storage::delivery_index::DeliveryTarget;
use crate::storage::records::DedupeRecord;
use crate::storage::replicated::{take_appended, Binding};
use crate::storage::{unix_ms, DiskStore, Op, StorageError};
use cassini_replication::DELIVERY;

/// Where publishes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// A client's publish stream: acknowledgements honoured, routes cached per stream.
    Stream,
    /// A client's QUIC datagrams: fire and forget, `ack` is ignored.
    Datagram,
    /// The embedding program: no identity, no ACL, no acknowledgement.
    Local,
    /// The broker's system publisher: topics under `$SYS` only, no identity, no ACL, no
    /// acknowledgement, no retained value; not counted as received messages.
    System,
    /// A cluster peer's forwards: local subscribers only, no ACL (checked at the origin), no
    /// acknowledgement.
    Peer,
}

/// What became of an admitted publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Admitted {
    /// Routed (and retained, if asked).
    Routed {
        /// How many subscriptions it was offered to.
        offered: usize,
        /// The `reply_to` of a request that reached nobody: the publisher hears `NoResponders`.
        no_responders: Option<String>,
        /// The message id to acknowledge, for an acknowledged publish.
        acknowledged: Option<u64>,
    },
    /// A retry of an acknowledged publish already accepted inside the dedupe window: it is
    /// acknowledged again as a duplicate, not routed again.
    Duplicate {
        /// Its message id.
        message_id: u64,
    },
}

/// One publisher (a publish stream, a connection's datagrams, or the embedding program) and
/// what its publishes remember between them: the publisher's permissions, and for its last
/// topic the parsed name and, on a stream, the matching routes. A stream usually publishes to
/// one topic over and over; then a publish neither parses its topic again nor allocates a new
/// name for it nor walks the filter trie (`Router::publish_cached`; measured in
/// docs/BENCHMARKS.md).
pub(crate) struct Publisher {
    source: Source,
    /// The client's certificate identity and its permissions; `None` for the embedding program.
    client: Option<(Arc<str>, PermissionCache)>,
    topic: Option<TopicName>,
    routes: Option<RouteCache>,
    /// The last topic's traffic counter.
    traffic: TrafficSlot,
    /// The replicated store's ticket of what the last acknowledged publish appended (its
    /// dedupe pair, retained value, messages for named sessions; 0: nothing).
    replicated_ticket: u64,
}

impl Publisher {
    /// The publishes of the client `identity` arriving by `source` (a stream or datagrams).
    pub(crate) fn client(shared: &Shared, identity: Arc<str>, source: Source) -> Self {
        let permissions = PermissionCache::new(&shared.acl, &identity);
        Self {
            source,
            client: Some((identity, permissions)),
            topic: None,
            routes: (source == Source::Stream).then(RouteCache::default),
            traffic: TrafficSlot::default(),
            replicated_ticket: 0,
        }
    }

    /// The embedding program's publishes.
    pub(crate) fn local() -> Self {
        Self::anonymous(Source::Local)
    }

    /// The broker's system publisher's publishes (its events).
    pub(crate) fn system() -> Self {
        Self::anonymous(Source::System)
    }

    fn anonymous(source: Source) -> Self {
        Self {
            source,
            client: None,
            topic: None,
            routes: None,
            traffic: TrafficSlot::default(),
            replicated_ticket: 0,
        }
    }

    /// The forwards of one cluster peer.
    pub(crate) fn peer() -> Self {
        Self::anonymous(Source::Peer)
    }

    /// Runs every check on `publish` and, if it passes, routes it (see the module docs). Takes
    /// the payload, headers and `reply_to` out of `publish` and leaves its topic string (for a
    /// rejection's text). A refusal is counted here.
    pub(crate) fn admit(
        &mut self,
        shared: &Shared,
        publish: &mut Publish,
    ) -> Result<Admitted, BrokerError> {
        let admitted = self.checked(shared, publish, None);
        match &admitted {
            Err(_) if self.source == Source::System => shared.router.counters().event_dropped(),
            Err(err) => {
                shared.router.counters().rejected();
                if let (BrokerError::NotAuthorized { action, target }, Some((identity, _))) =
                    (err, &self.client)
                {
                    shared.emit(Event::AuthorizationFailed {
                        identity: identity.to_string(),
                        action: (*action).to_string(),
                        target: target.clone(),
                    });
                }
            }
            Ok(_) if self.source == Source::System => shared.router.counters().event_published(),
            Ok(_) => {}
        }
        admitted
    }

    /// [`Publisher::admit`] for a message a cluster peer forwarded (a [`Publisher::peer`]): it
    /// goes to local plain subscribers and to one member of each queue group in `groups`, or,
    /// a direct message (`to_session`), to that session's matching subscriptions only.
    /// The subscriptions in `delivered` are left out: the origin delivered the message to them
    /// through the cluster's records ([`Delivery`]). An acknowledged publish's forward names
    /// its publisher, `acknowledged_by` (with the message id, its dedupe pair): a resend this
    /// node already handed to its subscriptions goes only to the replicated ones.
    pub(crate) fn admit_forwarded(
        &mut self,
        shared: &Shared,
        publish: &mut Publish,
        groups: &[String],
        delivered: &[(SessionId, SubscriptionId)],
        acknowledged_by: Option<Arc<str>>,
    ) -> Result<Admitted, BrokerError> {
        publish.retain = false;
        publish.ack = false;
        let acknowledged =
            acknowledged_by
                .as_ref()
                .zip(publish.message_id)
                .map(|(identity, message_id)| Acknowledged {
                    identity,
                    message_id,
                });
        let from_peer = FromPeer {
            groups,
            delivered,
            acknowledged,
        };
        let admitted = self.checked(shared, publish, Some(from_peer));
        if admitted.is_err() {
            shared.router.counters().rejected();
        }
        admitted
    }

    fn checked(
        &mut self,
        shared: &Shared,
        publish: &mut Publish,
        from_peer: Option<FromPeer<'_>>,
    ) -> Result<Admitted, BrokerError> {
        let topic = self.topic_name(&publish.topic, &shared.config)?;
        let retain = publish.retain && self.source != Source::System;
        let message = accept(publish, topic, shared)?;
        if let Some((identity, permissions)) = &mut self.client {
            authorize(
                permissions,
                &shared.acl,
                identity,
                &message,
                &shared.config.limits.topics,
            )?;
        }
        let target = publish.to_session;
        if let Some(store) = &shared.storage {
            // A system event reaching no stored queue owes the store nothing: a warning that
            // the store failed must still reach its readers.
            let concerns_store = self.source != Source::System
                || shared.router.reaches_stored_queue(&message.topic, target);
            if concerns_store {
                check_room(&shared.router, store, &message, target, retain)?;
            }
        }
        if let Some(store) = shared.replicated() {
            // Named sessions' at-least-once queues store in the cluster's records.
            if self.source != Source::System
                && shared
                    .router
                    .reaches_replicated_queue(&message.topic, target)
            {
                store.usable()?;
                if !store.has_room_for(message.memory_size()) {
                    return Err(StorageError::Full {
                        limit: store.max_bytes(),
                    }
                    .into());
                }
            }
            // A retained value and an acknowledged publish's dedupe pair go through the log:
            // refused at once on a node cut off from the majority.
            let acknowledged =
                publish.ack && self.source == Source::Stream && self.client.is_some();
            if retain || acknowledged {
                store.usable()?;
            }
        }
        let identity = self.client.as_ref().map(|(identity, _)| identity);
        let acknowledged = match identity {
            Some(identity) if publish.ack && self.source == Source::Stream => Some((
                identity,
                publish.message_id.ok_or(BrokerError::MissingMessageId)?,
            )),
            _ => None,
        };
        let delivery = match (&acknowledged, target) {
            (Some(_), None) => Delivery::prepare(shared, &message)?,
            _ => Delivery::default(),
        };
        let routes = self.routes.as_mut();
        let traffic =
            (self.source != Source::System).then_some((&shared.traffic, &mut self.traffic));
        let Some((identity, message_id)) = acknowledged else {
            let (offered, no_responders) = route(
                &shared.router,
                identity,
                Arc::new(message),
                target,
                retain,
                routes,
                traffic,
                from_peer,
                &[],
                None,
            )?;
            return Ok(Admitted::Routed {
                offered,
                no_responders,
                acknowledged: None,
            });
        };
        // In disk mode the messages this publish stores and its dedupe entry go into one commit:
        // a crash never keeps the entry without the messages (a retry would be taken for a
        // duplicate and the message lost) nor the messages without the entry (a retry would be
        // delivered twice).
        let _whole = shared.storage.as_ref().map(|store| store.hold());
        let _replicated = shared.replicated().map(|store| store.hold());
        let mut first_at = 0;
        if accepted_in_cluster(shared, identity, message_id)
            || !shared
                .dedupe
                .note(identity, message_id, Instant::now(), |at| first_at = *at)
        {
            // A first publish whose entry is not committed yet (late, or on its way) may
            // still be refused: the duplicate's acknowledgement waits for the same entry. One
            // refused already is answered so too (its own answer, which forgets the pair,
            // may not have been written yet).
            self.replicated_ticket = shared
                .replicated()
                .filter(|store| first_at > store.committed() || store.was_refused(first_at))
                .map_or(0, |_| first_at);
            shared.router.counters().duplicate();
            return Ok(Admitted::Duplicate { message_id });
        }
        // Routing is synchronous, on this thread: what it appends to the replicated store
        // is this publish's.
        take_appended();
        let message = Arc::new(message);
        let routed = route(
            &shared.router,
            Some(identity),
            Arc::clone(&message),
            target,
            retain,
            routes,
            traffic,
            None,
            &delivery.skipped,
            Some(Acknowledged {
                identity,
                message_id,
            }),
        );
        if routed.is_ok() {
            delivery.deliver(shared, &message);
            remember(shared, identity, message_id);
        } else {
            // Refused before anything was routed (its retained value): a resend is new.
            shared.dedupe.forget(identity, message_id);
        }
        self.replicated_ticket = take_appended();
        if self.replicated_ticket > 0 {
            let ticket = self.replicated_ticket;
            shared
                .dedupe
                .note(identity, message_id, Instant::now(), |at| *at = ticket);
        }
        let (offered, no_responders) = routed?;
        Ok(Admitted::Routed {
            offered,
            no_responders,
            acknowledged: Some(message_id),
        })
    }

    /// The replicated store's ticket an acknowledged publish just admitted must wait for
    /// before its `PublishAck` (its dedupe pair, its retained value, what it stored for named
    /// sessions), if any.
    pub(crate) fn take_replicated_ticket(&mut self) -> Option<u64> {
        Some(std::mem::take(&mut self.replicated_ticket)).filter(|ticket| *ticket > 0)
    }

    /// The checked name of `topic`, reusing the last one when it is the same string.
    fn topic_name(&mut self, topic: &str, config: &BrokerConfig) -> Result<TopicName, BrokerError> {
        if let Some(last) = self.topic.as_ref().filter(|last| last.as_str() == topic) {
            return Ok(last.clone());
        }
        let name = if self.source == Source::System {
            TopicName::reserved(topic, &config.limits.topics)
        } else {
            TopicName::parse(topic, &config.limits.topics)
        }
        .map_err(BrokerError::InvalidTopic)?;
        self.topic = Some(name.clone());
        Ok(name)
    }
}

/// Whether the cluster's replicated dedupe window (a cluster with `members`) holds this
/// publish, accepted on any node within the window.
fn accepted_in_cluster(shared: &Shared, identity: &Arc<str>, message_id: u64) -> bool {
    shared
        .router
        .cluster()
        .and_then(|cluster| cluster.ownership())
        .is_some_and(|ownership| ownership.replica().seen(identity, message_id, unix_ms()))
}

/// Keeps an accepted acknowledged publish's dedupe pair: in a cluster with `members`, in the
/// cluster's window, in the same log entry as what the publish stored for named sessions
/// (the acknowledgement waits for it); else in the disk store (disk mode).
fn remember(shared: &Shared, identity: &Arc<str>, message_id: u64) {
    match shared.replicated() {
        Some(store) => store.append_shared([Op::PutDedupe(DedupeRecord {
            at_ms: unix_ms(),
            identity: identity.to_string(),
            message_id,
        })]),
        None => shared.dedupe.store(identity, message_id),
    }
}

/// Checks a publish against the limits and the memory budget and turns it into the broker's
/// shared form, charged to the budget, with the topic already checked as `topic`.
fn accept(
    publish: &mut Publish,
    topic: TopicName,
    shared: &Shared,
) -> Result<PublishedMessage, BrokerError> {
    let limits = &shared.config.limits;
    if publish.payload.len() > limits.max_payload_bytes as usize {
        return Err(BrokerError::PayloadTooLarge {
            size: publish.payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    check_headers(&publish.headers, limits)?;
    if let Some(reply_to) = &publish.reply_to {
        TopicName::parse(reply_to, &limits.topics).map_err(BrokerError::InvalidTopic)?;
    }
    let mut message = PublishedMessage {
        topic,
        headers: std::mem::take(&mut publish.headers),
        payload: std::mem::take(&mut publish.payload),
        message_id: publish.message_id,
        reply_to: publish.reply_to.take(),
        retained: false,
        charge: MemoryCharge::none(),
    };
    message.charge = shared.memory.charge_message(message.memory_size())?;
    Ok(message)
}

/// Refuses headers beyond `limits.max_headers` or `limits.max_header_bytes`.
fn check_headers(headers: &Headers, limits: &BrokerLimits) -> Result<(), BrokerError> {
    let (count, bytes) = header_size(headers);
    if count > limits.max_headers as usize {
        return Err(BrokerError::TooManyHeaders {
            count,
            max: limits.max_headers,
        });
    }
    if bytes > limits.max_header_bytes as usize {
        return Err(BrokerError::HeadersTooLarge {
            size: bytes,
            max: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Lets `message` through if the ACL allows its publisher that topic and, for a request, allows
/// it to receive on the `reply_to` topic (so a reply goes only where the requester may read).
fn authorize(
    cache: &mut PermissionCache,
    acl: &AclHandle,
    identity: &str,
    message: &PublishedMessage,
    limits: &TopicLimits,
) -> Result<(), BrokerError> {
    if !cache.may_publish(acl, identity, &message.topic) {
        return Err(BrokerError::NotAuthorized {
            action: "publish to",
            target: message.topic.to_string(),
        });
    }
    if let Some(reply_to) = &message.reply_to {
        let reply_to = TopicName::parse(reply_to, limits).map_err(BrokerError::InvalidTopic)?;
        if !cache.get(acl, identity).may_receive(&reply_to) {
            return Err(BrokerError::NotAuthorized {
                action: "ask for replies on",
                target: reply_to.to_string(),
            });
        }
    }
    Ok(())
}

/// Refuses any publish once the store failed or closed (routing it would hand subscribers
/// messages and sequence numbers that no commit will keep), and a publish that would store a
/// message beyond the disk limit.
fn check_room(
    router: &Router,
    store: &DiskStore,
    message: &PublishedMessage,
    target: Option<SessionId>,
    retain: bool,
) -> Result<(), BrokerError> {
    store.usable()?;
    if store.has_room_for(message.memory_size()) {
        return Ok(());
    }
    if retain || router.reaches_stored_queue(&message.topic, target) {
        return Err(StorageError::Full {
            limit: store.max_disk_bytes(),
        }
        .into());
    }
    Ok(())
}

/// Keeps `message` as its topic's retained value if asked (counted against `identity`'s
/// quota, if any), routes it (through `routes` when given) and counts it: as a received
/// message and in its topic's `traffic` when given (every publish but a system event's). In a
/// cluster, a counted message that did not come `from_peer` is also forwarded to the peers
/// whose interest matches (a system event is not: it stays on its node), and a direct message
/// for a session this node does not hold goes to the peer holding it; one that came
/// `from_peer` goes to local subscribers only, to the groups named (a direct one: to its
/// session's subscriptions). An `acknowledged` publish (or a forward naming its pair) this
/// node already handed to its subscriptions, a resend through another node, goes only to the
/// replicated ones; its forwards carry its publisher's identity. Returns how many
/// subscriptions (and peers) it was offered to, and the `reply_to` of a request that reached
/// nobody (never for a forwarded message: its origin decides that).
// The steps of one publish, each its own argument so every caller names what it passes.
#[allow(clippy::too_many_arguments)]
fn route(
    router: &Router,
    identity: Option<&Arc<str>>,
    message: Arc<PublishedMessage>,
    target: Option<SessionId>,
    retain: bool,
    routes: Option<&mut RouteCache>,
    traffic: Option<(&TopicTraffic, &mut TrafficSlot)>,
    from_peer: Option<FromPeer<'_>>,
    delivered: &[(SessionId, SubscriptionId)],
    acknowledged: Option<Acknowledged<'_>>,
) -> Result<(usize, Option<String>), BrokerError> {
    if retain {
        router.retain(&message, identity)?;
    }
    let report = match from_peer {
        // A direct message a peer forwarded: to its session's matching subscriptions only.
        Some(from) if target.is_some() => {
            router.publish_admitted(&message, target, None, from.acknowledged)
        }
        Some(from) => router.publish_from_peer(&message, from),
        None => router.publish_admitted_except(&message, target, routes, acknowledged, delivered),
    };
    let mut offered = report.offered;
    if let (None, true, Some(cluster)) = (from_peer, traffic.is_some(), router.cluster()) {
        let acknowledged_by = acknowledged.map(|acknowledged| acknowledged.identity);
        offered += match target {
            None => cluster.forward(&message, delivered, acknowledged_by),
            Some(session) if report.offered == 0 => {
                cluster.forward_direct(&message, session, acknowledged_by)
            }
            Some(_) => 0,
        };
    }
    if let Some((traffic, slot)) = traffic {
        router.counters().received(message.payload.len());
        traffic.count(slot, &message.topic, message.payload.len());
    }
    let no_responders = match &message.reply_to {
        Some(reply_to) if offered == 0 && from_peer.is_none() => {
            router.counters().no_responders();
            Some(reply_to.clone())
        }
        _ => None,
    };
    Ok((offered, no_responders))
}

/// An acknowledged publish's deliveries through the cluster's records (docs/CLUSTERING.md,
/// "Replicated sessions"): to each at-least-once subscription of a named session that another
/// node owns, or that no node serves now, it is written into that session's records before
/// its `PublishAck`, and the session's owner queues it from there; the forward to the owner
/// names those subscriptions so the owner does not also route it to them.
#[derive(Default)]
struct Delivery {
    targets: Vec<Arc<DeliveryTarget>>,
    /// The same subscriptions as routing names them.
    skipped: Vec<(SessionId, SubscriptionId)>,
}

impl Delivery {
    /// The deliveries a message needs, refused as routing to a replicated queue is: without
    /// the lease, or beyond the records' bound.
    fn prepare(shared: &Shared, message: &PublishedMessage) -> Result<Self, BrokerError> {
        let Some(ownership) = shared.router.cluster().and_then(|c| c.ownership()) else {
            return Ok(Self::default());
        };
        let mut targets = ownership.delivery_targets(&message.topic);
        if targets.is_empty() {
            return Ok(Self::default());
        }
        // Those served here store it through this node's routing; the others (another node
        // serves them, or none: also a session this node owns but has not taken up) get it
        // through the records, and so does one served here behind a delivery of this node's
        // that it has not queued yet (it would overtake it).
        let served = shared.router.replicated_members(&message.topic);
        targets.retain(|target| {
            let key = (
                crate::storage::session_id(target.session),
                target.subscription,
            );
            let here = served
                .iter()
                .any(|member| (member.session, member.subscription) == key);
            !here || ownership.holds_back(target)
        });
        if targets.is_empty() {
            return Ok(Self::default());
        }
        let store = ownership.store();
        store.usable()?;
        let bytes = message.memory_size().saturating_mul(targets.len());
        if !store.has_room_for(bytes) {
            return Err(StorageError::Full {
                limit: store.max_bytes(),
            }
            .into());
        }
        let skipped = targets
            .iter()
            .map(|target| {
                (
                    crate::storage::session_id(target.session),
                    target.subscription,
                )
            })
            .collect();
        Ok(Self { targets, skipped })
    }

    /// Writes `message` into each target's records (appended to this publish's entry).
    fn deliver(&self, shared: &Shared, message: &Arc<PublishedMessage>) {
        let Some(ownership) = shared.router.cluster().and_then(|c| c.ownership()) else {
            return;
        };
        for target in &self.targets {
            let slot = ownership.inbox_slot(target);
            ownership.store().append(
                &Binding::new(target.key.clone(), DELIVERY),
                [Op::PutInbox(slot, Arc::clone(message))],
            );
            ownership.written(target);
        }
    }
}
