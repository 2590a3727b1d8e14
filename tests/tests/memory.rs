//! What a message really holds is what the broker counts: headers are bounded (`max_headers`,
//! `max_header_bytes`) and count against every byte bound; the broker-wide memory budget
//! refuses new work with its own code and recovers when memory is given back; and one identity's
//! partially received frames are bounded. Every refusal leaves other clients alone.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use cassini_broker::{BrokerConfig, BrokerLimits, LocalPublish};
use cassini_client::{PublishError, PublishOptions, SubscribeError};
use cassini_e2e::raw::{self, close_of, encoded, read_frame};
use cassini_e2e::{eventually, with_limits, within, TestBroker};
use cassini_protocol::{
    ErrorCode, Frame, Headers, Publish, SessionId, Subscribe, SubscribeOptions, SubscriptionId,
    Unsubscribe,
};
use cassini_quic::server::ServerOptions;
use futures_util::StreamExt;

fn headers(count: usize, key_bytes: usize, value_bytes: usize) -> Headers {
    (0..count)
        .map(|i| {
            let key = format!("{i:0key_bytes$}");
            (
                key[..key_bytes.min(key.len())].to_owned(),
                "v".repeat(value_bytes),
            )
        })
        .collect()
}

/// Writes `publish` on `send` and returns the answer read from `recv`.
async fn answer_to(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    buf: &mut BytesMut,
    publish: Publish,
) -> Frame {
    send.write_all(&encoded(&Frame::Publish(publish)))
        .await
        .expect("write");
    read_frame(recv, buf).await.expect("an answer")
}

fn rejection_code(frame: Frame) -> ErrorCode {
    match frame {
        Frame::PublishRejected(rejected) => rejected.code,
        other => panic!("expected PublishRejected, got {}", other.kind()),
    }
}

#[tokio::test]
async fn header_limits_are_announced_and_refuse_a_publish_with_their_own_codes() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_headers: 8,
            max_header_bytes: 256,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let (_endpoint, connection) = broker.raw_connection("raw").await;
    let (welcome, _control, _answers) = raw::hello(&connection, None).await.expect("welcome");
    assert_eq!(welcome.limits.max_headers, 8);
    assert_eq!(welcome.limits.max_header_bytes, 256);

    let (mut send, mut recv) = connection.open_bi().await.expect("publish stream");
    let mut buf = BytesMut::new();
    let publish = |headers: Headers| Publish {
        topic: "h.x".into(),
        headers,
        payload: Bytes::from_static(b"p"),
        message_id: Some(7),
        ack: true,
        ..Publish::default()
    };
    let too_many = answer_to(&mut send, &mut recv, &mut buf, publish(headers(9, 1, 0))).await;
    assert_eq!(rejection_code(too_many), ErrorCode::TOO_MANY_HEADERS);
    let too_large = answer_to(&mut send, &mut recv, &mut buf, publish(headers(1, 1, 300))).await;
    assert_eq!(rejection_code(too_large), ErrorCode::HEADERS_TOO_LARGE);
    // The frame: 360,000 empty headers in one frame of about 1 MB.
    let flood = answer_to(
        &mut send,
        &mut recv,
        &mut buf,
        publish(vec![(String::new(), String::new()); 360_000]),
    )
    .await;
    assert_eq!(rejection_code(flood), ErrorCode::TOO_MANY_HEADERS);
    let fits = answer_to(&mut send, &mut recv, &mut buf, publish(headers(8, 2, 30))).await;
    assert!(
        matches!(fits, Frame::PublishAck(_)),
        "the stream stays usable: got {}",
        fits.kind()
    );

    // The client checks the announced limits before sending anything.
    let client = broker.client("checked").await;
    let options = |headers: Headers| PublishOptions {
        headers,
        ..PublishOptions::default()
    };
    assert!(matches!(
        client
            .publish_with("h.x", Bytes::new(), options(headers(9, 1, 0)))
            .await,
        Err(PublishError::TooManyHeaders { count: 9, max: 8 })
    ));
    assert!(matches!(
        client
            .publish_with("h.x", Bytes::new(), options(headers(1, 1, 300)))
            .await,
        Err(PublishError::HeadersTooLarge {
            size: 301,
            max: 256
        })
    ));

    // The in-process client obeys the same limits.
    let local = broker.broker.local_client();
    let refused = local.publish_with(LocalPublish {
        topic: "h.x".into(),
        headers: headers(9, 1, 0),
        payload: Bytes::new(),
        message_id: None,
        reply_to: None,
        retain: false,
        to_session: None,
    });
    assert_eq!(
        refused.map(|_| ()).map_err(|err| err.code()),
        Err(ErrorCode::TOO_MANY_HEADERS)
    );

    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_datagram_publish_over_the_header_limits_is_not_routed() {
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_headers: 2,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let subscriber = broker.client("subscriber").await;
    let mut subscription = subscriber.subscribe("dg.x").await.expect("subscribe");
    let (_endpoint, connection) = broker.raw_connection("raw").await;
    let _control = raw::hello(&connection, None).await.expect("welcome");
    let datagram = |headers: Headers, payload: &'static [u8]| {
        encoded(&Frame::Publish(Publish {
            topic: "dg.x".into(),
            headers,
            payload: Bytes::from_static(payload),
            ..Publish::default()
        }))
        .freeze()
    };
    connection
        .send_datagram(datagram(headers(3, 1, 0), b"refused"))
        .expect("send");
    // Datagrams may be lost: send the allowed one until it arrives; the refused one never may.
    let received = within("an allowed datagram publish arrives", async {
        loop {
            let _ = connection.send_datagram(datagram(headers(2, 1, 0), b"allowed"));
            let next = tokio::time::timeout(Duration::from_millis(200), subscription.next());
            if let Ok(Some(message)) = next.await {
                break message;
            }
        }
    })
    .await;
    assert_eq!(received.payload().as_ref(), b"allowed");
    assert!(broker.broker.counters().snapshot().publishes_rejected >= 1);
    broker.stop().await;
}

/// Subscribes `filter` on a raw connection of `name` with a queue bound of `max_bytes`, then
/// drops the connection without a goodbye: the session and its subscription stay, detached.
async fn detached_subscription(
    broker: &TestBroker,
    name: &str,
    filter: &str,
    max_bytes: u64,
) -> (SessionId, SubscriptionId) {
    let (endpoint, connection) = broker.raw_connection(name).await;
    let (welcome, mut control, mut answers) = raw::hello(&connection, None).await.expect("hello");
    let subscribe = Frame::Subscribe(Subscribe {
        request_id: 1,
        filter: filter.into(),
        options: SubscribeOptions {
            max_queued_bytes: Some(max_bytes),
            max_queued_messages: Some(1_000_000),
            ..SubscribeOptions::default()
        },
    });
    control
        .write_all(&encoded(&subscribe))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    let subscription = match read_frame(&mut answers, &mut buf).await.expect("answer") {
        Frame::Subscribed(subscribed) => subscribed.subscription,
        other => panic!("expected Subscribed, got {other:?}"),
    };
    cassini_e2e::raw::vanish(&endpoint, &connection).await;
    broker
        .wait_for_stats("subscriber gone", |s| s.connections == 0)
        .await;
    (welcome.session_id, subscription)
}

/// A detached session of `name` holding `count` subscriptions to `filter`.
async fn detached_subscriptions(broker: &TestBroker, name: &str, filter: &str, count: u64) {
    let (endpoint, connection) = broker.raw_connection(name).await;
    let (_, mut control, mut answers) = raw::hello(&connection, None).await.expect("hello");
    let mut buf = BytesMut::new();
    for request_id in 1..=count {
        let subscribe = Frame::Subscribe(Subscribe {
            request_id,
            filter: filter.into(),
            options: SubscribeOptions::default(),
        });
        control
            .write_all(&encoded(&subscribe))
            .await
            .expect("write");
        match read_frame(&mut answers, &mut buf).await.expect("answer") {
            Frame::Subscribed(_) => {}
            other => panic!("expected Subscribed, got {other:?}"),
        }
    }
    cassini_e2e::raw::vanish(&endpoint, &connection).await;
    broker
        .wait_for_stats("subscriber gone", |s| s.connections == 0)
        .await;
}

#[tokio::test]
async fn the_budget_counts_a_queue_entry_per_subscription_a_message_waits_in() {
    // 1,000 subscriptions of one session to one topic: each tiny publish waits in 1,000
    // queues. Counted once, 200 of them would take 50 KB of the 4 MiB budget; counted with an
    // entry per queue, they take some 8 MB, and the budget refuses them long before. (A
    // subscription needs room for one frame of the largest size, 1.1 MB, to be made.)
    let budget = 4 * 1024 * 1024;
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_memory_bytes: budget,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    detached_subscriptions(&broker, "hoarder", "fan.x", 1_000).await;
    let publisher = broker.client("publisher").await;
    let mut accepted = 0;
    let refusal = loop {
        match publisher
            .publish_acked("fan.x", Bytes::from_static(b"t"))
            .await
        {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 200, "the budget never refused a publish");
    };
    assert!(
        matches!(
            refusal,
            PublishError::Rejected {
                code: ErrorCode::MEMORY_BUDGET_EXCEEDED,
                ..
            }
        ),
        "{refusal}"
    );
    let memory = broker.broker.memory();
    assert!(
        memory.message_bytes >= accepted * 1_000 * 32,
        "every entry counted: {memory:?} after {accepted} publishes"
    );
    broker.stop().await;
}

#[tokio::test]
async fn headers_count_against_a_detached_subscriptions_byte_bound() {
    let broker = TestBroker::start().await;
    let bound = 64 * 1024;
    detached_subscription(&broker, "detached", "heavy.x", bound).await;
    let publisher = broker.client("publisher").await;
    // 200 headers of 100 bytes: about 30 KB in memory for a 1-byte payload.
    let heavy = headers(200, 10, 90);
    for _ in 0..20 {
        publisher
            .publish_acked_with(
                "heavy.x",
                Bytes::from_static(b"p"),
                PublishOptions {
                    headers: heavy.clone(),
                    ..PublishOptions::default()
                },
            )
            .await
            .expect("publish");
    }
    let subscription = broker
        .broker
        .subscriptions()
        .into_iter()
        .find(|s| s.filter == "heavy.x")
        .expect("the detached subscription");
    eprintln!(
        "queued {} messages, {} bytes",
        subscription.depth, subscription.queued_bytes
    );
    assert!(
        subscription.queued_bytes >= 200 * 100 + 200 * 48,
        "a queued message counts its headers: {} bytes",
        subscription.queued_bytes
    );
    assert!(
        subscription.queued_bytes <= bound as usize + 40_000,
        "the bound holds, give or take one message: {} bytes",
        subscription.queued_bytes
    );
    assert!(
        subscription.depth <= 3,
        "{} messages of ~30 KB fit in 64 KiB",
        subscription.depth
    );
    let memory = broker.broker.memory();
    assert!(memory.message_bytes >= subscription.queued_bytes);
    broker.stop().await;
}

#[tokio::test]
async fn the_memory_budget_refuses_publishes_and_subscriptions_then_recovers() {
    let budget = 2 * 1024 * 1024;
    let mut config = with_limits(BrokerLimits {
        max_memory_bytes: budget,
        ..BrokerLimits::default()
    });
    config.queue.max_bytes = 64 * 1024 * 1024;
    let broker = TestBroker::start_with(config, ServerOptions::default()).await;
    let (session, subscription) =
        detached_subscription(&broker, "filler", "fill.x", 32 * 1024 * 1024).await;
    let publisher = broker.client("publisher").await;
    let payload = Bytes::from(vec![7u8; 100 * 1024]);
    let mut accepted = 0;
    let refusal = loop {
        match publisher.publish_acked("fill.x", payload.clone()).await {
            Ok(_) => accepted += 1,
            Err(err) => break err,
        }
        assert!(accepted < 100, "the budget never refused a publish");
    };
    assert!(
        matches!(
            refusal,
            PublishError::Rejected {
                code: ErrorCode::MEMORY_BUDGET_EXCEEDED,
                ..
            }
        ),
        "{refusal}"
    );
    assert!(
        (15..=20).contains(&accepted),
        "{accepted} publishes of 100 KiB fit in 2 MiB"
    );
    let memory = broker.broker.memory();
    assert!(memory.used_bytes <= budget as usize, "{memory:?}");

    // While there is no room for one more message of the largest size, subscriptions are refused.
    let other = broker.client("other").await;
    match other.subscribe("anything.x").await {
        Err(SubscribeError::Refused { code, .. }) => {
            assert_eq!(code, ErrorCode::MEMORY_BUDGET_EXCEEDED)
        }
        Ok(_) => panic!("a subscription was accepted with the budget spent"),
        Err(other) => panic!("expected a refused subscription, got {other}"),
    }

    // The filler comes back and drops its subscription: the memory is given back.
    let (_endpoint, connection) = broker.raw_connection("filler").await;
    let (_, mut control, mut answers) = raw::hello(&connection, Some(session))
        .await
        .expect("resume");
    control
        .write_all(&encoded(&Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            subscription,
        })))
        .await
        .expect("write");
    let mut buf = BytesMut::new();
    loop {
        match read_frame(&mut answers, &mut buf).await.expect("answer") {
            Frame::Unsubscribed(_) => break,
            _ => continue,
        }
    }
    eventually("the budget is given back", || async {
        (broker.broker.memory().message_bytes < 64 * 1024).then_some(())
    })
    .await;
    publisher
        .publish_acked("fill.x", payload.clone())
        .await
        .expect("publishes are accepted again");
    broker.assert_bystander_unaffected("bystander").await;
    broker.stop().await;
}

#[tokio::test]
async fn one_identitys_partial_frames_are_bounded_and_close_only_its_connection() {
    let per_identity = 4 * 1024 * 1024;
    let broker = TestBroker::start_with(
        with_limits(BrokerLimits {
            max_partial_frame_bytes_per_identity: per_identity,
            ..BrokerLimits::default()
        }),
        ServerOptions::default(),
    )
    .await;
    let bystander = broker.client("bystander").await;
    let (_endpoint, connection) = broker.raw_connection("eve").await;
    let _control = raw::hello(&connection, None).await.expect("welcome");
    let max_frame = BrokerLimits::default().max_frame_bytes;
    let mut streams = Vec::new();
    // 40 streams, each holding a frame of the maximum size without its last byte: 40 MiB
    // against a 4 MiB bound.
    for _ in 0..40 {
        let Ok((mut send, recv)) = connection.open_bi().await else {
            break;
        };
        let mut partial = BytesMut::with_capacity(max_frame as usize + 4);
        partial.put_u32(max_frame);
        partial.put_bytes(0x42, max_frame as usize - 1);
        if send.write_all(&partial).await.is_err() {
            break;
        }
        streams.push((send, recv));
    }
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::PARTIAL_FRAMES_LIMIT, "{reason}");
    eventually("eve's frame buffers are given back", || async {
        (broker.broker.memory().frame_buffer_bytes < 1024 * 1024).then_some(())
    })
    .await;
    // A large publish of another identity goes through.
    bystander
        .publish_acked("big.x", Bytes::from(vec![1u8; 1024 * 1024]))
        .await
        .expect("a bystander's large publish");
    broker.assert_bystander_unaffected("bystander-2").await;
    broker.stop().await;
}

#[tokio::test]
async fn retained_values_read_back_from_disk_count_in_the_memory_budget() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::default();
    config.storage.mode = cassini_broker::config::StorageMode::Disk;
    config.storage.data_dir = dir.path().to_owned();
    let broker = cassini_broker::Broker::start(config.clone())
        .await
        .expect("start");
    broker
        .local_client()
        .publish_with(LocalPublish {
            topic: "state.x".into(),
            headers: headers(100, 10, 90),
            payload: Bytes::from_static(b"kept"),
            message_id: None,
            reply_to: None,
            retain: true,
            to_session: None,
        })
        .expect("retained publish");
    let held = broker.memory().message_bytes;
    assert!(
        held >= 100 * 100,
        "the retained copy counts its headers: {held}"
    );
    broker.shutdown("restart").await;

    let restarted = cassini_broker::Broker::start(config)
        .await
        .expect("restart");
    assert_eq!(restarted.retained().0, 1);
    assert_eq!(
        restarted.memory().message_bytes,
        restarted.retained().1,
        "what was read back is charged"
    );
    assert!(restarted.memory().message_bytes >= 100 * 100);
    restarted.shutdown("test over").await;
}
