//! A broker started inside the bench process on `127.0.0.1:0`, with a certificate authority
//! made in memory: a benchmark needs no files and leaves nothing behind.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cassini_broker::{Broker, BrokerConfig, BrokerHandle};
use cassini_client::{Client, ClientBuilder};
use cassini_protocol::ErrorCode;
use cassini_quic::certs::CertificateAuthority;
use cassini_quic::server::{QuicServer, ServerOptions};
use cassini_quic::tls;
use tokio::task::JoinHandle;

/// The in-process broker's configuration: the defaults, with the per-subscription queue cap
/// raised to 256 MiB (the `max_pending` NATS gets in `bench/peers.sh`), so a million 64-byte
/// messages fit in one subscription's queue when the subscriber falls behind.
pub(crate) fn bench_config() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.queue.max_bytes = config.queue.max_bytes.max(256 * 1024 * 1024);
    config
}

/// A running in-process broker.
pub(crate) struct EmbeddedBroker {
    addr: SocketAddr,
    ca: CertificateAuthority,
    broker: BrokerHandle,
    server: Arc<QuicServer>,
    serve_task: JoinHandle<()>,
}

impl EmbeddedBroker {
    pub(crate) async fn start(config: BrokerConfig) -> anyhow::Result<Self> {
        Self::start_with(config, ServerOptions::default()).await
    }

    /// Like [`EmbeddedBroker::start`], with the QUIC endpoint's options.
    pub(crate) async fn start_with(
        config: BrokerConfig,
        options: ServerOptions,
    ) -> anyhow::Result<Self> {
        let ca = CertificateAuthority::generate("Cassini Bench CA").context("bench CA")?;
        Self::start_under(ca, config, options).await
    }

    /// Like [`EmbeddedBroker::start_with`], with certificates issued by `ca` (the nodes of an
    /// in-process cluster share one).
    pub(crate) async fn start_under(
        ca: CertificateAuthority,
        config: BrokerConfig,
        options: ServerOptions,
    ) -> anyhow::Result<Self> {
        let server_cert = ca.issue_server(&[]).context("bench server certificate")?;
        let crypto = tls::server_crypto(
            vec![ca.cert_der().clone()],
            vec![server_cert.cert_der()?],
            server_cert.key_der()?,
        )?;
        let server = Arc::new(QuicServer::bind("127.0.0.1:0".parse()?, crypto, options)?);
        let addr = server.local_addr()?;
        let broker = Broker::start(config).await?;
        let serve_task = {
            let (server, broker) = (Arc::clone(&server), broker.clone());
            tokio::spawn(async move { server.serve(broker).await })
        };
        Ok(Self {
            addr,
            ca,
            broker,
            server,
            serve_task,
        })
    }

    /// A client builder with a fresh certificate named `name`.
    pub(crate) fn client(&self, name: &str) -> anyhow::Result<ClientBuilder> {
        let cert = self.ca.issue_client(name)?;
        Ok(Client::builder(self.addr)
            .ca_certs(vec![self.ca.cert_der().clone()])
            .identity(vec![cert.cert_der()?], cert.key_der()?)
            .server_name("localhost"))
    }

    /// The broker.
    pub(crate) fn broker(&self) -> &BrokerHandle {
        &self.broker
    }

    /// The transport facts of the first open connection of `identity`, if it has any.
    pub(crate) fn transport_of(&self, identity: &str) -> Option<cassini_broker::ConnectionStats> {
        self.broker
            .connections()
            .into_iter()
            .find(|connection| connection.identity == identity)
            .and_then(|connection| connection.transport)
    }

    pub(crate) async fn stop(self) {
        self.broker.shutdown("bench over").await;
        self.server
            .close(
                ErrorCode::SERVER_SHUTTING_DOWN,
                "bench over",
                std::time::Duration::from_secs(1),
            )
            .await;
        self.serve_task.abort();
    }
}
