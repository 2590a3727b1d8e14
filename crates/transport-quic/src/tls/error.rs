//! [`TlsError`]: why a TLS or QUIC configuration, or the PEM files behind it, could not be used.

use std::path::PathBuf;

use quinn::crypto::rustls::NoInitialCipherSuite;
use rustls::server::VerifierBuilderError;
use rustls_pki_types::pem;

/// Why a TLS or QUIC configuration could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("reading {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        error: std::io::Error,
    },
    /// A certificate or key file is not valid PEM.
    #[error("parsing PEM in {}: {error}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        error: pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{} contains no certificate (expected a \"BEGIN CERTIFICATE\" block)", path.display())]
    NoCertificates {
        /// The file.
        path: PathBuf,
    },
    /// A CRL file holds no CRL.
    #[error("{} contains no CRL (expected a \"BEGIN X509 CRL\" block)", path.display())]
    NoCrls {
        /// The file.
        path: PathBuf,
    },
    /// The CRL file does not exist, and a CRL is required (`certs.require_crl`), or a CRL was
    /// in force before (the last good one is kept; see [`crate::revocation`]).
    #[error("the CRL file {} does not exist", path.display())]
    CrlMissing {
        /// The file.
        path: PathBuf,
    },
    /// A CRL in the file is not a valid X.509 CRL.
    #[error("{} holds an invalid CRL: {reason}", path.display())]
    InvalidCrl {
        /// The file.
        path: PathBuf,
        /// What the parser reported.
        reason: String,
    },
    /// A key file holds no private key.
    #[error("{} contains no private key (expected a \"BEGIN PRIVATE KEY\" block)", path.display())]
    NoPrivateKey {
        /// The file.
        path: PathBuf,
    },
    /// No CA certificate was given, so no peer could ever be verified.
    #[error("no CA certificate given to verify peers against")]
    NoCaCertificates,
    /// A CA certificate cannot be used as a trust anchor.
    #[error("the CA certificate cannot be used as a trust anchor: {0}")]
    InvalidCaCertificate(rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("building the client certificate verifier: {0}")]
    ClientVerifier(VerifierBuilderError),
    /// The server certificate verifier of a dialing cluster node could not be built.
    #[error("building the server certificate verifier: {0}")]
    ServerVerifier(VerifierBuilderError),
    /// rustls rejected the configuration, e.g. a key that does not match its certificate.
    #[error("TLS configuration rejected: {0}")]
    Rustls(rustls::Error),
    /// The rustls configuration cannot carry QUIC (it lacks the TLS 1.3 initial cipher suite).
    #[error("the TLS configuration cannot be used for QUIC: {0}")]
    NotQuicCapable(NoInitialCipherSuite),
    /// A [`QuicOptions`](super::QuicOptions) value is out of range.
    #[error("invalid QUIC option {option}: {reason}")]
    InvalidOption {
        /// The option's field name.
        option: &'static str,
        /// What is wrong with its value.
        reason: &'static str,
    },
}

impl From<rustls::Error> for TlsError {
    fn from(error: rustls::Error) -> Self {
        Self::Rustls(error)
    }
}
