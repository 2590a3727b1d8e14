//! The broker embedded in a program: local ractor actors subscribe and publish in process,
//! beside QUIC clients of the same broker.

use bytes::Bytes;
use cassini_broker::{LocalMessage, LocalPublish};
use cassini_e2e::{within, TestBroker};
use cassini_protocol::{OverflowPolicy, SubscribeOptions};
use futures_util::StreamExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::mpsc;

/// An actor that records the payload of every message it handles.
struct Recorder;

enum RecorderMsg {
    Delivered(LocalMessage),
}

impl From<LocalMessage> for RecorderMsg {
    fn from(message: LocalMessage) -> Self {
        RecorderMsg::Delivered(message)
    }
}

impl Actor for Recorder {
    type Msg = RecorderMsg;
    type State = mpsc::UnboundedSender<(u64, Bytes)>;
    type Arguments = mpsc::UnboundedSender<(u64, Bytes)>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        out: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(out)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        RecorderMsg::Delivered(message): Self::Msg,
        out: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let _ = out.send((message.sequence(), message.payload().clone()));
        Ok(())
    }
}

#[tokio::test]
async fn an_actor_in_the_broker_process_receives_what_a_quic_client_publishes() {
    let broker = TestBroker::start().await;
    let local = broker.broker.local_client();
    let (out, mut recorded) = mpsc::unbounded_channel();
    let (recorder, _) = Actor::spawn(None, Recorder, out).await.expect("actor");
    let subscription = local.subscribe("plant.>").await.expect("local subscribe");
    let forwarding = subscription.forward_to(recorder.clone(), 16);

    let publisher = broker.client("sensor").await;
    for i in 0..100u32 {
        publisher
            .publish("plant.boiler.temp", Bytes::from(i.to_string()))
            .await
            .expect("publish");
    }
    for i in 0..100u32 {
        let (sequence, payload) = within("the actor gets the next message", recorded.recv())
            .await
            .expect("recorder alive");
        assert_eq!(sequence, u64::from(i) + 1);
        assert_eq!(
            payload,
            Bytes::from(i.to_string()),
            "every message, in order"
        );
    }
    forwarding.abort();
    recorder.stop(None);
    broker
        .wait_for_stats("the local subscription's route is gone", |s| {
            s.routes_empty && s.topics == 0
        })
        .await;
    broker.stop().await;
}

#[tokio::test]
async fn a_local_publisher_reaches_quic_subscribers_and_retained_values_reach_local_ones() {
    let broker = TestBroker::start().await;
    let local = broker.broker.local_client();
    let remote = broker.client("dashboard").await;
    let mut remote_sub = remote.subscribe("plant.*").await.expect("subscribe");

    let published = local
        .publish_with(LocalPublish {
            topic: "plant.state".into(),
            payload: Bytes::from_static(b"running"),
            retain: true,
            ..LocalPublish::default()
        })
        .expect("local publish");
    assert_eq!(published.offered, 1);
    let message = within("the QUIC subscriber gets it", remote_sub.next())
        .await
        .expect("open");
    assert_eq!(message.payload(), &Bytes::from_static(b"running"));

    let mut late = local.subscribe("plant.*").await.expect("local subscribe");
    let retained = within("the retained value", late.recv())
        .await
        .expect("open");
    assert!(retained.is_retained());
    assert_eq!(retained.payload(), &Bytes::from_static(b"running"));

    assert!(
        local.publish("plant.*", "x").is_err(),
        "wildcards are refused"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_stalled_actor_fills_only_its_own_bounded_queue() {
    let broker = TestBroker::start().await;
    let local = broker.broker.local_client();
    let options = SubscribeOptions {
        overflow: OverflowPolicy::DropOldest,
        max_queued_messages: Some(10),
        ..SubscribeOptions::default()
    };
    let mut stalled = local
        .subscribe_with("flood.x", options)
        .await
        .expect("subscribe");
    let mut other = local.subscribe("flood.x").await.expect("subscribe");
    for i in 0..1_000u32 {
        local
            .publish("flood.x", Bytes::from(i.to_string()))
            .expect("publish never waits");
    }
    for i in 0..1_000u32 {
        let message = within("the reading subscription", other.recv())
            .await
            .expect("open");
        assert_eq!(message.payload(), &Bytes::from(i.to_string()));
    }
    assert_eq!(stalled.dropped(), 990, "the policy kept the newest 10");
    let first = within("the stalled one", stalled.recv())
        .await
        .expect("open");
    assert_eq!(first.sequence(), 991);
    broker.stop().await;
}

/// A retained publish: stored in disk mode, so it needs room in the store.
fn retained(topic: &str, payload: Bytes) -> LocalPublish {
    LocalPublish {
        topic: topic.into(),
        payload,
        retain: true,
        ..LocalPublish::default()
    }
}

#[tokio::test]
async fn a_local_publish_gets_the_room_check_and_the_counters_of_a_network_publish() {
    use cassini_broker::config::StorageMode;
    use cassini_broker::BrokerConfig;
    use cassini_client::{PublishError, PublishOptions};
    use cassini_protocol::ErrorCode;
    use cassini_quic::server::ServerOptions;

    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = BrokerConfig::default();
    config.storage.mode = StorageMode::Disk;
    config.storage.data_dir = dir.path().to_path_buf();
    // Room for no retained value of 4 KiB.
    config.storage.max_disk_bytes = 1024;
    let broker = TestBroker::start_with(config, ServerOptions::default()).await;
    let counters = || broker.broker.counters().snapshot();
    let payload = Bytes::from(vec![7u8; 4096]);

    // A network publish that would store beyond the disk limit is refused and counted.
    let client = broker.client("alice").await;
    let options = PublishOptions::new().retain(true).ack(true);
    match client
        .publish_with("state.net", payload.clone(), options)
        .await
    {
        Err(PublishError::Rejected { code, .. }) => {
            assert_eq!(code, ErrorCode::STORAGE_FULL)
        }
        other => panic!("expected STORAGE_FULL, got {other:?}"),
    }
    assert_eq!(counters().publishes_rejected, 1);

    // So is the same publish from the embedding program.
    let local = broker.broker.local_client();
    let refused = local.publish_with(retained("state.local", payload));
    match refused {
        Err(err) => assert_eq!(err.code(), ErrorCode::STORAGE_FULL, "{err}"),
        Ok(published) => panic!("a full store took a local retained publish: {published:?}"),
    }
    assert_eq!(
        counters().publishes_rejected,
        2,
        "the local refusal is counted"
    );
    assert_eq!(broker.broker.retained().0, 0, "nothing was retained");

    // A local publish the store does not hold is routed, and counted as received.
    let before = counters();
    local
        .publish("plain.topic", Bytes::from_static(b"hello"))
        .expect("a publish that stores nothing");
    let after = counters();
    assert_eq!(after.messages_received, before.messages_received + 1);
    assert_eq!(after.bytes_received, before.bytes_received + 5);
    assert_eq!(after.publishes_rejected, 2);
    client.close().await.expect("close");
    broker.stop().await;
}
