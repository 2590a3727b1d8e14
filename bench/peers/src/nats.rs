//! NATS as a broker under test, through async-nats over TLS with a client certificate (or in
//! plain text with `--plain`, for the reference figure the performance goals name).
//!
//! async-nats buffers publishes in the client; [`BenchClient::flush`] waits until the server has
//! seen them (a PING/PONG). A subscription is in place at the server once a flush after the SUB
//! returns. Subscriptions buffer up to `--subscription-capacity` messages in the client and drop
//! beyond that: a dropped message shows as lost.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use cassini_bench::{answer_until_stopped, BenchClient, BenchSubscription, Connector};
use futures_util::StreamExt;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::PeerTarget;

/// Connects bench clients to a NATS server.
pub(crate) struct NatsConnector {
    target: PeerTarget,
    /// Without TLS.
    plain: bool,
}

impl NatsConnector {
    pub(crate) fn new(target: PeerTarget, plain: bool) -> Self {
        Self { target, plain }
    }

    async fn client(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .subscription_capacity(self.target.subscription_capacity)
            .request_timeout(Some(Duration::from_secs(5)));
        let url = if self.plain {
            format!("nats://{}", self.target.server)
        } else {
            let (cert, key) = self.identity();
            options = options
                .require_tls(true)
                .add_root_certificates(self.target.certs.join("ca.crt"))
                .add_client_certificate(cert, key);
            format!("tls://{}", self.target.server)
        };
        options
            .connect(url.as_str())
            .await
            .with_context(|| format!("connecting {name} to NATS at {url}"))
    }

    fn identity(&self) -> (PathBuf, PathBuf) {
        cassini_quic::certs::client_paths(&self.target.certs, &self.target.name)
    }
}

#[async_trait]
impl Connector for NatsConnector {
    type Client = NatsClient;

    fn broker(&self) -> String {
        if self.plain { "nats-plain" } else { "nats" }.to_string()
    }

    async fn connect(&self, name: &str) -> anyhow::Result<NatsClient> {
        Ok(NatsClient(self.client(name).await?))
    }

    async fn serve_echo(
        &self,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
        let client = self.client("bench-responder").await?;
        let mut requests = client.subscribe(topic.to_string()).await?;
        client.flush().await?;
        Ok(tokio::spawn(async move {
            let served = answer_until_stopped(&mut requests, &stop, |request| {
                let client = &client;
                async move {
                    let Some(reply) = request.reply else {
                        return Ok(false);
                    };
                    client.publish(reply, request.payload).await?;
                    Ok(true)
                }
            })
            .await?;
            let _ = client.drain().await;
            Ok(served)
        }))
    }
}

/// One NATS connection.
#[derive(Clone)]
pub(crate) struct NatsClient(async_nats::Client);

#[async_trait]
impl BenchClient for NatsClient {
    type Subscription = NatsSubscription;

    fn publish(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let topic = topic.to_string();
        async move { Ok(self.0.publish(topic, payload).await?) }
    }

    async fn flush(&self) -> anyhow::Result<()> {
        Ok(self.0.flush().await?)
    }

    async fn subscribe(&self, topic: &str) -> anyhow::Result<NatsSubscription> {
        let subscriber = self.0.subscribe(topic.to_string()).await?;
        self.0.flush().await?;
        Ok(NatsSubscription(subscriber))
    }

    async fn request(
        &self,
        topic: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        let reply = tokio::time::timeout(timeout, self.0.request(topic.to_string(), payload))
            .await
            .context("no reply in time")??;
        Ok(reply.payload)
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.0.drain().await?)
    }
}

/// One NATS subscription.
pub(crate) struct NatsSubscription(async_nats::Subscriber);

impl BenchSubscription for NatsSubscription {
    async fn next(&mut self) -> Option<Bytes> {
        self.0.next().await.map(|message| message.payload)
    }
}
