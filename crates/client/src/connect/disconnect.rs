//! Why a connection ended, in words a user can act on.
//!
//! quinn reports the end of a connection as a [`quinn::ConnectionError`]; this module is the one place
//! that turns it into a [`ConnectionError`]. TLS alerts are the important case: with TLS 1.3 the
//! client finishes its handshake before the broker has judged the client certificate, so a
//! refused certificate shows up as a connection close carrying a crypto alert code on the first
//! stream operation after `connect()`. Those become [`ConnectionError::Certificate`] (the broker
//! refused us) or [`ConnectionError::BrokerCertificate`] (we refused the broker).

use cassini_protocol::ErrorCode;
use quinn::{ConnectionError as QuicConnectionError, TransportErrorCode, VarInt};

use crate::error::ConnectionError;

/// Where in the connection's life an error happened: the same cause reads differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before `Welcome` arrived: failures are connect failures.
    Connecting,
    /// After `Welcome`: failures are lost connections.
    Established,
}

/// The client error for a connection that ended with `error`.
pub(crate) fn connection_error(error: &QuicConnectionError, phase: Phase) -> ConnectionError {
    let failed = |reason: String| failure(reason, phase);
    match error {
        QuicConnectionError::ConnectionClosed(close) => {
            let detail = String::from_utf8_lossy(&close.reason);
            match crypto_alert(close.error_code) {
                Some(alert) if is_certificate_alert(alert) => ConnectionError::Certificate {
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
        QuicConnectionError::TransportError(local) => match crypto_alert(local.code) {
            Some(alert) if is_certificate_alert(alert) => ConnectionError::BrokerCertificate {
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
        QuicConnectionError::ApplicationClosed(close) => {
            let code = error_code(close.error_code);
            if code == ErrorCode::NORMAL {
                return ConnectionError::Closed;
            }
            ConnectionError::Refused {
                code,
                reason: String::from_utf8_lossy(&close.reason).into_owned(),
            }
        }
        QuicConnectionError::Reset => {
            failed("the broker reset the connection (it may have restarted)".to_owned())
        }
        QuicConnectionError::TimedOut => failed("no answer from the broker (timed out)".to_owned()),
        QuicConnectionError::LocallyClosed => ConnectionError::Closed,
        other => failed(other.to_string()),
    }
}

/// The protocol error code a QUIC close, reset or stop code carries. Codes beyond `u32` are
/// not Cassini's and read as `u32::MAX`, which no Cassini code uses.
pub(crate) fn error_code(code: VarInt) -> ErrorCode {
    ErrorCode(u32::try_from(code.into_inner()).unwrap_or(u32::MAX))
}

/// The client error for a failed read of a control stream.
pub(crate) fn read_error(error: &quinn::ReadError, phase: Phase) -> ConnectionError {
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
pub(crate) fn write_error(error: &quinn::WriteError, phase: Phase) -> ConnectionError {
    match error {
        quinn::WriteError::ConnectionLost(lost) => connection_error(lost, phase),
        quinn::WriteError::Stopped(code) => failure(
            format!("the broker stopped the stream with code {code}"),
            phase,
        ),
        other => failure(format!("writing to the broker: {other}"), phase),
    }
}

fn failure(reason: String, phase: Phase) -> ConnectionError {
    match phase {
        Phase::Connecting => ConnectionError::Connect { reason },
        Phase::Established => ConnectionError::ConnectionLost { reason },
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
mod tests {
    //! Every quinn close reason a user can meet, and the sentence it becomes.

    #![allow(clippy::panic)] // A failed expectation in a test panics on purpose.

    use bytes::Bytes;
    use quinn::{ApplicationClose, ConnectionClose, VarInt};

    use super::*;

    fn closed_with_alert(alert: u8, reason: &'static str) -> QuicConnectionError {
        QuicConnectionError::ConnectionClosed(ConnectionClose {
            error_code: TransportErrorCode::crypto(alert),
            frame_type: None,
            reason: Bytes::from_static(reason.as_bytes()),
        })
    }

    fn certificate_reason(error: ConnectionError) -> String {
        match error {
            ConnectionError::Certificate { reason } => reason,
            other => panic!("expected a certificate error, got {other:?}"),
        }
    }

    #[test]
    fn expired_client_certificate_reads_as_a_certificate_refusal() {
        let error = connection_error(&closed_with_alert(45, ""), Phase::Connecting);
        assert_eq!(
            certificate_reason(error),
            "the broker refused this client's certificate: certificate expired or not yet valid \
             (TLS alert 45)"
        );
    }

    #[test]
    fn every_certificate_alert_is_a_certificate_error_in_both_phases() {
        for alert in [40, 42, 43, 44, 45, 48, 116] {
            for phase in [Phase::Connecting, Phase::Established] {
                let reason =
                    certificate_reason(connection_error(&closed_with_alert(alert, ""), phase));
                assert!(
                    reason.ends_with(&format!("(TLS alert {alert})")),
                    "{reason}"
                );
                assert!(!reason.contains("TLS alert (TLS"), "{reason}");
            }
        }
    }

    #[test]
    fn unknown_ca_and_missing_certificate_say_what_to_fix() {
        let unknown_ca = certificate_reason(connection_error(
            &closed_with_alert(48, ""),
            Phase::Connecting,
        ));
        assert!(
            unknown_ca.contains("not issued by a trusted CA"),
            "{unknown_ca}"
        );
        let missing = certificate_reason(connection_error(
            &closed_with_alert(116, ""),
            Phase::Connecting,
        ));
        assert!(missing.contains("no certificate presented"), "{missing}");
    }

    #[test]
    fn the_brokers_close_reason_is_kept() {
        let reason = certificate_reason(connection_error(
            &closed_with_alert(44, "invalid peer certificate: Revoked"),
            Phase::Connecting,
        ));
        assert_eq!(
            reason,
            "the broker refused this client's certificate: certificate revoked (TLS alert 44): \
             invalid peer certificate: Revoked"
        );
    }

    #[test]
    fn a_non_certificate_alert_is_a_connect_failure_while_connecting() {
        let error = connection_error(&closed_with_alert(120, ""), Phase::Connecting);
        match error {
            ConnectionError::Connect { reason } => {
                assert!(reason.contains("cassini/1"), "{reason}")
            }
            other => panic!("expected a connect error, got {other:?}"),
        }
    }

    #[test]
    fn an_application_close_carries_the_brokers_code_and_reason() {
        let error = connection_error(
            &QuicConnectionError::ApplicationClosed(ApplicationClose {
                error_code: VarInt::from_u32(ErrorCode::TOO_MANY_CONNECTIONS.value()),
                reason: Bytes::from_static(b"connection limit reached"),
            }),
            Phase::Connecting,
        );
        match error {
            ConnectionError::Refused { code, reason } => {
                assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS);
                assert_eq!(reason, "connection limit reached");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn a_normal_close_means_the_client_is_closed() {
        let goodbye = QuicConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(0),
            reason: Bytes::from_static(b"goodbye"),
        });
        assert!(matches!(
            connection_error(&goodbye, Phase::Established),
            ConnectionError::Closed
        ));
        assert!(matches!(
            connection_error(&QuicConnectionError::LocallyClosed, Phase::Established),
            ConnectionError::Closed
        ));
    }

    #[test]
    fn a_timeout_is_a_connect_failure_before_welcome_and_a_lost_connection_after() {
        assert!(matches!(
            connection_error(&QuicConnectionError::TimedOut, Phase::Connecting),
            ConnectionError::Connect { .. }
        ));
        assert!(matches!(
            connection_error(&QuicConnectionError::TimedOut, Phase::Established),
            ConnectionError::ConnectionLost { .. }
        ));
    }

    #[test]
    fn crypto_alerts_are_recognised_only_in_the_crypto_range() {
        assert_eq!(crypto_alert(TransportErrorCode::crypto(48)), Some(48));
        assert_eq!(crypto_alert(TransportErrorCode::PROTOCOL_VIOLATION), None);
        assert_eq!(
            crypto_alert(TransportErrorCode::CRYPTO_BUFFER_EXCEEDED),
            None
        );
    }
}
