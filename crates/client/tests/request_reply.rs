//! Requests, responders, publish options, queue groups and retained messages against a
//! scripted broker: what the client sends, and what it makes of the broker's answers.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

mod fake_broker;

use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::{ClientError, PublishError, PublishOptions, RequestError, SessionId};
use cassini_protocol::{Delivery, Frame, NoResponders};
use fake_broker::{delivery, write, FakeBroker, STEP};
use serde::{Deserialize, Serialize};
use tokio::time::timeout;

/// Checks an inbox filter: `_INBOX.alice.` (the identity the fake broker's `Welcome` names)
/// then 16 hex digits then `.>`; returns the inbox prefix.
fn inbox_prefix(filter: &str) -> &str {
    let prefix = filter.strip_suffix(".>").expect("a filter ending in .>");
    let id = prefix
        .strip_prefix("_INBOX.alice.")
        .expect("an _INBOX.<identity>. filter");
    assert_eq!(id.len(), 16, "16 hex digits in {filter}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "hex in {filter}");
    prefix
}

#[tokio::test]
async fn a_request_gets_its_reply_through_one_inbox_subscription() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let broker_side = async {
        let (subscribe, mut inbox) = session.accept_subscribe(1).await;
        assert_eq!(subscribe.options.queue_group, None);
        let prefix = inbox_prefix(&subscribe.filter).to_owned();
        let (_send, mut publishes) = session.accept_publish().await;
        for (sequence, answer) in [(1, "noon"), (2, "one")] {
            let request = publishes.expect_publish().await;
            assert_eq!(request.topic, "svc.time");
            assert_eq!(request.payload, Bytes::from_static(b"now?"));
            let reply_to = request.reply_to.expect("a reply topic");
            assert!(reply_to.starts_with(&format!("{prefix}.")), "{reply_to}");
            let reply = delivery(sequence, &reply_to, answer);
            write(&mut inbox, &Frame::Message(reply)).await;
        }
        // The second request reused the inbox: the next control frame is not a Subscribe.
        match session.control.next().await {
            Some(Frame::Ping(ping)) => session.send_control(&Frame::Pong(ping)).await,
            other => panic!("expected Ping, got {other:?}"),
        }
        (inbox, prefix)
    };
    let client_side = async {
        let first = client.request("svc.time", "now?", STEP).await;
        let second = client.request("svc.time", "now?", STEP).await;
        client.ping().await.expect("ping");
        (first, second)
    };
    let ((first, second), (_inbox, prefix)) = tokio::join!(client_side, broker_side);
    let first = first.expect("the first reply");
    let second = second.expect("the second reply");
    assert_eq!(first.payload(), &Bytes::from_static(b"noon"));
    assert_eq!(second.payload(), &Bytes::from_static(b"one"));
    assert!(first.topic().starts_with(&prefix));
    assert_ne!(
        first.topic(),
        second.topic(),
        "each request has its own reply topic"
    );
}

#[tokio::test]
async fn no_responders_ends_a_request_at_once() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let broker_side = async {
        let (_subscribe, inbox) = session.accept_subscribe(1).await;
        let (mut send, mut publishes) = session.accept_publish().await;
        let request = publishes.expect_publish().await;
        let reply_to = request.reply_to.expect("a reply topic");
        write(&mut send, &Frame::NoResponders(NoResponders { reply_to })).await;
        (inbox, send)
    };
    let started = Instant::now();
    let (answer, _streams) = tokio::join!(
        client.request("svc.none", "anyone?", Duration::from_secs(60)),
        broker_side
    );
    match answer {
        Err(RequestError::NoResponders { topic }) => assert_eq!(topic, "svc.none"),
        other => panic!("expected NoResponders, got {other:?}"),
    }
    assert!(
        started.elapsed() < STEP,
        "answered at once, not at the timeout"
    );
    assert_eq!(
        ClientError::NoResponders {
            topic: "svc.none".into()
        }
        .to_string(),
        "no responders on svc.none"
    );
}

#[tokio::test]
async fn a_request_times_out_and_its_late_reply_does_not_reach_the_next_request() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let patience = Duration::from_millis(200);
    let broker_side = async {
        let (_subscribe, inbox) = session.accept_subscribe(1).await;
        let (send, mut publishes) = session.accept_publish().await;
        let ignored = publishes.expect_publish().await;
        (
            inbox,
            send,
            publishes,
            ignored.reply_to.expect("a reply topic"),
        )
    };
    let (answer, (mut inbox, _send, mut publishes, late_topic)) =
        tokio::join!(client.request("svc.slow", "hello?", patience), broker_side);
    match answer {
        Err(error @ RequestError::Timeout) => {
            assert_eq!(error.to_string(), "timed out waiting for a reply");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }

    let broker_side = async {
        write(
            &mut inbox,
            &Frame::Message(delivery(1, &late_topic, "late")),
        )
        .await;
        let request = publishes.expect_publish().await;
        let reply_to = request.reply_to.expect("a reply topic");
        assert_ne!(reply_to, late_topic);
        write(&mut inbox, &Frame::Message(delivery(2, &reply_to, "fresh"))).await;
    };
    let (answer, ()) = tokio::join!(client.request("svc.slow", "again?", STEP), broker_side);
    assert_eq!(
        answer.expect("a reply").payload(),
        &Bytes::from_static(b"fresh")
    );
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u32,
    item: String,
}

#[tokio::test]
async fn publish_options_direct_messages_and_typed_payloads_reach_the_broker() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect_alice().await;
    let order = Order {
        id: 7,
        item: "tea".into(),
    };
    let peer = SessionId([7; 16]);

    let options = PublishOptions::new()
        .header("trace", "abc")
        .message_id(42)
        .retain(true)
        .reply_to("orders.replies");
    client
        .publish_with("orders.new", "first", options)
        .await
        .expect("publish_with");
    client
        .send_to(peer, "orders.new", "direct")
        .await
        .expect("send_to");
    client
        .publish_retained("orders.new", "")
        .await
        .expect("publish_retained");
    client
        .publish_json("orders.new", &order)
        .await
        .expect("publish_json");
    client
        .publish_msgpack("orders.new", &order)
        .await
        .expect("publish_msgpack");

    let (_send, mut publishes) = session.accept_publish().await;
    let first = publishes.expect_publish().await;
    assert_eq!(first.headers, vec![("trace".into(), "abc".into())]);
    assert_eq!(first.message_id, Some(42));
    assert!(first.retain);
    assert_eq!(first.reply_to.as_deref(), Some("orders.replies"));
    assert_eq!(first.to_session, None);

    let direct = publishes.expect_publish().await;
    assert_eq!(direct.to_session, Some(peer));
    assert_eq!((direct.retain, direct.reply_to), (false, None));

    let clear = publishes.expect_publish().await;
    assert!(clear.retain && clear.payload.is_empty());

    let json = publishes.expect_publish().await;
    assert_eq!(
        json.headers,
        vec![("content-type".into(), "application/json".into())]
    );
    assert_eq!(
        serde_json::from_slice::<Order>(&json.payload).expect("JSON"),
        order
    );
    let msgpack = publishes.expect_publish().await;
    assert_eq!(
        msgpack.headers,
        vec![("content-type".into(), "application/msgpack".into())]
    );
    assert_eq!(
        rmp_serde::from_slice::<Order>(&msgpack.payload).expect("MessagePack"),
        order
    );

    assert!(matches!(
        client
            .publish_with("orders.new", "x", PublishOptions::new().reply_to("bad.*"))
            .await,
        Err(PublishError::InvalidReplyTo(_))
    ));
}

#[tokio::test]
async fn a_retained_delivery_and_its_id_surface_on_the_message() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (subscription, (_subscribe, mut stream)) =
        tokio::join!(client.subscribe("config.>"), session.accept_subscribe(4));
    let mut subscription = subscription.expect("subscribe");
    let retained = Delivery {
        message_id: Some(3),
        retained: true,
        ..delivery(1, "config.mode", "eco")
    };
    write(&mut stream, &Frame::Message(retained)).await;
    write(
        &mut stream,
        &Frame::Message(delivery(2, "config.mode", "max")),
    )
    .await;

    let first = subscription.recv().await.expect("the retained value");
    assert!(first.is_retained());
    assert_eq!(first.message_id(), Some(3));
    let second = subscription.recv().await.expect("a live message");
    assert!(!second.is_retained());
    assert_eq!(second.message_id(), None);
}

#[tokio::test]
async fn a_queue_responder_answers_on_the_reply_topic_and_refuses_a_message_without_one() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (responder, (subscribe, mut stream)) = tokio::join!(
        client.serve_queue("svc.echo", "echoers"),
        session.accept_subscribe(2)
    );
    let mut responder = responder.expect("serve_queue");
    assert_eq!(subscribe.filter, "svc.echo");
    assert_eq!(subscribe.options.queue_group.as_deref(), Some("echoers"));

    let request = Delivery {
        reply_to: Some("_INBOX.peer.5".into()),
        ..delivery(1, "svc.echo", "hi")
    };
    write(&mut stream, &Frame::Message(request)).await;
    write(
        &mut stream,
        &Frame::Message(delivery(2, "svc.echo", "no reply topic")),
    )
    .await;

    let request = timeout(STEP, responder.recv())
        .await
        .expect("in time")
        .expect("a request");
    assert_eq!(request.message().reply_to(), Some("_INBOX.peer.5"));
    request
        .respond(request.payload().clone())
        .await
        .expect("respond");
    let (_send, mut publishes) = session.accept_publish().await;
    let reply = publishes.expect_publish().await;
    assert_eq!(reply.topic, "_INBOX.peer.5");
    assert_eq!(reply.payload, Bytes::from_static(b"hi"));

    let plain = responder.recv().await.expect("a plain message");
    match plain.respond("ignored").await {
        Err(ClientError::NoReplyTo { topic }) => assert_eq!(topic, "svc.echo"),
        other => panic!("expected NoReplyTo, got {other:?}"),
    }
}

#[tokio::test]
async fn subscribe_queue_sends_the_group() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;
    let (subscription, (subscribe, _stream)) = tokio::join!(
        client.subscribe_queue("work.>", "workers"),
        session.accept_subscribe(3)
    );
    subscription.expect("subscribe_queue");
    assert_eq!(subscribe.filter, "work.>");
    assert_eq!(subscribe.options.queue_group.as_deref(), Some("workers"));
}

#[tokio::test]
async fn a_lost_inbox_fails_waiting_requests_and_the_next_request_subscribes_again() {
    let broker = FakeBroker::start();
    let (client, mut session) = broker.connect_alice().await;

    let broker_side = async {
        let (subscribe, mut inbox) = session.accept_subscribe(1).await;
        let (send, mut publishes) = session.accept_publish().await;
        publishes.expect_publish().await;
        let slow_consumer = cassini_client::ErrorCode::SLOW_CONSUMER.value();
        inbox
            .reset(quinn::VarInt::from_u32(slow_consumer))
            .expect("reset");
        (send, publishes, subscribe.filter)
    };
    let (answer, (_send, mut publishes, first_filter)) =
        tokio::join!(client.request("svc.a", "1", STEP), broker_side);
    match answer {
        Err(RequestError::InboxEnded { reason }) => assert!(reason.contains("slow consumer")),
        other => panic!("expected InboxEnded, got {other:?}"),
    }

    let broker_side = async {
        let (subscribe, mut inbox) = session.accept_subscribe(2).await;
        inbox_prefix(&subscribe.filter);
        assert_ne!(subscribe.filter, first_filter, "a fresh inbox");
        let request = publishes.expect_publish().await;
        let reply_to = request.reply_to.expect("a reply topic");
        write(&mut inbox, &Frame::Message(delivery(1, &reply_to, "back"))).await;
        inbox
    };
    let (answer, _inbox) = tokio::join!(client.request("svc.a", "2", STEP), broker_side);
    assert_eq!(
        answer.expect("a reply").payload(),
        &Bytes::from_static(b"back")
    );
}
