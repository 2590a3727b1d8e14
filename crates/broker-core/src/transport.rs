//! The interface between the broker and a transport.
//!
//! A transport (QUIC in production, anything in tests) authenticates the peer, then hands the
//! broker an `Arc<dyn Connection>`. The broker only ever accepts bidirectional streams the
//! client opened (the control stream first, publish streams after), opens unidirectional streams
//! towards the client (one per subscription), and closes the connection with a code and reason.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use cassini_protocol::ErrorCode;

/// Who is on the other end, as established by the transport's authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The identity from the client certificate. Never taken from anything the client sends.
    pub identity: Arc<str>,
    /// The peer's address when the connection was accepted.
    pub remote_addr: SocketAddr,
    /// A key naming the client certificate the transport authenticated (for QUIC: its serial
    /// number and issuer, as a CRL names it), if there is one. Each session remembers the key
    /// of the certificate that created or last attached it, so that revoking the certificate
    /// ends the session ([`crate::BrokerHandle::end_revoked_sessions`]).
    pub certificate: Option<Arc<str>>,
}

/// What the transport knows about a connection's path and traffic, for monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ConnectionStats {
    /// Smoothed round-trip time, in microseconds.
    pub rtt_us: u64,
    /// Congestion window, in bytes.
    pub congestion_window: u64,
    /// UDP payload bytes sent on this connection.
    pub bytes_sent: u64,
    /// UDP payload bytes received on this connection.
    pub bytes_received: u64,
    /// Packets sent.
    pub packets_sent: u64,
    /// Packets declared lost.
    pub packets_lost: u64,
    /// The largest UDP payload the broker's packets on this connection may have now: 1,200 at
    /// first, then what QUIC's path MTU discovery has found, up to
    /// `quic.max_udp_payload_bytes` and the client's own bound.
    pub path_mtu_bytes: u64,
    /// Congestion events (losses or ECN marks that reduced the window).
    pub congestion_events: u64,
    /// Streams the broker opened towards the client (one per subscription stream).
    pub streams_opened: u64,
    /// Streams the client opened and the broker accepted (control and publish streams).
    pub streams_accepted: u64,
}

/// Why a transport operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    /// The connection is gone: closed by either side, timed out, or reset.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The peer reset the stream we were reading.
    #[error("stream reset by peer with {0}")]
    Reset(ErrorCode),
    /// The peer asked us to stop sending on this stream.
    #[error("stream stopped by peer with {0}")]
    Stopped(ErrorCode),
    /// The stream was already finished or reset locally.
    #[error("stream already closed")]
    StreamClosed,
    /// The connection cannot take another stream right now.
    #[error("stream limit reached")]
    StreamLimit,
    /// The connection has no datagrams (not negotiated, or disabled).
    #[error("datagrams not supported on this connection")]
    DatagramsUnsupported,
    /// The datagram is larger than the peer accepts.
    #[error("datagram too large")]
    DatagramTooLarge,
}

/// The sending half of a stream.
#[async_trait]
pub trait SendStream: Send + 'static {
    /// Writes all of `buf`, waiting for flow control as needed.
    async fn write_all(&mut self, buf: &[u8]) -> Result<(), TransportError>;
    /// Writes all of `chunk`, as [`SendStream::write_all`] does; a transport that keeps written
    /// bytes until they are acknowledged can keep `chunk` itself instead of a copy.
    async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), TransportError> {
        self.write_all(&chunk).await
    }
    /// Finishes the stream: the peer reads everything written, then the end.
    fn finish(&mut self) -> Result<(), TransportError>;
    /// After [`SendStream::finish`], waits until the peer has acknowledged everything written
    /// (so closing the connection now loses none of it), or stopped the stream.
    async fn delivered(&mut self) -> Result<(), TransportError>;
    /// Abandons the stream: unsent data is discarded and the peer sees `code`.
    fn reset(&mut self, code: ErrorCode);
    /// Relative priority against the connection's other streams; higher goes first.
    fn set_priority(&mut self, priority: i32);
}

/// The receiving half of a stream.
#[async_trait]
pub trait RecvStream: Send + 'static {
    /// Appends the next available bytes to `buf`. Returns `Ok(false)` at the end of the stream.
    async fn read_into(&mut self, buf: &mut BytesMut) -> Result<bool, TransportError>;
    /// Tells the peer to stop sending, with `code`.
    fn stop(&mut self, code: ErrorCode);
}

/// A client-opened bidirectional stream, as the pair of its halves.
pub type BiStream = (Box<dyn SendStream>, Box<dyn RecvStream>);

/// One authenticated connection.
#[async_trait]
pub trait Connection: Send + Sync + 'static {
    /// The authenticated peer.
    fn peer(&self) -> &PeerInfo;
    /// Waits for the client to open its next bidirectional stream.
    async fn accept_bi(&self) -> Result<BiStream, TransportError>;
    /// Opens a unidirectional stream towards the client.
    async fn open_uni(&self) -> Result<Box<dyn SendStream>, TransportError>;
    /// Closes the connection at once; the peer sees `code` and `reason`.
    fn close(&self, code: ErrorCode, reason: &str);
    /// Completes when the connection is closed, for whatever reason.
    async fn closed(&self) -> TransportError;
    /// The largest datagram the peer accepts now, or `None` if the connection has no datagrams
    /// (the peer did not negotiate them).
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }
    /// Sends one unreliable datagram. It may be lost, and is dropped if it does not fit.
    fn send_datagram(&self, _datagram: bytes::Bytes) -> Result<(), TransportError> {
        Err(TransportError::DatagramsUnsupported)
    }
    /// Waits for the client's next datagram.
    async fn read_datagram(&self) -> Result<bytes::Bytes, TransportError> {
        Err(TransportError::DatagramsUnsupported)
    }
    /// Path and traffic facts, if the transport keeps them. Called by monitoring only.
    fn stats(&self) -> Option<ConnectionStats> {
        None
    }
    /// The protocol the client speaks, as monitoring shows it (`/connz`): `quic` for Cassini's
    /// own, `mqtt/3.1.1` or `mqtt/5` for a client of the MQTT gateway.
    fn protocol(&self) -> &str {
        "quic"
    }
    /// Whether the session name this connection's `Hello` gives is unique across identities, as
    /// an MQTT client id is unique per server: the broker then refuses it
    /// (`SESSION_IDENTITY_MISMATCH`) while another identity holds a session that such a
    /// connection named so. Cassini's own clients name sessions per identity (`false`).
    fn exclusive_session_name(&self) -> bool {
        false
    }
    /// How long the session outlives this connection when it ends without a goodbye, when the
    /// client asked for a time of its own (MQTT 5's Session Expiry Interval), read as the
    /// connection ends; the broker's `sessions.expiry` caps it. `None`: `sessions.expiry`.
    fn session_expiry(&self) -> Option<std::time::Duration> {
        None
    }
}
