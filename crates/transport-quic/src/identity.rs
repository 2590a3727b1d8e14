//! Peer identity: the name a verified client certificate stands for.
//!
//! The identity of a certificate is chosen by an [`IdentityRule`]. The default rule takes, in
//! this order of preference:
//!
//! 1. its first URI subject alternative name,
//! 2. else its first DNS subject alternative name,
//! 3. else its subject common name (CN).
//!
//! The other rules take exactly one kind of name, with no fallback: the first URI SAN that
//! starts with a given prefix (e.g. `spiffe://example.org/`), the first DNS SAN, or the CN. A
//! certificate without that name has no identity and is refused.
//!
//! Empty names are skipped; IP address SANs and other SAN kinds are ignored. Certificates from
//! [`crate::certs::CertificateAuthority::issue_client`] carry the client name as a DNS SAN and as
//! the CN, so the default, `dns` and `cn` rules agree on it.
//!
//! This module only reads certificates that TLS has already verified (see [`crate::tls`]); it
//! does not verify anything itself and says nothing about what an identity may do.

use std::any::Any;

use rustls_pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

/// The URI scheme that makes a certificate a cluster node's: a node certificate carries the URI
/// SAN `cassini-node:NAME`, and a certificate is a node certificate exactly when it carries a URI
/// SAN starting with this (see [`node_name`] and docs/CLUSTERING.md). Client certificates from
/// [`crate::certs::CertificateAuthority::issue_client`] never carry a URI SAN.
pub const NODE_URI_PREFIX: &str = "cassini-node:";

/// The DNS name every node certificate carries and a dialing node checks as the server name:
/// peers are configured by address, so the name is the same for every node (the node's own name
/// is read from its URI SAN).
pub const NODE_SERVER_NAME: &str = "node.cassini-cluster.invalid";

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
    /// The certificate has no name the identity rule (named here) takes.
    #[error("the peer certificate has no name the identity rule {0:?} takes")]
    NoIdentity(String),
    /// The connection has no peer certificate (the handshake is not complete, or the peer was
    /// not asked for one).
    #[error("the connection has no peer certificate")]
    NoPeerCertificate,
    /// The connection's peer identity is not a certificate chain (not a rustls session).
    #[error("the connection's peer identity is not a certificate chain")]
    NotACertificateChain,
}

/// Which name of a client certificate is its identity.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum IdentityRule {
    /// The first URI SAN, else the first DNS SAN, else the CN. Written `default`.
    #[default]
    UriThenDnsThenCn,
    /// The first URI SAN starting with this prefix, and nothing else. Written `uri:PREFIX`
    /// (`uri:` alone takes any URI SAN).
    UriWithPrefix(String),
    /// The first DNS SAN, and nothing else. Written `dns`.
    Dns,
    /// The subject CN, and nothing else. Written `cn`.
    CommonName,
}

impl std::str::FromStr for IdentityRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "default" => Ok(Self::UriThenDnsThenCn),
            "dns" => Ok(Self::Dns),
            "cn" => Ok(Self::CommonName),
            other => match other.strip_prefix("uri:") {
                Some(prefix) => Ok(Self::UriWithPrefix(prefix.to_owned())),
                None => Err(format!(
                    "unknown identity rule {other:?}: expected default, uri:PREFIX, dns or cn"
                )),
            },
        }
    }
}

impl std::fmt::Display for IdentityRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UriThenDnsThenCn => f.write_str("default"),
            Self::UriWithPrefix(prefix) => write!(f, "uri:{prefix}"),
            Self::Dns => f.write_str("dns"),
            Self::CommonName => f.write_str("cn"),
        }
    }
}

/// The identity of `der` under the default rule: first URI SAN, else first DNS SAN, else
/// subject CN.
pub fn identity_from_cert(der: &CertificateDer<'_>) -> Result<String, IdentityError> {
    identity_from_cert_with(der, &IdentityRule::default())
}

/// The identity of `der` under `rule`.
pub fn identity_from_cert_with(
    der: &CertificateDer<'_>,
    rule: &IdentityRule,
) -> Result<String, IdentityError> {
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
    let uri_with = |prefix: &str| {
        sans.iter().find_map(|name| match name {
            GeneralName::URI(uri) if !uri.is_empty() && uri.starts_with(prefix) => Some(*uri),
            _ => None,
        })
    };
    let dns = sans.iter().find_map(|name| match name {
        GeneralName::DNSName(dns) if !dns.is_empty() => Some(*dns),
        _ => None,
    });
    let common_name = cert
        .subject()
        .iter_common_name()
        .filter_map(|attribute| attribute.as_str().ok())
        .find(|name| !name.is_empty());
    let chosen = match rule {
        IdentityRule::UriThenDnsThenCn => uri_with("").or(dns).or(common_name),
        IdentityRule::UriWithPrefix(prefix) => uri_with(prefix),
        IdentityRule::Dns => dns,
        IdentityRule::CommonName => common_name,
    };
    chosen
        .map(str::to_owned)
        .ok_or_else(|| IdentityError::NoIdentity(rule.to_string()))
}

/// The node name of a cluster node certificate: the rest of its first URI SAN that starts with
/// [`NODE_URI_PREFIX`]; `None` for every other certificate (a client's, a server's,
/// or one that cannot be parsed). A certificate is a node certificate exactly when this is
/// `Some` (docs/CLUSTERING.md).
pub fn node_name(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let sans = cert.subject_alternative_name().ok()??;
    sans.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri.strip_prefix(NODE_URI_PREFIX).map(str::to_owned),
        _ => None,
    })
}

/// The identity of the peer of `conn` under the default rule, read from its leaf certificate.
pub fn peer_identity(conn: &quinn::Connection) -> Result<String, IdentityError> {
    let chain = peer_chain(conn)?;
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    identity_from_cert(leaf)
}

/// The certificate chain the peer of `conn` presented, leaf first.
pub fn peer_chain(conn: &quinn::Connection) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let identity: Box<dyn Any> = conn
        .peer_identity()
        .ok_or(IdentityError::NoPeerCertificate)?;
    let chain = identity
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| IdentityError::NotACertificateChain)?;
    if chain.is_empty() {
        return Err(IdentityError::NoPeerCertificate);
    }
    Ok(*chain)
}

#[cfg(test)]
mod tests;
