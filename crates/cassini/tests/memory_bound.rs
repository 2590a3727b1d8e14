//! The broker's memory stays bounded when a client stops reading one of its subscriptions while
//! a publisher floods it, and the client's other subscription keeps receiving. The broker runs
//! as a child process so its memory can be read from `/proc`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test helpers fail loudly

mod harness;

use std::time::Duration;

use bytes::Bytes;
use cassini_client::Client;
use futures_util::StreamExt;
use harness::{init_certs, Broker};

/// 2,000 messages of 64 KiB: 128 MiB offered to a subscription that never reads.
const FLOOD_MESSAGES: usize = 2_000;
const FLOOD_PAYLOAD: usize = 64 * 1024;
const FAST_MESSAGES: u64 = 200;
/// The stated bound on broker growth during the flood: the stalled subscription's queue (4 MiB
/// by default) plus QUIC stream and connection windows and allocator slack. Without per-
/// subscription bounds the broker would hold most of the 128 MiB offered.
const GROWTH_BOUND_BYTES: u64 = 48 * 1024 * 1024;

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
    init_certs(dir.path(), &["subscriber", "publisher"]);
    let broker = Broker::with_certs(dir.path(), &[]);
    let addr = broker.server();

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
    let before = broker.rss_bytes();

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
        peak = peak.max(broker.rss_bytes());
    }
    within(flood).await.expect("flood task");
    publisher.close().await.expect("close");
    peak = peak.max(broker.rss_bytes());

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
