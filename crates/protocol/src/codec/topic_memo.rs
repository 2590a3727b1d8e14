//! [`TopicMemo`]: the topic string a stream's reader hands back after each frame, so that the
//! next frame naming the same topic costs no UTF-8 check, no allocation and no copy.

/// A memo's topic is kept only up to this capacity: a reader never holds on to a large string
/// a peer once sent. Twice the broker's default topic limit (`limits.topics.max_bytes`, 256),
/// so what a stream keeps beside its frame buffer is at most this much.
pub const MAX_KEPT_TOPIC_BYTES: usize = 512;

/// The topic of the last `Publish` or `Message` one stream's reader decoded, given back once the
/// reader is done with it ([`TopicMemo::give_back`]). A stream usually carries one topic over and
/// over: a frame whose topic has the same bytes takes the string again as it is (the bytes were
/// checked to be UTF-8 when it was first decoded); a frame with another topic reuses its
/// allocation when it fits. Decoding with a memo gives the same frames as without one.
#[derive(Debug, Default)]
pub struct TopicMemo {
    spare: Option<String>,
}

impl TopicMemo {
    /// Keeps `topic` for the next frame (unless its capacity is above
    /// [`MAX_KEPT_TOPIC_BYTES`]).
    pub fn give_back(&mut self, topic: String) {
        if topic.capacity() <= MAX_KEPT_TOPIC_BYTES {
            self.spare = Some(topic);
        }
    }

    /// The string given back last, or an empty one, for a decoder to fill ([`reuse_for`]).
    pub(crate) fn take(&mut self) -> String {
        self.spare.take().unwrap_or_default()
    }
}

/// Makes `topic` hold `bytes`: kept as it is when they are its bytes (no UTF-8 check, no
/// copy), else checked and copied into its allocation, which is kept only up to
/// [`MAX_KEPT_TOPIC_BYTES`]; `None` if they are not UTF-8.
pub(crate) fn reuse_for(topic: &mut String, bytes: &[u8]) -> Option<()> {
    if topic.as_bytes() == bytes {
        return Some(());
    }
    let text = std::str::from_utf8(bytes).ok()?;
    if topic.capacity() > MAX_KEPT_TOPIC_BYTES {
        *topic = text.to_owned();
    } else {
        topic.clear();
        topic.push_str(text);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a decoder does with a memo: takes its string and fills it with `bytes`.
    fn topic(memo: &mut TopicMemo, bytes: &[u8]) -> Option<String> {
        let mut topic = memo.take();
        reuse_for(&mut topic, bytes)?;
        Some(topic)
    }

    #[test]
    fn the_same_topic_again_is_the_string_given_back() {
        let mut memo = TopicMemo::default();
        let first = topic(&mut memo, b"sensors.kitchen").expect("utf-8");
        let at = first.as_ptr();
        memo.give_back(first);
        let again = topic(&mut memo, b"sensors.kitchen").expect("utf-8");
        assert_eq!(again, "sensors.kitchen");
        assert_eq!(again.as_ptr(), at, "the same allocation, not a copy");
    }

    #[test]
    fn another_topic_is_checked_and_reuses_the_allocation() {
        let mut memo = TopicMemo::default();
        let mut first = String::with_capacity(64);
        first.push_str("sensors.kitchen");
        let at = first.as_ptr();
        memo.give_back(first);
        let other = topic(&mut memo, "sensors.hall.ünï".as_bytes()).expect("utf-8");
        assert_eq!(other, "sensors.hall.ünï");
        assert_eq!(other.as_ptr(), at);
        memo.give_back(other);
        assert_eq!(topic(&mut memo, b"bad.\xff"), None, "not UTF-8");
        assert_eq!(topic(&mut memo, b"after").as_deref(), Some("after"));
    }

    #[test]
    fn a_large_string_is_not_kept() {
        let mut memo = TopicMemo::default();
        memo.give_back("x".repeat(MAX_KEPT_TOPIC_BYTES + 1));
        assert!(memo.spare.is_none());
        memo.give_back("x".repeat(MAX_KEPT_TOPIC_BYTES));
        assert!(memo.spare.is_some());
    }
}
