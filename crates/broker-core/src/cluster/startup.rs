//! What a node that has just started publishes before it knows its peers' interest: a peer's
//! interest arrives with the first snapshot of the peer's link to this node, and until then a
//! publish that its subscribers match is neither forwarded to it nor counted as its drop. The
//! tally counts those publishes per topic (and session, for direct messages) for a bounded
//! time; when a peer's first snapshot of this incarnation applies, the cluster turns the tally
//! into drops for that peer, which announces them to the subscriptions its interest matches
//! (docs/CLUSTERING.md, "When this node has just started").
//!
//! The tally is bounded in size (at most `max_kinds` kinds, then one count on any topic:
//! [`KindCounts`]) and in
//! time: it closes (and is dropped) once every configured peer address has turned out to be a
//! peer whose first snapshot applied, or when its window ends, whichever comes first. This
//! module keeps the counts and the bookkeeping only; matching against a peer's interest and
//! recording the drops is the cluster's.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cassini_protocol::{SessionId, TopicName};

use super::tally::KindCounts;

/// The longest a node tallies its publishes for peers whose interest it does not know yet,
/// from its start: a reachable peer's link to it is up well within it (a peer redials within
/// its 5 s backoff, ±50 %, plus a handshake).
pub const STARTUP_WINDOW: Duration = Duration::from_secs(10);

/// One kind of publish the tally counts: its topic, and for a direct message its session.
pub(crate) type Kind = (TopicName, Option<SessionId>);

/// The publishes of a node that has just started, until every peer's interest is known.
#[derive(Debug)]
pub(crate) struct StartupTally {
    /// When the window ends.
    until: Instant,
    /// Whether publishes are still tallied; once false, never again.
    open: bool,
    /// Publishes by kind, at most `max_kinds` kinds one by one.
    counts: KindCounts<Kind>,
    /// The bound of `counts`.
    max_kinds: usize,
    /// How many peers' first snapshots the tally was turned into drops for: a publish recorded
    /// when this was `n` is in the drops of the peers synced `n`th (0-based) and later.
    syncs: u64,
    /// The configured peer addresses, each with the node it turned out to be (`None`: not
    /// reached yet); an address that turned out to be this node is removed. `None` until the
    /// transport said which addresses it dials.
    expected: Option<HashMap<SocketAddr, Option<Arc<str>>>>,
    /// The peers whose first snapshot applied.
    synced: HashSet<Arc<str>>,
}

impl StartupTally {
    /// A tally open from `now` for `window`, counting at most `max_kinds` kinds one by one.
    pub(crate) fn new(now: Instant, window: Duration, max_kinds: usize) -> Self {
        Self {
            until: now + window,
            open: true,
            counts: KindCounts::new(max_kinds),
            max_kinds,
            syncs: 0,
            expected: None,
            synced: HashSet::new(),
        }
    }

    /// Whether publishes are still tallied at `now` (closes the tally if its window is over).
    pub(crate) fn is_open(&mut self, now: Instant) -> bool {
        if self.open && now >= self.until {
            self.close();
        }
        self.open
    }

    /// Counts a publish of `kind` at `now`. Returns how many peers had synced before it (the
    /// publish is in the drops of every peer that syncs from now on), or `None` once closed.
    pub(crate) fn record(&mut self, kind: Kind, now: Instant) -> Option<u64> {
        if !self.is_open(now) {
            return None;
        }
        self.counts.count(&kind);
        Some(self.syncs)
    }

    /// Peer `peer`'s first snapshot applied at `now`: hands `each` every kind counted with its
    /// count (and `None` with the count of the kinds counted together, if any). Returns the
    /// peer's place among the synced peers, or `None` if the tally is closed or the peer had
    /// synced already.
    pub(crate) fn synced(
        &mut self,
        peer: &Arc<str>,
        now: Instant,
        each: impl FnMut(Option<&Kind>, u64),
    ) -> Option<u64> {
        if !self.is_open(now) || !self.synced.insert(Arc::clone(peer)) {
            return None;
        }
        self.counts.each(each);
        let place = self.syncs;
        self.syncs += 1;
        self.close_if_done();
        Some(place)
    }

    /// The transport dials `addresses` (its configured peers; this node's own may be among
    /// them).
    pub(crate) fn expect(&mut self, addresses: impl IntoIterator<Item = SocketAddr>) {
        if !self.open {
            return;
        }
        let expected = self.expected.get_or_insert_with(HashMap::new);
        for address in addresses {
            expected.entry(address).or_insert(None);
        }
    }

    /// A dial to `address` reached node `node` (`None`: this node itself).
    pub(crate) fn reached(&mut self, address: SocketAddr, node: Option<&str>) {
        let Some(expected) = self.expected.as_mut() else {
            return;
        };
        match node {
            None => {
                expected.remove(&address);
            }
            Some(node) => {
                if let Some(slot) = expected.get_mut(&address) {
                    *slot = Some(Arc::from(node));
                }
            }
        }
        self.close_if_done();
    }

    /// Closes the tally once every configured address is a peer that has synced. With no peer
    /// configured it stays open for its window: peers that dial this node are not known
    /// beforehand.
    fn close_if_done(&mut self) {
        let done = self.expected.as_ref().is_some_and(|expected| {
            !expected.is_empty()
                && expected
                    .values()
                    .all(|node| node.as_ref().is_some_and(|n| self.synced.contains(n)))
        });
        if done {
            self.close();
        }
    }

    /// Stops tallying and drops the counts.
    fn close(&mut self) {
        self.open = false;
        self.counts = KindCounts::new(self.max_kinds);
        self.expected = None;
        self.synced = HashSet::new();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use cassini_protocol::TopicLimits;

    use super::*;

    fn kind(topic: &str) -> Kind {
        (
            TopicName::parse(topic, &TopicLimits::default()).unwrap(),
            None,
        )
    }

    fn drained(tally: &mut StartupTally, peer: &str, now: Instant) -> (Vec<(Kind, u64)>, u64) {
        let (mut kinds, mut any) = (Vec::new(), 0);
        tally
            .synced(&Arc::from(peer), now, |kind, count| match kind {
                Some(kind) => kinds.push((kind.clone(), count)),
                None => any += count,
            })
            .expect("open");
        kinds.sort();
        (kinds, any)
    }

    #[test]
    fn kinds_beyond_the_bound_are_counted_together() {
        let now = Instant::now();
        let mut tally = StartupTally::new(now, STARTUP_WINDOW, 2);
        for topic in ["a", "b", "a", "c", "d", "b"] {
            tally.record(kind(topic), now);
        }
        let (kinds, any) = drained(&mut tally, "p", now);
        assert_eq!(kinds, vec![(kind("a"), 2), (kind("b"), 2)]);
        assert_eq!(any, 2, "c and d, counted together");
    }

    #[test]
    fn a_publish_is_in_the_drops_of_the_peers_that_sync_after_it_only() {
        let now = Instant::now();
        let mut tally = StartupTally::new(now, STARTUP_WINDOW, 16);
        assert_eq!(tally.record(kind("a"), now), Some(0));
        assert_eq!(drained(&mut tally, "p", now).0, vec![(kind("a"), 1)]);
        assert_eq!(tally.record(kind("b"), now), Some(1), "after p synced");
        assert!(
            tally.synced(&Arc::from("p"), now, |_, _| {}).is_none(),
            "p's next snapshot is not its first"
        );
        assert_eq!(
            drained(&mut tally, "q", now).0,
            vec![(kind("a"), 1), (kind("b"), 1)]
        );
    }

    #[test]
    fn the_tally_closes_when_its_window_ends() {
        let now = Instant::now();
        let mut tally = StartupTally::new(now, STARTUP_WINDOW, 16);
        tally.record(kind("a"), now);
        let later = now + STARTUP_WINDOW;
        assert_eq!(tally.record(kind("a"), later), None);
        assert!(tally.synced(&Arc::from("p"), later, |_, _| {}).is_none());
        assert!(tally.counts.is_empty(), "the counts are dropped");
    }

    #[test]
    fn the_tally_closes_once_every_configured_peer_has_synced() {
        let now = Instant::now();
        let mut tally = StartupTally::new(now, STARTUP_WINDOW, 16);
        let (own, b, c) = (
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        );
        tally.expect([own, b, c]);
        tally.reached(own, None);
        tally.reached(b, Some("b"));
        drained(&mut tally, "b", now);
        drained(&mut tally, "d", now);
        assert!(tally.is_open(now), "c not reached yet");
        tally.reached(c, Some("c"));
        assert!(tally.is_open(now), "c reached, not synced");
        drained(&mut tally, "c", now);
        assert!(!tally.is_open(now), "every configured peer synced");
    }

    #[test]
    fn with_no_peer_configured_the_tally_runs_its_window() {
        let now = Instant::now();
        let mut tally = StartupTally::new(now, STARTUP_WINDOW, 16);
        tally.expect([]);
        drained(&mut tally, "b", now);
        assert!(
            tally.is_open(now),
            "peers that dial this node are not known beforehand"
        );
    }
}
