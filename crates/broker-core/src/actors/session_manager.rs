//! The session manager: creates sessions, finds them for resumption, and forgets them when
//! they end.
//!
//! It owns the map from session id to session actor, the identity each session is bound to, and
//! the key of the certificate that created or last attached it. Session ids are 128 random bits
//! chosen here; a resume is honoured only for the certificate identity that created the
//! session. When certificates are revoked, it ends every session one of them created or last
//! attached, attached or detached, so a re-issued certificate for the same identity cannot
//! resume it (`SESSION_NOT_FOUND`).
//!
//! Each identity may hold `max_sessions_per_identity` sessions, attached or detached. A new
//! session beyond it ends that identity's longest-detached session first (as a client that
//! restarts without resuming expects: its abandoned session makes way); if every one is
//! attached, the new session is refused with `TOO_MANY_SESSIONS_FOR_IDENTITY`. Another
//! identity's sessions are never touched.
//!
//! A `Hello` may name its session instead of giving its id: names are per identity, so it
//! also owns the map from (identity, name) to session id. The first `Hello` with a name
//! creates the session, a later one resumes it (taking it over from an attached connection,
//! as any resume does). The name is stored with the session record, so the map survives a
//! restart in disk mode; it is forgotten with the session.
//!
//! A connection whose names are exclusive (`Connection::exclusive_session_name`: an MQTT client
//! id, unique per server) cannot use a name while another identity holds a session that such a
//! connection named so: it is refused with `SESSION_IDENTITY_MISMATCH`, and never reaches or
//! learns anything of that session. So it also owns the map from exclusive name to the session
//! holding it. That map is not stored: after a restart in disk mode a stored session holds its
//! name exclusively again once a connection of that kind resumes it.
//!
//! In disk mode it starts with the sessions read back from the store: each one detached, with
//! the expiry time it had left (its detach time is stored; a session that was attached when the
//! broker died counts as detached at the restart). A session whose expiry passed while the
//! broker was down is removed from the store at start, as its expiry would have removed it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::{ResumePosition, SessionId};
use cassini_replication::SessionKey;
use ractor::{
    Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SpawnErr, SupervisionEvent,
};

use super::announcements::Announcements;
use super::session::{Attached, DetachedAt, Session, SessionArgs, SessionManagers, SessionMsg};
use super::subscriber_manager::SubscriberManagerMsg;
use super::{ask, ended_child};
use crate::ack_targets::AckTargets;
use crate::context::Shared;
use crate::error::BrokerError;
use crate::storage::replicated::Binding;
use crate::storage::session_records::{read_back, ReadBackError};
use crate::storage::{session_id, unix_ms, Op, RecoveredSession, SessionStore};
use crate::transport::Connection;

pub(crate) struct SessionManager;

/// How long a take-up waits for this node's earlier copy of the session to end.
const ENDING_WAIT: Duration = Duration::from_secs(2);

/// The cluster's key of the named session `name` of `identity`.
fn session_of(identity: &str, name: &str) -> SessionKey {
    SessionKey {
        identity: identity.to_owned(),
        name: name.to_owned(),
    }
}

/// A session a connection is now attached to.
pub(crate) struct Opened {
    pub(crate) session: ActorRef<SessionMsg>,
    pub(crate) id: SessionId,
    pub(crate) resumed: bool,
    pub(crate) epoch: u64,
    /// On a resume, every subscription the session holds, for `Welcome`.
    pub(crate) subscriptions: Vec<cassini_protocol::SessionSubscription>,
    /// The session's queues: where the connection's acknowledgements go, and what shutdown
    /// drains.
    pub(crate) acks: Arc<AckTargets>,
    /// Subscriptions the broker ends while this connection is attached, to announce on its
    /// control stream (taken by the connection's driver).
    pub(crate) ended: Option<Announcements>,
}

pub(crate) enum SessionManagerMsg {
    /// Creates a session, or resumes `resume` (continuing each subscription after the
    /// client's `positions`), and attaches `connection` to it.
    Open {
        resume: Option<SessionId>,
        /// The session's name; when set, `resume` is not used.
        name: Option<String>,
        positions: Vec<ResumePosition>,
        connection: Arc<dyn Connection>,
        /// The epoch of the claim the connection holds of its named session, in a cluster
        /// with `members`.
        claim: Option<u64>,
        reply: RpcReplyPort<Result<Opened, BrokerError>>,
    },
    /// This named session's copy here is stale if it writes under a claim older than `below`
    /// (another node claimed it at `below`, or the log refused its changes under `below - 1`):
    /// then it ends, the records stay. A copy a newer claim of this node moved on whose
    /// changes the log refused ends too, closing its connection so that its client resumes
    /// the session from the records.
    Relinquish { session: SessionKey, below: u64 },
    /// The cluster forgot this named session's claim and records (it expired, or made room):
    /// its copy here, if detached, ends; a resume takes it up afresh (a new session).
    Forgotten { session: SessionKey },
    /// Another node delivered messages into this named session's records: its copy here, if
    /// any, queues them.
    Delivered { session: SessionKey },
    /// How many sessions exist.
    Count(RpcReplyPort<usize>),
    /// The ACL was replaced: every session ends the subscriptions it no longer allows.
    RecheckAcl,
    /// These certificate keys are revoked: end every session whose certificate is one of them.
    EndRevoked(Arc<HashSet<String>>),
}

struct Entry {
    identity: Arc<str>,
    /// The key of the certificate that created or last attached the session (`None` for a
    /// session read back from the store and not resumed since, or a transport without one).
    certificate: Option<Arc<str>>,
    /// The session's name, if it has one.
    name: Option<Arc<str>>,
    /// Whether a connection with exclusive names named it (it then holds `exclusive`'s entry).
    exclusive: bool,
    session: ActorRef<SessionMsg>,
    /// When its connection dropped, as the session tells it.
    detached_at: DetachedAt,
    /// For a named session in a cluster with `members`: the claim its records go under.
    binding: Option<Arc<Binding>>,
}

/// Who a session being started belongs to: [`Entry`] without the actor.
struct Owner {
    identity: Arc<str>,
    certificate: Option<Arc<str>>,
    name: Option<Arc<str>>,
    exclusive: bool,
}

pub(crate) struct SessionManagerState {
    shared: Arc<Shared>,
    managers: SessionManagers,
    sessions: HashMap<SessionId, Entry>,
    by_actor: HashMap<ActorId, SessionId>,
    /// How many of `sessions` each identity holds.
    per_identity: HashMap<Arc<str>, usize>,
    /// Named sessions, by identity and name.
    names: HashMap<(Arc<str>, Arc<str>), SessionId>,
    /// Exclusively named sessions (MQTT client ids), by name alone.
    exclusive: HashMap<Arc<str>, SessionId>,
    /// Copies of named sessions this node let go of (another node claimed them), until they
    /// have ended.
    ending: HashMap<SessionId, ActorRef<SessionMsg>>,
}

impl SessionManagerState {
    /// Starts session `id`'s actor as a child of the manager (`myself`) and indexes it under
    /// `owner`.
    async fn start(
        &mut self,
        myself: &ActorRef<SessionManagerMsg>,
        id: SessionId,
        owner: Owner,
        recovered: Option<(RecoveredSession, Duration)>,
        claim: Option<u64>,
    ) -> Result<ActorRef<SessionMsg>, SpawnErr> {
        let Owner {
            identity,
            certificate,
            name,
            exclusive,
        } = owner;
        let store = self.store_for(&identity, name.as_deref(), claim);
        let binding = match &store {
            Some(SessionStore::Replicated(_, binding)) => Some(Arc::clone(binding)),
            _ => None,
        };
        let args = SessionArgs {
            id,
            identity: Arc::clone(&identity),
            name: name.clone(),
            shared: Arc::clone(&self.shared),
            managers: self.managers.clone(),
            taken_up: recovered.is_some() && claim.is_some(),
            recovered,
            store,
            detached_at: DetachedAt::default(),
        };
        let detached_at = args.detached_at.clone();
        let (session, _) = Actor::spawn_linked(None, Session, args, myself.get_cell()).await?;
        self.insert(
            id,
            Entry {
                identity,
                certificate,
                name,
                exclusive,
                session: session.clone(),
                detached_at,
                binding,
            },
        );
        Ok(session)
    }

    fn insert(&mut self, id: SessionId, entry: Entry) {
        let count = self
            .per_identity
            .entry(Arc::clone(&entry.identity))
            .or_default();
        *count = count.saturating_add(1);
        if let Some(name) = &entry.name {
            self.names
                .insert((Arc::clone(&entry.identity), Arc::clone(name)), id);
            if entry.exclusive {
                self.exclusive.insert(Arc::clone(name), id);
            }
        }
        self.by_actor.insert(entry.session.get_id(), id);
        self.sessions.insert(id, entry);
    }

    /// The session named by a cluster's `key`, with its entry, if this node holds a copy.
    fn named(&self, key: &SessionKey) -> Option<(SessionId, &Entry)> {
        let named = (
            Arc::from(key.identity.as_str()),
            Arc::from(key.name.as_str()),
        );
        let id = self.names.get(&named).copied()?;
        Some((id, self.sessions.get(&id)?))
    }

    /// Ends this node's copy `id` of a named session the cluster serves elsewhere or forgot:
    /// its records stay as they are.
    fn relinquish(&mut self, id: SessionId, resume_again: bool) {
        let Some(entry) = self.sessions.get(&id) else {
            return;
        };
        let _ = entry
            .session
            .send_message(SessionMsg::Relinquish { resume_again });
        self.ending.insert(id, entry.session.clone());
        self.remove(&id);
    }

    /// Forgets session `id` (its actor stays in `by_actor` until its end is reported).
    fn remove(&mut self, id: &SessionId) {
        let Some(entry) = self.sessions.remove(id) else {
            return;
        };
        Self::forget_name(&mut self.names, *id, &entry);
        if let Some(name) = entry.name.as_ref().filter(|_| entry.exclusive) {
            if self.exclusive.get(name) == Some(id) {
                self.exclusive.remove(name);
            }
        }
        if let Some(count) = self.per_identity.get_mut(&entry.identity) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_identity.remove(&entry.identity);
            }
        }
    }

    /// Forgets the name of session `id`, if the name still leads to it.
    fn forget_name(
        names: &mut HashMap<(Arc<str>, Arc<str>), SessionId>,
        id: SessionId,
        entry: &Entry,
    ) {
        if let Some(name) = &entry.name {
            let key = (Arc::clone(&entry.identity), Arc::clone(name));
            if names.get(&key) == Some(&id) {
                names.remove(&key);
            }
        }
    }

    /// Whether an exclusive use of `name` by `identity` is refused: another identity's session
    /// holds the name exclusively.
    fn held_by_another(&self, name: &str, identity: &Arc<str>) -> bool {
        self.exclusive
            .get(name)
            .and_then(|id| self.sessions.get(id))
            .is_some_and(|entry| entry.identity != *identity)
    }

    /// Where a session writes its records: a named session holding a claim, to the
    /// cluster's replicated store, under that claim; any other session, to the disk store in
    /// disk mode.
    fn store_for(
        &self,
        identity: &str,
        name: Option<&str>,
        claim: Option<u64>,
    ) -> Option<SessionStore> {
        if let (Some(name), Some(claim), Some(store)) = (name, claim, self.shared.replicated()) {
            let key = session_of(identity, name);
            let binding = Binding::new(key.clone(), claim);
            if let Some(ownership) = self.shared.router.cluster().and_then(|c| c.ownership()) {
                // Tracked first: a claim of another node applied from now on breaks it, and
                // one applied already is in the owner table.
                ownership.track(&binding);
                if ownership
                    .replica()
                    .owner(&key)
                    .is_some_and(|owner| owner.epoch > claim)
                {
                    binding.break_continuity();
                }
            }
            return Some(SessionStore::Replicated(Arc::clone(store), binding));
        }
        self.shared.storage.clone().map(SessionStore::Disk)
    }

    /// The named session `name` of `identity` as the cluster's records hold it, if they hold
    /// one (another node served it, or this node before it lost it). Records that cannot be
    /// read refuse the connection: they are left as they are, not replaced by a new session.
    fn replicated_session(
        &self,
        identity: &str,
        name: &str,
    ) -> Result<Option<RecoveredSession>, BrokerError> {
        let Some(ownership) = self.shared.router.cluster().and_then(|c| c.ownership()) else {
            return Ok(None);
        };
        let Some(records) = ownership.replica().records(&session_of(identity, name)) else {
            return Ok(None);
        };
        match read_back(&records, &self.shared.config.limits.topics) {
            Ok(session) => Ok(Some(session)),
            Err(ReadBackError::NoSession) => Ok(None),
            Err(err) => {
                tracing::error!(%identity, name, %err, "the cluster's records of a session cannot be read (are the members' topic limits the same?)");
                Err(BrokerError::Internal(format!(
                    "the cluster's records of the session cannot be read: {err}"
                )))
            }
        }
    }

    fn held_by(&self, identity: &Arc<str>) -> usize {
        self.per_identity.get(identity).copied().unwrap_or(0)
    }
}

impl SessionManager {
    /// Starts a session read back from the store, or removes it if it expired meanwhile.
    /// How long a session read back (from the disk store or the cluster's records) has left
    /// before it expires, and how long it was detached; `None` if it expired meanwhile.
    fn left(shared: &Shared, recovered: &RecoveredSession) -> (Option<Duration>, Duration) {
        let now = unix_ms();
        let detached_at = recovered.record.detached_at_ms.unwrap_or(now);
        let away = Duration::from_millis(now.saturating_sub(detached_at));
        // The time its client asked for (an MQTT 5 Session Expiry Interval), else, as for
        // every session, `sessions.expiry`; never more than the configuration allows now.
        let most = shared.config.sessions.expiry;
        let expiry = recovered
            .record
            .expiry_ms
            .map_or(most, |ms| Duration::from_millis(ms).min(most));
        (expiry.checked_sub(away), away)
    }

    async fn restore(
        myself: &ActorRef<SessionManagerMsg>,
        state: &mut SessionManagerState,
        recovered: RecoveredSession,
    ) -> Result<(), ActorProcessingErr> {
        let id = session_id(recovered.record.id);
        let (left, away) = Self::left(&state.shared, &recovered);
        let Some(expires_in) = left else {
            tracing::info!(session = %id, ?away, "a stored session expired while the broker was down; removing it");
            state.shared.emit(crate::events::Event::SessionExpired {
                identity: recovered.record.identity.clone(),
                session: id.to_string(),
                name: recovered.record.name.clone(),
                detached_ms: u64::try_from(away.as_millis()).unwrap_or(u64::MAX),
            });
            if let Some(store) = &state.shared.storage {
                store.append([Op::DeleteSession(recovered.record.id)]);
            }
            return Ok(());
        };
        let identity: Arc<str> = Arc::from(recovered.record.identity.as_str());
        let name: Option<Arc<str>> = recovered.record.name.as_deref().map(Arc::from);
        let recovered = Some((recovered, expires_in));
        state
            .start(
                myself,
                id,
                Owner {
                    identity,
                    certificate: None,
                    name,
                    exclusive: false,
                },
                recovered,
                None,
            )
            .await?;
        tracing::debug!(session = %id, ?expires_in, "session restored from the store");
        Ok(())
    }

    /// Starts the named session `name` of `identity` from the cluster's records, if they hold
    /// it and it has not expired, to be resumed under `claim`; its id, or `None` (a new
    /// session is made).
    async fn take_up(
        myself: &ActorRef<SessionManagerMsg>,
        state: &mut SessionManagerState,
        identity: &Arc<str>,
        name: &Arc<str>,
        exclusive: bool,
        claim: u64,
    ) -> Result<Option<SessionId>, BrokerError> {
        let Some(recovered) = state.replicated_session(identity, name)? else {
            return Ok(None);
        };
        let id = session_id(recovered.record.id);
        if recovered.record.identity != **identity || state.sessions.contains_key(&id) {
            return Ok(None);
        }
        // A copy of this session that this node let go of may still be ending: it ends first,
        // so the two never run at once (its subscribers are registered under the same id).
        if let Some(ending) = state.ending.remove(&id) {
            let _ = ending
                .stop_and_wait(Some("taken up again".into()), Some(ENDING_WAIT))
                .await;
        }
        let (left, _) = Self::left(&state.shared, &recovered);
        let Some(expires_in) = left else {
            tracing::info!(session = %id, %identity, name = %name, "the session in the cluster's records expired: starting a new one");
            return Ok(None);
        };
        Self::make_room(state, identity).await?;
        let subscriptions = recovered.subscriptions.len();
        state
            .start(
                myself,
                id,
                Owner {
                    identity: Arc::clone(identity),
                    certificate: None,
                    name: Some(Arc::clone(name)),
                    exclusive,
                },
                Some((recovered, expires_in)),
                Some(claim),
            )
            .await
            .map_err(|err| BrokerError::Internal(format!("spawning session: {err}")))?;
        tracing::info!(session = %id, %identity, name = %name, subscriptions, "session taken up from the cluster's records");
        Ok(Some(id))
    }

    /// Ends `identity`'s longest-detached sessions until it holds fewer than its maximum;
    /// refuses if all that remain are attached.
    async fn make_room(
        state: &mut SessionManagerState,
        identity: &Arc<str>,
    ) -> Result<(), BrokerError> {
        let max = state.shared.config.limits.max_sessions_per_identity;
        while state.held_by(identity) >= max.max(1) {
            // The session detached longest ago, as each tells the manager (ties: by id).
            let oldest = state
                .sessions
                .iter()
                .filter(|(_, entry)| entry.identity == *identity)
                .filter_map(|(id, entry)| Some((entry.detached_at.get()?, *id)))
                .min();
            let Some((_, id)) = oldest else {
                tracing::warn!(%identity, max, "new session refused: the identity holds its maximum of sessions, all attached");
                return Err(BrokerError::TooManySessionsForIdentity(max));
            };
            let Some(session) = state.sessions.get(&id).map(|entry| entry.session.clone()) else {
                continue;
            };
            // Refused only if a connection attached to it meanwhile (it then reads as
            // attached, and the next round chooses another). A session that cannot answer has
            // stopped already: its entry goes too.
            match ask(&session, SessionMsg::Evict).await {
                Ok(true) | Err(_) => state.remove(&id),
                Ok(false) => {}
            }
        }
        Ok(())
    }

    async fn open(
        myself: &ActorRef<SessionManagerMsg>,
        state: &mut SessionManagerState,
        resume: Option<SessionId>,
        name: Option<String>,
        positions: Vec<ResumePosition>,
        connection: Arc<dyn Connection>,
        claim: Option<u64>,
    ) -> Result<Opened, BrokerError> {
        let identity = Arc::clone(&connection.peer().identity);
        let certificate = connection.peer().certificate.clone();
        let name: Option<Arc<str>> = match name {
            Some(name) if !cassini_protocol::valid_session_name(&name) => {
                return Err(BrokerError::InvalidSessionName(name));
            }
            Some(name) => Some(Arc::from(name)),
            None => None,
        };
        let exclusive = name.is_some() && connection.exclusive_session_name();
        if let Some(name) = name.as_deref().filter(|_| exclusive) {
            if state.held_by_another(name, &identity) {
                tracing::warn!(%identity, name, "session name refused: another identity's client holds it");
                return Err(BrokerError::SessionIdentityMismatch);
            }
        }
        // A claim that a newer one followed before the session opened (another node's, or a
        // newer connection's here) serves nothing.
        if let (Some(name), Some(claim)) = (&name, claim) {
            let owner = state
                .shared
                .router
                .cluster()
                .and_then(|c| c.ownership())
                .and_then(|ownership| ownership.replica().owner(&session_of(&identity, name)));
            if let Some(owner) = owner.filter(|owner| owner.epoch > claim) {
                return Err(BrokerError::SessionTakenOverOn(owner.node));
            }
        }
        // A name resumes the session it leads to, or creates one under it.
        let mut resume = match &name {
            Some(name) => state
                .names
                .get(&(Arc::clone(&identity), Arc::clone(name)))
                .copied(),
            None => resume,
        };
        // This node's copy moves on to the connection's newer claim only if the records
        // changed under no other claim meanwhile; otherwise it ends, and the session is taken
        // up from the records.
        if let (Some(id), Some(claim)) = (resume, claim) {
            let broken = state
                .sessions
                .get(&id)
                .and_then(|entry| entry.binding.as_ref())
                .is_some_and(|binding| claim > binding.epoch() && !binding.is_continuous());
            if broken {
                tracing::info!(session = %id, %identity, claim, "the cluster's records of this node's copy of a session changed under another claim: the copy ends and the session is taken up from the records");
                // Its older connection, if any, was taken over by this one's hold already.
                state.relinquish(id, false);
                resume = None;
            }
        }
        // In a cluster with `members`, a named session this node does not hold may be in the
        // cluster's records: taken up from them, it is resumed like any other.
        let resume = match (&name, claim, resume) {
            (Some(name), Some(claim), None) => {
                Self::take_up(myself, state, &identity, name, exclusive, claim).await?
            }
            (_, _, resume) => resume,
        };
        let (id, session, resumed) = match resume {
            Some(id) => {
                let entry = state
                    .sessions
                    .get_mut(&id)
                    .ok_or_else(|| BrokerError::SessionNotFound(id.to_string()))?;
                if entry.identity != identity {
                    tracing::warn!(session = %id, %identity, "resume refused: session belongs to another identity");
                    return Err(BrokerError::SessionIdentityMismatch);
                }
                if let (Some(binding), Some(claim)) = (&entry.binding, claim) {
                    // Its records go under the connection's newer claim from now on.
                    binding.advance(claim);
                }
                entry.certificate = certificate;
                let session = entry.session.clone();
                if exclusive && !entry.exclusive {
                    // A stored session resumed, or a QUIC client's named session now used as an
                    // MQTT client id: the name is held exclusively from now on.
                    entry.exclusive = true;
                    if let Some(name) = entry.name.clone() {
                        state.exclusive.insert(name, id);
                    }
                }
                (id, session, true)
            }
            None => {
                Self::make_room(state, &identity).await?;
                let id = loop {
                    let candidate = SessionId(rand::random());
                    if !state.sessions.contains_key(&candidate) {
                        break candidate;
                    }
                };
                let session = state
                    .start(
                        myself,
                        id,
                        Owner {
                            identity,
                            certificate,
                            name,
                            exclusive,
                        },
                        None,
                        claim,
                    )
                    .await
                    .map_err(|err| BrokerError::Internal(format!("spawning session: {err}")))?;
                (id, session, false)
            }
        };
        let positions = if resumed { positions } else { Vec::new() };
        let Attached {
            epoch,
            acks,
            ended,
            subscriptions,
        } = ask(&session, |reply| SessionMsg::Attach {
            connection,
            positions,
            reply,
        })
        .await?;
        Ok(Opened {
            session,
            id,
            resumed,
            epoch,
            subscriptions: if resumed { subscriptions } else { Vec::new() },
            acks,
            ended: Some(ended),
        })
    }
}

impl Actor for SessionManager {
    type Msg = SessionManagerMsg;
    type State = SessionManagerState;
    type Arguments = (Arc<Shared>, SessionManagers, Vec<RecoveredSession>);

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        (shared, managers, recovered): Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut state = SessionManagerState {
            shared,
            managers,
            sessions: HashMap::new(),
            by_actor: HashMap::new(),
            per_identity: HashMap::new(),
            names: HashMap::new(),
            exclusive: HashMap::new(),
            ending: HashMap::new(),
        };
        for session in recovered {
            Self::restore(&myself, &mut state, session).await?;
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SessionManagerMsg::Open {
                resume,
                name,
                positions,
                connection,
                claim,
                reply,
            } => {
                let result =
                    Self::open(&myself, state, resume, name, positions, connection, claim).await;
                let _ = reply.send(result);
            }
            SessionManagerMsg::Relinquish { session, below } => {
                let Some((id, entry)) = state.named(&session) else {
                    return Ok(());
                };
                let Some(binding) = entry.binding.as_ref() else {
                    return Ok(());
                };
                let resume_again = if binding.epoch() < below {
                    false
                } else if binding.is_stale() {
                    tracing::warn!(session = %id, identity = %session.identity, name = %session.name, epoch = binding.epoch(), "the cluster refused changes of this node's copy of a session under an older claim: the copy ends and its client resumes from the records");
                    true
                } else {
                    return Ok(());
                };
                state.relinquish(id, resume_again);
            }
            SessionManagerMsg::Forgotten { session } => {
                let Some((id, entry)) = state.named(&session) else {
                    return Ok(());
                };
                if entry.binding.is_none() {
                    return Ok(());
                }
                // An attached copy holds a claim this node took after the forgotten one (a
                // claim a connection holds is never forgotten): it stays.
                let detached = matches!(
                    ask(&entry.session, SessionMsg::DetachedAt).await,
                    Ok(Some(_))
                );
                if detached {
                    tracing::info!(session = %id, identity = %session.identity, name = %session.name, "the cluster forgot the session: its detached copy here ends");
                    state.relinquish(id, false);
                }
            }
            SessionManagerMsg::Delivered { session } => {
                if let Some((_, entry)) = state.named(&session) {
                    let _ = entry.session.send_message(SessionMsg::DrainInbox);
                }
            }
            SessionManagerMsg::Count(reply) => {
                let _ = reply.send(state.sessions.len());
            }
            SessionManagerMsg::RecheckAcl => {
                for entry in state.sessions.values() {
                    let _ = entry.session.send_message(SessionMsg::RecheckAcl);
                }
            }
            SessionManagerMsg::EndRevoked(revoked) => {
                // Forgotten here at once, so no resume can reach a session that is ending; the
                // actor's end still cleans up through `handle_supervisor_evt`.
                let revoked_ids: Vec<SessionId> = state
                    .sessions
                    .iter()
                    .filter(|(_, entry)| {
                        entry
                            .certificate
                            .as_deref()
                            .is_some_and(|key| revoked.contains(key))
                    })
                    .map(|(id, _)| *id)
                    .collect();
                let ended = revoked_ids.len();
                for id in revoked_ids {
                    if let Some(entry) = state.sessions.get(&id) {
                        tracing::info!(session = %id, identity = %entry.identity, "ending the session of a revoked certificate");
                        let _ = entry.session.send_message(SessionMsg::Revoke);
                    }
                    // Also lowers the identity's session count and forgets the session's name.
                    state.remove(&id);
                }
                if ended > 0 {
                    tracing::warn!(
                        sessions = ended,
                        "ended the sessions of revoked certificates"
                    );
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let Some((cell, _)) = ended_child(event, "session") else {
            return Ok(());
        };
        if let Some(id) = state.by_actor.remove(&cell.get_id()) {
            if state
                .ending
                .get(&id)
                .is_some_and(|ending| ending.get_id() == cell.get_id())
            {
                state.ending.remove(&id);
            }
            // A session taken up again here under the same id is another actor: this end is
            // not its end.
            let taken_up_again = state
                .sessions
                .get(&id)
                .is_some_and(|entry| entry.session.get_id() != cell.get_id());
            if !taken_up_again {
                state.remove(&id);
                // Normally the session already stopped its subscribers; after a failure this
                // is the only clean-up they get.
                let _ = state
                    .managers
                    .subscribers
                    .send_message(SubscriberManagerMsg::StopSession(id));
            }
        }
        Ok(())
    }
}
