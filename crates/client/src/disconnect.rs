//! Why a connection ended, in words a user can act on.
//!
//! quinn reports the end of a connection as a [`ConnectionError`]; this module is the one place
//! that turns it into a [`ClientError`]. TLS alerts are the important case: with TLS 1.3 the
//! client finishes its handshake before the broker has judged the client certificate, so a
//! refused certificate shows up as a connection close carrying a crypto alert code on the first
//! stream operation after `connect()`. Those become [`ClientError::Certificate`] (the broker
//! refused us) or [`ClientError::BrokerCertificate`] (we refused the broker).

use cassini_protocol::ErrorCode;
use quinn::{ConnectionError, TransportErrorCode, VarInt};

use crate::error::ClientError;

/// Where in the connection's life an error happened: the same cause reads differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before `Welcome` arrived: failures are connect failures.
    Connecting,
    /// After `Welcome`: failures are lost connections.
    Established,
}

/// The client error for a connection that ended with `error`.
pub(crate) fn connection_error(error: &ConnectionError, phase: Phase) -> ClientError {
    let failed = |reason: String| failure(reason, phase);
    match error {
        ConnectionError::ConnectionClosed(close) => {
            let detail = String::from_utf8_lossy(&close.reason);
            match crypto_alert(close.error_code) {
                Some(alert) if is_certificate_alert(alert) => ClientError::Certificate {
                    reason: refusal_reason(
                        "the broker refused this client's certificate",
                        alert,
                        &detail,
                    ),
                },
                Some(alert) => failed(refusal_reason(
                    "the broker ended the TLS handshake",
                    alert,
                    &detail,
                )),
                None => failed(format!(
                    "the broker's QUIC stack closed the connection: {close}"
                )),
            }
        }
        ConnectionError::TransportError(local) => match crypto_alert(local.code) {
            Some(alert) if is_certificate_alert(alert) => ClientError::BrokerCertificate {
                reason: refusal_reason(
                    "this client refused the broker's certificate",
                    alert,
                    &local.reason,
                ),
            },
            Some(alert) => failed(refusal_reason(
                "the TLS handshake failed",
                alert,
                &local.reason,
            )),
            None => failed(format!("QUIC transport error: {local}")),
        },
        ConnectionError::ApplicationClosed(close) => {
            let code = error_code(close.error_code);
            if code == ErrorCode::NORMAL {
                return ClientError::Closed;
            }
            ClientError::Refused {
                code,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        ConnectionError::Reset => {
            failed("the broker reset the connection (it may have restarted)".to_owned())
        }
        ConnectionError::TimedOut => failed("no answer from the broker (timed out)".to_owned()),
        ConnectionError::LocallyClosed => ClientError::Closed,
        other => failed(other.to_string()),
    }
}

/// The protocol error code a QUIC close, reset or stop code carries. Codes beyond `u32` are
/// not Cassini's and read as `u32::MAX`, which no Cassini code uses.
pub(crate) fn error_code(code: VarInt) -> ErrorCode {
    ErrorCode(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
}

/// The client error for a failed read of a control stream.
pub(crate) fn read_error(error: &quinn::ReadError, phase: Phase) -> ClientError {
    match error {
        quinn::ReadError::ConnectionLost(lost) => connection_error(lost, phase),
        quinn::ReadError::Reset(code) => failure(
            format!("the broker reset the control stream with code {code}"),
            phase,
        ),
        other => failure(format!("reading the control stream: {other}"), phase),
    }
}

/// The client error for a failed write to a stream.
pub(crate) fn write_error(error: &quinn::WriteError, phase: Phase) -> ClientError {
    match error {
        quinn::WriteError::ConnectionLost(lost) => connection_error(lost, phase),
        quinn::WriteError::Stopped(code) => failure(
            format!("the broker stopped the stream with code {code}"),
            phase,
        ),
        other => failure(format!("writing to the broker: {other}"), phase),
    }
}

fn failure(reason: String, phase: Phase) -> ClientError {
    match phase {
        Phase::Connecting => ClientError::Connect { reason },
        Phase::Established => ClientError::ConnectionLost { reason },
    }
}

/// The TLS alert carried by a QUIC crypto error code (`0x100 + alert`), if it is one.
fn crypto_alert(code: TransportErrorCode) -> Option<u8> {
    let value = u64::from(code);
    (0x100..0x200)
        .contains(&value)
        .then(|| u8::try_from(value - 0x100).ok())
        .flatten()
}

/// Alerts that say a certificate was judged and refused.
fn is_certificate_alert(alert: u8) -> bool {
    matches!(alert, 40 | 42..=46 | 48 | 49 | 51 | 113 | 116)
}

/// What a TLS alert means, for the alerts a Cassini handshake can produce.
fn alert_description(alert: u8) -> &'static str {
    match alert {
        40 => "handshake failure",
        42 => "bad certificate",
        43 => "unsupported certificate (wrong key usage or purpose)",
        44 => "certificate revoked",
        45 => "certificate expired or not yet valid",
        46 => "certificate unknown",
        48 => "certificate not issued by a trusted CA (unknown CA)",
        49 => "access denied",
        51 => "certificate signature invalid (decrypt error)",
        70 => "unsupported TLS version",
        80 => "internal error in the peer's TLS stack",
        109 => "missing TLS extension",
        113 => "bad certificate status response",
        116 => "no certificate presented (certificate required)",
        120 => "no common application protocol (the peer does not speak cassini/1)",
        _ => "TLS alert",
    }
}

fn refusal_reason(what: &str, alert: u8, detail: &str) -> String {
    let description = alert_description(alert);
    if detail.is_empty() {
        format!("{what}: {description} (TLS alert {alert})")
    } else {
        format!("{what}: {description} (TLS alert {alert}): {detail}")
    }
}

#[cfg(test)]
mod tests;
