//! Revocation: the certificate directory's `crl.pem`, signed by its CA.
//!
//! [`revoke_client_file`] adds a client's certificate to the list ([`revoke_node_file`] a cluster
//! node's), keeping every entry already there, and re-signs it with a CRL number one above the previous list's. The list is written
//! to a temporary file and renamed over `crl.pem`, so a broker watching the directory never
//! reads half a list.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationList, CertificateRevocationListParams, KeyIdMethod, RevokedCertParams,
    SerialNumber,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateRevocationListDer;
use time::{Duration, OffsetDateTime};

use super::{
    client_paths, exists, node_paths, read_to_string, write_public, CertError,
    CertificateAuthority, IssuedCert,
};

/// How long a CRL written by [`revoke_client_file`] says it is current (`nextUpdate`). The
/// broker does not enforce it unless asked to (`RevocationOptions::enforce_crl_expiry`).
pub const CRL_VALIDITY: Duration = Duration::days(365);

/// The CRL file of a certificate directory.
pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join("crl.pem")
}

/// What [`revoke_client_file`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReport {
    /// The CRL written.
    pub crl: PathBuf,
    /// The revoked certificate's serial number, hex.
    pub serial: String,
    /// Whether the certificate was already on the list (the list is re-signed all the same).
    pub already_revoked: bool,
    /// How many certificates the list now holds.
    pub revoked_count: usize,
}

/// Adds `client-NAME.crt` in `dir` to `dir/crl.pem`, signed by the CA in `dir`.
pub fn revoke_client_file(dir: &Path, name: &str) -> Result<RevokeReport, CertError> {
    let (cert_path, _) = client_paths(dir, name);
    if !exists(&cert_path)? {
        return Err(CertError::NoClientCertificate { path: cert_path });
    }
    revoke_file(dir, &cert_path)
}

/// Adds cluster node `name`'s `node-NAME.crt` in `dir` to `dir/crl.pem`, signed by the CA in
/// `dir`.
pub fn revoke_node_file(dir: &Path, name: &str) -> Result<RevokeReport, CertError> {
    let (cert_path, _) = node_paths(dir, name);
    if !exists(&cert_path)? {
        return Err(CertError::NoNodeCertificate { path: cert_path });
    }
    revoke_file(dir, &cert_path)
}

/// Adds the certificate at `cert_path` to `dir/crl.pem`, signed by the CA in `dir`.
fn revoke_file(dir: &Path, cert_path: &Path) -> Result<RevokeReport, CertError> {
    let ca = CertificateAuthority::load(dir)?;
    let serial = serial_of_cert_file(cert_path)?;
    let path = crl_path(dir);
    let now = OffsetDateTime::now_utc();
    let (mut revoked, previous_number) = if exists(&path)? {
        read_crl(&path)?
    } else {
        (Vec::new(), 0)
    };
    let already_revoked = revoked
        .iter()
        .any(|entry: &RevokedCertParams| entry.serial_number.to_bytes() == serial);
    if !already_revoked {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let revoked_count = revoked.len();
    let crl = ca.sign_crl(revoked, previous_number.saturating_add(1))?;
    let pem = crl.pem().map_err(CertError::Generate)?;
    write_atomically(&path, &pem)?;
    Ok(RevokeReport {
        crl: path,
        serial: hex(&serial),
        already_revoked,
        revoked_count,
    })
}

impl CertificateAuthority {
    /// A CRL signed by this CA, current from now for [`CRL_VALIDITY`], listing `revoked` (as
    /// revoked now) with CRL number `number`. For tests and tools that manage their own lists.
    pub fn revocation_list(
        &self,
        revoked: &[&IssuedCert],
        number: u64,
    ) -> Result<CertificateRevocationListDer<'static>, CertError> {
        let now = OffsetDateTime::now_utc();
        let entries = revoked
            .iter()
            .map(|cert| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial_of_pem(&cert.cert_pem)?),
                    revocation_time: now,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<_, CertError>>()?;
        Ok(self.sign_crl(entries, u128::from(number))?.der().clone())
    }

    fn sign_crl(
        &self,
        revoked: Vec<RevokedCertParams>,
        number: u128,
    ) -> Result<CertificateRevocationList, CertError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + CRL_VALIDITY,
            crl_number: minimal_integer(number),
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params.signed_by(&self.issuer).map_err(|error| match error {
            rcgen::Error::IssuerNotCrlSigner => CertError::CaCannotSignCrls,
            other => CertError::Generate(other),
        })
    }
}

fn serial_of_cert_file(path: &Path) -> Result<Vec<u8>, CertError> {
    serial_of_pem(&read_to_string(path)?)
}

/// The serial number of the PEM certificate `pem`, as its DER content bytes.
fn serial_of_pem(pem: &str) -> Result<Vec<u8>, CertError> {
    let der =
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|error| {
            CertError::Pem {
                what: "certificate",
                error,
            }
        })?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|error| {
        CertError::InvalidCertificate {
            reason: error.to_string(),
        }
    })?;
    Ok(cert.raw_serial().to_vec())
}

/// The entries and CRL number of the CRL at `path`.
fn read_crl(path: &Path) -> Result<(Vec<RevokedCertParams>, u128), CertError> {
    let invalid = |reason: String| CertError::InvalidCrl {
        path: path.to_owned(),
        reason,
    };
    let pem = read_to_string(path)?;
    let der = CertificateRevocationListDer::from_pem_slice(pem.as_bytes())
        .map_err(|error| invalid(error.to_string()))?;
    let (_, crl) = x509_parser::parse_x509_crl(&der).map_err(|error| invalid(error.to_string()))?;
    let number = crl
        .crl_number()
        .map(|number| number.to_bytes_be())
        .unwrap_or_default();
    if number.len() > 16 {
        return Err(invalid("its CRL number is too large".into()));
    }
    let number = number
        .iter()
        .fold(0u128, |acc, &byte| (acc << 8) | u128::from(byte));
    let revoked = crl
        .iter_revoked_certificates()
        .map(|entry| {
            let revocation_time =
                OffsetDateTime::from_unix_timestamp(entry.revocation_date.timestamp())
                    .map_err(|error| invalid(error.to_string()))?;
            Ok(RevokedCertParams {
                serial_number: SerialNumber::from_slice(entry.raw_serial()),
                revocation_time,
                reason_code: None,
                invalidity_date: None,
            })
        })
        .collect::<Result<_, CertError>>()?;
    Ok((revoked, number))
}

/// Writes `contents` to a temporary file beside `path`, then renames it over `path`.
pub(super) fn write_atomically(path: &Path, contents: &str) -> Result<(), CertError> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    write_public(&temporary, contents)?;
    std::fs::rename(&temporary, path).map_err(|error| CertError::Io {
        action: "renaming into place",
        path: path.to_owned(),
        error,
    })
}

/// `value` as the shortest big-endian bytes (DER integers must be minimal).
fn minimal_integer(value: u128) -> SerialNumber {
    let bytes = value.to_be_bytes();
    let first = bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(bytes.len() - 1);
    SerialNumber::from_slice(&bytes[first..])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
