//! The token trie of topic filters: one value per filter, and the values of the filters that
//! match a topic found by walking only the branches that can match it (the cost depends on the
//! topic's depth and the wildcards on its path, not on how many filters are held). The router
//! keeps its routes in one ([`crate::router`]); the cluster keeps each peer's interest in one
//! ([`crate::cluster`]). Locking is the owner's.

use std::collections::HashMap;

use cassini_protocol::topic::FilterToken;
use cassini_protocol::{TopicFilter, TopicName};

/// Filters with a value each. See the module documentation.
#[derive(Debug)]
pub(crate) struct FilterTrie<V> {
    root: Node<V>,
}

impl<V> Default for FilterTrie<V> {
    fn default() -> Self {
        Self {
            root: Node::default(),
        }
    }
}

#[derive(Debug)]
struct Node<V> {
    literals: HashMap<Box<str>, Node<V>>,
    any_one: Option<Box<Node<V>>>,
    /// The value of the filter that ends at this node.
    here: Option<V>,
    /// The value of the filter that ends with `>` after this node.
    tail: Option<V>,
}

impl<V> Default for Node<V> {
    fn default() -> Self {
        Self {
            literals: HashMap::new(),
            any_one: None,
            here: None,
            tail: None,
        }
    }
}

impl<V> FilterTrie<V> {
    /// The place of `filter`'s value (`None` if it has none yet), making its branch if needed.
    /// A branch left without a value is pruned by [`FilterTrie::remove`].
    pub(crate) fn slot(&mut self, filter: &TopicFilter) -> &mut Option<V> {
        let mut node = &mut self.root;
        for token in filter.tokens() {
            match token {
                FilterToken::AnyRest => return &mut node.tail,
                FilterToken::AnyOne => node = node.any_one.get_or_insert_with(Box::default),
                FilterToken::Literal(literal) => {
                    node = node.literals.entry(literal.into()).or_default();
                }
            }
        }
        &mut node.here
    }

    /// Takes `filter`'s value out, pruning the branches left empty.
    pub(crate) fn remove(&mut self, filter: &TopicFilter) -> Option<V> {
        let tokens: Vec<_> = filter.tokens().collect();
        self.root.remove(&tokens)
    }

    /// Calls `found` with the value of every filter matching `topic`. A topic reserved from
    /// wildcards ([`cassini_protocol::inbox::is_reserved_from_wildcards`]) is matched by no
    /// filter that starts with a wildcard.
    pub(crate) fn for_each_match<'a>(&'a self, topic: &TopicName, mut found: impl FnMut(&'a V)) {
        let tokens: Vec<&str> = topic.tokens().collect();
        let reserved = cassini_protocol::inbox::is_reserved_from_wildcards(topic.as_str());
        self.root.collect(&tokens, true, reserved, &mut found);
    }

    /// Calls `found` with every value.
    pub(crate) fn for_each<'a>(&'a self, mut found: impl FnMut(&'a V)) {
        self.root.collect_all(&mut found);
    }

    /// Whether no filter has a value (nor an empty branch).
    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }
}

impl<V> Node<V> {
    fn is_empty(&self) -> bool {
        self.literals.is_empty()
            && self.any_one.is_none()
            && self.here.is_none()
            && self.tail.is_none()
    }

    fn collect<'a>(
        &'a self,
        tokens: &[&str],
        at_root: bool,
        reserved: bool,
        found: &mut impl FnMut(&'a V),
    ) {
        let wildcards_allowed = !(at_root && reserved);
        let Some((first, rest)) = tokens.split_first() else {
            if let Some(value) = &self.here {
                found(value);
            }
            return;
        };
        if wildcards_allowed {
            if let Some(value) = &self.tail {
                found(value);
            }
            if let Some(node) = &self.any_one {
                node.collect(rest, false, reserved, found);
            }
        }
        if let Some(node) = self.literals.get(*first) {
            node.collect(rest, false, reserved, found);
        }
    }

    fn collect_all<'a>(&'a self, found: &mut impl FnMut(&'a V)) {
        for value in self.here.iter().chain(self.tail.iter()) {
            found(value);
        }
        for node in self.literals.values().chain(self.any_one.as_deref()) {
            node.collect_all(found);
        }
    }

    fn remove(&mut self, tokens: &[FilterToken<'_>]) -> Option<V> {
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
