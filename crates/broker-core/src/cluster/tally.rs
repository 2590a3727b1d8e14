//! Publishes counted by kind for a peer that cannot be told yet, bounded: at most `max_kinds`
//! kinds one by one, the rest together as one count on any kind. The startup tally
//! ([`super::startup`]) and a peer's absence tally (`Peer::absent` in [`super`]) count with it; what a
//! count means, and when it is turned into drops, is theirs.

use std::collections::HashMap;
use std::hash::Hash;

/// Counts by kind, at most `max_kinds` kinds one by one.
#[derive(Debug)]
pub(crate) struct KindCounts<K> {
    /// Publishes by kind.
    kinds: HashMap<K, u64>,
    /// The bound of `kinds`.
    max_kinds: usize,
    /// Publishes of further kinds, counted together.
    any_kind: u64,
}

impl<K: Hash + Eq + Clone> KindCounts<K> {
    /// No count yet; at most `max_kinds` kinds will be counted one by one.
    pub(crate) fn new(max_kinds: usize) -> Self {
        Self {
            kinds: HashMap::new(),
            max_kinds,
            any_kind: 0,
        }
    }

    /// Counts one publish of `kind` (cloned only when it is a new kind).
    pub(crate) fn count(&mut self, kind: &K) {
        if let Some(count) = self.kinds.get_mut(kind) {
            *count += 1;
        } else if self.kinds.len() < self.max_kinds {
            self.kinds.insert(kind.clone(), 1);
        } else {
            self.any_kind += 1;
        }
    }

    /// Hands `each` every kind counted with its count, then `None` with the count of the
    /// kinds counted together, if any.
    pub(crate) fn each(&self, mut each: impl FnMut(Option<&K>, u64)) {
        for (kind, count) in &self.kinds {
            each(Some(kind), *count);
        }
        if self.any_kind > 0 {
            each(None, self.any_kind);
        }
    }

    /// Whether nothing was counted.
    pub(crate) fn is_empty(&self) -> bool {
        self.kinds.is_empty() && self.any_kind == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counted(counts: &KindCounts<&'static str>) -> (Vec<(&'static str, u64)>, u64) {
        let (mut kinds, mut any) = (Vec::new(), 0);
        counts.each(|kind, count| match kind {
            Some(kind) => kinds.push((*kind, count)),
            None => any += count,
        });
        kinds.sort_unstable();
        (kinds, any)
    }

    #[test]
    fn kinds_beyond_the_bound_are_counted_together() {
        let mut counts = KindCounts::new(2);
        assert!(counts.is_empty());
        for kind in ["a", "b", "a", "c", "d", "b", "c"] {
            counts.count(&kind);
        }
        assert_eq!(counted(&counts), (vec![("a", 2), ("b", 2)], 3));
        assert!(!counts.is_empty());
    }
}
