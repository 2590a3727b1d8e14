//! The MQTT gateway against clients nobody here wrote: Debian's `mosquitto_pub` and
//! `mosquitto_sub` (package `mosquitto-clients`), with client certificates made in the test,
//! against a real broker whose QUIC side is a real `cassini-client`. Plus raw TCP for the
//! packets no well-behaved client sends.
//!
//! Without `mosquitto_pub` on `PATH` these tests print why and pass, except under CI (`CI=true`),
//! where a missing client fails them (`.ci/run` installs it).

use std::path::PathBuf;
use std::process::Output;

use bytes::Bytes;
use cassini_broker::config::StorageMode;
use cassini_broker::{Acl, BrokerConfig};
use cassini_e2e::gateway::{connect_v5, Gateway};
use cassini_e2e::{eventually, identity_of, within, Pki};
use cassini_mqtt::{MqttOptions, MqttServer};
use cassini_quic::tls;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

/// Whether the third-party clients are there; under CI their absence is a failure.
fn have_mosquitto() -> bool {
    let found = std::process::Command::new("mosquitto_pub")
        .arg("--help")
        .output()
        .is_ok();
    if !found {
        let ci = std::env::var("CI").is_ok_and(|value| value == "true" || value == "1");
        assert!(
            !ci,
            "CI=true and no mosquitto_pub: install it (apt-get install mosquitto-clients)"
        );
        eprintln!("skipped: no mosquitto_pub on PATH (apt-get install mosquitto-clients)");
    }
    found
}

/// A broker with the MQTT gateway, if the mosquitto clients are there (see `have_mosquitto`).
async fn gateway_for_mosquitto() -> Option<Gateway> {
    if !have_mosquitto() {
        return None;
    }
    Some(Gateway::start().await)
}

/// The connection and TLS arguments of a mosquitto client with a certificate for `name`
/// issued by `pki` (the broker's CA unless a test says otherwise).
fn tls_args_from(gateway: &Gateway, pki: &Pki, name: &str) -> Vec<String> {
    let (cert, key) = gateway.client_files_from(pki, name);
    let path = |p: PathBuf| p.to_string_lossy().into_owned();
    vec![
        "-h".into(),
        "localhost".into(),
        "-p".into(),
        gateway.addr.port().to_string(),
        "--cafile".into(),
        path(gateway.ca_file()),
        "--cert".into(),
        path(cert),
        "--key".into(),
        path(key),
    ]
}

/// The arguments of a mosquitto client with a certificate for `name` from the broker's CA.
fn tls_args(gateway: &Gateway, name: &str) -> Vec<String> {
    tls_args_from(gateway, &gateway.broker.pki, name)
}

fn command(program: &str, args: &[String], extra: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args).args(extra).kill_on_drop(true);
    command
}

async fn run(program: &str, args: &[String], extra: &[&str]) -> Output {
    within(
        &format!("{program} {extra:?}"),
        command(program, args, extra).output(),
    )
    .await
    .expect("client runs")
}

/// Runs `program` and asserts that it succeeded.
async fn run_ok(program: &str, args: &[String], extra: &[&str]) -> Output {
    let output = run(program, args, extra).await;
    assert!(output.status.success(), "{}", describe(&output));
    output
}

/// Asserts that the client said `text` on its standard error.
fn assert_reports(output: &Output, text: &str) {
    assert!(
        String::from_utf8_lossy(&output.stderr).contains(text),
        "{}",
        describe(output)
    );
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn mosquitto_pub_reaches_a_quic_subscriber_in_both_versions_and_qos() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let quic = gateway.broker.client("reader").await;
    let mut subscription = quic.subscribe("plant.>").await.expect("subscribe");
    let args = tls_args(&gateway, "device-1");
    for (version, qos) in [
        ("mqttv311", "0"),
        ("mqttv311", "1"),
        ("mqttv5", "0"),
        ("mqttv5", "1"),
    ] {
        let payload = format!("{version} qos {qos}");
        run_ok(
            "mosquitto_pub",
            &args,
            &[
                "-V",
                version,
                "-q",
                qos,
                "-t",
                "plant/line-2/temp",
                "-m",
                &payload,
            ],
        )
        .await;
        let message = within("the QUIC delivery", subscription.next())
            .await
            .expect("subscription open");
        assert_eq!(message.topic(), "plant.line-2.temp");
        assert_eq!(message.payload(), &Bytes::from(payload));
    }
}

#[tokio::test]
async fn a_quic_publish_reaches_mosquitto_sub_through_a_wildcard() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let args = tls_args(&gateway, "display");
    for version in ["mqttv311", "mqttv5"] {
        let sub = command(
            "mosquitto_sub",
            &args,
            &[
                "-V",
                version,
                "-q",
                "1",
                "-t",
                "plant/+/temp",
                "-v",
                "-C",
                "1",
                "-W",
                "20",
            ],
        )
        .output();
        let sub = tokio::spawn(sub);
        gateway.wait_subscribed("plant.*.temp").await;
        let protocol = if version == "mqttv5" {
            "mqtt/5"
        } else {
            "mqtt/3.1.1"
        };
        let connections = gateway.broker.broker.connections();
        assert!(
            connections
                .iter()
                .any(|c| c.identity == "display" && c.protocol == protocol),
            "{version}: /connz shows the protocol"
        );
        let quic = gateway.broker.client("sensor").await;
        quic.publish_acked("plant.line-1.temp", Bytes::from_static(b"21.5"))
            .await
            .expect("QUIC publish");
        let output = within("mosquitto_sub", sub)
            .await
            .expect("joined")
            .expect("ran");
        assert!(output.status.success(), "{}", describe(&output));
        assert_eq!(
            stdout(&output).trim(),
            "plant/line-1/temp 21.5",
            "{version}"
        );
        gateway.wait_unsubscribed("plant.*.temp").await;
    }
}

/// A mosquitto client that speaks TLS 1.2 at most: `--tls-version tlsv1.2` is only its
/// minimum, so OpenSSL's own configuration (`OPENSSL_CONF`, written into `dir`) caps it.
fn tls12_client(program: &str, dir: &std::path::Path, args: &[String], extra: &[&str]) -> Command {
    let conf = dir.join("openssl-tls12.cnf");
    std::fs::write(
        &conf,
        "openssl_conf = init\n[init]\nssl_conf = ssl\n[ssl]\nsystem_default = tls\n\
         [tls]\nMaxProtocol = TLSv1.2\n",
    )
    .expect("OpenSSL configuration");
    let mut command = command(program, args, extra);
    command.env("OPENSSL_CONF", conf);
    command
}

#[tokio::test]
async fn a_tls12_only_client_is_served_unless_mqtt_tls12_is_off() {
    if !have_mosquitto() {
        return;
    }
    let gateway = Gateway::start().await;
    let dir = gateway.dir.path().to_path_buf();
    let sub = tls12_client(
        "mosquitto_sub",
        &dir,
        &tls_args(&gateway, "old-device"),
        &["-t", "legacy/#", "-q", "1", "-v", "-C", "1", "-W", "20"],
    )
    .output();
    let sub = tokio::spawn(sub);
    gateway.wait_subscribed("legacy.>").await;
    let publish = ["-t", "legacy/t1", "-m", "tls 1.2", "-q", "1"];
    let output = within(
        "mosquitto_pub",
        tls12_client(
            "mosquitto_pub",
            &dir,
            &tls_args(&gateway, "old-sensor"),
            &publish,
        )
        .output(),
    )
    .await
    .expect("runs");
    assert!(output.status.success(), "{}", describe(&output));
    let output = within("mosquitto_sub", sub)
        .await
        .expect("joined")
        .expect("ran");
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(stdout(&output).trim(), "legacy/t1 tls 1.2");
    // The same verifier: a certificate from another CA is refused over TLS 1.2 too.
    let stranger = tls_args_from(&gateway, &Pki::new(), "stranger");
    let output = within(
        "mosquitto_pub",
        tls12_client("mosquitto_pub", &dir, &stranger, &publish).output(),
    )
    .await
    .expect("runs");
    assert!(!output.status.success(), "{}", describe(&output));

    // `mqtt.tls12 = false`: TLS 1.3 only, like the QUIC endpoint.
    let strict = Gateway::start_with_options(MqttOptions {
        tls12: false,
        ..MqttOptions::new("127.0.0.1:0".parse().expect("addr"))
    })
    .await;
    let output = within(
        "mosquitto_pub",
        tls12_client(
            "mosquitto_pub",
            &dir,
            &tls_args(&strict, "old-sensor"),
            &publish,
        )
        .output(),
    )
    .await
    .expect("runs");
    assert!(!output.status.success(), "{}", describe(&output));
    run_ok("mosquitto_pub", &tls_args(&strict, "new-sensor"), &publish).await;
}

#[tokio::test]
async fn mqtt_to_mqtt_with_both_wildcards_and_a_retained_value() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let publisher = tls_args(&gateway, "publisher");
    run_ok(
        "mosquitto_pub",
        &publisher,
        &["-q", "1", "-r", "-t", "home/kitchen/light", "-m", "on"],
    )
    .await;

    // A new subscriber gets the retained value first, with the retain flag (%r).
    let subscriber = tls_args(&gateway, "subscriber");
    let retained = run_ok(
        "mosquitto_sub",
        &subscriber,
        &[
            "-t",
            "home/+/light",
            "-F",
            "%r %t %p",
            "-C",
            "1",
            "-W",
            "20",
        ],
    )
    .await;
    assert_eq!(stdout(&retained).trim(), "1 home/kitchen/light on");

    let live = tokio::spawn(
        command(
            "mosquitto_sub",
            &subscriber,
            &[
                "-V", "mqttv5", "-q", "1", "-t", "home/#", "-F", "%r %t %p", "-C", "2", "-W", "20",
            ],
        )
        .output(),
    );
    gateway.wait_subscribed("home.>").await;
    run_ok(
        "mosquitto_pub",
        &publisher,
        &["-V", "mqttv5", "-t", "home/hall/door", "-m", "open"],
    )
    .await;
    let output = within("mosquitto_sub", live)
        .await
        .expect("joined")
        .expect("ran");
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(
        stdout(&output).lines().collect::<Vec<_>>(),
        ["1 home/kitchen/light on", "0 home/hall/door open"]
    );
}

#[tokio::test]
async fn a_qos1_subscription_outlives_its_connection_and_is_resumed_by_client_id() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let subscriber = tls_args(&gateway, "logger");
    // -c: clean session off, so the session outlives the connection.
    let first = tokio::spawn(
        command(
            "mosquitto_sub",
            &subscriber,
            &[
                "-c", "-i", "logger-1", "-q", "1", "-t", "audit/#", "-C", "1", "-W", "20",
            ],
        )
        .output(),
    );
    gateway.wait_subscribed("audit.>").await;
    let quic = gateway.broker.client("auditor").await;
    quic.publish_acked("audit.login", Bytes::from_static(b"one"))
        .await
        .expect("publish");
    let output = within("first mosquitto_sub", first)
        .await
        .expect("joined")
        .expect("ran");
    assert_eq!(stdout(&output).trim(), "one", "{}", describe(&output));
    eventually("the session detached", || async {
        (gateway.broker.broker.connection_count() == 1).then_some(())
    })
    .await;

    // While nobody is connected, the session's subscription keeps queueing.
    quic.publish_acked("audit.logout", Bytes::from_static(b"two"))
        .await
        .expect("publish");
    let output = run(
        "mosquitto_sub",
        &subscriber,
        &[
            "-c", "-i", "logger-1", "-q", "1", "-t", "audit/#", "-C", "1", "-W", "20",
        ],
    )
    .await;
    assert_eq!(stdout(&output).trim(), "two", "{}", describe(&output));
}

fn durable(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.storage.mode = StorageMode::Disk;
    config.storage.data_dir = dir.to_path_buf();
    config
}

#[tokio::test]
async fn a_qos1_message_acknowledged_to_mosquitto_pub_survives_a_disk_mode_restart() {
    if !have_mosquitto() {
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let gateway = Gateway::start_with(durable(data.path()), false).await;
    let subscriber = tls_args(&gateway, "archiver");
    // The subscriber's session (clean session off) holds a QoS 1 subscription, then leaves.
    run_ok(
        "mosquitto_sub",
        &subscriber,
        &["-c", "-i", "archiver-1", "-q", "1", "-t", "ledger/#", "-E"],
    )
    .await;
    eventually("the session detached", || async {
        (gateway.broker.broker.connection_count() == 0).then_some(())
    })
    .await;
    // mosquitto_pub gets its PUBACK only once the broker synced the message to disk.
    run_ok(
        "mosquitto_pub",
        &tls_args(&gateway, "teller"),
        &["-q", "1", "-t", "ledger/entry", "-m", "credit 100"],
    )
    .await;

    let gateway = gateway.restart_with(durable(data.path())).await;
    let output = run(
        "mosquitto_sub",
        &tls_args(&gateway, "archiver"),
        &[
            "-c",
            "-i",
            "archiver-1",
            "-q",
            "1",
            "-t",
            "ledger/#",
            "-C",
            "1",
            "-W",
            "20",
            "-v",
        ],
    )
    .await;
    assert_eq!(
        stdout(&output).trim(),
        "ledger/entry credit 100",
        "{}",
        describe(&output)
    );
}

/// The number of sessions the broker holds, attached or not.
async fn session_count(gateway: &Gateway) -> usize {
    gateway.broker.broker.stats().await.expect("stats").sessions
}

#[tokio::test]
async fn an_mqtt5_session_expiry_interval_holds_across_a_disk_mode_restart() {
    if !have_mosquitto() {
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let gateway = Gateway::start_with(durable(data.path()), false).await;
    // A session of 6 s (sessions.expiry is 300 s) with a QoS 1 subscription, then detached.
    run_ok(
        "mosquitto_sub",
        &tls_args(&gateway, "sleeper"),
        &[
            "-V",
            "mqttv5",
            "-c",
            "-x",
            "6",
            "-i",
            "sleeper-1",
            "-q",
            "1",
            "-t",
            "naps/#",
            "-E",
        ],
    )
    .await;
    eventually("the session detached", || async {
        (gateway.broker.broker.connection_count() == 0).then_some(())
    })
    .await;
    let detached = std::time::Instant::now();

    let gateway = gateway.restart_with(durable(data.path())).await;
    assert_eq!(
        session_count(&gateway).await,
        1,
        "the stored session is back after the restart"
    );
    // It ends 6 s after it detached, not after sessions.expiry.
    eventually("the session expired", || async {
        (session_count(&gateway).await == 0).then_some(())
    })
    .await;
    assert!(detached.elapsed() >= std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_will_is_published_when_its_client_vanishes() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("status.>").await.expect("subscribe");
    let mut doomed = command(
        "mosquitto_sub",
        &tls_args(&gateway, "doomed"),
        &[
            "-t",
            "nothing/here",
            "--will-topic",
            "status/doomed",
            "--will-payload",
            "gone",
            "-W",
            "30",
        ],
    )
    .spawn()
    .expect("mosquitto_sub starts");
    gateway.wait_subscribed("nothing.here").await;
    doomed.kill().await.expect("killed");
    let will = within("the will", wills.next()).await.expect("open");
    assert_eq!(will.topic(), "status.doomed");
    assert_eq!(will.payload(), &Bytes::from_static(b"gone"));
}

const ACL: &str = r#"
default = "deny"

[[rule]]
identity = "trusted"
publish = ["vault.>"]
subscribe = ["vault.>"]

[[rule]]
identity = "intruder"
publish = ["lobby.>"]
subscribe = ["lobby.>"]
"#;

#[tokio::test]
async fn the_acl_refuses_mqtt_publishes_and_subscriptions_with_the_reason() {
    if !have_mosquitto() {
        return;
    }
    let config = BrokerConfig {
        acl: Acl::parse(ACL, "test ACL").expect("valid ACL"),
        ..BrokerConfig::default()
    };
    let gateway = Gateway::start_with(config, false).await;
    let trusted = gateway.broker.client("trusted").await;
    let mut vault = trusted.subscribe("vault.>").await.expect("subscribe");
    let intruder = tls_args(&gateway, "intruder");

    // MQTT 5: the SUBACK says 0x87 Not authorized; mosquitto_sub reports it and gives up.
    let output = run(
        "mosquitto_sub",
        &intruder,
        &["-V", "mqttv5", "-t", "vault/#", "-C", "1", "-W", "5"],
    )
    .await;
    assert_reports(&output, "denied");

    // MQTT 5 QoS 1: the PUBACK says 0x87, which mosquitto_pub reports.
    let output = run(
        "mosquitto_pub",
        &intruder,
        &["-V", "mqttv5", "-q", "1", "-t", "vault/gold", "-m", "mine"],
    )
    .await;
    assert_reports(&output, "Not authorized");
    // 3.1.1 cannot say why; the publish is dropped all the same.
    run_ok(
        "mosquitto_pub",
        &intruder,
        &["-q", "1", "-t", "vault/silver", "-m", "mine"],
    )
    .await;

    trusted
        .publish_acked("vault.marker", Bytes::from_static(b"end"))
        .await
        .expect("publish");
    let first = within("the vault", vault.next()).await.expect("open");
    assert_eq!(
        first.topic(),
        "vault.marker",
        "a refused publish was routed"
    );
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let stranger = Pki::new();
    let output = run(
        "mosquitto_pub",
        &tls_args_from(&gateway, &stranger, "stranger"),
        &["-t", "any/topic", "-m", "x"],
    )
    .await;
    assert!(!output.status.success(), "{}", describe(&output));
    assert!(
        gateway
            .mqtt
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
}

/// A refused MQTT TLS handshake is an `authentication_failed` system event, as a refused QUIC
/// handshake is (docs/EVENTS.md).
#[tokio::test]
async fn a_refused_tls_handshake_is_an_authentication_failed_event() {
    let config = BrokerConfig {
        acl: Acl::parse(
            "default = \"allow\"\n[[rule]]\nidentity = \"ops\"\nsubscribe = [\"$SYS.>\"]\n",
            "test ACL",
        )
        .expect("valid ACL"),
        ..BrokerConfig::default()
    };
    let gateway = Gateway::start_with(config, false).await;
    let ops = gateway.broker.client("ops").await;
    let mut events = ops
        .subscribe("$SYS.event.authentication_failed")
        .await
        .expect("ops may read");
    // Plain MQTT where only TLS is accepted: the handshake fails.
    let mut stream = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    stream.write_all(&connect_v5("plain")).await.expect("write");
    let _ = within("the gateway closes it", stream.read_to_end(&mut Vec::new())).await;
    let message = within("an authentication_failed event", events.next())
        .await
        .expect("the events subscription is open");
    let event: serde_json::Value = serde_json::from_slice(message.payload()).expect("a JSON event");
    assert_eq!(event["failure"], "tls", "{event}");
    assert!(
        event["remote"]
            .as_str()
            .is_some_and(|remote| remote.starts_with("127.0.0.1:")),
        "{event}"
    );
}

/// Reads until the server closes the connection; returns what it sent.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    within(
        "the server closes the connection",
        stream.read_to_end(&mut all),
    )
    .await
    .expect("read");
    all
}

#[tokio::test]
async fn malformed_packets_close_only_their_own_connection() {
    if !have_mosquitto() {
        return;
    }
    let gateway = Gateway::start_with(BrokerConfig::default(), true).await;
    let quic = gateway.broker.client("reader").await;
    let mut subscription = quic.subscribe("ok.>").await.expect("subscribe");
    let cases: [(&str, &[u8]); 4] = [
        // SUBSCRIBE must have flags 0010.
        ("reserved flags", &[0x80, 0x06, 0, 1, 0, 1, b'a', 0]),
        // A remaining length whose fifth byte still has the continuation bit.
        (
            "bad remaining length",
            &[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
        ),
        // PUBLISH to a topic that is not UTF-8.
        ("bad UTF-8 topic", &[0x30, 0x05, 0, 2, 0xC3, 0x28, 0]),
        // Declares 200 MB, far over limits.max_frame_bytes.
        (
            "oversized remaining length",
            &[0x30, 0x80, 0x80, 0x80, 0x60],
        ),
    ];
    for (what, bytes) in cases {
        let mut raw = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connect");
        raw.write_all(&connect_v5(&format!("raw-{}", what.len())))
            .await
            .expect("CONNECT");
        let mut header = [0u8; 2];
        within("CONNACK", raw.read_exact(&mut header))
            .await
            .expect("CONNACK");
        assert_eq!(header[0], 0x20, "{what}: CONNACK");
        let mut connack = vec![0u8; usize::from(header[1])];
        within("CONNACK", raw.read_exact(&mut connack))
            .await
            .expect("CONNACK");
        assert_eq!(connack.get(1), Some(&0), "{what}: CONNACK accepted");
        raw.write_all(bytes).await.expect("bad packet");
        let rest = read_to_close(&mut raw).await;
        // MQTT 5 says why: DISCONNECT (0xE0) with 0x81 Malformed or 0x95 Packet too large.
        let expected = match what {
            "oversized remaining length" => 0x95,
            _ => 0x81,
        };
        assert_eq!(
            rest.first(),
            Some(&0xE0),
            "{what}: DISCONNECT, got {rest:?}"
        );
        assert_eq!(
            rest.get(2),
            Some(&expected),
            "{what}: reason code, got {rest:?}"
        );
    }
    // The gateway still serves everyone else.
    run_ok(
        "mosquitto_pub",
        &tls_args(&gateway, "healthy"),
        &["-t", "ok/still", "-m", "fine"],
    )
    .await;
    let message = within("delivery", subscription.next()).await.expect("open");
    assert_eq!(message.topic(), "ok.still");
}

#[tokio::test]
async fn plain_tcp_needs_the_loopback_switch() {
    let gateway = Gateway::start().await;
    let mut raw = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    raw.write_all(&connect_v5("plain")).await.expect("CONNECT");
    let rest = read_to_close(&mut raw).await;
    assert!(
        !rest.starts_with(&[0x20]),
        "a TLS-only gateway answered plaintext with a CONNACK: {rest:?}"
    );

    let crypto = {
        let pki = Pki::new();
        let (chain, key) = identity_of(&pki.server);
        tls::ServerTls::build(
            pki.ca_certs(),
            chain,
            key,
            Vec::new(),
            tls::RevocationOptions::default(),
        )
        .expect("TLS")
    };
    let options = MqttOptions {
        allow_plaintext_loopback: true,
        ..MqttOptions::new("0.0.0.0:0".parse().expect("addr"))
    };
    assert!(
        MqttServer::bind(options, &crypto).await.is_err(),
        "plaintext on a non-loopback address must be refused"
    );
}

#[tokio::test]
async fn an_mqtt5_session_expiry_interval_shorter_than_the_brokers_ends_the_session_after_it() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let subscriber = tls_args(&gateway, "brief");
    // MQTT 5, clean start off, a Session Expiry Interval of 1 s (the broker keeps 300 s).
    run_ok(
        "mosquitto_sub",
        &subscriber,
        &[
            "-V", "mqttv5", "-c", "-i", "brief-1", "-x", "1", "-q", "1", "-t", "brief/#", "-E",
        ],
    )
    .await;
    gateway
        .broker
        .wait_for_stats("the session expired after 1 s", |stats| stats.sessions == 0)
        .await;
    assert!(gateway.broker.broker.subscriptions().is_empty());
}

/// The `mosquitto_sub` arguments of an MQTT 5 client `id` of `status/` whose session outlives
/// it, with a will on `status/ID` and `extra` arguments.
fn will_holder(id: &str, will_delay: &str) -> Vec<String> {
    [
        "-V",
        "mqttv5",
        "-c",
        "-i",
        id,
        "-x",
        "300",
        "-t",
        &format!("{id}/inbox"),
        "--will-topic",
        &format!("status/{id}"),
        "--will-payload",
        "gone",
        "-D",
        "will",
        "will-delay-interval",
        will_delay,
        "-W",
        "30",
    ]
    .map(String::from)
    .to_vec()
}

/// Connects MQTT 5 client `id` (certificate `id`) without a clean start, so it resumes its
/// session, subscribes to `{id}/inbox` and leaves.
async fn resume_session(gateway: &Gateway, id: &str) {
    let inbox = format!("{id}/inbox");
    run_ok(
        "mosquitto_sub",
        &tls_args(gateway, id),
        &[
            "-V", "mqttv5", "-c", "-i", id, "-x", "300", "-t", &inbox, "-E",
        ],
    )
    .await;
}

/// Starts `mosquitto_sub` with `args` and waits until it subscribed to `{id}/inbox`.
async fn hold_session(
    gateway: &Gateway,
    name: &str,
    id: &str,
    args: &[String],
) -> tokio::process::Child {
    let extra: Vec<&str> = args.iter().map(String::as_str).collect();
    let child = command("mosquitto_sub", &tls_args(gateway, name), &extra)
        .spawn()
        .expect("mosquitto_sub starts");
    gateway.wait_subscribed(&format!("{id}.inbox")).await;
    child
}

#[tokio::test]
async fn a_will_waits_for_its_delay_and_a_reconnection_within_it_cancels_it() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let stats = gateway.mqtt.stats();
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("status.>").await.expect("subscribe");
    let counter =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);

    // A will delay of 60 s: the connection vanishes, the will waits.
    let mut lazarus = hold_session(
        &gateway,
        "lazarus",
        "lazarus",
        &will_holder("lazarus", "60"),
    )
    .await;
    lazarus.kill().await.expect("killed");
    eventually("the will waits for its delay", || async {
        (counter(&stats.wills_waiting) == 1).then_some(())
    })
    .await;
    // The client is back within the delay: its will is never published.
    resume_session(&gateway, "lazarus").await;
    eventually("the will cancelled", || async {
        (counter(&stats.wills_cancelled) == 1 && counter(&stats.wills_waiting) == 0).then_some(())
    })
    .await;

    // A will delay of 1 s and nobody back: published once the delay passed.
    let mut mortal = hold_session(&gateway, "mortal", "mortal", &will_holder("mortal", "1")).await;
    let vanished = std::time::Instant::now();
    mortal.kill().await.expect("killed");
    let will = within("the delayed will", wills.next())
        .await
        .expect("open");
    assert!(vanished.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(will.topic(), "status.mortal");
    eventually("one will published, the other cancelled", || async {
        (counter(&stats.wills_published) == 1 && counter(&stats.wills_cancelled) == 1).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_will_without_delay_is_published_when_its_session_is_taken_over() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("status.>").await.expect("subscribe");
    let _first = hold_session(&gateway, "twin", "twin", &will_holder("twin", "0")).await;
    // The same client id again: it takes the session over, and the first connection's will is
    // published as its connection closes (MQTT 5 §3.1.4).
    resume_session(&gateway, "twin").await;
    let will = within("the will of the connection taken over", wills.next())
        .await
        .expect("open");
    assert_eq!(will.topic(), "status.twin");
    assert_eq!(will.payload(), &Bytes::from_static(b"gone"));
}

#[tokio::test]
async fn an_identity_keeps_no_more_wills_waiting_than_it_may_have_sessions() {
    if !have_mosquitto() {
        return;
    }
    let mut config = BrokerConfig::default();
    config.limits.max_sessions_per_identity = 2;
    let gateway = Gateway::start_with(config, false).await;
    let stats = gateway.mqtt.stats();
    let counter =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("status.>").await.expect("subscribe");
    // Three client ids of one identity, each gone with a will waiting 60 s: the broker keeps two
    // of its sessions, so the first session has ended and its will is published at once.
    for (waiting, id) in ["d1", "d2", "d3"].into_iter().enumerate() {
        let mut device = hold_session(&gateway, "fleet", id, &will_holder(id, "60")).await;
        device.kill().await.expect("killed");
        eventually("the will is counted", || async {
            (counter(&stats.wills_waiting) as usize == (waiting + 1).min(2)).then_some(())
        })
        .await;
    }
    let will = within("the oldest will", wills.next()).await.expect("open");
    assert_eq!(will.topic(), "status.d1");
    assert_eq!(counter(&stats.wills_waiting), 2);
}

#[tokio::test]
async fn no_will_of_a_revoked_certificate_is_published() {
    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let stats = gateway.mqtt.stats();
    let counter =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    let issue = |name: &str| {
        let cert = gateway.broker.pki.client(name);
        let (cert_file, key_file) = cassini_quic::certs::client_paths(gateway.dir.path(), name);
        cert.write(&cert_file, &key_file).expect("client files");
        cert
    };
    let (mallory, eve) = (issue("mallory"), issue("eve"));
    // Mallory stays connected, with a will due at once; eve is gone, her will waiting 2 s.
    let mut live = hold_session(&gateway, "mallory", "mallory", &will_holder("mallory", "0")).await;
    let mut gone = hold_session(&gateway, "eve", "eve", &will_holder("eve", "2")).await;
    gone.kill().await.expect("killed");
    eventually("eve's will waits for its delay", || async {
        (counter(&stats.wills_waiting) == 1).then_some(())
    })
    .await;

    // A CRL naming both: mallory is cut off, and neither will is ever published.
    let crl = gateway
        .broker
        .pki
        .ca
        .revocation_list(&[&mallory, &eve], 1)
        .expect("CRL");
    let tls = gateway.broker.server_tls(
        &gateway.broker.pki.server,
        vec![crl],
        tls::RevocationOptions::default(),
    );
    gateway.broker.reload(&tls);
    assert_eq!(gateway.mqtt.reload(&tls), 1, "mallory's connection cut off");
    eventually("both wills refused", || async {
        (counter(&stats.wills_refused) == 2).then_some(())
    })
    .await;
    assert_eq!(counter(&stats.wills_published), 0);
    let _ = live.kill().await;
}

/// The `mosquitto_sub` arguments of an MQTT 5 client `id` whose session outlives it (300 s),
/// with a retained will on `status/ID` delayed by `will_delay` seconds: retained, so a watcher
/// that subscribes after a restart still sees it.
fn retained_will_holder(id: &str, will_delay: &str) -> Vec<String> {
    let mut args = will_holder(id, will_delay);
    args.push("--will-retain".into());
    args
}

/// A QUIC watcher of `status.>` on `gateway`'s broker, and the first will it sees.
async fn first_will(gateway: &Gateway) -> cassini_client::Message {
    let quic = gateway.broker.client("watcher").await;
    let mut wills = quic.subscribe("status.>").await.expect("subscribe");
    within("a will", wills.next()).await.expect("open")
}

#[tokio::test]
async fn a_will_waiting_for_its_delay_is_published_after_a_disk_mode_restart_unless_resumed() {
    if !have_mosquitto() {
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let gateway = Gateway::start_with(durable(data.path()), false).await;
    let stats = gateway.mqtt.stats();
    let waiting = || {
        stats
            .wills_waiting
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    // Two clients vanish with a will delay of 4 s; the broker restarts within it.
    let mut phoenix = hold_session(
        &gateway,
        "phoenix",
        "phoenix",
        &retained_will_holder("phoenix", "4"),
    )
    .await;
    let mut lazarus = hold_session(
        &gateway,
        "lazarus",
        "lazarus",
        &retained_will_holder("lazarus", "4"),
    )
    .await;
    phoenix.kill().await.expect("killed");
    lazarus.kill().await.expect("killed");
    let vanished = std::time::Instant::now();
    eventually("both wills wait for their delay", || async {
        (waiting() == 2).then_some(())
    })
    .await;

    let gateway = gateway.restart_with(durable(data.path())).await;
    let stats = gateway.mqtt.stats();
    // lazarus is back within the delay, across the restart: its will is cancelled.
    resume_session(&gateway, "lazarus").await;
    // phoenix's will is published once its delay passed, the downtime counted.
    let will = first_will(&gateway).await;
    assert_eq!(will.topic(), "status.phoenix");
    assert_eq!(will.payload(), &Bytes::from_static(b"gone"));
    assert!(vanished.elapsed() >= std::time::Duration::from_millis(3500));
    let counter =
        |counter: &std::sync::atomic::AtomicU64| counter.load(std::sync::atomic::Ordering::Relaxed);
    eventually("one will published, the other cancelled", || async {
        (counter(&stats.wills_published) == 1
            && counter(&stats.wills_cancelled) == 1
            && counter(&stats.wills_waiting) == 0)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_will_of_a_connection_open_when_the_broker_stops_is_published_after_the_restart() {
    if !have_mosquitto() {
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let gateway = Gateway::start_with(durable(data.path()), false).await;
    // A 3.1.1 client whose session outlives it (clean session off), connected when the broker
    // stops under it.
    let _sentinel = hold_session(
        &gateway,
        "sentinel",
        "sentinel",
        &[
            "-c",
            "-i",
            "sentinel",
            "-q",
            "1",
            "-t",
            "sentinel/inbox",
            "--will-topic",
            "status/sentinel",
            "--will-payload",
            "gone",
            "--will-retain",
            "-W",
            "30",
        ]
        .map(String::from),
    )
    .await;

    let gateway = gateway.restart_broker_first(durable(data.path())).await;
    let will = first_will(&gateway).await;
    assert_eq!(will.topic(), "status.sentinel");
    assert_eq!(will.payload(), &Bytes::from_static(b"gone"));
}

#[tokio::test]
async fn mqtt5_subscription_options_hold_across_a_disk_mode_restart() {
    if !have_mosquitto() {
        return;
    }
    let data = tempfile::tempdir().expect("data dir");
    let gateway = Gateway::start_with(durable(data.path()), false).await;
    let session = |gateway: &Gateway| {
        let mut args = tls_args(gateway, "keeper");
        args.extend(
            ["-V", "mqttv5", "-c", "-x", "300", "-i", "keeper", "-q", "1"].map(String::from),
        );
        args
    };
    // A QoS 1 subscription with a Subscription Identifier and Retain As Published, then the
    // session is left.
    run_ok(
        "mosquitto_sub",
        &session(&gateway),
        &[
            "-t",
            "notes/#",
            "--retain-as-published",
            "-D",
            "subscribe",
            "subscription-identifier",
            "42",
            "-E",
        ],
    )
    .await;
    eventually("the session detached", || async {
        (gateway.broker.broker.connection_count() == 0).then_some(())
    })
    .await;

    let gateway = gateway.restart_with(durable(data.path())).await;
    run_ok(
        "mosquitto_pub",
        &tls_args(&gateway, "scribe"),
        &["-q", "1", "-r", "-t", "notes/a", "-m", "kept"],
    )
    .await;
    // The resumed session (subscribing to something else, so as not to replace it) gets the
    // queued message with its options: retained as published, and identifier 42.
    let output = run(
        "mosquitto_sub",
        &session(&gateway),
        &[
            "-t",
            "keeper/none",
            "-C",
            "1",
            "-W",
            "20",
            "-F",
            "%r %S %t %p",
        ],
    )
    .await;
    assert_eq!(
        stdout(&output).trim(),
        "1 42 notes/a kept",
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn an_mqtt_connection_is_cut_off_when_its_certificate_expires() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    let Some(gateway) = gateway_for_mosquitto().await else {
        return;
    };
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::seconds(3);
    let (cert, key) = cassini_quic::certs::client_paths(gateway.dir.path(), "brief");
    gateway
        .broker
        .pki
        .client_with(
            "brief",
            cassini_quic::certs::Validity {
                not_before: now - time::Duration::days(1),
                not_after,
            },
        )
        .write(&cert, &key)
        .expect("a certificate valid for three seconds");
    let stats = gateway.mqtt.stats();
    let _subscriber = command(
        "mosquitto_sub",
        &tls_args(&gateway, "brief"),
        &["-V", "5", "-i", "brief", "-t", "brief/#"],
    )
    .spawn()
    .expect("mosquitto_sub starts");
    eventually("the client connected", || async {
        (stats.open.load(Ordering::Relaxed) == 1).then_some(())
    })
    .await;
    eventually("the connection cut off at expiry", || async {
        (stats.open.load(Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    // X.509 times are whole seconds: the certificate is valid through that second.
    let expired_at = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(not_after.unix_timestamp()).expect("after 1970") + 1);
    assert!(
        SystemTime::now() >= expired_at,
        "cut off before the certificate expired"
    );
}
