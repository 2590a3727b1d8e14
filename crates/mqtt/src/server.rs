//! The gateway's listener: TCP, then TLS with a client certificate verified exactly as the QUIC
//! endpoint verifies it (the same CA, CRL and revocation options: the QUIC endpoint's client
//! certificate verifier and certificate, in a rustls configuration of the gateway's own that also
//! speaks TLS 1.2 unless [`MqttOptions::tls12`] is off, without ALPN), and the identity read by
//! the same rule. Plain TCP only when
//! [`MqttOptions::allow_plaintext_loopback`] is set and the listener is on a loopback address;
//! a plaintext client's identity is then [`PLAINTEXT_IDENTITY`].
//!
//! [`MqttServer::reload`] installs new TLS material and cuts off every live connection whose
//! certificate it no longer accepts, as `QuicServer::reload` does; sessions that a CRL's
//! certificates opened are ended broker-wide by `BrokerHandle::end_revoked_sessions`, MQTT ones
//! included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use cassini_broker::log_budget::{LogBudget, DEFAULT_LINES_PER_SECOND};
use cassini_broker::{BrokerHandle, PeerInfo};
use cassini_quic::identity::{identity_from_cert_with, IdentityRule};
use cassini_quic::revocation::{certificate_key, certificate_not_after, expiry};
use cassini_quic::tls::ServerTls;
use rustls::pki_types::CertificateDer;
use rustls::server::NoServerSessionStorage;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::options::OptionsTable;
use crate::session::{self, Context};
use crate::stats::MqttStats;
use crate::will::Wills;

/// The identity of every plaintext (loopback) client.
pub const PLAINTEXT_IDENTITY: &str = "mqtt-loopback";

/// How the gateway listens.
#[derive(Debug, Clone)]
pub struct MqttOptions {
    /// TCP address (port 0: any free port).
    pub listen: SocketAddr,
    /// Accept plain TCP (no TLS) too; only allowed on a loopback address.
    pub allow_plaintext_loopback: bool,
    /// Accept TLS 1.2 as well as TLS 1.3 (many MQTT devices and libraries speak only TLS 1.2;
    /// the QUIC endpoint needs 1.3). The cost: TLS 1.2's older handshake (no encrypted client
    /// certificate, one more round trip). Default: on, as in Mosquitto.
    pub tls12: bool,
    /// Which certificate name is the identity (the QUIC endpoint's rule).
    pub identity_rule: IdentityRule,
    /// How long a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client has to send `CONNECT` once connected.
    pub connect_timeout: Duration,
    /// The most connections that have not sent `CONNECT` yet (TLS handshake included), each of
    /// which may hold a read buffer of up to a packet for `connect_timeout`; a connection
    /// accepted beyond is closed at once. Default: 4,096.
    pub max_connecting: usize,
}

impl MqttOptions {
    /// Listening on `listen`, TLS 1.2 and 1.3 only, the default identity rule, 10 s for the
    /// handshake and for `CONNECT`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            allow_plaintext_loopback: false,
            tls12: true,
            identity_rule: IdentityRule::default(),
            handshake_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            max_connecting: 4096,
        }
    }
}

/// Why the gateway cannot start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// Plain TCP asked for on an address that is not loopback.
    #[error("mqtt.allow_plaintext_loopback needs a loopback listen address, not {0}")]
    PlaintextNotLoopback(SocketAddr),
    /// The TLS configuration could not be built from the broker's TLS material.
    #[error("the MQTT gateway's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding failed.
    #[error("binding the MQTT listener on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        error: std::io::Error,
    },
}

struct Live {
    chain: Vec<CertificateDer<'static>>,
    cut: CancellationToken,
}

/// A bound MQTT listener.
pub struct MqttServer {
    listener: TcpListener,
    options: MqttOptions,
    tls: RwLock<Arc<rustls::ServerConfig>>,
    live: Arc<Mutex<HashMap<u64, Live>>>,
    next_id: AtomicU64,
    stats: Arc<MqttStats>,
    wills: Wills,
    /// MQTT 5 subscription options kept per client id.
    sub_options: OptionsTable,
    tasks: TaskTracker,
    closing: CancellationToken,
    /// Places for connections that have not sent `CONNECT` yet (`MqttOptions::max_connecting`).
    connecting: Arc<Semaphore>,
}

impl std::fmt::Debug for MqttServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttServer")
            .field("listen", &self.listener.local_addr().ok())
            .finish()
    }
}

/// TLS 1.2 and 1.3: for a gateway with [`MqttOptions::tls12`].
static TLS12_AND_13: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];
/// TLS 1.3 only, as the QUIC endpoint.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The gateway's rustls configuration, built from the QUIC endpoint's material `tls`: the same
/// client certificate verifier (CA, CRL, revocation options) and the same certificate resolver,
/// TLS 1.2 too when `tls12`, no ALPN, and, like the QUIC endpoint, no session resumption (a
/// resumed session would skip the verifier, letting a revoked client back in) nor early data.
fn mqtt_tls(tls: &ServerTls, tls12: bool) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let versions = if tls12 { TLS12_AND_13 } else { TLS13_ONLY };
    let mut config =
        rustls::ServerConfig::builder_with_provider(Arc::clone(tls.config.crypto_provider()))
            .with_protocol_versions(versions)?
            .with_client_cert_verifier(Arc::clone(&tls.verifier))
            .with_cert_resolver(Arc::clone(&tls.config.cert_resolver));
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

impl MqttServer {
    /// Binds the listener; `tls` is the broker's TLS material (the QUIC endpoint's).
    pub async fn bind(options: MqttOptions, tls: &ServerTls) -> Result<Self, MqttError> {
        let connecting = Arc::new(Semaphore::new(options.max_connecting.max(1)));
        if options.allow_plaintext_loopback && !options.listen.ip().is_loopback() {
            return Err(MqttError::PlaintextNotLoopback(options.listen));
        }
        let config = mqtt_tls(tls, options.tls12)?;
        let listener =
            TcpListener::bind(options.listen)
                .await
                .map_err(|error| MqttError::Bind {
                    addr: options.listen,
                    error,
                })?;
        let stats = Arc::<MqttStats>::default();
        let closing = CancellationToken::new();
        Ok(Self {
            listener,
            options,
            tls: RwLock::new(config),
            live: Arc::default(),
            next_id: AtomicU64::new(0),
            wills: Wills::new(
                Arc::clone(&stats),
                Arc::clone(&tls.revoked),
                closing.clone(),
            ),
            stats,
            sub_options: OptionsTable::default(),
            tasks: TaskTracker::new(),
            closing,
            connecting,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The gateway's counters.
    pub fn stats(&self) -> Arc<MqttStats> {
        Arc::clone(&self.stats)
    }

    /// Installs new TLS material for new connections, and cuts off every live TLS connection
    /// whose certificate chain `tls` no longer accepts. Returns how many were cut off.
    pub fn reload(&self, tls: &ServerTls) -> usize {
        match mqtt_tls(tls, self.options.tls12) {
            Ok(config) => {
                if let Ok(mut slot) = self.tls.write() {
                    *slot = config;
                }
            }
            // The same material built the QUIC endpoint's configuration: not expected.
            Err(err) => tracing::error!(%err, "MQTT TLS configuration not reloaded"),
        }
        // Before any connection is cut: the wills of revoked certificates are never published.
        self.wills.set_revoked(Arc::clone(&tls.revoked));
        let Ok(live) = self.live.lock() else {
            return 0;
        };
        let mut cut = 0;
        for connection in live.values() {
            if connection.chain.is_empty() {
                continue;
            }
            if let Err(err) = tls.verify_client(&connection.chain) {
                tracing::info!(%err, "MQTT connection's certificate no longer accepted: closing it");
                connection.cut.cancel();
                cut += 1;
            }
        }
        cut
    }

    /// Accepts connections and serves them with `broker` until [`MqttServer::close`].
    pub async fn serve(&self, broker: BrokerHandle) {
        // What the broker's store kept for MQTT clients (disk mode), before any client is in.
        self.sub_options.restore(&broker);
        self.wills.restore(&broker);
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                () = self.closing.cancelled() => return,
            };
            let (stream, remote) = match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "MQTT accept failed");
                    // Out of file descriptors and the like: let it pass rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(connecting) = Arc::clone(&self.connecting).try_acquire_owned() else {
                self.stats.refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%remote, "MQTT connection closed: too many connections have not sent CONNECT yet");
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let cut = self.closing.child_token();
            let context = Context {
                broker: broker.clone(),
                connect_timeout: self.options.connect_timeout,
                cut: cut.clone(),
                wills: self.wills.clone(),
                sub_options: self.sub_options.clone(),
                connecting: Arc::new(std::sync::Mutex::new(Some(connecting))),
            };
            let acceptor = TlsAcceptor::from(
                self.tls
                    .read()
                    .map(|tls| Arc::clone(&tls))
                    .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner())),
            );
            let options = self.options.clone();
            let live = Arc::clone(&self.live);
            let stats = Arc::clone(&self.stats);
            self.tasks.spawn(async move {
                connection(stream, remote, id, acceptor, options, context, live, stats).await;
            });
        }
    }

    /// Stops accepting, cuts off every connection (MQTT 5 clients get `DISCONNECT` with the
    /// reason), and waits at most `limit` for them to end.
    pub async fn close(&self, limit: Duration) {
        self.closing.cancel();
        self.tasks.close();
        let _ = tokio::time::timeout(limit, self.tasks.wait()).await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    id: u64,
    acceptor: TlsAcceptor,
    options: MqttOptions,
    context: Context,
    live: Arc<Mutex<HashMap<u64, Live>>>,
    stats: Arc<MqttStats>,
) {
    let plaintext = options.allow_plaintext_loopback && {
        // A TLS connection starts with a handshake record (0x16); MQTT with CONNECT (0x10).
        let mut first = [0u8; 1];
        matches!(
            tokio::time::timeout(options.handshake_timeout, stream.peek(&mut first)).await,
            Ok(Ok(1))
        ) && first[0] != 0x16
    };
    if plaintext {
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let peer = PeerInfo {
            identity: Arc::from(PLAINTEXT_IDENTITY),
            remote_addr: remote,
            certificate: None,
        };
        run(stream, peer, id, Vec::new(), context, live, stats).await;
        return;
    }
    static REFUSED: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
    let tls = match tokio::time::timeout(options.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = REFUSED.admit() {
                tracing::info!(%remote, %err, suppressed, "MQTT TLS handshake refused");
            }
            context
                .broker
                .report_authentication_failure(remote, "tls", &err.to_string());
            return;
        }
        Err(_) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            if let Some(suppressed) = REFUSED.admit() {
                tracing::info!(%remote, suppressed, "MQTT TLS handshake not completed in time");
            }
            context.broker.report_authentication_failure(
                remote,
                "timeout",
                "the TLS handshake was not completed in time",
            );
            return;
        }
    };
    let chain: Vec<CertificateDer<'static>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|chain| chain.iter().map(|cert| cert.clone().into_owned()).collect())
        .unwrap_or_default();
    let identity = chain
        .first()
        .ok_or_else(|| "no client certificate".to_string())
        .and_then(|leaf| {
            identity_from_cert_with(leaf, &options.identity_rule).map_err(|err| err.to_string())
        });
    let identity = match identity {
        Ok(identity) => identity,
        Err(reason) => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            tracing::info!(%remote, %reason, "MQTT client refused: no identity in its certificate");
            context
                .broker
                .report_authentication_failure(remote, "no_identity", &reason);
            return;
        }
    };
    stats.accepted.fetch_add(1, Ordering::Relaxed);
    let peer = PeerInfo {
        identity: Arc::from(identity),
        remote_addr: remote,
        certificate: chain.first().and_then(certificate_key).map(Arc::from),
    };
    run(tls, peer, id, chain, context, live, stats).await;
}

async fn run<S>(
    io: S,
    peer: PeerInfo,
    id: u64,
    chain: Vec<CertificateDer<'static>>,
    context: Context,
    live: Arc<Mutex<HashMap<u64, Live>>>,
    stats: Arc<MqttStats>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    // A certificate that expires while connected cuts the connection off, as on QUIC.
    if let Some(not_after) = chain.first().and_then(certificate_not_after) {
        let cut = context.cut.clone();
        let identity = Arc::clone(&peer.identity);
        tokio::spawn(async move {
            tokio::select! {
                () = cut.cancelled() => {}
                () = expiry(Some(not_after)) => {
                    tracing::info!(%identity, "closing an MQTT connection: its client certificate expired");
                    cut.cancel();
                }
            }
        });
    }
    if let Ok(mut live) = live.lock() {
        live.insert(
            id,
            Live {
                chain,
                cut: context.cut.clone(),
            },
        );
    }
    stats.open.fetch_add(1, Ordering::Relaxed);
    // This connection's own token: cancelled once it is over, so the expiry timer ends too.
    let over = context.cut.clone();
    session::serve(io, peer, context).await;
    over.cancel();
    stats.open.fetch_sub(1, Ordering::Relaxed);
    if let Ok(mut live) = live.lock() {
        live.remove(&id);
    }
}
