//! Acknowledged publishes against a scripted broker: the acknowledgement resolves the call, a
//! rejection fails it with the broker's code, a connection lost before the acknowledgement
//! leads to the same message id being sent again after the resume, and no answer times out.

#![allow(clippy::expect_used, clippy::panic)] // A failed expectation in a test panics on purpose.

mod fake_broker;

use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    Client, ClientError, ConnectionState, ErrorCode, PublishError, PublishOptions, PublishReceipt,
};
use cassini_protocol::{Frame, PublishAck, PublishRejected};
use fake_broker::{write, FakeBroker, SESSION, STEP};
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Starts `publish_acked(topic, payload)` in the background.
fn publish_acked(
    client: &Client,
    topic: &'static str,
    payload: &'static str,
) -> JoinHandle<Result<PublishReceipt, ClientError>> {
    let client = client.clone();
    tokio::spawn(async move {
        client
            .publish_acked(topic, payload)
            .await
            .map_err(ClientError::from)
    })
}

/// The outcome of a background publish, within [`STEP`].
async fn outcome<T>(task: JoinHandle<T>) -> T {
    timeout(STEP, task)
        .await
        .expect("the publish ends in time")
        .expect("the publish task does not panic")
}

#[tokio::test]
async fn the_acknowledgement_resolves_the_publish() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect(broker.reconnecting_builder()).await;
    let task = publish_acked(&client, "demo.a", "one");
    let (mut send, mut reader) = session.accept_publish().await;
    let publish = reader.expect_publish().await;
    assert!(publish.ack, "the publish asks for an acknowledgement");
    assert_eq!(publish.payload, Bytes::from_static(b"one"));
    let message_id = publish
        .message_id
        .expect("a message id assigned by the client");
    write(
        &mut send,
        &Frame::PublishAck(PublishAck {
            message_id,
            duplicate: false,
        }),
    )
    .await;
    let receipt = outcome(task).await.expect("acknowledged");
    assert_eq!(receipt.message_id, message_id);
    assert!(!receipt.duplicate);

    // The next one gets a fresh id; an id given in the options is used as is.
    let options = PublishOptions::new().message_id(77).ack(true);
    let with_options = {
        let client = client.clone();
        tokio::spawn(async move { client.publish_with("demo.a", "two", options).await })
    };
    let publish = reader.expect_publish().await;
    assert_eq!(publish.message_id, Some(77));
    assert!(publish.ack);
    write(
        &mut send,
        &Frame::PublishAck(PublishAck {
            message_id: 77,
            duplicate: false,
        }),
    )
    .await;
    outcome(with_options).await.expect("acknowledged");
}

#[tokio::test]
async fn a_rejection_with_the_message_id_fails_the_publish_with_its_code() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect(broker.reconnecting_builder()).await;
    let mut publish_errors = client.publish_errors().expect("the rejection queue");
    let task = publish_acked(&client, "demo.a", "refused");
    let (mut send, mut reader) = session.accept_publish().await;
    let publish = reader.expect_publish().await;
    write(
        &mut send,
        &Frame::PublishRejected(PublishRejected {
            topic: publish.topic,
            message_id: publish.message_id,
            code: ErrorCode::PAYLOAD_TOO_LARGE,
            reason: "too large".into(),
        }),
    )
    .await;
    match outcome(task).await {
        Err(ClientError::PublishRejected {
            code,
            message_id,
            topic,
            ..
        }) => {
            assert_eq!(code, ErrorCode::PAYLOAD_TOO_LARGE);
            assert_eq!(message_id, publish.message_id);
            assert_eq!(topic, "demo.a");
        }
        other => panic!("expected PublishRejected, got {other:?}"),
    }
    assert!(
        publish_errors.try_recv().is_err(),
        "the caller got the rejection; it is not queued twice"
    );
}

#[tokio::test]
async fn a_publish_unacknowledged_when_the_connection_drops_is_sent_again_after_the_resume() {
    let broker = FakeBroker::start();
    let (client, session) = broker.connect(broker.reconnecting_builder()).await;
    let mut states = client.state_changes();
    let task = publish_acked(&client, "demo.a", "important");
    let (_send, mut reader) = session.accept_publish().await;
    let first = reader.expect_publish().await;
    let message_id = first.message_id.expect("a message id");

    // The broker routed it (as far as the test knows) but crashed before acknowledging.
    session.close(ErrorCode::INTERNAL, "crashed");
    timeout(
        STEP,
        states.wait_for(|state| matches!(state, ConnectionState::Reconnecting { .. })),
    )
    .await
    .expect("reconnecting in time")
    .expect("the client is alive");
    client
        .publish("demo.a", "later")
        .await
        .expect("buffered while reconnecting");

    let resumed = broker.accept_resume(SESSION).await;
    let (mut send, mut reader) = resumed.accept_publish().await;
    let again = reader.expect_publish().await;
    assert_eq!(again.message_id, Some(message_id), "the same message id");
    assert!(again.ack);
    assert_eq!(again.payload, Bytes::from_static(b"important"));
    let buffered = reader.expect_publish().await;
    assert_eq!(
        buffered.payload,
        Bytes::from_static(b"later"),
        "the re-sent publish goes ahead of the outbound buffer"
    );
    write(
        &mut send,
        &Frame::PublishAck(PublishAck {
            message_id,
            duplicate: true,
        }),
    )
    .await;
    let receipt = outcome(task).await.expect("acknowledged after the resume");
    assert_eq!(receipt.message_id, message_id);
    assert!(receipt.duplicate, "the broker said it was a duplicate");
}

#[tokio::test]
async fn without_an_answer_the_publish_times_out() {
    let broker = FakeBroker::start();
    let (client, session) = broker
        .connect(
            broker
                .reconnecting_builder()
                .ack_timeout(Duration::from_millis(200)),
        )
        .await;
    let task = publish_acked(&client, "demo.a", "unanswered");
    let (_send, mut reader) = session.accept_publish().await;
    reader.expect_publish().await;
    match outcome(task).await {
        Err(ClientError::Timeout(what)) => assert_eq!(what, "publish acknowledgement"),
        other => panic!("expected Timeout, got {other:?}"),
    }

    // The per-call timeout overrides the builder's.
    let started = tokio::time::Instant::now();
    let result = client
        .publish_acked_with_timeout(
            "demo.a",
            "unanswered too",
            PublishOptions::new(),
            Duration::from_millis(400),
        )
        .await;
    assert!(
        matches!(result, Err(PublishError::AckTimeout)),
        "{result:?}"
    );
    assert!(started.elapsed() >= Duration::from_millis(400));
}
