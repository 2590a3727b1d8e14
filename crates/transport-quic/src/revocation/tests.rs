use std::error::Error;

use rustls_pki_types::pem::PemObject;

use super::*;
use crate::certs::{
    crl_path, ensure_dev_certs, issue_client_file, revoke_client_file, CertificateAuthority,
};

type TestResult = Result<(), Box<dyn Error>>;

#[test]
fn a_missing_crl_is_no_revocation_unless_required() -> TestResult {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("crl.pem");
    let optional = CrlSource::new(path.clone(), false).load()?;
    assert!(optional.crls.is_empty());
    assert!(optional.kept_last_good.is_none());
    let required = CrlSource::new(path, true).load();
    assert!(matches!(required, Err(TlsError::CrlMissing { .. })));
    Ok(())
}

#[test]
fn once_a_crl_was_in_force_a_missing_or_broken_file_keeps_it() -> TestResult {
    let dir = tempfile::tempdir()?;
    ensure_dev_certs(dir.path())?;
    let path = crl_path(dir.path());
    revoke_client_file(dir.path(), "dev")?;
    let source = CrlSource::new(path.clone(), false);
    let first = source.load()?;
    assert_eq!(first.crls.len(), 1);
    assert_eq!(source.status().revoked, 1);
    assert!(source.status().in_force);

    std::fs::remove_file(&path)?;
    let kept = source.load()?;
    assert_eq!(kept.crls, first.crls, "the last good CRL");
    let problem = kept.kept_last_good.ok_or("a problem is reported")?;
    assert!(problem.contains("does not exist"), "{problem}");
    assert_eq!(source.status().problem.as_deref(), Some(problem.as_str()));

    std::fs::write(&path, "garbage")?;
    let kept = source.load()?;
    assert_eq!(kept.crls, first.crls);
    assert!(kept.kept_last_good.is_some());

    std::fs::remove_file(&path)?;
    issue_client_file(dir.path(), "dave")?;
    revoke_client_file(dir.path(), "dave")?;
    revoke_client_file(dir.path(), "dev")?;
    let fresh = source.load()?;
    assert!(fresh.kept_last_good.is_none());
    assert_eq!(source.status().revoked, 2, "the new file, not the kept one");
    assert!(source.status().problem.is_none());
    Ok(())
}

#[test]
fn a_certificates_key_is_what_a_crl_listing_it_revokes() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let other_ca = CertificateAuthority::generate("Other CA")?;
    let eve = ca.issue_client("eve")?;
    let bob = ca.issue_client("bob")?;
    let crl = ca.revocation_list(&[&eve], 1)?;
    let revoked = revoked_keys(&[crl], Path::new("crl.pem"))?;
    let key = |cert: &crate::certs::IssuedCert| -> Result<String, Box<dyn Error>> {
        let der = CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())?;
        Ok(certificate_key(&der).ok_or("a key")?)
    };
    assert!(revoked.contains(&key(&eve)?));
    assert!(!revoked.contains(&key(&bob)?));
    let reissued = ca.issue_client("eve")?;
    assert!(!revoked.contains(&key(&reissued)?), "a new serial");
    let foreign = other_ca.revocation_list(&[&eve], 1)?;
    assert!(
        !revoked_keys(&[foreign], Path::new("crl.pem"))?.contains(&key(&eve)?),
        "another issuer's CRL names another certificate"
    );
    Ok(())
}
