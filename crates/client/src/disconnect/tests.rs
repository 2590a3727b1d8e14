//! Every quinn close reason a user can meet, and the sentence it becomes.

#![allow(clippy::panic)] // A failed expectation in a test panics on purpose.

use bytes::Bytes;
use quinn::{ApplicationClose, ConnectionClose, VarInt};

use super::*;

fn closed_with_alert(alert: u8, reason: &'static str) -> ConnectionError {
    ConnectionError::ConnectionClosed(ConnectionClose {
        error_code: TransportErrorCode::crypto(alert),
        frame_type: None,
        reason: Bytes::from_static(reason.as_bytes()),
    })
}

fn certificate_reason(error: ClientError) -> String {
    match error {
        ClientError::Certificate { reason } => reason,
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
            let reason = certificate_reason(connection_error(&closed_with_alert(alert, ""), phase));
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
        ClientError::Connect { reason } => assert!(reason.contains("cassini/1"), "{reason}"),
        other => panic!("expected a connect error, got {other:?}"),
    }
}

#[test]
fn an_application_close_carries_the_brokers_code_and_reason() {
    let error = connection_error(
        &ConnectionError::ApplicationClosed(ApplicationClose {
            error_code: VarInt::from_u32(ErrorCode::TOO_MANY_CONNECTIONS.value()),
            reason: Bytes::from_static(b"connection limit reached"),
        }),
        Phase::Connecting,
    );
    match error {
        ClientError::Refused { code, reason } => {
            assert_eq!(code, ErrorCode::TOO_MANY_CONNECTIONS);
            assert_eq!(reason, "connection limit reached");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_normal_close_means_the_client_is_closed() {
    let goodbye = ConnectionError::ApplicationClosed(ApplicationClose {
        error_code: VarInt::from_u32(0),
        reason: Bytes::from_static(b"goodbye"),
    });
    assert!(matches!(
        connection_error(&goodbye, Phase::Established),
        ClientError::Closed
    ));
    assert!(matches!(
        connection_error(&ConnectionError::LocallyClosed, Phase::Established),
        ClientError::Closed
    ));
}

#[test]
fn a_timeout_is_a_connect_failure_before_welcome_and_a_lost_connection_after() {
    assert!(matches!(
        connection_error(&ConnectionError::TimedOut, Phase::Connecting),
        ClientError::Connect { .. }
    ));
    assert!(matches!(
        connection_error(&ConnectionError::TimedOut, Phase::Established),
        ClientError::ConnectionLost { .. }
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
