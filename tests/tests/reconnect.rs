//! A client whose network drops silently reconnects, resumes its session, and its
//! subscriptions continue: what was queued while it was away arrives in order, and what the
//! backlog bound could not keep is reported as one gap naming exactly the missing range.

use std::time::Duration;

use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_client::{Client, ConnectionState, Gap, GapReason, Subscription, SubscriptionEvent};
use cassini_e2e::edge::{edge_client, quick_broker, wait_for_state};
use cassini_e2e::relay::UdpRelay;
use cassini_e2e::{within, TestBroker};
use cassini_protocol::SubscribeOptions;
use futures_util::StreamExt;

async fn publish_range(publisher: &Client, topic: &str, range: std::ops::Range<u64>) {
    for i in range {
        publisher
            .publish(topic, Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
}

fn index_of(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().expect("8-byte index"))
}

/// Asserts that the next messages of `subscription` carry the indexes of `range`, in order.
async fn assert_next_indexes(
    subscription: &mut Subscription,
    range: std::ops::Range<u64>,
    what: &str,
) {
    for i in range {
        let message = next(subscription).await;
        assert_eq!(index_of(message.payload()), i, "{what}");
    }
}

async fn next(subscription: &mut Subscription) -> cassini_client::Message {
    within("next message", subscription.next())
        .await
        .expect("subscription open")
}

/// The gap a broker announces for `from..to`, lost for `reason`.
fn missed(from: u64, to: u64, reason: GapReason) -> Gap {
    Gap::Missed {
        from,
        to,
        reason: Some(reason),
    }
}

/// With the relay cut downstream: waits until `edge` gives its connection up, cuts the relay
/// both ways, and waits until the broker has detached the session (one other connection, the
/// publisher's, stays).
async fn drop_connection(broker: &TestBroker, relay: &UdpRelay, edge: &Client) {
    wait_for_state(edge, "the client notices the drop", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    relay.cut();
    broker
        .wait_for_stats("the broker detaches the session", |s| s.connections == 1)
        .await;
}

#[tokio::test]
async fn a_silently_dropped_connection_resumes_and_nothing_queued_is_lost() {
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let session = edge.session_id();
    let mut subscription = edge.subscribe("telemetry.*").await.expect("subscribe");
    let publisher = broker.client("publisher").await;

    publish_range(&publisher, "telemetry.temp", 0..10).await;
    assert_next_indexes(&mut subscription, 0..10, "in order").await;

    relay.cut();
    wait_for_state(&edge, "the client notices the drop", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    broker
        .wait_for_stats("the broker detaches the session", |s| {
            s.connections == 1 && s.sessions == 2
        })
        .await;
    publish_range(&publisher, "telemetry.temp", 10..60).await;
    relay.restore();
    wait_for_state(&edge, "the client resumes its session", |s| {
        matches!(s, ConnectionState::Connected { resumed: true, session_id } if *session_id == session)
    })
    .await;

    for i in 10..60 {
        let message = next(&mut subscription).await;
        assert_eq!(index_of(message.payload()), i, "in order, none lost");
        assert_eq!(message.sequence(), i + 1, "sequence numbers continue");
    }
    assert_eq!(subscription.gaps(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_backlog_bound_keeps_the_newest_and_reports_exactly_the_missing_range() {
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let options = SubscribeOptions {
        max_queued_messages: Some(100),
        ..SubscribeOptions::default()
    };
    let mut subscription = edge
        .subscribe_with("backlog.x", options)
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;
    publish_range(&publisher, "backlog.x", 0..1).await;
    assert_eq!(next(&mut subscription).await.sequence(), 1);

    relay.cut();
    broker
        .wait_for_stats("the broker detaches the session", |s| s.connections == 1)
        .await;
    publish_range(&publisher, "backlog.x", 1..1001).await;
    relay.restore();

    assert_next_indexes(&mut subscription, 901..1001, "the newest 100, in order").await;
    let gaps = subscription.take_gaps();
    assert_eq!(
        gaps,
        vec![missed(2, 901, GapReason::Overflow)],
        "one gap, announced by the broker, exactly the missing range"
    );
    broker.stop().await;
}

#[tokio::test]
async fn moving_to_a_new_socket_mid_stream_loses_nothing_and_does_not_reconnect() {
    const COUNT: u64 = 2_000;
    let broker = quick_broker(BrokerConfig::default()).await;
    let edge = broker.client("roaming").await;
    let mut subscription = edge.subscribe("roam.x").await.expect("subscribe");
    let publisher = broker.client("publisher").await;
    let sending = {
        let publisher = publisher.clone();
        tokio::spawn(async move { publish_range(&publisher, "roam.x", 0..COUNT).await })
    };
    let mut states = edge.state_changes();
    states.borrow_and_update();
    for i in 0..COUNT {
        if i == COUNT / 4 || i == COUNT / 2 {
            edge.rebind("127.0.0.1:0".parse().expect("addr"))
                .expect("rebind");
        }
        let message = next(&mut subscription).await;
        assert_eq!(index_of(message.payload()), i, "in order, none lost");
    }
    within("publisher", sending).await.expect("publisher task");
    assert!(
        !states.has_changed().expect("state channel open"),
        "the connection never changed state: {:?}",
        *states.borrow()
    );
    assert_eq!(subscription.gaps(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_reconnect_while_the_broker_may_still_hold_the_old_connection_settles_without_ping_pong()
{
    // Only the broker's packets are dropped: the client gives the connection up within about a
    // second, while the broker, still hearing the client until then, usually keeps the old
    // connection attached when the resume arrives, and takes it over. (The takeover itself is
    // tested deterministically in sessions.rs.)
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let session = edge.session_id();
    let mut subscription = edge.subscribe("takeover.x").await.expect("subscribe");
    let publisher = broker.client("publisher").await;

    relay.cut_downstream();
    wait_for_state(&edge, "the client notices the drop", |s| {
        matches!(s, ConnectionState::Reconnecting { .. })
    })
    .await;
    assert_eq!(
        broker.stats().await.connections,
        2,
        "the broker still holds the old connection"
    );
    relay.restore();
    wait_for_state(&edge, "the client resumes", |s| {
        matches!(s, ConnectionState::Connected { resumed: true, session_id } if *session_id == session)
    })
    .await;
    broker
        .wait_for_stats("one connection per client again", |s| {
            s.connections == 2 && s.sessions == 2
        })
        .await;

    let mut states = edge.state_changes();
    states.borrow_and_update();
    publish_range(&publisher, "takeover.x", 0..20).await;
    assert_next_indexes(&mut subscription, 0..20, "in order").await;
    assert!(
        !states.has_changed().expect("state channel open"),
        "no ping-pong after the takeover: {:?}",
        *states.borrow()
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_at_least_once_subscriber_cut_off_gets_every_message_in_order_with_redeliveries_marked()
{
    const COUNT: u64 = 1_000;
    const LOST_IN_FLIGHT: u64 = 300;
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let mut subscription = edge
        .subscribe_at_least_once("alo.x")
        .await
        .expect("subscribe");
    let publisher = broker.client("publisher").await;

    // The broker sends the first messages into a connection whose packets no longer arrive:
    // they are in flight, unacknowledged, when the client gives the connection up.
    relay.cut_downstream();
    publish_range(&publisher, "alo.x", 0..LOST_IN_FLIGHT).await;
    drop_connection(&broker, &relay, &edge).await;
    publish_range(&publisher, "alo.x", LOST_IN_FLIGHT..COUNT).await;
    relay.restore();

    let mut redelivered = Vec::new();
    for i in 0..COUNT {
        let message = next(&mut subscription).await;
        assert_eq!(index_of(message.payload()), i, "in order, none lost");
        assert_eq!(message.sequence(), i + 1, "each sequence once");
        if message.is_redelivered() {
            redelivered.push(i);
        }
    }
    assert_eq!(subscription.gaps(), 0, "nothing skipped");
    assert!(
        !redelivered.is_empty(),
        "the messages lost in flight came again, marked"
    );
    assert_eq!(
        redelivered,
        (0..redelivered.len() as u64).collect::<Vec<_>>(),
        "redeliveries are exactly the messages sent before the drop, first"
    );
    assert!(redelivered.len() as u64 <= LOST_IN_FLIGHT);

    // Asking for more acknowledges the last one: nothing stays in flight.
    let more = tokio::time::timeout(Duration::from_millis(50), subscription.next()).await;
    assert!(more.is_err(), "no message beyond the {COUNT} published");
    assert_eq!(
        broker
            .wait_for_stats("every delivery acknowledged", |s| s.in_flight == 0)
            .await
            .in_flight,
        0
    );
    broker.stop().await;
}

/// An at-most-once subscriber that received message 1 of `topic`, then lost its connection
/// silently while the broker sent it 2..=51 (which it never got); the broker has detached its
/// session, and the relay is still cut.
struct CutOffSubscriber {
    broker: TestBroker,
    relay: UdpRelay,
    // Kept so the client lives as long as its subscription.
    _edge: Client,
    subscription: Subscription,
    publisher: Client,
}

async fn cut_off_while_receiving(topic: &str) -> CutOffSubscriber {
    let broker = quick_broker(BrokerConfig::default()).await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let edge = edge_client(&broker, &relay, "edge").await;
    let mut subscription = edge.subscribe(topic).await.expect("subscribe");
    let publisher = broker.client("publisher").await;
    publish_range(&publisher, topic, 0..1).await;
    assert_eq!(next(&mut subscription).await.sequence(), 1);

    relay.cut_downstream();
    publish_range(&publisher, topic, 1..51).await;
    drop_connection(&broker, &relay, &edge).await;
    CutOffSubscriber {
        broker,
        relay,
        _edge: edge,
        subscription,
        publisher,
    }
}

#[tokio::test]
async fn an_at_most_once_subscriber_is_told_exactly_what_was_lost_in_flight() {
    let CutOffSubscriber {
        broker,
        relay,
        _edge,
        mut subscription,
        publisher,
    } = cut_off_while_receiving("amo.x").await;
    publish_range(&publisher, "amo.x", 51..61).await;
    relay.restore();

    assert_next_indexes(&mut subscription, 51..61, "what was still queued, in order").await;
    assert_eq!(
        subscription.take_gaps(),
        vec![missed(2, 51, GapReason::Undelivered)],
        "the broker names the range it sent into the dropped connection"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_gap_lost_in_flight_is_announced_on_resume_even_when_nothing_follows_it() {
    let CutOffSubscriber {
        broker,
        relay,
        _edge,
        mut subscription,
        ..
    } = cut_off_while_receiving("quiet.x").await;
    // Nothing is published while the client is away, nor after: the topic stays quiet.
    relay.restore();

    let event = within(
        "the gap, with no message after it",
        subscription.next_event(),
    )
    .await;
    match event {
        Some(SubscriptionEvent::Gap(gap)) => assert_eq!(
            gap,
            missed(2, 51, GapReason::Undelivered),
            "the broker names the range it sent into the dropped connection"
        ),
        other => panic!("expected the Undelivered gap, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_goodbye_whose_closing_reply_is_lost_still_closes_cleanly() {
    // The broker's CONNECTION_CLOSE after the goodbye is lost; by the time the client sends
    // again, the broker has forgotten the connection and answers with a stateless reset. The
    // goodbye was heard: `close` succeeds.
    let broker = TestBroker::start().await;
    let relay = UdpRelay::start(broker.addr).await.expect("relay");
    let (chain, key) = cassini_e2e::identity_of(&broker.pki.client("leaving"));
    let client = Client::builder(relay.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .connect()
        .await
        .expect("connects through the relay");
    relay.cut_downstream();
    let closing = tokio::spawn(async move { client.close().await });
    broker
        .wait_for_stats("the broker ends the session on the goodbye", |s| {
            s.connections == 0 && s.sessions == 0
        })
        .await;
    broker
        .wait_until_quic_forgets_every_connection("the broker's endpoint forgets the connection")
        .await;
    relay.restore();

    let closed = within("close returns", closing).await.expect("close task");
    assert!(closed.is_ok(), "close after a heard goodbye: {closed:?}");
    broker.stop().await;
}

#[tokio::test]
async fn a_first_connect_told_to_retry_waits_for_a_broker_that_starts_later() {
    let stopped = TestBroker::start().await.stop_for_now().await;
    assert!(
        stopped.client_builder("early").connect().await.is_err(),
        "by default, a broker that is not there fails the first connect"
    );
    let connecting = tokio::spawn(
        stopped
            .client_builder("early")
            .retry_first_connect(true)
            .connect(),
    );
    let broker = stopped.start().await;
    let client = within("connected once the broker is up", connecting)
        .await
        .expect("the connecting task")
        .expect("connected");
    let mut subscription = client.subscribe("early.x").await.expect("subscribe");
    client.publish("early.x", "hello").await.expect("publish");
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(message.payload().as_ref(), b"hello");
    client.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn a_first_connect_told_to_retry_still_fails_at_once_on_a_refused_certificate() {
    let broker = TestBroker::start().await;
    let stranger = cassini_e2e::Pki::new();
    let (chain, key) = cassini_e2e::identity_of(&stranger.client("stranger"));
    let refused = within(
        "a refusal that would only repeat is not retried",
        Client::builder(broker.addr)
            .ca_certs(broker.pki.ca_certs())
            .identity(chain, key)
            .server_name("localhost")
            .retry_first_connect(true)
            .connect(),
    )
    .await;
    assert!(
        matches!(
            refused,
            Err(cassini_client::ConnectionError::Certificate { .. })
        ),
        "{refused:?}"
    );
    broker.stop().await;
}
