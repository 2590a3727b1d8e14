//! Raft's RPCs as bytes: this module encodes each request and reply (MessagePack) and hands
//! the bytes to an [`RpcTransport`], which carries them to the named node and brings back its
//! answer. The transport is the cluster's links (`cassini-cluster/1`, mutual TLS with node
//! certificates); this crate names no socket. Besides openraft's three RPCs (vote, append
//! entries, install snapshot) a node asks the leader to write a command for it (a claim, or
//! a fence complete), asks the earlier claimants of a session whether they have applied its
//! new claim and the leader by when the lease of those that do not answer has run out, and
//! asks its peers whether they have ever been part of a Raft group (for the bootstrap). A
//! voter's answer to a vote says how long ago it last had contact with a leader
//! ([`Contacts::lease_end`] uses it).
//!
//! The two requests that wait on the answering node (a write, which waits for the commit; a
//! question whether a claim is applied, which waits for it to be) are at most
//! [`MAX_WAITING_REQUESTS_PER_NODE`] at once towards one node: a transport that carries more
//! requests than that to a node at once (the cluster links: 32 streams per connection) always
//! has room for Raft's own (heartbeats, votes, snapshots), however many takeovers aim at a
//! lagging node, so its lease never runs out for want of a stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};

use crate::membership::{Membership, MembershipChange, MembershipError};
use crate::{Applied, Command, Member, NodeId, TypeConfig};

/// The most requests that wait on one node's answer ([`Rpc::Write`]: up to the claim timeout
/// each; [`Rpc::Applied`]: up to the lease) that this node sends it at once; one beyond waits, within its own
/// timeout, for one of them to end. A transport carries more requests than this to one node
/// at once, so Raft's own always find room.
pub const MAX_WAITING_REQUESTS_PER_NODE: usize = 16;

/// Carries one request to a node and brings back its reply: implemented by the cluster links.
#[async_trait::async_trait]
pub trait RpcTransport: Send + Sync + 'static {
    /// Sends `request` to node `node` and waits at most `timeout` for its reply.
    async fn call(
        &self,
        node: &str,
        request: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, TransportFailure>;

    /// Whether a link to node `node` is up now.
    fn connected(&self, node: &str) -> bool;
}

/// Why a request did not get a reply.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportFailure {
    /// No link to that node is up.
    #[error("no link to node {0}")]
    Unreachable(String),
    /// The request or its reply was lost (the link failed, or the reply came too late).
    #[error("the request to node {node} failed: {reason}")]
    Failed {
        /// The node.
        node: String,
        /// What happened.
        reason: String,
    },
}

/// A request from one node to another.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Rpc {
    Vote(VoteRequest<NodeId>),
    /// `lease`: what was left of the sender's lease when it sent this ([`Contacts`]).
    Append {
        request: AppendEntriesRequest<TypeConfig>,
        lease: Option<Duration>,
    },
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// To the leader: write this command.
    Write {
        command: Command,
    },
    /// Whether the node has ever been part of a Raft group.
    Status,
    /// Its last log id and its vote's term, for a node rejoining with no state
    /// ([`crate::rejoin`]).
    Standing,
    /// To a claim's previous owner: answer once you have applied the log up to `index` (and so
    /// closed your connection of that session).
    Applied {
        index: u64,
    },
    /// To the leader: change the group's voters; `timeout`: how long the change may take.
    Membership {
        change: MembershipChange,
        timeout: Duration,
    },
    /// To the leader: by when have these nodes surely lost their lease
    /// ([`Contacts::lease_end`])?
    LeaseEnds {
        nodes: Vec<String>,
    },
}

/// The answer to an [`Rpc`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    /// `last_contact`: how long before answering the voter last had contact with a leader
    /// (accepted its append entries, or sent its own as one); `None`: never.
    Vote {
        answer: Result<VoteResponse<NodeId>, RaftError<NodeId>>,
        last_contact: Option<Duration>,
    },
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// What applying the command answered, or why it was not written.
    Written(Result<Applied, String>),
    /// Whether the node applied the log up to the index asked within its claim timeout.
    Applied {
        reached: bool,
    },
    /// `pristine`: it has no vote and no log (it has never been part of a Raft group).
    Status {
        pristine: bool,
    },
    /// Its last log id and its vote's term.
    Standing(crate::rejoin::LogStanding),
    /// The group's membership after the change, or why it was not made.
    Membership(Result<Membership, MembershipError>),
    /// Per node asked, in order: its lease has surely run out within this long of the
    /// answer; `None`: the node answering is not the leader, or cannot tell.
    LeaseEnds {
        left: Vec<Option<Duration>>,
    },
    /// The request could not be decoded.
    Undecodable(String),
}

impl Rpc {
    /// Whether the answering node may hold this request up to the claim timeout.
    fn waits_on_the_answer(&self) -> bool {
        matches!(self, Rpc::Write { .. } | Rpc::Applied { .. })
    }
}

/// Where the transport is plugged in once the cluster endpoint is up, and the bound of the
/// requests waiting on each node's answer ([`MAX_WAITING_REQUESTS_PER_NODE`]).
#[derive(Default)]
pub(crate) struct TransportSlot {
    transport: RwLock<Option<Arc<dyn RpcTransport>>>,
    /// Per node (the members, and leaders they name), the permits of requests that wait on
    /// its answer.
    waiting: Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl TransportSlot {
    pub(crate) fn set(&self, transport: Arc<dyn RpcTransport>) {
        *self.transport.write().unwrap_or_else(|p| p.into_inner()) = Some(transport);
    }

    pub(crate) fn get(&self) -> Option<Arc<dyn RpcTransport>> {
        self.transport
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn waiting_on(&self, node: &str) -> Arc<tokio::sync::Semaphore> {
        let mut waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(waiting.entry(node.to_owned()).or_insert_with(|| {
            Arc::new(tokio::sync::Semaphore::new(MAX_WAITING_REQUESTS_PER_NODE))
        }))
    }

    /// Sends `rpc` to `node`; its reply, decoded, within `timeout` (a request that waits on
    /// the answer first waits for its turn among those to `node`, within the same time).
    pub(crate) async fn call(
        &self,
        node: &str,
        rpc: &Rpc,
        timeout: Duration,
    ) -> Result<Reply, TransportFailure> {
        let transport = self
            .get()
            .ok_or_else(|| TransportFailure::Unreachable(node.to_owned()))?;
        let failed = |reason: String| TransportFailure::Failed {
            node: node.to_owned(),
            reason,
        };
        let request = rmp_serde::to_vec(rpc).map_err(|err| failed(err.to_string()))?;
        let deadline = tokio::time::Instant::now() + timeout;
        let _turn = if rpc.waits_on_the_answer() {
            let permits = self.waiting_on(node);
            let turn = tokio::time::timeout_at(deadline, permits.acquire_owned()).await;
            let busy = || format!("{MAX_WAITING_REQUESTS_PER_NODE} requests wait on its answer");
            Some(
                turn.map_err(|_| failed(busy()))?
                    .map_err(|_| failed(busy()))?,
            )
        } else {
            None
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let reply = transport.call(node, request, left).await?;
        rmp_serde::from_slice(&reply).map_err(|err| failed(err.to_string()))
    }
}

/// This node's lease: until when it may hold that the group's majority has not moved on
/// without it (docs/CLUSTERING.md, "The lease"). A leader's lease runs `lease` from the
/// sending time of the latest append entries that a majority (itself included) has
/// acknowledged in its term: a member that voted for a newer leader acknowledged nothing of
/// this one's after its vote, so that time is before any newer leader's election. A leader
/// sends each follower what is left of its lease with each append entries ([`Rpc::Append`]),
/// but never beyond `lease` from the sending time of the latest append entries that follower
/// acknowledged in the term; a follower that accepts one holds its lease that long from
/// receiving it, and an append entries of a leader without a lease renews nothing. So a
/// follower on the side of a leader cut off from the majority loses its lease with that
/// leader's, whatever the number of members, and the leader knows by when any member's lease
/// has run out ([`Contacts::lease_end`]).
pub(crate) struct Contacts {
    /// How long a lease lasts from the majority's acknowledgement.
    lease: Duration,
    /// This node's id.
    me: NodeId,
    /// The group's membership as this node knows it (set once Raft runs): the voters whose
    /// acknowledgements count, a majority of each configuration while a change is joint.
    metrics:
        std::sync::OnceLock<tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>>,
    state: std::sync::Mutex<LeaseState>,
}

impl std::fmt::Debug for Contacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contacts")
            .field("lease", &self.lease)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct LeaseState {
    /// When this node's lease runs out; `None` before it held one.
    until: Option<Instant>,
    /// Per member: the term and sending time of the latest append entries of this node's that
    /// it accepted.
    acked_by: std::collections::HashMap<NodeId, (u64, Instant)>,
    /// Per member: the term, and the latest end of a lease this node (as that term's leader)
    /// sent it, counted from the sending (the member counts it from receiving).
    granted: std::collections::HashMap<NodeId, (u64, Instant)>,
    /// The latest term this node sent append entries in as the leader, and when it first did
    /// (after its election in that term).
    term_start: Option<(u64, Instant)>,
    /// When this node last had contact with a leader: received append entries (accepted or
    /// not), or sent its own as the leader.
    last_contact: Option<Instant>,
    /// The votes of the latest election this node stood in.
    votes: Option<Votes>,
    /// The leader's commit index carried by the latest append entries that renewed this
    /// node's lease (a follower's).
    lease_commit: u64,
}

/// An election this node stood in: what its voters' last contact with an earlier leader can
/// have been at the latest.
#[derive(Debug)]
struct Votes {
    /// The term this node stood for.
    term: u64,
    /// The voters of each configuration of the membership then.
    configurations: Vec<std::collections::BTreeSet<NodeId>>,
    /// This node's last contact when it stood (a candidate accepts nothing of an earlier term).
    own: Option<Instant>,
    /// Per voter that granted the vote: the latest its last contact can have been (its answer
    /// measured how long before it answered: subtracted from the time the answer arrived);
    /// `None`: it never had one.
    granted: std::collections::HashMap<NodeId, Option<Instant>>,
}

impl Contacts {
    /// The lease of member `me`; its voters come from [`Contacts::watch`].
    pub(crate) fn new(lease: Duration, me: NodeId) -> Self {
        Self {
            lease,
            me,
            metrics: std::sync::OnceLock::new(),
            state: std::sync::Mutex::default(),
        }
    }

    /// Reads the group's voters from Raft's metrics from now on.
    pub(crate) fn watch(
        &self,
        metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, Member>>,
    ) {
        let _ = self.metrics.set(metrics);
    }

    /// The voters of each configuration of the membership (two while a change is joint).
    fn voters(&self) -> Vec<std::collections::BTreeSet<NodeId>> {
        self.metrics.get().map_or_else(Vec::new, |metrics| {
            metrics
                .borrow()
                .membership_config
                .membership()
                .get_joint_config()
                .clone()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LeaseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append entries of a leader arrived at `received` (counted before they are handled, so
    /// a vote answered meanwhile never misses them).
    pub(crate) fn contacted(&self, received: Instant) {
        let mut state = self.lock();
        state.last_contact = Some(state.last_contact.map_or(received, |c| c.max(received)));
    }

    /// How long ago this node last had contact with a leader; `None`: never.
    pub(crate) fn last_contact_ago(&self) -> Option<Duration> {
        let last = self.lock().last_contact?;
        Some(last.elapsed())
    }

    /// A leader's append entries carrying `left` of its lease and its commit index `commit`
    /// was accepted here, having arrived at `received`.
    pub(crate) fn renewed(&self, received: Instant, left: Duration, commit: u64) {
        let mut state = self.lock();
        let until = received + left.min(self.lease);
        state.until = Some(state.until.map_or(until, |before| before.max(until)));
        state.lease_commit = state.lease_commit.max(commit);
    }

    /// The leader's commit index that came with this node's lease as a follower (see
    /// [`crate::Replica::caught_up_index`]).
    pub(crate) fn lease_commit(&self) -> u64 {
        self.lock().lease_commit
    }

    /// This node asks for votes in `term`.
    fn standing(&self, term: u64) {
        let configurations = self.voters();
        let mut state = self.lock();
        if state.votes.as_ref().is_some_and(|votes| votes.term >= term) {
            return;
        }
        let own = state.last_contact;
        state.votes = Some(Votes {
            term,
            configurations,
            own,
            granted: std::collections::HashMap::new(),
        });
    }

    /// `voter` granted this node its vote in `term`; its last contact was at `contact` at the
    /// latest.
    fn granted(&self, term: u64, voter: NodeId, contact: Option<Instant>) {
        let mut state = self.lock();
        if let Some(votes) = state.votes.as_mut().filter(|votes| votes.term == term) {
            votes.granted.insert(voter, contact);
        }
    }

    /// What is left of the lease to send `target` with append entries of `term` sent at
    /// `sent`: this node's, but never beyond `lease` from the sending time of the latest
    /// append entries of `term` that `target` accepted; `None`: none.
    fn lease_for(&self, target: NodeId, term: u64, sent: Instant) -> Option<Duration> {
        let mut state = self.lock();
        if state.term_start.is_none_or(|(started, _)| started < term) {
            state.term_start = Some((term, sent));
        }
        state.last_contact = Some(state.last_contact.map_or(sent, |c| c.max(sent)));
        let left = state.until?.saturating_duration_since(sent);
        let (acked_term, acked) = *state.acked_by.get(&target)?;
        if acked_term != term {
            return None;
        }
        let lease = left.min((acked + self.lease).saturating_duration_since(sent));
        if lease.is_zero() {
            return None;
        }
        let end = sent + lease;
        let latest = state
            .granted
            .get(&target)
            .is_none_or(|(granted_term, until)| (*granted_term, *until) < (term, end));
        if latest {
            state.granted.insert(target, (term, end));
        }
        Some(lease)
    }

    /// As the leader of `term`: when the lease of member `node` has surely run out, `margin`
    /// (the delay of append entries and the node's check) included; `None` if this node
    /// cannot tell (it has sent nothing in `term`). A lease `node` got in `term` ends by the
    /// latest end this node sent it ([`Contacts::lease_for`]). One from an earlier leader ran
    /// `lease` from a time that leader's majority acknowledged, which is before this node's
    /// election (a voter acknowledges nothing of an earlier term after its vote) and before
    /// the last contact with a leader of at least one voter that elected this node (the two
    /// majorities share a member): the earlier of the two.
    pub(crate) fn lease_end(&self, node: NodeId, term: u64, margin: Duration) -> Option<Instant> {
        let state = self.lock();
        let (started_term, started) = state.term_start?;
        if started_term != term {
            return None;
        }
        let mut earlier = started;
        if let Some(votes) = state.votes.as_ref().filter(|votes| votes.term == term) {
            let elected = !votes.configurations.is_empty()
                && votes.configurations.iter().all(|voters| {
                    let granted = voters
                        .iter()
                        .filter(|id| **id == self.me || votes.granted.contains_key(id))
                        .count();
                    granted > voters.len() / 2
                });
            let latest = votes
                .granted
                .values()
                .copied()
                .chain([votes.own])
                .flatten()
                .max();
            if let Some(latest) = latest.filter(|_| elected) {
                earlier = earlier.min(latest);
            }
        }
        let earlier_end = earlier + self.lease;
        let end = state
            .granted
            .get(&node)
            .filter(|(granted_term, _)| *granted_term == term)
            .map_or(earlier_end, |(_, granted)| earlier_end.max(*granted));
        Some(end + margin)
    }

    /// Member `target` accepted this node's append entries of `term` sent at `sent`: the lease
    /// runs from the sending time a majority has acknowledged in the latest term.
    fn acked(&self, target: NodeId, term: u64, sent: Instant) {
        let configurations = self.voters();
        let mut state = self.lock();
        let latest = state
            .acked_by
            .get(&target)
            .is_none_or(|(t, at)| (*t, *at) < (term, sent));
        if latest {
            state.acked_by.insert(target, (term, sent));
        }
        // This node counts in each configuration it is a voter of; learners' acknowledgements
        // count in none. While a change is joint, a majority of each configuration is needed.
        let mut majority_at: Option<Instant> = None;
        for voters in configurations {
            let mine = voters.contains(&self.me);
            let needed = (voters.len() / 2 + 1).saturating_sub(usize::from(mine));
            if needed == 0 {
                continue;
            }
            let mut times: Vec<Instant> = voters
                .iter()
                .filter(|id| **id != self.me)
                .filter_map(|id| state.acked_by.get(id))
                .filter(|(t, _)| *t == term)
                .map(|(_, at)| *at)
                .collect();
            if times.len() < needed {
                return;
            }
            times.sort_unstable_by(|a, b| b.cmp(a));
            let at = times[needed - 1];
            majority_at = Some(majority_at.map_or(at, |before| before.min(at)));
        }
        let Some(at) = majority_at else { return };
        let until = at + self.lease;
        state.until = Some(state.until.map_or(until, |before| before.max(until)));
    }

    /// When this node's lease runs out, as it stands; `None` before it held one.
    pub(crate) fn until(&self) -> Option<Instant> {
        self.lock().until
    }

    /// What is left of this node's lease now; `None` if it holds none.
    pub(crate) fn left(&self) -> Option<Duration> {
        let until = self.lock().until?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

/// Makes openraft's clients towards each member.
pub(crate) struct Network {
    pub(crate) slot: Arc<TransportSlot>,
    pub(crate) contacts: Arc<Contacts>,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> PeerClient {
        PeerClient {
            target,
            name: node.name.clone(),
            slot: Arc::clone(&self.slot),
            contacts: Arc::clone(&self.contacts),
        }
    }
}

/// openraft's client towards one member.
pub(crate) struct PeerClient {
    target: NodeId,
    name: String,
    slot: Arc<TransportSlot>,
    contacts: Arc<Contacts>,
}

impl PeerClient {
    async fn call<E: std::error::Error>(
        &self,
        rpc: Rpc,
        option: &RPCOption,
    ) -> Result<Reply, RPCError<NodeId, Member, E>> {
        match self.slot.call(&self.name, &rpc, option.hard_ttl()).await {
            Ok(reply) => Ok(reply),
            Err(err @ TransportFailure::Unreachable(_)) => {
                Err(RPCError::Unreachable(Unreachable::new(&err)))
            }
            Err(err) => Err(RPCError::Network(NetworkError::new(&err))),
        }
    }

    fn unexpected<E: std::error::Error>(&self, reply: &Reply) -> RPCError<NodeId, Member, E> {
        let err = TransportFailure::Failed {
            node: self.name.clone(),
            reason: format!("an unexpected reply: {reply:?}"),
        };
        RPCError::Network(NetworkError::new(&err))
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let term = rpc.vote.leader_id().term;
        let sent = Instant::now();
        let request = Rpc::Append {
            request: rpc,
            lease: self.contacts.lease_for(self.target, term, sent),
        };
        match self.call(request, &option).await? {
            Reply::Append(Ok(response)) => {
                if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                    self.contacts.acked(self.target, term, sent);
                }
                Ok(response)
            }
            Reply::Append(Err(err)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        match self.call(Rpc::Snapshot(rpc), &option).await? {
            Reply::Snapshot(Ok(response)) => Ok(response),
            Reply::Snapshot(Err(err)) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target, err)))
            }
            other => Err(self.unexpected(&other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        let term = rpc.vote.leader_id().term;
        let vote = rpc.vote;
        self.contacts.standing(term);
        match self.call(Rpc::Vote(rpc), &option).await? {
            Reply::Vote {
                answer: Ok(response),
                last_contact,
            } => {
                if response.vote_granted && response.vote == vote {
                    // The voter measured how long ago; it answered before the answer arrived.
                    let now = Instant::now();
                    let contact = last_contact.map(|ago| now.checked_sub(ago).unwrap_or(now));
                    self.contacts.granted(term, self.target, contact);
                }
                Ok(response)
            }
            Reply::Vote {
                answer: Err(err), ..
            } => Err(RPCError::RemoteError(RemoteError::new(self.target, err))),
            other => Err(self.unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use openraft::Vote;

    use super::*;

    /// The cluster links' bound: this many requests to one node at once (streams of one
    /// connection); one more waits for a stream.
    const STREAMS: usize = 32;

    /// A transport with [`STREAMS`] streams towards one node, where a question whether a
    /// claim is applied is never answered (the node lags), and anything else at once.
    struct Lagging {
        streams: tokio::sync::Semaphore,
        questions: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl RpcTransport for Lagging {
        async fn call(
            &self,
            node: &str,
            request: Vec<u8>,
            timeout: Duration,
        ) -> Result<Vec<u8>, TransportFailure> {
            let exchange = async {
                let _stream = self.streams.acquire().await.expect("open");
                if let Ok(Rpc::Applied { .. }) = rmp_serde::from_slice(&request) {
                    self.questions.fetch_add(1, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                }
                rmp_serde::to_vec(&Reply::Undecodable("answered".into())).expect("encoded")
            };
            tokio::time::timeout(timeout, exchange)
                .await
                .map_err(|_| TransportFailure::Failed {
                    node: node.to_owned(),
                    reason: "no stream or no answer in time".into(),
                })
        }

        fn connected(&self, _node: &str) -> bool {
            true
        }
    }

    #[tokio::test]
    async fn takeovers_aimed_at_a_lagging_node_leave_room_for_votes_and_heartbeats() {
        let lagging = Arc::new(Lagging {
            streams: tokio::sync::Semaphore::new(STREAMS),
            questions: AtomicUsize::new(0),
        });
        let slot = Arc::new(TransportSlot::default());
        slot.set(Arc::clone(&lagging) as Arc<dyn RpcTransport>);
        let mut asks = tokio::task::JoinSet::new();
        for index in 0..STREAMS + 8 {
            let slot = Arc::clone(&slot);
            asks.spawn(async move {
                let question = Rpc::Applied {
                    index: index as u64,
                };
                let _ = slot.call("n2", &question, Duration::from_secs(30)).await;
            });
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while lagging.questions.load(Ordering::SeqCst) < MAX_WAITING_REQUESTS_PER_NODE {
            assert!(Instant::now() < deadline, "the questions were not sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let vote = Rpc::Vote(VoteRequest::new(Vote::new(1, 1), None));
        let answered = slot.call("n2", &vote, Duration::from_millis(500)).await;
        assert!(answered.is_ok(), "a vote found a stream: {answered:?}");
        assert_eq!(
            lagging.questions.load(Ordering::SeqCst),
            MAX_WAITING_REQUESTS_PER_NODE,
            "the questions beyond the bound wait for their turn"
        );
        asks.abort_all();
    }
}
