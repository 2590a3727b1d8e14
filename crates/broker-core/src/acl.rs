//! Authorization: which certificate identity may publish to which topics, subscribe to which
//! filters, ask for replies where, and join which queue groups.
//!
//! This module owns the ACL's rules and the decisions the broker asks of them
//! ([`Permissions::may_publish`], [`Permissions::may_subscribe`],
//! [`Permissions::may_receive`] for a request's `reply_to`, [`Permissions::may_join_queue`]);
//! the file format lives in [`file`](mod@file). It does not know where identities come from (the
//! transport reads them from certificates) and does not reload anything itself: the broker
//! holds the current ACL behind an [`arc_swap::ArcSwap`] ([`AclHandle`]) so that a reload swaps
//! it without a lock on the publish path.
//!
//! # Decisions
//!
//! The rules that apply to an identity are those whose identity pattern matches it (a pattern is
//! exact, or uses `*` for any run of characters). In their topic patterns `{identity}` stands
//! for the identity's token ([`cassini_protocol::inbox::identity_token`]). For a **publish** to
//! topic `t`: if a deny pattern of an applying rule matches `t`, it is denied; else if an allow
//! pattern matches `t`, it is allowed; else the ACL's default decides. For a **subscription** to
//! filter `f`: if `f` could receive any topic a deny pattern matches (the two overlap), it is
//! denied; else if an allow pattern covers every topic `f` can match, or `f` is inside the
//! identity's own inboxes (`_INBOX.{identity}.>`), it is allowed; else the default decides.
//! A publish with a `reply_to` is allowed only if its publisher could subscribe to the
//! `reply_to` topic itself ([`Permissions::may_receive`]), so replies go only where the
//! requester may read.
//!
//! **Reserved topics**: system topics (first token starting with `$`) and reply inboxes (first
//! token `_INBOX`). The default never grants a subscription to them, and a pattern whose first
//! token is a wildcard never matches them (nor does such a subscription filter: the router
//! delivers nothing under them to it), so only a pattern that names the `$` or `_INBOX` token
//! literally speaks about them. Clients can never publish to system topics (the topic rules
//! refuse it before the ACL is asked); an inbox is published to like any topic.
//!
//! **Queue groups**: a group is *reserved* when some rule's `queue` pattern names it. Joining a
//! reserved group needs a `queue` pattern of an applying rule; a `deny_queue` pattern always
//! refuses. A group no rule names may be joined by whoever may subscribe to the filter.

pub mod file;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use cassini_protocol::inbox::{
    identity_token, inbox_prefix, is_reserved_first_token, is_reserved_from_wildcards,
};
use cassini_protocol::topic::FilterToken;
use cassini_protocol::{TopicFilter, TopicLimits, TopicName};

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

/// What `{identity}` in a topic pattern stands for: the identity's token
/// ([`identity_token`]).
pub const IDENTITY_PLACEHOLDER: &str = "{identity}";

/// Bounds on a pattern after `{identity}` was substituted: the pattern was checked when the ACL
/// was read, and an identity token adds neither a token nor a forbidden character, so only its
/// length could break a bound; the certificate bounds the identity's length.
const SUBSTITUTED_LIMITS: TopicLimits = TopicLimits {
    max_bytes: usize::MAX,
    max_depth: usize::MAX,
};

/// Queue-group name patterns of one rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueuePatterns {
    /// Groups these identities may join. Naming a group here also reserves it: identities no
    /// applying rule allows may not join it.
    pub allow: Vec<GroupPattern>,
    /// Groups these identities may never join; a deny wins over an allow.
    pub deny: Vec<GroupPattern>,
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
    /// Which queue groups these identities may join.
    pub queue: QueuePatterns,
}

/// A name pattern: literal text in which `*` matches any run of characters (none too).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePattern(String);

/// A queue-group name pattern.
pub type GroupPattern = NamePattern;

/// An identity pattern.
pub type IdentityPattern = NamePattern;

impl NamePattern {
    /// A pattern from its text.
    pub fn new(pattern: impl Into<String>) -> Self {
        Self(pattern.into())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` (a queue group's or an identity) matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob_matches(self.0.as_bytes(), name.as_bytes())
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

    /// What `identity` may do: the patterns of every rule that applies to it, merged, with
    /// `{identity}` replaced by its token.
    pub fn permissions(&self, identity: &str) -> Permissions {
        let token = identity_token(identity);
        let own_inbox = TopicFilter::parse(
            &format!("{}.>", inbox_prefix(identity)),
            &SUBSTITUTED_LIMITS,
        )
        .ok();
        let mut permissions = Permissions {
            default: self.default,
            publish: Patterns::default(),
            subscribe: Patterns::default(),
            own_inbox,
            queue: QueuePatterns::default(),
            reserved_queues: Vec::new(),
        };
        for rule in &self.rules {
            permissions
                .reserved_queues
                .extend(rule.queue.allow.iter().cloned());
            if !rule.identities.iter().any(|p| p.matches(identity)) {
                continue;
            }
            let (Some(publish), Some(subscribe)) = (
                rule.publish.for_identity(&token),
                rule.subscribe.for_identity(&token),
            ) else {
                // Cannot happen (see SUBSTITUTED_LIMITS); if it did, refuse everything rather
                // than drop a deny pattern.
                tracing::warn!(%identity, "an ACL pattern could not take the identity; denying it everything");
                return Permissions::nothing();
            };
            permissions.publish.extend(&publish);
            permissions.subscribe.extend(&subscribe);
            permissions
                .queue
                .allow
                .extend(rule.queue.allow.iter().cloned());
            permissions
                .queue
                .deny
                .extend(rule.queue.deny.iter().cloned());
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

    /// Whether `identity` may ask for replies on `reply_to`.
    pub fn may_receive(&self, identity: &str, reply_to: &TopicName) -> bool {
        self.permissions(identity).may_receive(reply_to)
    }

    /// Whether `identity` may join the queue group `group`.
    pub fn may_join_queue(&self, identity: &str, group: &str) -> bool {
        self.permissions(identity).may_join_queue(group)
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

    /// These patterns with `{identity}` replaced by `token`; `None` if one no longer parses.
    fn for_identity(&self, token: &str) -> Option<Patterns> {
        Some(Patterns {
            allow: substituted(&self.allow, token)?,
            deny: substituted(&self.deny, token)?,
        })
    }
}

fn substituted(patterns: &[TopicFilter], token: &str) -> Option<Vec<TopicFilter>> {
    patterns
        .iter()
        .map(|pattern| {
            if pattern.as_str().contains(IDENTITY_PLACEHOLDER) {
                let text = pattern.as_str().replace(IDENTITY_PLACEHOLDER, token);
                TopicFilter::parse(&text, &SUBSTITUTED_LIMITS).ok()
            } else {
                Some(pattern.clone())
            }
        })
        .collect()
}

/// The patterns that apply to one identity. Computed once per identity and ACL version, then
/// asked for every publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    default: DefaultDecision,
    publish: Patterns,
    subscribe: Patterns,
    /// `_INBOX.<identity token>.>`: every identity may read its own replies unless a deny
    /// pattern says otherwise.
    own_inbox: Option<TopicFilter>,
    /// The queue patterns of the applying rules.
    queue: QueuePatterns,
    /// The `queue` patterns of every rule, applying or not: the groups someone reserved.
    reserved_queues: Vec<GroupPattern>,
}

impl Permissions {
    /// Permissions that allow nothing.
    fn nothing() -> Self {
        Self {
            default: DefaultDecision::Deny,
            publish: Patterns::default(),
            subscribe: Patterns::default(),
            own_inbox: None,
            queue: QueuePatterns {
                allow: Vec::new(),
                deny: vec![GroupPattern::new("*")],
            },
            reserved_queues: Vec::new(),
        }
    }

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
        self.subscribe_decision(
            filter.as_str(),
            |deny| overlaps(deny, filter),
            |allow| covers(allow, filter),
        )
    }

    /// Whether a request may ask for its replies on `reply_to`: whether its publisher could
    /// subscribe to that topic (as [`Permissions::may_subscribe`] decides for the topic taken
    /// as a filter).
    pub fn may_receive(&self, reply_to: &TopicName) -> bool {
        let matches = |pattern: &TopicFilter| pattern.matches(reply_to);
        self.subscribe_decision(reply_to.as_str(), matches, matches)
    }

    /// The subscribe rules' decision for `target`: refused if `denied_by` a `deny_subscribe`
    /// pattern, allowed if `allowed_by` a `subscribe` pattern or the identity's own inbox,
    /// otherwise the default (which never opens the reserved topics to wildcards).
    fn subscribe_decision(
        &self,
        target: &str,
        denied_by: impl Fn(&TopicFilter) -> bool,
        allowed_by: impl Fn(&TopicFilter) -> bool,
    ) -> bool {
        if self.subscribe.deny.iter().any(denied_by) {
            return false;
        }
        if self
            .subscribe
            .allow
            .iter()
            .chain(&self.own_inbox)
            .any(allowed_by)
        {
            return true;
        }
        self.default == DefaultDecision::Allow && !is_reserved_from_wildcards(target)
    }

    /// Whether the identity may join the queue group `group` (its subscription to the filter
    /// is decided separately): not if a `deny_queue` pattern matches; yes if a `queue` pattern
    /// of an applying rule matches; otherwise only if no rule reserves the group.
    pub fn may_join_queue(&self, group: &str) -> bool {
        if self.queue.deny.iter().any(|deny| deny.matches(group)) {
            return false;
        }
        if self.queue.allow.iter().any(|allow| allow.matches(group)) {
            return true;
        }
        !self
            .reserved_queues
            .iter()
            .any(|reserved| reserved.matches(group))
    }
}

/// A first token that leading wildcards never match: a system topic's or an inbox's.
fn is_system(token: FilterToken<'_>) -> bool {
    matches!(token, FilterToken::Literal(literal) if is_reserved_first_token(literal))
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
pub struct AclHandle(Arc<CurrentAcl>);

#[derive(Debug)]
struct CurrentAcl {
    acl: ArcSwap<Acl>,
    /// Bumped after every replacement: what a [`PermissionCache`] checks per publish (one load
    /// of a rarely written word, where loading the `ArcSwap` costs a fence).
    generation: AtomicU64,
}

impl AclHandle {
    /// A handle holding `acl`.
    pub fn new(acl: Acl) -> Self {
        Self(Arc::new(CurrentAcl {
            acl: ArcSwap::from_pointee(acl),
            generation: AtomicU64::new(0),
        }))
    }

    /// The current ACL.
    pub fn current(&self) -> Arc<Acl> {
        self.0.acl.load_full()
    }

    /// Replaces the ACL; checks made from now on use `acl`.
    pub fn replace(&self, acl: Acl) {
        self.0.acl.store(Arc::new(acl));
        self.0.generation.fetch_add(1, Ordering::Release);
    }

    fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Acquire)
    }
}

impl Default for AclHandle {
    fn default() -> Self {
        Self::new(Acl::allow_all())
    }
}

/// Caches one identity's [`Permissions`] for as long as the ACL is not replaced, so the publish
/// path does not re-match identity patterns for every message, and the verdict on the topic
/// published to last, so a stream publishing to one topic matches its rules once.
#[derive(Debug)]
pub(crate) struct PermissionCache {
    /// The handle's generation the permissions were computed under.
    generation: u64,
    permissions: Permissions,
    /// The topic last allowed under these permissions.
    allowed: Option<TopicName>,
}

impl PermissionCache {
    pub(crate) fn new(handle: &AclHandle, identity: &str) -> Self {
        // The generation first: a replacement after it is seen by the next check.
        let generation = handle.generation();
        let permissions = handle.current().permissions(identity);
        Self {
            generation,
            permissions,
            allowed: None,
        }
    }

    /// The permissions under the current ACL, recomputed only after a reload.
    pub(crate) fn get(&mut self, handle: &AclHandle, identity: &str) -> &Permissions {
        if handle.generation() != self.generation {
            *self = Self::new(handle, identity);
        }
        &self.permissions
    }

    /// Whether `identity` may publish to `topic` under the current ACL.
    pub(crate) fn may_publish(
        &mut self,
        handle: &AclHandle,
        identity: &str,
        topic: &TopicName,
    ) -> bool {
        self.get(handle, identity);
        if self.allowed.as_ref() == Some(topic) {
            return true;
        }
        let allowed = self.permissions.may_publish(topic);
        if allowed {
            self.allowed = Some(topic.clone());
        }
        allowed
    }
}

#[cfg(test)]
mod tests;
