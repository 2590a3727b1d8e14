//! The broker side of the QUIC transport (feature `server`).
//!
//! [`QuicServer`] binds the endpoint, validates client addresses with a QUIC Retry when told to
//! ([`AddressValidation`]), completes each handshake under a deadline, reads the client's
//! identity from its certificate (by the configured [`IdentityRule`]) and hands the connection
//! to the broker as an `Arc<dyn cassini_broker::Connection>`. It keeps each live connection's
//! certificate chain so that [`QuicServer::reload`] can install new TLS material for new
//! connections and close every live connection whose certificate the new material refuses. [`QuicConnection`] and the stream wrappers are the
//! only place quinn meets the broker: they translate quinn's streams and errors to the broker's
//! transport interface and never interpret frames.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cassini_broker::log_budget::{LogBudget, DEFAULT_LINES_PER_SECOND};
use cassini_broker::transport::BiStream;
use cassini_broker::{
    BrokerHandle, Connection, ConnectionStats, PeerInfo, RecvStream, SendStream, TransportError,
};
use cassini_protocol::ErrorCode;
use quinn::VarInt;
use rustls_pki_types::CertificateDer;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::live::LiveConnections;
pub use self::live::ReloadReport;
pub use self::stats::{AcceptStats, HandshakeFailure};
use self::stream_limit::BidiStreamLimit;
use crate::certs::CertPaths;
use crate::endpoint::{bind_server, EndpointError, SocketBuffers};
use crate::identity::{identity_from_cert_with, peer_chain, IdentityRule};
use crate::revocation::certificate_key;
pub use crate::tls::ServerTls;
use crate::tls::{self, QuicOptions, RevocationOptions, TlsError};

/// Most bytes taken from quinn in one read; bounds a stream's read buffer to one frame plus this.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// When a new client must prove its address with a QUIC Retry round trip before the broker
/// spends a handshake on it. A Retry costs every affected client one extra round trip; it stops
/// a spoofed source address from making the broker do TLS work or send data to a victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AddressValidation {
    /// Never send a Retry.
    Never,
    /// Send a Retry while at least [`ServerOptions::busy_handshakes`] handshakes are in
    /// progress (the default).
    #[default]
    UnderLoad,
    /// Send a Retry to every client whose address is not validated yet.
    Always,
}

impl std::str::FromStr for AddressValidation {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "never" => Ok(Self::Never),
            "under-load" => Ok(Self::UnderLoad),
            "always" => Ok(Self::Always),
            other => Err(format!(
                "unknown address validation {other:?}: expected never, under-load or always"
            )),
        }
    }
}

/// How the server endpoint behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// QUIC transport knobs. Default: [`QuicOptions::broker`].
    pub quic: QuicOptions,
    /// How long a client has to complete the TLS handshake; a client that has not is dropped
    /// (it never reaches the broker). Default: 10 s.
    pub handshake_timeout: Duration,
    /// Which certificate name is the client's identity. Default: URI SAN, DNS SAN, then CN.
    pub identity_rule: IdentityRule,
    /// When to send QUIC Retry packets. Default: [`AddressValidation::UnderLoad`].
    pub address_validation: AddressValidation,
    /// Handshakes in progress from which [`AddressValidation::UnderLoad`] sends Retries.
    /// Default: 256.
    pub busy_handshakes: usize,
    /// Most connection attempts quinn queues before the accept loop takes them; further ones
    /// are refused. Each costs its first packets' memory. Default: 4,096.
    pub max_incoming: usize,
    /// Most bytes quinn buffers for one connection attempt not yet accepted. Default: 64 KiB.
    pub incoming_buffer_bytes: u64,
    /// Most bytes quinn buffers for all connection attempts not yet accepted. Default: 32 MiB.
    pub incoming_buffer_total_bytes: u64,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            quic: QuicOptions::broker(),
            handshake_timeout: Duration::from_secs(10),
            identity_rule: IdentityRule::default(),
            address_validation: AddressValidation::default(),
            busy_handshakes: 256,
            max_incoming: 4096,
            incoming_buffer_bytes: 64 * 1024,
            incoming_buffer_total_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Loading or building the TLS configuration failed.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// Binding the endpoint failed.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
}

/// Loads the server's TLS material from a certificate directory (`ca.crt`, `server.crt`,
/// `server.key`): clients must present a certificate signed by `ca.crt`. `crl.pem` is ignored;
/// see [`server_tls_from_dir`].
pub fn server_crypto_from_dir(dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let paths = CertPaths::in_dir(dir);
    tls::server_crypto(
        tls::load_certs(&paths.ca)?,
        tls::load_certs(&paths.server_cert)?,
        tls::load_key(&paths.server_key)?,
    )
}

/// Loads the server's TLS material from a certificate directory: `ca.crt`, `server.crt`,
/// `server.key`, and `crl.pem` whenever it exists (applied with `revocation`).
pub fn server_tls_from_dir(
    dir: &Path,
    revocation: RevocationOptions,
) -> Result<ServerTls, TlsError> {
    let paths = CertPaths::in_dir(dir);
    let crls = match paths.crl.try_exists() {
        Ok(true) => tls::load_crls(&paths.crl)?,
        Ok(false) => Vec::new(),
        Err(error) => {
            return Err(TlsError::Read {
                path: paths.crl,
                error,
            })
        }
    };
    ServerTls::build(
        tls::load_certs(&paths.ca)?,
        tls::load_certs(&paths.server_cert)?,
        tls::load_key(&paths.server_key)?,
        crls,
        revocation,
    )
}

/// A bound QUIC endpoint serving a broker.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    buffers: SocketBuffers,
    options: ServerOptions,
    stats: Arc<AcceptStats>,
    live: Arc<LiveConnections>,
    handshaking: Arc<AtomicUsize>,
    /// Every handshake task, so that [`QuicServer::close`] can wait for them.
    handshakes: TaskTracker,
    /// Cancelled by [`QuicServer::close`]: handshakes still running give up.
    closing: CancellationToken,
    /// The broker being served (set by [`QuicServer::serve`]), told by every reload which
    /// certificates are revoked so that their sessions end.
    broker: OnceLock<BrokerHandle>,
}

impl QuicServer {
    /// Binds `addr` (port 0 for an ephemeral port) with the given TLS configuration.
    pub fn bind(
        addr: SocketAddr,
        crypto: Arc<rustls::ServerConfig>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let config = quinn_config(crypto, &options)?;
        let (endpoint, buffers) = bind_server(addr, config, &options.quic)?;
        Ok(Self {
            endpoint,
            buffers,
            options,
            stats: Arc::default(),
            live: Arc::default(),
            handshaking: Arc::default(),
            handshakes: TaskTracker::new(),
            closing: CancellationToken::new(),
            broker: OnceLock::new(),
        })
    }

    /// Installs new TLS material: connections accepted from now on use it at once, and every
    /// live connection whose client certificate `tls` refuses (revoked by a new CRL, expired,
    /// or no longer issued by a trusted CA) is closed right here with `CERTIFICATE_REVOKED` and
    /// the reason. Other live connections continue untouched (they keep the server certificate
    /// they were opened with). Then every session, attached or detached, that a certificate the
    /// CRLs list created or last attached is ended (once [`QuicServer::serve`] runs).
    pub fn reload(&self, tls: &ServerTls) -> Result<ReloadReport, ServerError> {
        let config = quinn_config(Arc::clone(&tls.config), &self.options)?;
        let report = self.live.install(
            tls,
            || self.endpoint.set_server_config(Some(config)),
            &self.stats,
        );
        if let Some(broker) = self.broker.get() {
            if !tls.revoked.is_empty() {
                broker.end_revoked_sessions(Arc::clone(&tls.revoked));
            }
        }
        Ok(report)
    }

    /// How many authenticated connections are open.
    pub fn live_connections(&self) -> usize {
        self.live.len()
    }

    /// How many QUIC connections the endpoint still holds, counting those closed but not yet
    /// past their draining period (a packet for a connection no longer held is answered with a
    /// stateless reset).
    pub fn quic_connections(&self) -> usize {
        self.endpoint.open_connections()
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The UDP socket buffers the kernel granted.
    pub fn socket_buffers(&self) -> SocketBuffers {
        self.buffers
    }

    /// Accept-path counters.
    pub fn stats(&self) -> Arc<AcceptStats> {
        Arc::clone(&self.stats)
    }

    /// Accepts connections and hands them to `broker` until [`QuicServer::close`] is called.
    /// Each handshake runs in its own task, so a slow client never delays another; the tasks
    /// are tracked, and [`QuicServer::close`] cancels and waits for them.
    pub async fn serve(&self, broker: BrokerHandle) {
        let _ = self.broker.set(broker.clone());
        while let Some(incoming) = self.endpoint.accept().await {
            let Some(incoming) = self.validate_address(incoming) else {
                continue;
            };
            let broker = broker.clone();
            let timeout = self.options.handshake_timeout;
            let rule = self.options.identity_rule.clone();
            let quic = self.options.quic.clone();
            let stats = Arc::clone(&self.stats);
            let live = Arc::clone(&self.live);
            let handshaking = Arc::clone(&self.handshaking);
            handshaking.fetch_add(1, Ordering::Relaxed);
            let generation = self.live.generation();
            let closing = self.closing.clone();
            self.handshakes.spawn(async move {
                let remote = incoming.remote_address();
                let outcome = tokio::select! {
                    outcome = handshake(incoming, timeout, &rule, &quic) => Some(outcome),
                    () = closing.cancelled() => None,
                };
                handshaking.fetch_sub(1, Ordering::Relaxed);
                let Some(outcome) = outcome else {
                    tracing::debug!(%remote, "handshake abandoned: the server is closing");
                    return;
                };
                match outcome {
                    Ok((connection, chain)) => {
                        let identity = &connection.peer.identity;
                        if let Err(reason) =
                            live.admit(&connection.connection, identity, chain, generation, &stats)
                        {
                            stats.refused.fetch_add(1, Ordering::Relaxed);
                            tracing::info!(%remote, %identity, %reason, "refused after a reload during its handshake");
                            broker.report_authentication_failure(remote, "revoked", &reason.to_string());
                            return;
                        }
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, %identity, "client authenticated");
                        broker.accept(Arc::new(connection));
                    }
                    Err((kind, reason)) => {
                        stats.refuse(kind);
                        static REFUSED: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
                        if let Some(suppressed) = REFUSED.admit() {
                            tracing::info!(%remote, kind = kind.as_str(), %reason, suppressed, "handshake refused");
                        }
                        broker.report_authentication_failure(remote, kind.as_str(), &reason);
                    }
                }
            });
        }
    }

    /// Applies the address validation policy: `None` when a Retry was sent instead.
    fn validate_address(&self, incoming: quinn::Incoming) -> Option<quinn::Incoming> {
        if incoming.remote_address_validated() || !incoming.may_retry() {
            return Some(incoming);
        }
        let retry = match self.options.address_validation {
            AddressValidation::Never => false,
            AddressValidation::Always => true,
            AddressValidation::UnderLoad => {
                self.handshaking.load(Ordering::Relaxed) >= self.options.busy_handshakes
            }
        };
        if !retry {
            return Some(incoming);
        }
        match incoming.retry() {
            Ok(()) => {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(error) => Some(error.into_incoming()),
        }
    }

    /// Closes every connection with `code` and `reason`, stops accepting, abandons the
    /// handshakes still running, and waits (at most `limit`) until their tasks have ended and
    /// the peers have been told.
    pub async fn close(&self, code: ErrorCode, reason: &str, limit: Duration) {
        self.endpoint
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
        self.closing.cancel();
        self.handshakes.close();
        let _ = tokio::time::timeout(limit, async {
            self.handshakes.wait().await;
            self.endpoint.wait_idle().await;
        })
        .await;
    }
}

/// The quinn server configuration: TLS `crypto`, transport settings and the incoming limits.
fn quinn_config(
    crypto: Arc<rustls::ServerConfig>,
    options: &ServerOptions,
) -> Result<quinn::ServerConfig, TlsError> {
    let mut config = tls::server_config(crypto, &options.quic)?;
    config
        .max_incoming(options.max_incoming)
        .incoming_buffer_size(options.incoming_buffer_bytes)
        .incoming_buffer_size_total(options.incoming_buffer_total_bytes);
    Ok(config)
}

async fn handshake(
    incoming: quinn::Incoming,
    limit: Duration,
    rule: &IdentityRule,
    quic: &QuicOptions,
) -> Result<(QuicConnection, Vec<CertificateDer<'static>>), (HandshakeFailure, String)> {
    let connecting = incoming
        .accept()
        .map_err(|err| (HandshakeFailure::of(&err), err.to_string()))?;
    let connection = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => return Err((HandshakeFailure::of(&err), err.to_string())),
        Err(_) => {
            return Err((
                HandshakeFailure::Timeout,
                format!("handshake not completed within {limit:?}"),
            ))
        }
    };
    let identity = peer_chain(&connection).and_then(|chain| {
        let leaf = chain
            .first()
            .ok_or(crate::identity::IdentityError::NoPeerCertificate)?;
        Ok((identity_from_cert_with(leaf, rule)?, chain))
    });
    match identity {
        Ok((identity, chain)) => {
            let certificate = chain.first().and_then(certificate_key);
            Ok((
                QuicConnection::new(connection, identity, certificate, quic),
                chain,
            ))
        }
        Err(err) => {
            connection.close(
                VarInt::from_u32(ErrorCode::PROTOCOL_VIOLATION.value()),
                b"no identity in client certificate",
            );
            Err((HandshakeFailure::NoIdentity, err.to_string()))
        }
    }
}

mod live;
mod stats;
mod stream_limit;

/// A quinn connection as the broker sees it.
#[derive(Debug)]
pub struct QuicConnection {
    connection: quinn::Connection,
    peer: PeerInfo,
    /// Unidirectional streams opened towards the client, for monitoring.
    streams_opened: AtomicU64,
    /// Bidirectional streams accepted from the client, for monitoring and for raising
    /// `bidi_streams`.
    streams_accepted: AtomicU64,
    /// How many bidirectional streams the client may have open at once, raised as it opens
    /// them.
    bidi_streams: BidiStreamLimit,
}

impl QuicConnection {
    /// Wraps an authenticated connection whose certificate names `identity` and has the key
    /// `certificate` ([`crate::revocation::certificate_key`]), accepted with the transport
    /// settings `quic` (its bidirectional stream limit is raised from
    /// [`QuicOptions::initial_bidi_streams`] to `max_concurrent_bidi_streams` as the client
    /// opens streams).
    pub fn new(
        connection: quinn::Connection,
        identity: String,
        certificate: Option<String>,
        quic: &QuicOptions,
    ) -> Self {
        let peer = PeerInfo {
            identity: Arc::from(identity),
            remote_addr: connection.remote_address(),
            certificate: certificate.map(Arc::from),
        };
        Self {
            connection,
            peer,
            streams_opened: AtomicU64::new(0),
            streams_accepted: AtomicU64::new(0),
            bidi_streams: BidiStreamLimit::new(
                quic.initial_bidi_streams(),
                quic.max_concurrent_bidi_streams,
            ),
        }
    }
}

fn code_of(code: VarInt) -> ErrorCode {
    ErrorCode(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
}

fn lost(err: quinn::ConnectionError) -> TransportError {
    TransportError::ConnectionLost(err.to_string())
}

#[async_trait]
impl Connection for QuicConnection {
    fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    async fn accept_bi(&self) -> Result<BiStream, TransportError> {
        let (send, recv) = self.connection.accept_bi().await.map_err(lost)?;
        let accepted = self.streams_accepted.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(limit) = self.bidi_streams.accepted(accepted) {
            self.connection
                .set_max_concurrent_bi_streams(VarInt::from_u32(limit));
        }
        Ok((
            Box::new(QuicSendStream(send)),
            Box::new(QuicRecvStream(recv)),
        ))
    }

    async fn open_uni(&self) -> Result<Box<dyn SendStream>, TransportError> {
        let send = self.connection.open_uni().await.map_err(lost)?;
        self.streams_opened.fetch_add(1, Ordering::Relaxed);
        Ok(Box::new(QuicSendStream(send)))
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.connection
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
    }

    async fn closed(&self) -> TransportError {
        lost(self.connection.closed().await)
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.connection.max_datagram_size()
    }

    fn send_datagram(&self, datagram: bytes::Bytes) -> Result<(), TransportError> {
        self.connection
            .send_datagram(datagram)
            .map_err(|err| match err {
                quinn::SendDatagramError::UnsupportedByPeer
                | quinn::SendDatagramError::Disabled => TransportError::DatagramsUnsupported,
                quinn::SendDatagramError::TooLarge => TransportError::DatagramTooLarge,
                quinn::SendDatagramError::ConnectionLost(err) => lost(err),
            })
    }

    async fn read_datagram(&self) -> Result<bytes::Bytes, TransportError> {
        self.connection.read_datagram().await.map_err(lost)
    }

    fn stats(&self) -> Option<ConnectionStats> {
        let stats = self.connection.stats();
        Some(ConnectionStats {
            rtt_us: u64::try_from(stats.path.rtt.as_micros()).unwrap_or(u64::MAX),
            congestion_window: stats.path.cwnd,
            bytes_sent: stats.udp_tx.bytes,
            bytes_received: stats.udp_rx.bytes,
            packets_sent: stats.path.sent_packets,
            packets_lost: stats.path.lost_packets,
            path_mtu_bytes: stats.path.current_mtu.into(),
            congestion_events: stats.path.congestion_events,
            streams_opened: self.streams_opened.load(Ordering::Relaxed),
            streams_accepted: self.streams_accepted.load(Ordering::Relaxed),
        })
    }
}

/// What a failed quinn write means to the broker.
fn write_error(err: quinn::WriteError) -> TransportError {
    match err {
        quinn::WriteError::Stopped(code) => TransportError::Stopped(code_of(code)),
        quinn::WriteError::ConnectionLost(err) => lost(err),
        quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
            TransportError::StreamClosed
        }
    }
}

/// A quinn send stream as the broker sees it.
#[derive(Debug)]
pub struct QuicSendStream(pub quinn::SendStream);

#[async_trait]
impl SendStream for QuicSendStream {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        self.0.write_all(buf).await.map_err(write_error)
    }

    async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        // quinn keeps the chunk in its send buffer as it is: no copy.
        self.0.write_chunk(chunk).await.map_err(write_error)
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        self.0.finish().map_err(|_| TransportError::StreamClosed)
    }

    async fn delivered(&mut self) -> Result<(), TransportError> {
        match self.0.stopped().await {
            Ok(None) => Ok(()),
            Ok(Some(code)) => Err(TransportError::Stopped(code_of(code))),
            Err(quinn::StoppedError::ConnectionLost(err)) => Err(lost(err)),
            Err(_) => Err(TransportError::StreamClosed),
        }
    }

    fn reset(&mut self, code: ErrorCode) {
        let _ = self.0.reset(VarInt::from_u32(code.value()));
    }

    fn set_priority(&mut self, priority: i32) {
        let _ = self.0.set_priority(priority);
    }
}

/// A quinn receive stream as the broker sees it.
#[derive(Debug)]
pub struct QuicRecvStream(pub quinn::RecvStream);

#[async_trait]
impl RecvStream for QuicRecvStream {
    async fn read_into(&mut self, buf: &mut BytesMut) -> Result<bool, TransportError> {
        match self.0.read_chunk(READ_CHUNK_BYTES, true).await {
            Ok(Some(chunk)) => {
                buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(quinn::ReadError::Reset(code)) => Err(TransportError::Reset(code_of(code))),
            Err(quinn::ReadError::ConnectionLost(err)) => Err(lost(err)),
            Err(_) => Err(TransportError::StreamClosed),
        }
    }

    fn stop(&mut self, code: ErrorCode) {
        let _ = self.0.stop(VarInt::from_u32(code.value()));
    }
}
