//! The bounded soak: many clients with mixed topics, overflow policies and delivery promises,
//! faults on, for a set time, while the broker's memory (a child process, read from `/proc`)
//! is sampled; it must level off, not grow with time.
//!
//! Ignored by default; CI runs the short form:
//! `CASSINI_SOAK_SECS=60 cargo test -p cassini --test soak -- --ignored`.
//! `CASSINI_SOAK_CLIENTS` (default 1,000) and `CASSINI_SOAK_SECS` (default 60) size it;
//! `CASSINI_FAULT_SEED` replays its faults.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_client::{
    AckOptions, Client, OverflowPolicy, QuicOptions, ReconnectPolicy, SubscribeOptions,
};
use cassini_quic::faults::{FaultControl, FaultPlan};
use futures_util::StreamExt;
use tokio::time::Instant;

const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|kib| kib.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn start_broker(certs: &std::path::Path) -> (Broker, String) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(CASSINI)
        .args(["serve", "--listen", &addr, "--idle-timeout", "5", "--certs"])
        .arg(certs)
        .env("RUST_LOG", "warn,cassini=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker");
    let stderr = child.stderr.take().expect("stderr");
    let (ready, is_ready) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("cassini listening") {
                let _ = ready.send(());
            }
        }
    });
    let broker = Broker(child);
    is_ready
        .recv_timeout(Duration::from_secs(30))
        .expect("broker ready");
    (broker, addr)
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
    let init = Command::new(CASSINI)
        .args(["certs", "init", "--client", "soak", "--dir"])
        .arg(dir.path())
        .output()
        .expect("certs init");
    assert!(init.status.success());
    let (broker, addr) = start_broker(dir.path());
    let pid = broker.0.id();

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
        let client = Client::builder(addr.as_str())
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
            .await
            .expect("soak client connects");
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
        rss_bytes(pid) / 1024
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
            samples.push(rss_bytes(pid));
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
    // Level off: the highest RSS of the last half is within 20% (plus 16 MiB of allocator
    // slack) of the highest of the first half, after warm-up.
    let half = samples.len() / 2;
    let early = samples[1..half].iter().copied().max().unwrap_or(samples[0]);
    let late = samples[half..].iter().copied().max().unwrap_or(early);
    assert!(
        late <= early + early / 5 + 16 * 1024 * 1024,
        "broker memory kept growing: {} KiB early, {} KiB late (seed {seed})",
        early / 1024,
        late / 1024
    );
    for handle in handles {
        handle.abort();
    }
}
