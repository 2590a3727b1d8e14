//! The bounded soak: many clients with mixed topics, overflow policies and delivery promises,
//! faults on, for a set time, while the broker's memory (a child process, read from `/proc`)
//! is sampled; it must level off, not grow with time.
//!
//! Ignored by default; CI runs the short form:
//! `CASSINI_SOAK_SECS=60 cargo test -p cassini --test soak -- --ignored`.
//! `CASSINI_SOAK_CLIENTS` (default 1,000) and `CASSINI_SOAK_SECS` (default 60) size it;
//! `CASSINI_FAULT_SEED` replays its faults.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    AckOptions, Client, OverflowPolicy, QuicOptions, ReconnectPolicy, SubscribeOptions,
};
use cassini_quic::faults::{FaultControl, FaultPlan};
use futures_util::StreamExt;
use harness::{init_certs, Broker, Serve};
use tokio::time::Instant;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn start_broker(certs: &std::path::Path) -> Broker {
    Serve::new(&["--idle-timeout", "5", "--certs"])
        .arg(certs)
        .env("RUST_LOG", "warn,cassini=info")
        .start()
}

/// A subscription's options: policies and promises in turn.
fn options(n: usize) -> SubscribeOptions {
    let overflow = [
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::Latest,
        OverflowPolicy::DropOldest,
    ][n % 4];
    SubscribeOptions {
        overflow,
        max_queued_messages: Some(256),
        acks: n.is_multiple_of(5).then(AckOptions::default),
        ..SubscribeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the soak runs by flag: cargo test -p cassini --test soak -- --ignored"]
async fn soak_many_clients_with_faults_on_keeps_broker_memory_level() {
    let clients = env_or("CASSINI_SOAK_CLIENTS", 1_000) as usize;
    let duration = Duration::from_secs(env_or("CASSINI_SOAK_SECS", 60));
    let seed = env_or("CASSINI_FAULT_SEED", rand::random());
    eprintln!("soak: {clients} clients for {duration:?}, fault seed {seed}");

    let dir = tempfile::tempdir().expect("tempdir");
    init_certs(dir.path(), &["soak"]);
    let broker = start_broker(dir.path());
    let addr = broker.server();

    let faults = FaultControl::new(FaultPlan {
        seed,
        send_loss: 0.01,
        recv_loss: 0.01,
        jitter: Duration::from_millis(5),
        ..FaultPlan::default()
    });
    let received = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::with_capacity(clients);
    for n in 0..clients {
        // The first handshake crosses the faulty network too, and the client's reconnect
        // policy starts only after a first connection: like an edge application, the soak
        // tries a failed first connect again (a few times, backing off).
        let mut attempt = 0u64;
        let client = loop {
            attempt += 1;
            let connected = Client::builder(addr.as_str())
                .cert_dir(dir.path(), "soak")
                .server_name("localhost")
                .socket_layer(faults.layer())
                .quic_options(QuicOptions {
                    idle_timeout: Duration::from_secs(5),
                    keep_alive_interval: Duration::from_secs(1),
                    ..QuicOptions::default()
                })
                .reconnect(ReconnectPolicy {
                    enabled: true,
                    initial_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    give_up_after: None,
                })
                .subscription_buffer(64)
                .connect()
                .await;
            match connected {
                Ok(client) => break client,
                Err(err) if attempt < 5 => {
                    eprintln!("soak client {n}: first connect failed ({err}); again");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
                Err(err) => panic!("soak client {n} connects in {attempt} attempts: {err:?}"),
            }
        };
        let mut subscription = client
            .subscribe_with(&format!("soak.t{}.>", n % 20), options(n))
            .await
            .expect("subscribe");
        let received = Arc::clone(&received);
        let slow = n.is_multiple_of(10);
        handles.push(tokio::spawn(async move {
            while let Some(_message) = subscription.next().await {
                received.fetch_add(1, Ordering::Relaxed);
                if slow {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
        handles.push(tokio::spawn(async move {
            // Keep the client alive for the test; its subscription task holds the stream.
            let _client = client;
            std::future::pending::<()>().await;
        }));
    }
    eprintln!(
        "soak: {clients} clients connected, rss {} KiB",
        broker.rss_bytes() / 1024
    );

    let publisher = Client::builder(addr.as_str())
        .cert_dir(dir.path(), "soak")
        .server_name("localhost")
        .connect()
        .await
        .expect("publisher");
    let end = Instant::now() + duration;
    let mut samples = Vec::new();
    let mut next_sample = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    let payload = Bytes::from(vec![7u8; 256]);
    let mut sent = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        let topic = format!("soak.t{}.x", sent % 20);
        publisher
            .publish(&topic, payload.clone())
            .await
            .expect("publish");
        sent += 1;
        if Instant::now() >= next_sample {
            samples.push(broker.rss_bytes());
            next_sample += Duration::from_secs(1);
        }
    }
    let delivered = received.load(Ordering::Relaxed);
    eprintln!(
        "soak: sent {sent}, delivered {delivered}, faults {:?}, rss samples (KiB): {:?}",
        faults.stats(),
        samples.iter().map(|rss| rss / 1024).collect::<Vec<_>>()
    );
    assert!(delivered > 0, "messages flowed");
    assert!(samples.len() >= 4, "enough samples to judge");
    // Level off: the median RSS of the last half is within 20% (plus 16 MiB of allocator
    // slack) of the highest of the first half, after warm-up; a leak raises the median. A
    // burst (the broker falling behind on a busy machine fills its bounded queues, then
    // drains them) may lift single samples, but never past twice the early high.
    let half = samples.len() / 2;
    let early = samples[1..half].iter().copied().max().unwrap_or(samples[0]);
    let mut late: Vec<u64> = samples[half..].to_vec();
    late.sort_unstable();
    let late_median = late[late.len() / 2];
    let late_high = late.last().copied().unwrap_or(late_median);
    assert!(
        late_median <= early + early / 5 + 16 * 1024 * 1024,
        "broker memory kept growing: {} KiB early high, {} KiB late median (seed {seed})",
        early / 1024,
        late_median / 1024
    );
    assert!(
        late_high <= 2 * early,
        "broker memory burst past twice its early high: {} KiB early, {} KiB late (seed {seed})",
        early / 1024,
        late_high / 1024
    );
    for handle in handles {
        handle.abort();
    }
}
