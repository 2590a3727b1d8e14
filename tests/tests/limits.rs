//! Every configurable limit, exceeded by one client: that client gets the limit's own code and
//! every other client carries on. (The frame size and `Hello` timeout limits are covered by
//! `robustness.rs`: `an_oversized_declared_length_closes_only_that_connection` and
//! `a_client_that_never_says_hello_is_closed_after_the_deadline`.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_broker::{BrokerConfig, BrokerLimits};
use cassini_client::{Client, ClientError, ConnectionError, PublishError, SubscribeError};
use cassini_e2e::raw::{self, encoded, read_frame};
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{eventually, identity_of, with_limits, within, TestBroker};
use cassini_protocol::{ErrorCode, Frame, Publish, SubscribeOptions, TopicLimits};
use cassini_quic::identity::IdentityRule;
use cassini_quic::server::{AddressValidation, ServerOptions};
use cassini_quic::tls::QuicOptions;
use futures_util::StreamExt;

fn refused_code(result: Result<Client, ConnectionError>) -> ErrorCode {
    match result {
        Err(ConnectionError::Refused { code, .. }) => code,
        Err(other) => panic!("expected a refusal with a code, got {other}"),
        Ok(_) => panic!("expected a refusal, the client got in"),
    }
}

fn request_code<T: std::fmt::Debug, E: Into<ClientError>>(result: Result<T, E>) -> ErrorCode {
    match result.map_err(Into::into) {
        Err(ClientError::Request { code, .. }) => code,
        other => panic!("expected a refused request, got {other:?}"),
    }
}

#[tokio::test]
async fn total_connections() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_connections: 2,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let first = broker.client("first").await;
    let second = broker.client("second").await;
    let code = refused_code(broker.client_builder("third").connect().await);
    assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS);
    let mut subscription = first.subscribe("still.x").await.expect("subscribe");
    second
        .publish_acked("still.x", Bytes::from_static(b"up"))
        .await
        .expect("publish");
    within("delivery", subscription.next())
        .await
        .expect("the connected clients carry on");
    broker.stop().await;
}

#[tokio::test]
async fn connections_per_identity() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_connections_per_identity: 2,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let alice_one = broker.client("alice").await;
    let _alice_two = broker.client("alice").await;
    let code = refused_code(broker.client_builder("alice").connect().await);
    assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS_FOR_IDENTITY);
    broker.assert_bystander_unaffected("bob").await;

    alice_one.close().await.expect("close");
    eventually("a slot of alice's frees up", || async {
        broker.client_builder("alice").connect().await.ok()
    })
    .await;
    broker.stop().await;
}

#[tokio::test]
async fn subscriptions_per_session() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_subscriptions_per_session: 2,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let client = broker.client("greedy").await;
    let _a = client.subscribe("a").await.expect("first");
    let _b = client.subscribe("b").await.expect("second");
    assert_eq!(
        request_code(client.subscribe("c").await),
        ErrorCode::TOO_MANY_SUBSCRIPTIONS
    );
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn subscriptions_per_identity_over_all_its_sessions() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_subscriptions_per_identity: 3,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let first = broker.client("fleet").await;
    let second = broker.client("fleet").await;
    let mut a = first.subscribe("a").await.expect("first");
    let _b = first.subscribe("b").await.expect("second");
    let _c = second
        .subscribe("c")
        .await
        .expect("third, in another session");
    assert_eq!(
        request_code(second.subscribe("d").await),
        ErrorCode::TOO_MANY_SUBSCRIPTIONS
    );
    a.unsubscribe().await.expect("unsubscribe");
    let _d = second.subscribe("d").await.expect("room again");
    first.close().await.expect("close");
    // The closed session ends, and gives its part back, as the broker handles the goodbye.
    let _e = eventually("the closed session's part given back", || async {
        second.subscribe("e").await.ok()
    })
    .await;
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_hello_with_more_positions_than_a_session_holds_subscriptions_is_refused() {
    use cassini_protocol::{Hello, ResumePosition, PROTOCOL_VERSION};

    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_subscriptions_per_session: 2,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let position = |subscription| ResumePosition {
        subscription,
        last_sequence: 1,
    };
    let hello = |positions: Vec<ResumePosition>| Hello {
        protocol_version: PROTOCOL_VERSION,
        resume: None,
        client_name: None,
        positions,
        session_name: Some("listed".into()),
    };
    let (_endpoint, connection) = broker.raw_connection("lister").await;
    assert!(
        raw::send_hello(&connection, hello((1..=3).map(position).collect()))
            .await
            .is_none(),
        "three positions for at most two subscriptions"
    );
    assert_eq!(
        raw::close_of(&connection).await.0,
        ErrorCode::TOO_MANY_SUBSCRIPTIONS
    );
    let (_endpoint, connection) = broker.raw_connection("lister").await;
    assert!(
        raw::send_hello(&connection, hello(vec![position(1), position(2)]))
            .await
            .is_some(),
        "as many as a session may hold are welcome"
    );
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn pending_bytes_per_session() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_pending_bytes_per_session: 10 * 1024 * 1024,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let client = broker.client("hoarder").await;
    let big = SubscribeOptions {
        max_queued_bytes: Some(4 * 1024 * 1024),
        ..SubscribeOptions::default()
    };
    let _a = client
        .subscribe_with("a", big.clone())
        .await
        .expect("4 MiB");
    let _b = client
        .subscribe_with("b", big.clone())
        .await
        .expect("8 MiB");
    assert_eq!(
        request_code(client.subscribe_with("c", big).await),
        ErrorCode::PENDING_BYTES_LIMIT
    );
    let small = SubscribeOptions {
        max_queued_bytes: Some(1024 * 1024),
        ..SubscribeOptions::default()
    };
    client
        .subscribe_with("d", small)
        .await
        .expect("what still fits is allowed");
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

/// Sends `publish` on a fresh publish stream of a raw connection and returns the broker's
/// refusal code. The raw connection bypasses the client's own checks of the announced limits.
async fn raw_publish_refusal(broker: &TestBroker, publish: Publish) -> ErrorCode {
    let (_endpoint, connection) = broker.raw_connection("raw").await;
    let _control = raw::hello(&connection, None).await.expect("welcome");
    let (mut send, mut recv) = connection.open_bi().await.expect("publish stream");
    send.write_all(&encoded(&Frame::Publish(publish)))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await.expect("an answer") {
        Frame::PublishRejected(rejected) => rejected.code,
        other => panic!("expected PublishRejected, got {}", other.kind()),
    }
}

#[tokio::test]
async fn topic_length_depth_and_payload_size() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            topics: TopicLimits {
                max_bytes: 16,
                max_depth: 3,
            },
            max_payload_bytes: 1024,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let publish = |topic: &str, payload: usize| Publish {
        topic: topic.into(),
        payload: Bytes::from(vec![0u8; payload]),
        ..Publish::default()
    };
    assert_eq!(
        raw_publish_refusal(&broker, publish("a.b.c.d", 1)).await,
        ErrorCode::INVALID_TOPIC,
        "too deep"
    );
    assert_eq!(
        raw_publish_refusal(&broker, publish("abcdefghijklmnopq", 1)).await,
        ErrorCode::INVALID_TOPIC,
        "too long"
    );
    assert_eq!(
        raw_publish_refusal(&broker, publish("a.b", 1025)).await,
        ErrorCode::PAYLOAD_TOO_LARGE
    );
    let (_endpoint, connection) = broker.raw_connection("raw-subscriber").await;
    let (_, mut control, mut answers) = raw::hello(&connection, None).await.expect("welcome");
    cassini_e2e::raw::send_subscribe(&mut control, 1, "a.b.c.>").await;
    let mut buf = BytesMut::new();
    match read_frame(&mut answers, &mut buf).await.expect("an answer") {
        Frame::Error(error) => assert_eq!(
            error.code,
            ErrorCode::INVALID_FILTER,
            "filters obey the same bounds"
        ),
        other => panic!("expected Error, got {}", other.kind()),
    }
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn concurrent_streams_per_connection() {
    let options = ServerOptions {
        quic: QuicOptions {
            max_concurrent_bidi_streams: 4,
            ..QuicOptions::default()
        },
        ..ServerOptions::default()
    };
    let broker = TestBroker::start_with(BrokerConfig::default(), options).await;
    let (_endpoint, connection) = broker.raw_connection("streamer").await;
    let _control = raw::hello(&connection, None).await.expect("welcome");
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connection.open_bi().await.expect("within the limit"));
    }
    // The fifth bidirectional stream exceeds the limit: QUIC flow control holds it back rather
    // than the broker buffering it. It stays pending however long we look.
    let fifth = connection.open_bi();
    tokio::pin!(fifth);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut fifth)
            .await
            .is_err(),
        "a stream over the limit is not granted"
    );
    let (mut send, recv) = open.pop().expect("a stream");
    send.finish().expect("finish");
    drop(recv);
    within("a stream slot frees up", &mut fifth)
        .await
        .expect("granted once a stream ended");
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

/// The broker starts a connection with few bidirectional streams (quinn reserves state for every
/// stream a client may open) and raises the limit as the client opens them: a client that
/// writes on each stream it opens reaches the full limit without ever waiting for credit.
#[tokio::test]
async fn a_connection_starts_with_few_streams_and_is_granted_all_as_it_opens_them() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("streamer").await;
    let _control = raw::hello(&connection, None).await.expect("welcome");
    let publish = encoded(&Frame::Publish(Publish {
        topic: "streams.x".into(),
        payload: Bytes::from_static(b"x"),
        ..Publish::default()
    }));

    // Opening a stream sends nothing: the broker has not seen these, so it has raised nothing.
    let initial = QuicOptions::broker().initial_bidi_streams() as usize;
    let mut unwritten = Vec::new();
    for _ in 1..initial {
        unwritten.push(
            connection
                .open_bi()
                .await
                .expect("within the initial limit"),
        );
    }
    let beyond = connection.open_bi();
    tokio::pin!(beyond);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut beyond)
            .await
            .is_err(),
        "an idle connection is granted only the initial limit"
    );
    let mut open = Vec::new();
    for (mut send, recv) in unwritten {
        send.write_all(&publish).await.expect("write");
        open.push((send, recv));
    }
    open.push(
        within("more credit once the streams arrive", &mut beyond)
            .await
            .expect("granted"),
    );
    open.last_mut()
        .expect("a stream")
        .0
        .write_all(&publish)
        .await
        .expect("write");

    let max = QuicOptions::broker().max_concurrent_bidi_streams as usize;
    while open.len() + 1 < max {
        let (mut send, recv) = within("a stream within the maximum", connection.open_bi())
            .await
            .expect("granted");
        send.write_all(&publish).await.expect("write");
        open.push((send, recv));
    }
    let over = connection.open_bi();
    tokio::pin!(over);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut over)
            .await
            .is_err(),
        "the maximum still holds: {max} streams with the control stream"
    );
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn handshake_timeout() {
    let options = ServerOptions {
        handshake_timeout: Duration::from_millis(500),
        ..ServerOptions::default()
    };
    let broker = TestBroker::start_with(BrokerConfig::default(), options).await;
    // The broker hears the client's Initial but the client never hears the broker, so the
    // handshake never completes.
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    relay.cut_downstream();
    let (chain, key) = identity_of(&broker.pki.client("stuck"));
    let stuck = tokio::spawn(
        Client::builder(relay.addr)
            .ca_certs(broker.pki.ca_certs())
            .identity(chain, key)
            .server_name("localhost")
            .connect_timeout(Duration::from_secs(30))
            .connect(),
    );
    let stats = broker.accept_stats();
    eventually("the broker gives the handshake up", || async {
        (stats.refused.load(Ordering::Relaxed) >= 1).then_some(())
    })
    .await;
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 0);
    broker.assert_bystander_unaffected("bystander").await;
    stuck.abort();
    broker.stop().await;
}

#[tokio::test]
async fn address_validation_always_sends_a_retry_and_clients_still_connect() {
    let options = ServerOptions {
        address_validation: AddressValidation::Always,
        ..ServerOptions::default()
    };
    let broker = TestBroker::start_with(BrokerConfig::default(), options).await;
    broker.assert_bystander_unaffected("validated").await;
    let stats = broker.accept_stats();
    assert!(
        stats.retries.load(Ordering::Relaxed) >= 1,
        "a Retry was sent"
    );
    assert_eq!(stats.accepted.load(Ordering::Relaxed), 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_configured_identity_rule_refuses_certificates_without_that_name() {
    let options = ServerOptions {
        identity_rule: "uri:spiffe://example.org/".parse().expect("rule"),
        ..ServerOptions::default()
    };
    let broker = TestBroker::start_with(BrokerConfig::default(), options).await;
    // Certificates from `cassini certs` name the client by DNS SAN and CN only.
    let code = refused_code(broker.client_builder("dns-only").connect().await);
    assert_eq!(code, ErrorCode::PROTOCOL_VIOLATION);
    assert_eq!(broker.accept_stats().accepted.load(Ordering::Relaxed), 0);
    broker.stop().await;

    let by_cn = TestBroker::start_with(
        BrokerConfig::default(),
        ServerOptions {
            identity_rule: IdentityRule::CommonName,
            ..ServerOptions::default()
        },
    )
    .await;
    let client = by_cn.client("carol").await;
    assert_eq!(client.identity(), "carol");
    by_cn.stop().await;
}

/// A retained, acknowledged publish of `client`: `Ok` or the refusal's code.
async fn retain(client: &Client, topic: &str, payload: Bytes) -> Result<(), ErrorCode> {
    let options = cassini_client::PublishOptions::new().retain(true).ack(true);
    match client.publish_with(topic, payload, options).await {
        Ok(_) => Ok(()),
        Err(PublishError::Rejected { code, .. }) => Err(code),
        Err(other) => panic!("expected an answer to the retained publish, got {other}"),
    }
}

/// Retained publishes of `client` to `prefix.0`, `prefix.1`, ... until one is refused (or
/// `most` were accepted); returns how many were accepted and the refusal's code.
async fn retain_until_refused(
    client: &Client,
    prefix: &str,
    payload: Bytes,
    most: usize,
) -> (usize, Option<ErrorCode>) {
    for i in 0..most {
        if let Err(code) = retain(client, &format!("{prefix}.{i}"), payload.clone()).await {
            return (i, Some(code));
        }
    }
    (most, None)
}

#[tokio::test]
async fn retained_topics_per_identity() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_retained_topics: 100,
            max_retained_topics_per_identity: 10,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let eve = broker.client("eve").await;
    let (accepted, refused) =
        retain_until_refused(&eve, "eve.state", Bytes::from_static(b"v"), 100).await;
    assert_eq!(accepted, 10, "eve got her quota, not the whole store");
    assert_eq!(refused, Some(ErrorCode::RETAINED_QUOTA_EXCEEDED));
    assert_eq!(
        retain(&eve, "eve.state.3", Bytes::from_static(b"newer")).await,
        Ok(()),
        "replacing one of her own values still fits"
    );

    let alice = broker.client("alice").await;
    assert_eq!(
        retain(&alice, "alice.state", Bytes::from_static(b"v")).await,
        Ok(()),
        "alice's retained publish is not refused because of eve"
    );

    // Clearing frees the quota: eve clears one value and may set a new topic.
    assert_eq!(retain(&eve, "eve.state.0", Bytes::new()).await, Ok(()));
    assert_eq!(
        retain(&eve, "eve.state.new", Bytes::from_static(b"v")).await,
        Ok(())
    );
    assert_eq!(
        retain(&eve, "eve.state.newer", Bytes::from_static(b"v")).await,
        Err(ErrorCode::RETAINED_QUOTA_EXCEEDED)
    );
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_bytes_per_identity_and_in_total() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_retained_bytes_per_identity: 64 * 1024,
            max_retained_bytes: 100 * 1024,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let ten_kib = Bytes::from(vec![7u8; 10 * 1024]);
    let eve = broker.client("eve").await;
    let (accepted, refused) = retain_until_refused(&eve, "eve.blob", ten_kib.clone(), 100).await;
    assert_eq!(
        accepted, 6,
        "six values of 10 KiB and their topics fit in 64 KiB"
    );
    assert_eq!(refused, Some(ErrorCode::RETAINED_QUOTA_EXCEEDED));

    let mallory = broker.client("mallory").await;
    let (accepted, refused) =
        retain_until_refused(&mallory, "mallory.blob", ten_kib.clone(), 100).await;
    assert_eq!(accepted, 3, "the store as a whole holds 100 KiB");
    assert_eq!(refused, Some(ErrorCode::RETAINED_STORE_FULL));

    // A cleared value gives its bytes back to the store.
    assert_eq!(retain(&eve, "eve.blob.0", Bytes::new()).await, Ok(()));
    let alice = broker.client("alice").await;
    assert_eq!(retain(&alice, "alice.blob", ten_kib).await, Ok(()));
    broker.stop().await;
}

#[tokio::test]
async fn retained_quotas_still_count_who_set_each_value_after_a_durable_restart() {
    use cassini_broker::config::StorageMode;
    let dir = tempfile::tempdir().expect("tempdir");
    let durable = || {
        let mut config = with_limits(BrokerLimits {
            max_retained_topics_per_identity: 3,
            ..BrokerLimits::default()
        });
        config.storage.mode = StorageMode::Disk;
        config.storage.data_dir = dir.path().to_path_buf();
        config
    };
    let broker = TestBroker::start_with(durable(), ServerOptions::default()).await;
    let eve = broker.client("eve").await;
    let (accepted, _) = retain_until_refused(&eve, "eve.state", Bytes::from_static(b"v"), 3).await;
    assert_eq!(accepted, 3);
    eve.close().await.expect("close");

    let broker = broker.restart_with(durable()).await;
    let eve = broker.client("eve").await;
    assert_eq!(
        retain(&eve, "eve.state.more", Bytes::from_static(b"v")).await,
        Err(ErrorCode::RETAINED_QUOTA_EXCEEDED),
        "the restored values still count against eve"
    );
    let alice = broker.client("alice").await;
    assert_eq!(
        retain(&alice, "alice.state", Bytes::from_static(b"v")).await,
        Ok(())
    );
    assert_eq!(retain(&eve, "eve.state.1", Bytes::new()).await, Ok(()));
    assert_eq!(
        retain(&eve, "eve.state.more", Bytes::from_static(b"v")).await,
        Ok(()),
        "clearing a restored value frees eve's quota"
    );
    broker.stop().await;
}

#[tokio::test]
async fn with_the_defaults_a_session_makes_every_subscription_welcome_announces() {
    let broker = TestBroker::start().await;
    let client = broker.client("many").await;
    let announced = client.limits().max_subscriptions;
    assert_eq!(announced, 1024);
    let mut subscriptions = Vec::new();
    for n in 0..announced {
        let subscription = client
            .subscribe(&format!("many.t{n}"))
            .await
            .unwrap_or_else(|error| panic!("subscription {n} of {announced}: {error}"));
        subscriptions.push(subscription);
    }
    match client.subscribe("many.one_more").await {
        Err(SubscribeError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::TOO_MANY_SUBSCRIPTIONS)
        }
        other => panic!("expected TOO_MANY_SUBSCRIPTIONS, got {other:?}"),
    }
    client.close().await.expect("close");
    broker.stop().await;
}
