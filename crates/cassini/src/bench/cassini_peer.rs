//! Cassini as a broker under test: the `cassini-bench` client interface over `cassini-client`,
//! against the in-process broker or (with `--server`) a broker running elsewhere.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use cassini_bench::{answer_until_stopped, BenchClient, BenchSubscription, Connector};
use cassini_client::{Client, ClientBuilder, Subscription};
use cassini_protocol::SubscribeOptions;
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::embedded::{bench_config, EmbeddedBroker};
use super::local_cluster::{LocalCluster, Placement};
use crate::cli::BenchTarget;

/// Where the broker under test is.
enum Broker {
    /// Started by this process; stopped by [`CassiniConnector::stop`].
    Embedded(Box<EmbeddedBroker>),
    /// Reached at an address, with the certificates of a directory.
    External(BenchTarget),
    /// A node of an in-process cluster, chosen per client by the placement; the cluster is
    /// stopped by its owner.
    Cluster(Arc<LocalCluster>, Placement),
}

/// Connects bench clients to a Cassini broker.
pub(crate) struct CassiniConnector {
    broker: Broker,
    /// Options of every subscription the scenario makes.
    options: SubscribeOptions,
    /// The client's delivery channel per subscription, in messages.
    subscription_buffer: usize,
}

/// More than the broker counts per queued message besides its payload (the message's struct,
/// its topic and bookkeeping: `PublishedMessage::memory_size`), for sizing a run's queues.
const QUEUED_MESSAGE_OVERHEAD: u64 = 512;

impl CassiniConnector {
    /// The broker `target` names, or a new in-process broker when it names none.
    pub(crate) async fn start(target: &BenchTarget) -> anyhow::Result<Self> {
        let broker = match &target.server {
            None => Broker::Embedded(Box::new(EmbeddedBroker::start(bench_config()).await?)),
            Some(_) => Broker::External(target.clone()),
        };
        Ok(Self {
            broker,
            options: SubscribeOptions::default(),
            subscription_buffer: 1024,
        })
    }

    /// Clients of `cluster`'s nodes, each placed by `placement`.
    pub(crate) fn on_cluster(cluster: Arc<LocalCluster>, placement: Placement) -> Self {
        Self {
            broker: Broker::Cluster(cluster, placement),
            options: SubscribeOptions::default(),
            subscription_buffer: 1024,
        }
    }

    /// Sizes every subscription's broker queue for `messages` of `size` payload bytes (each
    /// counted with its topic and per-message overhead, as the broker counts it), within the
    /// broker's caps, so a counting run measures the cost of falling behind rather than
    /// drops; drops are still counted.
    pub(crate) fn queue_for(mut self, messages: u64, size: usize) -> Self {
        let per_message = u64::try_from(size)
            .unwrap_or(u64::MAX)
            .saturating_add(QUEUED_MESSAGE_OVERHEAD);
        self.options.max_queued_messages = Some(u32::try_from(messages).unwrap_or(u32::MAX));
        self.options.max_queued_bytes = Some(messages.saturating_mul(per_message));
        self
    }

    /// Sets the client's delivery channel per subscription, in messages.
    pub(crate) fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages;
        self
    }

    /// A connected client, as a plain `cassini-client` [`Client`].
    pub(crate) async fn client(&self, name: &str) -> anyhow::Result<Client> {
        self.builder(name)?
            .subscription_buffer(self.subscription_buffer)
            .client_name(name)
            .connect()
            .await
            .with_context(|| format!("connecting {name}"))
    }

    fn builder(&self, name: &str) -> anyhow::Result<ClientBuilder> {
        Ok(match &self.broker {
            Broker::Embedded(broker) => broker.client(name)?,
            Broker::Cluster(cluster, placement) => {
                cluster.client(placement.node_for(name), name)?
            }
            Broker::External(target) => {
                let server = target.server.as_deref().unwrap_or_default();
                Client::builder(server)
                    .cert_dir(&target.certs, &target.name)
                    .server_name(
                        target
                            .server_name
                            .clone()
                            .unwrap_or_else(|| crate::context::default_server_name(server)),
                    )
            }
        })
    }

    /// Stops the in-process broker, if this connector started one.
    pub(crate) async fn stop(self) {
        if let Broker::Embedded(broker) = self.broker {
            broker.stop().await;
        }
    }
}

#[async_trait]
impl Connector for CassiniConnector {
    type Client = CassiniClient;

    fn broker(&self) -> String {
        match &self.broker {
            Broker::Embedded(_) => "cassini (in-process)".to_string(),
            Broker::External(_) => "cassini".to_string(),
            Broker::Cluster(cluster, placement) => {
                format!("cassini ({}-node cluster, {placement})", cluster.len())
            }
        }
    }

    async fn connect(&self, name: &str) -> anyhow::Result<CassiniClient> {
        Ok(CassiniClient {
            client: self.client(name).await?,
            options: self.options.clone(),
        })
    }

    async fn serve_echo(
        &self,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
        let client = self.client("bench-responder").await?;
        let mut responder = client.serve(topic).await?;
        Ok(tokio::spawn(async move {
            let served = answer_until_stopped(&mut responder, &stop, |request| async move {
                request.respond(request.payload().clone()).await?;
                Ok(true)
            })
            .await?;
            drop(responder);
            let _ = client.close().await;
            Ok(served)
        }))
    }
}

/// One Cassini connection.
#[derive(Clone)]
pub(crate) struct CassiniClient {
    client: Client,
    options: SubscribeOptions,
}

#[async_trait]
impl BenchClient for CassiniClient {
    type Subscription = CassiniSubscription;

    // Not `async fn`: `#[async_trait]` on this impl would box it (see the trait).
    #[allow(clippy::manual_async_fn)]
    fn publish(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        async move { Ok(self.client.publish(topic, payload).await?) }
    }

    async fn flush(&self) -> anyhow::Result<()> {
        // A publish returns once its lane has the frame; QUIC sends it without further help.
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> anyhow::Result<CassiniSubscription> {
        Ok(CassiniSubscription(
            self.client
                .subscribe_with(topic, self.options.clone())
                .await?,
        ))
    }

    async fn request(
        &self,
        topic: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        Ok(self
            .client
            .request(topic, payload, timeout)
            .await?
            .into_payload())
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.client.close().await?)
    }
}

impl CassiniClient {
    /// A bench client over `client` whose subscriptions are made with `options`.
    pub(crate) fn new(client: Client, options: SubscribeOptions) -> Self {
        Self { client, options }
    }

    /// Subscribes with `options` instead of this client's own.
    pub(crate) async fn subscribe_with(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> anyhow::Result<CassiniSubscription> {
        Ok(CassiniSubscription(
            self.client.subscribe_with(topic, options).await?,
        ))
    }
}

/// One Cassini subscription.
pub(crate) struct CassiniSubscription(Subscription);

impl BenchSubscription for CassiniSubscription {
    async fn next(&mut self) -> Option<Bytes> {
        self.0.next().await.map(|message| message.into_payload())
    }
}
