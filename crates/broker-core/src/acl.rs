//! Authorization: which certificate identity may publish to which topics and subscribe to which
//! filters.
//!
//! This module owns the ACL's rules and the two decisions the broker asks of them,
//! [`Acl::may_publish`] and [`Acl::may_subscribe`]; the file format lives in [`file`]. It does
//! not know where identities come from (the transport reads them from certificates) and does not
//! reload anything itself: the broker holds the current ACL behind an [`arc_swap::ArcSwap`]
//! ([`AclHandle`]) so that a reload swaps it without a lock on the publish path.
//!
//! # Decisions
//!
//! The rules that apply to an identity are those whose identity pattern matches it (a pattern is
//! exact, or uses `*` for any run of characters). For a **publish** to topic `t`: if a deny
//! pattern of an applying rule matches `t`, it is denied; else if an allow pattern matches `t`,
//! it is allowed; else the ACL's default decides. For a **subscription** to filter `f`: if `f`
//! could receive any topic a deny pattern matches (the two overlap), it is denied; else if an
//! allow pattern covers every topic `f` can match, it is allowed; else the default decides.
//!
//! **System topics** (first token starting with `$`) are reserved: the default never grants
//! them and a pattern whose first token is a wildcard never matches them, so only an allow
//! pattern that names the `$` token literally lets a client subscribe to one. Clients can never
//! publish to them (the topic rules refuse it before the ACL is asked).

pub mod file;

use std::sync::Arc;

use arc_swap::ArcSwap;
use cassini_protocol::topic::FilterToken;
use cassini_protocol::{TopicFilter, TopicName};

pub use file::AclError;

/// What applies to a topic that no rule mentions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefaultDecision {
    /// Allowed.
    Allow,
    /// Refused with `NOT_AUTHORIZED`.
    Deny,
}

/// Topic patterns of one kind of action: the allowed and the denied.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Patterns {
    /// Filters the action is allowed on.
    pub allow: Vec<TopicFilter>,
    /// Filters the action is denied on; a deny wins over an allow.
    pub deny: Vec<TopicFilter>,
}

/// One rule: the identities it applies to and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Identity patterns: exact, or with `*` matching any run of characters.
    pub identities: Vec<IdentityPattern>,
    /// What these identities may publish to.
    pub publish: Patterns,
    /// What these identities may subscribe to.
    pub subscribe: Patterns,
}

/// An identity pattern: literal text in which `*` matches any run of characters (none too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityPattern(String);

impl IdentityPattern {
    /// A pattern from its text.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `identity` matches the pattern.
    pub fn matches(&self, identity: &str) -> bool {
        glob_matches(self.0.as_bytes(), identity.as_bytes())
    }
}

/// Iterative `*` matching (linear backtracking to the last star), so no pattern can make a check
/// take more than `pattern.len() * identity.len()` steps.
fn glob_matches(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star_p, star_t)) = star {
            p = star_p + 1;
            t = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// The authorization rules. Without an ACL file the broker uses [`Acl::allow_all`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// What applies to a topic or filter no rule mentions.
    pub default: DefaultDecision,
    /// The rules, in file order (order does not change any decision).
    pub rules: Vec<Rule>,
    /// Whether this is the built-in allow-everything ACL (no file given).
    pub allows_all: bool,
}

impl Acl {
    /// Every authenticated client may publish and subscribe to every non-system topic.
    pub fn allow_all() -> Self {
        Self {
            default: DefaultDecision::Allow,
            rules: Vec::new(),
            allows_all: true,
        }
    }

    /// What `identity` may do: the patterns of every rule that applies to it, merged.
    pub fn permissions(&self, identity: &str) -> Permissions {
        let mut permissions = Permissions {
            default: self.default,
            publish: Patterns::default(),
            subscribe: Patterns::default(),
        };
        for rule in &self.rules {
            if rule.identities.iter().any(|p| p.matches(identity)) {
                permissions.publish.extend(&rule.publish);
                permissions.subscribe.extend(&rule.subscribe);
            }
        }
        permissions
    }

    /// Whether `identity` may publish to `topic`.
    pub fn may_publish(&self, identity: &str, topic: &TopicName) -> bool {
        self.permissions(identity).may_publish(topic)
    }

    /// Whether `identity` may subscribe to `filter`.
    pub fn may_subscribe(&self, identity: &str, filter: &TopicFilter) -> bool {
        self.permissions(identity).may_subscribe(filter)
    }
}

impl Default for Acl {
    fn default() -> Self {
        Self::allow_all()
    }
}

impl Patterns {
    fn extend(&mut self, other: &Patterns) {
        self.allow.extend(other.allow.iter().cloned());
        self.deny.extend(other.deny.iter().cloned());
    }
}

/// The patterns that apply to one identity. Computed once per identity and ACL version, then
/// asked for every publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    default: DefaultDecision,
    publish: Patterns,
    subscribe: Patterns,
}

impl Permissions {
    /// Whether a publish to `topic` is allowed.
    pub fn may_publish(&self, topic: &TopicName) -> bool {
        if self.publish.deny.iter().any(|deny| deny.matches(topic)) {
            return false;
        }
        if self.publish.allow.iter().any(|allow| allow.matches(topic)) {
            return true;
        }
        self.default == DefaultDecision::Allow && !topic.as_str().starts_with('$')
    }

    /// Whether a subscription to `filter` is allowed.
    pub fn may_subscribe(&self, filter: &TopicFilter) -> bool {
        if self
            .subscribe
            .deny
            .iter()
            .any(|deny| overlaps(deny, filter))
        {
            return false;
        }
        if self
            .subscribe
            .allow
            .iter()
            .any(|allow| covers(allow, filter))
        {
            return true;
        }
        self.default == DefaultDecision::Allow && !filter.as_str().starts_with('$')
    }
}

fn is_system(token: FilterToken<'_>) -> bool {
    matches!(token, FilterToken::Literal(literal) if literal.starts_with('$'))
}

fn is_wildcard(token: FilterToken<'_>) -> bool {
    !matches!(token, FilterToken::Literal(_))
}

/// Whether every topic `filter` matches is also matched by `pattern`.
pub fn covers(pattern: &TopicFilter, filter: &TopicFilter) -> bool {
    let mut wanted = filter.tokens();
    for (position, allowed) in pattern.tokens().enumerate() {
        let Some(token) = wanted.next() else {
            return false;
        };
        if position == 0 && is_wildcard(allowed) && is_system(token) {
            return false;
        }
        match (allowed, token) {
            (FilterToken::AnyRest, _) => return true,
            (FilterToken::AnyOne, FilterToken::AnyRest) => return false,
            (FilterToken::AnyOne, _) => {}
            (FilterToken::Literal(a), FilterToken::Literal(b)) if a == b => {}
            (FilterToken::Literal(_), _) => return false,
        }
    }
    wanted.next().is_none()
}

/// Whether some topic is matched by both `a` and `b`.
pub fn overlaps(a: &TopicFilter, b: &TopicFilter) -> bool {
    let mut left = a.tokens();
    let mut right = b.tokens();
    let mut position = 0;
    loop {
        match (left.next(), right.next()) {
            (None, None) => return true,
            (None, Some(_)) | (Some(_), None) => return false,
            (Some(x), Some(y)) => {
                if position == 0
                    && ((is_wildcard(x) && is_system(y)) || (is_system(x) && is_wildcard(y)))
                {
                    return false;
                }
                match (x, y) {
                    (FilterToken::AnyRest, _) | (_, FilterToken::AnyRest) => return true,
                    (FilterToken::Literal(p), FilterToken::Literal(q)) if p != q => return false,
                    _ => {}
                }
            }
        }
        position += 1;
    }
}

/// The broker's current ACL, swapped atomically on reload. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct AclHandle(Arc<ArcSwap<Acl>>);

impl AclHandle {
    /// A handle holding `acl`.
    pub fn new(acl: Acl) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(acl)))
    }

    /// The current ACL.
    pub fn current(&self) -> Arc<Acl> {
        self.0.load_full()
    }

    /// Replaces the ACL; checks made from now on use `acl`.
    pub fn replace(&self, acl: Acl) {
        self.0.store(Arc::new(acl));
    }
}

impl Default for AclHandle {
    fn default() -> Self {
        Self::new(Acl::allow_all())
    }
}

/// Caches one identity's [`Permissions`] for as long as the ACL is not replaced, so the publish
/// path does not re-match identity patterns for every message.
#[derive(Debug)]
pub(crate) struct PermissionCache {
    acl: Arc<Acl>,
    permissions: Permissions,
}

impl PermissionCache {
    pub(crate) fn new(handle: &AclHandle, identity: &str) -> Self {
        let acl = handle.current();
        let permissions = acl.permissions(identity);
        Self { acl, permissions }
    }

    /// The permissions under the current ACL, recomputed only after a reload.
    pub(crate) fn get(&mut self, handle: &AclHandle, identity: &str) -> &Permissions {
        let current = handle.current();
        if !Arc::ptr_eq(&current, &self.acl) {
            self.permissions = current.permissions(identity);
            self.acl = current;
        }
        &self.permissions
    }
}

#[cfg(test)]
mod tests;
