//! A client process killed without closing its connection leaves no session, subscriber or
//! topic actor behind once its connection times out and its session expires.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_e2e::TestBroker;
use cassini_quic::server::ServerOptions;
use cassini_quic::tls::QuicOptions;
use harness::{cassini, spawn_until};

#[tokio::test]
async fn a_killed_client_leaves_nothing_behind() {
    let mut config = BrokerConfig::default();
    config.sessions.expiry = Duration::from_millis(200);
    let options = ServerOptions {
        quic: QuicOptions {
            idle_timeout: Duration::from_secs(1),
            keep_alive_interval: Duration::from_millis(250),
            ..QuicOptions::default()
        },
        ..ServerOptions::default()
    };
    let broker = TestBroker::start_with(config, options).await;

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("ca.crt"), broker.pki.ca.cert_pem()).expect("ca.crt");
    broker
        .pki
        .client("doomed")
        .write(
            &dir.path().join("client-doomed.crt"),
            &dir.path().join("client-doomed.key"),
        )
        .expect("client cert");

    let server = broker.addr.to_string();
    let mut sub = cassini(&["sub", "vanish.>", "--name", "doomed", "--server", &server]);
    sub.arg("--certs").arg(dir.path());
    let mut child = tokio::task::spawn_blocking(move || spawn_until(sub, "subscribed to"))
        .await
        .expect("sub subscribed");
    broker
        .wait_for_stats("the subscriber is in place", |s| {
            s.connections == 1 && s.sessions == 1 && s.subscribers == 1 && s.topics == 1
        })
        .await;

    child.kill().expect("SIGKILL");
    let _ = child.wait();

    broker
        .wait_until_empty("everything the client had is gone")
        .await;
    broker.stop().await;
}
