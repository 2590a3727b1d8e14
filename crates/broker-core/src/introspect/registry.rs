//! The open connections, for monitoring. A listener registers its connection when it starts
//! and the returned [`Registration`] removes it when the listener's state is dropped, however
//! the listener ended. The driver adds the session once it is attached.
//!
//! Entries are keyed by the address of the connection's `Arc` allocation, which the entry
//! itself keeps alive, so a key is never reused while its entry exists. The mutex is taken
//! once per connection event and per monitoring request, never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use cassini_protocol::SessionId;

use crate::transport::Connection;

/// One open connection.
#[derive(Clone)]
pub(crate) struct Entry {
    /// Broker-assigned, increasing.
    pub(crate) id: u64,
    pub(crate) connection: Arc<dyn Connection>,
    pub(crate) connected_at: SystemTime,
    pub(crate) started: Instant,
    pub(crate) session: Option<SessionId>,
    pub(crate) resumed: bool,
    /// The client's `Hello.client_name`, as shown ([`shown_client_name`]).
    pub(crate) client_name: Option<String>,
}

/// The most characters of a client's `Hello.client_name` that logs and monitoring show.
pub(crate) const MAX_SHOWN_CLIENT_NAME_CHARS: usize = 128;

/// `name` as logs and monitoring show it: at most [`MAX_SHOWN_CLIENT_NAME_CHARS`] characters,
/// control characters replaced by `?`, so a client cannot forge log lines or make every line
/// of its connection large.
pub(crate) fn shown_client_name(name: &str) -> String {
    name.chars()
        .take(MAX_SHOWN_CLIENT_NAME_CHARS)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The open connections.
#[derive(Default)]
pub(crate) struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<usize, Entry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("connections", &self.lock().len())
            .finish()
    }
}

/// Removes its connection from the registry when dropped.
pub(crate) struct Registration {
    registry: Arc<Registry>,
    key: usize,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.key);
    }
}

fn key_of(connection: &Arc<dyn Connection>) -> usize {
    Arc::as_ptr(connection) as *const () as usize
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<usize, Entry>> {
        // Every update is a single insert or field write, so a poisoned map is still whole.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `connection` until the returned guard is dropped.
    pub(crate) fn register(self: &Arc<Self>, connection: &Arc<dyn Connection>) -> Registration {
        let key = key_of(connection);
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            connection: Arc::clone(connection),
            connected_at: SystemTime::now(),
            started: Instant::now(),
            session: None,
            resumed: false,
            client_name: None,
        };
        self.lock().insert(key, entry);
        Registration {
            registry: Arc::clone(self),
            key,
        }
    }

    /// Records the name `connection`'s client gave in its `Hello` (already shown form).
    pub(crate) fn set_client_name(&self, connection: &Arc<dyn Connection>, name: String) {
        if let Some(entry) = self.lock().get_mut(&key_of(connection)) {
            entry.client_name = Some(name);
        }
    }

    /// Records the session `connection` is attached to.
    pub(crate) fn set_session(
        &self,
        connection: &Arc<dyn Connection>,
        session: SessionId,
        resumed: bool,
    ) {
        if let Some(entry) = self.lock().get_mut(&key_of(connection)) {
            entry.session = Some(session);
            entry.resumed = resumed;
        }
    }

    /// Every open connection, oldest first.
    pub(crate) fn entries(&self) -> Vec<Entry> {
        let mut entries: Vec<Entry> = self.lock().values().cloned().collect();
        entries.sort_by_key(|entry| entry.id);
        entries
    }

    /// How many connections are registered.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_name_is_shown_without_control_characters_and_at_most_128_characters() {
        assert_eq!(shown_client_name("till 7"), "till 7");
        assert_eq!(
            shown_client_name("a\nfake line\u{1b}[2J"),
            "a?fake line?[2J"
        );
        let long = "é".repeat(1000);
        assert_eq!(
            shown_client_name(&long).chars().count(),
            MAX_SHOWN_CLIENT_NAME_CHARS
        );
    }
}
