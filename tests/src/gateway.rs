//! A broker with its MQTT gateway (`cassini_mqtt`) on `127.0.0.1:0`, and a directory holding
//! the CA and client certificates in the layout of `cassini certs init` (`ca.crt`,
//! `client-NAME.crt`, `client-NAME.key`), for the MQTT clients of a test: mosquitto's, paho's,
//! or the benchmark's rumqttc.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_mqtt::{MqttOptions, MqttServer};
use cassini_quic::server::ServerOptions;
use cassini_quic::tls;

use crate::{eventually, identity_of, Pki, TestBroker};

/// A broker with the MQTT gateway, and the certificate files of its clients.
pub struct Gateway {
    /// The broker (and its QUIC endpoint).
    pub broker: TestBroker,
    /// The MQTT listener.
    pub mqtt: Arc<MqttServer>,
    /// Where the MQTT listener listens.
    pub addr: SocketAddr,
    /// `ca.crt` and the client certificates written so far.
    pub dir: tempfile::TempDir,
}

impl Gateway {
    /// Default configuration, TLS only.
    pub async fn start() -> Self {
        Self::start_with(BrokerConfig::default(), false).await
    }

    /// A broker with `config`; `plaintext` also accepts plain TCP (loopback).
    pub async fn start_with(config: BrokerConfig, plaintext: bool) -> Self {
        let broker = TestBroker::start_with(config, ServerOptions::default()).await;
        let options = MqttOptions {
            allow_plaintext_loopback: plaintext,
            ..MqttOptions::new("127.0.0.1:0".parse().expect("addr"))
        };
        Self::serve(broker, options, tempfile::tempdir().expect("temp dir")).await
    }

    /// Default configuration, a gateway with `options` (its `listen` is replaced by
    /// `127.0.0.1:0`).
    pub async fn start_with_options(options: MqttOptions) -> Self {
        Self::start_configured(BrokerConfig::default(), options).await
    }

    /// A broker with `config`, a gateway with `options` (its `listen` is replaced by
    /// `127.0.0.1:0`).
    pub async fn start_configured(config: BrokerConfig, options: MqttOptions) -> Self {
        let broker = TestBroker::start_with(config, ServerOptions::default()).await;
        let options = MqttOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            ..options
        };
        Self::serve(broker, options, tempfile::tempdir().expect("temp dir")).await
    }

    /// Stops the broker and the gateway and starts both again with `config` (same
    /// certificates and certificate files; the gateway on a new port).
    pub async fn restart_with(self, config: BrokerConfig) -> Self {
        self.mqtt.close(Duration::from_secs(3)).await;
        let broker = self.broker.restart_with(config).await;
        let options = MqttOptions::new("127.0.0.1:0".parse().expect("addr"));
        Self::serve(broker, options, self.dir).await
    }

    /// Stops the broker first (its connections, the gateway's included, are closed with
    /// `SERVER_SHUTTING_DOWN`), then the gateway, and starts both again with `config`: to the
    /// gateway's clients, as if the broker had stopped under them.
    pub async fn restart_broker_first(self, config: BrokerConfig) -> Self {
        let broker = self.broker.restart_with(config).await;
        self.mqtt.close(Duration::from_secs(3)).await;
        let options = MqttOptions::new("127.0.0.1:0".parse().expect("addr"));
        Self::serve(broker, options, self.dir).await
    }

    async fn serve(broker: TestBroker, options: MqttOptions, dir: tempfile::TempDir) -> Self {
        let (chain, key) = identity_of(&broker.pki.server);
        let crypto = tls::ServerTls::build(
            broker.pki.ca_certs(),
            chain,
            key,
            Vec::new(),
            tls::RevocationOptions::default(),
        )
        .expect("server TLS");
        let mqtt = Arc::new(
            MqttServer::bind(options, &crypto)
                .await
                .expect("MQTT binds"),
        );
        let addr = mqtt.local_addr().expect("MQTT address");
        let serving = Arc::clone(&mqtt);
        let handle = broker.broker.clone();
        tokio::spawn(async move { serving.serve(handle).await });
        std::fs::write(dir.path().join("ca.crt"), broker.pki.ca.cert_pem()).expect("ca.crt");
        Self {
            broker,
            mqtt,
            addr,
            dir,
        }
    }

    /// The certificate and key files of client `name`, issued by `pki`: written on the first
    /// call, the same files afterwards.
    pub fn client_files_from(&self, pki: &Pki, name: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = cassini_quic::certs::client_paths(self.dir.path(), name);
        if !cert.exists() {
            pki.client(name)
                .write(&cert, &key)
                .expect("client certificate");
        }
        (cert, key)
    }

    /// The certificate and key files of client `name`, issued by the broker's CA.
    pub fn client_files(&self, name: &str) -> (PathBuf, PathBuf) {
        self.client_files_from(&self.broker.pki, name)
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// Waits until the broker holds a subscription to the Cassini filter `filter`.
    pub async fn wait_subscribed(&self, filter: &str) {
        self.wait_subscriptions(filter, |count| count > 0).await;
    }

    /// Waits until no subscription to the Cassini filter `filter` is left.
    pub async fn wait_unsubscribed(&self, filter: &str) {
        self.wait_subscriptions(filter, |count| count == 0).await;
    }

    /// Waits until the number of subscriptions to `filter` satisfies `wanted`.
    pub async fn wait_subscriptions(&self, filter: &str, wanted: impl Fn(usize) -> bool) {
        eventually(&format!("the subscriptions to {filter}"), || async {
            let count = self
                .broker
                .broker
                .subscriptions()
                .iter()
                .filter(|sub| sub.filter == filter)
                .count();
            wanted(count).then_some(())
        })
        .await;
    }
}

/// An MQTT 5 `CONNECT` for client id `id` (at most 100 bytes) with a 60 s keep-alive, for raw
/// TCP clients.
pub fn connect_v5(id: &str) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 60, 0];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id.as_bytes());
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend(body);
    packet
}
