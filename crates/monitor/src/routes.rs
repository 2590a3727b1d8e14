//! The endpoints and their JSON shapes. Field names are a contract with dashboards and
//! scripts (see docs/OPERATIONS.md): add fields, never rename them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::extract::{Query, Request, State as Extract};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::metrics;
use crate::paging::Page;
use crate::process;
use crate::sources::State;
use cassini_broker::replication::{MembershipChange, MembershipError};

type Shared = Extract<Arc<State>>;

/// Most requests answered at once; more are refused with `503` at once rather than queued.
const MAX_IN_FLIGHT: usize = 32;

pub(crate) fn router(state: Arc<State>) -> Router {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .route("/varz", get(varz))
        .route("/connz", get(connz))
        .route("/subz", get(subz))
        .route("/topicz", get(topicz))
        .route("/clusterz", get(clusterz))
        .route("/cluster/members", get(cluster_members))
        .route("/cluster/add", post(cluster_add))
        .route("/cluster/remove", post(cluster_remove))
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            authorize,
        ))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            let in_flight = Arc::clone(&in_flight);
            async move {
                match in_flight.try_acquire_owned() {
                    Ok(_permit) => next.run(request).await,
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "busy\n").into_response(),
                }
            }
        }))
        .with_state(state)
}

/// The value session ids are replaced by when no token protects the endpoint.
pub(crate) const REDACTED: &str = "redacted";

/// With a token configured, lets through `/`, `/healthz`, `/readyz` and requests bearing the
/// token; answers `401` to the rest. `/` is the status page itself, which holds no data: its
/// script presents the token on each request for the JSON it shows.
async fn authorize(Extract(state): Shared, request: Request, next: Next) -> Response {
    let Some(token) = &state.sources.token else {
        return next.run(request).await;
    };
    if matches!(request.uri().path(), "/" | "/healthz" | "/readyz") {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(presented) if token.matches(presented) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required\n",
        )
            .into_response(),
    }
}

/// The status page: one self-contained file (markup, style and script inline).
const STATUS_PAGE: &str = include_str!("status.html");

/// What the status page may do: run its own inline script and style, and fetch from this
/// endpoint only; nothing is loaded from elsewhere, and it cannot be framed.
const STATUS_PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, STATUS_PAGE_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn healthz(Extract(state): Shared) -> Response {
    if state.sources.broker.is_running() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "broker stopped\n").into_response()
    }
}

async fn readyz(Extract(state): Shared) -> Response {
    if state.sources.broker.is_running() && state.sources.readiness.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn prometheus(Extract(state): Shared) -> Response {
    match metrics::render(&state).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(err) => unavailable(&err),
    }
}

fn unavailable(reason: &str) -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({ "error": reason })),
    )
        .into_response()
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

async fn varz(Extract(state): Shared) -> Response {
    let broker = &state.sources.broker;
    let stats = match broker.stats().await {
        Ok(stats) => stats,
        Err(err) => return unavailable(&err.to_string()),
    };
    let (retained_topics, retained_bytes) = broker.retained();
    let handshakes = state.sources.accept.as_ref().map(|accept| {
        let reasons: serde_json::Map<String, Value> = cassini_quic::server::HandshakeFailure::ALL
            .iter()
            .map(|reason| {
                (
                    reason.as_str().to_string(),
                    json!(accept.refused_for(*reason)),
                )
            })
            .collect();
        json!({
            "accepted": accept.accepted.load(Ordering::Relaxed),
            "refused": accept.refused.load(Ordering::Relaxed),
            "refused_by_reason": reasons,
        })
    });
    Json(json!({
        "server": {
            "name": "cassini",
            "version": env!("CARGO_PKG_VERSION"),
            "pid": std::process::id(),
            "started_at_ms": state
                .started_at
                .duration_since(UNIX_EPOCH)
                .map(millis)
                .unwrap_or(0),
            "uptime_ms": millis(state.started.elapsed()),
            "listen": state.sources.listen.map(|addr| addr.to_string()),
            "monitor": state.monitor_addr.to_string(),
            "cpus": process::cpus(),
            "resident_memory_bytes": process::resident_bytes(),
            "ready": state.sources.readiness.get(),
        },
        "counts": {
            "connections": stats.connections,
            "sessions": stats.sessions,
            "subscriptions": stats.subscribers,
            "topics": stats.topics,
            "retained_topics": retained_topics,
            "retained_bytes": retained_bytes,
        },
        "memory": broker.memory(),
        "storage": broker.storage(),
        "counters": broker.counters().snapshot(),
        "handshakes": handshakes,
        "revocation": state.sources.crl.as_ref().map(|crl| {
            let status = crl.status();
            json!({
                "crl": status.path.display().to_string(),
                "in_force": status.in_force,
                "revoked": status.revoked,
                "loaded_at_ms": status.loaded_at_ms,
                "problem": status.problem,
            })
        }),
        "token_required": state.sources.token.is_some(),
        "config": state.sources.config,
    }))
    .into_response()
}

fn paged<T: Serialize>(name: &str, page: Page, items: Vec<T>) -> Response {
    let paged = page.apply(items);
    let mut body = serde_json::Map::new();
    body.insert("total".into(), json!(paged.total));
    body.insert("offset".into(), json!(paged.offset));
    body.insert("limit".into(), json!(paged.limit));
    body.insert(name.into(), json!(paged.items));
    Json(Value::Object(body)).into_response()
}

async fn connz(Extract(state): Shared, Query(page): Query<Page>) -> Response {
    let mut connections = state.sources.broker.connections();
    if state.sources.token.is_none() {
        for connection in &mut connections {
            if let Some(session) = &mut connection.session {
                REDACTED.clone_into(session);
            }
            for subscription in &mut connection.subscriptions {
                REDACTED.clone_into(&mut subscription.session);
            }
        }
    }
    paged("connections", page, connections)
}

async fn subz(Extract(state): Shared, Query(page): Query<Page>) -> Response {
    let mut subscriptions = state.sources.broker.subscriptions();
    if state.sources.token.is_none() {
        for subscription in &mut subscriptions {
            REDACTED.clone_into(&mut subscription.session);
        }
    }
    paged("subscriptions", page, subscriptions)
}

/// The cluster as this node sees it: `{"node": null, "peers": []}` on a standalone broker.
async fn clusterz(Extract(state): Shared) -> Response {
    let cluster = state.sources.broker.cluster();
    Json(json!({
        "node": cluster.as_ref().map(|port| port.node().to_owned()),
        "raft": cluster.as_ref().and_then(|port| port.replica()).map(|replica| replica.status()),
        "peers": cluster.map(|port| port.peers()).unwrap_or_default(),
    }))
    .into_response()
}

/// How long a membership change may take before the answer says it did not complete.
const MEMBERSHIP_CHANGE_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `?node=NAME` of the membership changes.
#[derive(Debug, serde::Deserialize)]
struct NodeQuery {
    node: String,
}

/// An error answer: `{"error": message, "code": code}`.
fn refused(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({ "error": message, "code": code }))).into_response()
}

/// This node's Raft group, if it runs one.
fn replica(state: &State) -> Option<Arc<cassini_broker::replication::Replica>> {
    state
        .sources
        .broker
        .cluster()
        .and_then(|port| port.replica())
}

/// The answer of a node without a Raft group.
fn no_raft() -> Response {
    refused(
        StatusCode::NOT_FOUND,
        "no_raft",
        "this node runs no Raft group: it is not a cluster node with `cluster.members`",
    )
}

/// The Raft group's membership as this node knows it: voters, learners, leader.
async fn cluster_members(Extract(state): Shared) -> Response {
    match replica(&state) {
        Some(replica) => Json(replica.membership()).into_response(),
        None => no_raft(),
    }
}

async fn cluster_add(Extract(state): Shared, Query(query): Query<NodeQuery>) -> Response {
    change_membership(&state, MembershipChange::Add(query.node)).await
}

async fn cluster_remove(Extract(state): Shared, Query(query): Query<NodeQuery>) -> Response {
    change_membership(&state, MembershipChange::Remove(query.node)).await
}

/// A membership change (`cassini cluster add|remove`): only with a token configured (it
/// changes the cluster, so it is never open to whoever reaches the endpoint). Answers the new
/// membership, or `{"error", "code"}` with a status saying why not.
async fn change_membership(state: &State, change: MembershipChange) -> Response {
    if state.sources.token.is_none() {
        return refused(
            StatusCode::FORBIDDEN,
            "token_required",
            "membership changes need the monitoring endpoint's token: set `monitor.token_file` on the node",
        );
    }
    let Some(replica) = replica(state) else {
        return no_raft();
    };
    match replica
        .change_membership(change, MEMBERSHIP_CHANGE_LIMIT)
        .await
    {
        Ok(membership) => Json(membership).into_response(),
        Err(err) => {
            let (status, code) = match &err {
                MembershipError::NoQuorum(_) => (StatusCode::SERVICE_UNAVAILABLE, "no_quorum"),
                MembershipError::UnknownNode(_) => (StatusCode::NOT_FOUND, "unknown_node"),
                MembershipError::NotAMember(_) => (StatusCode::NOT_FOUND, "not_a_member"),
                MembershipError::InProgress => (StatusCode::CONFLICT, "change_in_progress"),
                MembershipError::LastMember(_) => (StatusCode::CONFLICT, "last_member"),
                MembershipError::NotCaughtUp(..) => (StatusCode::GATEWAY_TIMEOUT, "not_caught_up"),
                MembershipError::IdCollision(..) => (StatusCode::CONFLICT, "id_collision"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "stopped"),
            };
            refused(status, code, &err.to_string())
        }
    }
}

/// The subscribed filters (paged), and `traffic`: the topics published to, busiest first
/// (the same `offset` and `limit` cut them), with the table's bound and what went untracked.
async fn topicz(Extract(state): Shared, Query(page): Query<Page>) -> Response {
    let broker = &state.sources.broker;
    let traffic = broker.topic_traffic();
    let topics = page.apply(traffic.topics);
    let filters = page.apply(broker.topics());
    Json(json!({
        "total": filters.total,
        "offset": filters.offset,
        "limit": filters.limit,
        "topics": filters.items,
        "traffic": {
            "total": topics.total,
            "max_tracked": traffic.max_tracked,
            "untracked_messages": traffic.untracked_messages,
            "untracked_bytes": traffic.untracked_bytes,
            "topics": topics.items,
        },
    }))
    .into_response()
}
