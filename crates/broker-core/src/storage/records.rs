//! The records the disk store keeps, and their checksummed encoding.
//!
//! Every stored value is `crc32c (4 bytes, little endian) ++ MessagePack body`; the checksum
//! covers the body. Each body repeats its own key, and [`decode`] checks both, so a flipped
//! byte in a value or a value stored under the wrong key is reported, never used. No I/O here.

use bytes::Bytes;
use cassini_protocol::{Headers, SubscribeOptions, TopicLimits, TopicName};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::message::PublishedMessage;

/// A session: who owns it and since when it is detached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The session id.
    pub(crate) id: u128,
    /// The certificate identity that created it.
    pub(crate) identity: String,
    /// The highest subscription id it ever assigned (ids are never reused).
    pub(crate) last_subscription: u64,
    /// When its connection dropped, in milliseconds since the Unix epoch; `None` while
    /// attached.
    pub(crate) detached_at_ms: Option<u64>,
    /// The session's name, if a `Hello` named it (unique per identity); `None` for an unnamed
    /// session and every record written before sessions had names (the field is last and
    /// defaults, so those records still decode).
    #[serde(default)]
    pub(crate) name: Option<String>,
    /// How long the session outlives its connection, when its client asked for a time of its
    /// own (an MQTT 5 Session Expiry Interval, already capped by `sessions.expiry`), in
    /// milliseconds; `None`: `sessions.expiry`, and every record written before this field
    /// (last, and defaulting, so those records still decode).
    #[serde(default)]
    pub(crate) expiry_ms: Option<u64>,
}

/// A subscription of a session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubscriptionRecord {
    /// The owning session.
    pub(crate) session: u128,
    /// Its id in the session.
    pub(crate) subscription: u64,
    /// The filter, as the client sent it.
    pub(crate) filter: String,
    /// The options it was made with.
    pub(crate) options: SubscribeOptions,
}

/// The last sequence number a subscription assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SequenceRecord {
    /// The owning session.
    pub(crate) session: u128,
    /// The subscription.
    pub(crate) subscription: u64,
    /// The last sequence assigned.
    pub(crate) last_sequence: u64,
}

/// A message: queued or unacknowledged in an at-least-once subscription (with its position),
/// or a retained value (position 0).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageRecord {
    /// The owning session (0 for a retained value).
    pub(crate) session: u128,
    /// The subscription (0 for a retained value).
    pub(crate) subscription: u64,
    /// The sequence in the subscription (0 for a retained value).
    pub(crate) sequence: u64,
    /// The topic.
    pub(crate) topic: String,
    /// Application headers.
    pub(crate) headers: Headers,
    /// The payload.
    pub(crate) payload: Bytes,
    /// The publisher's message id.
    pub(crate) message_id: Option<u64>,
    /// Where a reply goes.
    pub(crate) reply_to: Option<String>,
    /// The identity that set a retained value, for its quota; `None` for a queued message, a
    /// value the embedding program set, and every record written before values recorded their
    /// owner (the field is last and defaults, so those records still decode).
    #[serde(default)]
    pub(crate) publisher: Option<String>,
}

impl MessageRecord {
    pub(crate) fn new(
        (session, subscription, sequence): (u128, u64, u64),
        message: &PublishedMessage,
    ) -> Self {
        Self {
            session,
            subscription,
            sequence,
            topic: message.topic.as_str().to_string(),
            headers: message.headers.clone(),
            payload: message.payload.clone(),
            message_id: message.message_id,
            reply_to: message.reply_to.clone(),
            publisher: None,
        }
    }

    /// The same record naming the identity that set it (a retained value).
    pub(crate) fn with_publisher(self, publisher: Option<String>) -> Self {
        Self { publisher, ..self }
    }

    /// The broker's in-memory form; `None` if the stored topic is no longer a valid name.
    pub(crate) fn into_message(
        self,
        limits: &TopicLimits,
        retained: bool,
    ) -> Option<PublishedMessage> {
        let topic = TopicName::parse(&self.topic, limits).ok()?;
        Some(PublishedMessage {
            topic,
            headers: self.headers,
            payload: self.payload,
            message_id: self.message_id,
            reply_to: self.reply_to,
            retained,
            charge: crate::memory::MemoryCharge::none(),
        })
    }
}

/// An accepted acknowledged publish, for the dedupe window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DedupeRecord {
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub(crate) at_ms: u64,
    /// The publisher's certificate identity.
    pub(crate) identity: String,
    /// Its message id.
    pub(crate) message_id: u64,
}

/// A record a gateway in the broker's process keeps in the store (the MQTT gateway's waiting
/// wills and subscription options), opaque to the broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GatewayRecord {
    /// Its key, chosen by the gateway (`mqtt/...`).
    pub(crate) key: String,
    /// Its value, in the gateway's own encoding.
    pub(crate) value: Bytes,
}

/// Why a stored value could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    /// Fewer bytes than a checksum.
    #[error("record of {0} bytes is shorter than its checksum (torn write?)")]
    Truncated(usize),
    /// The checksum does not match the body.
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// The stored checksum.
        stored: u32,
        /// The checksum of the bytes read.
        computed: u32,
    },
    /// The body does not decode.
    #[error("undecodable record: {0}")]
    Malformed(String),
    /// The body names another key than the one it is stored under.
    #[error("record names another key than the one it is stored under")]
    WrongKey,
}

/// Encodes a record with its checksum.
pub(crate) fn encode<T: Serialize>(record: &T) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serializing plain structs of strings, numbers and bytes into a Vec cannot fail.
    if rmp_serde::encode::write(&mut out, record).is_err() {
        out.truncate(4);
    }
    let crc = crc32c::crc32c(&out[4..]);
    out[..4].copy_from_slice(&crc.to_le_bytes());
    out
}

/// Checks the checksum, decodes, and checks that the record names `expected_key`.
pub(crate) fn decode<T: DeserializeOwned, K: PartialEq>(
    bytes: &[u8],
    expected_key: &K,
    key_of: impl FnOnce(&T) -> K,
) -> Result<T, RecordError> {
    if bytes.len() < 4 {
        return Err(RecordError::Truncated(bytes.len()));
    }
    let (stored, body) = bytes.split_at(4);
    let stored = u32::from_le_bytes([stored[0], stored[1], stored[2], stored[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(RecordError::Checksum { stored, computed });
    }
    let record: T =
        rmp_serde::from_slice(body).map_err(|err| RecordError::Malformed(err.to_string()))?;
    if key_of(&record) != *expected_key {
        return Err(RecordError::WrongKey);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> SequenceRecord {
        SequenceRecord {
            session: 7,
            subscription: 2,
            last_sequence: 99,
        }
    }

    fn key(r: &SequenceRecord) -> (u128, u64) {
        (r.session, r.subscription)
    }

    #[test]
    fn a_record_round_trips() {
        let bytes = encode(&record());
        assert_eq!(decode(&bytes, &(7, 2), key), Ok(record()));
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let bytes = encode(&record());
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            assert!(
                decode::<SequenceRecord, _>(&bad, &(7, 2), key).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn a_torn_record_is_detected() {
        let bytes = encode(&record());
        assert_eq!(
            decode::<SequenceRecord, _>(&bytes[..3], &(7, 2), key),
            Err(RecordError::Truncated(3))
        );
        assert!(decode::<SequenceRecord, _>(&bytes[..bytes.len() - 1], &(7, 2), key).is_err());
    }

    /// A session record as stored before sessions had names.
    #[derive(Serialize)]
    struct SessionRecordWithoutName {
        id: u128,
        identity: String,
        last_subscription: u64,
        detached_at_ms: Option<u64>,
    }

    #[test]
    fn a_session_record_written_before_names_still_decodes() {
        let old = encode(&SessionRecordWithoutName {
            id: 7,
            identity: "alice".into(),
            last_subscription: 3,
            detached_at_ms: Some(5),
        });
        let decoded = decode::<SessionRecord, _>(&old, &7, |r| r.id);
        assert_eq!(
            decoded,
            Ok(SessionRecord {
                id: 7,
                identity: "alice".into(),
                last_subscription: 3,
                detached_at_ms: Some(5),
                name: None,
                expiry_ms: None,
            })
        );
        let named = SessionRecord {
            name: Some("kitchen".into()),
            expiry_ms: Some(2_000),
            ..SessionRecord::clone(decoded.as_ref().expect("decoded"))
        };
        assert_eq!(
            decode(&encode(&named), &7, |r: &SessionRecord| r.id),
            Ok(named)
        );
    }

    /// A message record as stored before retained values recorded their publisher.
    #[derive(Serialize)]
    struct MessageRecordWithoutPublisher {
        session: u128,
        subscription: u64,
        sequence: u64,
        topic: String,
        headers: Headers,
        payload: Bytes,
        message_id: Option<u64>,
        reply_to: Option<String>,
    }

    #[test]
    fn a_message_record_written_before_publishers_were_recorded_still_decodes() {
        let old = encode(&MessageRecordWithoutPublisher {
            session: 0,
            subscription: 0,
            sequence: 0,
            topic: "state.a".into(),
            headers: Headers::default(),
            payload: Bytes::from_static(b"v"),
            message_id: Some(3),
            reply_to: None,
        });
        let record: MessageRecord = decode(&old, &"state.a".to_string(), |r: &MessageRecord| {
            r.topic.clone()
        })
        .expect("an old record decodes");
        assert_eq!(record.publisher, None);
        assert_eq!(record.message_id, Some(3));

        let new = MessageRecord {
            publisher: Some("alice".into()),
            ..record
        };
        let read: MessageRecord = decode(
            &encode(&new),
            &"state.a".to_string(),
            |r: &MessageRecord| r.topic.clone(),
        )
        .expect("a new record decodes");
        assert_eq!(read.publisher.as_deref(), Some("alice"));
    }

    #[test]
    fn a_record_under_another_key_is_refused() {
        let bytes = encode(&record());
        assert_eq!(
            decode::<SequenceRecord, _>(&bytes, &(7, 3), key),
            Err(RecordError::WrongKey)
        );
    }
}
