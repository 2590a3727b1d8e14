use super::*;
use crate::config::QueueBounds;
use crate::queue::Popped;
use bytes::Bytes;
use cassini_protocol::{OverflowPolicy, TopicLimits};

fn filter(s: &str) -> TopicFilter {
    TopicFilter::parse(s, &TopicLimits::default()).expect("valid filter")
}

fn topic(s: &str) -> TopicName {
    TopicName::parse(s, &TopicLimits::default()).expect("valid topic")
}

fn message(t: &str, payload: &'static [u8]) -> Arc<PublishedMessage> {
    Arc::new(PublishedMessage {
        topic: topic(t),
        headers: Vec::new(),
        payload: Bytes::from_static(payload),
        message_id: None,
        reply_to: None,
        retained: false,
        charge: crate::memory::MemoryCharge::none(),
    })
}

fn member(session: u8, subscription: u64, group: Option<&str>) -> RouteMember {
    let queue = Arc::new(SubscriptionQueue::new(QueueBounds {
        max_messages: 100,
        max_bytes: 1 << 20,
        overflow: OverflowPolicy::DropOldest,
        acks: None,
        max_age: None,
    }));
    queue.set_attached(true);
    RouteMember {
        key: SubscriberKey {
            session: SessionId([session; 16]),
            subscription,
        },
        queue,
        group: group.map(Arc::from),
    }
}

fn matched(router: &Router, t: &str) -> Vec<String> {
    let mut names: Vec<_> = router
        .matching(&topic(t))
        .iter()
        .map(|r| r.filter().to_string())
        .collect();
    names.sort();
    names
}

async fn queued(member: &RouteMember) -> usize {
    if member.queue.stats().depth == 0 {
        return 0;
    }
    let mut batch = Vec::new();
    let attachment = member.queue.attach(None);
    match member
        .queue
        .pop_batch(&attachment, &mut batch, usize::MAX)
        .await
    {
        Popped::Batch { .. } => batch.len(),
        Popped::Closed(_) | Popped::Superseded => 0,
    }
}

#[test]
fn the_trie_agrees_with_filter_matching() {
    let filters = [
        "a.b",
        "a.*",
        "a.>",
        "*.b",
        ">",
        "a.b.c",
        "a.*.c",
        "*.*.*",
        "b.>",
        "_INBOX.>",
        "_INBOX.alice.>",
    ];
    let topics = [
        "a",
        "a.b",
        "a.c",
        "a.b.c",
        "b.b",
        "b.x.y",
        "c.d.e.f",
        "a.x.c",
        "_INBOX.alice.1",
        "_INBOX.b",
        "_INBOXES.b",
    ];
    let router = Router::default();
    for f in filters {
        router.insert(Arc::new(FilterRoute::new(filter(f))));
    }
    for t in topics {
        let mut expected: Vec<String> = filters
            .iter()
            .filter(|f| filter(f).matches(&topic(t)))
            .map(|f| f.to_string())
            .collect();
        expected.sort();
        assert_eq!(matched(&router, t), expected, "topic {t}");
    }
    assert_eq!(
        matched(&router, "_INBOX.alice.1"),
        ["_INBOX.>", "_INBOX.alice.>"],
        "leading wildcards never reach an inbox"
    );
}

#[test]
fn removing_every_filter_leaves_an_empty_trie() {
    let router = Router::default();
    let filters = ["a.b", "a.*", "a.>", "*.b.c", ">"];
    for f in filters {
        router.insert(Arc::new(FilterRoute::new(filter(f))));
    }
    for f in filters {
        assert!(router.remove(&filter(f)).is_some(), "{f}");
    }
    assert!(router.is_empty());
    assert!(router.remove(&filter("a.b")).is_none());
}

#[tokio::test]
async fn a_queue_group_shares_messages_round_robin() {
    let router = Router::default();
    let route = Arc::new(FilterRoute::new(filter("jobs")));
    let members = [
        member(1, 1, Some("w")),
        member(2, 1, Some("w")),
        member(3, 1, Some("w")),
    ];
    let watcher = member(4, 1, None);
    let mut all = members.to_vec();
    all.push(watcher.clone());
    route.set_members(&all);
    router.insert(route);
    for _ in 0..9 {
        let report = router.publish(&message("jobs", b"x"), None);
        assert_eq!(report.offered, 2, "one group member and the plain member");
    }
    for m in &members {
        assert_eq!(queued(m).await, 3, "each member gets a third");
    }
    assert_eq!(queued(&watcher).await, 9, "a plain member gets everything");
}

#[tokio::test]
async fn a_queue_group_prefers_attached_members_with_room() {
    let router = Router::default();
    let route = Arc::new(FilterRoute::new(filter("jobs")));
    let away = member(1, 1, Some("w"));
    away.queue.set_attached(false);
    let present = member(2, 1, Some("w"));
    route.set_members(&[away.clone(), present.clone()]);
    router.insert(route);
    for _ in 0..10 {
        router.publish(&message("jobs", b"x"), None);
    }
    assert_eq!(queued(&away).await, 0);
    assert_eq!(queued(&present).await, 10);
}

#[tokio::test]
async fn a_direct_message_reaches_only_the_target_session() {
    let router = Router::default();
    let route = Arc::new(FilterRoute::new(filter("inbox.>")));
    let alice = member(1, 1, None);
    let bob = member(2, 1, None);
    route.set_members(&[alice.clone(), bob.clone()]);
    router.insert(route);
    let report = router.publish(&message("inbox.note", b"hi"), Some(SessionId([2; 16])));
    assert_eq!(report.offered, 1);
    assert_eq!(queued(&alice).await, 0);
    assert_eq!(queued(&bob).await, 1);
    let report = router.publish(&message("inbox.note", b"hi"), Some(SessionId([9; 16])));
    assert_eq!(report.offered, 0, "an unknown target reaches nobody");
}

#[tokio::test]
async fn retained_values_replay_to_matching_subscriptions_and_clear() {
    let router = Router::new(2);
    router
        .retain(&message("state.a", b"1"), None)
        .expect("retain");
    router
        .retain(&message("state.a", b"2"), None)
        .expect("replace");
    router
        .retain(&message("state.b", b"3"), None)
        .expect("retain");
    assert!(matches!(
        router.retain(&message("state.c", b"4"), None),
        Err(BrokerError::RetainedStoreFull(2))
    ));
    let subscriber = member(1, 1, None);
    let mut added = false;
    router.replay_retained(&filter("state.*"), &subscriber.queue, || added = true);
    assert!(added);
    let mut batch = Vec::new();
    let attachment = subscriber.queue.attach(None);
    subscriber
        .queue
        .pop_batch(&attachment, &mut batch, 10)
        .await;
    let payloads: Vec<_> = batch.iter().map(|q| q.message.payload.clone()).collect();
    assert_eq!(
        payloads,
        vec![Bytes::from_static(b"2"), Bytes::from_static(b"3")]
    );
    assert!(batch.iter().all(|q| q.message.retained));
    router
        .retain(&message("state.a", b""), None)
        .expect("clear");
    assert_eq!(router.retained_count(), 1);
}

/// How many subscriptions a publish of `payload` to `topic` through `cache` was offered to.
fn offered_cached(
    router: &Router,
    cache: &mut RouteCache,
    topic: &str,
    payload: &'static [u8],
) -> usize {
    router
        .publish_cached(&message(topic, payload), None, cache)
        .offered
}

#[tokio::test]
async fn a_cached_publish_sees_every_trie_and_member_change() {
    let router = Router::default();
    let mut cache = RouteCache::default();
    let exact = member(1, 1, None);
    let wildcard = member(2, 1, None);
    let late = member(3, 1, None);

    let route = Arc::new(FilterRoute::new(filter("a.b")));
    route.set_members(std::slice::from_ref(&exact));
    router.insert(Arc::clone(&route));
    assert_eq!(offered_cached(&router, &mut cache, "a.b", b"1"), 1);

    // A new filter changes the trie: the cache is refilled.
    let wide = Arc::new(FilterRoute::new(filter("a.*")));
    wide.set_members(std::slice::from_ref(&wildcard));
    router.insert(Arc::clone(&wide));
    assert_eq!(offered_cached(&router, &mut cache, "a.b", b"2"), 2);

    // A member change does not touch the trie, and still applies at once.
    route.set_members(&[exact.clone(), late.clone()]);
    assert_eq!(offered_cached(&router, &mut cache, "a.b", b"3"), 3);

    // Another topic is looked up, not served from the cache.
    assert_eq!(offered_cached(&router, &mut cache, "a.c", b"4"), 1);

    router.remove(&filter("a.*"));
    assert_eq!(offered_cached(&router, &mut cache, "a.b", b"5"), 2);

    assert_eq!(queued(&exact).await, 4);
    assert_eq!(queued(&wildcard).await, 3, "a.b twice, a.c once");
    assert_eq!(queued(&late).await, 2);
}

fn member_with(policy: OverflowPolicy, max_messages: usize) -> RouteMember {
    let queue = Arc::new(SubscriptionQueue::new(QueueBounds {
        max_messages,
        max_bytes: 1 << 20,
        overflow: policy,
        acks: None,
        max_age: None,
    }));
    RouteMember {
        key: SubscriberKey {
            session: SessionId([9; 16]),
            subscription: max_messages as u64,
        },
        queue,
        group: None,
    }
}

#[test]
fn the_router_counts_queued_copies_and_drops_by_policy() {
    let router = Router::default();
    let policies = [
        OverflowPolicy::DropOldest,
        OverflowPolicy::DropNewest,
        OverflowPolicy::Latest,
        OverflowPolicy::Close,
    ];
    for (index, policy) in policies.into_iter().enumerate() {
        let route = Arc::new(FilterRoute::new(filter(&format!("p{index}.>"))));
        route.set_members(&[member_with(policy, 2)]);
        router.insert(route);
        for _ in 0..3 {
            router.publish(&message(&format!("p{index}.x"), b"abcd"), None);
        }
    }
    let counters = router.counters().snapshot();
    // DropOldest: 3 queued, 1 dropped. DropNewest: 2 queued, 1 refused. Latest: 3 queued, 2
    // replaced. Close: 2 queued, then the queue closed.
    assert_eq!(counters.deliveries_queued, 3 + 2 + 3 + 2);
    assert_eq!(counters.delivery_bytes_queued, 4 * (3 + 2 + 3 + 2));
    assert_eq!(counters.dropped(DropReason::DropOldest), 1);
    assert_eq!(counters.dropped(DropReason::DropNewest), 1);
    assert_eq!(counters.dropped(DropReason::Latest), 2);
    assert_eq!(counters.dropped(DropReason::SlowConsumer), 1);
    let filters = sorted_filters(&router);
    assert_eq!(filters, ["p0.>", "p1.>", "p2.>", "p3.>"]);
}

/// The filters `router.routes()` lists, sorted.
fn sorted_filters(router: &Router) -> Vec<String> {
    let mut filters: Vec<String> = router
        .routes()
        .iter()
        .map(|route| route.filter().to_string())
        .collect();
    filters.sort();
    filters
}

#[test]
fn routes_lists_literal_wildcard_and_tail_filters() {
    let router = Router::default();
    for f in ["a", "a.b", "a.*", "a.>", "*.c", ">"] {
        router.insert(Arc::new(FilterRoute::new(filter(f))));
    }
    let filters = sorted_filters(&router);
    assert_eq!(filters, ["*.c", ">", "a", "a.*", "a.>", "a.b"]);
    router.publish(&message("a.b", b"x"), None);
    let value = message("a.b", b"xyz");
    router.retain(&value, None).unwrap();
    assert_eq!(router.retained_bytes(), value.memory_size());
}

/// A router of a cluster node (with no peers) remembering what it handed for 60 s.
fn cluster_router() -> Router {
    let router = Router::default();
    router.join_cluster(
        Arc::new(Cluster::new(
            crate::cluster::ClusterConfig::node("a"),
            TopicLimits::default(),
        )),
        DedupeWindow::new(
            crate::config::DedupeConfig {
                max_entries: 100,
                max_age: std::time::Duration::from_secs(60),
            },
            100,
        ),
    );
    router
}

#[tokio::test]
async fn a_resent_acknowledged_publish_skips_the_subscriptions_it_was_handed_to() {
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    let grouped = member(2, 1, Some("w"));
    route.set_members(&[plain.clone(), grouped.clone()]);
    router.insert(route);
    let shop: Arc<str> = Arc::from("shop");
    let pair = |identity, message_id| {
        Some(Acknowledged {
            identity,
            message_id,
        })
    };
    let order = message("orders.new", b"1");
    let first = router.publish_admitted(&order, None, None, pair(&shop, 7));
    assert_eq!(first.offered, 2);
    let mut cache = RouteCache::default();
    let again = router.publish_admitted(&order, None, Some(&mut cache), pair(&shop, 7));
    assert_eq!(again.offered, 0, "handed before: skipped");
    let from_peer = router.publish_from_peer(
        &order,
        FromPeer {
            groups: &["w".to_owned()],
            delivered: &[],
            acknowledged: pair(&shop, 7),
        },
    );
    assert_eq!(from_peer.offered, 0, "a peer's forward of the resend too");
    assert_eq!(router.counters().snapshot().duplicates_skipped, 4);
    let other = Arc::from("other");
    assert_eq!(
        router
            .publish_admitted(&order, None, None, pair(&other, 7))
            .offered,
        2,
        "another publisher's id"
    );
    assert_eq!(
        router
            .publish_admitted(&order, None, None, pair(&shop, 8))
            .offered,
        2,
        "another id"
    );
    assert_eq!(router.publish(&order, None).offered, 2, "not acknowledged");
    assert_eq!(queued(&plain).await, 4);
    assert_eq!(queued(&grouped).await, 4);
}

#[tokio::test]
async fn an_acknowledged_publish_that_reached_no_subscription_here_is_not_remembered() {
    let router = cluster_router();
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 0);
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let late = member(1, 1, None);
    route.set_members(std::slice::from_ref(&late));
    router.insert(route);
    assert_eq!(
        router.publish_admitted(&order, None, None, pair).offered,
        1,
        "it never had the first copy"
    );
    assert_eq!(queued(&late).await, 1);
}

#[tokio::test]
async fn a_subscription_made_after_the_first_copy_gets_the_resend() {
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let early = member(1, 1, None);
    route.set_members(std::slice::from_ref(&early));
    router.insert(Arc::clone(&route));
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 1);
    let late = member(2, 1, None);
    route.set_members(&[early.clone(), late.clone()]);
    let again = router.publish_admitted(&order, None, None, pair);
    assert_eq!(again.offered, 1, "only the subscription made since");
    assert_eq!(queued(&early).await, 1);
    assert_eq!(queued(&late).await, 1);
}

#[tokio::test]
async fn a_forward_that_reached_nothing_unreplicated_here_leaves_the_resend_to_it() {
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    route.set_members(std::slice::from_ref(&plain));
    router.insert(route);
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    // A peer's forward that left the plain subscription out (the peer delivered to it through
    // the records): nothing was handed to it here.
    let forwarded = router.publish_from_peer(
        &order,
        FromPeer {
            groups: &["w".to_owned()],
            delivered: &[(SessionId([1; 16]), 1)],
            acknowledged: pair,
        },
    );
    assert_eq!(forwarded.offered, 0);
    assert_eq!(
        router.publish_admitted(&order, None, None, pair).offered,
        1,
        "the resend reaches the plain subscription that never had it"
    );
    assert_eq!(queued(&plain).await, 1);
}

#[tokio::test]
async fn without_a_cluster_an_acknowledged_publish_is_never_skipped() {
    let router = Router::default();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    route.set_members(std::slice::from_ref(&plain));
    router.insert(route);
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    for _ in 0..2 {
        let report = router.publish_admitted(&message("orders.new", b"1"), None, None, pair);
        assert_eq!(report.offered, 1, "the node's dedupe window decides");
    }
}

#[tokio::test]
async fn a_publish_reaching_a_subscription_through_the_records_is_not_also_routed_to_it_here() {
    let router = Router::new(2);
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let (through_records, routed) = (member(1, 1, None), member(2, 1, None));
    route.set_members(&[through_records.clone(), routed.clone()]);
    router.insert(route);
    let order = message("orders.new", b"1");
    let skipped = [(
        through_records.key.session,
        through_records.key.subscription,
    )];
    let report = router.publish_admitted_except(&order, None, None, None, &skipped);
    assert_eq!(report.offered, 1);
    assert_eq!(
        queued(&through_records).await,
        0,
        "its copy comes from the records"
    );
    assert_eq!(queued(&routed).await, 1);
}

/// A queue group member of a named session in a cluster with `members`: an at-least-once queue
/// storing in the cluster's records (a one-member replica of its own, never written to here).
async fn replicated_member(session: u8, subscription: u64, group: &str) -> RouteMember {
    use crate::storage::replicated::{Binding, ReplicatedStore};
    use crate::storage::{QueueStore, SessionStore};
    let replica = cassini_replication::Replica::start(
        cassini_replication::ReplicaConfig::new("a", vec!["a".to_owned()]),
        cassini_replication::Storage::Memory,
        None,
    )
    .await
    .expect("replica");
    let key = cassini_replication::SessionKey {
        identity: "worker".to_owned(),
        name: format!("w{session}"),
    };
    let queue = Arc::new(SubscriptionQueue::with_store(
        QueueBounds {
            max_messages: 100,
            max_bytes: 1 << 20,
            overflow: OverflowPolicy::DropOldest,
            acks: Some(crate::config::AckBounds {
                max_in_flight: 100,
                timeout: std::time::Duration::from_secs(30),
            }),
            max_age: None,
        },
        Some(QueueStore {
            store: SessionStore::Replicated(
                ReplicatedStore::start(replica, 1 << 20),
                Binding::new(key, 1),
            ),
            session: u128::from(session),
            subscription,
        }),
    ));
    queue.set_attached(true);
    assert!(queue.is_replicated());
    RouteMember {
        key: SubscriberKey {
            session: SessionId([session; 16]),
            subscription,
        },
        queue,
        group: Some(Arc::from(group)),
    }
}

/// Messages waiting in `member`'s queue (taking none).
fn depth(member: &RouteMember) -> usize {
    member.queue.stats().depth
}

#[tokio::test]
async fn a_resend_reaches_a_group_whose_first_copy_here_went_to_a_replicated_member() {
    // The group's first copy went to its replicated member, whose entry never committed (its
    // node lost its quorum): the resend must reach the group, though the plain subscription
    // made the node keep the pair.
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    let replicated = replicated_member(2, 1, "w").await;
    let unreplicated = member(3, 1, Some("w"));
    route.set_members(&[plain.clone(), replicated.clone(), unreplicated.clone()]);
    router.insert(route);
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 2);
    assert_eq!(depth(&replicated), 1, "the group's first copy");
    let again = router.publish_admitted(&order, None, None, pair);
    assert_eq!(
        again.offered, 1,
        "the plain subscription is skipped, the group is not"
    );
    assert_eq!(depth(&replicated) + depth(&unreplicated), 2);
    assert_eq!(depth(&plain), 1);
}

/// [`cluster_router`] with `members`, whose records hold a named session's at-least-once
/// subscription to `filter` in queue group `group` (served by another node).
async fn members_router(filter: &str, group: &str) -> Router {
    use crate::storage::records::SubscriptionRecord;
    use crate::storage::{session_records, Op};
    let router = cluster_router();
    let ownership = crate::cluster::ownership::Ownership::start(
        cassini_replication::ReplicaConfig::new("a", vec!["a".to_owned()]),
        None,
        1 << 20,
        TopicLimits::default(),
        crate::config::QueueConfig::default(),
        std::time::Duration::from_secs(60),
    )
    .await
    .expect("ownership");
    let (_, mut ops) = session_records::record_ops(&Op::PutSubscription(SubscriptionRecord {
        session: 9,
        subscription: 1,
        filter: filter.into(),
        options: cassini_protocol::SubscribeOptions {
            acks: Some(cassini_protocol::AckOptions::default()),
            queue_group: Some(group.to_owned()),
            ..cassini_protocol::SubscribeOptions::default()
        },
    }))
    .expect("a session's op");
    let session = cassini_replication::SessionKey {
        identity: "worker".to_owned(),
        name: "elsewhere".to_owned(),
    };
    ownership
        .deliveries()
        .observe(&[cassini_replication::RecordsChange::Applied(
            session,
            vec![ops.remove(0)],
        )]);
    router
        .cluster()
        .expect("a cluster")
        .set_ownership(ownership);
    router
}

#[tokio::test]
async fn a_resend_reaches_a_group_whose_first_copy_went_to_another_node() {
    // Group w has a member here and a replicated one on the publishing node, which served the
    // group itself and forwarded the publish here for the plain subscription only; its entry
    // never committed. The resend through a third node, which chose this node for w, must
    // reach w's member here.
    let router = members_router("orders.*", "w").await;
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    let grouped = member(2, 1, Some("w"));
    route.set_members(&[plain.clone(), grouped.clone()]);
    router.insert(route);
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    let for_plain = FromPeer {
        groups: &[],
        delivered: &[],
        acknowledged: pair,
    };
    assert_eq!(router.publish_from_peer(&order, for_plain).offered, 1);
    let for_group = FromPeer {
        groups: &["w".to_owned()],
        delivered: &[],
        acknowledged: pair,
    };
    assert_eq!(
        router.publish_from_peer(&order, for_group).offered,
        1,
        "the group never had it here"
    );
    assert_eq!(
        router.publish_from_peer(&order, for_group).offered,
        0,
        "it has now"
    );
    assert_eq!(
        router.publish_admitted(&order, None, None, pair).offered,
        0,
        "a resend through this node too"
    );
    assert_eq!(queued(&plain).await, 1);
    assert_eq!(queued(&grouped).await, 1);
}

#[tokio::test]
async fn a_group_whose_first_copy_went_to_an_unreplicated_member_here_is_skipped_whole() {
    // No publish reaches two members of a group: not its replicated member next in turn, nor a
    // member made since.
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let unreplicated = member(1, 1, Some("w"));
    let replicated = replicated_member(2, 1, "w").await;
    route.set_members(&[unreplicated.clone(), replicated.clone()]);
    router.insert(Arc::clone(&route));
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 1);
    assert_eq!(depth(&unreplicated), 1, "the group's first copy");
    assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 0);
    let late = member(3, 1, Some("w"));
    route.set_members(&[unreplicated.clone(), replicated.clone(), late.clone()]);
    for _ in 0..3 {
        assert_eq!(router.publish_admitted(&order, None, None, pair).offered, 0);
    }
    assert_eq!(depth(&replicated) + depth(&late), 0);
    assert_eq!(router.counters().snapshot().duplicates_skipped, 4);
}

#[tokio::test]
async fn without_a_replicated_member_a_group_served_elsewhere_is_skipped_on_a_resend() {
    // As above, but no member of w anywhere gets only what commits: the member on the
    // publishing node had the first copy, and the resend reaches no second member.
    let router = cluster_router();
    let route = Arc::new(FilterRoute::new(filter("orders.>")));
    let plain = member(1, 1, None);
    let grouped = member(2, 1, Some("w"));
    route.set_members(&[plain.clone(), grouped.clone()]);
    router.insert(Arc::clone(&route));
    let shop: Arc<str> = Arc::from("shop");
    let pair = Some(Acknowledged {
        identity: &shop,
        message_id: 7,
    });
    let order = message("orders.new", b"1");
    let for_plain = FromPeer {
        groups: &[],
        delivered: &[],
        acknowledged: pair,
    };
    assert_eq!(router.publish_from_peer(&order, for_plain).offered, 1);
    let for_group = FromPeer {
        groups: &["w".to_owned()],
        delivered: &[],
        acknowledged: pair,
    };
    assert_eq!(router.publish_from_peer(&order, for_group).offered, 0);
    let late = member(3, 1, Some("w"));
    route.set_members(&[plain.clone(), late.clone()]);
    assert_eq!(
        router.publish_from_peer(&order, for_group).offered,
        1,
        "a member made since gets it"
    );
    assert_eq!(queued(&grouped).await, 0);
    assert_eq!(queued(&late).await, 1);
}
