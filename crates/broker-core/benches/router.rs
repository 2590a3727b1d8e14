//! Micro-benchmarks of the publish path's routing, through the router's public API only:
//! matching a topic against 10,000 subscriptions (literal filters and wildcards), and fanning
//! one message out to 1, 100 and 1,000 subscription queues, with and without the route cache a
//! publish stream keeps.
//! Run with `cargo bench -p cassini-broker --bench router`.
//!
//! The fan-out queues are never drained, so after the first 1,024 messages every push also
//! drops the oldest (`DropOldest`): the steady state of a subscriber that falls behind.

#![allow(missing_docs)]

use std::sync::Arc;

use bytes::Bytes;
use cassini_broker::config::QueueBounds;
use cassini_broker::message::PublishedMessage;
use cassini_broker::queue::SubscriptionQueue;
use cassini_broker::router::{FilterRoute, RouteCache, RouteMember, Router, SubscriberKey};
use cassini_protocol::{OverflowPolicy, SessionId, TopicFilter, TopicLimits, TopicName};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn member(index: u64) -> RouteMember {
    RouteMember {
        key: SubscriberKey {
            session: SessionId([index as u8; 16]),
            subscription: index,
        },
        queue: Arc::new(SubscriptionQueue::new(QueueBounds {
            max_messages: 1024,
            max_bytes: 4 * 1024 * 1024,
            overflow: OverflowPolicy::DropOldest,
            acks: None,
            max_age: None,
        })),
        group: None,
    }
}

fn route(router: &Router, filter: &str, members: &[RouteMember]) {
    let limits = TopicLimits::default();
    let Ok(filter) = TopicFilter::parse(filter, &limits) else {
        return;
    };
    let route = Arc::new(FilterRoute::new(filter));
    route.set_members(members);
    router.insert(route);
}

fn topic(name: &str) -> TopicName {
    match TopicName::parse(name, &TopicLimits::default()) {
        Ok(topic) => topic,
        Err(err) => unreachable!("bench topic {name}: {err}"),
    }
}

/// 10,000 filters: 9,000 literal (`sensors.S.D.temperature`), 900 with `*` in the middle,
/// 100 ending in `>`.
fn ten_thousand_subscriptions() -> Router {
    let router = Router::default();
    for index in 0..10_000u64 {
        let filter = match index % 100 {
            0 => format!("sensors.{}.>", index / 100),
            1..=9 => format!("sensors.*.{index}.temperature"),
            _ => format!("sensors.{}.{index}.temperature", index % 100),
        };
        route(&router, &filter, &[member(index)]);
    }
    router
}

fn matching(c: &mut Criterion) {
    let router = ten_thousand_subscriptions();
    let mut group = c.benchmark_group("match/10k subscriptions");
    group.throughput(Throughput::Elements(1));
    let hit = topic("sensors.42.4242.temperature");
    group.bench_function("literal hit", |b| b.iter(|| router.matching(&hit).len()));
    let wildcard = topic("sensors.3.4203.temperature");
    group.bench_function("wildcard hits", |b| {
        b.iter(|| router.matching(&wildcard).len())
    });
    let miss = topic("metrics.cpu.load");
    group.bench_function("miss", |b| b.iter(|| router.matching(&miss).len()));
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for members in [1u64, 100, 1000] {
        let router = Router::default();
        let all: Vec<_> = (0..members).map(member).collect();
        route(&router, "bench.fanout", &all);
        let message = Arc::new(PublishedMessage {
            topic: topic("bench.fanout"),
            headers: Vec::new(),
            payload: Bytes::from(vec![0x42; 64]),
            message_id: None,
            reply_to: None,
            retained: false,
            charge: cassini_broker::memory::MemoryCharge::none(),
        });
        group.throughput(Throughput::Elements(members));
        group.bench_with_input(
            BenchmarkId::new("publish 64 B", members),
            &members,
            |b, _| b.iter(|| router.publish(&message, None).offered),
        );
        let mut cache = RouteCache::default();
        group.bench_with_input(
            BenchmarkId::new("publish_cached 64 B", members),
            &members,
            |b, _| b.iter(|| router.publish_cached(&message, None, &mut cache).offered),
        );
    }
    group.finish();
}

criterion_group!(benches, matching, fanout);
criterion_main!(benches);
