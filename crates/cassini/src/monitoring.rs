//! `serve`'s monitoring endpoint: started when `monitor.enabled` (or `--monitor`), stopped
//! after the broker.

use std::net::SocketAddr;

use anyhow::Context;
use cassini_broker::BrokerHandle;
use cassini_monitor::{Monitor, MonitorSources, Readiness};
use cassini_quic::server::QuicServer;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// A running monitoring endpoint, or none.
pub(crate) struct Monitoring {
    readiness: Readiness,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl Monitoring {
    /// Starts the endpoint if the settings ask for it; logs its address
    /// (`monitoring endpoint addr=...`).
    pub(crate) async fn start(
        settings: &Settings,
        broker: &BrokerHandle,
        server: &QuicServer,
        listen: SocketAddr,
    ) -> anyhow::Result<Self> {
        let readiness = Readiness::default();
        if !settings.monitor.enabled {
            return Ok(Self {
                readiness,
                running: None,
            });
        }
        let sources = MonitorSources {
            broker: broker.clone(),
            accept: Some(server.stats()),
            listen: Some(listen),
            config: serde_json::to_value(settings).context("describing the configuration")?,
            readiness: readiness.clone(),
        };
        let monitor = Monitor::bind(settings.monitor.listen, sources).await?;
        tracing::info!(addr = %monitor.local_addr(), "monitoring endpoint");
        let stop = CancellationToken::new();
        let task = tokio::spawn(monitor.serve(stop.clone().cancelled_owned()));
        Ok(Self {
            readiness,
            running: Some((stop, task)),
        })
    }

    /// `/readyz` answers 200 from now on, or 503.
    pub(crate) fn set_ready(&self, ready: bool) {
        self.readiness.set(ready);
    }

    /// Stops the endpoint and waits for it.
    pub(crate) async fn stop(self) {
        if let Some((stop, task)) = self.running {
            stop.cancel();
            let _ = task.await;
        }
    }
}
