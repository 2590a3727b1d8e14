//! The votes of a member that started with no Raft state while its group may exist: memory
//! mode restarted, or a disk lost. Raft's safety assumes a voter never forgets its vote or
//! its log. A voter that has forgotten could vote twice in one term, or help elect a
//! candidate that lacks an entry it had helped commit. [`Rejoin`] holds such a node's votes
//! back until it knows enough.
//!
//! - **Until every other member has answered**, it grants no vote. The members it cannot hear
//!   from may hold entries it helped commit. Each member answers with its last log id and its
//!   vote's term ([`LogStanding`]), and the highest of them becomes the **floor**.
//! - **With the floor**, it grants a vote only to a candidate whose last log id is at least
//!   the floor's and whose term is above every term the members reported. Any entry it
//!   helped commit is in some member's log, so the floor's log is at least as up to date as
//!   that entry. Any vote it cast before is in a term no higher than the candidate's own at
//!   the time, which that candidate reported. openraft's own checks apply as well.
//! - **Caught up**, it votes as any member does. It is caught up once a leader's append
//!   entries succeed here up to a commit index of that leader's own term. By then it holds
//!   every entry committed so far.
//!
//! A fresh group's members all start empty: each one's floor is nothing and term 0, so the
//! first election goes ahead. A node that started with state votes as any member does.

use std::sync::Mutex;

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::LogId;
use serde::{Deserialize, Serialize};

use crate::{NodeId, TypeConfig};

/// What a member holds, as a node rejoining asks it: the floor's parts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LogStanding {
    /// Its last log id (`None`: an empty log).
    pub(crate) last_log_id: Option<LogId<NodeId>>,
    /// The term of its vote (0: none).
    pub(crate) term: u64,
}

/// A node's votes while it rejoins (see the module documentation).
#[derive(Debug)]
pub(crate) struct Rejoin {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Started with no state: grants votes only above the floor, once it is known.
    Rejoining { floor: Option<LogStanding> },
    /// Started with state, or caught up since.
    Settled,
}

impl Rejoin {
    /// A node that started `empty` (no vote, no log) rejoins; any other is settled.
    pub(crate) fn new(empty: bool) -> Self {
        let state = if empty {
            State::Rejoining { floor: None }
        } else {
            State::Settled
        };
        Self {
            state: Mutex::new(state),
        }
    }

    /// Whether the node still waits to learn its floor.
    pub(crate) fn needs_floor(&self) -> bool {
        matches!(*self.lock(), State::Rejoining { floor: None })
    }

    /// Whether the node is still rejoining.
    pub(crate) fn is_rejoining(&self) -> bool {
        matches!(*self.lock(), State::Rejoining { .. })
    }

    /// Every other member answered with `answers`: the floor is the highest of them.
    pub(crate) fn answered(&self, answers: &[LogStanding]) {
        let floor = LogStanding {
            last_log_id: answers.iter().filter_map(|a| a.last_log_id).max(),
            term: answers.iter().map(|a| a.term).max().unwrap_or(0),
        };
        let mut state = self.lock();
        if let State::Rejoining { floor: known } = &mut *state {
            known.get_or_insert(floor);
            tracing::info!(
                ?floor,
                "rejoining with no Raft state: every member answered"
            );
        }
    }

    /// Whether `request` may go to openraft's own vote handling: always once settled; while
    /// rejoining, only above the floor.
    pub(crate) fn admits(&self, request: &VoteRequest<NodeId>) -> bool {
        match *self.lock() {
            State::Settled => true,
            State::Rejoining { floor: None } => false,
            State::Rejoining { floor: Some(floor) } => {
                request.last_log_id >= floor.last_log_id
                    && request.vote.leader_id().term > floor.term
            }
        }
    }

    /// A leader's `request` succeeded here: settled if it brought the log up to a commit
    /// index of that leader's own term.
    pub(crate) fn appended(&self, request: &AppendEntriesRequest<TypeConfig>) {
        let Some(commit) = request.leader_commit else {
            return;
        };
        let matched = request
            .entries
            .last()
            .map(|entry| entry.log_id)
            .or(request.prev_log_id);
        let own_term = commit.leader_id.term == request.vote.leader_id().term;
        if own_term && matched.is_some_and(|matched| matched.index >= commit.index) {
            let mut state = self.lock();
            if *state != State::Settled {
                *state = State::Settled;
                tracing::info!(
                    commit = commit.index,
                    "caught up with the leader: votes as any member"
                );
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests;
