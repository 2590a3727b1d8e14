//! Security of the real `cassini serve` process: memory under declared-huge frames, hot reload
//! of the ACL file and of the certificate directory (file watcher and SIGHUP), and the `cassini
//! certs revoke` and `rotate-server` commands taking effect on a running broker.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::path::Path;

use bytes::{BufMut, BytesMut};
use cassini_client::SubscriptionEnd;
use cassini_e2e::raw::{self, close_of, server_cert_of};
use cassini_e2e::{assert_delivers, within};
use cassini_protocol::ErrorCode;
use cassini_quic::tls;
use futures_util::StreamExt;
use harness::clients::{client, raw_client};
use harness::{certs, init_certs, Broker};

/// 100 connections, each declaring one 256 MiB frame.
const FLOOD_CONNECTIONS: usize = 100;
const DECLARED_FRAME: u32 = 256 * 1024 * 1024;
/// The issue's bound on the broker's growth for those 100 connections.
const FLOOD_GROWTH_BOUND: u64 = 25 * 1024 * 1024;

/// Whether a client named `name` gets through to a `Welcome`.
async fn admitted(addr: &str, dir: &Path, name: &str) -> bool {
    match raw_client(addr, dir, name).await {
        Ok((_endpoint, connection)) => raw::hello(&connection, None).await.is_some(),
        Err(_) => false,
    }
}

#[tokio::test]
async fn a_hundred_connections_declaring_256_mib_frames_barely_move_broker_memory() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["flooder", "bystander"]);
    let broker = Broker::with_certs(dir.path(), &[]);
    let bystander = client(&broker.server(), dir.path(), "bystander").await;
    let mut subscription = bystander.subscribe("calm.x").await.expect("subscribe");
    let before = broker.rss_bytes();

    let mut floods = Vec::new();
    for _ in 0..FLOOD_CONNECTIONS {
        let addr = broker.server();
        let dir = dir.path().to_owned();
        floods.push(tokio::spawn(async move {
            let (endpoint, connection) = raw_client(&addr, &dir, "flooder").await.expect("connect");
            let _control = raw::hello(&connection, None).await.expect("welcome");
            let (mut send, _recv) = connection.open_bi().await.expect("publish stream");
            let mut declaration = BytesMut::new();
            declaration.put_u32(DECLARED_FRAME);
            declaration.put_bytes(0x42, 64 * 1024);
            // The broker may close the connection before all of it is written.
            let _ = send.write_all(&declaration).await;
            let (code, _) = close_of(&connection).await;
            drop(endpoint);
            code
        }));
    }
    for flood in floods {
        let code = within("flood connection", flood).await.expect("task");
        assert_eq!(code, ErrorCode::FRAME_TOO_LARGE);
    }
    broker.assert_peak_growth_below(
        before,
        FLOOD_GROWTH_BOUND,
        &format!("{FLOOD_CONNECTIONS} x 256 MiB declared"),
    );

    assert_delivers(
        &bystander,
        "calm.x",
        b"still here",
        &mut subscription,
        "bystander delivery",
    )
    .await;
}

/// Sessions eve creates and abandons, each with one subscription.
const ABANDONED_SESSIONS: usize = 1_000;
/// The quota the broker runs with in that test.
const SESSIONS_PER_IDENTITY: usize = 50;
/// The stated bound on the broker's growth while eve abandons her sessions: 50 kept sessions
/// (tens of KiB each with their subscription) plus the churn of 1,000 QUIC connections and
/// allocator slack (8 MiB measured). Without the quota the broker keeps every session for the
/// expiry, about 30 KiB each (44 MiB growth measured for 1,500).
const SESSIONS_GROWTH_BOUND: u64 = 16 * 1024 * 1024;

/// Opens a session as `name` with one subscription, then drops the connection without a
/// goodbye, so the session stays detached.
async fn abandon_session(addr: &str, dir: &Path, name: &str) {
    use cassini_e2e::raw::read_frame;
    use cassini_protocol::Frame;
    let (endpoint, connection) = raw_client(addr, dir, name).await.expect("connect");
    let (_welcome, mut send, mut recv) = raw::hello(&connection, None).await.expect("welcome");
    cassini_e2e::raw::send_subscribe(&mut send, 1, "eve.abandoned.>").await;
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Subscribed(_)) => {}
        other => panic!("expected Subscribed, got {other:?}"),
    }
    cassini_e2e::raw::vanish(&endpoint, &connection).await;
}

#[tokio::test]
async fn abandoned_sessions_of_one_identity_stay_within_its_session_quota() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["eve", "alice"]);
    let config = dir.path().join("cassini.toml");
    std::fs::write(
        &config,
        format!("[limits]\nmax_sessions_per_identity = {SESSIONS_PER_IDENTITY}\n"),
    )
    .expect("config");
    let config = config.to_str().expect("utf-8 path").to_owned();
    let broker = Broker::with_certs(dir.path(), &["--config", &config]);
    let alice = client(&broker.server(), dir.path(), "alice").await;
    let mut subscription = alice.subscribe("calm.x").await.expect("subscribe");
    // Warm up: the first quota's worth of sessions, so the measurement sees only what the
    // quota lets eve add after it.
    for _ in 0..SESSIONS_PER_IDENTITY {
        abandon_session(&broker.server(), dir.path(), "eve").await;
    }
    let before = broker.rss_bytes();
    for _ in 0..ABANDONED_SESSIONS {
        abandon_session(&broker.server(), dir.path(), "eve").await;
    }
    broker.assert_peak_growth_below(
        before,
        SESSIONS_GROWTH_BOUND,
        &format!("{ABANDONED_SESSIONS} abandoned sessions"),
    );
    assert_delivers(
        &alice,
        "calm.x",
        b"still here",
        &mut subscription,
        "alice's delivery",
    )
    .await;
}

const ACL: &str = r#"
default = "deny"

[[rule]]
identity = "publisher"
publish = [">"]

[[rule]]
identity = "ops"
subscribe = ["feeds.>", "sensors.>"]
"#;

#[tokio::test]
async fn editing_the_acl_file_ends_a_live_subscription_it_no_longer_allows() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["publisher", "ops"]);
    let acl_path = dir.path().join("acl.toml");
    std::fs::write(&acl_path, ACL).expect("write ACL");
    let broker = Broker::with_certs(dir.path(), &["--acl", acl_path.to_str().expect("utf-8")]);

    let ops = client(&broker.server(), dir.path(), "ops").await;
    let mut feeds = ops.subscribe("feeds.>").await.expect("feeds");
    let mut sensors = ops.subscribe("sensors.>").await.expect("sensors");
    let publisher = client(&broker.server(), dir.path(), "publisher").await;

    // Edited in place, as an operator's editor would.
    std::fs::write(
        &acl_path,
        ACL.replace(r#"["feeds.>", "sensors.>"]"#, r#"["sensors.>"]"#),
    )
    .expect("edit ACL");
    assert!(
        within("feeds ends", feeds.next()).await.is_none(),
        "the subscription the ACL no longer allows ends"
    );
    assert_eq!(
        feeds.end_reason(),
        Some(SubscriptionEnd::Reset(ErrorCode::NOT_AUTHORIZED))
    );
    assert_delivers(
        &publisher,
        "sensors.t",
        b"allowed",
        &mut sensors,
        "sensors delivery",
    )
    .await;

    // An invalid edit is refused with its line, and the broker keeps the previous ACL.
    broker.wait_for_log("reloaded the ACL");
    let reloads = broker.log_count("reloaded the ACL");
    std::fs::write(
        &acl_path,
        "default = \"deny\"\n[[rule]]\nidentity = \"ops\"\nsubscribe = [\"a.>.b\"]\n",
    )
    .expect("bad ACL");
    broker.wait_for_log("line 4");
    assert_eq!(broker.log_count("reloaded the ACL"), reloads);
    assert_delivers(
        &publisher,
        "sensors.t",
        b"still",
        &mut sensors,
        "sensors delivery",
    )
    .await;
}

#[tokio::test]
async fn certs_revoke_and_rotate_server_take_effect_on_a_running_broker() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["alice", "bob"]);
    let broker = Broker::with_certs(dir.path(), &[]);
    assert_eq!(
        broker.log_count("no ACL: every authenticated client may"),
        1,
        "running without an ACL is said once, at start"
    );
    let (_alice_endpoint, alice) = raw_client(&broker.server(), dir.path(), "alice")
        .await
        .expect("alice");
    let (alice_welcome, _send, _recv) = raw::hello(&alice, None).await.expect("alice welcomed");
    let bob = client(&broker.server(), dir.path(), "bob").await;
    let mut bob_subscription = bob.subscribe("bob.x").await.expect("subscribe");

    let revoked = certs(dir.path(), &["revoke", "alice"]);
    assert!(String::from_utf8_lossy(&revoked.stdout).contains("revoked client-alice.crt"));
    assert!(dir.path().join("crl.pem").exists());
    let (code, reason) = close_of(&alice).await;
    assert_eq!(code, ErrorCode::CERTIFICATE_REVOKED, "{reason}");
    assert!(
        !admitted(&broker.server(), dir.path(), "alice").await,
        "a revoked client cannot reconnect"
    );

    let old_server = tls::load_certs(&dir.path().join("server.crt")).expect("server.crt");
    let reloads = broker.log_count("reloaded certificates");
    certs(dir.path(), &["rotate-server"]);
    let new_server = tls::load_certs(&dir.path().join("server.crt")).expect("server.crt");
    assert_ne!(old_server, new_server);
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    let (_endpoint, fresh) = raw_client(&broker.server(), dir.path(), "bob")
        .await
        .expect("connect");
    assert_eq!(
        server_cert_of(&fresh),
        new_server[0],
        "new clients see the new certificate"
    );

    // SIGHUP reloads too; the CRL still applies, and bob's old connection continues.
    let reloads = broker.log_count("reloaded certificates");
    broker.signal("HUP");
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    assert!(broker.log_count("SIGHUP") >= 1);
    assert!(!admitted(&broker.server(), dir.path(), "alice").await);
    assert_delivers(
        &bob,
        "bob.x",
        b"through it all",
        &mut bob_subscription,
        "bob delivery",
    )
    .await;

    // The revoked certificate's session ended with it: a re-issued certificate cannot resume it.
    certs(dir.path(), &["issue", "alice"]);
    let (_endpoint, reissued) = raw_client(&broker.server(), dir.path(), "alice")
        .await
        .expect("connect");
    assert!(raw::hello(&reissued, Some(alice_welcome.session_id))
        .await
        .is_none());
    let (code, reason) = close_of(&reissued).await;
    assert_eq!(code, ErrorCode::SESSION_NOT_FOUND, "{reason}");
}

#[test]
fn certs_revoke_of_an_unknown_client_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["alice"]);
    let output =
        harness::run(harness::cassini(&["certs", "revoke", "nobody", "--dir"]).arg(dir.path()));
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no client certificate"), "{stderr}");
    assert!(stderr.contains("client-nobody.crt"), "{stderr}");
    assert!(!dir.path().join("crl.pem").exists());
}

/// `/varz` of the broker's monitoring endpoint.
async fn varz(broker: &Broker) -> serde_json::Value {
    let limit = std::time::Duration::from_secs(10);
    cassini_monitor::client::get_json(broker.monitor(), "/varz", limit)
        .await
        .expect("/varz")
}

/// `/metrics` of the broker's monitoring endpoint.
async fn metrics(broker: &Broker) -> String {
    let limit = std::time::Duration::from_secs(10);
    let (status, text) = cassini_monitor::client::get(broker.monitor(), "/metrics", limit)
        .await
        .expect("/metrics");
    assert_eq!(status, 200);
    text
}

#[tokio::test]
async fn removing_or_breaking_the_crl_keeps_the_last_good_one_in_force() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["eve", "bob"]);
    let broker = Broker::with_certs(dir.path(), &["--monitor", "127.0.0.1:0"]);
    broker.wait_for_log("monitoring endpoint");
    let crl = dir.path().join("crl.pem");

    let reloads = broker.log_count("reloaded certificates");
    certs(dir.path(), &["revoke", "eve"]);
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    assert!(!admitted(&broker.server(), dir.path(), "eve").await);
    let revocation = &varz(&broker).await["revocation"];
    assert_eq!(revocation["in_force"], true, "{revocation}");
    assert_eq!(revocation["revoked"], 1, "{revocation}");
    assert!(revocation["problem"].is_null(), "{revocation}");

    // The file moved away: the reload keeps the last good CRL and says so at error level.
    let reloads = broker.log_count("reloaded certificates");
    std::fs::rename(&crl, dir.path().join("crl.pem.moved")).expect("move the CRL away");
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    assert!(
        !admitted(&broker.server(), dir.path(), "eve").await,
        "a missing CRL does not let eve back in"
    );
    assert!(broker.log_count("keeping the last good CRL") >= 1);
    assert!(broker.log_count("ERROR") >= 1, "said at error level");
    assert!(admitted(&broker.server(), dir.path(), "bob").await);
    let revocation = &varz(&broker).await["revocation"];
    assert_eq!(revocation["in_force"], true, "{revocation}");
    assert_eq!(revocation["revoked"], 1, "{revocation}");
    assert!(
        revocation["problem"]
            .as_str()
            .is_some_and(|problem| problem.contains("does not exist")),
        "{revocation}"
    );
    let scrape = metrics(&broker).await;
    assert!(scrape.contains("cassini_crl_file_problem 1"), "{scrape}");
    assert!(
        scrape.contains("cassini_crl_revoked_certificates 1"),
        "{scrape}"
    );

    // A garbled file, then SIGHUP: the same.
    let reloads = broker.log_count("reloaded certificates");
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nnot a CRL\n-----END X509 CRL-----\n",
    )
    .expect("garble the CRL");
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    let reloads = broker.log_count("reloaded certificates");
    broker.signal("HUP");
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    assert!(!admitted(&broker.server(), dir.path(), "eve").await);

    // Put back, the CRL is read again and the problem is gone.
    let reloads = broker.log_count("reloaded certificates");
    std::fs::rename(dir.path().join("crl.pem.moved"), &crl).expect("restore the CRL");
    broker.wait_for_log_count("reloaded certificates", reloads + 1);
    let revocation = &varz(&broker).await["revocation"];
    assert!(revocation["problem"].is_null(), "{revocation}");
    assert!(metrics(&broker)
        .await
        .contains("cassini_crl_file_problem 0"));
    assert!(!admitted(&broker.server(), dir.path(), "eve").await);
    assert!(admitted(&broker.server(), dir.path(), "bob").await);
}

#[test]
fn require_crl_refuses_to_start_without_a_crl_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["alice"]);
    for (flag, env) in [(Some("--require-crl"), None), (None, Some("true"))] {
        let mut command = std::process::Command::new(harness::CASSINI);
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--certs"])
            .arg(dir.path())
            .args(flag);
        if let Some(value) = env {
            command.env("CASSINI_CERTS_REQUIRE_CRL", value);
        }
        let output = command.output().expect("run cassini");
        assert!(!output.status.success(), "{flag:?} {env:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("crl.pem does not exist"), "{stderr}");
        assert!(stderr.contains("certs.require_crl"), "{stderr}");
    }
    certs(dir.path(), &["revoke", "alice"]);
    let broker = Broker::with_certs(dir.path(), &["--require-crl"]);
    assert_eq!(broker.log_count("cassini listening"), 1);
}

/// `cassini top --once --monitor ADDR EXTRA...`.
fn top_once(monitor: &str, extra: &[&str]) -> std::process::Output {
    std::process::Command::new(harness::CASSINI)
        .args(["top", "--once", "--monitor", monitor])
        .args(extra)
        .output()
        .expect("run cassini top")
}

#[test]
fn a_monitor_token_file_guards_the_endpoint_and_top_presents_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["alice"]);
    let token_file = dir.path().join("monitor.token");
    std::fs::write(&token_file, "s3cret-monitor-token\n").expect("token file");
    let token_arg = token_file.to_str().expect("utf-8");
    let broker = Broker::with_certs(
        dir.path(),
        &[
            "--monitor",
            "127.0.0.1:0",
            "--monitor-token-file",
            token_arg,
        ],
    );
    broker.wait_for_log("monitoring endpoint");
    let monitor = broker
        .log_field("monitoring endpoint", "addr")
        .expect("the monitor's address");

    let refused = top_once(&monitor, &[]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    let shown = top_once(&monitor, &["--monitor-token-file", token_arg]);
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    assert!(String::from_utf8_lossy(&shown.stdout).starts_with("cassini "));
    assert_eq!(
        broker.log_count("listens beyond loopback with no token"),
        0,
        "a token protects it"
    );
}

#[test]
fn an_unprotected_monitor_beyond_loopback_is_warned_about() {
    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["alice"]);
    let broker = Broker::with_certs(dir.path(), &["--monitor", "0.0.0.0:0"]);
    broker.wait_for_log("monitoring endpoint");
    broker.wait_for_log("listens beyond loopback with no token");
    let loopback = Broker::with_certs(dir.path(), &["--monitor", "127.0.0.1:0"]);
    loopback.wait_for_log("monitoring endpoint");
    assert_eq!(loopback.log_count("listens beyond loopback"), 0);
}
