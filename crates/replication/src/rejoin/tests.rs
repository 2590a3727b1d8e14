//! The rule by itself: what a rejoining node admits before, with and after its floor.

use openraft::raft::{AppendEntriesRequest, VoteRequest};
use openraft::{CommittedLeaderId, LogId, Vote};

use super::{LogStanding, Rejoin};
use crate::{NodeId, TypeConfig};

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn candidate(term: u64, last: Option<LogId<NodeId>>) -> VoteRequest<NodeId> {
    VoteRequest::new(Vote::new(term, 2), last)
}

fn heartbeat(
    term: u64,
    matched: LogId<NodeId>,
    commit: LogId<NodeId>,
) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(term, 1),
        prev_log_id: Some(matched),
        entries: Vec::new(),
        leader_commit: Some(commit),
    }
}

#[test]
fn a_node_that_started_with_state_admits_every_vote_request() {
    let rejoin = Rejoin::new(false);
    assert!(!rejoin.is_rejoining());
    assert!(rejoin.admits(&candidate(1, None)));
}

#[test]
fn a_node_that_started_empty_admits_nothing_until_every_member_answered() {
    let rejoin = Rejoin::new(true);
    assert!(rejoin.needs_floor());
    assert!(!rejoin.admits(&candidate(9, Some(log_id(8, 100)))));
}

#[test]
fn with_its_floor_it_admits_only_candidates_at_least_as_up_to_date_in_a_later_term() {
    let rejoin = Rejoin::new(true);
    rejoin.answered(&[
        LogStanding {
            last_log_id: Some(log_id(3, 40)),
            term: 4,
        },
        LogStanding {
            last_log_id: Some(log_id(3, 35)),
            term: 5,
        },
    ]);
    assert!(!rejoin.needs_floor());
    assert!(rejoin.admits(&candidate(6, Some(log_id(3, 40)))));
    assert!(
        !rejoin.admits(&candidate(6, Some(log_id(3, 35)))),
        "a log behind the most up-to-date member's"
    );
    assert!(
        !rejoin.admits(&candidate(5, Some(log_id(3, 40)))),
        "a term it may have voted in already"
    );
}

#[test]
fn a_fresh_group_s_floor_is_nothing() {
    let rejoin = Rejoin::new(true);
    rejoin.answered(&[LogStanding::default(), LogStanding::default()]);
    assert!(rejoin.admits(&candidate(1, Some(log_id(0, 0)))));
    assert!(rejoin.admits(&candidate(1, None)));
}

#[test]
fn it_is_settled_once_a_leader_brought_it_up_to_a_commit_of_the_leader_s_own_term() {
    let rejoin = Rejoin::new(true);
    rejoin.appended(&heartbeat(7, log_id(7, 50), log_id(6, 49)));
    assert!(
        rejoin.is_rejoining(),
        "the commit index is of an earlier term"
    );
    rejoin.appended(&heartbeat(7, log_id(7, 49), log_id(7, 50)));
    assert!(
        rejoin.is_rejoining(),
        "its log stops short of the commit index"
    );
    rejoin.appended(&heartbeat(7, log_id(7, 50), log_id(7, 50)));
    assert!(!rejoin.is_rejoining());
    assert!(
        rejoin.admits(&candidate(1, None)),
        "openraft's own rules alone"
    );
}
