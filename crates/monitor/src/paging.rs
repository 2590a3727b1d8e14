//! `?offset=&limit=` for the list endpoints.

use serde::{Deserialize, Serialize};

/// The largest page a request may ask for.
pub const MAX_LIMIT: usize = 10_000;

/// The page size when a request names none.
const DEFAULT_LIMIT: usize = 100;

/// A requested page.
#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Page {
    /// Items to skip.
    #[serde(default)]
    pub offset: usize,
    /// Most items to return (capped at [`MAX_LIMIT`]).
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    DEFAULT_LIMIT
}

/// One page of a list, as answered.
#[derive(Debug, Serialize)]
pub(crate) struct Paged<T> {
    /// Items in the whole list.
    pub(crate) total: usize,
    /// Items skipped.
    pub(crate) offset: usize,
    /// The page size used.
    pub(crate) limit: usize,
    /// The page.
    pub(crate) items: Vec<T>,
}

impl Page {
    /// Cuts `items` down to this page.
    pub(crate) fn apply<T>(self, items: Vec<T>) -> Paged<T> {
        let total = items.len();
        let limit = self.limit.min(MAX_LIMIT);
        let items = items.into_iter().skip(self.offset).take(limit).collect();
        Paged {
            total,
            offset: self.offset,
            limit,
            items,
        }
    }
}
