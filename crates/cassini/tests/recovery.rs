//! Recovery with every setting at its default: a broker killed with SIGKILL and restarted on
//! the same address, certificates and data directory, and a client that keeps making
//! acknowledged publishes throughout. No publish may fail, and the client must be publishing
//! again soon after the restart: the restarted broker answers the old connection's next packet
//! with a stateless reset (its key is kept in the certificate directory), so the client
//! reconnects at once instead of waiting out its idle timeout.
//!
//! The time from the kill to the first acknowledged publish after the restart is printed
//! (`--nocapture`), never asserted: `docs/SESSIONS.md` has the figure and the command.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_client::Client;
use harness::{init_certs, Broker};

/// How often the client publishes.
const PUBLISH_EVERY: Duration = Duration::from_millis(20);

#[derive(Default)]
struct Outcomes {
    /// When each acknowledged publish completed.
    acknowledged: Vec<Instant>,
    /// Publishes that failed, with the error.
    failed: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_survive_a_broker_kill_and_restart_with_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("certs dir");
    init_certs(&certs, &["dev"]);
    let data = dir.path().join("data");
    let data = data.to_str().expect("utf-8 path");
    let durable = ["--storage", "disk", "--data-dir", data];
    let mut broker = Broker::with_certs(&certs, &durable);
    let addr = broker.server();

    let client = Client::builder(addr.as_str())
        .ca_file(certs.join("ca.crt"))
        .identity_files(certs.join("client-dev.crt"), certs.join("client-dev.key"))
        .server_name("localhost")
        .connect()
        .await
        .expect("connect");
    let client = Arc::new(client);
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let publisher = {
        let client = Arc::clone(&client);
        let outcomes = Arc::clone(&outcomes);
        tokio::spawn(async move {
            for n in 0u64.. {
                let result = client
                    .publish_acked("recovery.readings", Bytes::from(n.to_string()))
                    .await;
                {
                    let mut outcomes = outcomes.lock().unwrap();
                    match result {
                        Ok(_) => outcomes.acknowledged.push(Instant::now()),
                        Err(error) => outcomes.failed.push(format!("publish {n}: {error}")),
                    }
                }
                tokio::time::sleep(PUBLISH_EVERY).await;
            }
        })
    };
    let acknowledged = || outcomes.lock().unwrap().acknowledged.len();
    wait_until("20 publishes acknowledged", || acknowledged() >= 20).await;

    let killed_at = Instant::now();
    broker.restart();
    let restarted_after = killed_at.elapsed();
    wait_until("a publish acknowledged after the restart", || {
        outcomes
            .lock()
            .unwrap()
            .acknowledged
            .last()
            .is_some_and(|at| *at > killed_at)
    })
    .await;
    let first_after = *outcomes
        .lock()
        .unwrap()
        .acknowledged
        .iter()
        .find(|at| **at > killed_at)
        .expect("one after the kill");
    println!(
        "broker listening again {restarted_after:?} after SIGKILL; first acknowledged publish \
         {:?} after SIGKILL; reconnects {}",
        first_after - killed_at,
        client.reconnects()
    );

    let settled = acknowledged() + 10;
    wait_until("10 more publishes acknowledged", || {
        acknowledged() >= settled
    })
    .await;
    publisher.abort();
    let failed = outcomes.lock().unwrap().failed.clone();
    assert!(failed.is_empty(), "no publish may fail: {failed:?}");
    assert_eq!(client.reconnects(), 1);
    drop(broker);
}

/// Waits until `done` holds, for at most 60 s (the client's idle timeout is 30 s: a client
/// that only notices the restart then would still pass here, but not the check on failures).
async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
