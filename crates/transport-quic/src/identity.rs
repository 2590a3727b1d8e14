//! Peer identity: the name a verified client certificate stands for.
//!
//! The identity of a certificate is, in this order of preference:
//!
//! 1. its first URI subject alternative name,
//! 2. else its first DNS subject alternative name,
//! 3. else its subject common name (CN).
//!
//! Empty names are skipped; IP address SANs and other SAN kinds are ignored. Certificates from
//! [`crate::certs::CertificateAuthority::issue_client`] carry the client name as a DNS SAN and as
//! the CN, so both rules agree on it. The rule is fixed for now and will become configurable.
//!
//! This module only reads certificates that TLS has already verified (see [`crate::tls`]); it
//! does not verify anything itself and says nothing about what an identity may do.

use std::any::Any;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// Why no identity could be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The certificate is not valid DER X.509.
    #[error("the peer certificate cannot be parsed: {reason}")]
    InvalidCertificate {
        /// What the parser reported.
        reason: String,
    },
    /// The certificate has no URI SAN, no DNS SAN and no readable common name.
    #[error("the peer certificate names no identity (no URI or DNS SAN, no common name)")]
    NoIdentity,
    /// The connection has no peer certificate (the handshake is not complete, or the peer was
    /// not asked for one).
    #[error("the connection has no peer certificate")]
    NoPeerCertificate,
    /// The connection's peer identity is not a certificate chain (not a rustls session).
    #[error("the connection's peer identity is not a certificate chain")]
    NotACertificateChain,
}

/// The identity of `der`: first URI SAN, else first DNS SAN, else subject CN.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<String, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        IdentityError::InvalidCertificate {
            reason: error.to_string(),
        }
    })?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|error| IdentityError::InvalidCertificate {
            reason: error.to_string(),
        })?
        .map(|extension| extension.value.general_names.as_slice())
        .unwrap_or_default();
    let uri = sans.iter().find_map(|name| match name {
        GeneralName::URI(uri) if !uri.is_empty() => Some(*uri),
        _ => None,
    });
    let dns = sans.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) if !dns.is_empty() => Some(*dns),
        _ => None,
    });
    let common_name = cert
        .subject()
        .iter_common_name()
        .filter_map(|attribute| attribute.as_str().ok())
        .find(|name| !name.is_empty());
    uri.or(dns)
        .or(common_name)
        .map(str::to_owned)
        .ok_or(IdentityError::NoIdentity)
}

/// The identity of the peer of `conn`, read from its leaf certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<String, IdentityError> {
    let identity: Box<dyn Any> = conn
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NotACertificateChain)?;
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    identity_from_cert(leaf)
}

#[cfg(test)]
mod tests;
