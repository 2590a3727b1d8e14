//! Opening a connection and a session: the first time, and after every loss.
//!
//! A [`Connector`] holds what every attempt needs (the local endpoint, the broker's address,
//! the names) and runs one attempt under the connect timeout: it resolves the address again
//! each time, so a broker that came back elsewhere is found, and tries each of its addresses
//! in turn, then the cluster's addresses learned from `Welcome`
//! ([`crate::connect::cluster_addresses`]). QUIC's unconnected socket never hears the ICMP
//! "port unreachable" that says nothing listens at an address, so beside each handshake a
//! small probe on a connected UDP socket listens for it ([`port_unreachable`]): such an address fails at once, naming it,
//! instead of after the whole connect timeout.
//!
//! Then the handshake ([`handshake`]), from a QUIC connection to a Cassini session: `Hello` out
//! (asking to resume a session after a reconnect), `Welcome` back.
//!
//! The handshake is where a refused certificate shows: with TLS 1.3 the QUIC connection is
//! established from the client's side before the broker has judged the client certificate, so
//! the refusal arrives as a connection close while the client writes `Hello` or waits for
//! `Welcome`. Both steps are part of connecting, and their errors go through
//! [`crate::connect::disconnect`] to read as certificate errors.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES;
use cassini_protocol::{
    ErrorCode, Frame, Hello, ResumePosition, SessionId, Welcome, PROTOCOL_VERSION,
};
use quinn::VarInt;
use tokio::time::timeout;

use crate::connect::broker_address::BrokerAddress;
use crate::connect::cluster_addresses::ClusterAddresses;
use crate::connect::disconnect::{connection_error, read_error, write_error, Phase};
use crate::connect::framed::{decode_close_code, encode, FrameReader, ReadFrameError};
use crate::error::ConnectionError;
use crate::sync::lock;

/// Everything needed to connect to the broker again.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    /// The local QUIC endpoint every connection of the client uses.
    pub(crate) endpoint: quinn::Endpoint,
    /// Where the broker listens.
    pub(crate) address: BrokerAddress,
    /// The name the broker's certificate must carry.
    pub(crate) server_name: String,
    /// Sent in `Hello` for the broker's logs.
    pub(crate) client_name: Option<String>,
    /// The session's name, sent in every `Hello`: the broker resumes the session of that name
    /// (or creates it), whatever `resume` says.
    pub(crate) session_name: Option<String>,
    /// Bound on one attempt, from resolving the address to `Welcome`.
    pub(crate) connect_timeout: Duration,
    /// The cluster's addresses learned from `Welcome`, tried after `address`.
    pub(crate) cluster: ClusterAddresses,
    /// The address that answered the last handshake, tried first by the next attempt.
    pub(crate) answered: Arc<Mutex<Option<SocketAddr>>>,
}

impl Connector {
    /// One attempt: connects and exchanges `Hello` (resuming `resume` if set, where the
    /// client stands at `positions`) and `Welcome`, trying each of the broker's addresses in
    /// turn until one answers.
    ///
    /// With `fail_fast` (the first connection, where a person or script waits for the answer)
    /// an address where nothing listens fails at once. A reconnect to a single address does not
    /// probe: there a handshake that waits for a restarting broker connects as soon as it
    /// listens, while a failed attempt would wait out the growing backoff first. With several
    /// addresses every attempt probes, so a dead node's address gives way to the next at once.
    ///
    /// The address that answered the last handshake (where the session lives, or where a
    /// refusal came from) is tried first, but for at most [`ANSWERED_ADDRESS_SHARE`] when
    /// there are others; `silent` (an address whose broker stopped answering pings) is tried
    /// last.
    pub(crate) async fn connect(
        &self,
        resume: Option<SessionId>,
        positions: Vec<ResumePosition>,
        fail_fast: bool,
        silent: Option<SocketAddr>,
    ) -> Result<Established, ConnectionError> {
        let attempt = async {
            let mut remotes = self.cluster.candidates(&self.address).await?;
            let silent = silent.map(canonical);
            let answered = (*lock(&self.answered)).filter(|answered| Some(*answered) != silent);
            if let Some(at) = remotes.iter().position(|remote| Some(*remote) == answered) {
                let first = remotes.remove(at);
                remotes.insert(0, first);
            }
            if let Some(at) = remotes.iter().position(|remote| Some(*remote) == silent) {
                let last = remotes.remove(at);
                remotes.push(last);
            }
            let several = remotes.len() > 1;
            let probe = fail_fast || several;
            // Each address gets an equal share of the attempt for its QUIC handshake, so one
            // that never answers leaves time for the next (a single address gets it all). A
            // broker that answered gets the rest of the attempt for its `Welcome`: a cluster
            // node may be waiting out the lease of a named session's dead node, and another
            // node would only wait it out again.
            let count = u32::try_from(remotes.len()).unwrap_or(u32::MAX).max(1);
            let equal_share = self.connect_timeout / count;
            let mut failed = Vec::new();
            let mut last_error = None;
            for remote in remotes {
                let share = if several && Some(remote) == answered {
                    equal_share.min(ANSWERED_ADDRESS_SHARE)
                } else {
                    equal_share
                };
                let hello = Hello {
                    protocol_version: PROTOCOL_VERSION,
                    resume,
                    client_name: self.client_name.clone(),
                    positions: positions.clone(),
                    session_name: self.session_name.clone(),
                };
                let handshake = handshake(&self.endpoint, remote, share, &self.server_name, hello);
                let outcome = tokio::select! {
                    () = port_unreachable(remote), if probe => {
                        failed.push(format!("nothing listens on {remote} (the port is unreachable)"));
                        continue;
                    }
                    outcome = handshake => outcome,
                };
                let this_node_only = matches!(
                    &outcome,
                    Ok(Err(ConnectionError::Refused { code, .. })) if refuses_this_node_only(*code)
                );
                if !this_node_only
                    && matches!(
                        &outcome,
                        Ok(Ok(_)) | Ok(Err(ConnectionError::Refused { .. }))
                    )
                {
                    *lock(&self.answered) = Some(canonical(remote));
                }
                match outcome {
                    Ok(Ok(established)) => {
                        self.cluster.learn(&established.welcome.cluster_addresses);
                        return Ok(established);
                    }
                    // A refusal of this node's own (no quorum, an internal error, stopping):
                    // another node may accept.
                    Ok(Err(error)) if this_node_only && several => {
                        failed.push(format!("{remote}: {error}"));
                        last_error = Some(error);
                    }
                    // Refusals (certificates, versions, sessions) say the same on every address.
                    Ok(Err(error)) if !matches!(error, ConnectionError::Connect { .. }) => {
                        return Err(error)
                    }
                    Ok(Err(error)) => {
                        failed.push(format!("{remote}: {error}"));
                        last_error = Some(error);
                    }
                    Err(Unanswered) => {
                        failed.push(format!("no answer from {remote} within {share:?}"))
                    }
                }
            }
            match (failed.len(), last_error) {
                (1, Some(error)) => Err(error),
                _ => Err(ConnectionError::Connect {
                    reason: failed.join("; "),
                }),
            }
        };
        timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| no_answer(&self.address.to_string(), self.connect_timeout))?
    }
}

/// Whether a refusal with `code` concerns the node that answered rather than the client (its
/// certificate, version or session): another node may accept the same `Hello`.
fn refuses_this_node_only(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NO_QUORUM | ErrorCode::INTERNAL | ErrorCode::SERVER_SHUTTING_DOWN
    )
}

/// The longest an attempt waits for the address that answered last when it has others to try.
pub(crate) const ANSWERED_ADDRESS_SHARE: Duration = Duration::from_secs(1);

/// `addr` with an IPv4-mapped IPv6 address written as IPv4 (a dual-stack endpoint reports
/// IPv4 peers that way), to compare with resolved addresses.
fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// The error of a connect attempt that heard nothing from `address` within `limit`.
pub(crate) fn no_answer(address: &str, limit: Duration) -> ConnectionError {
    ConnectionError::Connect {
        reason: format!("no answer from {address} within {limit:?}"),
    }
}

/// Probes sent to an address while its handshake runs, and the time between them (ICMP
/// replies are rate-limited, so one lost or suppressed reply must not decide).
const PROBES: u32 = 5;
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// Completes only when the operating system reports that nothing listens on `remote` (ICMP
/// port unreachable, seen as `ECONNREFUSED` on a connected UDP socket); otherwise never. The
/// probes are single zero bytes, which a QUIC endpoint that does listen drops as too short to
/// be a packet.
async fn port_unreachable(remote: SocketAddr) {
    let local: SocketAddr = if remote.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let refused = |result: std::io::Result<usize>| matches!(result, Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused);
    if let Ok(socket) = tokio::net::UdpSocket::bind(local).await {
        if socket.connect(remote).await.is_ok() {
            let mut reply = [0u8; 1];
            for _ in 0..PROBES {
                if refused(socket.send(&[0]).await) {
                    return;
                }
                if let Ok(result) = timeout(PROBE_INTERVAL, socket.recv(&mut reply)).await {
                    if refused(result) {
                        return;
                    }
                }
            }
        }
    }
    std::future::pending::<()>().await
}

/// The control stream goes ahead of publish streams, as on the broker.
const CONTROL_STREAM_PRIORITY: i32 = 100;

/// When the broker ends the control stream without `Welcome`, how long to wait for the
/// connection close that says why.
const CLOSE_REASON_WAIT: Duration = Duration::from_secs(2);

/// An established session.
pub(crate) struct Established {
    /// The QUIC connection.
    pub(crate) connection: quinn::Connection,
    /// The control stream's send half.
    pub(crate) control_send: quinn::SendStream,
    /// The control stream's receive half, set to the broker's maximum frame size.
    pub(crate) control_reader: FrameReader,
    /// The broker's `Welcome`.
    pub(crate) welcome: Welcome,
}

/// Connects to `remote`, opens the control stream and exchanges `Hello` and `Welcome`, asking
/// to resume session `resume` if there is one. A broker that does not know that session closes
/// the connection with `SESSION_NOT_FOUND`, which this returns as [`ConnectionError::Refused`].
/// `Err(Unanswered)`: the QUIC handshake did not complete within `share`.
pub(crate) async fn handshake(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    share: Duration,
    server_name: &str,
    hello: Hello,
) -> Result<Result<Established, ConnectionError>, Unanswered> {
    let connecting = match endpoint.connect(remote, server_name) {
        Ok(connecting) => connecting,
        Err(error) => {
            return Ok(Err(ConnectionError::Connect {
                reason: error.to_string(),
            }))
        }
    };
    let connection = match timeout(share, connecting).await {
        Err(_) => return Err(Unanswered),
        Ok(Err(error)) => return Ok(Err(connection_error(&error, Phase::Connecting))),
        Ok(Ok(connection)) => connection,
    };
    Ok(exchange_hello(connection, hello).await)
}

/// The QUIC handshake with an address did not complete within its share of the attempt.
#[derive(Debug)]
pub(crate) struct Unanswered;

/// Opens the control stream of `connection` and exchanges `Hello` and `Welcome`.
async fn exchange_hello(
    connection: quinn::Connection,
    hello: Hello,
) -> Result<Established, ConnectionError> {
    let (mut control_send, control_recv) = connection
        .open_bi()
        .await
        .map_err(|error| connection_error(&error, Phase::Connecting))?;
    let _ = control_send.set_priority(CONTROL_STREAM_PRIORITY);
    let hello = Frame::Hello(hello);
    let hello =
        encode(&hello, DEFAULT_MAX_FRAME_BYTES).map_err(|error| ConnectionError::Connect {
            reason: format!("cannot encode Hello: {error}"),
        })?;
    control_send
        .write_all(&hello)
        .await
        .map_err(|error| write_error(&error, Phase::Connecting))?;
    let mut control_reader = FrameReader::new(control_recv, DEFAULT_MAX_FRAME_BYTES);
    let welcome = read_welcome(&connection, &mut control_reader).await?;
    if welcome.protocol_version != PROTOCOL_VERSION {
        let reason = format!(
            "the broker speaks protocol version {}, this client {PROTOCOL_VERSION}",
            welcome.protocol_version
        );
        return Err(violation(
            &connection,
            ErrorCode::UNSUPPORTED_VERSION,
            reason,
        ));
    }
    control_reader.set_max_frame_bytes(welcome.limits.max_frame_bytes);
    Ok(Established {
        connection,
        control_send,
        control_reader,
        welcome,
    })
}

async fn read_welcome(
    connection: &quinn::Connection,
    reader: &mut FrameReader,
) -> Result<Welcome, ConnectionError> {
    match reader.next().await {
        Ok(Some(Frame::Welcome(welcome))) => Ok(welcome),
        Ok(Some(other)) => Err(violation(
            connection,
            ErrorCode::PROTOCOL_VIOLATION,
            format!("expected Welcome, got {}", other.kind()),
        )),
        Ok(None) => {
            // A broker that ends the control stream first is about to close the connection.
            match timeout(CLOSE_REASON_WAIT, connection.closed()).await {
                Ok(error) => Err(connection_error(&error, Phase::Connecting)),
                Err(_) => Err(violation(
                    connection,
                    ErrorCode::PROTOCOL_VIOLATION,
                    "the broker ended the control stream without Welcome".to_owned(),
                )),
            }
        }
        Err(ReadFrameError::Stream(error)) => Err(read_error(&error, Phase::Connecting)),
        Err(ReadFrameError::Decode(error)) => Err(violation(
            connection,
            decode_close_code(&error),
            format!("undecodable answer to Hello: {error}"),
        )),
    }
}

/// Closes the connection because the broker broke the protocol, and says so.
fn violation(connection: &quinn::Connection, code: ErrorCode, reason: String) -> ConnectionError {
    connection.close(VarInt::from_u32(code.value()), reason.as_bytes());
    ConnectionError::Protocol { reason }
}
