//! Authorization end to end: the ACL decides, from the certificate identity alone, who may
//! publish and subscribe where; a denied request gets `NOT_AUTHORIZED` and nothing leaks; a
//! replaced ACL ends the live subscriptions it no longer allows.

use bytes::Bytes;
use cassini_broker::{Acl, BrokerConfig};
use cassini_client::{ClientError, SubscriptionEnd};
use cassini_e2e::{eventually, within, TestBroker};
use cassini_protocol::ErrorCode;
use cassini_quic::server::ServerOptions;
use futures_util::StreamExt;

const ACL: &str = r#"
default = "deny"

[[rule]]
identity = "sensor-*"
publish = ["sensors.>"]
deny_publish = ["sensors.admin.>"]

[[rule]]
identity = "ops"
subscribe = ["sensors.>", "feeds.>", "$SYS.>"]
"#;

async fn broker_with(acl: &str) -> TestBroker {
    let config = BrokerConfig {
        acl: Acl::parse(acl, "test ACL").expect("valid ACL"),
        ..BrokerConfig::default()
    };
    TestBroker::start_with(config, ServerOptions::default()).await
}

fn assert_not_authorized(result: Result<impl std::fmt::Debug, ClientError>, what: &str) {
    match result {
        Err(ClientError::PublishRejected { code, .. } | ClientError::Request { code, .. }) => {
            assert_eq!(code, ErrorCode::NOT_AUTHORIZED, "{what}")
        }
        other => panic!("{what}: expected NOT_AUTHORIZED, got {other:?}"),
    }
}

#[tokio::test]
async fn a_denied_publish_is_rejected_and_reaches_no_subscriber() {
    let broker = broker_with(ACL).await;
    let ops = broker.client("ops").await;
    let mut everything = ops.subscribe("sensors.>").await.expect("ops subscribes");
    let sensor = broker.client("sensor-1").await;

    assert_not_authorized(
        sensor
            .publish_acked("sensors.admin.reboot", Bytes::from_static(b"no"))
            .await,
        "deny rule",
    );
    let stranger = broker.client("stranger").await;
    assert_not_authorized(
        stranger
            .publish_acked("sensors.t", Bytes::from_static(b"no"))
            .await,
        "identity without a rule, default deny",
    );
    // Fire-and-forget publishes are refused too; the refusal arrives on publish_errors.
    let mut errors = sensor.publish_errors().expect("publish error channel");
    sensor
        .publish("sensors.admin.x", Bytes::from_static(b"no"))
        .await
        .expect("sent");
    let refusal = within("refusal", errors.recv()).await.expect("a refusal");
    assert_eq!(refusal.code, ErrorCode::NOT_AUTHORIZED);
    assert_eq!(refusal.topic, "sensors.admin.x");

    sensor
        .publish_acked("sensors.t", Bytes::from_static(b"yes"))
        .await
        .expect("allowed publish");
    let first = within("delivery", everything.next())
        .await
        .expect("message");
    assert_eq!(
        (first.topic(), first.payload().as_ref()),
        ("sensors.t", &b"yes"[..]),
        "the allowed publish is the first and only thing delivered"
    );
    assert_eq!(everything.dropped(), 0);
    broker.stop().await;
}

#[tokio::test]
async fn a_denied_subscription_gets_not_authorized_and_the_connection_stays_usable() {
    let broker = broker_with(ACL).await;
    let sensor = broker.client("sensor-1").await;
    assert_not_authorized(sensor.subscribe("sensors.>").await, "no subscribe rule");
    let ops = broker.client("ops").await;
    assert_not_authorized(ops.subscribe(">").await, "wider than the allowed patterns");
    assert_not_authorized(
        ops.subscribe("orders.x").await,
        "outside the allowed patterns",
    );
    let mut allowed = ops.subscribe("sensors.*").await.expect("allowed filter");
    sensor
        .publish_acked("sensors.t", Bytes::from_static(b"x"))
        .await
        .expect("publish");
    let message = within("delivery", allowed.next()).await.expect("message");
    assert_eq!(message.topic(), "sensors.t");
    broker.stop().await;
}

#[tokio::test]
async fn system_topics_are_reserved_for_explicit_rules() {
    let open = TestBroker::start().await;
    let client = open.client("anyone").await;
    assert_not_authorized(client.subscribe("$SYS.>").await, "allow-all ACL");
    client.subscribe("anything.>").await.expect("allow-all");
    open.stop().await;

    let broker = broker_with(ACL).await;
    let ops = broker.client("ops").await;
    ops.subscribe("$SYS.broker.>")
        .await
        .expect("explicit $SYS rule");
    broker.stop().await;
}

#[tokio::test]
async fn a_replaced_acl_ends_the_subscriptions_it_no_longer_allows() {
    let broker = broker_with(ACL).await;
    let ops = broker.client("ops").await;
    let mut feeds = ops.subscribe("feeds.>").await.expect("feeds");
    let mut sensors = ops.subscribe("sensors.>").await.expect("sensors");
    let sensor = broker.client("sensor-1").await;

    let narrowed = ACL.replace(
        r#"subscribe = ["sensors.>", "feeds.>", "$SYS.>"]"#,
        r#"subscribe = ["sensors.>"]"#,
    );
    assert_ne!(narrowed, ACL);
    broker
        .broker
        .set_acl(Acl::parse(&narrowed, "narrowed").expect("valid"));

    assert_eq!(
        within("feeds ends", feeds.next())
            .await
            .map(|m| m.topic().to_owned()),
        None,
        "the no longer allowed subscription ends"
    );
    assert_eq!(
        feeds.end_reason(),
        Some(SubscriptionEnd::Reset(ErrorCode::NOT_AUTHORIZED))
    );
    eventually("the session forgets it", || async {
        (broker.stats().await.subscribers == 1).then_some(())
    })
    .await;

    sensor
        .publish_acked("sensors.t", Bytes::from_static(b"still"))
        .await
        .expect("publish");
    let message = within("delivery", sensors.next()).await.expect("message");
    assert_eq!(message.payload().as_ref(), b"still");
    assert_not_authorized(ops.subscribe("feeds.>").await, "new subscriptions too");
    broker.stop().await;
}
