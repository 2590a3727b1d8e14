//! Failover after `kill -9`, measured from outside: three `cassini serve` processes form a
//! cluster on loopback (certificates made in a temporary directory), a publisher on one node
//! publishes a timestamped message every millisecond, and a subscriber receives them. The time
//! measured runs from the kill of the subscriber's node to the first message the subscriber
//! receives that was published after it, with every client and broker setting at its default.
//!
//! - [`measure`] (`bench cluster`): no Raft members; the subscriber is given every node's
//!   address (the node to kill first) and gets a new session on another node. The killed node
//!   is restarted between rounds.
//! - [`measure_sessions`] (`bench sessions`, issue #19): the nodes are Raft members
//!   (`--cluster-member`); the subscriber names its session, subscribes at least once and is
//!   given only its node's address: it finds the others in `Welcome` and must resume its
//!   session there (`resumed`, no `SessionLost`). Each round starts a new cluster.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, ConnectionState, Gap, Subscription, SubscriptionEvent};
use cassini_quic::certs::{init_dir, InitOptions};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::child::{free_udp_addr, ChildProcess, ScratchDir};

/// The topic the publisher stamps.
const TOPIC: &str = "bench.failover";
/// How long one round may take before it counts as failed.
const ROUND_TIMEOUT: Duration = Duration::from_secs(60);
/// Node names; the publisher stays on the middle one.
const NODES: [&str; 3] = ["n1", "n2", "n3"];
const PUBLISHER_NODE: usize = 1;

/// One `cassini serve` of the cluster.
struct Node {
    name: &'static str,
    client: SocketAddr,
    cluster: SocketAddr,
    process: Option<ChildProcess>,
}

impl Node {
    /// Starts the node; with `members`, every node of [`NODES`] a Raft member.
    fn start(&mut self, certs: &str, peers: &[SocketAddr], members: bool) -> anyhow::Result<()> {
        let (client, cluster) = (self.client.to_string(), self.cluster.to_string());
        let mut args = vec![
            "serve",
            "--listen",
            &client,
            "--certs",
            certs,
            "--cluster",
            "bench",
            "--node",
            self.name,
            "--cluster-listen",
            &cluster,
        ];
        let peers: Vec<String> = peers.iter().map(ToString::to_string).collect();
        for peer in &peers {
            args.extend(["--peer", peer.as_str()]);
        }
        if members {
            for name in NODES {
                args.extend(["--cluster-member", name]);
            }
        }
        self.process = Some(ChildProcess::start(&args, "cassini listening")?);
        Ok(())
    }
}

/// Microseconds since the Unix epoch, as the publisher stamps them.
fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
        })
}

fn stamp_of(payload: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(payload.get(..8)?.try_into().ok()?))
}

fn client(certs: &Path, name: &str, addresses: Vec<String>) -> cassini_client::ClientBuilder {
    Client::builder(addresses)
        .cert_dir(certs, name)
        .server_name("localhost")
}

/// Publishes a stamped message every millisecond until `stop`.
fn publish_every_millisecond(publisher: Client, stop: CancellationToken) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        while !stop.is_cancelled() {
            tick.tick().await;
            let payload = Bytes::copy_from_slice(&now_micros().to_be_bytes());
            // While a publish fails (it never should: this node stays up) keep the pace.
            let _ = publisher.publish(TOPIC, payload).await;
        }
    })
}

/// Waits for a message stamped at or after `since` (microseconds since the epoch).
async fn first_stamped_after(subscription: &mut Subscription, since: u64) -> anyhow::Result<()> {
    while let Some(message) = subscription.next().await {
        if stamp_of(message.payload()).is_some_and(|stamp| stamp >= since) {
            return Ok(());
        }
    }
    anyhow::bail!("the subscription ended")
}

/// Certificates for [`NODES`] and the bench's clients in a new temporary directory, and the
/// three nodes started there.
fn start_cluster(members: bool) -> anyhow::Result<(ScratchDir, Vec<Node>)> {
    let dir = ScratchDir::new()?;
    init_dir(
        dir.path(),
        &InitOptions {
            clients: vec!["publisher".into(), "subscriber".into()],
            nodes: NODES.iter().map(ToString::to_string).collect(),
            ..InitOptions::default()
        },
    )
    .context("bench certificates")?;
    let certs = dir.path().to_str().context("temporary directory path")?;
    let mut nodes = Vec::new();
    for name in NODES {
        nodes.push(Node {
            name,
            client: free_udp_addr()?,
            cluster: free_udp_addr()?,
            process: None,
        });
    }
    let peers: Vec<SocketAddr> = nodes.iter().map(|node| node.cluster).collect();
    for node in &mut nodes {
        node.start(certs, &peers, members)?;
    }
    Ok((dir, nodes))
}

/// Kills a subscriber's node `rounds` times and returns how long each subscriber took to
/// receive again on another node.
pub(crate) async fn measure(rounds: u32) -> anyhow::Result<Vec<Duration>> {
    let (dir, mut nodes) = start_cluster(false)?;
    let certs = dir.path().to_str().context("temporary directory path")?;
    let peers: Vec<SocketAddr> = nodes.iter().map(|node| node.cluster).collect();
    let publisher = client(
        dir.path(),
        "publisher",
        vec![nodes[PUBLISHER_NODE].client.to_string()],
    )
    .connect()
    .await
    .context("connecting the publisher")?;
    let stop = CancellationToken::new();
    let publishing = publish_every_millisecond(publisher.clone(), stop.clone());

    let mut times = Vec::new();
    for round in 0..rounds {
        let victim = if round % 2 == 0 { 0 } else { 2 };
        let survivor = 2 - victim;
        let addresses = [victim, survivor, PUBLISHER_NODE]
            .iter()
            .map(|&index| nodes[index].client.to_string())
            .collect();
        let measured = tokio::time::timeout(ROUND_TIMEOUT, async {
            let subscriber = client(dir.path(), "subscriber", addresses)
                .connect()
                .await
                .context("connecting the subscriber")?;
            let mut subscription = subscriber.subscribe(TOPIC).await?;
            // Interest has reached the publisher's node once a fresh message arrives.
            first_stamped_after(&mut subscription, now_micros()).await?;
            nodes[victim].process = None;
            let killed_at = (Instant::now(), now_micros());
            first_stamped_after(&mut subscription, killed_at.1).await?;
            let elapsed = killed_at.0.elapsed();
            let _ = subscriber.close().await;
            anyhow::Ok(elapsed)
        })
        .await
        .with_context(|| format!("failover round {round} took over {ROUND_TIMEOUT:?}"))??;
        tracing::info!(round, seconds = measured.as_secs_f64(), "failover measured");
        times.push(measured);
        nodes[victim].start(certs, &peers, false)?;
    }
    stop.cancel();
    let _ = publishing.await;
    let _ = publisher.close().await;
    Ok(times)
}

/// The session the subscriber of [`measure_sessions`] names.
const SESSION: &str = "bench-failover";

/// One round of [`measure_sessions`], each time from the kill.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionFailover {
    /// Until the client counted its connection lost.
    pub(crate) detected: Duration,
    /// Until the client was connected again, its session resumed.
    pub(crate) resumed: Duration,
    /// Until the first message published after the kill was delivered.
    pub(crate) delivering: Duration,
}

/// Kills a named session's node `rounds` times (node 1, then node 3, ...; node 1 made the
/// Raft group and is likely its leader), each on a new cluster of three members, and returns
/// how long the session took to deliver again on another node in each round where it was
/// resumed; `None` for a round where the client got a new session instead (`SessionLost`).
pub(crate) async fn measure_sessions(rounds: u32) -> anyhow::Result<Vec<Option<SessionFailover>>> {
    let mut times = Vec::new();
    for round in 0..rounds {
        let victim = if round % 2 == 0 { 0 } else { 2 };
        let measured = tokio::time::timeout(ROUND_TIMEOUT, session_round(victim))
            .await
            .with_context(|| format!("failover round {round} took over {ROUND_TIMEOUT:?}"))??;
        tracing::info!(round, ?measured, "named session failover measured");
        times.push(measured);
    }
    Ok(times)
}

/// One round of [`measure_sessions`]: kills node `victim` under its named session.
async fn session_round(victim: usize) -> anyhow::Result<Option<SessionFailover>> {
    let (dir, mut nodes) = start_cluster(true)?;
    let publisher = client(
        dir.path(),
        "publisher",
        vec![nodes[PUBLISHER_NODE].client.to_string()],
    )
    .connect()
    .await
    .context("connecting the publisher")?;
    let stop = CancellationToken::new();
    let publishing = publish_every_millisecond(publisher.clone(), stop.clone());
    let victim_addr = nodes[victim].client;
    // The claim is refused (NO_QUORUM) until the Raft group has its first leader.
    let subscriber = loop {
        let attempt = client(dir.path(), "subscriber", vec![victim_addr.to_string()])
            .session_name(SESSION)
            .connect()
            .await;
        match attempt {
            Ok(subscriber) => break subscriber,
            Err(err) => {
                tracing::debug!(%err, "the named session's claim refused; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    let mut subscription = subscriber.subscribe_at_least_once(TOPIC).await?;
    anyhow::ensure!(
        first_session_delivery_after(&mut subscription, now_micros()).await?,
        "the named session was lost before the kill"
    );
    let watching = watch_reconnect(&subscriber);
    nodes[victim].process = None;
    let killed_at = (Instant::now(), now_micros());
    let resumed = first_session_delivery_after(&mut subscription, killed_at.1).await?;
    let delivering = killed_at.0.elapsed();
    let (detected, reconnected) = watching.await.context("the state watcher")?;
    let since_kill = |at: Option<Instant>| {
        at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(killed_at.0)
        })
    };
    let state = subscriber.state();
    if resumed {
        anyhow::ensure!(
            matches!(state, ConnectionState::Connected { resumed: true, .. }),
            "the named session was not resumed on another node: {state}"
        );
        anyhow::ensure!(
            subscriber.remote_address() != victim_addr,
            "the subscriber is still on the killed node's address"
        );
    } else {
        tracing::warn!(%state, "the named session was lost (SessionLost), not resumed");
    }
    stop.cancel();
    let _ = publishing.await;
    let _ = subscriber.close().await;
    let _ = publisher.close().await;
    drop(nodes);
    Ok(resumed.then(|| SessionFailover {
        detected: since_kill(detected),
        resumed: since_kill(reconnected),
        delivering,
    }))
}

/// Notes when `client` counts its connection lost and when it is connected again after that
/// (or the client's state stops changing).
fn watch_reconnect(client: &Client) -> JoinHandle<(Option<Instant>, Option<Instant>)> {
    let mut changes = client.state_changes();
    tokio::spawn(async move {
        let mut lost = None;
        while changes.changed().await.is_ok() {
            let state = changes.borrow_and_update().clone();
            match state {
                ConnectionState::Reconnecting { .. } if lost.is_none() => {
                    lost = Some(Instant::now());
                }
                ConnectionState::Connected { .. } if lost.is_some() => {
                    return (lost, Some(Instant::now()));
                }
                _ => {}
            }
        }
        (lost, None)
    })
}

/// Waits for a message stamped at or after `since` (microseconds since the epoch): `true`
/// when it came, `false` as soon as the session was lost on the way (`SessionLost`).
async fn first_session_delivery_after(
    subscription: &mut Subscription,
    since: u64,
) -> anyhow::Result<bool> {
    while let Some(event) = subscription.next_event().await {
        match event {
            SubscriptionEvent::Message(message)
                if stamp_of(message.payload()).is_some_and(|stamp| stamp >= since) =>
            {
                return Ok(true)
            }
            SubscriptionEvent::Gap(Gap::SessionLost { .. }) => return Ok(false),
            _ => {}
        }
    }
    anyhow::bail!("the subscription ended: {:?}", subscription.end_reason())
}
