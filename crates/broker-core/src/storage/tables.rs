//! The database's tables (name, key and value types) and redb's error, shared by the writer
//! (`disk`) and the recovery scan (`recovery`).

use redb::TableDefinition;

pub(super) const SESSIONS: TableDefinition<'static, u128, &[u8]> = TableDefinition::new("sessions");
pub(super) const SUBSCRIPTIONS: TableDefinition<'static, (u128, u64), &[u8]> =
    TableDefinition::new("subscriptions");
pub(super) const SEQUENCES: TableDefinition<'static, (u128, u64), &[u8]> =
    TableDefinition::new("sequences");
pub(super) const MESSAGES: TableDefinition<'static, (u128, u64, u64), &[u8]> =
    TableDefinition::new("messages");
pub(super) const RETAINED: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("retained");
pub(super) const DEDUPE: TableDefinition<'static, (u64, &str, u64), &[u8]> =
    TableDefinition::new("dedupe");
pub(super) const GATEWAY: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("gateway");

/// A redb error, boxed (redb's error enum is large).
#[derive(Debug)]
pub(super) struct DbError(Box<redb::Error>);

impl<E: Into<redb::Error>> From<E> for DbError {
    fn from(err: E) -> Self {
        DbError(Box::new(err.into()))
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}
