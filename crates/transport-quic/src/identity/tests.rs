use std::error::Error;

use rcgen::string::Ia5String;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};

use super::*;
use crate::certs::CertificateAuthority;

type TestResult = Result<(), Box<dyn Error>>;

fn self_signed(
    common_name: Option<&str>,
    sans: Vec<SanType>,
) -> Result<CertificateDer<'static>, Box<dyn Error>> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    if let Some(common_name) = common_name {
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
    }
    params.subject_alt_names = sans;
    let key = KeyPair::generate()?;
    Ok(params.self_signed(&key)?.der().clone())
}

fn dns(name: &str) -> Result<SanType, Box<dyn Error>> {
    Ok(SanType::DnsName(Ia5String::try_from(name)?))
}

fn uri(name: &str) -> Result<SanType, Box<dyn Error>> {
    Ok(SanType::URI(Ia5String::try_from(name)?))
}

#[test]
fn issued_client_certificates_identify_the_client_by_name() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let der = ca.issue_client("alice")?.cert_der()?;
    assert_eq!(identity_from_cert(&der)?, "alice");
    Ok(())
}

#[test]
fn a_uri_san_wins_over_dns_sans_and_the_common_name() -> TestResult {
    let sans = vec![
        dns("alice.example")?,
        uri("spiffe://cassini/alice")?,
        uri("urn:second")?,
    ];
    let der = self_signed(Some("cn-alice"), sans)?;
    assert_eq!(identity_from_cert(&der)?, "spiffe://cassini/alice");
    Ok(())
}

#[test]
fn the_first_dns_san_wins_over_the_common_name() -> TestResult {
    let sans = vec![
        SanType::IpAddress("10.0.0.1".parse()?),
        dns("alice.example")?,
        dns("other.example")?,
    ];
    let der = self_signed(Some("cn-alice"), sans)?;
    assert_eq!(identity_from_cert(&der)?, "alice.example");
    Ok(())
}

#[test]
fn the_common_name_is_used_when_there_is_no_uri_or_dns_san() -> TestResult {
    let sans = vec![SanType::IpAddress("10.0.0.1".parse()?)];
    let der = self_signed(Some("cn-alice"), sans)?;
    assert_eq!(identity_from_cert(&der)?, "cn-alice");
    Ok(())
}

#[test]
fn a_certificate_naming_nobody_has_no_identity() -> TestResult {
    let der = self_signed(None, Vec::new())?;
    let result = identity_from_cert(&der);
    assert!(
        matches!(result, Err(IdentityError::NoIdentity(_))),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn garbage_is_not_a_certificate() {
    let result = identity_from_cert(&CertificateDer::from(vec![0x30, 0x03, 0x01, 0x02]));
    assert!(
        matches!(result, Err(IdentityError::InvalidCertificate { .. })),
        "{result:?}"
    );
}

#[test]
fn a_configured_rule_takes_only_its_kind_of_name() -> TestResult {
    let sans = vec![
        dns("alice.example")?,
        uri("urn:other")?,
        uri("spiffe://example.org/alice")?,
    ];
    let der = self_signed(Some("cn-alice"), sans)?;
    let rule = |text: &str| text.parse::<IdentityRule>();
    assert_eq!(
        identity_from_cert_with(&der, &rule("default")?)?,
        "urn:other"
    );
    assert_eq!(
        identity_from_cert_with(&der, &rule("uri:spiffe://example.org/")?)?,
        "spiffe://example.org/alice"
    );
    assert_eq!(
        identity_from_cert_with(&der, &rule("dns")?)?,
        "alice.example"
    );
    assert_eq!(identity_from_cert_with(&der, &rule("cn")?)?, "cn-alice");
    let only_cn = self_signed(Some("bob"), Vec::new())?;
    assert!(matches!(
        identity_from_cert_with(&only_cn, &rule("uri:spiffe://")?),
        Err(IdentityError::NoIdentity(_))
    ));
    assert!(matches!(
        identity_from_cert_with(&only_cn, &rule("dns")?),
        Err(IdentityError::NoIdentity(_))
    ));
    assert!("spiffe".parse::<IdentityRule>().is_err());
    assert_eq!(rule("uri:spiffe://x/")?.to_string(), "uri:spiffe://x/");
    Ok(())
}
