//! From a QUIC connection to a Cassini session: `Hello` out (asking to resume a session after a
//! reconnect), `Welcome` back.
//!
//! The handshake is where a refused certificate shows: with TLS 1.3 the QUIC connection is
//! established from the client's side before the broker has judged the client certificate, so
//! the refusal arrives as a connection close while the client writes `Hello` or waits for
//! `Welcome`. Both steps are part of connecting, and their errors go through
//! [`crate::disconnect`] to read as certificate errors.

use std::net::SocketAddr;
use std::time::Duration;

use cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES;
use cassini_protocol::{
    ErrorCode, Frame, Hello, ResumePosition, SessionId, Welcome, PROTOCOL_VERSION,
};
use quinn::VarInt;
use tokio::time::timeout;

use crate::disconnect::{connection_error, read_error, write_error, Phase};
use crate::error::ClientError;
use crate::framed::{decode_close_code, encode, FrameReader, ReadFrameError};

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
/// the connection with `SESSION_NOT_FOUND`, which this returns as [`ClientError::Refused`].
pub(crate) async fn handshake(
    endpoint: &quinn::Endpoint,
    remote: SocketAddr,
    server_name: &str,
    client_name: Option<String>,
    session_name: Option<String>,
    resume: Option<SessionId>,
    positions: Vec<ResumePosition>,
) -> Result<Established, ClientError> {
    let connecting =
        endpoint
            .connect(remote, server_name)
            .map_err(|error| ClientError::Connect {
                reason: error.to_string(),
            })?;
    let connection = connecting
        .await
        .map_err(|error| connection_error(&error, Phase::Connecting))?;
    let (mut control_send, control_recv) = connection
        .open_bi()
        .await
        .map_err(|error| connection_error(&error, Phase::Connecting))?;
    let _ = control_send.set_priority(CONTROL_STREAM_PRIORITY);
    let hello = Frame::Hello(Hello {
        protocol_version: PROTOCOL_VERSION,
        resume,
        client_name,
        positions,
        session_name,
    });
    let hello = encode(&hello, DEFAULT_MAX_FRAME_BYTES)?;
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
) -> Result<Welcome, ClientError> {
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
fn violation(connection: &quinn::Connection, code: ErrorCode, reason: String) -> ClientError {
    connection.close(VarInt::from_u32(code.value()), reason.as_bytes());
    ClientError::Protocol { reason }
}
