//! How reply inboxes are named, so that each belongs to one certificate identity.
//!
//! A client's inbox is `_INBOX.<identity token>.<random>`: the broker lets an identity
//! subscribe to its own inboxes only (see the ACL), so no client can read another's replies.
//! The identity token is [`identity_token`]: the identity's UTF-8 bytes, percent-encoded so that
//! the result is one topic token. Both the client (which reads its identity from `Welcome`) and
//! the broker's `{identity}` substitution in ACL patterns use it; `docs/PROTOCOL.md` states it for
//! clients in other languages.
//!
//! Inbox topics are reserved from leading wildcards, like system topics: a filter whose first
//! token is `*` or `>` does not match `_INBOX.…` ([`is_reserved_from_wildcards`]).

/// The first token of every reply inbox topic.
pub const INBOX_TOKEN: &str = "_INBOX";

/// Bytes an identity token keeps as they are: ASCII letters, digits, `-`, `_` and `~`. Every
/// other byte becomes `%` and two upper-case hex digits.
fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'~')
}

/// `identity` as one topic token: each byte of its UTF-8 form that is not an ASCII letter, digit,
/// `-`, `_` or `~` is written `%XX` (upper-case hex). The encoding is reversible (percent-decode
/// it), so two identities never share a token; the token holds no `.`, `*`, `>`, `$`, whitespace
/// or control character.
///
/// `alice` stays `alice`; `svc.example.org` is `svc%2Eexample%2Eorg`;
/// `spiffe://x.org/y` is `spiffe%3A%2F%2Fx%2Eorg%2Fy`.
pub fn identity_token(identity: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut token = String::with_capacity(identity.len());
    for &byte in identity.as_bytes() {
        if is_unreserved(byte) {
            token.push(char::from(byte));
        } else {
            token.push('%');
            token.push(char::from(HEX[usize::from(byte >> 4)]));
            token.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
    token
}

/// The prefix every inbox of `identity` starts with: `_INBOX.<identity token>`.
pub fn inbox_prefix(identity: &str) -> String {
    format!("{INBOX_TOKEN}.{}", identity_token(identity))
}

/// Whether `topic` (a name or a filter) is one that a filter starting with a wildcard never
/// matches: a system topic (first token starting with `$`) or an inbox (first token `_INBOX`).
pub fn is_reserved_from_wildcards(topic: &str) -> bool {
    topic.starts_with('$') || is_inbox_token(topic.split('.').next().unwrap_or(topic))
}

/// Whether a first token is reserved from leading wildcards (see
/// [`is_reserved_from_wildcards`]).
pub fn is_reserved_first_token(token: &str) -> bool {
    token.starts_with('$') || is_inbox_token(token)
}

fn is_inbox_token(token: &str) -> bool {
    token == INBOX_TOKEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{TopicFilter, TopicLimits, TopicName};

    #[test]
    fn plain_names_stay_as_they_are() {
        assert_eq!(identity_token("alice"), "alice");
        assert_eq!(identity_token("svc-echo_2~x"), "svc-echo_2~x");
        assert_eq!(inbox_prefix("alice"), "_INBOX.alice");
    }

    #[test]
    fn other_bytes_are_percent_encoded_in_upper_case() {
        assert_eq!(identity_token("svc.example.org"), "svc%2Eexample%2Eorg");
        assert_eq!(
            identity_token("spiffe://x.org/y"),
            "spiffe%3A%2F%2Fx%2Eorg%2Fy"
        );
        assert_eq!(identity_token("a b*>$%"), "a%20b%2A%3E%24%25");
        assert_eq!(identity_token("é"), "%C3%A9");
    }

    #[test]
    fn distinct_identities_get_distinct_tokens() {
        // Without escaping `%` itself, "a%2E" and "a." would collide.
        assert_ne!(identity_token("a%2E"), identity_token("a."));
        assert_ne!(identity_token("a.b"), identity_token("a%2Eb"));
    }

    #[test]
    fn a_token_is_always_one_valid_topic_token() {
        let limits = TopicLimits::default();
        for identity in [
            "alice",
            "a.b.c",
            "*",
            ">",
            "$SYS",
            "x y\t\n",
            "spiffe://a/b",
            "é.€",
        ] {
            let topic = format!("{}.1", inbox_prefix(identity));
            let name = TopicName::parse(&topic, &limits).expect("a valid topic");
            assert_eq!(name.tokens().count(), 3, "{identity:?} -> {topic}");
        }
    }

    #[test]
    fn leading_wildcards_do_not_match_inboxes() {
        let limits = TopicLimits::default();
        let inbox = TopicName::parse("_INBOX.alice.1", &limits).expect("topic");
        for filter in [">", "*.>", "*.alice.1"] {
            let filter = TopicFilter::parse(filter, &limits).expect("filter");
            assert!(!filter.matches(&inbox), "{filter}");
        }
        let own = TopicFilter::parse("_INBOX.alice.>", &limits).expect("filter");
        assert!(own.matches(&inbox));
        let lookalike = TopicName::parse("_INBOXES.x", &limits).expect("topic");
        let any = TopicFilter::parse(">", &limits).expect("filter");
        assert!(any.matches(&lookalike), "only the exact token is reserved");
        assert!(is_reserved_from_wildcards("_INBOX"));
        assert!(is_reserved_from_wildcards("$SYS.x"));
        assert!(!is_reserved_from_wildcards("_INBOXES.x"));
    }
}
