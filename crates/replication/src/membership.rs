//! The Raft group's membership as the operator sees it: a change asked for
//! ([`MembershipChange`]), the membership a node knows ([`Membership`]) and why a change was
//! not made ([`MembershipError`]). Made by [`crate::Replica::change_membership`].

use std::time::Duration;

/// A change of the Raft group's voters ([`crate::Replica::change_membership`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MembershipChange {
    /// Node NAME joins: added as a learner, and made a voter once it has caught up.
    Add(String),
    /// Node NAME leaves the group (as voter and as learner).
    Remove(String),
}

/// The group's membership as one node knows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Membership {
    /// The voting members, by name.
    pub voters: Vec<String>,
    /// The learners (receiving the log, not voting), by name.
    pub learners: Vec<String>,
    /// The member this node knows as leader, if any.
    pub leader: Option<String>,
    /// Whether a change is halfway: the joint configuration (old and new voters) is in force.
    pub joint: bool,
}

/// A membership change was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum MembershipError {
    /// No leader with a majority completed the change in time. The change may still complete.
    #[error("no leader with a quorum completed the change within {0:?}; it may still complete: check `cassini cluster members`")]
    NoQuorum(Duration),
    /// The leader has no cluster link to a node of that name.
    #[error("unknown node {0:?}: the leader has no cluster link to it (start it with `peers` listing a member of this cluster, and check its certificate's node name)")]
    UnknownNode(String),
    /// The node to remove is not a member.
    #[error("node {0:?} is not a member of the cluster")]
    NotAMember(String),
    /// Another membership change is under way.
    #[error("another membership change is in progress; retry once it completes")]
    InProgress,
    /// The node to remove is the only voter.
    #[error("node {0:?} is the only voter: the cluster cannot remove its last member")]
    LastMember(String),
    /// The node added did not catch up with the log in time; it stays a learner.
    #[error("node {0:?} did not catch up with the log within {1:?}: it stays a learner; retry `cassini cluster add` once it is reachable")]
    NotCaughtUp(String, Duration),
    /// A node's id (the hash of its name) is the id of another member's name.
    #[error("node {0:?} has the Raft id of member {1:?}: choose another name")]
    IdCollision(String, String),
    /// The replica has stopped.
    #[error("the replica has stopped")]
    Stopped,
}
