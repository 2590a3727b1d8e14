//! The cluster's replicated decisions, on openraft (docs/CLUSTERING.md, "Session ownership").
//!
//! # Layout
//! - this module: the openraft type configuration ([`TypeConfig`]), the commands the log
//!   carries ([`Command`]) and what applying one answers ([`Applied`]), and node ids, derived
//!   from node names ([`node_id`]).
//! - [`log_store`]: the Raft log, its vote and commit index, in memory or in a redb file
//!   ([`Storage`]) written with `Durability::Immediate` (synced before openraft is told).
//! - [`state_machine`]: the session claims applied from the log, bounded per identity and in
//!   all, the records of each claimed session its owners wrote ([`Command::Write`], bounded
//!   in bytes, applied only for the owner's claim), snapshots of them (kept in the same redb file in disk mode), and the observer told
//!   of every claim applied.
//! - [`shared_records`]: the cluster-wide records of no session and no epoch (retained values,
//!   the dedupe window; [`Command::Shared`]), their bounds and their apply.
//! - [`network`]: the Raft RPCs as bytes over a transport this crate does not know
//!   ([`RpcTransport`]: the cluster links implement it); no socket is named here.
//! - [`membership`]: a membership change asked for, the membership a node knows, and why a
//!   change was not made.
//! - [`replica`]: one node's Raft: deterministic bootstrap, claims forwarded to the leader,
//!   refused without a quorum after [`ReplicaConfig::claim_timeout`]; membership changes
//!   through joint consensus, made by the leader.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub mod log_store;
pub mod membership;
pub mod network;
mod rejoin;
pub mod replica;
pub mod shared_records;
pub mod state_machine;

pub use log_store::{LogStore, Storage, StorageOpenError};
pub use membership::{Membership, MembershipChange, MembershipError};
pub use network::{RpcTransport, TransportFailure, MAX_WAITING_REQUESTS_PER_NODE};
pub use replica::{ClaimError, Replica, ReplicaConfig, ReplicaError, ReplicaStatus, SharedWritten};
pub use shared_records::{SharedBounds, SharedChange, SharedObserver};
pub use state_machine::{
    ClaimObserver, Owner, RecordsChange, RecordsObserver, ReleasedClaim, SessionKey,
    SessionRecords, StateMachine,
};

openraft::declare_raft_types!(
    /// Cassini's openraft types: node ids are `u64` ([`node_id`]), a node is its [`Member`].
    pub TypeConfig:
        D = Command,
        R = Applied,
        Node = Member,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A node id: [`node_id`] of its name.
pub type NodeId = u64;

/// A member of the Raft group, as the membership stores it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The node's name (its certificate's `cassini-node:NAME`).
    pub name: String,
}

/// What the replicated log carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Node `node` serves `session` from now on; the entry's log index is the claim's epoch.
    Claim {
        /// The session claimed.
        session: SessionKey,
        /// The node claiming it.
        node: String,
    },
    /// The connections holding these claims (session, epoch) have let go: a full table may
    /// forget them, and they no longer count against their identity's bound.
    Release {
        /// The claims released.
        claims: Vec<(SessionKey, u64)>,
        /// When they were let go, in milliseconds since the Unix epoch, as the writer knows
        /// it (the earliest of the batch; for a node out of contact, its last contact with
        /// the leader): what their expiry counts from when the records tell no detach time.
        #[serde(default)]
        at_ms: Option<u64>,
        /// For a release of a node out of contact: the term of the leader that judged it so.
        /// Applied only from an entry of that term: a leader deposed since (whose judgement of
        /// contact is stale) cannot have it committed by its successor.
        #[serde(default)]
        term: Option<u64>,
    },
    /// Node `node` has started afresh: no connection holds any of its claims.
    Restarted {
        /// The node.
        node: String,
        /// When it was written, in milliseconds since the Unix epoch (as [`Command::Release`]'s).
        #[serde(default)]
        at_ms: Option<u64>,
    },
    /// Every claim of `session` older than `epoch` has let go: the claimant of `epoch` had
    /// each one's node confirm it applied that claim, or waited out that node's lease.
    Fenced {
        /// The session.
        session: SessionKey,
        /// The claim whose fence is complete.
        epoch: u64,
    },
    /// These released claims (session, epoch) have expired: each is forgotten with its
    /// records if it is still its session's claim and still released (a claim taken up again
    /// since has a newer epoch, and stays).
    Expire {
        /// The claims expired.
        claims: Vec<(SessionKey, u64)>,
    },
    /// Changes to the stored state of sessions, each by the holder of one claim: applied for
    /// a session only while that claim is the session's owner's.
    Write {
        /// The changes, per session.
        writes: Vec<SessionWrite>,
        /// Names the write, if its writer may write it again (after a timeout, when the first
        /// copy may still be committed): a write is applied once, and a later copy answers
        /// what the first one did.
        #[serde(default)]
        id: Option<WriteId>,
    },
    /// Cluster-wide changes of no session and no epoch (retained values, the dedupe window:
    /// [`shared_records`]), with the session writes of the same publishes, in one entry: the
    /// writes apply as [`Command::Write`]'s, then the changes.
    Shared {
        /// The sessions' changes.
        writes: Vec<SessionWrite>,
        /// The cluster-wide changes, in order.
        changes: Vec<SharedChange>,
        /// Names the write, as [`Command::Write`]'s `id`.
        #[serde(default)]
        id: Option<WriteId>,
    },
}

/// Names one write of one writer ([`Command::Write`]): each writer numbers its writes from 1
/// up, and writes one again under the same number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteId {
    /// The writer, drawn at random when it starts.
    pub origin: u64,
    /// The write's number.
    pub serial: u64,
}

/// The epoch of a delivery ([`SessionWrite::epoch`]): no claim has it (a claim's epoch is
/// its log index, and index 0 holds the first membership).
pub const DELIVERY: u64 = 0;

/// Changes to one claimed session's stored records, made by the node holding claim `epoch`,
/// or a delivery ([`DELIVERY`]) by any node: it applies while any node owns the session, and
/// only its puts of keys the records do not hold yet (a delivery written again changes
/// nothing); a delivery to a session nobody owns is dropped, not refused (nobody is left to
/// receive it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionWrite {
    /// The session.
    pub session: SessionKey,
    /// The claim its writer holds: the changes apply only while it is the owner's
    /// ([`DELIVERY`] for a delivery).
    pub epoch: u64,
    /// The changes, in order.
    pub ops: Vec<RecordOp>,
}

/// One change to a session's records: keys and values are the broker's, opaque here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RecordOp {
    /// Sets `key` to `value`.
    Put {
        /// The record's key.
        key: Bytes,
        /// Its value.
        value: Bytes,
    },
    /// Removes `key`.
    Delete {
        /// The record's key.
        key: Bytes,
    },
    /// Removes every record whose key starts with `prefix`.
    DeletePrefix {
        /// The prefix.
        prefix: Bytes,
    },
    /// Removes `key` as the other half of the puts before it in the same write (a record
    /// moved): unlike [`RecordOp::Delete`], it does not apply when the write is refused for
    /// want of room, so the record is never removed without its puts.
    Take {
        /// The record's key.
        key: Bytes,
    },
}

/// Why a session's write was not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum WriteRefusal {
    /// The writer's claim is not the owner's any more (a newer claim took the session over,
    /// or the claim was forgotten).
    NotOwner,
    /// The records of every session would exceed their bound, in bytes.
    Full(u64),
}

/// What applying one entry answers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// For a claim: its epoch (the entry's log index); 0 for other entries.
    pub epoch: u64,
    /// For a claim: the session's owner before it, if the table held one.
    #[serde(default)]
    pub previous: Option<Owner>,
    /// For a claim: the earlier claims of the session by other nodes not known to have let go
    /// (at most one per node, its latest), the previous owner's included unless it was
    /// released. The claimant fences each of them before it attaches.
    #[serde(default)]
    pub unfenced: Vec<Owner>,
    /// For a claim: why it was not recorded, if it was not (then it is no one's epoch).
    #[serde(default)]
    pub refused: Option<Refusal>,
    /// For a write: the sessions whose changes were not applied, and why.
    #[serde(default)]
    pub refused_writes: Vec<(SessionKey, WriteRefusal)>,
    /// For cluster-wide changes: the topics whose retained value was refused (the bound of
    /// retained values).
    #[serde(default)]
    pub refused_retained: Vec<String>,
}

/// Why the claims table did not record a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The identity holds this many claims, its bound, and none is released.
    TooManyForIdentity(usize),
    /// The table holds this many claims, its bound, and none is released.
    TableFull(usize),
}

/// The Raft node id of the node named `name`: its 64-bit FNV-1a hash (never 0). Every node
/// computes the same id for a name, so the membership needs no id assignment.
pub fn node_id(name: &str) -> NodeId {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.max(1)
}

#[cfg(test)]
mod replica_tests;
#[cfg(test)]
mod storage_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct_for_distinct_names() {
        assert_eq!(node_id("n1"), node_id("n1"));
        assert_ne!(node_id("n1"), node_id("n2"));
        assert_ne!(node_id(""), 0);
    }
}
