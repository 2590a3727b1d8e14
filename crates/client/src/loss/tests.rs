//! Which failures are retried, which start a new session, and which stop the client.

use super::*;

fn refused(code: ErrorCode) -> ClientError {
    ClientError::Refused {
        code,
        reason: "because".into(),
    }
}

#[test]
fn transient_failures_are_retried() {
    let transient = [
        ClientError::ConnectionLost {
            reason: "timed out".into(),
        },
        ClientError::Connect {
            reason: "unreachable".into(),
        },
        ClientError::Timeout("connecting to the broker"),
        ClientError::Resolve {
            addr: "broker:7700".into(),
            reason: "no answer".into(),
        },
        refused(ErrorCode::SERVER_SHUTTING_DOWN),
        refused(ErrorCode::TOO_MANY_CONNECTIONS),
        refused(ErrorCode::INTERNAL),
        refused(ErrorCode::HELLO_TIMEOUT),
    ];
    for error in transient {
        assert_eq!(classify(&error), Loss::Retry, "{error}");
    }
}

#[test]
fn an_unknown_session_starts_a_new_one() {
    assert_eq!(
        classify(&refused(ErrorCode::SESSION_NOT_FOUND)),
        Loss::SessionLost
    );
}

#[test]
fn a_session_taken_over_is_final() {
    assert_eq!(
        classify(&refused(ErrorCode::SESSION_TAKEN_OVER)),
        Loss::Final(DisconnectReason::SessionTakenOver)
    );
}

#[test]
fn refusals_that_would_repeat_are_final() {
    let repeating = [
        ClientError::Certificate {
            reason: "expired".into(),
        },
        ClientError::BrokerCertificate {
            reason: "unknown CA".into(),
        },
        ClientError::Protocol {
            reason: "bad frame".into(),
        },
        refused(ErrorCode::UNSUPPORTED_VERSION),
        refused(ErrorCode::PROTOCOL_VIOLATION),
        refused(ErrorCode::SESSION_IDENTITY_MISMATCH),
    ];
    for error in repeating {
        assert!(
            matches!(
                classify(&error),
                Loss::Final(DisconnectReason::Refused { .. })
            ),
            "{error}"
        );
    }
}

#[test]
fn a_normal_close_is_final() {
    assert_eq!(
        classify(&ClientError::Closed),
        Loss::Final(DisconnectReason::Closed)
    );
}
