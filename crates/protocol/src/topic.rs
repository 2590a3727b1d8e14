//! Topic names, subscription filters, and matching.
//!
//! A topic name is a non-empty sequence of dot-separated tokens: `orders.eu.created`. A filter is
//! the same with two wildcards, each a whole token: `*` matches exactly one token and `>` (last
//! token only) matches one or more trailing tokens. So `orders.*.created` matches
//! `orders.eu.created`, and `orders.>` matches `orders.eu` and `orders.eu.created` but not `orders`.
//!
//! Rules for both: at most [`TopicLimits::max_bytes`] bytes and [`TopicLimits::max_depth`]
//! tokens, no empty token, no whitespace or control characters. A name never contains `*` or
//! `>`; a filter contains them only as whole tokens. Names starting with `$` are reserved for the
//! broker: clients may not publish to them, and a filter whose first token is a wildcard does not
//! match them. Nor does it match reply inboxes, names whose first token is `_INBOX`
//! ([`crate::inbox`]).

use std::fmt;
use std::sync::Arc;

/// Bounds on topic names and filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopicLimits {
    /// Longest name or filter, in bytes.
    pub max_bytes: usize,
    /// Most tokens in a name or filter.
    pub max_depth: usize,
}

impl Default for TopicLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256,
            max_depth: 16,
        }
    }
}

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// The topic is the empty string.
    #[error("topic is empty")]
    Empty,
    /// The topic is longer than allowed.
    #[error("topic is {len} bytes long, the maximum is {max}")]
    TooLong {
        /// Its length.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// The topic has more tokens than allowed.
    #[error("topic has {depth} tokens, the maximum is {max}")]
    TooDeep {
        /// Its token count.
        depth: usize,
        /// The maximum.
        max: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("token {position} is empty (leading, trailing or doubled '.')")]
    EmptyToken {
        /// Zero-based token index.
        position: usize,
    },
    /// Whitespace or a control character.
    #[error("invalid character {0:?} in topic")]
    InvalidCharacter(char),
    /// A wildcard in a topic name that is published to.
    #[error("wildcards '*' and '>' are not allowed in a published topic")]
    WildcardInName,
    /// A wildcard that is not a whole token, such as `a*`.
    #[error("wildcard in token {position} must be the whole token")]
    PartialWildcard {
        /// Zero-based token index.
        position: usize,
    },
    /// `>` anywhere but the last token.
    #[error("'>' is only allowed as the last token")]
    TailWildcardNotLast,
    /// A name reserved for the broker.
    #[error("topics starting with '$' are reserved for the broker")]
    Reserved,
    /// A name the broker publishes to itself that is not in its reserved space (see
    /// [`TopicName::reserved`]).
    #[error("a broker topic must start with '$'")]
    NotReserved,
}

/// What [`check_common`] found in a topic that passed: whether it holds a wildcard character.
struct Checked {
    has_wildcard: bool,
}

/// The rules names and filters share, checked in one pass over the bytes (every publish is
/// checked, so this is on the hot path). The errors come in a fixed order: empty, too long,
/// the first invalid character, the first empty token, too deep.
fn check_common(topic: &str, limits: &TopicLimits) -> Result<Checked, TopicError> {
    if topic.is_empty() {
        return Err(TopicError::Empty);
    }
    if topic.len() > limits.max_bytes {
        return Err(TopicError::TooLong {
            len: topic.len(),
            max: limits.max_bytes,
        });
    }
    let mut depth = 1;
    let mut token_bytes = 0;
    let mut first_empty_token = None;
    let mut has_wildcard = false;
    for (index, &byte) in topic.as_bytes().iter().enumerate() {
        match byte {
            b'.' => {
                if token_bytes == 0 && first_empty_token.is_none() {
                    first_empty_token = Some(depth - 1);
                }
                depth += 1;
                token_bytes = 0;
                continue;
            }
            b'*' | b'>' => has_wildcard = true,
            // ASCII whitespace and control characters (and space itself).
            0x00..=0x20 | 0x7f => return Err(TopicError::InvalidCharacter(char::from(byte))),
            0x21..=0x7e => {}
            // A UTF-8 lead byte: check the whole character (Unicode whitespace and C1 controls).
            0xc0.. => {
                let bad = topic
                    .get(index..)
                    .and_then(|rest| rest.chars().next())
                    .filter(|c| c.is_whitespace() || c.is_control());
                if let Some(bad) = bad {
                    return Err(TopicError::InvalidCharacter(bad));
                }
            }
            // A UTF-8 continuation byte: its character was checked at its lead byte.
            0x80..=0xbf => {}
        }
        token_bytes += 1;
    }
    if token_bytes == 0 && first_empty_token.is_none() {
        first_empty_token = Some(depth - 1);
    }
    if let Some(position) = first_empty_token {
        return Err(TopicError::EmptyToken { position });
    }
    if depth > limits.max_depth {
        return Err(TopicError::TooDeep {
            depth,
            max: limits.max_depth,
        });
    }
    Ok(Checked { has_wildcard })
}

/// A valid topic name: what a message is published to. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

/// Maps keyed by topic name are looked up by `&str` (hashing and comparing as the string does).
impl std::borrow::Borrow<str> for TopicName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl TopicName {
    /// Validates a name a client wants to publish to.
    pub fn parse(topic: &str, limits: &TopicLimits) -> Result<Self, TopicError> {
        if check_common(topic, limits)?.has_wildcard {
            return Err(TopicError::WildcardInName);
        }
        if topic.starts_with('$') {
            return Err(TopicError::Reserved);
        }
        Ok(Self(Arc::from(topic)))
    }

    /// Validates a name in the broker's reserved space (first token starting with `$`), for
    /// what the broker publishes itself (its system events, `$SYS.>`). Clients can never
    /// publish to such a name: [`TopicName::parse`] refuses it.
    pub fn reserved(topic: &str, limits: &TopicLimits) -> Result<Self, TopicError> {
        if check_common(topic, limits)?.has_wildcard {
            return Err(TopicError::WildcardInName);
        }
        if !topic.starts_with('$') {
            return Err(TopicError::NotReserved);
        }
        Ok(Self(Arc::from(topic)))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The dot-separated tokens.
    pub fn tokens(&self) -> std::str::Split<'_, char> {
        self.0.split('.')
    }

    /// The name made of the first `count` tokens (at least one); the name itself if it has no
    /// more. A prefix of a valid name is valid under the same limits.
    pub fn first_tokens(&self, count: usize) -> TopicName {
        match self.0.match_indices('.').nth(count.max(1) - 1) {
            Some((end, _)) => Self(Arc::from(&self.0[..end])),
            None => self.clone(),
        }
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicName({})", &self.0)
    }
}

/// One token of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterToken<'a> {
    /// Matches exactly this token.
    Literal(&'a str),
    /// `*`: matches any one token.
    AnyOne,
    /// `>`: matches one or more trailing tokens.
    AnyRest,
}

/// A valid subscription filter. Cheap to clone.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicFilter(Arc<str>);

impl TopicFilter {
    /// Validates a filter a client wants to subscribe to.
    pub fn parse(filter: &str, limits: &TopicLimits) -> Result<Self, TopicError> {
        check_common(filter, limits)?;
        let depth = filter.split('.').count();
        for (position, token) in filter.split('.').enumerate() {
            let has_wildcard = token.contains(['*', '>']);
            if has_wildcard && token != "*" && token != ">" {
                return Err(TopicError::PartialWildcard { position });
            }
            if token == ">" && position + 1 != depth {
                return Err(TopicError::TailWildcardNotLast);
            }
        }
        Ok(Self(Arc::from(filter)))
    }

    /// The filter as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens, with wildcards recognised.
    pub fn tokens(&self) -> impl Iterator<Item = FilterToken<'_>> {
        self.0.split('.').map(|token| match token {
            "*" => FilterToken::AnyOne,
            ">" => FilterToken::AnyRest,
            literal => FilterToken::Literal(literal),
        })
    }

    /// Whether the filter has any wildcard.
    pub fn has_wildcards(&self) -> bool {
        self.tokens().any(|t| !matches!(t, FilterToken::Literal(_)))
    }

    /// Whether a message published to `topic` is delivered to this filter.
    pub fn matches(&self, topic: &TopicName) -> bool {
        self.matches_str(topic.as_str())
    }

    fn matches_str(&self, topic: &str) -> bool {
        let mut names = topic.split('.');
        for (position, token) in self.tokens().enumerate() {
            match token {
                FilterToken::AnyRest | FilterToken::AnyOne
                    if position == 0 && crate::inbox::is_reserved_from_wildcards(topic) =>
                {
                    return false
                }
                FilterToken::AnyRest => return names.next().is_some(),
                FilterToken::AnyOne => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                FilterToken::Literal(literal) => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({})", &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> TopicName {
        TopicName::parse(s, &TopicLimits::default()).expect("valid name")
    }

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, &TopicLimits::default()).expect("valid filter")
    }

    #[test]
    fn a_map_keyed_by_topic_name_is_looked_up_by_its_string() {
        let mut map = std::collections::HashMap::new();
        map.insert(name("a.b"), 1);
        assert_eq!(map.get("a.b"), Some(&1));
        assert_eq!(map.get("a.c"), None);
    }

    #[test]
    fn literal_filters_match_only_the_same_topic() {
        assert!(filter("a.b").matches(&name("a.b")));
        assert!(!filter("a.b").matches(&name("a.b.c")));
        assert!(!filter("a.b").matches(&name("a")));
        assert!(!filter("a.b").matches(&name("a.c")));
    }

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(filter("demo.*").matches(&name("demo.x")));
        assert!(!filter("demo.*").matches(&name("demo")));
        assert!(!filter("demo.*").matches(&name("demo.x.y")));
        assert!(filter("*.b.*").matches(&name("a.b.c")));
        assert!(!filter("*.b.*").matches(&name("a.c.c")));
    }

    #[test]
    fn tail_matches_one_or_more_trailing_tokens() {
        assert!(filter("demo.>").matches(&name("demo.x")));
        assert!(filter("demo.>").matches(&name("demo.x.y.z")));
        assert!(!filter("demo.>").matches(&name("demo")));
        assert!(!filter("demo.>").matches(&name("other.x")));
        assert!(filter(">").matches(&name("anything.at.all")));
    }

    #[test]
    fn leading_wildcards_do_not_match_reserved_topics() {
        let reserved = TopicName(Arc::from("$sys.health"));
        assert!(!filter(">").matches(&reserved));
        assert!(!filter("*.health").matches(&reserved));
        assert!(filter("$sys.>").matches(&reserved));
    }

    #[test]
    fn names_refuse_wildcards_and_reserved_prefix() {
        let limits = TopicLimits::default();
        assert_eq!(
            TopicName::parse("a.*", &limits),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::parse("a.>", &limits),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::parse("a*b", &limits),
            Err(TopicError::WildcardInName)
        );
        assert_eq!(
            TopicName::parse("$sys.x", &limits),
            Err(TopicError::Reserved)
        );
    }

    #[test]
    fn only_the_broker_names_reserved_topics() {
        let limits = TopicLimits::default();
        let name = TopicName::reserved("$SYS.event.connect", &limits).expect("reserved");
        assert!(filter("$SYS.>").matches(&name));
        assert!(!filter(">").matches(&name));
        assert_eq!(
            TopicName::reserved("orders.x", &limits),
            Err(TopicError::NotReserved)
        );
        assert_eq!(
            TopicName::reserved("$SYS.*", &limits),
            Err(TopicError::WildcardInName)
        );
    }

    #[test]
    fn malformed_topics_are_refused_with_the_reason() {
        let limits = TopicLimits::default();
        assert_eq!(TopicName::parse("", &limits), Err(TopicError::Empty));
        assert_eq!(
            TopicName::parse("a..b", &limits),
            Err(TopicError::EmptyToken { position: 1 })
        );
        assert_eq!(
            TopicName::parse(".a", &limits),
            Err(TopicError::EmptyToken { position: 0 })
        );
        assert_eq!(
            TopicName::parse("a.", &limits),
            Err(TopicError::EmptyToken { position: 1 })
        );
        assert_eq!(
            TopicName::parse("a b", &limits),
            Err(TopicError::InvalidCharacter(' '))
        );
        assert_eq!(
            TopicName::parse("a\u{0}", &limits),
            Err(TopicError::InvalidCharacter('\u{0}'))
        );
    }

    #[test]
    fn filters_refuse_misplaced_wildcards() {
        let limits = TopicLimits::default();
        assert_eq!(
            TopicFilter::parse("a.>.b", &limits),
            Err(TopicError::TailWildcardNotLast)
        );
        assert_eq!(
            TopicFilter::parse("a.b*", &limits),
            Err(TopicError::PartialWildcard { position: 1 })
        );
        assert_eq!(
            TopicFilter::parse("a.>>", &limits),
            Err(TopicError::PartialWildcard { position: 1 })
        );
    }

    #[test]
    fn limits_bound_length_and_depth() {
        let limits = TopicLimits {
            max_bytes: 8,
            max_depth: 3,
        };
        assert!(TopicName::parse("a.b.c", &limits).is_ok());
        assert_eq!(
            TopicName::parse("a.b.c.d", &limits),
            Err(TopicError::TooDeep { depth: 4, max: 3 })
        );
        assert_eq!(
            TopicFilter::parse("abcdefghi", &limits),
            Err(TopicError::TooLong { len: 9, max: 8 })
        );
    }

    #[test]
    fn filters_report_their_tokens() {
        let parsed = filter("a.*.>");
        let tokens: Vec<_> = parsed.tokens().collect();
        assert_eq!(
            tokens,
            vec![
                FilterToken::Literal("a"),
                FilterToken::AnyOne,
                FilterToken::AnyRest
            ]
        );
        assert!(filter("a.*").has_wildcards());
        assert!(!filter("a.b").has_wildcards());
    }

    #[test]
    fn first_tokens_is_the_prefix_of_that_many_tokens() {
        let topic = name("_INBOX.alice.00ff.17");
        assert_eq!(topic.first_tokens(3).as_str(), "_INBOX.alice.00ff");
        assert_eq!(topic.first_tokens(1).as_str(), "_INBOX");
        assert_eq!(topic.first_tokens(0).as_str(), "_INBOX");
        assert_eq!(topic.first_tokens(4), topic);
        assert_eq!(topic.first_tokens(9), topic);
        assert_eq!(name("a").first_tokens(3).as_str(), "a");
    }
}
