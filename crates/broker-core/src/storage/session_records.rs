//! A session's stored state as the cluster's Raft log carries it (docs/CLUSTERING.md,
//! "Replicated sessions"): the disk store's operations on one session as changes to that
//! session's records ([`RecordOp`]), and those records read back as a [`RecoveredSession`].
//!
//! Each record is the disk store's checksummed encoding of the same record, under a key within
//! the session: `s` the session, `u` ++ subscription the subscription, `q` ++ subscription its
//! last sequence, `m` ++ subscription ++ sequence a stored message, `i` ++ subscription ++
//! origin ++ number a message another node delivered for the subscription, waiting for the
//! session's owner to queue it ([`InboxSlot`]) (numbers big endian, so a subscription's records
//! sort together, its messages in sequence order, and one origin's deliveries in the order it
//! made them). No I/O here.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use cassini_protocol::TopicLimits;
use cassini_replication::{RecordOp, SessionRecords};

use super::records::{
    decode, encode, MessageRecord, RecordError, SequenceRecord, SessionRecord, SubscriptionRecord,
};
use super::{Op, RecoveredSession, RecoveredSubscription};

const SESSION: u8 = b's';
const SUBSCRIPTION: u8 = b'u';
const SEQUENCE: u8 = b'q';
const MESSAGE: u8 = b'm';
/// The first byte of every delivery's key ([`InboxSlot`]).
pub(crate) const INBOX: u8 = b'i';

/// Where a message delivered by a node that does not own the session waits in its records
/// until the owner queues it: for `subscription` of `session`, the `number`th delivery of the
/// node incarnation `origin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct InboxSlot {
    pub(crate) session: u128,
    pub(crate) subscription: u64,
    pub(crate) origin: u64,
    pub(crate) number: u64,
}

impl InboxSlot {
    fn key(&self) -> Bytes {
        key(INBOX, &[self.subscription, self.origin, self.number])
    }
}

fn key(kind: u8, numbers: &[u64]) -> Bytes {
    let mut key = BytesMut::with_capacity(1 + 8 * numbers.len());
    key.put_u8(kind);
    for number in numbers {
        key.put_u64(*number);
    }
    key.freeze()
}

/// The session an operation changes, and the change to its records; `None` for an operation
/// on no session (retained values, dedupe, gateways: not replicated).
fn record_op(op: &Op) -> Option<(u128, RecordOp)> {
    let put = |key, value: Vec<u8>| RecordOp::Put {
        key,
        value: Bytes::from(value),
    };
    Some(match op {
        Op::PutSession(record) => (record.id, put(key(SESSION, &[]), encode(record))),
        Op::DeleteSession(session) => (
            *session,
            RecordOp::DeletePrefix {
                prefix: Bytes::new(),
            },
        ),
        Op::PutSubscription(record) => (
            record.session,
            put(key(SUBSCRIPTION, &[record.subscription]), encode(record)),
        ),
        Op::DeleteSubscription(session, subscription) => (
            *session,
            // Its subscription, sequence and messages go in three changes: see `record_ops`.
            RecordOp::Delete {
                key: key(SUBSCRIPTION, &[*subscription]),
            },
        ),
        Op::Sequence(record) => (
            record.session,
            put(key(SEQUENCE, &[record.subscription]), encode(record)),
        ),
        Op::PutMessage(at @ (session, subscription, sequence), message) => (
            *session,
            put(
                key(MESSAGE, &[*subscription, *sequence]),
                encode(&MessageRecord::new(*at, message)),
            ),
        ),
        Op::DeleteMessage((session, subscription, sequence)) => (
            *session,
            RecordOp::Delete {
                key: key(MESSAGE, &[*subscription, *sequence]),
            },
        ),
        Op::PutInbox(slot, message) => (
            slot.session,
            put(
                slot.key(),
                encode(&MessageRecord::new(
                    (slot.session, slot.subscription, 0),
                    message,
                )),
            ),
        ),
        Op::DeleteInbox(slot) => (slot.session, RecordOp::Delete { key: slot.key() }),
        Op::TakeInbox(slot) => (slot.session, RecordOp::Take { key: slot.key() }),
        Op::PutRetained(..) | Op::DeleteRetained(_) | Op::PutDedupe(_) => return None,
        Op::PutGateway(_) | Op::DeleteGateway(_) => return None,
    })
}

/// The changes an operation makes to its session's records (see [`record_op`]): removing a
/// subscription also removes its sequence, its messages and the deliveries waiting for it.
pub(crate) fn record_ops(op: &Op) -> Option<(u128, Vec<RecordOp>)> {
    let (session, first) = record_op(op)?;
    let mut ops = vec![first];
    if let Op::DeleteSubscription(_, subscription) = op {
        ops.push(RecordOp::Delete {
            key: key(SEQUENCE, &[*subscription]),
        });
        ops.push(RecordOp::DeletePrefix {
            prefix: key(MESSAGE, &[*subscription]),
        });
        ops.push(RecordOp::DeletePrefix {
            prefix: key(INBOX, &[*subscription]),
        });
    }
    Some((session, ops))
}

/// Why a session's records could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ReadBackError {
    /// The records hold no session record (the session ended, or none was written yet).
    #[error("no session record")]
    NoSession,
    /// A record does not decode or is under the wrong key.
    #[error("record {key:?}: {error}")]
    Record {
        /// Its key.
        key: Bytes,
        /// What is wrong with it.
        error: RecordError,
    },
}

fn number(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// A session's records read back: its record, and each subscription with its last sequence
/// and stored messages (a message above the stored last sequence raises it). Records of a
/// subscription without its subscription record are left out.
pub(crate) fn read_back(
    records: &SessionRecords,
    limits: &TopicLimits,
) -> Result<RecoveredSession, ReadBackError> {
    let bad = |key: &Bytes, error| ReadBackError::Record {
        key: key.clone(),
        error,
    };
    let malformed = |key: &Bytes| bad(key, RecordError::Malformed("unknown key".into()));
    let mut session: Option<SessionRecord> = None;
    let mut subscriptions: BTreeMap<u64, RecoveredSubscription> = BTreeMap::new();
    let mut sequences: BTreeMap<u64, u64> = BTreeMap::new();
    let mut messages: Vec<(u64, u64, MessageRecord)> = Vec::new();
    for (key, value) in records {
        let Some((&kind, rest)) = key.split_first() else {
            return Err(malformed(key));
        };
        match (kind, rest.len()) {
            (SESSION, 0) => {
                let record: SessionRecord = rmp_body(value).map_err(|error| bad(key, error))?;
                session = Some(record);
            }
            (SUBSCRIPTION, 8) => {
                let id = number(rest).ok_or_else(|| malformed(key))?;
                let record: SubscriptionRecord =
                    rmp_body(value).map_err(|error| bad(key, error))?;
                if record.subscription != id {
                    return Err(bad(key, RecordError::WrongKey));
                }
                subscriptions.insert(
                    id,
                    RecoveredSubscription {
                        record,
                        last_sequence: 0,
                        messages: Vec::new(),
                    },
                );
            }
            (SEQUENCE, 8) => {
                let id = number(rest).ok_or_else(|| malformed(key))?;
                let record: SequenceRecord = rmp_body(value).map_err(|error| bad(key, error))?;
                if record.subscription != id {
                    return Err(bad(key, RecordError::WrongKey));
                }
                sequences.insert(id, record.last_sequence);
            }
            (MESSAGE, 16) => {
                let id = number(&rest[..8]).ok_or_else(|| malformed(key))?;
                let sequence = number(&rest[8..]).ok_or_else(|| malformed(key))?;
                let record: MessageRecord = rmp_body(value).map_err(|error| bad(key, error))?;
                if (record.subscription, record.sequence) != (id, sequence) {
                    return Err(bad(key, RecordError::WrongKey));
                }
                messages.push((id, sequence, record));
            }
            // Deliveries are queued by the owner once it serves the session ([`inbox`]).
            (INBOX, 24) => {}
            _ => return Err(malformed(key)),
        }
    }
    let record = session.ok_or(ReadBackError::NoSession)?;
    let owned = |id: u128| id == record.id;
    for subscription in subscriptions.values() {
        if !owned(subscription.record.session) {
            return Err(ReadBackError::Record {
                key: key(SUBSCRIPTION, &[subscription.record.subscription]),
                error: RecordError::WrongKey,
            });
        }
    }
    for (id, last) in sequences {
        if let Some(subscription) = subscriptions.get_mut(&id) {
            subscription.last_sequence = last;
        }
    }
    // Keys sort by subscription, then sequence: each subscription's messages come in order.
    for (id, sequence, message) in messages {
        let Some(subscription) = subscriptions.get_mut(&id) else {
            continue;
        };
        if !owned(message.session) {
            return Err(ReadBackError::Record {
                key: key(MESSAGE, &[id, sequence]),
                error: RecordError::WrongKey,
            });
        }
        let Some(message) = message.into_message(limits, false) else {
            return Err(ReadBackError::Record {
                key: key(MESSAGE, &[id, sequence]),
                error: RecordError::Malformed(
                    "topic is not valid under the configured limits".into(),
                ),
            });
        };
        subscription.last_sequence = subscription.last_sequence.max(sequence);
        subscription.messages.push((sequence, Arc::new(message)));
    }
    Ok(RecoveredSession {
        record,
        subscriptions: subscriptions.into_values().collect(),
    })
}

/// The deliveries waiting in a session's records, in key order, each with the session it was
/// meant for and its message (`None` if its record does not decode under `limits`: it is
/// removed unread).
pub(crate) fn inbox(
    records: &SessionRecords,
    limits: &TopicLimits,
) -> Vec<(InboxSlot, Option<(u128, crate::message::PublishedMessage)>)> {
    let start = Bytes::from_static(&[INBOX]);
    records
        .range(start..)
        .take_while(|(key, _)| key.first() == Some(&INBOX))
        .filter_map(|(key, value)| {
            let rest = key.get(1..).filter(|rest| rest.len() == 24)?;
            let record = rmp_body::<MessageRecord>(value).ok();
            let slot = InboxSlot {
                session: record.as_ref().map_or(0, |record| record.session),
                subscription: number(&rest[..8])?,
                origin: number(&rest[8..16])?,
                number: number(&rest[16..])?,
            };
            let message = record.and_then(|record| {
                let session = record.session;
                Some((session, record.into_message(limits, false)?))
            });
            Some((slot, message))
        })
        .collect()
}

/// What a change to a session's records does to its subscriptions: made or replaced, removed
/// (by id), or all removed (the session's records went).
#[derive(Debug)]
pub(crate) enum SubscriptionChange {
    Put(SubscriptionRecord),
    Removed(u64),
    AllRemoved,
}

/// The subscription change `op` makes, if it makes one.
pub(crate) fn subscription_change(op: &RecordOp) -> Option<SubscriptionChange> {
    match op {
        RecordOp::Put { key, value } if key.first() == Some(&SUBSCRIPTION) => {
            rmp_body(value).ok().map(SubscriptionChange::Put)
        }
        RecordOp::Delete { key } if key.first() == Some(&SUBSCRIPTION) => {
            number(key.get(1..)?).map(SubscriptionChange::Removed)
        }
        RecordOp::DeletePrefix { prefix } if prefix.is_empty() => {
            Some(SubscriptionChange::AllRemoved)
        }
        _ => None,
    }
}

/// The subscriptions in a session's records (those that decode).
pub(crate) fn subscriptions(records: &SessionRecords) -> Vec<SubscriptionRecord> {
    let start = Bytes::from_static(&[SUBSCRIPTION]);
    records
        .range(start..)
        .take_while(|(key, _)| key.first() == Some(&SUBSCRIPTION))
        .filter_map(|(_, value)| rmp_body(value).ok())
        .collect()
}

/// What a change to a session's records does to its inbox.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum InboxChange {
    /// A delivery for this subscription arrived from this origin.
    Added { subscription: u64, origin: u64 },
    /// A delivery for this subscription from this origin was taken or removed.
    Removed { subscription: u64, origin: u64 },
    /// Every delivery for this subscription went (`None`: for every subscription).
    Cleared(Option<u64>),
}

/// The inbox change `op` makes, if it makes one.
pub(crate) fn inbox_change(op: &RecordOp) -> Option<InboxChange> {
    let subscription_of = |key: &Bytes| number(key.get(1..9)?);
    let slot_of = |key: &Bytes| Some((subscription_of(key)?, number(key.get(9..17)?)?));
    match op {
        RecordOp::Put { key, .. } if key.first() == Some(&INBOX) => {
            slot_of(key).map(|(subscription, origin)| InboxChange::Added {
                subscription,
                origin,
            })
        }
        RecordOp::Delete { key } | RecordOp::Take { key } if key.first() == Some(&INBOX) => {
            slot_of(key).map(|(subscription, origin)| InboxChange::Removed {
                subscription,
                origin,
            })
        }
        RecordOp::DeletePrefix { prefix } if prefix.is_empty() => Some(InboxChange::Cleared(None)),
        RecordOp::DeletePrefix { prefix } if prefix.first() == Some(&INBOX) => {
            subscription_of(prefix).map(|id| InboxChange::Cleared(Some(id)))
        }
        _ => None,
    }
}

/// The deliveries waiting in a session's records, per subscription and origin.
pub(crate) fn inbox_origins(records: &SessionRecords) -> Vec<(u64, u64)> {
    let start = Bytes::from_static(&[INBOX]);
    records
        .range(start..)
        .take_while(|(key, _)| key.first() == Some(&INBOX))
        .filter_map(|(key, _)| {
            Some((
                key.get(1..9).and_then(number)?,
                key.get(9..17).and_then(number)?,
            ))
        })
        .collect()
}

/// The prefix of the deliveries waiting for `subscription`.
pub(crate) fn inbox_prefix(subscription: u64) -> Bytes {
    key(INBOX, &[subscription])
}

/// The key of `subscription`'s record.
pub(crate) fn subscription_key(subscription: u64) -> Bytes {
    key(SUBSCRIPTION, &[subscription])
}

/// Whether `op` delivers a message into a session's inbox.
pub(crate) fn is_delivery(op: &RecordOp) -> bool {
    matches!(op, RecordOp::Put { key, .. } if key.first() == Some(&INBOX))
}

/// The key of the session record among a session's records: the prefix that reads only it.
pub(crate) fn session_record_key() -> Bytes {
    key(SESSION, &[])
}

/// The session record among `records`, if they hold one that decodes.
pub(crate) fn session_record(records: &SessionRecords) -> Option<SessionRecord> {
    rmp_body(records.get(&session_record_key())?).ok()
}

/// Decodes a checksummed record whose key was checked by the caller.
fn rmp_body<T: serde::de::DeserializeOwned>(value: &[u8]) -> Result<T, RecordError> {
    decode(value, &(), |_: &T| ())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use cassini_protocol::{SubscribeOptions, TopicName};

    use super::*;
    use crate::message::PublishedMessage;

    fn apply(records: &mut SessionRecords, op: &Op) {
        let (_, ops) = record_ops(op).expect("a session's operation");
        for op in ops {
            match op {
                RecordOp::Put { key, value } => {
                    records.insert(key, value);
                }
                RecordOp::Delete { key } | RecordOp::Take { key } => {
                    records.remove(&key);
                }
                RecordOp::DeletePrefix { prefix } => {
                    records.retain(|key, _| !key.starts_with(&prefix));
                }
            }
        }
    }

    fn message(topic: &str) -> Arc<PublishedMessage> {
        Arc::new(PublishedMessage {
            topic: TopicName::parse(topic, &TopicLimits::default()).expect("topic"),
            headers: Default::default(),
            payload: Bytes::from_static(b"payload"),
            message_id: Some(9),
            reply_to: None,
            retained: false,
            charge: crate::memory::MemoryCharge::none(),
        })
    }

    fn session_record(id: u128) -> SessionRecord {
        SessionRecord {
            id,
            identity: "alice".into(),
            last_subscription: 2,
            detached_at_ms: None,
            name: Some("s".into()),
            expiry_ms: None,
        }
    }

    fn subscription(session: u128, subscription: u64) -> SubscriptionRecord {
        SubscriptionRecord {
            session,
            subscription,
            filter: "a/#".into(),
            options: SubscribeOptions::default(),
        }
    }

    #[test]
    fn the_disk_stores_operations_read_back_as_the_session_they_made() {
        let mut records = BTreeMap::new();
        let id = 7u128;
        for op in [
            Op::PutSession(session_record(id)),
            Op::PutSubscription(subscription(id, 1)),
            Op::PutSubscription(subscription(id, 2)),
            Op::PutMessage((id, 1, 1), message("a/b")),
            Op::PutMessage((id, 1, 2), message("a/c")),
            Op::Sequence(SequenceRecord {
                session: id,
                subscription: 1,
                last_sequence: 3,
            }),
            Op::Sequence(SequenceRecord {
                session: id,
                subscription: 2,
                last_sequence: 40,
            }),
            Op::DeleteMessage((id, 1, 1)),
        ] {
            apply(&mut records, &op);
        }
        let session = read_back(&records, &TopicLimits::default()).expect("read back");
        assert_eq!(session.record, session_record(id));
        assert_eq!(session.subscriptions.len(), 2);
        let first = &session.subscriptions[0];
        assert_eq!(first.last_sequence, 3);
        let kept: Vec<(u64, &str)> = first
            .messages
            .iter()
            .map(|(sequence, message)| (*sequence, message.topic.as_str()))
            .collect();
        assert_eq!(kept, vec![(2, "a/c")]);
        assert_eq!(session.subscriptions[1].last_sequence, 40);

        apply(&mut records, &Op::DeleteSubscription(id, 1));
        let session = read_back(&records, &TopicLimits::default()).expect("read back");
        assert_eq!(session.subscriptions.len(), 1);
        assert!(
            !records.keys().any(|key| key.first() == Some(&MESSAGE)),
            "its messages went with it"
        );

        apply(&mut records, &Op::DeleteSession(id));
        assert!(records.is_empty());
        assert_eq!(
            read_back(&records, &TopicLimits::default()).err(),
            Some(ReadBackError::NoSession)
        );
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        let mut records = BTreeMap::new();
        apply(&mut records, &Op::PutSession(session_record(7)));
        apply(&mut records, &Op::PutSubscription(subscription(7, 1)));
        let value = records
            .get(&key(SUBSCRIPTION, &[1]))
            .expect("stored")
            .clone();
        records.insert(key(SUBSCRIPTION, &[2]), value);
        assert!(matches!(
            read_back(&records, &TopicLimits::default()),
            Err(ReadBackError::Record {
                error: RecordError::WrongKey,
                ..
            })
        ));
    }
}
