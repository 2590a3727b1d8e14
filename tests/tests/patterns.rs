//! The messaging patterns services need: queue groups, request/reply, retained values, direct
//! messages, headers and typed payloads.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use cassini_client::RequestError;
use cassini_e2e::{assert_echoed, assert_no_responders, echo_service, within, TestBroker};
use futures_util::StreamExt;

#[tokio::test]
async fn a_queue_group_of_three_receives_each_message_exactly_once() {
    const COUNT: u64 = 300;
    let broker = TestBroker::start().await;
    let mut members = Vec::new();
    for name in ["worker-1", "worker-2", "worker-3"] {
        let client = broker.client(name).await;
        let subscription = client
            .subscribe_queue("jobs.*", "workers")
            .await
            .expect("join group");
        members.push((client, subscription));
    }
    let publisher = broker.client("producer").await;
    for i in 0..COUNT {
        publisher
            .publish("jobs.resize", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    publisher.close().await.expect("close");

    let mut seen = HashSet::new();
    let mut per_member = Vec::new();
    let received = within("every job delivered once", async {
        let mut total = 0;
        let mut counts = vec![0u64; members.len()];
        while total < COUNT {
            for (index, (_, subscription)) in members.iter_mut().enumerate() {
                if let Ok(Some(message)) =
                    tokio::time::timeout(Duration::from_millis(50), subscription.next()).await
                {
                    let id = u64::from_be_bytes(message.payload()[..8].try_into().expect("id"));
                    assert!(seen.insert(id), "job {id} delivered twice");
                    counts[index] += 1;
                    total += 1;
                }
            }
        }
        counts
    })
    .await;
    per_member.extend(received);
    assert_eq!(seen.len() as u64, COUNT);
    assert!(
        per_member.iter().all(|count| *count > 0),
        "round-robin gives every member work: {per_member:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_leaving_group_member_loses_nothing_it_had_not_delivered() {
    const COUNT: u64 = 200;
    let broker = TestBroker::start().await;
    let leaver = broker.client_with_buffer("leaver", 1).await;
    let mut leaving = leaver.subscribe_queue("work", "pool").await.expect("join");
    let stayer = broker.client("stayer").await;
    let mut staying = stayer.subscribe_queue("work", "pool").await.expect("join");

    let publisher = broker.client("producer").await;
    for i in 0..COUNT {
        publisher
            .publish("work", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish");
    }
    publisher.close().await.expect("close");

    // The leaver takes one message, then leaves with the rest of its share still queued.
    let first = within("leaver's first job", leaving.next())
        .await
        .expect("message");
    let mut seen = HashSet::from([u64::from_be_bytes(
        first.payload()[..8].try_into().expect("id"),
    )]);
    leaving.unsubscribe().await.expect("leave");
    while let Some(message) = within("leaver's delivered jobs", leaving.next()).await {
        seen.insert(u64::from_be_bytes(
            message.payload()[..8].try_into().expect("id"),
        ));
    }
    while (seen.len() as u64) < COUNT {
        let message = within("the rest reaches the stayer", staying.next())
            .await
            .expect("message");
        let id = u64::from_be_bytes(message.payload()[..8].try_into().expect("id"));
        assert!(seen.insert(id), "job {id} delivered twice");
    }
    broker.stop().await;
}

#[tokio::test]
async fn request_reply_round_trip() {
    let broker = TestBroker::start().await;
    let service = broker.client("service").await;
    let server = echo_service(&service, "svc.echo").await;
    let caller = broker.client("caller").await;
    assert_echoed(&caller, "reply").await;
    server.abort();
    broker.stop().await;
}

/// More requests than the responder has publish lanes (64), from two callers at once: replies
/// to one inbox share one lane, and each request still gets its own reply.
#[tokio::test]
async fn many_concurrent_requests_from_two_callers_each_get_their_own_reply() {
    const PER_CALLER: usize = 150;
    let broker = TestBroker::start().await;
    let service = broker.client("service").await;
    let server = echo_service(&service, "svc.echo").await;
    let callers = [
        broker.client("caller-a").await,
        broker.client("caller-b").await,
    ];
    let requests = callers.iter().enumerate().flat_map(|(c, caller)| {
        (0..PER_CALLER).map(move |n| async move {
            let body = format!("{c}/{n}");
            let reply = caller
                .request(
                    "svc.echo",
                    Bytes::from(body.clone()),
                    Duration::from_secs(10),
                )
                .await
                .expect("a reply");
            assert_eq!(reply.payload(), &Bytes::from(format!("echo: {body}")));
        })
    });
    within(
        "every request answered",
        futures_util::future::join_all(requests),
    )
    .await;
    server.abort();
    broker.stop().await;
}

#[tokio::test]
async fn a_request_nobody_answers_times_out() {
    let broker = TestBroker::start().await;
    let listener = broker.client("mute").await;
    let _mute = listener.subscribe("svc.mute").await.expect("subscribe");
    let caller = broker.client("caller").await;
    let outcome = within(
        "request times out",
        caller.request(
            "svc.mute",
            Bytes::from_static(b"hello?"),
            Duration::from_millis(300),
        ),
    )
    .await;
    assert!(
        matches!(outcome, Err(RequestError::Timeout)),
        "got {outcome:?}"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_request_to_a_topic_without_subscribers_fails_at_once() {
    let broker = TestBroker::start().await;
    let caller = broker.client("caller").await;
    // Within the harness deadline, long before the request's own timeout.
    assert_no_responders(&caller, "svc.nobody", "nobody subscribes").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_new_subscriber_gets_retained_values_first_even_through_wildcards() {
    let broker = TestBroker::start().await;
    let publisher = broker.client("thermostat").await;
    publisher
        .publish_retained("state.kitchen", Bytes::from_static(b"21C"))
        .await
        .expect("retain");
    publisher
        .publish_retained("state.hall", Bytes::from_static(b"18C"))
        .await
        .expect("retain");
    publisher
        .publish_retained("state.hall", Bytes::from_static(b"19C"))
        .await
        .expect("retain");
    publisher.close().await.expect("close");

    for filter in ["state.*", "state.>", ">"] {
        let subscriber = broker.client("display").await;
        let mut subscription = subscriber.subscribe(filter).await.expect("subscribe");
        let mut values = Vec::new();
        for _ in 0..2 {
            let message = within("retained value", subscription.next())
                .await
                .expect("message");
            assert!(message.is_retained(), "{filter}: marked as retained");
            values.push((message.topic().to_string(), message.payload().clone()));
        }
        values.sort();
        assert_eq!(
            values,
            vec![
                ("state.hall".to_string(), Bytes::from_static(b"19C")),
                ("state.kitchen".to_string(), Bytes::from_static(b"21C")),
            ],
            "{filter}: the last retained value of each matching topic"
        );
        subscriber.close().await.expect("close");
    }
    // A filter naming one topic gets that topic's value only.
    let subscriber = broker.client("display").await;
    let mut subscription = subscriber.subscribe("state.hall").await.expect("subscribe");
    let message = within("retained value", subscription.next())
        .await
        .expect("message");
    assert!(message.is_retained());
    assert_eq!(
        (message.topic(), message.payload().as_ref()),
        ("state.hall", b"19C".as_ref())
    );
    subscriber.close().await.expect("close");
    broker.stop().await;
}

#[tokio::test]
async fn an_empty_retained_publish_clears_the_value() {
    let broker = TestBroker::start().await;
    let publisher = broker.client("thermostat").await;
    publisher
        .publish_retained("state.a", Bytes::from_static(b"on"))
        .await
        .expect("retain");
    publisher
        .publish_retained("state.a", Bytes::new())
        .await
        .expect("clear");
    publisher
        .publish_retained("state.b", Bytes::from_static(b"off"))
        .await
        .expect("retain");
    publisher.close().await.expect("close");
    let subscriber = broker.client("display").await;
    let mut subscription = subscriber.subscribe("state.*").await.expect("subscribe");
    let message = within("retained", subscription.next())
        .await
        .expect("message");
    assert_eq!(message.topic(), "state.b");
    assert_eq!(message.sequence(), 1, "state.a had no retained value left");
    broker.stop().await;
}

#[tokio::test]
async fn a_direct_message_reaches_only_its_session() {
    let broker = TestBroker::start().await;
    let alice = broker.client("alice").await;
    let mut alice_inbox = alice.subscribe("note").await.expect("subscribe");
    let bob = broker.client("bob").await;
    let mut bob_inbox = bob.subscribe("note").await.expect("subscribe");
    let sender = broker.client("sender").await;
    sender
        .send_to(
            bob.session_id(),
            "note",
            Bytes::from_static(b"for bob only"),
        )
        .await
        .expect("send");
    sender
        .publish("note", Bytes::from_static(b"for everyone"))
        .await
        .expect("publish");
    sender.close().await.expect("close");
    assert_eq!(
        within("bob", bob_inbox.next())
            .await
            .expect("msg")
            .payload(),
        &b"for bob only"[..]
    );
    assert_eq!(
        within("bob", bob_inbox.next())
            .await
            .expect("msg")
            .payload(),
        &b"for everyone"[..]
    );
    let first = within("alice", alice_inbox.next()).await.expect("msg");
    assert_eq!(first.payload(), &b"for everyone"[..]);
    assert_eq!(
        first.sequence(),
        1,
        "the direct message was never routed to alice"
    );
    broker.stop().await;
}

#[tokio::test]
async fn headers_message_ids_and_typed_payloads_travel_intact() {
    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Order {
        id: u32,
        item: String,
    }
    let broker = TestBroker::start().await;
    let subscriber = broker.client("sub").await;
    let mut subscription = subscriber.subscribe("orders.>").await.expect("subscribe");
    let publisher = broker.client("pub").await;
    let order = Order {
        id: 7,
        item: "tea".into(),
    };
    publisher
        .publish_json("orders.new", &order)
        .await
        .expect("json");
    publisher
        .publish_msgpack("orders.new", &order)
        .await
        .expect("msgpack");
    publisher.close().await.expect("close");
    let json = within("json", subscription.next()).await.expect("msg");
    assert_eq!(json.decode_json::<Order>().expect("decodes"), order);
    let msgpack = within("msgpack", subscription.next()).await.expect("msg");
    assert_eq!(msgpack.decode_msgpack::<Order>().expect("decodes"), order);
    assert!(
        json.decode_msgpack::<Order>().is_err(),
        "a mismatched decode is an error, not a panic"
    );
    broker.stop().await;
}
