//! The broker side of the QUIC transport (feature `server`).
//!
//! [`QuicServer`] binds the endpoint, completes each handshake under a deadline, reads the
//! client's identity from its certificate and hands the connection to the broker as an
//! `Arc<dyn cassini_broker::Connection>`. [`QuicConnection`] and the stream wrappers are the
//! only place quinn meets the broker: they translate quinn's streams and errors to the broker's
//! transport interface and never interpret frames.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use cassini_broker::transport::BiStream;
use cassini_broker::{BrokerHandle, Connection, PeerInfo, RecvStream, SendStream, TransportError};
use cassini_protocol::ErrorCode;
use quinn::VarInt;

use crate::certs::CertPaths;
use crate::endpoint::{bind_server, EndpointError, SocketBuffers};
use crate::identity::peer_identity;
use crate::tls::{self, QuicOptions, TlsError};

/// Most bytes taken from quinn in one read; bounds a stream's read buffer to one frame plus this.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How the server endpoint behaves.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// QUIC transport knobs. Default: [`QuicOptions::broker`].
    pub quic: QuicOptions,
    /// How long a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            quic: QuicOptions::broker(),
            handshake_timeout: Duration::from_secs(10),
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
/// `server.key`): clients must present a certificate signed by `ca.crt`.
pub fn server_crypto_from_dir(dir: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let paths = CertPaths::in_dir(dir);
    tls::server_crypto(
        tls::load_certs(&paths.ca)?,
        tls::load_certs(&paths.server_cert)?,
        tls::load_key(&paths.server_key)?,
    )
}

/// Counters of the accept path.
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Handshakes that completed and were handed to the broker.
    pub accepted: AtomicU64,
    /// Handshakes that failed (bad certificate, timeout, no identity).
    pub refused: AtomicU64,
}

/// A bound QUIC endpoint serving a broker.
#[derive(Debug)]
pub struct QuicServer {
    endpoint: quinn::Endpoint,
    buffers: SocketBuffers,
    options: ServerOptions,
    stats: Arc<AcceptStats>,
}

impl QuicServer {
    /// Binds `addr` (port 0 for an ephemeral port) with the given TLS configuration.
    pub fn bind(
        addr: SocketAddr,
        crypto: Arc<rustls::ServerConfig>,
        options: ServerOptions,
    ) -> Result<Self, ServerError> {
        let config = tls::server_config(crypto, &options.quic)?;
        let (endpoint, buffers) = bind_server(addr, config, &options.quic)?;
        Ok(Self {
            endpoint,
            buffers,
            options,
            stats: Arc::default(),
        })
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
    /// Each handshake runs in its own task, so a slow client never delays another.
    pub async fn serve(&self, broker: BrokerHandle) {
        while let Some(incoming) = self.endpoint.accept().await {
            let broker = broker.clone();
            let timeout = self.options.handshake_timeout;
            let stats = Arc::clone(&self.stats);
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match handshake(incoming, timeout).await {
                    Ok(connection) => {
                        stats.accepted.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%remote, identity = %connection.peer.identity, "client authenticated");
                        broker.accept(Arc::new(connection));
                    }
                    Err(reason) => {
                        stats.refused.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(%remote, %reason, "handshake refused");
                    }
                }
            });
        }
    }

    /// Closes every connection with `code` and `reason`, stops accepting, and waits (at most
    /// `limit`) until the peers have been told.
    pub async fn close(&self, code: ErrorCode, reason: &str, limit: Duration) {
        self.endpoint
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
        let _ = tokio::time::timeout(limit, self.endpoint.wait_idle()).await;
    }
}

async fn handshake(incoming: quinn::Incoming, limit: Duration) -> Result<QuicConnection, String> {
    let connecting = incoming.accept().map_err(|err| err.to_string())?;
    let connection = match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => return Err(err.to_string()),
        Err(_) => return Err(format!("handshake not completed within {limit:?}")),
    };
    match peer_identity(&connection) {
        Ok(identity) => Ok(QuicConnection::new(connection, identity)),
        Err(err) => {
            connection.close(
                VarInt::from_u32(ErrorCode::PROTOCOL_VIOLATION.value()),
                b"no identity in client certificate",
            );
            Err(err.to_string())
        }
    }
}

/// A quinn connection as the broker sees it.
#[derive(Debug)]
pub struct QuicConnection {
    connection: quinn::Connection,
    peer: PeerInfo,
}

impl QuicConnection {
    /// Wraps an authenticated connection whose certificate names `identity`.
    pub fn new(connection: quinn::Connection, identity: String) -> Self {
        let peer = PeerInfo {
            identity: Arc::from(identity),
            remote_addr: connection.remote_address(),
        };
        Self { connection, peer }
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
        Ok((
            Box::new(QuicSendStream(send)),
            Box::new(QuicRecvStream(recv)),
        ))
    }

    async fn open_uni(&self) -> Result<Box<dyn SendStream>, TransportError> {
        let send = self.connection.open_uni().await.map_err(lost)?;
        Ok(Box::new(QuicSendStream(send)))
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.connection
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
    }

    async fn closed(&self) -> TransportError {
        lost(self.connection.closed().await)
    }
}

/// A quinn send stream as the broker sees it.
#[derive(Debug)]
pub struct QuicSendStream(pub quinn::SendStream);

#[async_trait]
impl SendStream for QuicSendStream {
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError> {
        self.0.write_all(buf).await.map_err(|err| match err {
            quinn::WriteError::Stopped(code) => TransportError::Stopped(code_of(code)),
            quinn::WriteError::ConnectionLost(err) => lost(err),
            quinn::WriteError::ClosedStream | quinn::WriteError::ZeroRttRejected => {
                TransportError::StreamClosed
            }
        })
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
