//! Authorization end to end: the ACL decides, from the certificate identity alone, who may
//! publish and subscribe where, whose replies a client may read, where a request may ask for
//! its replies and which queue groups it may join; a denied request gets `NOT_AUTHORIZED` and
//! nothing leaks; a replaced ACL ends the live subscriptions it no longer allows.

use std::time::Duration;

use bytes::Bytes;
use cassini_broker::{Acl, BrokerConfig};
use cassini_client::{Client, ClientError, PublishOptions, Subscription, SubscriptionEnd};
use cassini_e2e::raw::{encoded, hello};
use cassini_e2e::{assert_delivers, eventually, within, TestBroker};
use cassini_protocol::{ErrorCode, Frame, Publish};
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

fn assert_not_authorized<T: std::fmt::Debug, E: Into<ClientError>>(
    result: Result<T, E>,
    what: &str,
) {
    match result.map_err(Into::into) {
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

    assert_delivers(&sensor, "sensors.t", b"still", &mut sensors, "delivery").await;
    assert_not_authorized(ops.subscribe("feeds.>").await, "new subscriptions too");
    broker.stop().await;
}

/// Gives a client builder a certificate from `broker`'s CA named only by a URI SAN (as SPIFFE
/// identities are), which the default identity rule takes as the identity.
trait UriIdentity {
    fn identity_from_uri(self, broker: &TestBroker, uri: &str) -> Self;
}

impl UriIdentity for cassini_client::ClientBuilder {
    fn identity_from_uri(self, broker: &TestBroker, uri: &str) -> Self {
        let (chain, key) = broker.pki.client_with_uri(uri);
        self.identity(chain, key)
    }
}

/// Answers every request on `svc.echo` with its payload, until the task is aborted.
async fn echo_service(service: &Client) -> tokio::task::JoinHandle<()> {
    let mut requests = service.serve("svc.echo").await.expect("serve");
    tokio::spawn(async move {
        while let Some(request) = requests.next().await {
            let payload = request.message().payload().clone();
            let _ = request.respond(payload).await;
        }
    })
}

/// The topics `subscription` receives up to and including `marker`, which must come.
async fn topics_until(subscription: &mut Subscription, marker: &str) -> Vec<String> {
    let mut topics = Vec::new();
    loop {
        let message = within("the marker", subscription.next())
            .await
            .expect("the subscription continues");
        topics.push(message.topic().to_owned());
        if message.topic() == marker {
            return topics;
        }
    }
}

#[tokio::test]
async fn a_client_cannot_read_another_identitys_replies() {
    // No ACL file: every identity may use every topic, but only its own inboxes.
    let broker = TestBroker::start().await;
    let service = broker.client("service").await;
    let server = echo_service(&service).await;
    let bob = broker.client("bob").await;
    assert_not_authorized(bob.subscribe("_INBOX.>").await, "all inboxes");
    assert_not_authorized(bob.subscribe("_INBOX.alice.>").await, "alice's inboxes");
    assert_not_authorized(
        bob.subscribe("_INBOX.*.>").await,
        "every identity's inboxes",
    );
    let mut everything = bob
        .subscribe(">")
        .await
        .expect("a leading wildcard is allowed");

    let alice = broker.client("alice").await;
    let reply = alice
        .request(
            "svc.echo",
            Bytes::from_static(b"secret"),
            Duration::from_secs(10),
        )
        .await
        .expect("alice gets her reply");
    assert_eq!(reply.payload().as_ref(), b"secret");
    assert!(
        reply.topic().starts_with("_INBOX.alice."),
        "the inbox names its identity: {}",
        reply.topic()
    );
    alice
        .publish_acked("marker", Bytes::new())
        .await
        .expect("marker");
    let seen = topics_until(&mut everything, "marker").await;
    assert_eq!(
        seen,
        ["svc.echo", "marker"],
        "bob's '>' sees the request but never the reply"
    );

    // An identity that is not one topic token (dots, a URI) still gets its replies: client and
    // broker encode it the same way.
    let spiffe = "spiffe://example.org/ns/a";
    let uri_client = Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity_from_uri(&broker, spiffe)
        .server_name("localhost")
        .connect()
        .await
        .expect("a client named by a URI SAN");
    assert_eq!(uri_client.identity(), spiffe);
    for (identity, client) in [
        (
            "alice.example.org",
            broker.client("alice.example.org").await,
        ),
        (spiffe, uri_client),
    ] {
        let reply = client
            .request(
                "svc.echo",
                Bytes::from_static(b"hi"),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|err| panic!("{identity} gets its reply: {err}"));
        assert_eq!(reply.payload().as_ref(), b"hi");
        assert_not_authorized(
            bob.subscribe(&format!(
                "{}.>",
                cassini_protocol::inbox::inbox_prefix(identity)
            ))
            .await,
            "another identity's encoded inbox",
        );
    }
    server.abort();
    broker.stop().await;
}

const REQUEST_ACL: &str = r#"
default = "deny"

[[rule]]
identity = "svc"
subscribe = ["svc.>"]
publish = ["svc.>", "_INBOX.>"]

[[rule]]
identity = "eve"
publish = ["eve.>", "svc.echo"]
subscribe = ["eve.>"]

[[rule]]
identity = "bob"
subscribe = ["svc.admin.>", "users.{identity}.>"]
publish = ["users.{identity}.>"]
"#;

#[tokio::test]
async fn an_acl_file_grants_own_inboxes_and_expands_identity() {
    let broker = broker_with(REQUEST_ACL).await;
    let service = broker.client("svc").await;
    let server = echo_service(&service).await;
    // eve has no rule for _INBOX, yet may read her own replies, and only hers.
    let eve = broker.client("eve").await;
    let reply = eve
        .request(
            "svc.echo",
            Bytes::from_static(b"ping"),
            Duration::from_secs(10),
        )
        .await
        .expect("eve's own inbox is granted");
    assert_eq!(reply.payload().as_ref(), b"ping");
    assert_not_authorized(eve.subscribe("_INBOX.>").await, "all inboxes");
    assert_not_authorized(eve.subscribe("_INBOX.bob.>").await, "bob's inboxes");

    let bob = broker.client("bob").await;
    let mut own = bob
        .subscribe("users.bob.>")
        .await
        .expect("{identity} is bob");
    assert_not_authorized(bob.subscribe("users.alice.>").await, "not alice's");
    bob.publish_acked("users.bob.note", Bytes::from_static(b"x"))
        .await
        .expect("publish under {identity}");
    assert_eq!(
        within("note", own.next()).await.expect("note").topic(),
        "users.bob.note"
    );
    assert_not_authorized(
        bob.publish_acked("users.alice.note", Bytes::new()).await,
        "not under alice",
    );
    server.abort();
    broker.stop().await;
}

#[tokio::test]
async fn a_request_may_ask_for_replies_only_where_its_publisher_may_read() {
    let broker = broker_with(REQUEST_ACL).await;
    let service = broker.client("svc").await;
    let mut requests = service.subscribe("svc.echo").await.expect("service");
    let bob = broker.client("bob").await;
    let mut admin = bob.subscribe("svc.admin.>").await.expect("bob");
    let eve = broker.client("eve").await;

    for reply_to in ["svc.admin.shutdown", "_INBOX.alice.0.1", "eve"] {
        assert_not_authorized(
            eve.publish_acked_with(
                "svc.echo",
                Bytes::from_static(b"shutdown"),
                PublishOptions::new().reply_to(reply_to),
            )
            .await,
            reply_to,
        );
    }
    // The same publish in a QUIC datagram is refused too (silently, as datagrams are).
    let (_endpoint, raw) = broker.raw_connection("eve").await;
    let (_welcome, _control_send, _control_recv) = hello(&raw, None).await.expect("welcome");
    for reply_to in ["svc.admin.shutdown", "eve.replies"] {
        let publish = Frame::Publish(Publish {
            topic: "svc.echo".into(),
            payload: Bytes::from(reply_to.as_bytes().to_vec()),
            reply_to: Some(reply_to.into()),
            ..Publish::default()
        });
        raw.send_datagram(encoded(&publish).freeze())
            .expect("datagram");
    }
    let first = within("the allowed datagram", requests.next())
        .await
        .expect("a request");
    assert_eq!(
        first.reply_to(),
        Some("eve.replies"),
        "the refused datagram never reached the service"
    );

    // An allowed request reaches the service, and its reply goes to eve's own inbox.
    let asked = eve
        .publish_acked_with(
            "svc.echo",
            Bytes::from_static(b"ok"),
            PublishOptions::new().reply_to("eve.replies"),
        )
        .await;
    assert!(asked.is_ok(), "{asked:?}");
    let request = within("the request", requests.next())
        .await
        .expect("request");
    assert_eq!(request.reply_to(), Some("eve.replies"));
    assert_eq!(request.payload().as_ref(), b"ok");

    service
        .publish_acked("svc.admin.marker", Bytes::new())
        .await
        .expect("marker");
    assert_eq!(
        topics_until(&mut admin, "svc.admin.marker").await,
        ["svc.admin.marker"],
        "nothing of eve's reached svc.admin"
    );
    broker.stop().await;
}

const QUEUE_ACL: &str = r#"
default = "deny"

[[rule]]
identity = "svc"
subscribe = ["orders.>"]
queue = ["workers"]

[[rule]]
identity = "bob"
subscribe = ["orders.>"]

[[rule]]
identity = "shop"
publish = ["orders.>"]
"#;

#[tokio::test]
async fn a_queue_group_named_in_the_acl_is_reserved_to_its_identities() {
    let broker = broker_with(QUEUE_ACL).await;
    let svc = broker.client("svc").await;
    let mut worker = svc
        .subscribe_queue("orders.>", "workers")
        .await
        .expect("svc joins");
    let bob = broker.client("bob").await;
    assert_not_authorized(
        bob.subscribe_queue("orders.>", "workers").await,
        "a group reserved for svc",
    );
    let _own_group = bob
        .subscribe_queue("orders.>", "bobs")
        .await
        .expect("a group no rule names");
    let _plain = bob.subscribe("orders.>").await.expect("plain subscribe");

    let shop = broker.client("shop").await;
    for i in 0..10u8 {
        shop.publish_acked("orders.new", Bytes::from(vec![i]))
            .await
            .expect("order");
    }
    for i in 0..10u8 {
        let order = within("order", worker.next()).await.expect("order");
        assert_eq!(order.payload().as_ref(), [i], "svc gets every order");
    }
    broker.stop().await;
}

#[tokio::test]
async fn a_reloaded_acl_ends_group_memberships_it_no_longer_allows() {
    // Without any queue key, groups are open to whoever may subscribe (as before).
    let open = QUEUE_ACL.replace("queue = [\"workers\"]\n", "");
    assert_ne!(open, QUEUE_ACL);
    let broker = broker_with(&open).await;
    let svc = broker.client("svc").await;
    let mut worker = svc
        .subscribe_queue("orders.>", "workers")
        .await
        .expect("svc");
    let bob = broker.client("bob").await;
    let mut intruder = bob
        .subscribe_queue("orders.>", "workers")
        .await
        .expect("an unreserved group");

    broker
        .broker
        .set_acl(Acl::parse(QUEUE_ACL, "reserving").expect("valid"));
    assert!(
        within("bob's membership ends", intruder.next())
            .await
            .is_none(),
        "the membership the new ACL refuses ends"
    );
    assert_eq!(
        intruder.end_reason(),
        Some(SubscriptionEnd::Reset(ErrorCode::NOT_AUTHORIZED))
    );
    let shop = broker.client("shop").await;
    for i in 0..4u8 {
        shop.publish_acked("orders.new", Bytes::from(vec![i]))
            .await
            .expect("order");
    }
    for i in 0..4u8 {
        let order = within("order", worker.next()).await.expect("order");
        assert_eq!(order.payload().as_ref(), [i], "svc keeps its membership");
    }
    broker.stop().await;
}
