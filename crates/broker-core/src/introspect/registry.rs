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
        };
        self.lock().insert(key, entry);
        Registration {
            registry: Arc::clone(self),
            key,
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
