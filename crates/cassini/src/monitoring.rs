//! `serve`'s monitoring endpoint: started when `monitor.enabled` (or `--monitor`), stopped
//! after the broker. With `monitor.token_file` it requires that bearer token (see
//! `cassini_monitor`); without one it warns when it listens beyond loopback.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use cassini_broker::BrokerHandle;
use cassini_monitor::{BearerToken, Monitor, MonitorSources, Readiness};
use cassini_mqtt::MqttServer;
use cassini_quic::revocation::CrlSource;
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
        crl: &Arc<CrlSource>,
        listen: SocketAddr,
        mqtt: Option<&MqttServer>,
    ) -> anyhow::Result<Self> {
        let readiness = Readiness::default();
        if !settings.monitor.enabled {
            return Ok(Self {
                readiness,
                running: None,
            });
        }
        let token_file = &settings.monitor.token_file;
        let token = if token_file.as_os_str().is_empty() {
            None
        } else {
            Some(BearerToken::from_file(token_file)?)
        };
        let protected = token.is_some();
        let sources = MonitorSources {
            broker: broker.clone(),
            accept: Some(server.stats()),
            mqtt: mqtt.map(|mqtt| mqtt.stats()),
            listen: Some(listen),
            config: serde_json::to_value(settings).context("describing the configuration")?,
            readiness: readiness.clone(),
            crl: Some(Arc::clone(crl)),
            token,
        };
        let monitor = Monitor::bind(settings.monitor.listen, sources).await?;
        let addr = monitor.local_addr();
        tracing::info!(%addr, token_required = protected, "monitoring endpoint");
        if !protected && !addr.ip().is_loopback() {
            tracing::warn!(
                %addr,
                "the monitoring endpoint listens beyond loopback with no token: anyone who can reach it \
                 sees every identity, address and filter (session ids are redacted); set \
                 monitor.token_file (--monitor-token-file)"
            );
        }
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
