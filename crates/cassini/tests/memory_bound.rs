//! The broker's memory stays bounded when a client stops reading one of its subscriptions while
//! a publisher floods it, and the client's other subscription keeps receiving. The broker runs
//! as a child process so its memory can be read from `/proc`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use cassini_client::Client;
use futures_util::StreamExt;

const CASSINI: &str = env!("CARGO_BIN_EXE_cassini");
/// 2,000 messages of 64 KiB: 128 MiB offered to a subscription that never reads.
const FLOOD_MESSAGES: usize = 2_000;
const FLOOD_PAYLOAD: usize = 64 * 1024;
const FAST_MESSAGES: u64 = 200;
/// The stated bound on broker growth during the flood: the stalled subscription's queue (4 MiB
/// by default) plus QUIC stream and connection windows and allocator slack. Without per-
/// subscription bounds the broker would hold most of the 128 MiB offered.
const GROWTH_BOUND_BYTES: u64 = 48 * 1024 * 1024;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .expect("VmRSS value");
    kib * 1024
}

fn start_broker(certs: &std::path::Path) -> (Broker, String) {
    let port = UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = Command::new(CASSINI)
        .args(["serve", "--listen", &addr, "--certs"])
        .arg(certs)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn broker");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("cassini listening") {
                let _ = tx.send(());
            }
        }
    });
    let broker = Broker(child);
    rx.recv_timeout(Duration::from_secs(20))
        .expect("broker ready");
    (broker, addr)
}

async fn client(addr: &str, certs: &std::path::Path, name: &str, buffer: usize) -> Client {
    Client::builder(addr)
        .cert_dir(certs, name)
        .server_name("localhost")
        .subscription_buffer(buffer)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_stalled_subscription_bounds_broker_memory_and_spares_its_neighbour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let init = Command::new(CASSINI)
        .args([
            "certs",
            "init",
            "--client",
            "subscriber",
            "--client",
            "publisher",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .expect("certs init");
    assert!(init.status.success());
    let (broker, addr) = start_broker(dir.path());

    let subscriber = client(&addr, dir.path(), "subscriber", 8).await;
    let _stalled = subscriber
        .subscribe("slow.*")
        .await
        .expect("subscribe slow");
    let mut fast = subscriber
        .subscribe("fast.*")
        .await
        .expect("subscribe fast");
    let publisher = client(&addr, dir.path(), "publisher", 8).await;
    publisher
        .publish("fast.warmup", Bytes::from_static(b"w"))
        .await
        .expect("warm up");
    within(fast.next()).await.expect("warm-up message");
    let before = rss_bytes(broker.0.id());

    let flooder = publisher.clone();
    let flood = tokio::spawn(async move {
        let payload = Bytes::from(vec![3u8; FLOOD_PAYLOAD]);
        for _ in 0..FLOOD_MESSAGES {
            flooder
                .publish("slow.x", payload.clone())
                .await
                .expect("flood");
        }
    });
    let mut peak = before;
    for i in 0..FAST_MESSAGES {
        publisher
            .publish("fast.x", Bytes::from(i.to_be_bytes().to_vec()))
            .await
            .expect("publish fast");
        let message = within(fast.next()).await.expect("fast message");
        assert_eq!(
            message.payload()[..8],
            i.to_be_bytes(),
            "fast messages arrive in order"
        );
        peak = peak.max(rss_bytes(broker.0.id()));
    }
    within(flood).await.expect("flood task");
    publisher.close().await.expect("close");
    peak = peak.max(rss_bytes(broker.0.id()));

    let growth = peak.saturating_sub(before);
    eprintln!(
        "broker RSS before {} MiB, peak {} MiB, growth {} MiB for {} MiB offered",
        before >> 20,
        peak >> 20,
        growth >> 20,
        (FLOOD_MESSAGES * FLOOD_PAYLOAD) >> 20
    );
    assert!(
        growth < GROWTH_BOUND_BYTES,
        "broker grew by {} MiB, bound {} MiB",
        growth >> 20,
        GROWTH_BOUND_BYTES >> 20
    );
    drop(broker);
}

async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(60), future)
        .await
        .expect("timed out")
}
