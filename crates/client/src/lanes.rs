//! A bounded map that evicts its least recently used entry: which publish lanes stay open.
//!
//! This is plain bookkeeping with no I/O, so the eviction order can be tested on its own. Both
//! lookups and insertions count as a use.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// At most `capacity` entries; inserting into a full map evicts the least recently used one.
#[derive(Debug)]
pub(crate) struct LruMap<K, V> {
    /// Most entries kept; at least 1.
    capacity: usize,
    /// Each entry with the tick of its last use.
    entries: HashMap<K, (V, u64)>,
    /// Keys by the tick of their last use: the first is the least recently used.
    by_last_use: BTreeMap<u64, K>,
    /// Increases on every use.
    clock: u64,
}

impl<K: Hash + Eq + Clone, V> LruMap<K, V> {
    /// An empty map holding at most `capacity` entries (at least one).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            entries: HashMap::new(),
            by_last_use: BTreeMap::new(),
            clock: 0,
        }
    }

    /// The value for `key`, marked as just used.
    pub(crate) fn get(&mut self, key: &K) -> Option<&V> {
        let newest = self.clock;
        let (value, last_use) = self.entries.get_mut(key)?;
        // Already the most recently used (a publisher sending to one topic in a row): the
        // order stands as it is, so the ordered index is left alone.
        if *last_use != newest {
            let tick = newest + 1;
            self.clock = tick;
            self.by_last_use.remove(last_use);
            *last_use = tick;
            self.by_last_use.insert(tick, key.clone());
        }
        Some(value)
    }

    /// Inserts `key` as the most recently used entry. Returns the entry that had to go: the old
    /// value of `key` if it was present, otherwise the least recently used entry if the map was
    /// full.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        let displaced = match self.remove(&key) {
            Some(old) => Some((key.clone(), old)),
            None if self.entries.len() >= self.capacity => self.pop_least_recently_used(),
            None => None,
        };
        let tick = self.tick();
        self.by_last_use.insert(tick, key.clone());
        self.entries.insert(key, (value, tick));
        displaced
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let (value, last_use) = self.entries.remove(key)?;
        self.by_last_use.remove(&last_use);
        Some(value)
    }

    /// Removes every entry, least recently used first.
    pub(crate) fn drain(&mut self) -> Vec<(K, V)> {
        let mut drained = Vec::with_capacity(self.entries.len());
        while let Some(entry) = self.pop_least_recently_used() {
            drained.push(entry);
        }
        drained
    }

    /// How many entries there are.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn pop_least_recently_used(&mut self) -> Option<(K, V)> {
        let (_, key) = self.by_last_use.pop_first()?;
        let (value, _) = self.entries.remove(&key)?;
        Some((key, value))
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }
}

#[cfg(test)]
mod tests;
