//! openraft's own storage test suite over the log store and state machine, in memory and on
//! disk.

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;

use crate::{LogStore, NodeId, StateMachine, Storage, TypeConfig};

struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine> for InMemory {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<NodeId>> {
        let state = StateMachine::open(Storage::Memory, None).expect("state machine");
        Ok(((), LogStore::in_memory(), state))
    }
}

struct OnDisk;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(&dir.path().join("raft.redb")).expect("raft file");
        let log = LogStore::open(storage.clone()).expect("log");
        let state = StateMachine::open(storage, None).expect("state machine");
        Ok((dir, log, state))
    }
}

#[test]
fn the_memory_store_passes_openrafts_storage_suite() {
    Suite::test_all(InMemory).expect("suite");
}

#[test]
fn the_disk_store_passes_openrafts_storage_suite() {
    Suite::test_all(OnDisk).expect("suite");
}

fn claim_of(index: u64, identity: &str, name: &str) -> openraft::Entry<TypeConfig> {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
        payload: EntryPayload::Normal(crate::Command::Claim {
            session: session_of(identity, name),
            node: "n1".into(),
        }),
    }
}

fn release_of(index: u64, claims: &[(&str, &str, u64)]) -> openraft::Entry<TypeConfig> {
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};
    Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
        payload: EntryPayload::Normal(crate::Command::Release {
            claims: claims
                .iter()
                .map(|(identity, name, epoch)| (session_of(identity, name), *epoch))
                .collect(),
            at_ms: None,
            term: None,
        }),
    }
}

fn session_of(identity: &str, name: &str) -> crate::SessionKey {
    crate::SessionKey {
        identity: identity.into(),
        name: name.into(),
    }
}

#[tokio::test]
async fn a_full_table_forgets_the_oldest_released_claim_whoever_holds_it_and_never_a_live_one() {
    use openraft::storage::RaftStateMachine;

    use crate::Refusal;

    let mut state = StateMachine::open(Storage::Memory, None)
        .expect("state machine")
        .with_max_claims(3);
    // "a" is claimed again at 4: it counts once, with its newest epoch.
    let applied = state
        .apply(vec![
            claim_of(1, "alice", "a"),
            claim_of(2, "alice", "b"),
            claim_of(3, "bob", "x"),
            claim_of(4, "alice", "a"),
        ])
        .await
        .expect("apply");
    assert!(applied.iter().all(|applied| applied.refused.is_none()));
    assert_eq!(state.claimed(), 3);
    // Full, every claim live: refused, and nothing is forgotten.
    assert_eq!(
        state.refusal(&session_of("bob", "y")),
        Some(Refusal::TableFull(3))
    );
    let applied = state
        .apply(vec![claim_of(5, "bob", "y")])
        .await
        .expect("apply");
    assert_eq!(applied[0].refused, Some(Refusal::TableFull(3)));
    assert_eq!(state.owner(&session_of("bob", "y")), None);
    // A release of an older claim than the owner's changes nothing; of the owner's, frees it.
    state
        .apply(vec![release_of(6, &[("alice", "a", 1), ("alice", "b", 2)])])
        .await
        .expect("apply");
    assert_eq!(state.refusal(&session_of("bob", "y")), None);
    state
        .apply(vec![claim_of(7, "bob", "y")])
        .await
        .expect("apply");
    assert_eq!(state.claimed(), 3);
    assert_eq!(
        state.owner(&session_of("alice", "b")),
        None,
        "released: forgotten"
    );
    for (identity, name, epoch) in [("alice", "a", 4), ("bob", "x", 3), ("bob", "y", 7)] {
        assert_eq!(
            state
                .owner(&session_of(identity, name))
                .map(|owner| owner.epoch),
            Some(epoch),
            "{identity}/{name} is live: kept"
        );
    }
}

#[tokio::test]
async fn an_identity_holds_at_most_its_bound_of_claims_and_makes_room_only_from_its_own_released_ones(
) {
    use openraft::storage::RaftStateMachine;

    use crate::Refusal;

    let mut state = StateMachine::open(Storage::Memory, None)
        .expect("state machine")
        .with_max_claims_per_identity(2);
    state
        .apply(vec![
            claim_of(1, "bob", "x"),
            claim_of(2, "alice", "a"),
            claim_of(3, "alice", "b"),
            release_of(4, &[("bob", "x", 1)]),
        ])
        .await
        .expect("apply");
    // Alice's two claims are live: a third session is refused, though bob's is released.
    assert_eq!(
        state.refusal(&session_of("alice", "c")),
        Some(Refusal::TooManyForIdentity(2))
    );
    let applied = state
        .apply(vec![claim_of(5, "alice", "c")])
        .await
        .expect("apply");
    assert_eq!(applied[0].refused, Some(Refusal::TooManyForIdentity(2)));
    assert_eq!(
        state.refusal(&session_of("alice", "a")),
        None,
        "a session it holds can be claimed again"
    );
    // Her own released claim makes room; bob's stays.
    state
        .apply(vec![
            release_of(6, &[("alice", "a", 2)]),
            claim_of(7, "alice", "c"),
        ])
        .await
        .expect("apply");
    assert_eq!(state.owner(&session_of("alice", "a")), None);
    assert!(state.owner(&session_of("alice", "c")).is_some());
    assert!(state.owner(&session_of("bob", "x")).is_some());
    // A member that catches up from a snapshot counts the same.
    use openraft::RaftSnapshotBuilder;
    let snapshot = state
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("snapshot");
    let mut caught_up = StateMachine::open(Storage::Memory, None)
        .expect("state machine")
        .with_max_claims_per_identity(2);
    caught_up
        .install_snapshot(&snapshot.meta, snapshot.snapshot)
        .await
        .expect("installed");
    for name in ["a", "d"] {
        assert_eq!(
            caught_up.refusal(&session_of("alice", name)),
            Some(Refusal::TooManyForIdentity(2))
        );
    }
    assert_eq!(caught_up.refusal(&session_of("bob", "y")), None);
}

#[tokio::test]
async fn the_disk_store_reads_back_its_vote_log_and_snapshot_after_a_restart() {
    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Vote};

    use crate::{Command, SessionKey};

    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("raft.redb");
    let log_id = |index| LogId::new(CommittedLeaderId::new(1, 7), index);
    let session = SessionKey {
        identity: "alice".into(),
        name: "s".into(),
    };
    {
        let storage = Storage::open(&path).expect("raft file");
        let mut log = LogStore::open(storage.clone()).expect("log");
        let mut state = StateMachine::open(storage, None).expect("state machine");
        log.save_vote(&Vote::new(1, 7)).await.expect("vote");
        let entries: Vec<Entry<TypeConfig>> = (1..=3)
            .map(|index| Entry {
                log_id: log_id(index),
                payload: EntryPayload::Normal(Command::Claim {
                    session: session.clone(),
                    node: format!("n{index}"),
                }),
            })
            .collect();
        state.apply(entries.clone()).await.expect("apply");
        state.build_snapshot().await.expect("snapshot");
        log.purge(log_id(2)).await.expect("purge");
        // Written straight to the file, as `append` does once openraft's callback is set up.
        log.write_entries(&entries[2..], 0..0).expect("append");
    }
    let storage = Storage::open(&path).expect("raft file again");
    let mut log = LogStore::open(storage.clone()).expect("log again");
    let state = StateMachine::open(storage, None).expect("state machine again");
    assert_eq!(log.read_vote().await.expect("vote"), Some(Vote::new(1, 7)));
    let log_state = log.get_log_state().await.expect("log state");
    assert_eq!(log_state.last_purged_log_id, Some(log_id(2)));
    assert_eq!(log_state.last_log_id, Some(log_id(3)));
    let owner = state.owner(&session).expect("claimed");
    assert_eq!((owner.node.as_str(), owner.epoch), ("n3", 3));
}
