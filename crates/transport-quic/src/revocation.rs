//! The CRL rule, and the names by which a CRL and a session refer to a certificate.
//!
//! **The CRL rule.** [`CrlSource`] reads the broker's CRL file at start and at every reload.
//! Once a CRL has been in force, a CRL file that is missing, unreadable or invalid never turns
//! revocation off: the last good CRL stays in force, and [`CrlSource::status`] says why (the
//! broker logs it at error level at every reload and `/varz` shows it) until a good file is back.
//! Before any CRL has been in force, a missing file means no revocation check at all, unless
//! the source requires a CRL (`certs.require_crl`), in which case the missing file is an error
//! (at start: the broker does not start).
//!
//! **Certificate keys.** [`certificate_key`] names a certificate by its issuer and serial
//! number, which is how a CRL entry names it; [`revoked_keys`] lists the keys a set of CRLs
//! revokes. The broker remembers the key of the certificate that created or last attached each
//! session, so that a CRL revoking that certificate ends the session, attached or not.
//!
//! This module reads files and parses certificates; it verifies nothing (see [`crate::tls`]).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use crate::tls::error::TlsError;
use crate::tls::pem_files::load_crls;

/// What revocation is in force, for logs and monitoring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrlStatus {
    /// The CRL file.
    pub path: PathBuf,
    /// Whether a CRL is in force (clients are checked against it).
    pub in_force: bool,
    /// Certificates the CRL in force lists.
    pub revoked: usize,
    /// When the CRL in force was read, in ms since the Unix epoch.
    pub loaded_at_ms: Option<u64>,
    /// Set while the last good CRL is kept because the file is missing, unreadable or invalid:
    /// why it could not be used.
    pub problem: Option<String>,
}

/// The CRLs to install, from [`CrlSource::load`].
#[derive(Debug, Clone)]
pub struct CrlLoad {
    /// The CRLs to verify clients against (empty: no revocation check).
    pub crls: Vec<CertificateRevocationListDer<'static>>,
    /// Set when `crls` is the last good CRL, kept because the file could not be used: why.
    pub kept_last_good: Option<String>,
}

#[derive(Debug, Default)]
struct Kept {
    /// The last CRL read successfully.
    good: Option<Vec<CertificateRevocationListDer<'static>>>,
    status: CrlStatus,
}

/// The broker's CRL file, read under the CRL rule (see the module docs).
#[derive(Debug)]
pub struct CrlSource {
    path: PathBuf,
    required: bool,
    kept: Mutex<Kept>,
}

impl CrlSource {
    /// The CRL file at `path`; with `required`, a missing file is an error until a CRL has been
    /// in force.
    pub fn new(path: PathBuf, required: bool) -> Self {
        let kept = Kept {
            good: None,
            status: CrlStatus {
                path: path.clone(),
                ..CrlStatus::default()
            },
        };
        Self {
            path,
            required,
            kept: Mutex::new(kept),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Kept> {
        self.kept
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The CRL file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What is in force now.
    pub fn status(&self) -> CrlStatus {
        self.lock().status.clone()
    }

    /// Reads the file: its CRLs when it is good; else the last good CRL if there is one (and
    /// why the file was not used); else no CRL if the file is missing and not required; else the
    /// error.
    pub fn load(&self) -> Result<CrlLoad, TlsError> {
        let fresh = match self.path.try_exists() {
            Ok(true) => load_crls(&self.path).and_then(|crls| {
                let revoked = revoked_keys(&crls, &self.path)?.len();
                Ok((crls, revoked))
            }),
            Ok(false) => Err(TlsError::CrlMissing {
                path: self.path.clone(),
            }),
            Err(error) => Err(TlsError::Read {
                path: self.path.clone(),
                error,
            }),
        };
        let mut kept = self.lock();
        match fresh {
            Ok((crls, revoked)) => {
                kept.good = Some(crls.clone());
                kept.status = CrlStatus {
                    path: self.path.clone(),
                    in_force: true,
                    revoked,
                    loaded_at_ms: Some(unix_ms(SystemTime::now())),
                    problem: None,
                };
                Ok(CrlLoad {
                    crls,
                    kept_last_good: None,
                })
            }
            Err(error) => match kept.good.clone() {
                Some(crls) => {
                    let problem = error.to_string();
                    kept.status.problem = Some(problem.clone());
                    Ok(CrlLoad {
                        crls,
                        kept_last_good: Some(problem),
                    })
                }
                None => match error {
                    TlsError::CrlMissing { .. } if !self.required => Ok(CrlLoad {
                        crls: Vec::new(),
                        kept_last_good: None,
                    }),
                    error => Err(error),
                },
            },
        }
    }
}

/// The key of the certificate `der`: its issuer and serial number, as a CRL entry names it.
/// `None` if it does not parse.
pub fn certificate_key(der: &CertificateDer<'_>) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(key_of(cert.issuer().as_raw(), cert.raw_serial()))
}

/// When the certificate `der` stops being valid (its `notAfter`); `None` if it does not parse
/// or its end cannot be represented (it then never expires here; TLS still checks it).
pub fn certificate_not_after(der: &CertificateDer<'_>) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let seconds = cert.validity().not_after.timestamp();
    match u64::try_from(seconds) {
        Ok(seconds) => UNIX_EPOCH.checked_add(Duration::from_secs(seconds)),
        // Before 1970: long expired.
        Err(_) => Some(UNIX_EPOCH),
    }
}

/// The longest single wait for a certificate's expiry: the wall clock is read again after it,
/// so a clock that was set forward or back is noticed.
const MAX_EXPIRY_WAIT: Duration = Duration::from_secs(60);

/// Completes once the wall clock has passed `not_after` (see [`certificate_not_after`]);
/// never without one. A connection's transport closes it then.
pub async fn expiry(not_after: Option<SystemTime>) {
    let Some(not_after) = not_after else {
        return std::future::pending().await;
    };
    // notAfter is the last valid second: the certificate expires one second later.
    let expires = not_after
        .checked_add(Duration::from_secs(1))
        .unwrap_or(not_after);
    while let Ok(left) = expires.duration_since(SystemTime::now()) {
        if left.is_zero() {
            break;
        }
        tokio::time::sleep(left.min(MAX_EXPIRY_WAIT)).await;
    }
}

/// The keys (see [`certificate_key`]) of every certificate `crls` list. `path` names the file
/// in the error when a CRL does not parse.
pub fn revoked_keys(
    crls: &[CertificateRevocationListDer<'_>],
    path: &Path,
) -> Result<HashSet<String>, TlsError> {
    let mut keys = HashSet::new();
    for der in crls {
        let (_, crl) = x509_parser::parse_x509_crl(der).map_err(|error| TlsError::InvalidCrl {
            path: path.to_owned(),
            reason: error.to_string(),
        })?;
        let issuer = crl.tbs_cert_list.issuer.as_raw();
        keys.extend(
            crl.iter_revoked_certificates()
                .map(|entry| key_of(issuer, entry.raw_serial())),
        );
    }
    Ok(keys)
}

/// The shared handle to a set of revoked certificate keys.
pub type RevokedKeys = Arc<HashSet<String>>;

fn key_of(issuer: &[u8], serial: &[u8]) -> String {
    let mut key = String::with_capacity((issuer.len() + serial.len()) * 2 + 1);
    for byte in serial {
        let _ = write!(key, "{byte:02x}");
    }
    key.push('@');
    for byte in issuer {
        let _ = write!(key, "{byte:02x}");
    }
    key
}

fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
