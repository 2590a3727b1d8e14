//! Never two owners of one session epoch: a checker of the ownership history a cluster's nodes
//! log (docs/CLUSTERING.md, "Session ownership"; docs/TESTING.md, "Fault injection").
//!
//! Each node logs one `debug` line `session claim` per claim it applies and per attach and end
//! of a connection holding a claim (`cassini_broker::cluster::ownership`), with `event`,
//! `identity`, `name`, `epoch`, `owner`, `node` and `at_us` (the wall clock, microseconds: the
//! nodes of one host compare their lines on it). [`ClaimEvent::parse`] reads such a line; a
//! node's lines from its start to its end (or its `kill -9`) are one [`Incarnation`].
//! [`violations`] checks:
//!
//! - (11) every node that applied the claim of an epoch (a log index) names the same session
//!   and the same owner, and each incarnation applies a session's claims in increasing epochs;
//! - (12) the connections of one session on different nodes never serve at once: a connection
//!   attached under an older epoch has ended (closed by the newer claim, by its node's lost
//!   lease, let go, or its node killed) before one of a newer epoch attaches on another node.
//!
//! It imports nothing of this crate.

use std::collections::HashMap;

/// What a `session claim` line says happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimEventKind {
    /// A claim (of `owner`) applied on `node`.
    Applied,
    /// A connection of `node` holds the claim of `epoch`: it serves the session from now.
    Attach,
    /// That connection was closed: another node's newer claim was applied.
    Fenced,
    /// That connection was closed: its node lost its lease.
    LeaseLost,
    /// That connection let go of its claim.
    Detach,
}

/// One `session claim` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimEvent {
    /// What happened.
    pub kind: ClaimEventKind,
    /// The session, as `identity/name`.
    pub session: String,
    /// The claim's epoch (its Raft log index).
    pub epoch: u64,
    /// The node the claim names (`-` for `Fenced` and `LeaseLost`).
    pub owner: String,
    /// The node that logged it.
    pub node: String,
    /// When, on the host's wall clock, in microseconds since the Unix epoch.
    pub at_us: u128,
}

impl ClaimEvent {
    /// Reads a node's log line: `None` unless it is a `session claim` line.
    pub fn parse(line: &str) -> Option<Self> {
        let plain = strip_ansi(line);
        // The fields after the message: a span's fields before it may use the same names.
        let plain = &plain[plain.find("session claim")?..];
        let field = |key: &str| -> Option<String> {
            let pretty = format!("{key}=");
            if let Some(at) = plain
                .match_indices(&pretty)
                .map(|(at, _)| at)
                .find(|at| *at == 0 || plain[..*at].ends_with([' ', '{', ',']))
            {
                let value = &plain[at + pretty.len()..];
                return value.split_whitespace().next().map(str::to_owned);
            }
            let json = format!("\"{key}\":");
            let value = plain[plain.find(&json)? + json.len()..].trim_start_matches('"');
            value.split(['"', ',', '}']).next().map(str::to_owned)
        };
        let kind = match field("event")?.as_str() {
            "applied" => ClaimEventKind::Applied,
            "attach" => ClaimEventKind::Attach,
            "fenced" => ClaimEventKind::Fenced,
            "lease-lost" => ClaimEventKind::LeaseLost,
            "detach" => ClaimEventKind::Detach,
            _ => return None,
        };
        Some(Self {
            kind,
            session: format!("{}/{}", field("identity")?, field("name")?),
            epoch: field("epoch")?.parse().ok()?,
            owner: field("owner")?,
            node: field("node")?,
            at_us: field("at_us")?.parse().ok()?,
        })
    }
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// One run of one node: its `session claim` lines in the order it logged them, and when it was
/// killed (`None`: it ran to the end of the test, or stopped cleanly).
#[derive(Debug, Clone, Default)]
pub struct Incarnation {
    /// The node's name.
    pub node: String,
    /// Its `session claim` lines, in order.
    pub events: Vec<ClaimEvent>,
    /// When it was killed, on the host's wall clock (microseconds since the Unix epoch).
    pub killed_at_us: Option<u128>,
}

impl Incarnation {
    /// The incarnation of `node` that logged `lines` (every other line is skipped).
    pub fn from_lines<'a>(
        node: &str,
        lines: impl IntoIterator<Item = &'a String>,
        killed_at_us: Option<u128>,
    ) -> Self {
        Self {
            node: node.to_owned(),
            events: lines
                .into_iter()
                .filter_map(|line| ClaimEvent::parse(line))
                .collect(),
            killed_at_us,
        }
    }
}

/// The wall clock now, in microseconds since the Unix epoch (what `at_us` counts).
pub fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_micros())
}

/// One connection's time serving a session: from its attach to its end.
#[derive(Debug, Clone)]
struct Served {
    node: String,
    epoch: u64,
    from: u128,
    /// `u128::MAX` while it still serves.
    to: u128,
}

/// Checks (11) and (12) over every incarnation of every node; a description of each
/// violation (empty when both hold).
pub fn violations(incarnations: &[Incarnation]) -> Vec<String> {
    let mut violations = Vec::new();
    // (11): one session and one owner per epoch, on every node.
    let mut named: HashMap<u64, (&str, &str, &str)> = HashMap::new();
    for incarnation in incarnations {
        let mut last_epoch: HashMap<&str, u64> = HashMap::new();
        for event in incarnation
            .events
            .iter()
            .filter(|event| event.kind == ClaimEventKind::Applied)
        {
            let this = (
                event.session.as_str(),
                event.owner.as_str(),
                event.node.as_str(),
            );
            if let Some(&(session, owner, node)) = named.get(&event.epoch) {
                if (session, owner) != (this.0, this.1) {
                    violations.push(format!(
                        "epoch {}: {node} applied a claim of {session} by {owner}, {} one of {} by {}",
                        event.epoch, this.2, this.0, this.1
                    ));
                }
            } else {
                named.insert(event.epoch, this);
            }
            if let Some(previous) = last_epoch.insert(&event.session, event.epoch) {
                if previous >= event.epoch {
                    violations.push(format!(
                        "{} applied claim {} of {} after claim {previous}",
                        incarnation.node, event.epoch, event.session
                    ));
                }
            }
        }
    }
    // (12): per session, what each connection served, then no overlap across nodes.
    let mut served: HashMap<&str, Vec<Served>> = HashMap::new();
    for incarnation in incarnations {
        let mut open: HashMap<(&str, u64), usize> = HashMap::new();
        for event in &incarnation.events {
            let key = (event.session.as_str(), event.epoch);
            match event.kind {
                ClaimEventKind::Applied => {}
                ClaimEventKind::Attach => {
                    let list = served.entry(&event.session).or_default();
                    list.push(Served {
                        node: incarnation.node.clone(),
                        epoch: event.epoch,
                        from: event.at_us,
                        to: u128::MAX,
                    });
                    open.insert(key, list.len() - 1);
                }
                ClaimEventKind::Fenced | ClaimEventKind::LeaseLost | ClaimEventKind::Detach => {
                    if let Some(at) = open.remove(&key) {
                        if let Some(interval) = served
                            .get_mut(event.session.as_str())
                            .and_then(|list| list.get_mut(at))
                        {
                            interval.to = event.at_us;
                        }
                    }
                }
            }
        }
        if let Some(killed) = incarnation.killed_at_us {
            for ((session, _), at) in open {
                if let Some(interval) = served.get_mut(session).and_then(|list| list.get_mut(at)) {
                    interval.to = interval.to.min(killed);
                }
            }
        }
    }
    let mut sessions: Vec<_> = served.into_iter().collect();
    sessions.sort_by(|a, b| a.0.cmp(b.0));
    for (session, intervals) in sessions {
        for older in &intervals {
            for newer in intervals
                .iter()
                .filter(|newer| newer.epoch > older.epoch && newer.node != older.node)
            {
                if newer.from < older.to {
                    let overlap = if older.to == u128::MAX {
                        "still serving".to_owned()
                    } else {
                        format!("serving until {} µs later", older.to - newer.from)
                    };
                    violations.push(format!(
                        "{session}: {} attached epoch {} while {} was {overlap} under epoch {}",
                        newer.node, newer.epoch, older.node, older.epoch
                    ));
                }
            }
        }
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: ClaimEventKind, epoch: u64, owner: &str, node: &str, at_us: u128) -> ClaimEvent {
        ClaimEvent {
            kind,
            session: "dev/s".to_owned(),
            epoch,
            owner: owner.to_owned(),
            node: node.to_owned(),
            at_us,
        }
    }

    fn incarnation(node: &str, events: Vec<ClaimEvent>, killed_at_us: Option<u128>) -> Incarnation {
        Incarnation {
            node: node.to_owned(),
            events,
            killed_at_us,
        }
    }

    use ClaimEventKind::{Applied, Attach, Detach, Fenced};

    #[test]
    fn a_log_line_reads_back() {
        let line = "2026-12-06T14:50:00.000001Z DEBUG cassini_broker::cluster::ownership: session \
                    claim event=attach identity=dev name=s-1 epoch=42 owner=n2 node=n2 \
                    at_us=1796000000000001";
        let read = ClaimEvent::parse(line).expect("a claim line");
        assert_eq!(read.kind, Attach);
        assert_eq!(read.session, "dev/s-1");
        assert_eq!((read.epoch, read.at_us), (42, 1_796_000_000_000_001));
        assert_eq!((read.owner.as_str(), read.node.as_str()), ("n2", "n2"));
        let json = r#"{"fields":{"message":"session claim","event":"fenced","identity":"dev","name":"s","epoch":7,"owner":"-","node":"n1","at_us":5}}"#;
        let read = ClaimEvent::parse(json).expect("a JSON claim line");
        assert_eq!((read.kind, read.epoch, read.at_us), (Fenced, 7, 5));
        assert_eq!(ClaimEvent::parse("cassini listening addr=x"), None);
    }

    #[test]
    fn a_takeover_that_fences_before_it_attaches_holds() {
        let n1 = incarnation(
            "n1",
            vec![
                event(Applied, 5, "n1", "n1", 10),
                event(Attach, 5, "n1", "n1", 11),
                event(Applied, 9, "n2", "n1", 20),
                event(Fenced, 5, "-", "n1", 21),
                event(Detach, 5, "n1", "n1", 22),
            ],
            None,
        );
        let n2 = incarnation(
            "n2",
            vec![
                event(Applied, 5, "n1", "n2", 10),
                event(Applied, 9, "n2", "n2", 19),
                event(Attach, 9, "n2", "n2", 25),
            ],
            None,
        );
        assert!(violations(&[n1.clone(), n2.clone()]).is_empty());

        // The new owner attached before the old connection was closed: two owners at once.
        let mut early = n2.clone();
        early.events[2].at_us = 21 - 1;
        let found = violations(&[n1.clone(), early]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("n2 attached epoch 9 while n1 was serving until 1 µs later"),
            "{found:?}"
        );

        // The old node never closed its connection.
        let mut never = n1.clone();
        never.events.truncate(3);
        let found = violations(&[never.clone(), n2.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("still serving"), "{found:?}");
        // Unless it was killed before the new one attached.
        never.killed_at_us = Some(24);
        assert!(violations(&[never, n2]).is_empty());
    }

    #[test]
    fn two_owners_of_one_epoch_or_claims_applied_out_of_order_are_violations() {
        let n1 = incarnation("n1", vec![event(Applied, 5, "n1", "n1", 10)], None);
        let n2 = incarnation("n2", vec![event(Applied, 5, "n2", "n2", 10)], None);
        let found = violations(&[n1, n2]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("epoch 5"), "{found:?}");

        let backwards = incarnation(
            "n3",
            vec![
                event(Applied, 9, "n3", "n3", 10),
                event(Applied, 5, "n1", "n3", 11),
            ],
            None,
        );
        let found = violations(&[backwards]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("applied claim 5 of dev/s after claim 9"),
            "{found:?}"
        );
    }
}
