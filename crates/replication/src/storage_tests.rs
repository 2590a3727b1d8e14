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

#[tokio::test]
async fn the_claims_table_forgets_the_oldest_claims_beyond_its_bound() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId};

    use crate::{Command, SessionKey};

    let key = |name: &str| SessionKey {
        identity: "alice".into(),
        name: name.into(),
    };
    let claim = |index: u64, name: &str| Entry::<TypeConfig> {
        log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
        payload: EntryPayload::Normal(Command::Claim {
            session: key(name),
            node: "n1".into(),
        }),
    };
    let mut state = StateMachine::open(Storage::Memory, None)
        .expect("state machine")
        .with_max_claims(3);
    // "a" is claimed again at 4: it counts once, with its newest epoch.
    let entries = vec![
        claim(1, "a"),
        claim(2, "b"),
        claim(3, "c"),
        claim(4, "a"),
        claim(5, "d"),
    ];
    state.apply(entries).await.expect("apply");
    assert_eq!(state.claimed(), 3);
    assert_eq!(state.owner(&key("b")), None, "the oldest claim went");
    for (name, epoch) in [("c", 3), ("a", 4), ("d", 5)] {
        assert_eq!(
            state.owner(&key(name)).map(|owner| owner.epoch),
            Some(epoch)
        );
    }
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
