//! Best-effort subscriptions over QUIC datagrams: sequence numbers, loss counted exactly,
//! the oversize rule, publishing by datagram, negotiation, and isolation from a reliable
//! subscription on the same connection.

use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    DeliveryClass, ErrorCode, OversizeRule, PublishError, QuicOptions, SubscribeError, Subscription,
};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::SubscribeOptions;
use cassini_quic::faults::{FaultControl, FaultPlan};
use futures_util::StreamExt;

fn datagram(oversize: OversizeRule) -> SubscribeOptions {
    SubscribeOptions {
        delivery: DeliveryClass::Datagram { oversize },
        ..SubscribeOptions::default()
    }
}

async fn next(subscription: &mut Subscription) -> cassini_client::Message {
    within("the next message", subscription.next())
        .await
        .expect("subscription open")
}

fn index(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().expect("8-byte index"))
}

fn numbered(i: u64, size: usize) -> Bytes {
    let mut payload = vec![0u8; size.max(8)];
    payload[..8].copy_from_slice(&i.to_be_bytes());
    Bytes::from(payload)
}

#[tokio::test]
async fn a_datagram_subscription_delivers_with_sequence_numbers() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sensor-reader").await;
    let mut readings = subscriber
        .subscribe_datagram("sensor.>")
        .await
        .expect("subscribe");
    let publisher = broker.client("sensor").await;
    for i in 0..50 {
        publisher
            .publish("sensor.temp", numbered(i, 16))
            .await
            .expect("publish");
        // Loopback loses nothing, but datagrams are not flow controlled: keep the rate sane.
        tokio::task::yield_now().await;
    }
    for i in 0..50 {
        let message = next(&mut readings).await;
        assert_eq!(message.sequence(), i + 1);
        assert_eq!(index(message.payload()), i);
    }
    assert_eq!(readings.lost(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn with_five_percent_loss_the_loss_counter_matches_the_sequences_missing() {
    const COUNT: u64 = 1_000;
    const SIZE: usize = 400;
    let broker = TestBroker::start().await;
    let seed = cassini_e2e::history::fault_seed(
        "cargo test -p cassini-e2e --test datagrams \
         with_five_percent_loss_the_loss_counter_matches_the_sequences_missing",
    );
    let faults = FaultControl::new(FaultPlan {
        seed,
        recv_loss: 0.05,
        ..FaultPlan::default()
    });
    let subscriber = broker
        .client_builder("lossy")
        .socket_layer(faults.layer())
        .subscription_buffer(4 * COUNT as usize)
        .connect()
        .await
        .expect("connect");
    let mut readings = subscriber
        .subscribe_datagram("lossy.>")
        .await
        .expect("subscribe");
    let publisher = broker.client("sensor").await;
    // quinn packs small datagrams many to a packet: 16 B readings filled fewer than 100
    // packets, and a run whose few drops all hit ACK-only packets lost no reading at all.
    // At 400 B about three fit in a packet, so some 330 packets carry readings and a run
    // without a lost one has a probability of about 1e-7.
    for i in 0..COUNT {
        publisher
            .publish("lossy.x", numbered(i, SIZE))
            .await
            .expect("publish");
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Datagrams lost at the end are counted too, once the broker says how far it sent
    // (`DatagramsSent`, after a pause): wait until every sequence is received or counted lost.
    let mut received = std::collections::BTreeSet::new();
    within("every reading received or counted lost", async {
        while received.len() as u64 + readings.lost() < COUNT {
            let got = tokio::time::timeout(Duration::from_millis(20), readings.next()).await;
            if let Ok(Some(message)) = got {
                received.insert(message.sequence());
            }
        }
    })
    .await;
    let missing = (1..=COUNT).filter(|s| !received.contains(s)).count() as u64;
    eprintln!(
        "received {}, missing {missing}, lost {}, faults {:?}",
        received.len(),
        readings.lost(),
        faults.stats()
    );
    assert!(faults.stats().dropped > 0, "the faults happened");
    assert!(missing > 0, "some datagrams were lost");
    assert_eq!(
        readings.lost(),
        missing,
        "the loss counter is exactly what is missing"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_datagram_lost_last_on_a_quiet_topic_is_counted_promptly() {
    let broker = TestBroker::start().await;
    let faults = FaultControl::new(FaultPlan::default());
    let subscriber = broker
        .client_builder("quiet-reader")
        .socket_layer(faults.layer())
        .connect()
        .await
        .expect("connect");
    let mut readings = subscriber
        .subscribe_datagram("quiet.>")
        .await
        .expect("subscribe");
    let publisher = broker.client("quiet-sensor").await;
    publisher
        .publish("quiet.t", numbered(1, 16))
        .await
        .expect("publish");
    assert_eq!(next(&mut readings).await.sequence(), 1);

    // The subscriber hears nothing while the second reading is sent, and nothing follows it.
    let dropped_before = faults.stats().dropped;
    faults.set_plan(FaultPlan {
        recv_loss: 1.0,
        ..FaultPlan::default()
    });
    publisher
        .publish("quiet.t", numbered(2, 16))
        .await
        .expect("publish");
    cassini_e2e::eventually("the second reading lost on the way", || async {
        (faults.stats().dropped > dropped_before).then_some(())
    })
    .await;
    faults.set_plan(FaultPlan::default());

    // Reading the subscription is what takes in the broker's word; no reading arrives.
    within("the loss counted without another reading", async {
        while readings.lost() == 0 {
            let got = tokio::time::timeout(Duration::from_millis(20), readings.next()).await;
            assert!(got.is_err(), "nothing more was published: {got:?}");
        }
    })
    .await;
    assert_eq!(readings.lost(), 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_message_too_large_for_a_datagram_follows_the_subscribers_rule() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("reader").await;
    let mut dropping = subscriber
        .subscribe_with("big.x", datagram(OversizeRule::Drop))
        .await
        .expect("subscribe");
    let mut streaming = subscriber
        .subscribe_with("big.x", datagram(OversizeRule::Stream))
        .await
        .expect("subscribe");
    let publisher = broker.client("writer").await;
    publisher
        .publish("big.x", numbered(0, 16 * 1024))
        .await
        .expect("publish");
    publisher
        .publish("big.x", numbered(1, 16))
        .await
        .expect("publish");

    let small = next(&mut dropping).await;
    assert_eq!(small.sequence(), 2, "the large one was dropped");
    assert_eq!(dropping.lost(), 1, "and counted");

    // The two travel different paths (stream and datagram), so either may arrive first.
    let mut both = [next(&mut streaming).await, next(&mut streaming).await];
    both.sort_by_key(|message| message.sequence());
    assert_eq!(
        both[0].payload().len(),
        16 * 1024,
        "sent on the stream instead, whole"
    );
    assert_eq!(index(both[0].payload()), 0);
    assert_eq!(index(both[1].payload()), 1);
    assert_eq!(streaming.lost(), 0, "a late arrival fills its place");
    broker.stop().await;
}

#[tokio::test]
async fn a_reliable_subscription_is_unaffected_by_datagram_traffic_on_the_same_connection() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("both").await;
    let mut flood = subscriber
        .subscribe_datagram("mix.flood")
        .await
        .expect("subscribe");
    let mut reliable = subscriber.subscribe("mix.orders").await.expect("subscribe");
    let publisher = broker.client("publisher").await;
    let flooding = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for i in 0..5_000 {
                let _ = publisher.publish("mix.flood", numbered(i, 1000)).await;
            }
        })
    };
    for i in 0..500 {
        publisher
            .publish("mix.orders", numbered(i, 64))
            .await
            .expect("publish");
    }
    for i in 0..500 {
        let message = next(&mut reliable).await;
        assert_eq!(index(message.payload()), i, "every order, in order");
    }
    assert_eq!(reliable.lost(), 0);
    within("the flood ends", flooding).await.expect("flood");
    let first = next(&mut flood).await;
    assert!(first.sequence() >= 1);
    broker.stop().await;
}

#[tokio::test]
async fn a_datagram_publish_is_routed_fire_and_forget() {
    let broker = TestBroker::start().await;
    let subscriber = broker.client("reader").await;
    let mut sub = subscriber.subscribe("dgram.in").await.expect("subscribe");
    let sensor = broker.client("sensor").await;
    // A datagram may be lost even on loopback: send again until one arrives (bounded).
    let mut received = None;
    for _ in 0..100 {
        sensor
            .publish_datagram("dgram.in", Bytes::from_static(b"21.5"))
            .await
            .expect("send");
        if let Ok(Some(message)) = tokio::time::timeout(Duration::from_millis(50), sub.next()).await
        {
            received = Some(message);
            break;
        }
    }
    let received = received.expect("a datagram publish arrived");
    assert_eq!(received.payload(), &Bytes::from_static(b"21.5"));
    let too_big = sensor
        .publish_datagram("dgram.in", Bytes::from(vec![0u8; 8 * 1024]))
        .await;
    assert!(matches!(too_big, Err(PublishError::PayloadTooLarge { .. })));
    broker.stop().await;
}

#[tokio::test]
async fn a_client_without_datagrams_is_refused_a_datagram_subscription_at_once() {
    let broker = TestBroker::start().await;
    let client = broker
        .client_builder("plain")
        .quic_options(QuicOptions {
            datagrams: false,
            ..QuicOptions::default()
        })
        .connect()
        .await
        .expect("connect");
    match client.subscribe_datagram("x.>").await {
        Err(SubscribeError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::DATAGRAMS_UNSUPPORTED)
        }
        other => panic!("expected DATAGRAMS_UNSUPPORTED, got {other:?}"),
    }
    assert!(
        client.subscribe("x.>").await.is_ok(),
        "reliable still works"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_datagram_subscription_reports_a_lost_session() {
    let broker = TestBroker::start().await;
    let client = broker.client("edge").await;
    let mut subscription = client
        .subscribe_with("beats.x", datagram(OversizeRule::Drop))
        .await
        .expect("subscribe");
    // An in-memory broker restarted: the session is gone, and the client starts a new one.
    let _broker = broker.restart().await;
    let event = within("the lost session announced", subscription.next_event())
        .await
        .expect("an event");
    assert!(
        matches!(
            event,
            cassini_client::SubscriptionEvent::Gap(cassini_client::Gap::SessionLost { .. })
        ),
        "{event:?}"
    );
    assert!(
        matches!(
            subscription.take_gaps().as_slice(),
            [cassini_client::Gap::SessionLost { .. }]
        ),
        "and recorded for take_gaps"
    );
}
