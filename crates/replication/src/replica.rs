//! One node's member of the cluster's Raft group: its openraft instance over the log store and
//! the state machine of this crate, the requests peers send it ([`Replica::handle`]), and the
//! one write the broker makes: a session claim ([`Replica::claim`]).
//!
//! - **Membership** is the configured member names ([`ReplicaConfig::members`]); each node's
//!   id is [`crate::node_id`] of its name, so every node derives the same membership.
//! - **Bootstrap, exactly once.** Only the member whose name sorts first initializes the
//!   group, and only when its own log is empty, a link to every other member is up and every
//!   other member answers that it has never been part of a group (no vote, no log). Any other
//!   node waits for the leader to replicate the membership to it. So a fresh cluster
//!   initializes once all its members are up, and a restarted node (whatever its storage)
//!   never initializes a second group beside the one its peers hold.
//! - **Votes after a start with no state** (memory mode restarted, a lost disk) are held back
//!   until every other member has said what it holds, and then go only to candidates at least
//!   as up to date, until a leader has caught this node up ([`crate::rejoin`]).
//! - **Claims** are written by the leader: a follower forwards the claim to the node it knows
//!   as leader. A claim not committed within [`ReplicaConfig::claim_timeout`] (no leader, or
//!   no majority reachable) is refused with [`ClaimError::NoQuorum`]; one beyond the claims
//!   table's bounds, before anything is written ([`ClaimError::TooManyForIdentity`],
//!   [`ClaimError::TableFull`]).
//! - **Releases**: a node writes that it started afresh before it claims anything, and the
//!   claims its connections let go of ([`Replica::release`]), in batches, in the background.
//!   The leader also releases the claims of a member out of contact beyond its lease and the
//!   fence's margin (the time a claim's fence waits for it): by then that member has closed
//!   its connections ([`release_lost`]).
//! - **Expiry**: the broker decides which released claims have expired and writes them
//!   ([`Replica::expire`]); this crate knows no session expiry.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::raft::{AppendEntriesResponse, VoteResponse};
use openraft::{Raft, SnapshotPolicy};
use tokio::time::Instant;

use crate::log_store::{LogStore, Storage, StorageOpenError};
use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::network::{Contacts, Network, Reply, Rpc, TransportSlot};
use crate::rejoin::Rejoin;
use crate::shared_records::{SharedBounds, SharedChange, SharedObserver};
use crate::state_machine::{
    ClaimObserver, Owner, RecordsObserver, ReleasedClaim, SessionKey, SessionRecords, StateMachine,
};
use crate::{
    node_id, Applied, Command, Member, NodeId, Refusal, RpcTransport, SessionWrite, TypeConfig,
    WriteId, WriteRefusal,
};

/// The most entries one append entries request carries by default.
pub const MAX_ENTRIES_PER_APPEND: u64 = 16;

/// How often the first member checks whether it can bootstrap the group.
const BOOTSTRAP_EVERY: Duration = Duration::from_millis(200);

/// How long a claim waits before asking again when no leader is known.
const CLAIM_RETRY: Duration = Duration::from_millis(50);

/// How long before a write's deadline a follower stops waiting to apply a command the leader
/// committed, so that the committed answer is returned rather than lost to the caller's
/// timeout, which ends at the same deadline.
const APPLY_SLACK: Duration = Duration::from_millis(50);

/// How long adding a node waits for a cluster link to it (a node just started dials its peers).
const LINK_WAIT: Duration = Duration::from_secs(3);

/// The most released claims waiting to be written; beyond, a release is dropped (its claim
/// stays counted as held until this node restarts).
const MAX_QUEUED_RELEASES: usize = 65_536;

/// The most released (or expired) claims one log entry carries.
pub const MAX_RELEASES_PER_ENTRY: usize = 512;

/// The most entries of releases the leader writes for members out of contact each round (one
/// round per lease): the rest waits for the next round.
const MAX_LOST_RELEASE_ENTRIES_PER_ROUND: usize = 8;

/// Milliseconds since the Unix epoch, now.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A node's Raft settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This node's name; one of `members`.
    pub node: String,
    /// The names of every voting member, this node's included.
    pub members: Vec<String>,
    /// The longest a claim waits to be committed before it is refused. Default: 3 s (a leader
    /// lost takes up to the election timeout to replace, plus a round trip).
    pub claim_timeout: Duration,
    /// The leader's heartbeat. Default: 100 ms.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a time drawn in this range starts an election.
    /// Default: 500 ms to 1 s (QUIC's idle timeout on the cluster links is 2 s).
    pub election_timeout: (Duration, Duration),
    /// A snapshot is built after this many entries since the last, and the log before it is
    /// purged: what bounds the log. Default: 1024.
    pub snapshot_every: u64,
    /// How long a lease lasts: a leader's from the sending time of its latest append entries
    /// a majority acknowledged; a follower's from receiving append entries of a leader that
    /// holds one, for what is left of that leader's but never beyond the lease from the
    /// latest append entries it acknowledged ([`Replica::in_contact`]). A claim whose previous
    /// owner does not confirm it waits until the leader knows that owner's lease has run out,
    /// at most [`ReplicaConfig::fence_wait`]. Default: 2 s (longer than an election: 0.5 to
    /// 1 s of timeout, then a round trip).
    pub lease: Duration,
    /// The most sessions the claims table holds; beyond it the oldest released claim is
    /// forgotten, and a claim is refused if none is released
    /// ([`crate::StateMachine::with_max_claims`]). Default:
    /// [`crate::state_machine::DEFAULT_MAX_CLAIMS`] (1,048,576).
    pub max_claims: usize,
    /// The most sessions of one identity the claims table holds; beyond it that identity's
    /// oldest released claim is forgotten, and its claim is refused if none is released
    /// ([`crate::StateMachine::with_max_claims_per_identity`]). The same on every member.
    /// Default: [`crate::state_machine::DEFAULT_MAX_CLAIMS_PER_IDENTITY`] (1024).
    pub max_claims_per_identity: usize,
    /// The most bytes of session records the state machine holds, on every member
    /// ([`crate::StateMachine::with_max_record_bytes`]). The same on every member. Default:
    /// [`crate::state_machine::DEFAULT_MAX_RECORD_BYTES`] (256 MiB).
    pub max_record_bytes: u64,
    /// The most entries one append entries request carries: an append must fit in one
    /// cluster frame with the largest entry the broker writes. Default:
    /// [`MAX_ENTRIES_PER_APPEND`] (16).
    pub max_entries_per_append: u64,
    /// The bounds of the cluster-wide records (retained values, the dedupe window), the same
    /// on every member. Default: [`SharedBounds::default`].
    pub shared: SharedBounds,
}

impl ReplicaConfig {
    /// The longest a claim whose earlier claimant did not confirm it waits after asking: the
    /// lease and three heartbeats (two for the delay of the append entries that gave that
    /// node its lease, one for its check, made when its lease runs out:
    /// [`Replica::lease_expiry`]). Every lease runs from a majority's acknowledgement sent
    /// before the claim's leader was elected, so by then that node, cut off from the
    /// majority, has closed its connection of the session. The claim waits less when the
    /// leader tells when that node's lease has run out (the lease and three heartbeats from
    /// that node's last contact, not from the question).
    pub fn fence_wait(&self) -> Duration {
        self.lease + self.fence_margin()
    }

    /// What a fence adds to a lease: three heartbeats (two for the delay of the append
    /// entries that gave the lease, one for the check of the node that held it).
    pub fn fence_margin(&self) -> Duration {
        self.heartbeat * 3
    }

    /// Node `node` among `members`, with the default timings.
    pub fn new(node: impl Into<String>, members: Vec<String>) -> Self {
        Self {
            node: node.into(),
            members,
            claim_timeout: Duration::from_secs(3),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 1024,
            lease: Duration::from_secs(2),
            max_claims: crate::state_machine::DEFAULT_MAX_CLAIMS,
            max_claims_per_identity: crate::state_machine::DEFAULT_MAX_CLAIMS_PER_IDENTITY,
            max_record_bytes: crate::state_machine::DEFAULT_MAX_RECORD_BYTES,
            max_entries_per_append: MAX_ENTRIES_PER_APPEND,
            shared: SharedBounds::default(),
        }
    }
}

/// Starting a replica failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The member list is not usable.
    #[error("cluster members: {0}")]
    Members(String),
    /// The Raft file could not be opened or read.
    #[error(transparent)]
    Storage(#[from] StorageOpenError),
    /// openraft refused to start.
    #[error("starting Raft: {0}")]
    Raft(String),
}

/// A claim was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClaimError {
    /// No leader with a majority committed it within the claim timeout.
    #[error("the cluster did not commit the claim within {0:?}: no quorum reachable")]
    NoQuorum(Duration),
    /// The identity holds its maximum of claims, all held by live connections
    /// ([`ReplicaConfig::max_claims_per_identity`]).
    #[error("the identity holds its maximum of {0} claimed sessions, all in use")]
    TooManyForIdentity(usize),
    /// The claims table holds its maximum of claims, all held by live connections
    /// ([`ReplicaConfig::max_claims`]).
    #[error("the cluster holds its maximum of {0} claimed sessions, all in use")]
    TableFull(usize),
    /// The replica has stopped.
    #[error("the replica has stopped")]
    Stopped,
}

/// What a write of cluster-wide changes answered ([`Replica::write_shared`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedWritten {
    /// The sessions whose changes were not applied, and why.
    pub refused_writes: Vec<(SessionKey, WriteRefusal)>,
    /// The topics whose retained value was refused (the bound of retained values).
    pub refused_retained: Vec<String>,
}

impl From<Refusal> for ClaimError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::TooManyForIdentity(max) => Self::TooManyForIdentity(max),
            Refusal::TableFull(max) => Self::TableFull(max),
        }
    }
}

/// A member's view of the Raft group, for monitoring (`/clusterz`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicaStatus {
    /// This node's name.
    pub node: String,
    /// The voting members, by name, as this node knows the membership.
    pub members: Vec<String>,
    /// The learners (members being added: they receive the log but do not vote), by name.
    pub learners: Vec<String>,
    /// The member this node knows as leader, if any.
    pub leader: Option<String>,
    /// The current term.
    pub term: u64,
    /// The index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// The index of the last entry applied here.
    pub last_applied: Option<u64>,
    /// How many sessions have an owner.
    pub claims: usize,
    /// Bytes of claimed sessions' records this node holds, and their bound.
    pub record_bytes: u64,
    /// The bound of `record_bytes`.
    pub max_record_bytes: u64,
}

/// One node's Raft. See the module documentation.
pub struct Replica {
    config: ReplicaConfig,
    pub(crate) raft: Raft<TypeConfig>,
    slot: Arc<TransportSlot>,
    writer: Writer,
    pub(crate) log: LogStore,
    state: StateMachine,
    contacts: Arc<Contacts>,
    bootstrap: Option<tokio::task::JoinHandle<()>>,
    /// Writes that this node started afresh, then the claims its connections released.
    releaser: tokio::task::JoinHandle<()>,
    /// Released claims waiting for the releaser, with when each was let go (Unix ms).
    releases: tokio::sync::mpsc::Sender<(SessionKey, u64, u64)>,
    /// As the leader, releases the claims of members out of contact ([`release_lost`]).
    lost_sweep: tokio::task::JoinHandle<()>,
    /// Whether this node's restart is written: it claims nothing before.
    restarted: tokio::sync::watch::Receiver<bool>,
    /// Whether this node initialized the group (the first member's bootstrap did).
    initialized_here: Arc<AtomicBool>,
    /// This node's votes while it rejoins with no state ([`crate::rejoin`]).
    pub(crate) rejoin: Arc<Rejoin>,
    /// Asks the other members what they hold until the rejoin's floor is known.
    floor_learner: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("node", &self.config.node)
            .field("members", &self.config.members)
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Starts this node's Raft on `storage`, telling `observer` of each claim applied. The
    /// node talks to no one until [`Replica::set_transport`].
    pub async fn start(
        config: ReplicaConfig,
        storage: Storage,
        observer: Option<ClaimObserver>,
    ) -> Result<Arc<Self>, ReplicaError> {
        Self::start_observed(config, storage, observer, None).await
    }

    /// [`Replica::start`], also telling `records` of every change to session records applied.
    pub async fn start_observed(
        config: ReplicaConfig,
        storage: Storage,
        observer: Option<ClaimObserver>,
        records: Option<RecordsObserver>,
    ) -> Result<Arc<Self>, ReplicaError> {
        let mut ids = BTreeMap::new();
        for name in &config.members {
            if let Some(other) = ids.insert(node_id(name), name) {
                return Err(ReplicaError::Members(format!(
                    "{other:?} is listed twice, or has the id of {name:?}"
                )));
            }
        }
        if !config.members.contains(&config.node) {
            tracing::info!(
                node = %config.node,
                members = ?config.members,
                "this node is not one of the configured members: it joins the group once a member adds it (`cassini cluster add`)"
            );
        }
        let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let raft_config = openraft::Config {
            cluster_name: "cassini".to_owned(),
            heartbeat_interval: millis(config.heartbeat),
            election_timeout_min: millis(config.election_timeout.0),
            election_timeout_max: millis(config.election_timeout.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: 0,
            // An entry of session records carries up to about 3 MiB (the broker's batches):
            // 16 of them stay within a cluster frame (64 MiB).
            max_payload_entries: config.max_entries_per_append.max(1),
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|err| ReplicaError::Raft(err.to_string()))?;
        let log = LogStore::open(storage.clone())?;
        let rejoin = Arc::new(Rejoin::new(log.is_pristine()));
        let state = StateMachine::open(storage, observer)
            .map_err(|err| ReplicaError::Storage(StorageOpenError::Read(err)))?
            .with_max_claims(config.max_claims)
            .with_max_claims_per_identity(config.max_claims_per_identity)
            .with_max_record_bytes(config.max_record_bytes)
            .with_shared_bounds(config.shared)
            .with_records_observer(records);
        let slot = Arc::new(TransportSlot::default());
        let contacts = Arc::new(Contacts::new(config.lease, node_id(&config.node)));
        let network = Network {
            slot: Arc::clone(&slot),
            contacts: Arc::clone(&contacts),
        };
        let raft = Raft::new(
            node_id(&config.node),
            Arc::new(raft_config),
            network,
            log.clone(),
            state.clone(),
        )
        .await
        .map_err(|err| ReplicaError::Raft(err.to_string()))?;
        contacts.watch(raft.metrics());
        let first = config.members.iter().min();
        let initialized_here = Arc::new(AtomicBool::new(false));
        let bootstrap = (first == Some(&config.node)).then(|| {
            tokio::spawn(bootstrap(
                raft.clone(),
                log.clone(),
                Arc::clone(&slot),
                config.clone(),
                Arc::clone(&initialized_here),
            ))
        });
        let writer = Writer {
            raft: raft.clone(),
            slot: Arc::clone(&slot),
        };
        let (releases, queue) = tokio::sync::mpsc::channel(MAX_QUEUED_RELEASES);
        let (written, restarted) = tokio::sync::watch::channel(false);
        let releaser = tokio::spawn(release(
            writer.clone(),
            config.node.clone(),
            config.claim_timeout,
            written,
            queue,
        ));
        let lost_sweep = tokio::spawn(release_lost(
            writer.clone(),
            state.clone(),
            Arc::clone(&contacts),
            config.clone(),
        ));
        let floor_learner = tokio::spawn(learn_floor(
            Arc::clone(&rejoin),
            Arc::clone(&slot),
            config.clone(),
        ));
        Ok(Arc::new(Self {
            config,
            raft,
            slot,
            writer,
            releaser,
            releases,
            lost_sweep,
            restarted,
            log,
            state,
            contacts,
            bootstrap,
            initialized_here,
            rejoin,
            floor_learner,
        }))
    }

    /// The answer to a vote request this node holds back while it rejoins: not granted, with
    /// its own vote and log, as openraft answers a vote it refuses.
    fn vote_held_back(&self) -> VoteResponse<NodeId> {
        let vote = self.raft.metrics().borrow().vote;
        tracing::debug!("a vote request held back: rejoining with no Raft state");
        VoteResponse::new(vote, self.log.standing().last_log_id, false)
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.config.node
    }

    /// The transport to the other members, once the cluster endpoint is up.
    pub fn set_transport(&self, transport: Arc<dyn RpcTransport>) {
        self.slot.set(transport);
    }

    /// Answers a request another member sent (the bytes its [`RpcTransport`] carried).
    pub async fn handle(&self, request: &[u8]) -> Vec<u8> {
        let reply = match rmp_serde::from_slice::<Rpc>(request) {
            Ok(Rpc::Vote(rpc)) => {
                let answer = if self.rejoin.admits(&rpc) {
                    self.raft.vote(rpc).await
                } else {
                    Ok(self.vote_held_back())
                };
                Reply::Vote {
                    answer,
                    last_contact: self.contacts.last_contact_ago(),
                }
            }
            Ok(Rpc::Append { request, lease }) => {
                let received = std::time::Instant::now();
                self.contacts.contacted(received);
                let commit = request.leader_commit.map_or(0, |log_id| log_id.index);
                let rejoining = self.rejoin.is_rejoining().then(|| request.clone());
                let answer = self.raft.append_entries(request).await;
                if let (Some(request), Ok(AppendEntriesResponse::Success)) = (rejoining, &answer) {
                    self.rejoin.appended(&request);
                }
                let accepted = matches!(&answer, Ok(response) if !matches!(response, AppendEntriesResponse::HigherVote(_)));
                // Only a leader that holds its own lease renews a follower's.
                if let Some(left) = lease.filter(|_| accepted) {
                    self.contacts.renewed(received, left, commit);
                }
                Reply::Append(answer)
            }
            Ok(Rpc::Snapshot(rpc)) => Reply::Snapshot(self.raft.install_snapshot(rpc).await),
            Ok(Rpc::Write { command }) => {
                let write = self.raft.client_write(command);
                Reply::Written(
                    match tokio::time::timeout(self.config.claim_timeout, write).await {
                        Ok(Ok(written)) => Ok(written.data),
                        Ok(Err(err)) => Err(err.to_string()),
                        Err(_) => Err("not committed in time".to_owned()),
                    },
                )
            }
            Ok(Rpc::Membership { change, timeout }) => {
                Reply::Membership(self.change_membership(change, timeout).await)
            }
            Ok(Rpc::Status) => Reply::Status {
                pristine: self.log.is_pristine(),
            },
            Ok(Rpc::Standing) => Reply::Standing(self.log.standing()),
            Ok(Rpc::Applied { index }) => Reply::Applied {
                reached: self
                    .raft
                    .wait(Some(self.config.claim_timeout))
                    .applied_index_at_least(Some(index), "a later claim applied here")
                    .await
                    .is_ok(),
            },
            Ok(Rpc::LeaseEnds { nodes }) => {
                let now = std::time::Instant::now();
                Reply::LeaseEnds {
                    left: nodes
                        .iter()
                        .map(|node| {
                            self.lease_end_here(node)
                                .map(|end| end.saturating_duration_since(now))
                        })
                        .collect(),
                }
            }
            Err(err) => Reply::Undecodable(err.to_string()),
        };
        rmp_serde::to_vec(&reply).unwrap_or_default()
    }

    /// Claims `session` for this node: its epoch once a majority has committed the claim and
    /// this node has applied it (or the claim timeout is near: a follower slow to apply still
    /// returns the committed epoch), and the claim is fenced: every earlier claimant of the
    /// session not known to have let go confirmed it applied the claim (and so closed its
    /// connection of the session), or the lease of those that did not has run out, as the
    /// leader knows it (at most [`ReplicaConfig::fence_wait`] from the question). Refused
    /// with [`ClaimError::NoQuorum`] after [`ReplicaConfig::claim_timeout`].
    pub async fn claim(&self, session: SessionKey) -> Result<u64, ClaimError> {
        let limit = self.config.claim_timeout;
        let deadline = Instant::now() + limit;
        if let Some(refusal) = self.state.refusal(&session) {
            return Err(refusal.into());
        }
        let mut restarted = self.restarted.clone();
        tokio::time::timeout_at(deadline, restarted.wait_for(|written| *written))
            .await
            .map_err(|_| ClaimError::NoQuorum(limit))?
            .map_err(|_| ClaimError::Stopped)?;
        let command = Command::Claim {
            session: session.clone(),
            node: self.config.node.clone(),
        };
        let applied = tokio::time::timeout_at(deadline, self.writer.write(command, deadline))
            .await
            .unwrap_or(Err(ClaimError::NoQuorum(limit)))?;
        if let Some(refusal) = applied.refused {
            return Err(refusal.into());
        }
        let earlier: Vec<String> = applied
            .unfenced
            .iter()
            .filter(|earlier| earlier.node != self.config.node)
            .map(|earlier| earlier.node.clone())
            .collect();
        if earlier.is_empty() {
            return Ok(applied.epoch);
        }
        // Each earlier claimant closes its connection of the session when it applies the
        // claim: ask them all at once, so this node attaches only once the old connections are
        // closed. One that does not confirm is cut off from the majority (or dead): its lease
        // runs out and it closes its connections of claimed sessions itself (`in_contact`).
        // The leader knows by when each lease has run out (`lease_end_here`); without its
        // answer, waiting `fence_wait` from the question covers every lease.
        let asked = Instant::now();
        let fence_end = asked + self.config.fence_wait();
        let mut asks = tokio::task::JoinSet::new();
        for node in &earlier {
            let slot = Arc::clone(&self.slot);
            let rpc = Rpc::Applied {
                index: applied.epoch,
            };
            let lease = self.config.lease;
            let node = node.clone();
            asks.spawn(async move {
                let reply = slot.call(&node, &rpc, lease).await;
                (node, matches!(reply, Ok(Reply::Applied { reached: true })))
            });
        }
        let lease_ends = self.lease_ends(&earlier);
        tokio::pin!(lease_ends);
        // Per earlier claimant not confirmed yet: when its lease has surely run out.
        let mut waiting: BTreeMap<String, Instant> = earlier
            .iter()
            .map(|node| (node.clone(), fence_end))
            .collect();
        let mut ends_known = false;
        while let Some(until) = waiting.values().max().copied() {
            tokio::select! {
                Some(answer) = asks.join_next() => {
                    if let Ok((node, true)) = answer {
                        waiting.remove(&node);
                    }
                }
                ends = &mut lease_ends, if !ends_known => {
                    ends_known = true;
                    for (node, end) in earlier.iter().zip(ends) {
                        if let (Some(wait), Some(end)) = (waiting.get_mut(node), end) {
                            *wait = (*wait).min(end);
                        }
                    }
                }
                () = tokio::time::sleep_until(until) => {
                    tracing::info!(
                        identity = %session.identity,
                        name = %session.name,
                        silent = ?waiting.keys().collect::<Vec<_>>(),
                        waited = ?asked.elapsed(),
                        "earlier claimants of the session did not confirm the claim: waited out their lease"
                    );
                    break;
                }
            }
        }
        // The fence is complete: recorded, so later claims need not fence these claims again.
        // Not waited for; if it is lost, a later claim fences them once more.
        let writer = self.writer.clone();
        let fenced = Command::Fenced {
            session,
            epoch: applied.epoch,
        };
        tokio::spawn(async move {
            let deadline = Instant::now() + limit;
            let _ = tokio::time::timeout_at(deadline, writer.write(fenced, deadline)).await;
        });
        Ok(applied.epoch)
    }

    /// As the leader: when the lease of member `node` has surely run out
    /// ([`crate::network::Contacts`]: the delay of append entries and the node's check
    /// included); `None` if this node is not the leader, `node` is this node, or it cannot
    /// tell.
    fn lease_end_here(&self, node: &str) -> Option<std::time::Instant> {
        lease_end_of(
            &self.raft,
            &self.contacts,
            &self.config.node,
            node,
            self.config.fence_margin(),
        )
        .map(|(end, _)| end)
    }

    /// When the lease of each of `nodes` has surely run out, as the leader answers (this node,
    /// or asked within the lease; its answer counted from its arrival here); `None` for each
    /// it cannot tell.
    async fn lease_ends(&self, nodes: &[String]) -> Vec<Option<Instant>> {
        let me = node_id(&self.config.node);
        let leader = self.raft.metrics().borrow().current_leader;
        if leader == Some(me) {
            return nodes
                .iter()
                .map(|node| self.lease_end_here(node).map(Instant::from_std))
                .collect();
        }
        let unknown = vec![None; nodes.len()];
        let Some(name) = self.leader() else {
            return unknown;
        };
        let rpc = Rpc::LeaseEnds {
            nodes: nodes.to_vec(),
        };
        let reply = self.slot.call(&name, &rpc, self.config.lease).await;
        let answered = Instant::now();
        match reply {
            Ok(Reply::LeaseEnds { left }) if left.len() == nodes.len() => left
                .into_iter()
                .map(|left| left.map(|left| answered + left))
                .collect(),
            _ => unknown,
        }
    }

    /// Writes changes to the records of sessions this node's connections hold claims of: once
    /// a majority has committed them (within [`ReplicaConfig::claim_timeout`], else
    /// [`ClaimError::NoQuorum`]) and this node has applied them, the sessions whose changes
    /// were not applied and why (each session's changes apply only while the claim they name
    /// is its owner's, and within the records' bound).
    pub async fn write(
        &self,
        writes: Vec<SessionWrite>,
    ) -> Result<Vec<(SessionKey, WriteRefusal)>, ClaimError> {
        self.write_as(None, writes).await
    }

    /// [`Replica::write`] named `id`: written again under the same id (after
    /// [`ClaimError::NoQuorum`]), it is applied once, and answers what it did then.
    pub async fn write_as(
        &self,
        id: Option<WriteId>,
        writes: Vec<SessionWrite>,
    ) -> Result<Vec<(SessionKey, WriteRefusal)>, ClaimError> {
        let limit = self.config.claim_timeout;
        let deadline = Instant::now() + limit;
        let command = Command::Write { writes, id };
        let applied = tokio::time::timeout_at(deadline, self.writer.write(command, deadline))
            .await
            .unwrap_or(Err(ClaimError::NoQuorum(limit)))?;
        Ok(applied.refused_writes)
    }

    /// Writes cluster-wide changes with the session writes of the same publishes, in one entry
    /// ([`Command::Shared`]): once a majority has committed it (within
    /// [`ReplicaConfig::claim_timeout`], else [`ClaimError::NoQuorum`]) and this node has
    /// applied it, the sessions whose changes were not applied and why, and the topics whose
    /// retained value was refused (its bound).
    pub async fn write_shared(
        &self,
        id: Option<WriteId>,
        writes: Vec<SessionWrite>,
        changes: Vec<SharedChange>,
    ) -> Result<SharedWritten, ClaimError> {
        let limit = self.config.claim_timeout;
        let deadline = Instant::now() + limit;
        let command = Command::Shared {
            writes,
            changes,
            id,
        };
        let applied = tokio::time::timeout_at(deadline, self.writer.write(command, deadline))
            .await
            .unwrap_or(Err(ClaimError::NoQuorum(limit)))?;
        Ok(SharedWritten {
            refused_writes: applied.refused_writes,
            refused_retained: applied.refused_retained,
        })
    }

    /// `observer` is told, after each entry applied here (or snapshot installed), of the
    /// topics whose retained value changed (once; a second call is ignored).
    pub fn on_shared_change(&self, observer: SharedObserver) {
        self.state.on_shared_change(observer);
    }

    /// `topic`'s retained value, as this node has applied it.
    pub fn retained(&self, topic: &str) -> Option<Bytes> {
        self.state.retained(topic)
    }

    /// Every topic with a retained value, as this node has applied them.
    pub fn retained_topics(&self) -> Vec<String> {
        self.state.retained_topics()
    }

    /// Whether the replicated dedupe window holds `identity`'s `message_id` accepted within
    /// the window before `now_ms` (milliseconds since the Unix epoch), as this node has
    /// applied it.
    pub fn seen(&self, identity: &str, message_id: u64, now_ms: u64) -> bool {
        self.state.seen(identity, message_id, now_ms)
    }

    /// The stored records of `session`, as this node has applied them.
    pub fn records(&self, session: &SessionKey) -> Option<SessionRecords> {
        self.state.records(session)
    }

    /// The records of `session` whose keys start with `prefix`, as this node has applied them.
    pub fn records_under(&self, session: &SessionKey, prefix: &[u8]) -> SessionRecords {
        self.state.records_under(session, prefix)
    }

    /// How many bytes of session records the state machine holds, and its bound.
    pub fn record_bytes(&self) -> (u64, u64) {
        self.state.record_bytes()
    }

    /// Changes the group's voters through openraft's joint consensus: [`MembershipChange::Add`]
    /// adds the node as a learner, waits until it has caught up with the leader's log (from a
    /// snapshot if the log it needs is purged), then makes it a voter; [`MembershipChange::Remove`]
    /// removes it. Each change commits the joint configuration (a majority of the old voters
    /// and of the new) and then the new one. Only the leader changes the membership: on a
    /// follower the request is forwarded to the leader it knows. Gives up after `timeout`
    /// ([`MembershipError::NoQuorum`]; a change under way still completes). Adding a voter
    /// or removing a non-member is refused, not repeated: adding a voter answers its
    /// membership unchanged.
    pub async fn change_membership(
        &self,
        change: MembershipChange,
        timeout: Duration,
    ) -> Result<Membership, MembershipError> {
        let deadline = Instant::now() + timeout;
        let me = node_id(&self.config.node);
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(leader) if leader == me => {
                    match self.change_here(&change, deadline, timeout).await {
                        Err(None) => {}
                        Err(Some(err)) => return Err(err),
                        Ok(membership) => return Ok(membership),
                    }
                }
                Some(_) => {
                    if let Some(name) = self.leader() {
                        let left = deadline.saturating_duration_since(Instant::now());
                        // The leader answers a little before this node stops waiting.
                        let rpc = Rpc::Membership {
                            change: change.clone(),
                            timeout: left.mul_f64(0.9),
                        };
                        if let Ok(Reply::Membership(answer)) =
                            self.slot.call(&name, &rpc, left).await
                        {
                            return answer;
                        }
                    }
                }
                None => {}
            }
            if Instant::now() >= deadline {
                return Err(MembershipError::NoQuorum(timeout));
            }
            tokio::time::sleep(CLAIM_RETRY).await;
        }
    }

    /// The change, made by this node as the leader; `Err(None)`: it is not the leader (any
    /// more), ask again.
    async fn change_here(
        &self,
        change: &MembershipChange,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<Membership, Option<MembershipError>> {
        let current = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        match change {
            MembershipChange::Add(name) => {
                let id = node_id(name);
                if let Some(member) = current.get_node(&id) {
                    if member.name != *name {
                        return Err(Some(MembershipError::IdCollision(
                            name.clone(),
                            member.name.clone(),
                        )));
                    }
                }
                if current.voter_ids().any(|voter| voter == id) {
                    return Ok(self.membership());
                }
                // A node just started may not be linked yet: give it a moment.
                let linked_by = deadline.min(Instant::now() + LINK_WAIT);
                let reachable = loop {
                    let reachable = self
                        .slot
                        .get()
                        .is_some_and(|transport| transport.connected(name));
                    if reachable || Instant::now() >= linked_by {
                        break reachable;
                    }
                    tokio::time::sleep(CLAIM_RETRY).await;
                };
                if !reachable {
                    return Err(Some(MembershipError::UnknownNode(name.clone())));
                }
                let member = Member { name: name.clone() };
                let added = self.in_background(name, deadline, timeout, {
                    let raft = self.raft.clone();
                    async move { raft.add_learner(id, member, false).await }
                });
                let added = added.await?;
                // Caught up: the leader's replication to it has reached the entry that made it
                // a learner (what openraft's own blocking `add_learner` waits for).
                let left = deadline.saturating_duration_since(Instant::now());
                let caught_up = self
                    .raft
                    .wait(Some(left))
                    .metrics(
                        |metrics| {
                            metrics
                                .replication
                                .as_ref()
                                .and_then(|progress| progress.get(&id).cloned().flatten())
                                .is_some_and(|matched| matched.index >= added.index)
                        },
                        "the new learner caught up",
                    )
                    .await;
                if caught_up.is_err() {
                    if self.raft.metrics().borrow().current_leader
                        != Some(node_id(&self.config.node))
                    {
                        return Err(None);
                    }
                    return Err(Some(MembershipError::NotCaughtUp(name.clone(), timeout)));
                }
                let voters = std::collections::BTreeSet::from([id]);
                self.in_background(name, deadline, timeout, {
                    let raft = self.raft.clone();
                    async move {
                        raft.change_membership(openraft::ChangeMembers::AddVoterIds(voters), false)
                            .await
                    }
                })
                .await?;
                tracing::info!(node = %name, "added to the cluster's Raft group as a voter");
                Ok(self.membership())
            }
            MembershipChange::Remove(name) => {
                let id = node_id(name);
                let voter = current.voter_ids().any(|voter| voter == id);
                let known = current
                    .get_node(&id)
                    .is_some_and(|member| member.name == *name);
                if !known {
                    return Err(Some(MembershipError::NotAMember(name.clone())));
                }
                let ids = std::collections::BTreeSet::from([id]);
                let changes = if voter {
                    if current.voter_ids().all(|voter| voter == id) {
                        return Err(Some(MembershipError::LastMember(name.clone())));
                    }
                    openraft::ChangeMembers::RemoveVoters(ids)
                } else {
                    openraft::ChangeMembers::RemoveNodes(ids)
                };
                self.in_background(name, deadline, timeout, {
                    let raft = self.raft.clone();
                    async move { raft.change_membership(changes, false).await }
                })
                .await?;
                tracing::info!(node = %name, "removed from the cluster's Raft group");
                // Its connections hold none of its claims once its lease has run out (it
                // gets no append entries any more): then its claims are written as released,
                // so they no longer count as in use; unless it was added again meanwhile
                // (its new incarnation writes its own restart before it claims).
                let writer = self.writer.clone();
                let wait = self.config.fence_wait();
                let claim_timeout = self.config.claim_timeout;
                let node = name.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let back = writer
                        .raft
                        .metrics()
                        .borrow()
                        .membership_config
                        .membership()
                        .get_node(&id)
                        .is_some();
                    if back {
                        return;
                    }
                    let deadline = Instant::now() + claim_timeout;
                    let command = Command::Restarted {
                        node,
                        at_ms: Some(unix_ms()),
                    };
                    let _ =
                        tokio::time::timeout_at(deadline, writer.write(command, deadline)).await;
                });
                Ok(self.membership())
            }
        }
    }

    /// Runs a membership write of openraft's in a task of its own, so that giving up at
    /// `deadline` never cancels it halfway (a change cut between its joint and its final
    /// configuration would stay joint); the log id it was written at. `name`: the node the
    /// change is about.
    async fn in_background<F>(
        &self,
        name: &str,
        deadline: Instant,
        timeout: Duration,
        write: F,
    ) -> Result<openraft::LogId<NodeId>, Option<MembershipError>>
    where
        F: std::future::Future<
                Output = Result<
                    openraft::raft::ClientWriteResponse<TypeConfig>,
                    RaftError<NodeId, ClientWriteError<NodeId, Member>>,
                >,
            > + Send
            + 'static,
    {
        let task = tokio::spawn(write);
        match tokio::time::timeout_at(deadline, task).await {
            Err(_) => Err(Some(MembershipError::NoQuorum(timeout))),
            Ok(Err(_)) => Err(Some(MembershipError::Stopped)),
            Ok(Ok(Ok(written))) => Ok(written.log_id),
            Ok(Ok(Err(err))) => Err(match err {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => None,
                RaftError::APIError(ClientWriteError::ChangeMembershipError(err)) => match err {
                    ChangeMembershipError::InProgress(_) => Some(MembershipError::InProgress),
                    ChangeMembershipError::EmptyMembership(_) => {
                        Some(MembershipError::LastMember(name.to_owned()))
                    }
                    ChangeMembershipError::LearnerNotFound(_) => {
                        Some(MembershipError::NotAMember(name.to_owned()))
                    }
                },
                RaftError::Fatal(_) => Some(MembershipError::Stopped),
            }),
        }
    }

    /// Whether this member holds its lease: as the leader, a majority (itself included)
    /// acknowledged its append entries sent within the lease; as a follower, it accepted
    /// append entries within the lease from a leader that held its own. A member that does
    /// not is cut off from the majority (or on the side of a leader that is), or the group
    /// has no leader.
    pub fn in_contact(&self) -> bool {
        let me = node_id(&self.config.node);
        let alone = {
            let metrics = self.raft.metrics();
            let metrics = metrics.borrow();
            metrics.state == openraft::ServerState::Leader
                && metrics
                    .membership_config
                    .membership()
                    .get_joint_config()
                    .iter()
                    .all(|voters| voters.len() == 1 && voters.contains(&me))
        };
        alone || self.contacts.left().is_some()
    }

    /// When this member's lease runs out as it stands now (renewals push it later); `None`
    /// if it holds none, or needs none (a group of one).
    pub fn lease_expiry(&self) -> Option<std::time::Instant> {
        self.contacts.until()
    }

    /// How long this member's lease is.
    pub fn lease(&self) -> Duration {
        self.config.lease
    }

    /// How long a claim or a write waits to be committed before it is refused.
    pub fn claim_timeout(&self) -> Duration {
        self.config.claim_timeout
    }

    /// The log index a follower should have applied before it serves under a claim: the
    /// commit index that came with its lease, so that it knows of a release of its claims a
    /// leader wrote while it was out of contact ([`Command::Release`] with a term; such a
    /// claim is still fenced by the next claim, which is what keeps two nodes from serving
    /// at once). The leader: what it has applied (it wrote or judged everything since).
    pub fn caught_up_index(&self) -> u64 {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        if metrics.state == openraft::ServerState::Leader {
            metrics.last_applied.map_or(0, |log_id| log_id.index)
        } else {
            self.contacts.lease_commit()
        }
    }

    /// Whether the claim of `session` at `epoch` is still its session's claim and was
    /// released, as this node has applied the log.
    pub fn is_released(&self, session: &SessionKey, epoch: u64) -> bool {
        self.state.is_released(session, epoch)
    }

    /// Waits (at most `timeout`) until this node has applied the log up to `index`; whether
    /// it has.
    pub async fn applied_through(&self, index: u64, timeout: Duration) -> bool {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "the log applied here")
            .await
            .is_ok()
    }

    /// The connection holding the claim of `session` at `epoch` has let go: written to the
    /// log soon (batched, not waited for), so that claim no longer counts against its
    /// identity's bound and a full table may forget it.
    pub fn release(&self, session: SessionKey, epoch: u64) {
        match self.releases.try_send((session, epoch, unix_ms())) {
            Ok(()) => {}
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => tracing::warn!(
                queued = MAX_QUEUED_RELEASES,
                "released claims wait to be written beyond the bound: one is dropped and stays counted as held until this node restarts"
            ),
            // The replica is stopping: its claims are released by the leader once this node
            // is out of contact.
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Whether this node is the group's leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().state == openraft::ServerState::Leader
    }

    /// Up to `limit` released claims with an epoch above `after`, oldest first, as this node
    /// has applied them (the broker pages through them to expire them).
    pub fn released(&self, after: u64, limit: usize) -> Vec<ReleasedClaim> {
        self.state.released(after, limit)
    }

    /// Writes that these released claims (session, epoch) have expired ([`Command::Expire`]):
    /// each is forgotten with its records where it is still its session's claim and still
    /// released. Returns once committed (within [`ReplicaConfig::claim_timeout`], else
    /// [`ClaimError::NoQuorum`]).
    pub async fn expire(&self, claims: Vec<(SessionKey, u64)>) -> Result<(), ClaimError> {
        let limit = self.config.claim_timeout;
        let deadline = Instant::now() + limit;
        let command = Command::Expire { claims };
        tokio::time::timeout_at(deadline, self.writer.write(command, deadline))
            .await
            .unwrap_or(Err(ClaimError::NoQuorum(limit)))
            .map(|_| ())
    }

    /// The owner of `session` as this node has applied it.
    pub fn owner(&self, session: &SessionKey) -> Option<Owner> {
        self.state.owner(session)
    }

    /// The claims of `session` before its owner's not known to have let go, as this node has
    /// applied them.
    pub fn unfenced(&self, session: &SessionKey) -> Vec<Owner> {
        self.state.unfenced(session)
    }

    /// The member this node knows as leader, if any.
    pub fn leader(&self) -> Option<String> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let named = metrics
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|member| member.name.clone());
        // Before this node learns a membership, the configured names are all it knows.
        named.or_else(|| {
            self.config
                .members
                .iter()
                .find(|name| node_id(name) == leader)
                .cloned()
        })
    }

    /// The group's membership as this node knows it: its voters, its learners and the leader.
    pub fn membership(&self) -> Membership {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let name = |id: &NodeId| {
            membership
                .get_node(id)
                .map_or_else(|| format!("#{id}"), |member| member.name.clone())
        };
        let mut voters: Vec<String> = membership.voter_ids().map(|id| name(&id)).collect();
        let mut learners: Vec<String> = membership.learner_ids().map(|id| name(&id)).collect();
        voters.sort();
        learners.sort();
        Membership {
            voters,
            learners,
            leader: self.leader(),
            joint: membership.get_joint_config().len() > 1,
        }
    }

    /// This node's view of the group now.
    pub fn status(&self) -> ReplicaStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = self.membership();
        ReplicaStatus {
            node: self.config.node.clone(),
            members: membership.voters,
            learners: membership.learners,
            leader: membership.leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            last_applied: metrics.last_applied.map(|log_id| log_id.index),
            claims: self.state.claimed(),
            record_bytes: self.state.record_bytes().0,
            max_record_bytes: self.state.record_bytes().1,
        }
    }

    /// The log index of the membership this node knows (`None` before it learns one): 0 for
    /// the bootstrap's, as long as the membership never changed.
    pub fn membership_log_index(&self) -> Option<u64> {
        let metrics = self.raft.metrics();
        let index = metrics
            .borrow()
            .membership_config
            .log_id()
            .map(|id| id.index);
        index
    }

    /// Whether this node, in this run, initialized the group (only the first member's
    /// bootstrap does, once).
    pub fn initialized_here(&self) -> bool {
        self.initialized_here.load(Ordering::Acquire)
    }

    /// Stops this node's Raft.
    pub async fn shutdown(&self) {
        if let Some(bootstrap) = &self.bootstrap {
            bootstrap.abort();
        }
        self.releaser.abort();
        self.lost_sweep.abort();
        self.floor_learner.abort();
        let _ = self.raft.shutdown().await;
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(bootstrap) = &self.bootstrap {
            bootstrap.abort();
        }
        self.releaser.abort();
        self.lost_sweep.abort();
        self.floor_learner.abort();
    }
}

/// Writes commands through the leader: this node's Raft and its transport to the others.
#[derive(Clone)]
struct Writer {
    raft: Raft<TypeConfig>,
    slot: Arc<TransportSlot>,
}

impl Writer {
    /// Writes `command` through the leader (forwarded to it from a follower), retrying until
    /// `deadline` (the caller's timeout ends it); what applying it answered, once this node
    /// has applied it too (or [`APPLY_SLACK`] before the deadline: a follower slow to apply
    /// still returns the committed answer).
    async fn write(&self, command: Command, deadline: Instant) -> Result<Applied, ClaimError> {
        loop {
            match self.raft.client_write(command.clone()).await {
                Ok(written) => return Ok(written.data),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    if let Some(leader) = forward.leader_node {
                        let rpc = Rpc::Write {
                            command: command.clone(),
                        };
                        let left = deadline.saturating_duration_since(Instant::now());
                        if let Ok(Reply::Written(Ok(applied))) =
                            self.slot.call(&leader.name, &rpc, left).await
                        {
                            // Committed: once applied here too, this node's tables show it
                            // (fencing is right either way; see the broker's ownership).
                            let apply_by = deadline.checked_sub(APPLY_SLACK).unwrap_or(deadline);
                            let left = apply_by.saturating_duration_since(Instant::now());
                            let _ = self
                                .raft
                                .wait(Some(left))
                                .applied_index_at_least(
                                    Some(applied.epoch),
                                    "the command applied here",
                                )
                                .await;
                            return Ok(applied);
                        }
                    }
                }
                Err(RaftError::Fatal(_)) => return Err(ClaimError::Stopped),
                Err(RaftError::APIError(_)) => {}
            }
            tokio::time::sleep(CLAIM_RETRY).await;
        }
    }
}

/// Writes that `node` started afresh (none of its claims is held by a connection: it had none
/// before this), retrying until it is written, then the claims its connections release, in
/// batches, each retried until written.
async fn release(
    writer: Writer,
    node: String,
    claim_timeout: Duration,
    restarted: tokio::sync::watch::Sender<bool>,
    mut queue: tokio::sync::mpsc::Receiver<(SessionKey, u64, u64)>,
) {
    let write = |command: Command| {
        let writer = writer.clone();
        async move {
            loop {
                let deadline = Instant::now() + claim_timeout;
                let written =
                    tokio::time::timeout_at(deadline, writer.write(command.clone(), deadline))
                        .await;
                match written {
                    Ok(Ok(_)) => return true,
                    Ok(Err(ClaimError::Stopped)) => return false,
                    _ => tokio::time::sleep(CLAIM_RETRY).await,
                }
            }
        }
    };
    let at_ms = Some(unix_ms());
    if !write(Command::Restarted { node, at_ms }).await {
        return;
    }
    restarted.send_replace(true);
    while let Some((session, epoch, at_ms)) = queue.recv().await {
        let mut claims = vec![(session, epoch)];
        let mut earliest = at_ms;
        while claims.len() < MAX_RELEASES_PER_ENTRY {
            match queue.try_recv() {
                Ok((session, epoch, at_ms)) => {
                    claims.push((session, epoch));
                    earliest = earliest.min(at_ms);
                }
                Err(_) => break,
            }
        }
        let command = Command::Release {
            claims,
            at_ms: Some(earliest),
            term: None,
        };
        if !write(command).await {
            return;
        }
    }
}

/// As the leader of its term: when the lease of member `node` has surely run out
/// ([`Contacts::lease_end`], `margin` included); `None` if this node (`me`) is not the leader,
/// `node` is this node, or it cannot tell.
fn lease_end_of(
    raft: &Raft<TypeConfig>,
    contacts: &Contacts,
    me: &str,
    node: &str,
    margin: Duration,
) -> Option<(std::time::Instant, u64)> {
    let id = node_id(node);
    let term = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow();
        (metrics.state == openraft::ServerState::Leader && id != node_id(me))
            .then_some(metrics.current_term)?
    };
    Some((contacts.lease_end(id, term, margin)?, term))
}

/// As the leader, once per lease: every node holding claims not released whose lease has
/// surely run out (the fence's own test, [`Replica::claim`]: no contact with this leader for
/// the lease and the fence's margin) has closed its connections of them (it closes them when
/// its lease runs out, as a claim's fence counts on), so they are written as released, at the
/// node's last contact as this leader knows it (the lease and margin before that end). At most
/// [`MAX_LOST_RELEASE_ENTRIES_PER_ROUND`] entries each round.
async fn release_lost(
    writer: Writer,
    state: StateMachine,
    contacts: Arc<Contacts>,
    config: ReplicaConfig,
) {
    let mut rounds = tokio::time::interval(config.lease);
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        rounds.tick().await;
        let mut entries = 0;
        for node in state.holders() {
            if entries >= MAX_LOST_RELEASE_ENTRIES_PER_ROUND {
                break;
            }
            let end = lease_end_of(
                &writer.raft,
                &contacts,
                &config.node,
                &node,
                config.fence_margin(),
            );
            let now = std::time::Instant::now();
            let Some((end, term)) = end.filter(|(end, _)| *end <= now) else {
                continue;
            };
            let since_contact = now.saturating_duration_since(end) + config.fence_wait();
            let since_ms = u64::try_from(since_contact.as_millis()).unwrap_or(u64::MAX);
            let at_ms = unix_ms().saturating_sub(since_ms);
            let mut released = 0;
            while entries < MAX_LOST_RELEASE_ENTRIES_PER_ROUND {
                let claims = state.held_by(&node, MAX_RELEASES_PER_ENTRY);
                if claims.is_empty() {
                    break;
                }
                let count = claims.len();
                let deadline = Instant::now() + config.claim_timeout;
                // Applied only in this leader's term: written through a successor, it is
                // dropped (this judgement of contact was this leader's).
                let command = Command::Release {
                    claims,
                    at_ms: Some(at_ms),
                    term: Some(term),
                };
                entries += 1;
                let written =
                    tokio::time::timeout_at(deadline, writer.write(command, deadline)).await;
                match written {
                    Ok(Ok(_)) => released += count,
                    Ok(Err(ClaimError::Stopped)) => return,
                    _ => break,
                }
            }
            if released > 0 {
                tracing::info!(
                    %node,
                    claims = released,
                    since_contact = ?since_contact,
                    "a member out of contact beyond its lease: the claims of its sessions are released"
                );
            }
        }
    }
}

/// The configured members but this node.
fn other_members(config: &ReplicaConfig) -> Vec<&String> {
    config
        .members
        .iter()
        .filter(|name| **name != config.node)
        .collect()
}

/// Until a node rejoining with no state knows its floor ([`crate::rejoin`]): asks every other
/// configured member what it holds, and gives the rejoin the answers once all have answered.
async fn learn_floor(rejoin: Arc<Rejoin>, slot: Arc<TransportSlot>, config: ReplicaConfig) {
    let others = other_members(&config);
    while rejoin.needs_floor() {
        let mut answers = Vec::with_capacity(others.len());
        for name in &others {
            match slot.call(name, &Rpc::Standing, BOOTSTRAP_EVERY).await {
                Ok(Reply::Standing(standing)) => answers.push(standing),
                _ => break,
            }
        }
        if answers.len() == others.len() {
            rejoin.answered(&answers);
            return;
        }
        tokio::time::sleep(BOOTSTRAP_EVERY).await;
    }
}

/// The first member's bootstrap (see the module documentation): initializes the group once,
/// or ends as soon as this node is part of one.
async fn bootstrap(
    raft: Raft<TypeConfig>,
    log: LogStore,
    slot: Arc<TransportSlot>,
    config: ReplicaConfig,
    initialized_here: Arc<AtomicBool>,
) {
    let others = other_members(&config);
    loop {
        if !log.is_pristine() || raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        if let Some(transport) = slot.get() {
            let mut ready = others.iter().all(|name| transport.connected(name));
            for name in &others {
                if !ready {
                    break;
                }
                ready = matches!(
                    slot.call(name, &Rpc::Status, BOOTSTRAP_EVERY).await,
                    Ok(Reply::Status { pristine: true })
                );
            }
            if ready {
                let members: BTreeMap<u64, Member> = config
                    .members
                    .iter()
                    .map(|name| (node_id(name), Member { name: name.clone() }))
                    .collect();
                match raft.initialize(members).await {
                    Ok(()) => {
                        initialized_here.store(true, Ordering::Release);
                        tracing::info!(members = ?config.members, "initialized the cluster's Raft group");
                    }
                    Err(err) => {
                        tracing::info!(%err, "the cluster's Raft group was not initialized here")
                    }
                }
                return;
            }
        }
        tokio::time::sleep(BOOTSTRAP_EVERY).await;
    }
}
