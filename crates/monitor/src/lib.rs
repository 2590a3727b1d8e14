//! Cassini's monitoring endpoint: plain HTTP, off unless asked for, never on the publish path.
//!
//! Authentication: with a bearer token ([`MonitorSources::token`]), every path but `/healthz`
//! and `/readyz` answers `401` (with `WWW-Authenticate: Bearer`) unless the request carries
//! `Authorization: Bearer TOKEN`. Without a token every path answers anyone, and every session
//! id in `/connz` and `/subz` is replaced by the string `"redacted"` (a session id is what a
//! client presents to resume its session).
//!
//! | path | answer |
//! |---|---|
//! | `/healthz` | `200 ok` while the broker's actor tree runs, `503` after |
//! | `/readyz` | `200 ready` while the broker accepts connections, `503` before and during shutdown |
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/varz` | JSON: process and configuration facts, counts and counters |
//! | `/connz` | JSON: open connections with transport facts and their subscriptions (paged) |
//! | `/subz` | JSON: every subscription and its queue (paged) |
//! | `/topicz` | JSON: every subscribed filter with members and queue totals (paged) |
//!
//! Paged lists take `?offset=N&limit=M` (default 0 and 100, `limit` at most 10,000) and answer
//! with `total`, `offset`, `limit` and the page. At most 32 requests are answered at once; a
//! request beyond that gets `503 busy` at once, so nothing queues.
//!
//! # Layout
//! - `server`: [`Monitor`], binding the TCP listener and serving until told to stop.
//! - `routes`: the handlers and the JSON shapes.
//! - `metrics`: the Prometheus text, rendered per scrape from the broker's counters.
//! - `paging`: `offset` / `limit`.
//! - `process`: facts about this process (pid, resident memory).
//! - [`client`]: a small HTTP GET client for `cassini top` and tests.

pub mod client;
mod metrics;
mod paging;
mod process;
mod routes;
mod server;

pub use paging::{Page, MAX_LIMIT};
pub use server::{BearerToken, Monitor, MonitorError, MonitorSources, Readiness};
