//! Mosquitto (any MQTT 3.1.1 broker, Cassini's MQTT gateway too) as a broker under test, through rumqttc over TLS with a
//! client certificate, at QoS 0 or 1, with TCP_NODELAY set (rumqttc leaves Nagle on by
//! default, which would add delay no other broker here pays).
//!
//! rumqttc hands every incoming packet to one event loop per connection; a task polls it and
//! routes each `Publish` to its subscription's bounded channel by topic, so a subscription that
//! is not read stops the event loop, and with it the TCP connection, as MQTT does. MQTT 3.1.1
//! has no request/reply. Topics use `/` where the scenarios write `.`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use cassini_bench::{BenchClient, BenchSubscription, Connector};
use rumqttc::{
    AsyncClient, ConnectReturnCode, Event, EventLoop, MqttOptions, Packet, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::PeerTarget;

/// How long connecting and subscribing may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects bench clients to an MQTT broker.
pub(crate) struct MqttConnector {
    target: PeerTarget,
    qos: QoS,
    /// How the reports name the broker.
    label: String,
    tls: Arc<rustls::ClientConfig>,
    host: String,
    port: u16,
}

impl MqttConnector {
    /// `label` names the broker in the reports; `None`: `mosquitto-qos0` or `mosquitto-qos1`.
    pub(crate) fn new(target: PeerTarget, qos: u8, label: Option<String>) -> anyhow::Result<Self> {
        let qos = match qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            other => anyhow::bail!("QoS {other} is not measured (0 or 1)"),
        };
        let label = label.unwrap_or_else(|| format!("mosquitto-qos{}", qos as u8));
        let (host, port) = target
            .server
            .rsplit_once(':')
            .context("--server must be HOST:PORT")?;
        let port = port.parse().context("--server port")?;
        let tls = Arc::new(tls_config(&target)?);
        Ok(Self {
            host: host.to_string(),
            port,
            target,
            qos,
            label,
            tls,
        })
    }
}

/// TLS with the client's certificate, trusting only the directory's CA (ring, like Cassini).
fn tls_config(target: &PeerTarget) -> anyhow::Result<rustls::ClientConfig> {
    use cassini_quic::tls::{load_certs, load_key};
    let (cert, key) = cassini_quic::certs::client_paths(&target.certs, &target.name);
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&target.certs.join("ca.crt"))? {
        roots.add(ca)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(&cert)?, load_key(&key)?)?)
}

#[async_trait]
impl Connector for MqttConnector {
    type Client = MqttClient;

    fn broker(&self) -> String {
        self.label.clone()
    }

    async fn connect(&self, name: &str) -> anyhow::Result<MqttClient> {
        static CONNECTIONS: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "{name}-{}-{}",
            std::process::id(),
            CONNECTIONS.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, self.host.as_str(), self.port);
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_clean_session(true)
            .set_max_packet_size(2 * 1024 * 1024, 2 * 1024 * 1024)
            .set_inflight(100)
            .set_request_channel_capacity(self.target.subscription_capacity)
            .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::clone(&self.tls),
            )));
        let (client, mut eventloop) = AsyncClient::new(options, self.target.subscription_capacity);
        eventloop.network_options.set_tcp_nodelay(true);
        let routes = Routes::default();
        let (connected_tx, mut connected) = watch::channel(None);
        let (acks_tx, acks) = watch::channel(0u64);
        let driver = tokio::spawn(drive(eventloop, routes.clone(), connected_tx, acks_tx));
        let ready = tokio::time::timeout(SETUP_TIMEOUT, connected.wait_for(Option::is_some))
            .await
            .context("no CONNACK in time")?;
        match ready.ok().and_then(|state| state.clone()) {
            Some(Ok(())) => {}
            Some(Err(reason)) => anyhow::bail!("connecting {name} to MQTT: {reason}"),
            None => anyhow::bail!("connecting {name} to MQTT: the event loop ended"),
        }
        Ok(MqttClient {
            client,
            qos: self.qos,
            routes,
            acks,
            capacity: self.target.subscription_capacity,
            _driver: Arc::new(DriverGuard(driver)),
        })
    }

    async fn serve_echo(
        &self,
        _topic: &str,
        _stop: CancellationToken,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>> {
        anyhow::bail!("MQTT 3.1.1 has no request/reply")
    }
}

/// Subscriptions by MQTT topic.
type Routes = Arc<Mutex<HashMap<String, mpsc::Sender<Bytes>>>>;

/// Polls the event loop: reports the CONNACK, counts SUBACKs, routes each publish.
async fn drive(
    mut eventloop: EventLoop,
    routes: Routes,
    connected: watch::Sender<Option<Result<(), String>>>,
    acks: watch::Sender<u64>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                let state = match ack.code {
                    ConnectReturnCode::Success => Ok(()),
                    refused => Err(format!("refused: {refused:?}")),
                };
                let _ = connected.send(Some(state));
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => acks.send_modify(|count| *count += 1),
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let route = routes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&publish.topic)
                    .cloned();
                if let Some(route) = route {
                    let _ = route.send(publish.payload).await;
                }
            }
            Ok(_) => {}
            Err(err) => {
                let _ = connected.send(Some(Err(err.to_string())));
                return;
            }
        }
    }
}

/// Stops the event loop when the last clone of its client goes.
struct DriverGuard(JoinHandle<()>);

impl Drop for DriverGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// One MQTT connection.
#[derive(Clone)]
pub(crate) struct MqttClient {
    client: AsyncClient,
    qos: QoS,
    routes: Routes,
    acks: watch::Receiver<u64>,
    capacity: usize,
    _driver: Arc<DriverGuard>,
}

fn mqtt_topic(topic: &str) -> String {
    topic.replace('.', "/")
}

#[async_trait]
impl BenchClient for MqttClient {
    type Subscription = MqttSubscription;

    fn publish(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> impl Future<Output = anyhow::Result<()>> + Send {
        let topic = mqtt_topic(topic);
        async move {
            Ok(self
                .client
                .publish_bytes(topic, self.qos, false, payload)
                .await?)
        }
    }

    async fn flush(&self) -> anyhow::Result<()> {
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> anyhow::Result<MqttSubscription> {
        let topic = mqtt_topic(topic);
        let (tx, rx) = mpsc::channel(self.capacity);
        self.routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(topic.clone(), tx);
        let mut acks = self.acks.clone();
        let before = *acks.borrow_and_update();
        self.client.subscribe(topic, self.qos).await?;
        tokio::time::timeout(SETUP_TIMEOUT, acks.wait_for(|count| *count > before))
            .await
            .context("no SUBACK in time")?
            .context("the event loop ended")?;
        Ok(MqttSubscription(rx))
    }

    async fn request(
        &self,
        _topic: &str,
        _payload: Bytes,
        _timeout: Duration,
    ) -> anyhow::Result<Bytes> {
        anyhow::bail!("MQTT 3.1.1 has no request/reply")
    }

    async fn close(&self) -> anyhow::Result<()> {
        Ok(self.client.disconnect().await?)
    }
}

/// One MQTT subscription.
pub(crate) struct MqttSubscription(mpsc::Receiver<Bytes>);

impl BenchSubscription for MqttSubscription {
    async fn next(&mut self) -> Option<Bytes> {
        self.0.recv().await
    }
}

#[cfg(test)]
mod tests {
    //! CI's tiny round of the rows `bench/peers.sh` measures against Cassini's MQTT gateway:
    //! throughput and latency at QoS 0 and 1, through this adapter, against a real broker and
    //! gateway with mutual TLS. It asserts that the scenarios run and lose nothing, never a
    //! speed.

    use cassini_bench::args::{LatencyArgs, OutputArgs, ThroughputArgs};
    use cassini_e2e::gateway::Gateway;

    use super::*;

    fn connector(gateway: &Gateway, qos: u8) -> MqttConnector {
        gateway.client_files("dev");
        let target = PeerTarget {
            server: format!("localhost:{}", gateway.addr.port()),
            certs: gateway.dir.path().to_path_buf(),
            name: "dev".into(),
            subscription_capacity: 1 << 16,
        };
        MqttConnector::new(target, qos, Some(format!("cassini-mqtt-qos{qos}")))
            .expect("MQTT connector")
    }

    #[tokio::test]
    async fn the_gateway_rows_run_a_tiny_round_at_qos_0_and_1() {
        let gateway = Gateway::start().await;
        for qos in [0, 1] {
            let connector = connector(&gateway, qos);
            let args = ThroughputArgs {
                count: 500,
                size: 64,
                output: OutputArgs { json: true },
            };
            let report = cassini_bench::throughput::run(&connector, &args)
                .await
                .expect("throughput runs")
                .to_json();
            assert_eq!(report["broker"], format!("cassini-mqtt-qos{qos}"));
            assert_eq!(report["lost"], 0, "throughput at QoS {qos}: {report}");
            let args = LatencyArgs {
                rate: 500,
                duration: 0.3,
                size: 64,
                warmup: 0.1,
                plot: None,
                output: OutputArgs { json: true },
            };
            let report = cassini_bench::latency::run(&connector, &args)
                .await
                .expect("latency runs")
                .to_json();
            assert_eq!(report["lost"], 0, "latency at QoS {qos}: {report}");
        }
    }
}
