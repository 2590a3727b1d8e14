//! Cassini's monitoring endpoint: plain HTTP, off unless asked for, never on the publish path.
//!
//! Layering: each module imports only modules listed after it, `server`, `routes`, `metrics`,
//! `client`, then `sources`, `paging`, `process` and `cluster_metrics`, which import nothing of
//! this crate.
//!
//! Authentication: with a bearer token ([`MonitorSources::token`]), every path but `/`,
//! `/healthz` and `/readyz` answers `401` (with `WWW-Authenticate: Bearer`) unless the request carries
//! `Authorization: Bearer TOKEN`. Without a token every path answers anyone, and every session
//! id in `/connz` and `/subz` is replaced by the string `"redacted"` (a session id is what a
//! client presents to resume its session).
//!
//! | path | answer |
//! |---|---|
//! | `/` | the status page (HTML; holds no data itself, see below) |
//! | `/healthz` | `200 ok` while the broker's actor tree runs, `503` after |
//! | `/readyz` | `200 ready` while the broker accepts connections, `503` before and during shutdown |
//! | `/metrics` | Prometheus / OpenMetrics text |
//! | `/varz` | JSON: process and configuration facts, counts and counters |
//! | `/connz` | JSON: open connections with transport facts and their subscriptions (paged) |
//! | `/subz` | JSON: every subscription and its queue (paged) |
//! | `/cluster/members` | JSON: the Raft group's `voters`, `learners`, `leader` and whether a change is `joint` (`404` without `cluster.members`) |
//! | `/cluster/add?node=NAME`, `/cluster/remove?node=NAME` | POST, token required (`403` without one configured): change the Raft group's voters; the new membership, or `{"error", "code"}` |
//! | `/topicz` | JSON: every subscribed filter with members and queue totals (paged), and `traffic`: messages and bytes per topic published to (bounded, busiest first) |
//!
//! Paged lists take `?offset=N&limit=M` (default 0 and 100, `limit` at most 10,000) and answer
//! with `total`, `offset`, `limit` and the page. At most 32 requests are answered at once; a
//! request beyond that gets `503 busy` at once, so nothing queues.
//!
//! The status page (`/`) is one self-contained file, `status.html`: its inline script polls
//! `/varz`, `/connz` and `/subz` every second and draws the counts, a rate chart, the
//! subscriptions with their queue fill and drops, the connections and the store. Its
//! Content-Security-Policy lets it fetch from this endpoint only. With a token, the page asks
//! for it (or takes it once from the URL fragment `#token=...`, which browsers never send to
//! a server) and keeps it in the tab's `sessionStorage`, sending it as `Authorization: Bearer`.
//!
//! # Layout
//! - `server`: [`Monitor`], binding the TCP listener and serving until told to stop.
//! - `routes`: the handlers and the JSON shapes; `/` serves `status.html`.
//! - `sources`: what the handlers read ([`MonitorSources`], [`BearerToken`], [`Readiness`]).
//! - `metrics`: the Prometheus text, rendered per scrape from the broker's counters.
//! - `cluster_metrics`: its per-peer families on a cluster node.
//! - `paging`: `offset` / `limit`.
//! - `process`: facts about this process (pid, resident memory).
//! - [`client`]: a small HTTP client for `cassini top`, `cassini cluster` and tests.

pub mod client;
mod cluster_metrics;
mod metrics;
mod paging;
mod process;
mod routes;
mod server;
mod sources;

pub use paging::{Page, MAX_LIMIT};
pub use server::Monitor;
pub use sources::{BearerToken, MonitorError, MonitorSources, Readiness};
