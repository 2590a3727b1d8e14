//! Where the cluster's sessions are: for each session of a node, the filters its subscriptions
//! hold. A node tells its peers its own table (in the interest snapshot, then one change per
//! entry, numbered and acknowledged with the rest of its interest), so that a direct message
//! (`to_session`) published on any node goes only to the node holding that session, and only
//! when one of the session's filters matches: the same answer (delivered, or nobody) as when
//! publisher and session share a node.

use std::collections::HashMap;

use cassini_protocol::{SessionId, TopicFilter, TopicLimits, TopicName};
use serde::{Deserialize, Serialize};

/// One entry of a node's session table: `count` subscriptions of `session` hold `filter`; 0
/// removes the entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInterest {
    /// The session.
    pub session: SessionId,
    /// A filter its subscriptions hold.
    pub filter: String,
    /// How many of its subscriptions hold it.
    pub count: u32,
}

/// One node's sessions and the filters each holds, each filter parsed once.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    sessions: HashMap<SessionId, HashMap<String, (TopicFilter, u32)>>,
}

impl SessionTable {
    /// Sets `session`'s count of `filter`; whether that changed anything.
    pub(crate) fn set(&mut self, session: SessionId, filter: &TopicFilter, count: u32) -> bool {
        let filters = self.sessions.entry(session).or_default();
        let changed = match filters.get(filter.as_str()) {
            Some((_, old)) => *old != count,
            None => count != 0,
        };
        if count == 0 {
            filters.remove(filter.as_str());
        } else {
            filters.insert(filter.as_str().to_owned(), (filter.clone(), count));
        }
        if filters.is_empty() {
            self.sessions.remove(&session);
        }
        changed
    }

    /// Applies a peer's entry; a filter that does not parse with `limits` is skipped (and
    /// logged).
    pub(crate) fn apply(&mut self, entry: SessionInterest, limits: &TopicLimits) {
        match TopicFilter::parse(&entry.filter, limits) {
            Ok(filter) => {
                self.set(entry.session, &filter, entry.count);
            }
            Err(err) => {
                tracing::warn!(filter = %entry.filter, %err, "ignoring a peer's session filter");
            }
        }
    }

    /// Replaces every entry with `entries`.
    pub(crate) fn replace(&mut self, entries: Vec<SessionInterest>, limits: &TopicLimits) {
        self.sessions.clear();
        for entry in entries {
            self.apply(entry, limits);
        }
    }

    /// Whether one of `session`'s filters matches `topic`.
    pub(crate) fn matches(&self, session: SessionId, topic: &TopicName) -> bool {
        self.sessions.get(&session).is_some_and(|filters| {
            filters
                .values()
                .any(|(filter, count)| *count > 0 && filter.matches(topic))
        })
    }

    /// Every entry, for a snapshot.
    pub(crate) fn entries(&self) -> Vec<SessionInterest> {
        let mut entries: Vec<SessionInterest> = self
            .sessions
            .iter()
            .flat_map(|(session, filters)| {
                filters.iter().map(|(filter, (_, count))| SessionInterest {
                    session: *session,
                    filter: filter.clone(),
                    count: *count,
                })
            })
            .collect();
        entries.sort_by(|a, b| (a.session, &a.filter).cmp(&(b.session, &b.filter)));
        entries
    }
}
