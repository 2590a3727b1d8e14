use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_protocol::{AckOptions, SubscribeOptions, TopicLimits, TopicName};

use super::records::{DedupeRecord, SequenceRecord, SessionRecord, SubscriptionRecord};
use super::*;

const WINDOW: Duration = Duration::from_secs(120);

fn config(dir: &Path) -> StorageConfig {
    StorageConfig {
        mode: StorageMode::Disk,
        data_dir: dir.to_path_buf(),
        ..StorageConfig::default()
    }
}

fn open(dir: &Path) -> Result<(DiskStore, Recovered), StorageError> {
    DiskStore::open(&config(dir), WINDOW, &TopicLimits::default())
}

fn message(topic: &str, payload: &'static [u8]) -> Arc<PublishedMessage> {
    Arc::new(PublishedMessage {
        topic: TopicName::parse(topic, &TopicLimits::default()).unwrap(),
        headers: vec![("k".into(), "v".into())],
        payload: Bytes::from_static(payload),
        message_id: Some(9),
        reply_to: None,
        retained: false,
        charge: crate::memory::MemoryCharge::none(),
    })
}

fn session(id: u128) -> Op {
    Op::PutSession(SessionRecord {
        id,
        identity: "alice".into(),
        last_subscription: 1,
        detached_at_ms: Some(1_000),
        name: None,
        expiry_ms: None,
    })
}

fn subscription(session: u128, subscription: u64) -> Op {
    Op::PutSubscription(SubscriptionRecord {
        session,
        subscription,
        filter: "a.>".into(),
        options: SubscribeOptions {
            acks: Some(AckOptions::default()),
            ..SubscribeOptions::default()
        },
    })
}

/// Opens the store in `dir`, commits `ops` and closes it again.
async fn stored(dir: &Path, ops: Vec<Op>) {
    let (store, _) = open(dir).unwrap();
    commit(&store, ops).await;
}

async fn commit(store: &DiskStore, ops: Vec<Op>) {
    store.append(ops);
    store.synced(store.ticket()).await.unwrap();
}

#[tokio::test]
async fn what_was_synced_is_read_back_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, recovered) = open(dir.path()).unwrap();
        assert!(recovered.sessions.is_empty());
        let mut ops = vec![session(7), subscription(7, 1)];
        for sequence in 1..=3 {
            ops.push(Op::PutMessage((7, 1, sequence), message("a.b", b"payload")));
            ops.push(Op::Sequence(SequenceRecord {
                session: 7,
                subscription: 1,
                last_sequence: sequence,
            }));
        }
        ops.push(Op::DeleteMessage((7, 1, 1)));
        ops.push(Op::PutRetained(
            message("a.r", b"kept"),
            Some(std::sync::Arc::from("alice")),
        ));
        ops.push(Op::PutDedupe(DedupeRecord {
            at_ms: unix_ms(),
            identity: "alice".into(),
            message_id: 9,
        }));
        commit(&store, ops).await;
        assert!(store.live_bytes() > 0);
    }
    let (store, recovered) = open(dir.path()).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    let session = &recovered.sessions[0];
    assert_eq!(session.record.identity, "alice");
    assert_eq!(session.record.detached_at_ms, Some(1_000));
    let subscription = &session.subscriptions[0];
    assert_eq!(subscription.record.filter, "a.>");
    assert_eq!(subscription.last_sequence, 3);
    let sequences: Vec<u64> = subscription.messages.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, vec![2, 3], "the deleted message stays deleted");
    assert_eq!(
        subscription.messages[0].1.payload,
        Bytes::from_static(b"payload")
    );
    assert_eq!(
        subscription.messages[0].1.headers,
        vec![("k".into(), "v".into())]
    );
    assert_eq!(recovered.retained.len(), 1);
    assert!(recovered.retained[0].0.retained);
    assert_eq!(
        recovered.retained[0].1.as_deref(),
        Some("alice"),
        "the owner is read back"
    );
    assert_eq!(recovered.dedupe.len(), 1);
    assert_eq!(store.live_bytes(), recovered.live_bytes);
}

#[tokio::test]
async fn removing_a_session_removes_everything_it_owns() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path()).unwrap();
        commit(
            &store,
            vec![
                session(7),
                subscription(7, 1),
                Op::PutMessage((7, 1, 1), message("a.b", b"x")),
                session(8),
                subscription(8, 1),
                Op::PutMessage((8, 1, 1), message("a.b", b"y")),
            ],
        )
        .await;
        let before = store.live_bytes();
        commit(&store, vec![Op::DeleteSession(7)]).await;
        assert!(store.live_bytes() < before);
    }
    let (_, recovered) = open(dir.path()).unwrap();
    assert_eq!(recovered.sessions.len(), 1);
    assert_eq!(recovered.sessions[0].record.id, 8);
    assert_eq!(recovered.sessions[0].subscriptions[0].messages.len(), 1);
}

#[tokio::test]
async fn a_sequence_written_in_the_batch_that_removes_its_subscription_is_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    stored(
        dir.path(),
        vec![
            session(7),
            subscription(7, 1),
            Op::Sequence(SequenceRecord {
                session: 7,
                subscription: 1,
                last_sequence: 5,
            }),
            Op::DeleteSubscription(7, 1),
        ],
    )
    .await;
    let (store, recovered) = open(dir.path()).unwrap();
    assert!(recovered.sessions[0].subscriptions.is_empty());
    assert_eq!(store.live_bytes(), recovered.live_bytes);
}

#[tokio::test]
async fn an_expired_dedupe_entry_is_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let old = unix_ms() - 2 * WINDOW.as_millis() as u64;
    stored(
        dir.path(),
        vec![Op::PutDedupe(DedupeRecord {
            at_ms: old,
            identity: "alice".into(),
            message_id: 1,
        })],
    )
    .await;
    let (_, recovered) = open(dir.path()).unwrap();
    assert!(recovered.dedupe.is_empty());
}

#[tokio::test]
async fn the_disk_limit_counts_stored_and_pending_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        max_disk_bytes: 4096,
        ..config(dir.path())
    };
    let (store, _) = DiskStore::open(&config, WINDOW, &TopicLimits::default()).unwrap();
    assert!(store.has_room_for(1000));
    let mut ops = vec![session(7), subscription(7, 1)];
    for sequence in 1..=10 {
        ops.push(Op::PutMessage(
            (7, 1, sequence),
            message("a.b", &[0u8; 400]),
        ));
    }
    commit(&store, ops).await;
    assert!(!store.has_room_for(1000));
    let deletes = (1..=10).map(|s| Op::DeleteMessage((7, 1, s))).collect();
    commit(&store, deletes).await;
    assert!(
        store.has_room_for(1000),
        "acknowledged messages free their room"
    );
}

#[tokio::test]
async fn a_closed_store_refuses_to_promise_durability() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).unwrap();
    commit(&store, vec![session(7)]).await;
    store.close();
    store.append([session(8)]);
    assert!(matches!(
        store.synced(store.ticket() + 1).await,
        Err(StorageError::Closed)
    ));
}

/// Flips one byte inside the stored payload `marker` in the database file.
fn flip_byte_of(path: &Path, marker: &[u8]) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker)
        .expect("marker in the file");
    bytes[at + marker.len() / 2] ^= 0x20;
    std::fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn a_flipped_byte_stops_the_start_and_names_the_record() {
    let dir = tempfile::tempdir().unwrap();
    stored(
        dir.path(),
        vec![
            session(7),
            subscription(7, 1),
            Op::PutMessage((7, 1, 1), message("a.b", b"first-intact")),
            Op::PutMessage((7, 1, 2), message("a.b", b"second-MARKER-payload")),
        ],
    )
    .await;
    let path = dir.path().join(DATABASE_FILE);
    flip_byte_of(&path, b"second-MARKER-payload");
    let before = std::fs::read(&path).unwrap();
    let err = open(dir.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, StorageError::Corrupt { count: 1, .. }),
        "{text}"
    );
    assert!(text.contains("table messages"), "{text}");
    assert!(text.contains("subscription 1, sequence 2"), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing was changed");
}

#[tokio::test]
async fn an_at_least_once_queue_writes_through_and_forgets_what_is_acknowledged_or_dropped() {
    use crate::config::{AckBounds, QueueBounds};
    use crate::queue::SubscriptionQueue;
    use cassini_protocol::{OverflowPolicy, SequenceRange};

    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = open(dir.path()).unwrap();
        let store = Arc::new(store);
        commit(&store, vec![session(7), subscription(7, 1)]).await;
        let queue = SubscriptionQueue::with_store(
            QueueBounds {
                max_messages: 3,
                max_bytes: usize::MAX,
                overflow: OverflowPolicy::DropOldest,
                acks: Some(AckBounds {
                    max_in_flight: 10,
                    timeout: Duration::from_secs(30),
                }),
                max_age: None,
            },
            Some(QueueStore {
                store: SessionStore::Disk(Arc::clone(&store)),
                session: 7,
                subscription: 1,
            }),
        );
        for _ in 0..2 {
            queue.push(&message("a.b", b"m"));
        }
        // Send 1 and 2, acknowledge 1.
        let attachment = queue.attach(None);
        let mut batch = Vec::new();
        queue.pop_batch(&attachment, &mut batch, 10).await;
        queue.ack(&[SequenceRange { from: 1, to: 1 }]);
        // 3, 4, 5 queued, then 6 pushes 3 out (dropped before it was sent).
        for _ in 0..4 {
            queue.push(&message("a.b", b"m"));
        }
        store.synced(store.ticket()).await.unwrap();
    }
    let (_, recovered) = open(dir.path()).unwrap();
    let subscription = &recovered.sessions[0].subscriptions[0];
    let sequences: Vec<u64> = subscription.messages.iter().map(|(s, _)| *s).collect();
    assert_eq!(
        sequences,
        vec![2, 4, 5, 6],
        "1 acknowledged, 3 dropped unsent"
    );
    assert_eq!(subscription.last_sequence, 6);
}

#[tokio::test]
async fn a_backlog_written_and_acknowledged_over_and_over_does_not_grow_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).unwrap();
    commit(&store, vec![session(7), subscription(7, 1)]).await;
    let file = dir.path().join(DATABASE_FILE);
    let mut sequence = 0u64;
    let mut sizes = Vec::new();
    for _round in 0..12 {
        let first = sequence + 1;
        let mut puts = Vec::new();
        for _ in 0..200 {
            sequence += 1;
            puts.push(Op::PutMessage(
                (7, 1, sequence),
                message("a.b", &[7u8; 200]),
            ));
        }
        commit(&store, puts).await;
        let deletes = (first..=sequence)
            .map(|s| Op::DeleteMessage((7, 1, s)))
            .collect();
        commit(&store, deletes).await;
        sizes.push(std::fs::metadata(&file).unwrap().len());
    }
    // The pages of deleted records are reused: after the first rounds the file stops growing.
    assert!(
        sizes[11] <= sizes[2] + sizes[2] / 2,
        "file sizes per round: {sizes:?}"
    );
}

/// A queue in disk mode whose writes go to `store` (session 7, subscription 1), at most once.
async fn at_most_once_queue(store: &Arc<DiskStore>) -> crate::queue::SubscriptionQueue {
    use crate::config::QueueBounds;
    use crate::queue::SubscriptionQueue;
    use cassini_protocol::OverflowPolicy;
    commit(store, vec![session(7), subscription(7, 1)]).await;
    SubscriptionQueue::with_store(
        QueueBounds {
            max_messages: 10,
            max_bytes: usize::MAX,
            overflow: OverflowPolicy::DropOldest,
            acks: None,
            max_age: None,
        },
        Some(QueueStore {
            store: SessionStore::Disk(Arc::clone(store)),
            session: 7,
            subscription: 1,
        }),
    )
}

// Holding the store across an await is the point: the writer is a thread of its own.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_delivery_waits_until_its_sequence_number_is_committed() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).unwrap();
    let store = Arc::new(store);
    let queue = at_most_once_queue(&store).await;
    {
        // While a publish holds the store, the writer cannot commit what is appended.
        let _commit_held = store.hold();
        queue.push(&message("a.b", b"m"));
        let waited = tokio::time::timeout(Duration::from_millis(200), queue.until_durable()).await;
        assert!(
            waited.is_err(),
            "sequence 1 is not committed yet, so it may not be sent"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), queue.until_durable())
        .await
        .expect("once the commit is free, the delivery may go");
    let (_, recovered) = {
        drop(queue);
        drop(store);
        open(dir.path()).unwrap()
    };
    assert_eq!(
        recovered.sessions[0].subscriptions[0].last_sequence, 1,
        "what was sent is what the store holds"
    );
}

// Holding the store across an await is the point: the writer is a thread of its own.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn with_relaxed_sync_a_delivery_does_not_wait_for_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let relaxed = StorageConfig {
        sync: SyncPolicy::Relaxed,
        ..config(dir.path())
    };
    let (store, _) = DiskStore::open(&relaxed, WINDOW, &TopicLimits::default()).unwrap();
    let store = Arc::new(store);
    let queue = at_most_once_queue(&store).await;
    let _commit_held = store.hold();
    queue.push(&message("a.b", b"m"));
    tokio::time::timeout(Duration::from_secs(10), queue.until_durable())
        .await
        .expect("relaxed: no wait for the commit");
}

#[tokio::test]
async fn a_closed_store_takes_no_more_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path()).unwrap();
    assert!(store.usable().is_ok());
    store.close();
    assert!(matches!(store.usable(), Err(StorageError::Closed)));
}

#[tokio::test]
async fn gateway_records_are_read_back_counted_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let record = |key: &str, value: &'static [u8]| {
        Op::PutGateway(records::GatewayRecord {
            key: key.into(),
            value: Bytes::from_static(value),
        })
    };
    stored(
        dir.path(),
        vec![
            record("mqtt/will/a", b"first"),
            record("mqtt/will/a", b"second"),
            record("mqtt/will/b", b"gone"),
            Op::DeleteGateway("mqtt/will/b".into()),
        ],
    )
    .await;
    let (store, recovered) = open(dir.path()).unwrap();
    assert_eq!(
        recovered.gateway,
        vec![("mqtt/will/a".to_string(), Bytes::from_static(b"second"))]
    );
    let live = store.live_bytes();
    assert!(live > 0, "a gateway record counts in the store's size");
    commit(&store, vec![Op::DeleteGateway("mqtt/will/a".into())]).await;
    assert_eq!(store.live_bytes(), 0);
}
