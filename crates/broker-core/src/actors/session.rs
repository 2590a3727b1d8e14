//! A session actor: one client session, which outlives its connection.
//!
//! It owns the session's subscriptions (filter and subscriber actor of each) and which
//! connection, if any, the session is attached to. Each attach gets a new epoch; a detach or
//! end that names an older epoch is ignored, so a stale connection can never detach a newer one.
//! A detached session expires after `sessions.expiry` (or the shorter time its last connection
//! asked for: MQTT 5's Session Expiry Interval) unless it is resumed first. It emits
//! the system events about itself: `session_expired`, `authorization_failed` for a subscription
//! the ACL refused, and `slow_consumer` for a subscription closed by overflow.
//!
//! In disk mode it writes its record (identity, last subscription id, detach time) and its
//! subscriptions' records through to the store, and removes them when the session or a
//! subscription ends; a session read back after a restart starts detached, with the expiry time
//! it had left, and rebuilds its subscriptions with the same ids and sequences.
//!
//! Its handler never waits on another actor or on the disk. A subscription is checked,
//! numbered and reserved against the session's limits in the handler; starting its subscriber
//! and routing its filter (two manager asks) run in a task that sends the result back
//! (`Started`), and in disk mode the answer waits for the sync in another task (a failed sync
//! removes the subscription again: `NotStored`). An unsubscribe leaves the session at once and
//! is answered from a task once nothing more is routed to it. Requests of one connection are
//! answered in order, as its driver asks one at a time.

mod inbox;
pub(crate) mod per_identity;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::{
    DeliveryClass, ErrorCode, ResumePosition, SessionId, SubscribeOptions, SubscriptionEnded,
    SubscriptionId, TopicFilter,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::announcements::{announcements, Announcements, Announcer};
use super::ask;
use super::subscriber::{SubscriberArgs, SubscriberMsg};
use super::subscriber_manager::{SubscriberEnded, SubscriberManagerMsg};
use super::topic_manager::TopicManagerMsg;
use crate::ack_targets::AckTargets;
use crate::acl::Permissions;
use crate::connection::subscription_writer::EndNotices;
use crate::context::Shared;
use crate::error::BrokerError;
use crate::events::Event;
use crate::introspect::policy_name;
use crate::log_budget::{LogBudget, DEFAULT_LINES_PER_SECOND};
use crate::queue::SubscriptionQueue;
use crate::router::{RouteMember, SubscriberKey};
use crate::storage::records::{SessionRecord, SubscriptionRecord};
use crate::storage::session_records::InboxSlot;
use crate::storage::{
    session_key, unix_ms, Op, QueueStore, RecoveredSession, RecoveredSubscription, SessionStore,
};
use crate::transport::Connection;

pub(crate) struct Session;

pub(crate) struct SessionArgs {
    pub(crate) id: SessionId,
    pub(crate) identity: Arc<str>,
    /// The name a `Hello` gave it, if any (unique per identity).
    pub(crate) name: Option<Arc<str>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) managers: SessionManagers,
    /// Read back from the store after a restart (or, for a named session in a cluster with
    /// `members`, from the replicated records another node wrote), with the time it has left
    /// until it expires.
    pub(crate) recovered: Option<(RecoveredSession, Duration)>,
    /// Where it writes its records, if anywhere.
    pub(crate) store: Option<SessionStore>,
    /// Whether `recovered` came from the cluster's records (another node served the session,
    /// or this node before another took it): what was published to it while no node served
    /// it is lost, so each subscription announces a gap of one sequence first, a floor.
    pub(crate) taken_up: bool,
    /// Where it tells when its connection dropped (the session manager reads it).
    pub(crate) detached_at: DetachedAt,
}

/// When a session's connection dropped (ms since the Unix epoch; `None` while attached, and
/// before its first attach): set by the session, read by the session manager to choose which
/// session of an identity at its maximum to end, without asking each one.
#[derive(Debug, Clone, Default)]
pub(crate) struct DetachedAt(Arc<std::sync::atomic::AtomicU64>);

impl DetachedAt {
    pub(crate) fn get(&self) -> Option<u64> {
        match self.0.load(std::sync::atomic::Ordering::Acquire) {
            0 => None,
            at => Some(at),
        }
    }

    fn set(&self, at: Option<u64>) {
        // 0 stands for "attached": a detach at the epoch itself counts as 1 ms after it.
        let at = at.map_or(0, |at| at.max(1));
        self.0.store(at, std::sync::atomic::Ordering::Release);
    }
}

/// The managers a session asks to start its subscribers and route its filters to them; both
/// are started before any session.
#[derive(Clone)]
pub(crate) struct SessionManagers {
    pub(crate) topics: ActorRef<TopicManagerMsg>,
    pub(crate) subscribers: ActorRef<SubscriberManagerMsg>,
}

pub(crate) enum SessionMsg {
    /// Attaches a connection, taking over from any attached one; each subscription continues
    /// after the client's position in it, if given. Answers with the new epoch and where the
    /// connection's acknowledgements go.
    Attach {
        connection: Arc<dyn Connection>,
        positions: Vec<ResumePosition>,
        reply: RpcReplyPort<Attached>,
    },
    /// The connection of `epoch` dropped: keep the session until it expires, after `expiry`
    /// if the connection asked for less than `sessions.expiry`.
    Detach {
        epoch: u64,
        expiry: Option<Duration>,
    },
    /// The connection of `epoch` said goodbye: end the session now.
    End { epoch: u64 },
    /// The expiry timer set when `epoch` detached fired.
    Expire { epoch: u64 },
    /// The certificate that created or last attached the session was revoked: close the
    /// attached connection, if any, and end the session now.
    Revoke,
    /// Answers when the session was detached (ms since the Unix epoch), `None` if attached.
    DetachedAt(RpcReplyPort<Option<u64>>),
    /// Ends the session now if it is detached, to make room for a newer session of the same
    /// identity (`max_sessions_per_identity`); answers whether it ended.
    Evict(RpcReplyPort<bool>),
    /// Another node claimed the session (it closed the connection here, if any): this copy
    /// ends without touching the records, which the other node serves from now on. With
    /// `resume_again` the claim is still this node's but the copy missed changes the records
    /// refused: it closes its connection with `INTERNAL`, and the client's resume takes the
    /// session up from the records.
    Relinquish { resume_again: bool },
    /// Other nodes delivered messages into the session's records: queue them.
    DrainInbox,
    /// Starts a subscription.
    Subscribe {
        filter: String,
        options: SubscribeOptions,
        reply: RpcReplyPort<Result<SubscriptionId, BrokerError>>,
    },
    /// A subscription prepared by `Subscribe` was started (or failed to start) outside the
    /// handler; `reply` is the request's.
    Started {
        subscription: SubscriptionId,
        result: Result<Started, BrokerError>,
        reply: RpcReplyPort<Result<SubscriptionId, BrokerError>>,
    },
    /// In disk mode, the store could not make a new subscription durable: it is removed again
    /// and the request answered with `error`.
    NotStored {
        subscription: SubscriptionId,
        error: BrokerError,
        reply: RpcReplyPort<Result<SubscriptionId, BrokerError>>,
    },
    /// Ends a subscription; answers once nothing more is routed to it.
    Unsubscribe {
        subscription: SubscriptionId,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    },
    /// A subscriber ended on its own (overflow, failure, stream stopped by the client).
    SubscriptionEnded {
        subscription: SubscriptionId,
        reason: String,
    },
    /// The ACL was replaced: end every subscription it no longer allows.
    RecheckAcl,
    /// A subscription's writer found that the broker ended the subscription: tell the client.
    Announce(SubscriptionEnded),
}

/// Where the writers of the session's subscriptions report the subscriptions the broker
/// ended: to this session, which announces them.
fn end_notices(session: &ActorRef<SessionMsg>) -> EndNotices {
    let session = session.clone();
    EndNotices::new(move |notice| {
        let _ = session.send_message(SessionMsg::Announce(notice));
    })
}

/// Where the subscriber manager reports that the subscriber of `subscription` ended: to this
/// session, which forgets the subscription.
fn subscriber_ended(
    session: &ActorRef<SessionMsg>,
    subscription: SubscriptionId,
) -> SubscriberEnded {
    let session = session.clone();
    Box::new(move |reason| {
        let _ = session.send_message(SessionMsg::SubscriptionEnded {
            subscription,
            reason,
        });
    })
}

/// A connection's view of the session it was attached to.
pub(crate) struct Attached {
    /// The attachment's epoch: a later detach or end must name it.
    pub(crate) epoch: u64,
    /// The session's queues, for the connection's `Ack` frames and for draining at shutdown.
    pub(crate) acks: Arc<AckTargets>,
    /// Subscription ends to announce on the connection's control stream: those of
    /// [`SessionState::ended`] the client still lists, then every end found while attached.
    pub(crate) ended: Announcements,
    /// Every subscription the session holds, for `Welcome` on a resume.
    pub(crate) subscriptions: Vec<cassini_protocol::SessionSubscription>,
}

struct SessionSubscription {
    filter: TopicFilter,
    /// The queue group it joined, if any: an ACL reload checks it again.
    group: Option<Arc<str>>,
    /// The options it was made with, listed in `Welcome` on a resume.
    options: SubscribeOptions,
    subscriber: ActorRef<SubscriberMsg>,
    queue: Arc<SubscriptionQueue>,
}

pub(crate) struct SessionState {
    id: SessionId,
    identity: Arc<str>,
    /// The session's name, if a `Hello` gave it one.
    name: Option<Arc<str>>,
    /// When the connection dropped (ms since the Unix epoch), for the stored record and for
    /// the session manager.
    detached_at: DetachedAt,
    /// How long the session outlives its last connection, when that connection asked for a
    /// time of its own (capped by `sessions.expiry`); `None`: `sessions.expiry`. Stored with
    /// the session, so a restart keeps it.
    expiry: Option<Duration>,
    shared: Arc<Shared>,
    managers: SessionManagers,
    subscriptions: HashMap<SubscriptionId, SessionSubscription>,
    /// Subscriptions prepared and not yet started: they count against the session's limits
    /// like made ones.
    starting: HashMap<SubscriptionId, Reservation>,
    last_subscription: SubscriptionId,
    attached: Option<Arc<dyn Connection>>,
    /// Where the attached connection's driver takes subscription ends to announce.
    announcements: Option<Announcer>,
    /// Subscription ends announced so far, kept because an announcement written to a
    /// connection that was then lost never arrived: each resume announces again those the
    /// client still lists in its positions, and forgets the others. At most
    /// `max_subscriptions_per_session` (the oldest goes first).
    ended: VecDeque<SubscriptionEnded>,
    epoch: u64,
    acks: Arc<AckTargets>,
    /// Where it writes its records, if anywhere.
    store: Option<SessionStore>,
    /// Deliveries from other nodes queued here whose removal from the records is not
    /// applied yet ([`inbox`]).
    inbox_queued: HashSet<InboxSlot>,
    /// This session's part of its identity's subscriptions ([`per_identity`]).
    identity_subscriptions: per_identity::IdentitySubscriptions,
}

/// A subscription on its way to being started.
struct Reservation {
    /// What its queue bound reserves of the session's pending bytes.
    bytes: usize,
    /// Set when its subscriber ended before the session took it (why).
    ended: Option<String>,
}

impl SessionState {
    /// Brings the identity's count up to date with the subscriptions this session holds.
    fn recount(&mut self) {
        let held = self.subscriptions.len() + self.starting.len();
        self.identity_subscriptions.recount(held);
    }
}

impl Drop for SessionState {
    fn drop(&mut self) {
        for subscription in self.subscriptions.values() {
            subscription.subscriber.stop(Some("session ended".into()));
        }
    }
}

impl SessionState {
    /// Writes the session's record through to the store (disk mode).
    fn store_session(&self) {
        if let Some(store) = &self.store {
            store.append([Op::PutSession(SessionRecord {
                id: session_key(self.id),
                identity: self.identity.to_string(),
                last_subscription: self.last_subscription,
                detached_at_ms: self.detached_at.get(),
                name: self.name.as_deref().map(str::to_owned),
                expiry_ms: self
                    .expiry
                    .map(|expiry| u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX)),
            })]);
        }
    }

    /// Removes a stored subscription with its messages (disk mode).
    fn forget_subscription(&self, subscription: SubscriptionId) {
        if let Some(store) = &self.store {
            store.append([Op::DeleteSubscription(session_key(self.id), subscription)]);
        }
    }

    fn queue_store(&self, subscription: SubscriptionId) -> Option<QueueStore> {
        self.store.as_ref().map(|store| QueueStore {
            store: store.clone(),
            session: session_key(self.id),
            subscription,
        })
    }

    fn queue_group(&self, options: &SubscribeOptions) -> Result<Option<Arc<str>>, BrokerError> {
        Ok(match &options.queue_group {
            None => None,
            Some(name) => Some(Arc::from(valid_group_name(
                name,
                self.shared.config.limits.max_queue_group_bytes,
            )?)),
        })
    }

    /// Checks a subscription request and prepares it: its id, its stored record (disk mode) and
    /// its queue, reserved against the session's limits until it is started or failed. What
    /// waits (the subscriber and topic managers, the disk) is left to [`Starting::run`].
    fn prepare(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        filter: String,
        options: SubscribeOptions,
    ) -> Result<Starting, BrokerError> {
        let config = Arc::clone(&self.shared.config);
        let filter = TopicFilter::parse(&filter, &config.limits.topics)
            .map_err(BrokerError::InvalidFilter)?;
        let permissions = self.shared.acl.current().permissions(&self.identity);
        if !permissions.may_subscribe(&filter) {
            return Err(BrokerError::NotAuthorized {
                action: "subscribe to",
                target: filter.to_string(),
            });
        }
        let group = self.queue_group(&options)?;
        if let Some(group) = group.as_deref() {
            if !permissions.may_join_queue(group) {
                return Err(BrokerError::NotAuthorized {
                    action: "join queue group",
                    target: group.to_owned(),
                });
            }
        }
        if let DeliveryClass::Datagram { .. } = options.delivery {
            if options.acks.is_some() {
                return Err(BrokerError::InvalidOption(
                    "a datagram subscription cannot be at least once".into(),
                ));
            }
            let negotiated = self
                .attached
                .as_ref()
                .is_some_and(|connection| connection.max_datagram_size().is_some());
            if !negotiated {
                return Err(BrokerError::DatagramsUnsupported);
            }
        }
        // Subscriptions still starting count as made.
        let max = config.limits.max_subscriptions_per_session;
        if self.subscriptions.len() + self.starting.len() >= max as usize {
            return Err(BrokerError::TooManySubscriptions(max));
        }
        // Given back by the next recount if the subscription is not made after all.
        self.identity_subscriptions
            .reserve(config.limits.max_subscriptions_per_identity)?;
        let bounds = config.queue.bounds_for(&options);
        let reserved = self
            .subscriptions
            .values()
            .map(|s| s.queue.bounds().max_bytes)
            .chain(self.starting.values().map(|starting| starting.bytes));
        super::session_limits::check_pending_bytes(&config.limits, reserved, bounds.max_bytes)?;
        // A subscription needs room for at least one message of the largest size.
        self.shared
            .memory
            .check_room(config.limits.max_frame_bytes as usize)?;
        // Ids are never reused; a stored last id of u64::MAX leaves none to give.
        let subscription = self
            .last_subscription
            .checked_add(1)
            .ok_or(BrokerError::TooManySubscriptions(u32::MAX))?;
        self.last_subscription = subscription;
        if let Some(store) = &self.store {
            // Before the queue exists, so the record is stored before any of its messages.
            store.append([Op::PutSubscription(SubscriptionRecord {
                session: session_key(self.id),
                subscription,
                filter: filter.as_str().to_string(),
                options: options.clone(),
            })]);
            self.store_session();
        }
        let queue = Arc::new(SubscriptionQueue::with_store(
            bounds,
            self.queue_store(subscription),
        ));
        queue.charge_entries_to(&self.shared.memory);
        self.starting.insert(
            subscription,
            Reservation {
                bytes: bounds.max_bytes,
                ended: None,
            },
        );
        Ok(self.starting(myself, subscription, filter, group, options, queue))
    }

    /// What starting a subscription of this session needs, taken from its state now.
    fn starting(
        &self,
        myself: &ActorRef<SessionMsg>,
        subscription: SubscriptionId,
        filter: TopicFilter,
        group: Option<Arc<str>>,
        options: SubscribeOptions,
        queue: Arc<SubscriptionQueue>,
    ) -> Starting {
        Starting {
            managers: self.managers.clone(),
            acks: Arc::clone(&self.acks),
            session: myself.clone(),
            max_frame_bytes: self.shared.config.limits.max_frame_bytes,
            prepared: Prepared {
                key: SubscriberKey {
                    session: self.id,
                    subscription,
                },
                filter,
                group,
                options,
                queue,
                connection: self.attached.clone(),
            },
        }
    }

    /// Takes a started subscription into the session. The session may have been attached to
    /// another connection, or detached, while it started: its subscriber follows. With
    /// `recheck_acl` (a subscribe, checked against the ACL before it started) the ACL is checked
    /// again, as it may have been replaced meanwhile.
    fn adopt(&mut self, myself: &ActorRef<SessionMsg>, mut started: Started, recheck_acl: bool) {
        let Some(subscriber) = started.subscriber.take() else {
            return;
        };
        let started = &started.prepared;
        let moved = match (&started.connection, &self.attached) {
            (Some(then), Some(now)) => !Arc::ptr_eq(then, now),
            (None, None) => false,
            _ => true,
        };
        if moved {
            let _ = subscriber.send_message(match &self.attached {
                // A connection attached since cannot know of the subscription: it continues as
                // if the client had received nothing (as `attach` does for one left out).
                Some(connection) => SubscriberMsg::Attach {
                    connection: Arc::clone(connection),
                    last_received: Some(0),
                    notices: end_notices(myself),
                },
                None => SubscriberMsg::Detach,
            });
        }
        let subscription = SessionSubscription {
            filter: started.filter.clone(),
            group: started.group.clone(),
            options: started.options.clone(),
            subscriber,
            queue: Arc::clone(&started.queue),
        };
        if recheck_acl && !self.allows(&subscription) {
            tracing::info!(session = %self.id, subscription = started.key.subscription, filter = %subscription.filter, "ACL no longer allows the subscription; ending it");
            subscription.queue.revoke();
        }
        self.subscriptions
            .insert(started.key.subscription, subscription);
    }

    /// Forgets a subscription whose subscriber ended on its own; one that overflowed under the
    /// `close` policy is reported as a `slow_consumer` system event.
    fn subscription_ended(&mut self, subscription: SubscriptionId, reason: &str) {
        self.acks.remove(subscription);
        if let Some(ended) = self.subscriptions.remove(&subscription) {
            self.forget_subscription(subscription);
            static ENDED: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
            if let Some(suppressed) = ENDED.admit() {
                tracing::info!(session = %self.id, subscription, %reason, suppressed, "subscription ended");
            }
            if ended.queue.overflow_to_report() {
                self.shared.emit(Event::SlowConsumer {
                    identity: Some(self.identity.to_string()),
                    session: self.id.to_string(),
                    subscription,
                    filter: ended.filter.to_string(),
                    policy: policy_name(ended.queue.bounds().overflow).to_string(),
                    dropped: ended.queue.stats().dropped_total + 1,
                    closed: true,
                });
            }
        }
    }

    /// Answers a subscription request once the subscription is made. In disk mode the client
    /// learns of it only once it survives a crash (otherwise a resumed client could wait on a
    /// subscription the restarted broker never heard of): the wait for the sync runs in a task
    /// of its own, and a failed sync removes the subscription again (`NotStored`).
    fn confirm(
        &self,
        myself: &ActorRef<SessionMsg>,
        subscription: SubscriptionId,
        reply: RpcReplyPort<Result<SubscriptionId, BrokerError>>,
    ) {
        let Some(store) = self.store.clone() else {
            let _ = reply.send(Ok(subscription));
            return;
        };
        let ticket = store.ticket();
        let session = myself.clone();
        tokio::spawn(async move {
            match store.synced(ticket).await {
                Ok(()) => {
                    let _ = reply.send(Ok(subscription));
                }
                Err(err) => {
                    let _ = session.send_message(SessionMsg::NotStored {
                        subscription,
                        error: err.into(),
                        reply,
                    });
                }
            }
        });
    }

    /// Rebuilds a subscription read back from the store.
    async fn restore(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        recovered: RecoveredSubscription,
        taken_up: bool,
    ) -> Result<(), BrokerError> {
        let config = Arc::clone(&self.shared.config);
        let record = recovered.record;
        let filter = TopicFilter::parse(&record.filter, &config.limits.topics)
            .map_err(BrokerError::InvalidFilter)?;
        let group = self.queue_group(&record.options)?;
        let queue = Arc::new(SubscriptionQueue::restore(
            config.queue.bounds_for(&record.options),
            self.queue_store(record.subscription),
            recovered.last_sequence,
            recovered.messages,
        ));
        queue.charge_entries_to(&self.shared.memory);
        if taken_up {
            queue.lost_before_arrival(1);
        }
        self.drain_inbox_of(record.subscription, &queue);
        let starting = self.starting(
            myself,
            record.subscription,
            filter,
            group,
            record.options,
            queue,
        );
        // Before the session takes any message: waiting here holds up nothing.
        let started = starting.run().await?;
        self.adopt(myself, started, false);
        Ok(())
    }

    /// Removes a subscription from the session (and the store) at once; returns its filter and
    /// subscriber, for the caller to stop routing to it and stop it.
    fn remove(
        &mut self,
        subscription: SubscriptionId,
    ) -> Option<(TopicFilter, ActorRef<SubscriberMsg>)> {
        let entry = self.subscriptions.remove(&subscription)?;
        self.acks.remove(subscription);
        self.forget_subscription(subscription);
        Some((entry.filter, entry.subscriber))
    }

    /// Ends a subscription: answers once nothing more is routed to it. The wait for the topic
    /// manager runs in a task of its own, so the session keeps handling messages meanwhile.
    fn unsubscribe(
        &mut self,
        subscription: SubscriptionId,
        reply: RpcReplyPort<Result<(), BrokerError>>,
    ) {
        let Some((filter, subscriber)) = self.remove(subscription) else {
            let _ = reply.send(Err(BrokerError::UnknownSubscription(subscription)));
            return;
        };
        let topics = self.managers.topics.clone();
        let key = SubscriberKey {
            session: self.id,
            subscription,
        };
        tokio::spawn(async move {
            let left = ask(&topics, |reply| TopicManagerMsg::Leave {
                filter,
                key,
                reply: Some(reply),
            })
            .await;
            subscriber.stop(Some("unsubscribed".into()));
            let _ = reply.send(left);
        });
    }

    /// Whether the current ACL still allows `subscription`.
    fn allows(&self, subscription: &SessionSubscription) -> bool {
        permits(
            &self.shared.acl.current().permissions(&self.identity),
            subscription,
        )
    }

    fn attach(
        &mut self,
        myself: &ActorRef<SessionMsg>,
        connection: Arc<dyn Connection>,
        positions: &[ResumePosition],
    ) -> Attached {
        if let Some(previous) = self.attached.take() {
            previous.close(
                ErrorCode::SESSION_TAKEN_OVER,
                "session resumed by a newer connection",
            );
        }
        self.epoch += 1;
        let (announcements, ended) = announcements();
        // The first position given for each subscription.
        let mut last_received = HashMap::with_capacity(positions.len());
        for position in positions {
            last_received
                .entry(position.subscription)
                .or_insert(position.last_sequence);
        }
        self.ended
            .retain(|notice| last_received.contains_key(&notice.subscription));
        for notice in &self.ended {
            announcements.send(notice.clone());
        }
        for (id, subscription) in &self.subscriptions {
            // A subscription the client left out: the broker cannot tell what arrived, so it
            // continues as if the client had received nothing; what it no longer holds is
            // announced as a gap instead of lost silently.
            let last_received = last_received.get(id).copied().unwrap_or(0);
            let _ = subscription.subscriber.send_message(SubscriberMsg::Attach {
                connection: Arc::clone(&connection),
                last_received: Some(last_received),
                notices: end_notices(myself),
            });
        }
        self.attached = Some(connection);
        self.announcements = Some(announcements);
        self.detached_at.set(None);
        self.store_session();
        let mut subscriptions: Vec<_> = self
            .subscriptions
            .iter()
            .map(|(id, subscription)| cassini_protocol::SessionSubscription {
                subscription: *id,
                filter: subscription.filter.as_str().to_owned(),
                options: subscription.options.clone(),
            })
            .collect();
        subscriptions.sort_by_key(|subscription| subscription.subscription);
        Attached {
            epoch: self.epoch,
            acks: Arc::clone(&self.acks),
            ended,
            subscriptions,
        }
    }

    /// Ends every subscription the current ACL no longer allows (its filter, or its queue
    /// group): its stream is reset with `NOT_AUTHORIZED` (at once if attached, else when the
    /// session is resumed).
    fn recheck_acl(&self) {
        let permissions = self.shared.acl.current().permissions(&self.identity);
        for (id, subscription) in &self.subscriptions {
            if !permits(&permissions, subscription) {
                tracing::info!(session = %self.id, subscription = id, filter = %subscription.filter, group = ?subscription.group, "ACL no longer allows the subscription; ending it");
                subscription.queue.revoke();
            }
        }
    }

    /// Announces that the broker ended a subscription, now if attached, and again on every
    /// resume whose client still lists it.
    fn announce(&mut self, notice: SubscriptionEnded) {
        let cap = self.shared.config.limits.max_subscriptions_per_session as usize;
        while self.ended.len() >= cap.max(1) {
            self.ended.pop_front();
        }
        if let Some(announcements) = &self.announcements {
            announcements.send(notice.clone());
        }
        self.ended.push_back(notice);
    }

    fn detach(&mut self) {
        self.attached = None;
        self.announcements = None;
        self.detached_at.set(Some(unix_ms()));
        self.store_session();
        for subscription in self.subscriptions.values() {
            let _ = subscription.subscriber.send_message(SubscriberMsg::Detach);
        }
    }
}

impl SessionState {
    /// Removes the stored session with everything it owns (disk mode).
    fn forget(&self) {
        if let Some(store) = &self.store {
            store.append([Op::DeleteSession(session_key(self.id))]);
        }
    }
}

/// Whether `permissions` allow `subscription`: its filter, and its queue group.
fn permits(permissions: &Permissions, subscription: &SessionSubscription) -> bool {
    permissions.may_subscribe(&subscription.filter)
        && subscription
            .group
            .as_deref()
            .is_none_or(|group| permissions.may_join_queue(group))
}

/// A subscription as its session prepared it: what starting it needs, and what the session
/// keeps of it once it runs.
struct Prepared {
    key: SubscriberKey,
    filter: TopicFilter,
    group: Option<Arc<str>>,
    options: SubscribeOptions,
    queue: Arc<SubscriptionQueue>,
    /// The connection the session was attached to when it prepared the subscription.
    connection: Option<Arc<dyn Connection>>,
}

/// A subscription checked and prepared by its session, to be started outside the session's
/// handler: starting asks the subscriber manager and the topic manager.
struct Starting {
    managers: SessionManagers,
    acks: Arc<AckTargets>,
    session: ActorRef<SessionMsg>,
    max_frame_bytes: u32,
    prepared: Prepared,
}

impl Starting {
    /// Starts the subscriber (writing to `connection`, if any) and routes the filter to its
    /// queue. The queue takes the connection's acknowledgements before the first message can
    /// reach it.
    async fn run(self) -> Result<Started, BrokerError> {
        let prepared = self.prepared;
        let subscription = prepared.key.subscription;
        let args = SubscriberArgs {
            key: prepared.key,
            filter: prepared.filter.clone(),
            queue: Arc::clone(&prepared.queue),
            connection: prepared
                .connection
                .clone()
                .map(|connection| (connection, end_notices(&self.session))),
            max_frame_bytes: self.max_frame_bytes,
            delivery: prepared.options.delivery,
        };
        let subscriber = ask(&self.managers.subscribers, |reply| {
            SubscriberManagerMsg::Spawn {
                args,
                ended: subscriber_ended(&self.session, subscription),
                reply,
            }
        })
        .await??;
        let started = Started {
            subscriber: Some(subscriber),
            prepared,
        };
        let prepared = &started.prepared;
        self.acks.insert(subscription, Arc::clone(&prepared.queue));
        let member = RouteMember {
            key: prepared.key,
            queue: Arc::clone(&prepared.queue),
            group: prepared.group.clone(),
        };
        let joined = ask(&self.managers.topics, |reply| TopicManagerMsg::Join {
            filter: prepared.filter.clone(),
            member,
            reply,
        })
        .await
        .and_then(|joined| joined);
        if let Err(err) = joined {
            self.acks.remove(subscription);
            // Dropping `started` stops the subscriber.
            return Err(err);
        }
        Ok(started)
    }
}

/// A started subscription, routed to, on its way back into its session. Dropped before the
/// session took it (the session ended meanwhile, or it failed), it stops its subscriber, whose
/// manager then stops routing to it: nothing is left behind.
pub(crate) struct Started {
    subscriber: Option<ActorRef<SubscriberMsg>>,
    prepared: Prepared,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(subscriber) = self.subscriber.take() {
            subscriber.stop(None);
        }
    }
}

/// A queue group name: 1 to `max_bytes` bytes of letters, digits, `-`, `_` and `.`.
pub(crate) fn valid_group_name(name: &str, max_bytes: usize) -> Result<&str, BrokerError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if name.is_empty() || name.len() > max_bytes || !name.chars().all(allowed) {
        return Err(BrokerError::InvalidOption(format!(
            "queue group {name:?} must be 1 to {max_bytes} characters of letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(name)
}

impl Actor for Session {
    type Msg = SessionMsg;
    type State = SessionState;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        tracing::debug!(session = %args.id, identity = %args.identity, "session started");
        let identity_subscriptions = args.shared.subscriptions.for_identity(&args.identity);
        let mut state = SessionState {
            identity_subscriptions,
            id: args.id,
            identity: args.identity,
            name: args.name,
            detached_at: args.detached_at,
            expiry: None,
            shared: args.shared,
            managers: args.managers,
            subscriptions: HashMap::new(),
            starting: HashMap::new(),
            last_subscription: 0,
            attached: None,
            announcements: None,
            ended: VecDeque::new(),
            epoch: 0,
            acks: Arc::default(),
            store: args.store,
            inbox_queued: HashSet::new(),
        };
        let Some((recovered, expires_in)) = args.recovered else {
            if let Some(store @ SessionStore::Replicated(..)) = &state.store {
                // A new session under a name: whatever an earlier session of the name left
                // in the cluster's records goes first.
                store.append([Op::DeleteSession(session_key(state.id))]);
            }
            state.store_session();
            return Ok(state);
        };
        state.last_subscription = recovered.record.last_subscription;
        state.detached_at.set(Some(
            recovered.record.detached_at_ms.unwrap_or_else(unix_ms),
        ));
        state.expiry = recovered.record.expiry_ms.map(Duration::from_millis);
        for subscription in recovered.subscriptions {
            let id = subscription.record.subscription;
            state.last_subscription = state.last_subscription.max(id);
            if let Err(err) = state.restore(&myself, subscription, args.taken_up).await {
                // Left in the store untouched: a later start with other limits may take it.
                tracing::error!(session = %state.id, subscription = id, %err, "a stored subscription could not be restored");
            }
        }
        state.recount();
        myself.send_after(expires_in, || SessionMsg::Expire { epoch: 0 });
        // What other nodes delivered while no node served it comes after what it stored.
        let _ = myself.send_message(SessionMsg::DrainInbox);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionMsg::Attach {
                connection,
                positions,
                reply,
            } => {
                let _ = reply.send(state.attach(&myself, connection, &positions));
            }
            SessionMsg::Detach { epoch, expiry } if epoch == state.epoch => {
                let most = state.shared.config.sessions.expiry;
                state.expiry = expiry.map(|asked| asked.min(most));
                state.detach();
                let expiry = state.expiry.unwrap_or(most);
                tracing::debug!(session = %state.id, ?expiry, "session detached");
                myself.send_after(expiry, move || SessionMsg::Expire { epoch });
            }
            SessionMsg::End { epoch } if epoch == state.epoch => {
                state.detach();
                state.forget();
                myself.stop(Some("client closed the session".into()));
            }
            SessionMsg::Expire { epoch } if epoch == state.epoch && state.attached.is_none() => {
                tracing::debug!(session = %state.id, "session expired");
                let detached_at = state.detached_at.get().unwrap_or_else(unix_ms);
                state.shared.emit(Event::SessionExpired {
                    identity: state.identity.to_string(),
                    session: state.id.to_string(),
                    name: state.name.as_deref().map(str::to_string),
                    detached_ms: unix_ms().saturating_sub(detached_at),
                });
                state.forget();
                myself.stop(Some("expired".into()));
            }
            SessionMsg::Detach { .. } | SessionMsg::End { .. } | SessionMsg::Expire { .. } => {}
            SessionMsg::Revoke => {
                if let Some(connection) = &state.attached {
                    connection.close(
                        ErrorCode::CERTIFICATE_REVOKED,
                        "the session's certificate was revoked",
                    );
                }
                state.detach();
                state.forget();
                tracing::info!(session = %state.id, "session ended: its certificate was revoked");
                myself.stop(Some("certificate revoked".into()));
            }
            SessionMsg::DetachedAt(reply) => {
                let detached_at = state.attached.is_none().then(|| state.detached_at.get());
                let _ = reply.send(detached_at.flatten());
            }
            SessionMsg::Evict(reply) => {
                let evicted = state.attached.is_none();
                if evicted {
                    tracing::info!(session = %state.id, identity = %state.identity, "session ended to make room for a newer session of its identity");
                    state.forget();
                    myself.stop(Some("evicted by a newer session of its identity".into()));
                }
                let _ = reply.send(evicted);
            }
            SessionMsg::Relinquish { resume_again } => {
                if resume_again {
                    if let Some(connection) = state.attached.take() {
                        connection.close(
                            ErrorCode::INTERNAL,
                            "this node's copy of the session missed changes the cluster refused; \
                             resume the session again",
                        );
                    }
                }
                // Whatever it still appends goes under its stale claim and is refused.
                state.store = None;
                tracing::info!(session = %state.id, identity = %state.identity, "session claimed by another node: its copy here ends");
                myself.stop(Some("claimed by another node".into()));
            }
            SessionMsg::Subscribe {
                filter,
                options,
                reply,
            } => match state.prepare(&myself, filter, options) {
                Err(err) => {
                    if let BrokerError::NotAuthorized { action, target } = &err {
                        state.shared.emit(Event::AuthorizationFailed {
                            identity: state.identity.to_string(),
                            action: (*action).to_string(),
                            target: target.clone(),
                        });
                    }
                    let _ = reply.send(Err(err));
                }
                Ok(starting) => {
                    // The managers answer in a task of its own: the session keeps handling
                    // messages (attach, detach, acknowledgements' owners) meanwhile.
                    let subscription = starting.prepared.key.subscription;
                    let session = myself.clone();
                    tokio::spawn(async move {
                        let result = starting.run().await;
                        let _ = session.send_message(SessionMsg::Started {
                            subscription,
                            result,
                            reply,
                        });
                    });
                }
            },
            SessionMsg::Started {
                subscription,
                result,
                reply,
            } => {
                let ended = state
                    .starting
                    .remove(&subscription)
                    .and_then(|reservation| reservation.ended);
                match result {
                    Err(err) => {
                        state.forget_subscription(subscription);
                        let _ = reply.send(Err(err));
                    }
                    Ok(started) => {
                        state.adopt(&myself, started, true);
                        state.confirm(&myself, subscription, reply);
                        if let Some(reason) = ended {
                            state.subscription_ended(subscription, &reason);
                        }
                        // Deliveries for it that came while it was starting.
                        state.drain_inbox();
                    }
                }
            }
            SessionMsg::NotStored {
                subscription,
                error,
                reply,
            } => {
                if let Some((filter, subscriber)) = state.remove(subscription) {
                    let _ = state.managers.topics.send_message(TopicManagerMsg::Leave {
                        filter,
                        key: SubscriberKey {
                            session: state.id,
                            subscription,
                        },
                        reply: None,
                    });
                    subscriber.stop(Some("not stored".into()));
                }
                let _ = reply.send(Err(error));
            }
            SessionMsg::Unsubscribe {
                subscription,
                reply,
            } => state.unsubscribe(subscription, reply),
            SessionMsg::SubscriptionEnded {
                subscription,
                reason,
            } => match state.starting.get_mut(&subscription) {
                // Its end is applied once the session took it.
                Some(reservation) => reservation.ended = Some(reason),
                None => state.subscription_ended(subscription, &reason),
            },
            SessionMsg::RecheckAcl => state.recheck_acl(),
            SessionMsg::DrainInbox => state.drain_inbox(),
            SessionMsg::Announce(notice) => state.announce(notice),
        }
        state.recount();
        Ok(())
    }
}
