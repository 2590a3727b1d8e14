//! A snapshot of a node's interest too large for one peer frame, sent in parts.
//!
//! A node's interest (one entry per filter and queue group its clients subscribe to) has no
//! size bound of its own: one identity's subscriptions with long filters alone can come to tens
//! of MiB. The dialer splits a snapshot's entries into parts of at most [`PART_BYTES`] each
//! ([`split`]): every part but the last travels alone, and the last travels in the snapshot
//! itself, with its sequence number and the session table. The acceptor gathers the parts
//! ([`Reassembly`]) and applies the whole snapshot when it arrives, as if it had come in one
//! frame; only the snapshot is acknowledged. A snapshot that fits in one part goes alone, as it
//! always did.

use cassini_broker::cluster::{InterestEntry, InterestUpdate};

/// The most bytes of entries in one part: a quarter of the peer frame bound, so a part is far
/// from it whatever MessagePack adds.
pub(crate) const PART_BYTES: usize = 16 * 1024 * 1024;

/// The most bytes of entries an acceptor gathers before the snapshot they belong to; more ends
/// the link (a peer that never sends its snapshot would otherwise grow them without bound).
pub(crate) const MAX_GATHERED_BYTES: usize = 1024 * 1024 * 1024;

/// An entry's size as counted against [`PART_BYTES`]: its strings, and a bound on what
/// MessagePack adds around them (array and string headers, the count).
fn entry_bytes(entry: &InterestEntry) -> usize {
    entry.filter.len() + entry.group.as_ref().map_or(0, String::len) + 16
}

/// The parts that go before `update`, and `update` with what is left: nothing before anything
/// but a snapshot larger than `part_bytes`.
pub(crate) fn split(
    update: InterestUpdate,
    part_bytes: usize,
) -> (Vec<Vec<InterestEntry>>, InterestUpdate) {
    let InterestUpdate::Snapshot {
        seq,
        entries,
        sessions,
    } = update
    else {
        return (Vec::new(), update);
    };
    let mut parts: Vec<Vec<InterestEntry>> = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry_bytes(&entry);
        if bytes + size > part_bytes && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(entry);
    }
    let last = InterestUpdate::Snapshot {
        seq,
        entries: current,
        sessions,
    };
    (parts, last)
}

/// The parts of a snapshot received so far on one link.
#[derive(Debug, Default)]
pub(crate) struct Reassembly {
    entries: Vec<InterestEntry>,
    bytes: usize,
}

impl Reassembly {
    /// Keeps a part until its snapshot arrives.
    pub(crate) fn part(&mut self, entries: Vec<InterestEntry>) -> Result<(), String> {
        self.bytes += entries.iter().map(entry_bytes).sum::<usize>();
        if self.bytes > MAX_GATHERED_BYTES {
            return Err(format!(
                "parts of an interest snapshot past {MAX_GATHERED_BYTES} bytes"
            ));
        }
        self.entries.extend(entries);
        Ok(())
    }

    /// `update` whole: a snapshot with the parts received before it in front of its own
    /// entries. Parts followed by anything but a snapshot break the link's protocol.
    pub(crate) fn complete(&mut self, update: InterestUpdate) -> Result<InterestUpdate, String> {
        if self.entries.is_empty() {
            return Ok(update);
        }
        let mut gathered = std::mem::take(&mut self.entries);
        self.bytes = 0;
        match update {
            InterestUpdate::Snapshot {
                seq,
                entries,
                sessions,
            } => {
                gathered.extend(entries);
                Ok(InterestUpdate::Snapshot {
                    seq,
                    entries: gathered,
                    sessions,
                })
            }
            _ => Err("parts of an interest snapshot followed by a change".to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, filter_bytes: usize) -> InterestEntry {
        let mut filter = format!("t{n}.");
        filter.push_str(&"x".repeat(filter_bytes.saturating_sub(filter.len())));
        InterestEntry {
            filter,
            group: n.is_multiple_of(3).then(|| format!("g{n}")),
            count: 1,
        }
    }

    fn snapshot(entries: Vec<InterestEntry>) -> InterestUpdate {
        InterestUpdate::Snapshot {
            seq: 42,
            entries,
            sessions: Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_within_one_part_and_a_change_go_alone() {
        let small = snapshot((0..10).map(|n| entry(n, 20)).collect());
        let (parts, last) = split(small.clone(), PART_BYTES);
        assert!(parts.is_empty());
        assert_eq!(last, small);
        let change = InterestUpdate::Change {
            seq: 7,
            entry: entry(1, 20),
        };
        let (parts, last) = split(change.clone(), 100);
        assert!(parts.is_empty());
        assert_eq!(last, change);
    }

    #[test]
    fn parts_hold_at_most_their_bound_and_reassemble_to_the_snapshot() {
        let whole = snapshot((0..1_000).map(|n| entry(n, 100)).collect());
        let (parts, last) = split(whole.clone(), 10_000);
        assert!(parts.len() >= 10, "{} parts", parts.len());
        for part in &parts {
            assert!(part.iter().map(entry_bytes).sum::<usize>() <= 10_000);
        }
        let mut reassembly = Reassembly::default();
        for part in parts {
            reassembly.part(part).expect("within the bound");
        }
        assert_eq!(reassembly.complete(last).expect("a snapshot"), whole);
        // The next snapshot starts afresh.
        let next = snapshot(vec![entry(5, 10)]);
        assert_eq!(reassembly.complete(next.clone()).expect("alone"), next);
    }

    #[test]
    fn parts_followed_by_a_change_break_the_protocol() {
        let mut reassembly = Reassembly::default();
        reassembly.part(vec![entry(1, 10)]).expect("a part");
        let change = InterestUpdate::Change {
            seq: 3,
            entry: entry(2, 10),
        };
        assert!(reassembly.complete(change).is_err());
    }

    #[test]
    fn an_entry_larger_than_a_part_goes_alone_in_its_part() {
        let whole = snapshot(vec![entry(0, 50), entry(1, 500), entry(2, 50)]);
        let (parts, last) = split(whole, 100);
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 1]);
        let InterestUpdate::Snapshot { entries, .. } = last else {
            panic!("a snapshot");
        };
        assert_eq!(entries.len(), 1);
    }
}
