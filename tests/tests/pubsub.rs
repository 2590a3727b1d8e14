//! Publish and subscribe over real QUIC: fan-out, wildcards, unsubscribe, ordering.

use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::{Client, Message, Subscription};
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{within, TestBroker};
use cassini_protocol::SubscribeOptions;
use futures_util::StreamExt;

async fn next_message(subscription: &mut Subscription) -> Message {
    within("next message", subscription.next())
        .await
        .expect("subscription ended early")
}

/// Publishes every `(topic, payload)` and closes the client, which returns only after the broker
/// has routed all of them.
async fn publish_all(client: Client, messages: &[(&str, &str)]) {
    for (topic, payload) in messages {
        client
            .publish(topic, Bytes::copy_from_slice(payload.as_bytes()))
            .await
            .expect("publish");
    }
    client.close().await.expect("close");
}

/// Receives messages until one on `marker_topic` arrives; returns the topics before it and the
/// marker's sequence number.
async fn collect_until_marker(
    subscription: &mut Subscription,
    marker_topic: &str,
) -> (Vec<String>, u64) {
    let mut topics = Vec::new();
    loop {
        let message = next_message(subscription).await;
        if message.topic() == marker_topic {
            return (topics, message.sequence());
        }
        topics.push(message.topic().to_string());
    }
}

#[tokio::test]
async fn every_subscriber_receives_every_message() {
    let broker = TestBroker::start().await;
    let mut subscriptions = Vec::new();
    let mut subscribers = Vec::new();
    for name in ["alice", "bob", "carol"] {
        let client = broker.client(name).await;
        subscriptions.push(client.subscribe("fan.out").await.expect("subscribe"));
        subscribers.push(client);
    }
    let publisher = broker.client("publisher").await;
    let payloads: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    for payload in &payloads {
        publisher
            .publish("fan.out", Bytes::from(payload.clone()))
            .await
            .expect("publish");
    }
    for subscription in &mut subscriptions {
        for payload in &payloads {
            let message = next_message(subscription).await;
            assert_eq!(message.topic(), "fan.out");
            assert_eq!(message.payload(), payload.as_bytes());
        }
    }
    broker.stop().await;
}

#[tokio::test]
async fn star_matches_exactly_one_token() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("star.*").await.expect("subscribe");
    publish_all(
        broker.client("pub").await,
        &[
            ("star", "no"),
            ("star.a", "yes"),
            ("star.a.b", "no"),
            ("other.a", "no"),
            ("star.b", "yes"),
        ],
    )
    .await;
    publish_all(broker.client("marker").await, &[("star.end", "marker")]).await;
    let (mut topics, marker_sequence) = collect_until_marker(&mut subscription, "star.end").await;
    topics.sort();
    assert_eq!(topics, vec!["star.a", "star.b"]);
    assert_eq!(
        marker_sequence, 3,
        "nothing else was routed to the subscription"
    );
    broker.stop().await;
}

#[tokio::test]
async fn tail_matches_one_or_more_trailing_tokens() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("tail.>").await.expect("subscribe");
    publish_all(
        broker.client("pub").await,
        &[
            ("tail", "no"),
            ("tail.a", "yes"),
            ("tail.a.b.c", "yes"),
            ("tails.a", "no"),
            ("x.tail.a", "no"),
        ],
    )
    .await;
    publish_all(broker.client("marker").await, &[("tail.end", "marker")]).await;
    let (mut topics, marker_sequence) = collect_until_marker(&mut subscription, "tail.end").await;
    topics.sort();
    assert_eq!(topics, vec!["tail.a", "tail.a.b.c"]);
    assert_eq!(
        marker_sequence, 3,
        "nothing else was routed to the subscription"
    );
    broker.stop().await;
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_finishes_the_stream() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut leaving = subscriber.subscribe("unsub.x").await.expect("subscribe");
    let mut staying = subscriber.subscribe("unsub.x").await.expect("subscribe");
    let publisher = broker.client("pub").await;
    publisher
        .publish("unsub.x", Bytes::from_static(b"one"))
        .await
        .expect("publish");
    assert_eq!(next_message(&mut leaving).await.payload(), &b"one"[..]);
    assert_eq!(next_message(&mut staying).await.payload(), &b"one"[..]);

    leaving.unsubscribe().await.expect("unsubscribe");
    broker
        .wait_for_stats("one subscriber left", |s| s.subscribers == 1)
        .await;
    publish_all(publisher, &[("unsub.x", "two")]).await;
    assert_eq!(next_message(&mut staying).await.payload(), &b"two"[..]);
    assert_eq!(staying.dropped(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn unsubscribed_subscription_ends() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let subscription = subscriber.subscribe("ends.x").await.expect("subscribe");
    let id = subscription.id();
    let mut subscription = subscription;
    subscription.unsubscribe().await.expect("unsubscribe");
    assert!(
        within("stream end", subscription.next()).await.is_none(),
        "subscription {id} yields nothing after unsubscribe"
    );
    broker
        .wait_for_stats("no subscriber or topic left", |s| {
            s.subscribers == 0 && s.topics == 0 && s.routes_empty
        })
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn one_publishers_messages_arrive_in_order() {
    const COUNT: u64 = 5_000;
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let options = SubscribeOptions {
        max_queued_messages: Some(COUNT as u32),
        ..SubscribeOptions::default()
    };
    let mut subscription = subscriber
        .subscribe_with("order.x", options)
        .await
        .expect("subscribe");
    let publisher = broker.client("pub").await;
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            publisher
                .publish("order.x", Bytes::from(i.to_be_bytes().to_vec()))
                .await
                .expect("publish");
        }
        publisher.close().await.expect("close");
    });
    for expected in 0..COUNT {
        let message = next_message(&mut subscription).await;
        let index = u64::from_be_bytes(message.payload()[..8].try_into().expect("8 bytes"));
        assert_eq!(index, expected, "out of order");
        assert_eq!(message.sequence(), expected + 1);
    }
    within("publisher", sender).await.expect("publisher task");
    assert_eq!(subscription.dropped(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn flush_returns_once_the_broker_has_processed_every_earlier_publish() {
    let config = cassini_broker::BrokerConfig {
        acl: cassini_broker::Acl::parse(
            "default = \"deny\"\n[[rule]]\nidentity = \"pub\"\npublish = [\"flush.>\"]\n",
            "flush ACL",
        )
        .expect("valid ACL"),
        ..cassini_broker::BrokerConfig::default()
    };
    let broker =
        TestBroker::start_with(config, cassini_quic::server::ServerOptions::default()).await;
    let client = broker.client("pub").await;
    let mut refusals = client.publish_errors().expect("the refusals queue");
    let counters = || broker.broker.counters().snapshot();
    let before = counters();

    for n in 0..500u32 {
        let topic = format!("flush.t{}", n % 3);
        client
            .publish(&topic, Bytes::from(n.to_string()))
            .await
            .expect("publish");
    }
    client
        .publish("elsewhere.x", Bytes::from_static(b"refused"))
        .await
        .expect("queued; the refusal comes back on its stream");
    within("flush", client.flush()).await.expect("flush");

    // No waiting here: the barrier already covered all of it.
    let after = counters();
    assert_eq!(after.messages_received - before.messages_received, 500);
    assert_eq!(after.publishes_rejected - before.publishes_rejected, 1);
    let refusal = refusals.try_recv().expect("the refusal is already here");
    assert_eq!(refusal.code, cassini_protocol::ErrorCode::NOT_AUTHORIZED);
    assert_eq!(refusal.topic, "elsewhere.x");

    // Publishing goes on after a flush, on new streams, and a second flush covers it.
    client
        .publish("flush.t0", Bytes::from_static(b"after"))
        .await
        .expect("publish after flush");
    within("second flush", client.flush()).await.expect("flush");
    assert_eq!(counters().messages_received - before.messages_received, 501);
    client.close().await.expect("close");
}

#[tokio::test]
async fn a_client_given_several_addresses_connects_to_the_first_that_answers() {
    let broker = TestBroker::start().await;
    let closed_addr = cassini_e2e::closed_udp_addr();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("socket");
    let silent_addr = silent.local_addr().expect("addr");
    let addresses = format!("{closed_addr},{silent_addr},{}", broker.addr);
    let client = within(
        "connect through the list",
        broker
            .client_builder("alice")
            .address(addresses.as_str())
            .connect_timeout(std::time::Duration::from_secs(6))
            .connect(),
    )
    .await
    .expect("the third address answers");
    let mut subscription = client.subscribe("many.addresses").await.expect("subscribe");
    client
        .publish("many.addresses", Bytes::from_static(b"here"))
        .await
        .expect("publish");
    assert_eq!(
        next_message(&mut subscription).await.payload().as_ref(),
        b"here"
    );
    client.close().await.expect("close");
    drop(silent);
    broker.stop().await;
}

/// `close` ends when the broker, answering the goodbye, closes the connection: the client does
/// not also wait out QUIC's draining period (three probe timeouts, over a second on this path
/// whose round trip is 300 ms), which would make closing many clients take seconds each.
#[tokio::test]
async fn close_returns_once_the_broker_has_closed_the_connection() {
    const ONE_WAY: Duration = Duration::from_millis(150);
    let broker = TestBroker::start().await;
    let relay = UdpRelay::start_delayed(broker.addr, ONE_WAY)
        .await
        .expect("relay");
    let (chain, key) = cassini_e2e::identity_of(&broker.pki.client("far"));
    let client = within(
        "connect over the slow path",
        Client::builder(relay.addr)
            .ca_certs(broker.pki.ca_certs())
            .identity(chain, key)
            .server_name("localhost")
            .connect(),
    )
    .await
    .expect("connect");
    within("a round trip", client.flush()).await.expect("flush");

    let started = Instant::now();
    within("close", client.close()).await.expect("close");
    let took = started.elapsed();
    // The goodbye and the broker's close are one round trip (300 ms) plus the broker's 25 ms
    // wait for straggling streams; waiting out the draining period would add more than 1.5 s.
    assert!(
        took < Duration::from_millis(1_000),
        "close took {took:?}: it waited for the draining period after the broker's close"
    );
}

/// Most of QUIC's cost is per packet, so on a path that carries them (loopback here) packets
/// grow past Ethernet's 1,472 bytes to the default bound, 4,000, in both directions; a message
/// larger than an Ethernet packet still arrives whole.
#[tokio::test]
async fn packets_grow_to_the_default_bound_where_the_path_carries_them() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("mtu-sub").await;
    let publisher = broker.client("mtu-pub").await;
    let mut subscription = subscriber.subscribe("mtu.x").await.expect("subscribe");
    let payload = Bytes::from(vec![7u8; 3_000]);
    publisher
        .publish_acked("mtu.x", payload.clone())
        .await
        .expect("publish");
    assert_eq!(next_message(&mut subscription).await.payload(), &payload);
    cassini_e2e::eventually("both clients' packets at 4,000 bytes", || async {
        (publisher.path_mtu() == 4_000 && subscriber.path_mtu() == 4_000).then_some(())
    })
    .await;
    cassini_e2e::eventually(
        "the broker's packets to both clients at 4,000 bytes",
        || async {
            let connections = broker.broker.connections();
            let sizes: Vec<u64> = connections
                .iter()
                .filter_map(|c| c.transport.as_ref().map(|t| t.path_mtu_bytes))
                .collect();
            (sizes == [4_000, 4_000]).then_some(())
        },
    )
    .await;
    broker.stop().await;
}
