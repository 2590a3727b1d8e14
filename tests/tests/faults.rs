//! Fault injection: load, faults, a recorded history, and a check of the guarantees in
//! `docs/SESSIONS.md` against it (see `cassini_e2e::history`).
//!
//! Every fault is drawn from one seed, printed at the start of each test. Replay a failing run
//! with `CASSINI_FAULT_SEED=<seed> cargo test -p cassini-e2e --test faults <name>`; lengthen
//! the load phases with `CASSINI_FAULT_SECS=<seconds>` (CI runs the short form).

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_client::{Client, ConnectionState, QuicOptions, ReconnectPolicy};
use cassini_e2e::history::{
    fault_seed, load_time, publish_for, quick_reconnect, History, Promise, SubscriptionRecorder,
};
use cassini_e2e::{eventually, within, TestBroker};
use cassini_quic::faults::{FaultControl, FaultPlan};
use cassini_quic::server::ServerOptions;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The seed of this run's faults, printed with the command that replays it.
fn seed(test: &str) -> u64 {
    fault_seed(&format!("cargo test -p cassini-e2e --test faults {test}"))
}

/// Both ends notice a dead path within about two seconds, even with some loss.
fn quic() -> QuicOptions {
    QuicOptions {
        idle_timeout: Duration::from_secs(2),
        keep_alive_interval: Duration::from_millis(300),
        ..QuicOptions::default()
    }
}

async fn broker() -> TestBroker {
    let options = ServerOptions {
        quic: quic(),
        ..ServerOptions::default()
    };
    TestBroker::start_with(BrokerConfig::default(), options).await
}

/// A client named `name` whose UDP socket follows `faults`.
async fn faulty_client(broker: &TestBroker, name: &str, faults: &FaultControl) -> Client {
    broker
        .client_builder(name)
        .socket_layer(faults.layer())
        .quic_options(quic())
        .reconnect(quick_reconnect())
        .connect()
        .await
        .expect("client connects")
}

/// Subscribes and records every delivery and gap until the subscription ends.
async fn record(
    client: &Client,
    history: &History,
    filter: &str,
    promise: Promise,
) -> (SubscriptionRecorder, JoinHandle<()>) {
    let subscription = client
        .subscribe_with(filter, promise.subscribe_options())
        .await
        .expect("subscribe");
    let recorder = history.subscription(filter, promise);
    let task = recorder.spawn_reading(subscription);
    (recorder, task)
}

/// [`publish_for`] as publisher 0 on a task of its own; the task returns how many it published.
fn spawn_publishing(
    publisher: &Client,
    history: &History,
    topic: &'static str,
    rate: u32,
    time: Duration,
) -> JoinHandle<u64> {
    let (publisher, history) = (publisher.clone(), history.clone());
    tokio::spawn(async move { publish_for(&publisher, &history, 0, topic, rate, time).await })
}

/// Waits until `recorder` holds at least `count` distinct publishes.
async fn received(recorder: &SubscriptionRecorder, what: &str, count: usize) {
    eventually(what, || async {
        (recorder.distinct() >= count).then_some(())
    })
    .await;
}

#[tokio::test]
async fn random_loss_with_jitter_and_reordering_breaks_no_guarantee() {
    let seed = seed("random_loss_with_jitter_and_reordering_breaks_no_guarantee");
    let broker = broker().await;
    let history = History::default();
    let lossy = FaultPlan {
        seed,
        send_loss: 0.05,
        recv_loss: 0.05,
        jitter: Duration::from_millis(10),
        ..FaultPlan::default()
    };
    let sub_faults = FaultControl::new(lossy.clone());
    let subscriber = faulty_client(&broker, "subscriber", &sub_faults).await;
    let (reliable, _r) = record(&subscriber, &history, "lossy.>", Promise::AtLeastOnce).await;
    let (plain, _p) = record(&subscriber, &history, "lossy.*", Promise::AtMostOnce).await;
    let pub_faults = FaultControl::new(FaultPlan {
        seed: seed.wrapping_add(1),
        ..lossy
    });
    let publisher = faulty_client(&broker, "publisher", &pub_faults).await;

    publish_for(&publisher, &history, 0, "lossy.x", 200, load_time(6)).await;
    let acked = history.acked();
    assert!(acked > 0, "some publishes were acknowledged");
    received(
        &reliable,
        "every acknowledged publish, at least once",
        acked,
    )
    .await;
    received(&plain, "the at-most-once subscription catches up", acked).await;
    assert!(sub_faults.stats().dropped > 0, "the faults did happen");
    eprintln!(
        "faults: subscriber {:?}, publisher {:?}",
        sub_faults.stats(),
        pub_faults.stats()
    );
    history.check(seed).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_ten_second_partition_of_a_subscriber_loses_nothing_acknowledged() {
    let seed = seed("a_ten_second_partition_of_a_subscriber_loses_nothing_acknowledged");
    let broker = broker().await;
    let history = History::default();
    let faults = FaultControl::new(FaultPlan {
        seed,
        ..FaultPlan::default()
    });
    let subscriber = faulty_client(&broker, "subscriber", &faults).await;
    let (reliable, _r) = record(&subscriber, &history, "part.>", Promise::AtLeastOnce).await;
    let (_plain, _p) = record(&subscriber, &history, "part.*", Promise::AtMostOnce).await;
    let publisher = broker.client("publisher").await;

    let publishing = spawn_publishing(&publisher, &history, "part.x", 100, Duration::from_secs(14));
    tokio::time::sleep(Duration::from_secs(2)).await;
    faults.set_blackhole(true);
    within("the client notices the partition", async {
        let mut states = subscriber.state_changes();
        while !matches!(
            *states.borrow_and_update(),
            ConnectionState::Reconnecting { .. }
        ) {
            if states.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    faults.set_blackhole(false);
    within("publishing ends", publishing)
        .await
        .expect("publisher");

    received(
        &reliable,
        "every acknowledged publish after the partition",
        history.acked(),
    )
    .await;
    eprintln!("faults: subscriber {:?}", faults.stats());
    history.check(seed).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_partitioned_publisher_delivers_everything_the_broker_acknowledged() {
    let seed = seed("a_partitioned_publisher_delivers_everything_the_broker_acknowledged");
    let broker = broker().await;
    let history = History::default();
    let subscriber = broker.client("subscriber").await;
    let (reliable, _r) = record(&subscriber, &history, "pubpart.>", Promise::AtLeastOnce).await;
    let faults = FaultControl::new(FaultPlan {
        seed,
        ..FaultPlan::default()
    });
    let publisher = faulty_client(&broker, "publisher", &faults).await;

    let publishing = spawn_publishing(
        &publisher,
        &history,
        "pubpart.x",
        100,
        Duration::from_secs(8),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    faults.set_blackhole(true);
    tokio::time::sleep(Duration::from_secs(4)).await;
    faults.set_blackhole(false);
    let published = within("publishing ends", publishing)
        .await
        .expect("publisher");
    let acked = history.acked();
    assert!(
        (acked as u64) < published,
        "the partition cost some acknowledgements"
    );
    received(&reliable, "every acknowledged publish", acked).await;
    eprintln!("faults: publisher {:?}", faults.stats());
    history.check(seed).await;
    broker.stop().await;
}

#[tokio::test]
async fn moving_the_subscriber_to_a_new_address_every_second_loses_nothing_and_never_reconnects() {
    let seed = seed(
        "moving_the_subscriber_to_a_new_address_every_second_loses_nothing_and_never_reconnects",
    );
    let broker = broker().await;
    let history = History::default();
    let faults = FaultControl::new(FaultPlan {
        seed,
        jitter: Duration::from_millis(5),
        ..FaultPlan::default()
    });
    let subscriber = faulty_client(&broker, "roaming", &faults).await;
    let states = subscriber.state_changes();
    let (reliable, _r) = record(&subscriber, &history, "roam.>", Promise::AtLeastOnce).await;
    let (plain, _p) = record(&subscriber, &history, "roam.*", Promise::AtMostOnce).await;
    let publisher = broker.client("publisher").await;

    let time = load_time(6);
    let publishing = spawn_publishing(&publisher, &history, "roam.x", 200, time);
    let end = Instant::now() + time;
    let mut moves = 0;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_secs(1)).await;
        subscriber
            .rebind("127.0.0.1:0".parse().expect("addr"))
            .expect("rebind");
        moves += 1;
    }
    within("publishing ends", publishing)
        .await
        .expect("publisher");
    let acked = history.acked();
    received(&reliable, "every acknowledged publish", acked).await;
    received(&plain, "every publish, at most once", acked).await;
    assert!(moves >= 3);
    assert!(
        !states.has_changed().unwrap_or(true),
        "the connection state never changed: no reconnect"
    );
    eprintln!(
        "faults: {moves} address changes, subscriber {:?}",
        faults.stats()
    );
    history.check(seed).await;
    broker.stop().await;
}

#[tokio::test]
async fn two_hundred_clients_come_back_spread_out_after_a_broker_restart() {
    const CLIENTS: usize = 200;
    let broker = TestBroker::start().await;
    let mut clients = Vec::with_capacity(CLIENTS);
    for n in 0..CLIENTS {
        let client = broker
            .client_builder(&format!("herd-{n}"))
            .reconnect(ReconnectPolicy {
                enabled: true,
                initial_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(2),
                give_up_after: None,
            })
            .connect()
            .await
            .expect("connect");
        clients.push(client);
    }

    let restarting = Instant::now();
    let broker = broker.restart().await;
    let mut back_at = Vec::with_capacity(CLIENTS);
    let watchers: Vec<_> = clients
        .iter()
        .map(|client| {
            let mut states = client.state_changes();
            tokio::spawn(async move {
                let mut left = false;
                loop {
                    match &*states.borrow_and_update() {
                        ConnectionState::Connected { .. } if left => return Instant::now(),
                        ConnectionState::Connected { .. } => {}
                        _ => left = true,
                    }
                    if states.changed().await.is_err() {
                        return Instant::now();
                    }
                }
            })
        })
        .collect();
    let probe = broker.client("probe").await;
    for watcher in watchers {
        while !watcher.is_finished() {
            within(
                "the broker answers a ping during the reconnect storm",
                probe.ping(),
            )
            .await
            .expect("ping");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        back_at.push(within("a client is back", watcher).await.expect("watcher"));
    }
    broker
        .wait_for_stats("every client has a session again", |s| {
            s.connections == CLIENTS + 1
        })
        .await;
    let first = back_at.iter().min().copied().expect("clients");
    let last = back_at.iter().max().copied().expect("clients");
    assert!(
        first.duration_since(restarting) >= Duration::from_millis(1500),
        "nobody returned before the broker's reconnect hint (2 s)"
    );
    assert!(
        last.duration_since(first) >= Duration::from_millis(500),
        "jittered backoff spread the returns out over {:?}",
        last.duration_since(first)
    );
    broker.stop().await;
}
