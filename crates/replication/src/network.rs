//! Raft's RPCs as bytes: this module encodes each request and reply (MessagePack) and hands
//! the bytes to an [`RpcTransport`], which carries them to the named node and brings back its
//! answer. The transport is the cluster's links (`cassini-cluster/1`, mutual TLS with node
//! certificates); this crate names no socket. Besides openraft's three RPCs (vote, append
//! entries, install snapshot) a node asks the leader to write a claim for it, and asks its
//! peers whether they have ever been part of a Raft group (for the bootstrap).

use std::sync::{Arc, RwLock};
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

use crate::{Applied, Member, NodeId, SessionKey, TypeConfig};

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
    Append(AppendEntriesRequest<TypeConfig>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
    /// To the leader: write this claim.
    Claim {
        session: SessionKey,
        node: String,
    },
    /// Whether the node has ever been part of a Raft group.
    Status,
    /// To a claim's previous owner: answer once you have applied the log up to `index` (and so
    /// closed your connection of that session).
    Applied {
        index: u64,
    },
}

/// The answer to an [`Rpc`], of the same kind.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Reply {
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    /// What applying the claim answered, or why it was not written.
    Claim(Result<Applied, String>),
    /// Whether the node applied the log up to the index asked within its claim timeout.
    Applied {
        reached: bool,
    },
    /// `pristine`: it has no vote and no log (it has never been part of a Raft group).
    Status {
        pristine: bool,
    },
    /// The request could not be decoded.
    Undecodable(String),
}

/// Where the transport is plugged in once the cluster endpoint is up.
#[derive(Default)]
pub(crate) struct TransportSlot(RwLock<Option<Arc<dyn RpcTransport>>>);

impl TransportSlot {
    pub(crate) fn set(&self, transport: Arc<dyn RpcTransport>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(transport);
    }

    pub(crate) fn get(&self) -> Option<Arc<dyn RpcTransport>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sends `rpc` to `node`; its reply, decoded.
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
        let reply = transport.call(node, request, timeout).await?;
        rmp_serde::from_slice(&reply).map_err(|err| failed(err.to_string()))
    }
}

/// When this node last heard the group: a leader's append entries (as a follower), and each
/// member's acknowledgement of this node's (as a leader). What the lease is measured on.
#[derive(Debug, Default)]
pub(crate) struct Contacts {
    from_leader: std::sync::Mutex<Option<Instant>>,
    acked_by: std::sync::Mutex<std::collections::HashMap<NodeId, Instant>>,
}

impl Contacts {
    /// A leader's append entries was accepted here (not refused as stale).
    pub(crate) fn heard_leader(&self) {
        *self.from_leader.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }

    /// Member `target` accepted this node's append entries.
    fn acked(&self, target: NodeId) {
        self.acked_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(target, Instant::now());
    }

    /// Whether a leader's append entries arrived within `lease`.
    pub(crate) fn leader_within(&self, lease: Duration) -> bool {
        self.from_leader
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|at| at.elapsed() <= lease)
    }

    /// How many members acknowledged this node's append entries within `lease`.
    pub(crate) fn acked_within(&self, lease: Duration) -> usize {
        self.acked_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|at| at.elapsed() <= lease)
            .count()
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
        match self.call(Rpc::Append(rpc), &option).await? {
            Reply::Append(Ok(response)) => {
                if !matches!(response, AppendEntriesResponse::HigherVote(_)) {
                    self.contacts.acked(self.target);
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
        match self.call(Rpc::Vote(rpc), &option).await? {
            Reply::Vote(Ok(response)) => Ok(response),
            Reply::Vote(Err(err)) => Err(RPCError::RemoteError(RemoteError::new(self.target, err))),
            other => Err(self.unexpected(&other)),
        }
    }
}
