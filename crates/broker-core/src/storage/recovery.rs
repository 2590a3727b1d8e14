//! Reading the store back on start.
//!
//! Every record is read and checked (checksum, decoding, key) before the broker starts. If any
//! record cannot be read, the broker does not start: [`read_all`] returns
//! [`StorageError::Corrupt`] naming every unreadable record (table and key) and the store is
//! left exactly as it was, so nothing is dropped or deleted behind the operator's back.
//!
//! Records that are readable but belong to nothing (a message or sequence of a subscription
//! that was removed in the same batch it was written) are removed, with a warning naming how
//! many; dedupe entries older than the window are removed as the window would have forgotten
//! them.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::TopicLimits;
use redb::{Database, ReadableTable, TableDefinition};

use super::records::{
    decode, DedupeRecord, GatewayRecord, MessageRecord, RecordError, SequenceRecord, SessionRecord,
    SubscriptionRecord,
};
use super::tables::{
    DbError, DEDUPE, GATEWAY, MESSAGES, RETAINED, SEQUENCES, SESSIONS, SUBSCRIPTIONS,
};
use super::{unix_ms, StorageError};
use crate::message::PublishedMessage;

/// Everything read back from the store.
#[derive(Debug, Default)]
pub(crate) struct Recovered {
    /// Sessions, each with its subscriptions.
    pub(crate) sessions: Vec<RecoveredSession>,
    /// Retained values, each with the identity that set it (if recorded).
    pub(crate) retained: Vec<(PublishedMessage, Option<String>)>,
    /// The dedupe window, oldest first.
    pub(crate) dedupe: Vec<DedupeRecord>,
    /// The records of gateways in the broker's process (key, value), by key.
    pub(crate) gateway: Vec<(String, bytes::Bytes)>,
    /// Bytes of stored values that stay.
    pub(crate) live_bytes: u64,
    leftovers: Leftovers,
}

/// A stored session.
#[derive(Debug)]
pub(crate) struct RecoveredSession {
    pub(crate) record: SessionRecord,
    pub(crate) subscriptions: Vec<RecoveredSubscription>,
}

/// A stored subscription with its last sequence and its stored messages.
#[derive(Debug)]
pub(crate) struct RecoveredSubscription {
    pub(crate) record: SubscriptionRecord,
    pub(crate) last_sequence: u64,
    /// Queued and unacknowledged messages, in sequence order.
    pub(crate) messages: Vec<(u64, Arc<PublishedMessage>)>,
}

#[derive(Debug, Default)]
struct Leftovers {
    subscriptions: Vec<(u128, u64)>,
    sequences: Vec<(u128, u64)>,
    messages: Vec<(u128, u64, u64)>,
    expired_dedupe: Vec<(u64, String, u64)>,
}

/// How many unreadable records are named one by one in the error.
const MAX_NAMED_PROBLEMS: usize = 20;

struct Problems(Vec<String>);

impl Problems {
    fn add(&mut self, table: &str, key: String, err: &RecordError) {
        self.0.push(format!("table {table}, {key}: {err}"));
    }
}

fn session_hex(id: u128) -> String {
    format!("{id:032x}")
}

/// Reads and checks every record; see the module documentation.
pub(crate) fn read_all(
    db: &Database,
    path: &Path,
    limits: &TopicLimits,
    dedupe_max_age: Duration,
) -> Result<Recovered, StorageError> {
    let database = |err: DbError| StorageError::Database {
        path: path.to_path_buf(),
        detail: err.to_string(),
    };
    read_all_inner(db, limits, dedupe_max_age).map_err(|err| match err {
        ReadError::Db(err) => database(err),
        ReadError::Corrupt(problems) => {
            let count = problems.len();
            let mut named: Vec<String> = problems.into_iter().take(MAX_NAMED_PROBLEMS).collect();
            if count > MAX_NAMED_PROBLEMS {
                named.push(format!("and {} more", count - MAX_NAMED_PROBLEMS));
            }
            StorageError::Corrupt {
                path: path.to_path_buf(),
                count,
                records: named.join("; "),
            }
        }
    })
}

enum ReadError {
    Db(DbError),
    Corrupt(Vec<String>),
}

impl<E: Into<redb::Error>> From<E> for ReadError {
    fn from(err: E) -> Self {
        ReadError::Db(DbError::from(err))
    }
}

/// Every (key, value) of a table; an absent table is empty.
fn entries<K: redb::Key + 'static, T>(
    db: &Database,
    table: TableDefinition<'static, K, &'static [u8]>,
    mut each: impl FnMut(K::SelfType<'_>, &[u8]) -> T,
) -> Result<Vec<T>, ReadError> {
    let tx = db.begin_read()?;
    let table = match tx.open_table(table) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(err) => return Err(err.into()),
    };
    let mut out = Vec::new();
    for entry in table.iter()? {
        let (key, value) = entry?;
        out.push(each(key.value(), value.value()));
    }
    Ok(out)
}

fn read_all_inner(
    db: &Database,
    limits: &TopicLimits,
    dedupe_max_age: Duration,
) -> Result<Recovered, ReadError> {
    let mut problems = Problems(Vec::new());
    let mut live_bytes = 0u64;
    let mut count = |len: usize| live_bytes += len as u64;

    let mut sessions = BTreeMap::new();
    for (key, result, len) in entries(db, SESSIONS, |key, value| {
        (
            key,
            decode::<SessionRecord, _>(value, &key, |r| r.id),
            value.len(),
        )
    })? {
        match result {
            Ok(record) => {
                count(len);
                sessions.insert(key, (record, BTreeMap::new()));
            }
            Err(err) => problems.add("sessions", format!("session {}", session_hex(key)), &err),
        }
    }

    let mut leftovers = Leftovers::default();
    let mut sequences: HashMap<(u128, u64), u64> = HashMap::new();
    for (key, result, len) in entries(db, SEQUENCES, |key, value| {
        let result = decode::<SequenceRecord, _>(value, &key, |r| (r.session, r.subscription));
        (key, result, value.len())
    })? {
        match result {
            Ok(record) => {
                count(len);
                sequences.insert(key, record.last_sequence);
            }
            Err(err) => problems.add(
                "sequences",
                format!("session {}, subscription {}", session_hex(key.0), key.1),
                &err,
            ),
        }
    }

    for (key, result, len) in entries(db, SUBSCRIPTIONS, |key, value| {
        let result = decode::<SubscriptionRecord, _>(value, &key, |r| (r.session, r.subscription));
        (key, result, value.len())
    })? {
        match result {
            Ok(record) => match sessions.get_mut(&key.0) {
                Some((_, subscriptions)) => {
                    count(len);
                    let last_sequence = sequences.remove(&key).unwrap_or(0);
                    subscriptions.insert(
                        key.1,
                        RecoveredSubscription {
                            record,
                            last_sequence,
                            messages: Vec::new(),
                        },
                    );
                }
                None => leftovers.subscriptions.push(key),
            },
            Err(err) => problems.add(
                "subscriptions",
                format!("session {}, subscription {}", session_hex(key.0), key.1),
                &err,
            ),
        }
    }
    leftovers.sequences.extend(sequences.into_keys());

    for (key, result, len) in entries(db, MESSAGES, |key, value| {
        let result =
            decode::<MessageRecord, _>(value, &key, |r| (r.session, r.subscription, r.sequence));
        (key, result, value.len())
    })? {
        let name = || {
            format!(
                "session {}, subscription {}, sequence {}",
                session_hex(key.0),
                key.1,
                key.2
            )
        };
        let record = match result {
            Ok(record) => record,
            Err(err) => {
                problems.add("messages", name(), &err);
                continue;
            }
        };
        let owner = sessions
            .get_mut(&key.0)
            .and_then(|(_, subscriptions)| subscriptions.get_mut(&key.1));
        let Some(owner) = owner else {
            leftovers.messages.push(key);
            continue;
        };
        match record.into_message(limits, false) {
            Some(message) => {
                count(len);
                owner.last_sequence = owner.last_sequence.max(key.2);
                owner.messages.push((key.2, Arc::new(message)));
            }
            None => problems.add(
                "messages",
                name(),
                &RecordError::Malformed("topic is not valid under the configured limits".into()),
            ),
        }
    }

    let mut retained = Vec::new();
    for (topic, result, len) in entries(db, RETAINED, |key, value| {
        let result = decode::<MessageRecord, _>(value, &key.to_string(), |r| r.topic.clone());
        (key.to_string(), result, value.len())
    })? {
        match result.map(|mut record| {
            let publisher = record.publisher.take();
            record
                .into_message(limits, true)
                .map(|message| (message, publisher))
        }) {
            Ok(Some(value)) => {
                count(len);
                retained.push(value);
            }
            Ok(None) => problems.add(
                "retained",
                format!("topic {topic:?}"),
                &RecordError::Malformed("topic is not valid under the configured limits".into()),
            ),
            Err(err) => problems.add("retained", format!("topic {topic:?}"), &err),
        }
    }

    let max_age_ms = u64::try_from(dedupe_max_age.as_millis()).unwrap_or(u64::MAX);
    let cutoff = unix_ms().saturating_sub(max_age_ms);
    let mut dedupe = Vec::new();
    for (key, result, len) in entries(db, DEDUPE, |key, value| {
        let owned = (key.0, key.1.to_string(), key.2);
        let result = decode::<DedupeRecord, _>(value, &owned, |r| {
            (r.at_ms, r.identity.clone(), r.message_id)
        });
        (owned, result, value.len())
    })? {
        match result {
            Ok(record) if record.at_ms < cutoff => leftovers.expired_dedupe.push(key),
            Ok(record) => {
                count(len);
                dedupe.push(record);
            }
            Err(err) => problems.add(
                "dedupe",
                format!("identity {:?}, message id {}", key.1, key.2),
                &err,
            ),
        }
    }

    let mut gateway = Vec::new();
    for (key, result, len) in entries(db, GATEWAY, |key, value| {
        let key = key.to_string();
        let result = decode::<GatewayRecord, _>(value, &key, |r| r.key.clone());
        (key, result, value.len())
    })? {
        match result {
            Ok(record) => {
                count(len);
                gateway.push((record.key, record.value));
            }
            Err(err) => problems.add("gateway", format!("key {key:?}"), &err),
        }
    }

    if !problems.0.is_empty() {
        return Err(ReadError::Corrupt(problems.0));
    }
    Ok(Recovered {
        sessions: sessions
            .into_values()
            .map(|(record, subscriptions)| RecoveredSession {
                record,
                subscriptions: subscriptions.into_values().collect(),
            })
            .collect(),
        retained,
        dedupe,
        gateway,
        live_bytes,
        leftovers,
    })
}

/// Removes the records [`read_all`] found belonging to nothing, in one transaction.
pub(crate) fn remove_leftovers(
    db: &Database,
    path: &Path,
    recovered: &Recovered,
) -> Result<(), StorageError> {
    let leftovers = &recovered.leftovers;
    let orphans =
        leftovers.subscriptions.len() + leftovers.sequences.len() + leftovers.messages.len();
    if orphans == 0 && leftovers.expired_dedupe.is_empty() {
        return Ok(());
    }
    if orphans > 0 {
        tracing::warn!(
            subscriptions = leftovers.subscriptions.len(),
            sequences = leftovers.sequences.len(),
            messages = leftovers.messages.len(),
            "removing stored records of sessions and subscriptions that had ended"
        );
    }
    let remove = || -> Result<(), DbError> {
        let mut tx = db.begin_write()?;
        tx.set_two_phase_commit(true);
        {
            let mut table = tx.open_table(SUBSCRIPTIONS)?;
            for key in &leftovers.subscriptions {
                table.remove(*key)?;
            }
            let mut table = tx.open_table(SEQUENCES)?;
            for key in &leftovers.sequences {
                table.remove(*key)?;
            }
            let mut table = tx.open_table(MESSAGES)?;
            for key in &leftovers.messages {
                table.remove(*key)?;
            }
            let mut table = tx.open_table(DEDUPE)?;
            for (at, identity, id) in &leftovers.expired_dedupe {
                table.remove((*at, identity.as_str(), *id))?;
            }
        }
        tx.commit()?;
        Ok(())
    };
    remove().map_err(|err| StorageError::Database {
        path: path.to_path_buf(),
        detail: format!("removing leftover records: {err}"),
    })
}
