//! Every monitoring endpoint against a running broker with live clients: a real broker behind
//! a real QUIC endpoint on loopback, clients with rcgen certificates, the monitor on an
//! ephemeral port, answers read over HTTP.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // tests fail loudly

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_e2e::gateway::{connect_v5, Gateway};
use cassini_e2e::{eventually, identity_of, within, Pki, TestBroker};
use cassini_monitor::client::{get_as, get_json_as, post_as, ClientError};
use cassini_monitor::{BearerToken, Monitor, MonitorSources, Readiness};
use cassini_mqtt::MqttStats;
use cassini_quic::server::HandshakeFailure;
use futures_util::StreamExt;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(10);

/// The token the monitors of these tests require, unless a test says otherwise.
const TOKEN: &str = "test-token-3f9a";

fn token() -> BearerToken {
    BearerToken::new(TOKEN).expect("a token")
}

/// GETs `path` with the tests' token.
async fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<(u16, String), ClientError> {
    get_as(addr, path, Some(&token()), limit).await
}

/// GETs `path` with the tests' token, as JSON.
async fn get_json(addr: SocketAddr, path: &str, limit: Duration) -> Result<Value, ClientError> {
    get_json_as(addr, path, Some(&token()), limit).await
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Str,
    Num,
    Bool,
    Obj,
    Arr,
    StrOrNull,
    NumOrNull,
}

/// Fails unless `value` has every key with the given kind.
fn assert_schema(value: &Value, what: &str, keys: &[(&str, Kind)]) {
    for (key, kind) in keys {
        let field = value
            .get(key)
            .unwrap_or_else(|| panic!("{what} has no `{key}`: {value}"));
        let ok = match kind {
            Kind::Str => field.is_string(),
            Kind::Num => field.is_u64(),
            Kind::Bool => field.is_boolean(),
            Kind::Obj => field.is_object(),
            Kind::Arr => field.is_array(),
            Kind::StrOrNull => field.is_string() || field.is_null(),
            Kind::NumOrNull => field.is_u64() || field.is_null(),
        };
        assert!(ok, "{what}.{key} should be {kind:?}: {field}");
    }
}

fn paged_schema(value: &Value, what: &str, list: &str) {
    assert_schema(
        value,
        what,
        &[
            ("total", Kind::Num),
            ("offset", Kind::Num),
            ("limit", Kind::Num),
            (list, Kind::Arr),
        ],
    );
}

const SUBSCRIPTION: &[(&str, Kind)] = &[
    ("session", Kind::Str),
    ("subscription", Kind::Num),
    ("filter", Kind::Str),
    ("queue_group", Kind::StrOrNull),
    ("policy", Kind::Str),
    ("max_messages", Kind::Num),
    ("max_bytes", Kind::Num),
    ("depth", Kind::Num),
    ("queued_bytes", Kind::Num),
    ("dropped", Kind::Num),
    ("delivery", Kind::Str),
    ("in_flight", Kind::Num),
    ("redelivered", Kind::Num),
    ("last_sequence", Kind::Num),
    ("attached", Kind::Bool),
];

async fn start_monitor(broker: &TestBroker) -> (SocketAddr, Readiness) {
    start_monitor_with(broker, Some(token())).await
}

async fn start_monitor_with(
    broker: &TestBroker,
    token: Option<BearerToken>,
) -> (SocketAddr, Readiness) {
    start_monitor_of(broker, token, None).await
}

/// A monitor of `broker`, and of its MQTT gateway's counters `mqtt`.
async fn start_monitor_of(
    broker: &TestBroker,
    token: Option<BearerToken>,
    mqtt: Option<Arc<MqttStats>>,
) -> (SocketAddr, Readiness) {
    let readiness = Readiness::default();
    let sources = MonitorSources {
        broker: broker.broker.clone(),
        accept: Some(broker.accept_stats()),
        mqtt,
        listen: Some(broker.addr),
        config: json!({ "listen": broker.addr.to_string() }),
        readiness: readiness.clone(),
        crl: None,
        token,
    };
    let monitor = Monitor::bind("127.0.0.1:0".parse().unwrap(), sources)
        .await
        .expect("monitor binds");
    let addr = monitor.local_addr();
    assert_ne!(addr.port(), 0, "the bound port is exposed");
    tokio::spawn(monitor.serve(std::future::pending()));
    (addr, readiness)
}

fn sample(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let found = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match found.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{name} is not a single value"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_describes_a_running_broker_with_live_clients() {
    let broker = TestBroker::start().await;
    let (monitor, readiness) = start_monitor(&broker).await;

    let (status, _) = get(monitor, "/readyz", LIMIT).await.unwrap();
    assert_eq!(status, 503, "not ready until the owner says so");
    readiness.set(true);
    assert_eq!(
        get(monitor, "/readyz", LIMIT).await.unwrap(),
        (200, "ready\n".into())
    );
    assert_eq!(
        get(monitor, "/healthz", LIMIT).await.unwrap(),
        (200, "ok\n".into())
    );

    let alice = broker.client("alice").await;
    let mut demo = alice.subscribe("demo.>").await.unwrap();
    let bob = broker.client("bob").await;
    let _work = bob.subscribe_queue("work.*", "workers").await.unwrap();
    // A name for logs and monitoring; a control character in it is shown as `?`.
    let carol = broker
        .client_builder("carol")
        .client_name("till\n7")
        .connect()
        .await
        .expect("carol connects");
    for i in 0..5 {
        carol
            .publish("demo.a", Bytes::from(format!("m{i}")))
            .await
            .unwrap();
    }
    for _ in 0..5 {
        within("a delivery", demo.next()).await.expect("delivered");
    }

    // A client whose certificate another CA signed is refused by TLS.
    let stranger = Pki::new();
    let (chain, key) = identity_of(&stranger.client("mallory"));
    let refused = cassini_client::Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .connect()
        .await;
    assert!(refused.is_err(), "a foreign certificate is refused");
    let accept = broker.accept_stats();
    eventually("the TLS refusal is counted", || async {
        (accept.refused_for(HandshakeFailure::Tls) >= 1).then_some(())
    })
    .await;
    eventually("three connections with sessions", || async {
        let connz = get_json(monitor, "/connz", LIMIT).await.ok()?;
        let items = connz["connections"].as_array()?;
        (items.len() == 3 && items.iter().all(|c| c["session"].is_string())).then_some(())
    })
    .await;

    // /varz
    let varz = get_json(monitor, "/varz", LIMIT).await.unwrap();
    assert_schema(
        &varz,
        "varz",
        &[
            ("server", Kind::Obj),
            ("counts", Kind::Obj),
            ("counters", Kind::Obj),
            ("handshakes", Kind::Obj),
            ("config", Kind::Obj),
        ],
    );
    assert_schema(
        &varz["server"],
        "varz.server",
        &[
            ("name", Kind::Str),
            ("version", Kind::Str),
            ("pid", Kind::Num),
            ("started_at_ms", Kind::Num),
            ("uptime_ms", Kind::Num),
            ("listen", Kind::Str),
            ("monitor", Kind::Str),
            ("cpus", Kind::Num),
            ("resident_memory_bytes", Kind::NumOrNull),
            ("ready", Kind::Bool),
        ],
    );
    assert_eq!(varz["server"]["listen"], broker.addr.to_string());
    assert_eq!(varz["server"]["monitor"], monitor.to_string());
    assert_eq!(varz["counts"]["connections"], 3);
    assert_eq!(varz["counts"]["subscriptions"], 2);
    assert_eq!(varz["counts"]["topics"], 2);
    let counters = &varz["counters"];
    for key in [
        "messages_received",
        "bytes_received",
        "publishes_rejected",
        "duplicates",
        "no_responders",
        "deliveries_queued",
        "delivery_bytes_queued",
        "dropped_oldest",
        "dropped_latest",
        "dropped_newest",
        "dropped_slow_consumer",
        "sessions_created",
        "sessions_resumed",
        "connections_refused_limit",
        "connections_refused_shutdown",
        "events_published",
        "events_dropped",
    ] {
        assert!(counters[key].is_u64(), "varz.counters.{key}: {counters}");
    }
    assert_eq!(counters["messages_received"], 5);
    assert_eq!(counters["bytes_received"], 10);
    assert_eq!(counters["deliveries_queued"], 5);
    assert_eq!(counters["sessions_created"], 3);
    assert!(
        varz["handshakes"]["refused_by_reason"]["tls"]
            .as_u64()
            .unwrap()
            >= 1
    );
    assert_eq!(varz["handshakes"]["accepted"], 3);
    assert_eq!(varz["config"]["listen"], broker.addr.to_string());

    // /connz
    let connz = get_json(monitor, "/connz", LIMIT).await.unwrap();
    paged_schema(&connz, "connz", "connections");
    assert_eq!(connz["total"], 3);
    let connections = connz["connections"].as_array().unwrap();
    let mut identities = Vec::new();
    for connection in connections {
        assert_schema(
            connection,
            "connz.connections[]",
            &[
                ("id", Kind::Num),
                ("identity", Kind::Str),
                ("remote", Kind::Str),
                ("name", Kind::StrOrNull),
                ("connected_at_ms", Kind::Num),
                ("uptime_ms", Kind::Num),
                ("session", Kind::Str),
                ("resumed", Kind::Bool),
                ("transport", Kind::Obj),
                ("subscriptions", Kind::Arr),
            ],
        );
        assert_schema(
            &connection["transport"],
            "connz.connections[].transport",
            &[
                ("rtt_us", Kind::Num),
                ("congestion_window", Kind::Num),
                ("bytes_sent", Kind::Num),
                ("bytes_received", Kind::Num),
                ("packets_sent", Kind::Num),
                ("packets_lost", Kind::Num),
                ("path_mtu_bytes", Kind::Num),
                ("congestion_events", Kind::Num),
                ("streams_opened", Kind::Num),
                ("streams_accepted", Kind::Num),
            ],
        );
        assert!(
            connection["transport"]["congestion_window"]
                .as_u64()
                .unwrap()
                > 0
        );
        assert!(connection["transport"]["bytes_received"].as_u64().unwrap() > 0);
        assert_eq!(connection["session"].as_str().unwrap().len(), 32);
        assert!(connection["remote"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:"));
        for subscription in connection["subscriptions"].as_array().unwrap() {
            assert_schema(
                subscription,
                "connz.connections[].subscriptions[]",
                SUBSCRIPTION,
            );
            assert_eq!(subscription["session"], connection["session"]);
        }
        identities.push(connection["identity"].as_str().unwrap().to_string());
    }
    identities.sort();
    assert_eq!(identities, ["alice", "bob", "carol"]);
    let names: Vec<(&Value, &Value)> = connections
        .iter()
        .map(|c| (&c["identity"], &c["name"]))
        .collect();
    for (identity, name) in names {
        let expected = if identity == "carol" {
            json!("till?7")
        } else {
            Value::Null
        };
        assert_eq!(*name, expected, "the name {identity} gave");
    }
    let alice_connz = connections
        .iter()
        .find(|c| c["identity"] == "alice")
        .unwrap();
    let alice_subs = alice_connz["subscriptions"].as_array().unwrap();
    assert_eq!(alice_subs.len(), 1);
    assert_eq!(alice_subs[0]["filter"], "demo.>");
    assert_eq!(alice_subs[0]["policy"], "drop_oldest");
    assert_eq!(alice_subs[0]["delivery"], "at_most_once");
    assert_eq!(alice_subs[0]["last_sequence"], 5);
    assert_eq!(alice_subs[0]["attached"], true);
    assert!(alice_connz["transport"]["streams_opened"].as_u64().unwrap() >= 1);

    // Paging.
    let second = get_json(monitor, "/connz?offset=1&limit=1", LIMIT)
        .await
        .unwrap();
    paged_schema(&second, "connz page", "connections");
    assert_eq!(second["total"], 3);
    assert_eq!(second["limit"], 1);
    assert_eq!(second["connections"].as_array().unwrap().len(), 1);
    assert_eq!(second["connections"][0]["id"], connections[1]["id"]);
    let past = get_json(monitor, "/connz?offset=10", LIMIT).await.unwrap();
    assert_eq!(past["connections"].as_array().unwrap().len(), 0);
    let capped = get_json(monitor, "/subz?limit=1000000", LIMIT)
        .await
        .unwrap();
    assert_eq!(capped["limit"], cassini_monitor::MAX_LIMIT);
    let (status, _) = get(monitor, "/connz?limit=many", LIMIT).await.unwrap();
    assert_eq!(status, 400, "a bad page is a client error");

    // /subz
    let subz = get_json(monitor, "/subz", LIMIT).await.unwrap();
    paged_schema(&subz, "subz", "subscriptions");
    assert_eq!(subz["total"], 2);
    for subscription in subz["subscriptions"].as_array().unwrap() {
        assert_schema(subscription, "subz.subscriptions[]", SUBSCRIPTION);
    }
    let worker = subz["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["filter"] == "work.*")
        .unwrap();
    assert_eq!(worker["queue_group"], "workers");

    // /clusterz: a standalone broker has no node name and no peers.
    let clusterz = get_json(monitor, "/clusterz", LIMIT).await.unwrap();
    assert_eq!(clusterz["node"], Value::Null);
    assert_eq!(clusterz["peers"], serde_json::json!([]));

    // /topicz
    let topicz = get_json(monitor, "/topicz", LIMIT).await.unwrap();
    paged_schema(&topicz, "topicz", "topics");
    assert_eq!(topicz["total"], 2);
    let topics = topicz["topics"].as_array().unwrap();
    for topic in topics {
        assert_schema(
            topic,
            "topicz.topics[]",
            &[
                ("filter", Kind::Str),
                ("subscriptions", Kind::Num),
                ("groups", Kind::Arr),
                ("queued_messages", Kind::Num),
                ("queued_bytes", Kind::Num),
                ("dropped", Kind::Num),
            ],
        );
    }
    assert_eq!(topics[0]["filter"], "demo.>");
    assert_eq!(topics[0]["subscriptions"], 1);
    assert_eq!(topics[1]["filter"], "work.*");
    assert_eq!(
        topics[1]["groups"],
        json!([{ "name": "workers", "members": 1 }])
    );
    // The topics published to, not only the filters subscribed.
    let traffic = &topicz["traffic"];
    assert_schema(
        traffic,
        "topicz.traffic",
        &[
            ("total", Kind::Num),
            ("max_tracked", Kind::Num),
            ("untracked_messages", Kind::Num),
            ("untracked_bytes", Kind::Num),
            ("topics", Kind::Arr),
        ],
    );
    assert_eq!(traffic["total"], 1);
    assert_eq!(traffic["max_tracked"], 10_000);
    assert_eq!(
        traffic["topics"],
        json!([{ "topic": "demo.a", "messages": 5, "bytes": 10 }])
    );

    // /metrics, read by a real Prometheus text parser.
    let (status, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    assert!(scrape
        .samples
        .iter()
        .all(|s| s.metric.starts_with("cassini_")));
    assert!(
        scrape.docs.contains_key("cassini_messages_received"),
        "HELP lines"
    );
    assert_eq!(
        sample(&scrape, "cassini_messages_received_total", None),
        5.0
    );
    assert_eq!(sample(&scrape, "cassini_received_bytes_total", None), 10.0);
    assert_eq!(
        sample(&scrape, "cassini_deliveries_queued_total", None),
        5.0
    );
    assert_eq!(sample(&scrape, "cassini_connections", None), 3.0);
    assert_eq!(sample(&scrape, "cassini_sessions", None), 3.0);
    assert_eq!(sample(&scrape, "cassini_subscriptions", None), 2.0);
    assert_eq!(sample(&scrape, "cassini_topics", None), 2.0);
    assert_eq!(sample(&scrape, "cassini_ready", None), 1.0);
    assert_eq!(
        sample(
            &scrape,
            "cassini_sessions_opened_total",
            Some(("kind", "created"))
        ),
        3.0
    );
    assert_eq!(
        sample(
            &scrape,
            "cassini_sessions_opened_total",
            Some(("kind", "resumed"))
        ),
        0.0
    );
    assert!(
        sample(
            &scrape,
            "cassini_handshake_failures_total",
            Some(("reason", "tls"))
        ) >= 1.0
    );
    assert_eq!(
        sample(&scrape, "cassini_handshakes_accepted_total", None),
        3.0
    );
    for reason in ["drop_oldest", "latest", "drop_newest", "slow_consumer"] {
        assert_eq!(
            sample(
                &scrape,
                "cassini_dropped_messages_total",
                Some(("reason", reason))
            ),
            0.0
        );
    }
    for gauge in [
        "cassini_queued_messages",
        "cassini_queued_bytes",
        "cassini_max_queue_depth",
        "cassini_in_flight_messages",
        "cassini_retained_topics",
        "cassini_retained_bytes",
        "cassini_uptime_seconds",
        "cassini_resident_memory_bytes",
    ] {
        sample(&scrape, gauge, None);
    }

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    carol.close().await.unwrap();
    eventually("connections gone from /connz", || async {
        let connz = get_json(monitor, "/connz", LIMIT).await.ok()?;
        (connz["total"] == 0).then_some(())
    })
    .await;
    let handle = broker.broker.clone();
    broker.stop().await;
    assert!(!handle.is_running());
    assert_eq!(get(monitor, "/healthz", LIMIT).await.unwrap().0, 503);
    assert_eq!(get(monitor, "/readyz", LIMIT).await.unwrap().0, 503);
    assert_eq!(accept.accepted.load(Ordering::Relaxed), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drops_in_a_detached_sessions_queue_are_counted() {
    use cassini_protocol::{OverflowPolicy, SubscribeOptions};
    let broker = TestBroker::start().await;
    let (monitor, _readiness) = start_monitor(&broker).await;
    let dave = broker.client("dave").await;
    let options = SubscribeOptions {
        overflow: OverflowPolicy::DropNewest,
        max_queued_messages: Some(1),
        ..SubscribeOptions::default()
    };
    // A subscription whose session is detached fills its queue of one and refuses the rest.
    let _sub = dave.subscribe_with("cold.>", options).await.unwrap();
    let session = eventually("dave's session", || async {
        let connz = get_json(monitor, "/connz", LIMIT).await.ok()?;
        connz["connections"][0]["session"]
            .as_str()
            .map(str::to_string)
    })
    .await;
    drop(dave);
    let publisher = broker.client("erin").await;
    eventually("dave's connection gone, the session detached", || async {
        let subz = get_json(monitor, "/subz", LIMIT).await.ok()?;
        (subz["subscriptions"][0]["attached"] == false).then_some(())
    })
    .await;
    for i in 0..4 {
        publisher
            .publish("cold.x", Bytes::from(format!("c{i}")))
            .await
            .unwrap();
    }
    eventually("drops counted", || async {
        let subz = get_json(monitor, "/subz", LIMIT).await.ok()?;
        let sub = &subz["subscriptions"][0];
        (sub["dropped"] == 3 && sub["depth"] == 1 && sub["session"] == session.as_str())
            .then_some(())
    })
    .await;
    let (_, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        sample(
            &scrape,
            "cassini_dropped_messages_total",
            Some(("reason", "drop_newest"))
        ),
        3.0
    );
    assert_eq!(sample(&scrape, "cassini_queued_messages", None), 1.0);
    assert_eq!(sample(&scrape, "cassini_max_queue_depth", None), 1.0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_session_is_counted_and_shown() {
    use cassini_client::ConnectionState;
    use cassini_e2e::edge::{edge_client, quick_broker, wait_for_state};
    use cassini_e2e::relay::UdpRelay;
    let broker = quick_broker(Default::default()).await;
    let (monitor, _readiness) = start_monitor(&broker).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let session = edge.session_id();
    relay.cut();
    broker
        .wait_for_stats("the broker notices the drop", |s| s.connections == 0)
        .await;
    relay.restore();
    wait_for_state(&edge, "the edge resumes", |state| {
        matches!(state, ConnectionState::Connected { resumed: true, .. })
    })
    .await;
    let connz = eventually("the resumed connection in /connz", || async {
        let connz = get_json(monitor, "/connz", LIMIT).await.ok()?;
        (connz["connections"][0]["resumed"] == true).then_some(connz)
    })
    .await;
    assert_eq!(connz["connections"][0]["session"], session.to_string());
    let (_, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert_eq!(
        sample(
            &scrape,
            "cassini_sessions_opened_total",
            Some(("kind", "resumed"))
        ),
        1.0
    );
    assert_eq!(
        sample(
            &scrape,
            "cassini_sessions_opened_total",
            Some(("kind", "created"))
        ),
        1.0
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_at_least_once_subscription_shows_its_delivery_mode() {
    use cassini_protocol::{AckOptions, SubscribeOptions};
    let broker = TestBroker::start().await;
    let (monitor, _readiness) = start_monitor(&broker).await;
    let frank = broker.client("frank").await;
    let options = SubscribeOptions {
        acks: Some(AckOptions::default()),
        ..SubscribeOptions::default()
    };
    let mut orders = frank.subscribe_with("orders.>", options).await.unwrap();
    let _plain = frank.subscribe("news.>").await.unwrap();
    frank
        .publish("orders.1", Bytes::from_static(b"o"))
        .await
        .unwrap();
    within("the order", orders.next()).await.expect("delivered");
    let subz = get_json(monitor, "/subz", LIMIT).await.unwrap();
    let modes: Vec<(&str, &str)> = subz["subscriptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["filter"].as_str().unwrap(),
                s["delivery"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        modes,
        [("orders.>", "at_least_once"), ("news.>", "at_most_once")]
    );
    let (_, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(sample(&scrape, "cassini_in_flight_messages", None) <= 1.0);
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_every_endpoint_but_health_and_without_one_session_ids_are_redacted() {
    let broker = TestBroker::start().await;
    let alice = broker.client("alice").await;
    let _demo = alice.subscribe("demo.>").await.unwrap();
    let session = alice.session_id().to_string();

    let (guarded, readiness) = start_monitor(&broker).await;
    readiness.set(true);
    for path in ["/healthz", "/readyz"] {
        let (status, _) = get_as(guarded, path, None, LIMIT).await.unwrap();
        assert_eq!(status, 200, "{path} needs no token");
    }
    let wrong = BearerToken::new("test-token-3f9b").unwrap();
    for path in ["/metrics", "/varz", "/connz", "/subz", "/topicz"] {
        let (status, body) = get_as(guarded, path, None, LIMIT).await.unwrap();
        assert_eq!(status, 401, "{path} without a token: {body}");
        assert!(!body.contains("alice"), "{path} leaks nothing: {body}");
        let (status, _) = get_as(guarded, path, Some(&wrong), LIMIT).await.unwrap();
        assert_eq!(status, 401, "{path} with a wrong token");
        let (status, _) = get(guarded, path, LIMIT).await.unwrap();
        assert_eq!(status, 200, "{path} with the token");
    }
    let connz = eventually("alice in /connz", || async {
        let connz = get_json(guarded, "/connz", LIMIT).await.ok()?;
        (connz["connections"][0]["subscriptions"][0]["session"] == session.as_str())
            .then_some(connz)
    })
    .await;
    assert_eq!(connz["connections"][0]["session"], session.as_str());
    let subz = get_json(guarded, "/subz", LIMIT).await.unwrap();
    assert_eq!(subz["subscriptions"][0]["session"], session.as_str());

    let (open, _) = start_monitor_with(&broker, None).await;
    let connz = get_json_as(open, "/connz", None, LIMIT).await.unwrap();
    let connection = &connz["connections"][0];
    assert_eq!(connection["identity"], "alice");
    assert_eq!(connection["session"], "redacted");
    assert_eq!(connection["subscriptions"][0]["session"], "redacted");
    let subz = get_json_as(open, "/subz", None, LIMIT).await.unwrap();
    assert_eq!(subz["subscriptions"][0]["session"], "redacted");
    assert_eq!(subz["subscriptions"][0]["filter"], "demo.>");
    for path in ["/varz", "/connz", "/subz", "/topicz", "/metrics"] {
        let (_, body) = get_as(open, path, None, LIMIT).await.unwrap();
        assert!(
            !body.contains(&session),
            "{path} shows no session id: {body}"
        );
    }
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_mode_shows_the_stores_size_and_commits_and_memory_mode_shows_none() {
    let memory = TestBroker::start().await;
    let (monitor, _readiness) = start_monitor(&memory).await;
    let varz = get_json(monitor, "/varz", LIMIT).await.unwrap();
    assert_eq!(varz["storage"], Value::Null, "memory mode has no store");
    let (_, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    assert!(
        !text.contains("cassini_storage_"),
        "no storage metrics in memory mode"
    );
    memory.stop().await;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = cassini_broker::BrokerConfig::default();
    config.storage.mode = cassini_broker::config::StorageMode::Disk;
    config.storage.data_dir = dir.path().to_path_buf();
    let broker =
        TestBroker::start_with(config, cassini_quic::server::ServerOptions::default()).await;
    let (monitor, _readiness) = start_monitor(&broker).await;
    let client = broker.client("grace").await;
    for n in 0..5u8 {
        client
            .publish_acked("stored.x", Bytes::from(vec![n; 100]))
            .await
            .expect("acknowledged: stored and synced");
    }
    client
        .publish_retained("stored.retained", Bytes::from_static(b"kept"))
        .await
        .expect("retained");
    let varz = eventually("the retained value committed", || async {
        let varz = get_json(monitor, "/varz", LIMIT).await.ok()?;
        (varz["storage"]["live_bytes"].as_u64()? > 0).then_some(varz)
    })
    .await;
    let storage = &varz["storage"];
    assert!(storage["commits"].as_u64().unwrap() >= 1, "{storage}");
    assert!(storage["file_bytes"].as_u64().unwrap() > 0, "{storage}");
    assert!(
        storage["last_commit_at_ms"].as_u64().unwrap() > 0,
        "{storage}"
    );
    assert!(
        storage["commit_micros_total"].as_u64().unwrap() > 0,
        "{storage}"
    );
    assert_eq!(
        storage["max_bytes"].as_u64().unwrap(),
        cassini_broker::BrokerConfig::default()
            .storage
            .max_disk_bytes
    );
    assert_eq!(storage["failed"], Value::Null);
    let (_, text) = get(monitor, "/metrics", LIMIT).await.unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    assert!(sample(&scrape, "cassini_storage_commits_total", None) >= 1.0);
    assert!(sample(&scrape, "cassini_storage_live_bytes", None) > 0.0);
    assert!(sample(&scrape, "cassini_storage_file_bytes", None) > 0.0);
    assert!(
        sample(
            &scrape,
            "cassini_storage_last_commit_timestamp_seconds",
            None
        ) > 0.0
    );
    assert_eq!(sample(&scrape, "cassini_storage_failed", None), 0.0);
    client.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_is_served_without_the_token_and_holds_no_data_and_no_outside_links() {
    let broker = TestBroker::start().await;
    let alice = broker.client("alice").await;
    let _demo = alice.subscribe("demo.>").await.unwrap();
    let (guarded, _) = start_monitor(&broker).await;
    let (status, page) = get_as(guarded, "/", None, LIMIT).await.unwrap();
    assert_eq!(status, 200, "the page itself needs no token: {page}");
    assert!(page.starts_with("<!doctype html>"), "an HTML page: {page}");
    assert!(page.contains("<title>Cassini status</title>"));
    assert!(
        !page.contains("alice") && !page.contains("demo."),
        "no data in the page"
    );
    for outside in ["http://", "https://", "//cdn", "src=\""] {
        assert!(
            !page.contains(outside),
            "nothing loaded from elsewhere: {outside}"
        );
    }
    for path in ["/varz", "/connz", "/subz"] {
        assert!(page.contains(path), "the page reads {path}");
        let (status, _) = get_as(guarded, path, None, LIMIT).await.unwrap();
        assert_eq!(status, 401, "{path} still needs the token");
    }
    assert!(
        page.contains("Authorization") && page.contains("sessionStorage"),
        "the page presents the token as a header, kept in session storage"
    );
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_mqtt_connections_apart() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let gateway = Gateway::start_with(BrokerConfig::default(), true).await;
    let (monitor, _) =
        start_monitor_of(&gateway.broker, Some(token()), Some(gateway.mqtt.stats())).await;
    let _quic = gateway.broker.client("alice").await;
    // An MQTT 5 client over plain TCP on loopback.
    let mut mqtt = tokio::net::TcpStream::connect(gateway.addr).await.unwrap();
    mqtt.write_all(&connect_v5("metered")).await.unwrap();
    let mut connack = [0u8; 2];
    within("CONNACK", mqtt.read_exact(&mut connack))
        .await
        .unwrap();
    assert_eq!(connack[0], 0x20);

    eventually("the scrape counts each protocol apart", || async {
        let (_, text) = get(monitor, "/metrics", LIMIT).await.ok()?;
        let scrape =
            prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).ok()?;
        let by_protocol = |protocol| {
            sample(
                &scrape,
                "cassini_connections_by_protocol",
                Some(("protocol", protocol)),
            )
        };
        let counted = by_protocol("quic") == 1.0
            && by_protocol("mqtt/5") == 1.0
            && by_protocol("mqtt/3.1.1") == 0.0
            && sample(&scrape, "cassini_connections", None) == 2.0
            && sample(&scrape, "cassini_mqtt_connections_open", None) == 1.0
            && sample(&scrape, "cassini_mqtt_connections_accepted_total", None) == 1.0
            && sample(&scrape, "cassini_mqtt_connections_refused_total", None) == 0.0
            && sample(
                &scrape,
                "cassini_mqtt_wills_total",
                Some(("outcome", "published")),
            ) == 0.0
            && sample(&scrape, "cassini_mqtt_wills_waiting", None) == 0.0;
        counted.then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_the_token_and_a_node_without_raft_says_so() {
    let broker = TestBroker::start().await;
    let (guarded, _) = start_monitor(&broker).await;
    let (open, _) = start_monitor_with(&broker, None).await;
    for path in ["/cluster/add?node=n4", "/cluster/remove?node=n1"] {
        let (status, body) = post_as(guarded, path, None, LIMIT).await.unwrap();
        assert_eq!(status, 401, "{path} without the token: {body}");
        let (status, body) = post_as(open, path, None, LIMIT).await.unwrap();
        assert_eq!(status, 403, "{path} where no token is configured: {body}");
        assert!(body.contains("token_required"), "{body}");
        let (status, body) = post_as(guarded, path, Some(&token()), LIMIT).await.unwrap();
        assert_eq!(status, 404, "{path} on a standalone broker: {body}");
        assert!(body.contains("no_raft"), "{body}");
    }
    let (status, body) = get(guarded, "/cluster/members", LIMIT).await.unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no_raft"), "{body}");
    broker.stop().await;
}
