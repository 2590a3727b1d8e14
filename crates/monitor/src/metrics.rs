//! `/metrics`: the broker's counters and gauges as Prometheus / OpenMetrics text.
//!
//! The broker keeps plain atomic counters on its hot path; this module reads them once per
//! scrape into a fresh `prometheus-client` registry and encodes it, so nothing about metrics
//! costs anything between scrapes. Rates (messages per second and so on) are the scraper's
//! `rate()` over these counters.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use cassini_broker::introspect::DropReason;
use cassini_mqtt::MqttStats;
use cassini_quic::server::HandshakeFailure;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::process;
use crate::sources::State;

type Labels = Vec<(String, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Gauge::<i64>::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

fn labelled(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) {
    let family = Family::<Labels, Counter<u64>>::default();
    for (value, count) in values {
        family
            .get_or_create(&vec![(label.to_string(), value.to_string())])
            .inc_by(count);
    }
    registry.register(name, help, family);
}

fn labelled_gauge(
    registry: &mut Registry,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (String, u64)>,
) {
    let family = Family::<Labels, Gauge<i64>>::default();
    for (value, count) in values {
        family
            .get_or_create(&vec![(label.to_string(), value)])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register(name, help, family);
}

/// The protocols every scrape shows a connection count for, even at zero.
const PROTOCOLS: [&str; 3] = ["quic", "mqtt/3.1.1", "mqtt/5"];

/// Open connections by protocol: `quic`, `mqtt/3.1.1`, `mqtt/5` (as `/connz` names them).
fn connections_by_protocol(state: &State) -> BTreeMap<String, u64> {
    let mut counts: BTreeMap<String, u64> = PROTOCOLS
        .iter()
        .map(|protocol| (protocol.to_string(), 0))
        .collect();
    for connection in state.sources.broker.connections() {
        *counts.entry(connection.protocol).or_default() += 1;
    }
    counts
}

/// The MQTT gateway's counters.
fn mqtt(r: &mut Registry, mqtt: &MqttStats) {
    let read = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
    counter(
        r,
        "mqtt_connections_accepted",
        "MQTT gateway connections whose transport was established (TLS verified, or plaintext on loopback)",
        read(&mqtt.accepted),
    );
    counter(
        r,
        "mqtt_connections_refused",
        "MQTT gateway connections refused at TLS or for a certificate without identity",
        read(&mqtt.refused),
    );
    gauge(
        r,
        "mqtt_connections_open",
        "MQTT gateway connections open, CONNECT done or not",
        read(&mqtt.open),
    );
    labelled(
        r,
        "mqtt_wills",
        "MQTT will messages by outcome: published, refused (ACL, limit, unmappable topic), cancelled (the client came back within the will delay)",
        "outcome",
        [
            ("published", read(&mqtt.wills_published)),
            ("refused", read(&mqtt.wills_refused)),
            ("cancelled", read(&mqtt.wills_cancelled)),
        ],
    );
    gauge(
        r,
        "mqtt_wills_waiting",
        "MQTT will messages waiting for their will delay",
        read(&mqtt.wills_waiting),
    );
}

/// The text for one scrape.
pub(crate) async fn render(state: &State) -> Result<String, String> {
    let broker = &state.sources.broker;
    let stats = broker.stats().await.map_err(|err| err.to_string())?;
    let counters = broker.counters().snapshot();
    let subscriptions = broker.subscriptions();
    let (retained_topics, retained_bytes) = broker.retained();
    let queued_messages: usize = subscriptions.iter().map(|s| s.depth).sum();
    let queued_bytes: usize = subscriptions.iter().map(|s| s.queued_bytes).sum();
    let deepest = subscriptions.iter().map(|s| s.depth).max().unwrap_or(0);
    let in_flight: usize = subscriptions.iter().map(|s| s.in_flight).sum();

    let mut registry = Registry::with_prefix("cassini");
    let r = &mut registry;
    counter(
        r,
        "messages_received",
        "Publishes accepted and routed (duplicates excluded)",
        counters.messages_received,
    );
    counter(
        r,
        "received_bytes",
        "Payload bytes of accepted publishes",
        counters.bytes_received,
    );
    counter(
        r,
        "publishes_rejected",
        "Publishes refused with PublishRejected",
        counters.publishes_rejected,
    );
    counter(
        r,
        "duplicate_publishes",
        "Acknowledged publishes recognised as duplicates and not routed again",
        counters.duplicates,
    );
    counter(
        r,
        "duplicates_skipped",
        "Copies of an acknowledged publish resent through another node kept from subscriptions here that had it",
        counters.duplicates_skipped,
    );
    counter(
        r,
        "no_responders",
        "Requests that reached no subscriber",
        counters.no_responders,
    );
    counter(
        r,
        "deliveries_queued",
        "Message copies queued to subscriptions: the broker's outgoing messages, before drops",
        counters.deliveries_queued,
    );
    counter(
        r,
        "delivery_bytes_queued",
        "Payload bytes of message copies queued to subscriptions",
        counters.delivery_bytes_queued,
    );
    labelled(
        r,
        "dropped_messages",
        "Messages dropped by a full subscription queue, by overflow policy (slow_consumer: subscriptions closed)",
        "reason",
        DropReason::ALL.map(|reason| (reason.as_str(), counters.dropped(reason))),
    );
    labelled(
        r,
        "sessions_opened",
        "Sessions attached to a connection: created new, or resumed after a reconnect",
        "kind",
        [
            ("created", counters.sessions_created),
            ("resumed", counters.sessions_resumed),
        ],
    );
    labelled(
        r,
        "connections_refused",
        "Authenticated connections the broker refused",
        "reason",
        [
            ("max_connections", counters.connections_refused_limit),
            ("shutting_down", counters.connections_refused_shutdown),
        ],
    );
    counter(
        r,
        "system_events_published",
        "System events published on $SYS.event.>",
        counters.events_published,
    );
    counter(
        r,
        "system_events_dropped",
        "System events dropped because the event queue was full or memory refused them",
        counters.events_dropped,
    );
    if let Some(accept) = &state.sources.accept {
        counter(
            r,
            "handshakes_accepted",
            "QUIC/TLS handshakes completed and handed to the broker",
            accept.accepted.load(Ordering::Relaxed),
        );
        labelled(
            r,
            "handshake_failures",
            "QUIC/TLS handshakes that failed, by reason (tls: certificate refused or other TLS alert)",
            "reason",
            HandshakeFailure::ALL.map(|reason| (reason.as_str(), accept.refused_for(reason))),
        );
    }
    gauge(
        r,
        "connections",
        "Open connections",
        stats.connections as u64,
    );
    labelled_gauge(
        r,
        "connections_by_protocol",
        "Open connections by protocol: quic, mqtt/3.1.1, mqtt/5",
        "protocol",
        connections_by_protocol(state),
    );
    if let Some(stats) = &state.sources.mqtt {
        mqtt(r, stats);
    }
    gauge(
        r,
        "sessions",
        "Sessions, attached or detached",
        stats.sessions as u64,
    );
    gauge(
        r,
        "subscriptions",
        "Subscriptions",
        stats.subscribers as u64,
    );
    gauge(r, "topics", "Subscribed filters", stats.topics as u64);
    gauge(
        r,
        "queued_messages",
        "Messages waiting in subscription queues",
        queued_messages as u64,
    );
    gauge(
        r,
        "queued_bytes",
        "Payload bytes waiting in subscription queues (in memory)",
        queued_bytes as u64,
    );
    gauge(
        r,
        "in_flight_messages",
        "Messages of at-least-once subscriptions sent and not yet acknowledged",
        in_flight as u64,
    );
    gauge(
        r,
        "max_queue_depth",
        "Messages in the fullest subscription queue",
        deepest as u64,
    );
    gauge(
        r,
        "retained_topics",
        "Topics with a retained value",
        retained_topics as u64,
    );
    gauge(
        r,
        "retained_bytes",
        "Bytes retained values hold in memory (payload, topic, headers, overhead)",
        retained_bytes as u64,
    );
    if let Some(storage) = broker.storage() {
        gauge(
            r,
            "storage_live_bytes",
            "Disk mode: bytes of live stored values (what storage.max_bytes bounds)",
            storage.live_bytes,
        );
        gauge(
            r,
            "storage_max_bytes",
            "Disk mode: storage.max_bytes",
            storage.max_bytes,
        );
        gauge(
            r,
            "storage_file_bytes",
            "Disk mode: the size of the database file",
            storage.file_bytes,
        );
        gauge(
            r,
            "storage_pending_bytes",
            "Disk mode: bytes of operations waiting for the next commit",
            storage.pending_bytes,
        );
        counter(
            r,
            "storage_commits",
            "Disk mode: commits (each a write and an fsync) since the broker started",
            storage.commits,
        );
        counter(
            r,
            "storage_commit_microseconds",
            "Disk mode: total duration of those commits; its rate over the commits' rate is the mean commit latency",
            storage.commit_micros_total,
        );
        gauge(
            r,
            "storage_last_commit_microseconds",
            "Disk mode: the duration of the last commit",
            storage.last_commit_micros,
        );
        gauge(
            r,
            "storage_last_commit_timestamp_seconds",
            "Disk mode: when the last commit (and its fsync) completed, Unix time; 0 before the first",
            storage.last_commit_at_ms / 1000,
        );
        gauge(
            r,
            "storage_failed",
            "Disk mode: 1 once the store failed (publishes are refused), else 0",
            u64::from(storage.failed.is_some()),
        );
    }
    let memory = broker.memory();
    gauge(
        r,
        "memory_budget_bytes",
        "The broker-wide memory budget (limits.max_memory_bytes)",
        memory.limit_bytes as u64,
    );
    gauge(
        r,
        "memory_used_bytes",
        "Bytes the memory budget counts: accepted messages and frame buffers",
        memory.used_bytes as u64,
    );
    gauge(
        r,
        "memory_message_bytes",
        "Bytes held by accepted messages (queued, in flight, retained), each counted once, and by the queue entries holding them",
        memory.message_bytes as u64,
    );
    gauge(
        r,
        "memory_frame_buffer_bytes",
        "Bytes held by stream read buffers (partially received frames)",
        memory.frame_buffer_bytes as u64,
    );
    gauge(
        r,
        "resident_memory_bytes",
        "Resident memory of the broker process",
        process::resident_bytes().unwrap_or(0),
    );
    gauge(
        r,
        "uptime_seconds",
        "Seconds since the broker started",
        state.started.elapsed().as_secs(),
    );
    gauge(
        r,
        "ready",
        "1 while the broker accepts connections",
        u64::from(state.sources.readiness.get()),
    );
    if let Some(cluster) = broker.cluster() {
        crate::cluster_metrics::register(r, &cluster.peers());
    }
    if let Some(crl) = &state.sources.crl {
        let status = crl.status();
        gauge(
            r,
            "crl_revoked_certificates",
            "Certificates the CRL in force lists",
            status.revoked as u64,
        );
        gauge(
            r,
            "crl_file_problem",
            "1 while the CRL file is missing, unreadable or invalid and the last good CRL is kept",
            u64::from(status.problem.is_some()),
        );
    }

    let mut text = String::new();
    encode(&mut text, &registry).map_err(|err| err.to_string())?;
    Ok(text)
}
