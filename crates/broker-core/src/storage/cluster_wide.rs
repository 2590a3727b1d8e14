//! Retained values and dedupe pairs as the cluster's Raft log carries them (docs/CLUSTERING.md,
//! "Retained values and the dedupe window"): the disk store's operations on them as
//! cluster-wide changes ([`SharedChange`]), and a retained value read back. A value is the
//! disk store's checksummed record of it (a [`MessageRecord`] at position 0 naming the
//! identity that set it). No I/O here.

use cassini_protocol::TopicLimits;
use cassini_replication::SharedChange;

use super::records::{decode, encode, MessageRecord, RecordError};
use super::Op;
use crate::message::PublishedMessage;

/// The cluster-wide change an operation makes; `None` for an operation on a session or a
/// gateway's record.
pub(crate) fn shared_change(op: &Op) -> Option<SharedChange> {
    Some(match op {
        Op::PutRetained(message, owner) => {
            let record = MessageRecord::new((0, 0, 0), message)
                .with_publisher(owner.as_ref().map(|owner| owner.to_string()));
            SharedChange::PutRetained {
                topic: message.topic.as_str().to_owned(),
                value: encode(&record).into(),
            }
        }
        Op::DeleteRetained(topic) => SharedChange::DeleteRetained {
            topic: topic.clone(),
        },
        Op::PutDedupe(record) => SharedChange::Dedupe {
            identity: record.identity.clone(),
            message_id: record.message_id,
            at_ms: record.at_ms,
        },
        _ => return None,
    })
}

/// `topic`'s retained value as the log holds it: the message and the identity that set it.
pub(crate) fn retained_value(
    topic: &str,
    value: &[u8],
    limits: &TopicLimits,
) -> Result<(PublishedMessage, Option<String>), RecordError> {
    let mut record = decode::<MessageRecord, _>(value, &topic.to_owned(), |r| r.topic.clone())?;
    let owner = record.publisher.take();
    let message = record
        .into_message(limits, true)
        .ok_or_else(|| RecordError::Malformed(format!("topic {topic:?} is not a valid name")))?;
    Ok((message, owner))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use cassini_protocol::TopicName;

    use super::*;
    use crate::storage::records::DedupeRecord;

    fn message(topic: &str, payload: &'static [u8]) -> PublishedMessage {
        PublishedMessage {
            topic: TopicName::parse(topic, &TopicLimits::default()).expect("topic"),
            headers: Default::default(),
            payload: Bytes::from_static(payload),
            message_id: Some(4),
            reply_to: None,
            retained: true,
            charge: crate::memory::MemoryCharge::none(),
        }
    }

    #[test]
    fn a_retained_value_reads_back_with_its_owner() {
        let op = Op::PutRetained(Arc::new(message("state.a", b"on")), Some(Arc::from("eve")));
        let Some(SharedChange::PutRetained { topic, value }) = shared_change(&op) else {
            panic!("a retained value is a cluster-wide change");
        };
        assert_eq!(topic, "state.a");
        let (read, owner) =
            retained_value(&topic, &value, &TopicLimits::default()).expect("reads back");
        assert_eq!(read.payload, Bytes::from_static(b"on"));
        assert!(read.retained);
        assert_eq!(owner.as_deref(), Some("eve"));
        assert!(
            retained_value("state.b", &value, &TopicLimits::default()).is_err(),
            "a value under another topic is refused"
        );
    }

    #[test]
    fn dedupe_pairs_and_clears_are_cluster_wide_and_session_ops_are_not() {
        let pair = Op::PutDedupe(DedupeRecord {
            at_ms: 7,
            identity: "alice".into(),
            message_id: 9,
        });
        assert_eq!(
            shared_change(&pair),
            Some(SharedChange::Dedupe {
                identity: "alice".into(),
                message_id: 9,
                at_ms: 7
            })
        );
        assert!(matches!(
            shared_change(&Op::DeleteRetained("a".into())),
            Some(SharedChange::DeleteRetained { .. })
        ));
        assert_eq!(shared_change(&Op::DeleteSession(1)), None);
    }
}
