//! [`ClientError`] as Python exceptions: the classes live in `cassini/_errors.py`, and every
//! error raised here carries the broker's code (number and name) when it has one, and the
//! reason.

use cassini_client::{ClientError, ErrorCode};
use pyo3::prelude::*;
use pyo3::types::PyModule;

/// The `cassini._errors` class for `error`, with the broker's code when it has one.
fn classify(error: &ClientError) -> (&'static str, Option<ErrorCode>) {
    let code = match error {
        ClientError::Refused { code, .. }
        | ClientError::Request { code, .. }
        | ClientError::PublishRejected { code, .. } => Some(*code),
        _ => None,
    };
    if code == Some(ErrorCode::NOT_AUTHORIZED) {
        return ("NotAuthorized", code);
    }
    if code == Some(ErrorCode::SLOW_CONSUMER) {
        return ("SlowConsumer", code);
    }
    let class = match error {
        ClientError::Config { .. } => "ConfigError",
        ClientError::Tls(_) => "TlsError",
        ClientError::Endpoint(_) | ClientError::Resolve { .. } | ClientError::Connect { .. } => {
            "ConnectError"
        }
        ClientError::Certificate { .. } => "CertificateRefused",
        ClientError::BrokerCertificate { .. } => "BrokerCertificateError",
        ClientError::Refused { .. } => "Refused",
        ClientError::Request { .. } => "RequestRefused",
        ClientError::PublishRejected { .. } => "PublishRejected",
        ClientError::ConnectionLost { .. } => "ConnectionLost",
        ClientError::Protocol { .. } => "ProtocolError",
        ClientError::InvalidTopic(_)
        | ClientError::InvalidReplyTo(_)
        | ClientError::InvalidFilter(_) => "InvalidTopic",
        ClientError::PayloadTooLarge { .. } => "PayloadTooLarge",
        ClientError::TooManyHeaders { .. } | ClientError::HeadersTooLarge { .. } => {
            "HeadersTooLarge"
        }
        ClientError::NoResponders { .. } => "NoResponders",
        ClientError::Timeout(_) => "Timeout",
        ClientError::Closed => "Closed",
        ClientError::Disconnected { .. } => "Disconnected",
        ClientError::OutboundBufferFull { .. } => "OutboundBufferFull",
        _ => "CassiniError",
    };
    (class, code)
}

/// The reason without the code the message appends, for the exception's `reason`.
fn reason(error: &ClientError) -> String {
    match error {
        ClientError::Refused { reason, .. }
        | ClientError::Request { reason, .. }
        | ClientError::PublishRejected { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The Python exception for `error`: `cassini.<Class>(message, code, code_name, reason)`.
pub(crate) fn to_py_with(py: Python<'_>, error: ClientError) -> PyErr {
    let (class, code) = classify(&error);
    let raised = PyModule::import(py, "cassini._errors")
        .and_then(|module| module.getattr(class))
        .and_then(|class| {
            class.call1((
                error.to_string(),
                code.map(ErrorCode::value),
                code.and_then(ErrorCode::name),
                reason(&error),
            ))
        });
    match raised {
        Ok(exception) => PyErr::from_value(exception),
        Err(import_failed) => import_failed,
    }
}

/// [`to_py_with`], for callers on a Python thread.
pub(crate) fn to_py(error: ClientError) -> PyErr {
    Python::attach(|py| to_py_with(py, error))
}

/// `Result<T, ClientError>` (or an error that converts into it) to `PyResult<T>`.
pub(crate) fn py_result<T, E: Into<ClientError>>(result: Result<T, E>) -> PyResult<T> {
    result.map_err(|error| to_py(error.into()))
}
