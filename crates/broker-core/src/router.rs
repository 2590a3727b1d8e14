//! The subscription index: which queues a message published to a topic goes to.
//!
//! The index is a token trie of filters. Each filter with at least one subscriber has one
//! [`FilterRoute`], whose member list is owned and replaced (never edited in place) by that
//! filter's topic actor. The topic manager actor is the only writer of the trie itself. The
//! publish path only reads: it takes the trie's read lock long enough to collect the matching
//! routes, then pushes one shared message into each member's queue without any lock held.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use arc_swap::ArcSwap;
use cassini_protocol::topic::FilterToken;
use cassini_protocol::{SessionId, SubscriptionId, TopicFilter, TopicName};

use crate::message::PublishedMessage;
use crate::queue::{PushOutcome, SubscriptionQueue};

/// Names one subscription across the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriberKey {
    /// The owning session.
    pub session: SessionId,
    /// The subscription within it.
    pub subscription: SubscriptionId,
}

/// One subscription as the publish path sees it.
#[derive(Debug, Clone)]
pub struct RouteMember {
    /// Which subscription this is.
    pub key: SubscriberKey,
    /// Where its messages go.
    pub queue: Arc<SubscriptionQueue>,
}

/// The subscribers of one filter.
#[derive(Debug)]
pub struct FilterRoute {
    filter: TopicFilter,
    members: ArcSwap<Vec<RouteMember>>,
}

impl FilterRoute {
    /// A route with no members yet.
    pub fn new(filter: TopicFilter) -> Self {
        Self {
            filter,
            members: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// The filter this route serves.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// Replaces the member list. Only the filter's topic actor calls this.
    pub fn set_members(&self, members: Vec<RouteMember>) {
        self.members.store(Arc::new(members));
    }

    /// The current member list.
    pub fn members(&self) -> Arc<Vec<RouteMember>> {
        self.members.load_full()
    }
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<Box<str>, Node>,
    any_one: Option<Box<Node>>,
    /// The route of the filter that ends at this node.
    here: Option<Arc<FilterRoute>>,
    /// The route of the filter that ends with `>` after this node.
    tail: Option<Arc<FilterRoute>>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.any_one.is_none()
            && self.here.is_none()
            && self.tail.is_none()
    }

    fn collect(
        &self,
        tokens: &[&str],
        at_root: bool,
        reserved: bool,
        out: &mut Vec<Arc<FilterRoute>>,
    ) {
        let wildcards_allowed = !(at_root && reserved);
        let Some((first, rest)) = tokens.split_first() else {
            if let Some(route) = &self.here {
                out.push(Arc::clone(route));
            }
            return;
        };
        if wildcards_allowed {
            if let Some(route) = &self.tail {
                out.push(Arc::clone(route));
            }
            if let Some(node) = &self.any_one {
                node.collect(rest, false, reserved, out);
            }
        }
        if let Some(node) = self.literals.get(*first) {
            node.collect(rest, false, reserved, out);
        }
    }

    fn remove(&mut self, tokens: &[FilterToken<'_>]) -> Option<Arc<FilterRoute>> {
        let Some((first, rest)) = tokens.split_first() else {
            return self.here.take();
        };
        match first {
            FilterToken::AnyRest => self.tail.take(),
            FilterToken::AnyOne => {
                let node = self.any_one.as_mut()?;
                let removed = node.remove(rest);
                if node.is_empty() {
                    self.any_one = None;
                }
                removed
            }
            FilterToken::Literal(literal) => {
                let node = self.literals.get_mut(*literal)?;
                let removed = node.remove(rest);
                if node.is_empty() {
                    self.literals.remove(*literal);
                }
                removed
            }
        }
    }
}

/// What one publish did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteReport {
    /// Subscriptions the message was offered to.
    pub offered: usize,
    /// Of those, how many dropped a message (this one or an older one) to their policy.
    pub dropped: usize,
}

/// The filter trie. See the module documentation for who may write it.
#[derive(Debug, Default)]
pub struct Router {
    root: RwLock<Node>,
}

impl Router {
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a filter's route. Replaces any route the filter had.
    pub fn insert(&self, route: Arc<FilterRoute>) {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let filter = route.filter().clone();
        let mut node = &mut *root;
        for token in filter.tokens() {
            match token {
                FilterToken::AnyRest => {
                    node.tail = Some(route);
                    return;
                }
                FilterToken::AnyOne => node = node.any_one.get_or_insert_with(Box::default),
                FilterToken::Literal(literal) => {
                    node = node.literals.entry(literal.into()).or_default();
                }
            }
        }
        node.here = Some(route);
    }

    /// Removes a filter's route, pruning empty branches.
    pub fn remove(&self, filter: &TopicFilter) -> Option<Arc<FilterRoute>> {
        let mut root = self.root.write().unwrap_or_else(|p| p.into_inner());
        let tokens: Vec<_> = filter.tokens().collect();
        root.remove(&tokens)
    }

    /// The routes whose filters match `topic`.
    pub fn matching(&self, topic: &TopicName) -> Vec<Arc<FilterRoute>> {
        let tokens: Vec<&str> = topic.tokens().collect();
        let reserved = topic.as_str().starts_with('$');
        let mut out = Vec::new();
        let root = self.root.read().unwrap_or_else(|p| p.into_inner());
        root.collect(&tokens, true, reserved, &mut out);
        out
    }

    /// Offers `message` to every subscription whose filter matches its topic. Never waits.
    pub fn publish(&self, message: &Arc<PublishedMessage>) -> RouteReport {
        let mut report = RouteReport::default();
        for route in self.matching(&message.topic) {
            for member in route.members().iter() {
                report.offered += 1;
                match member.queue.push(message) {
                    PushOutcome::Queued | PushOutcome::Closed => {}
                    PushOutcome::QueuedAfterDropping(_)
                    | PushOutcome::DroppedNewest
                    | PushOutcome::Overflowed => report.dropped += 1,
                }
            }
        }
        report
    }

    /// Whether no filter is indexed (for leak checks).
    pub fn is_empty(&self) -> bool {
        self.root
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cassini_protocol::TopicLimits;

    fn filter(s: &str) -> TopicFilter {
        TopicFilter::parse(s, &TopicLimits::default()).expect("valid filter")
    }

    fn topic(s: &str) -> TopicName {
        TopicName::parse(s, &TopicLimits::default()).expect("valid topic")
    }

    fn matched(router: &Router, t: &str) -> Vec<String> {
        let mut names: Vec<_> = router
            .matching(&topic(t))
            .iter()
            .map(|r| r.filter().to_string())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_trie_agrees_with_filter_matching() {
        let filters = [
            "a.b", "a.*", "a.>", "*.b", ">", "a.b.c", "a.*.c", "*.*.*", "b.>",
        ];
        let topics = [
            "a", "a.b", "a.c", "a.b.c", "b.b", "b.x.y", "c.d.e.f", "a.x.c",
        ];
        let router = Router::new();
        for f in filters {
            router.insert(Arc::new(FilterRoute::new(filter(f))));
        }
        for t in topics {
            let mut expected: Vec<String> = filters
                .iter()
                .filter(|f| filter(f).matches(&topic(t)))
                .map(|f| f.to_string())
                .collect();
            expected.sort();
            assert_eq!(matched(&router, t), expected, "topic {t}");
        }
    }

    #[test]
    fn removing_every_filter_leaves_an_empty_trie() {
        let router = Router::new();
        let filters = ["a.b", "a.*", "a.>", "*.b.c", ">"];
        for f in filters {
            router.insert(Arc::new(FilterRoute::new(filter(f))));
        }
        for f in filters {
            assert!(router.remove(&filter(f)).is_some(), "{f}");
        }
        assert!(router.is_empty());
        assert!(router.remove(&filter("a.b")).is_none());
    }
}
