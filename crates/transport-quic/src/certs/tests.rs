use std::error::Error;
use std::net::IpAddr;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::X509Certificate;

use super::*;

type TestResult = Result<(), Box<dyn Error>>;

fn parse<'a>(der: &'a CertificateDer<'_>) -> Result<X509Certificate<'a>, Box<dyn Error>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)?;
    Ok(cert)
}

fn san_strings(cert: &X509Certificate<'_>) -> Result<Vec<String>, Box<dyn Error>> {
    let sans = cert
        .subject_alternative_name()?
        .ok_or("certificate has no SAN extension")?;
    let mut names = Vec::new();
    for name in &sans.value.general_names {
        names.push(match name {
            GeneralName::DNSName(dns) => format!("DNS:{dns}"),
            GeneralName::IPAddress(octets) if octets.len() == 4 => {
                format!("IP:{}", IpAddr::from(<[u8; 4]>::try_from(*octets)?))
            }
            GeneralName::IPAddress(octets) => {
                format!("IP:{}", IpAddr::from(<[u8; 16]>::try_from(*octets)?))
            }
            other => format!("{other:?}"),
        });
    }
    Ok(names)
}

fn mode(path: &Path) -> Result<u32, Box<dyn Error>> {
    Ok(fs::metadata(path)?.permissions().mode() & 0o777)
}

#[test]
fn generated_ca_is_a_ca_that_may_sign_certificates_and_crls() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let cert = parse(ca.cert_der())?;
    let constraints = cert.basic_constraints()?.ok_or("no BasicConstraints")?;
    assert!(constraints.value.ca);
    assert_eq!(constraints.value.path_len_constraint, None);
    let usage = cert.key_usage()?.ok_or("no KeyUsage")?;
    assert!(usage.value.key_cert_sign());
    assert!(usage.value.crl_sign());
    assert!(usage.value.digital_signature());
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime >= CA_VALIDITY.whole_seconds());
    Ok(())
}

#[test]
fn server_certificate_names_localhost_loopback_and_the_extra_names() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let extra = [
        "broker.example.com".to_owned(),
        "10.0.0.7".to_owned(),
        "localhost".to_owned(),
    ];
    let issued = ca.issue_server(&extra)?;
    let der = issued.cert_der()?;
    let cert = parse(&der)?;
    assert_eq!(
        san_strings(&cert)?,
        [
            "DNS:localhost",
            "IP:127.0.0.1",
            "IP:::1",
            "DNS:broker.example.com",
            "IP:10.0.0.7"
        ]
    );
    let eku = cert.extended_key_usage()?.ok_or("no ExtendedKeyUsage")?;
    assert!(eku.value.server_auth);
    assert!(!eku.value.client_auth);
    Ok(())
}

#[test]
fn server_names_that_are_neither_ip_nor_dns_are_rejected() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let result = ca.issue_server(&["not a host".to_owned()]);
    assert!(
        matches!(result, Err(CertError::InvalidName { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn client_certificate_carries_the_name_as_dns_san_and_common_name() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let issued = ca.issue_client("alice")?;
    let der = issued.cert_der()?;
    let cert = parse(&der)?;
    assert_eq!(san_strings(&cert)?, ["DNS:alice"]);
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .ok_or("no CN")?
        .as_str()?;
    assert_eq!(common_name, "alice");
    let eku = cert.extended_key_usage()?.ok_or("no ExtendedKeyUsage")?;
    assert!(eku.value.client_auth);
    assert!(!eku.value.server_auth);
    let lifetime = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert!(lifetime >= LEAF_VALIDITY.whole_seconds());
    assert_eq!(cert.issuer(), parse(ca.cert_der())?.subject());
    Ok(())
}

#[test]
fn client_names_outside_letters_digits_dot_underscore_dash_are_rejected() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    for name in ["", "bob smith", "../etc", "caf\u{e9}", &"x".repeat(65)] {
        let result = ca.issue_client(name);
        assert!(
            matches!(result, Err(CertError::InvalidName { .. })),
            "{name:?}: {result:?}"
        );
    }
    for name in ["a", "svc_billing-2.eu", &"x".repeat(64)] {
        ca.issue_client(name)?;
    }
    Ok(())
}

#[test]
fn every_certificate_gets_a_distinct_positive_serial_number() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let first = ca.issue_client("alice")?.cert_der()?;
    let second = ca.issue_client("alice")?.cert_der()?;
    let serial = |der| -> Result<Vec<u8>, Box<dyn Error>> { Ok(parse(der)?.raw_serial().to_vec()) };
    let (first, second) = (serial(&first)?, serial(&second)?);
    assert_ne!(first, second);
    assert_eq!(first.len(), 16);
    assert!(first[0] & 0x80 == 0, "serial number must be positive");
    Ok(())
}

#[test]
fn validity_can_be_set_to_make_expired_certificates() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let now = OffsetDateTime::now_utc();
    let expired = Validity {
        not_before: now - Duration::days(10),
        not_after: now - Duration::days(1),
    };
    let der = ca.issue_client_with("alice", expired)?.cert_der()?;
    let cert = parse(&der)?;
    assert_eq!(
        cert.validity().not_after.timestamp(),
        expired.not_after.unix_timestamp()
    );
    assert!(!cert.validity().is_valid());
    Ok(())
}

#[test]
fn empty_validity_periods_are_rejected() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let now = OffsetDateTime::now_utc();
    let backwards = Validity {
        not_before: now,
        not_after: now - Duration::days(1),
    };
    let result = ca.issue_client_with("alice", backwards);
    assert!(
        matches!(result, Err(CertError::InvalidValidity { .. })),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn ca_round_trips_through_pem() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let loaded = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem())?;
    assert_eq!(loaded.cert_der(), ca.cert_der());
    let der = loaded.issue_client("alice")?.cert_der()?;
    assert_eq!(parse(&der)?.issuer(), parse(ca.cert_der())?.subject());
    Ok(())
}

#[test]
fn loading_a_ca_with_another_cas_key_is_refused() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let other = CertificateAuthority::generate("Other CA")?;
    let result = CertificateAuthority::from_pem(ca.cert_pem(), other.key_pem());
    assert!(
        matches!(result, Err(CertError::CaKeyMismatch)),
        "{result:?}"
    );
    Ok(())
}

#[test]
fn loading_a_leaf_certificate_as_a_ca_is_refused() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let leaf = ca.issue_client("alice")?;
    let result = CertificateAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem);
    assert!(matches!(result, Err(CertError::NotACa)), "{result:?}");
    Ok(())
}

#[test]
fn init_dir_writes_the_layout_with_private_keys_readable_only_by_the_owner() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("certs");
    let opts = InitOptions {
        server_names: vec!["broker.internal".to_owned()],
        clients: vec!["alice".to_owned(), "bob".to_owned()],
        ..InitOptions::default()
    };
    let report = init_dir(&dir, &opts)?;
    assert_eq!(report.ca, CaStatus::Created);
    let expected: Vec<PathBuf> = [
        "ca.crt",
        "ca.key",
        "server.crt",
        "server.key",
        "client-alice.crt",
        "client-alice.key",
        "client-bob.crt",
        "client-bob.key",
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect();
    assert_eq!(report.written, expected);
    for path in &expected {
        assert!(path.is_file(), "{} missing", path.display());
        if path.extension().is_some_and(|ext| ext == "key") {
            assert_eq!(mode(path)?, 0o600, "{}", path.display());
        }
    }
    assert_eq!(mode(&dir)?, 0o700);
    Ok(())
}

#[test]
fn init_dir_reuses_an_existing_ca_unless_asked_to_overwrite_it() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    init_dir(dir, &InitOptions::default())?;
    let first_ca = fs::read_to_string(dir.join("ca.crt"))?;
    let first_server = fs::read_to_string(dir.join("server.crt"))?;

    let report = init_dir(dir, &InitOptions::default())?;
    assert_eq!(report.ca, CaStatus::Reused);
    assert!(!report.written.contains(&dir.join("ca.crt")));
    assert_eq!(fs::read_to_string(dir.join("ca.crt"))?, first_ca);
    assert_eq!(
        fs::read_to_string(dir.join("server.crt"))?,
        first_server,
        "the server certificate is kept with the CA"
    );
    let renamed = InitOptions {
        server_names: vec!["broker.internal".to_owned()],
        ..InitOptions::default()
    };
    init_dir(dir, &renamed)?;
    assert_ne!(
        fs::read_to_string(dir.join("server.crt"))?,
        first_server,
        "issued again when names are given"
    );

    let overwrite = InitOptions {
        overwrite_ca: true,
        ..InitOptions::default()
    };
    let report = init_dir(dir, &overwrite)?;
    assert_eq!(report.ca, CaStatus::Created);
    assert_ne!(fs::read_to_string(dir.join("ca.crt"))?, first_ca);
    Ok(())
}

#[test]
fn init_dir_refuses_to_replace_half_a_ca() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    init_dir(dir, &InitOptions::default())?;
    fs::remove_file(dir.join("ca.crt"))?;
    let key_before = fs::read_to_string(dir.join("ca.key"))?;
    let result = init_dir(dir, &InitOptions::default());
    assert!(
        matches!(result, Err(CertError::IncompleteCa { .. })),
        "{result:?}"
    );
    assert_eq!(fs::read_to_string(dir.join("ca.key"))?, key_before);
    Ok(())
}

#[test]
fn init_dir_with_an_invalid_client_name_writes_nothing() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("certs");
    let opts = InitOptions {
        clients: vec!["bob smith".to_owned()],
        ..InitOptions::default()
    };
    let result = init_dir(&dir, &opts);
    assert!(
        matches!(result, Err(CertError::InvalidName { .. })),
        "{result:?}"
    );
    assert!(!dir.exists());
    Ok(())
}

#[test]
fn rewriting_a_key_file_restricts_its_mode_to_0600() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let (_, key) = client_paths(dir, "alice");
    fs::write(&key, "old")?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644))?;
    init_dir(dir, &InitOptions::default())?;
    issue_client_file(dir, "alice")?;
    assert_eq!(mode(&key)?, 0o600);
    Ok(())
}

#[test]
fn issue_client_file_writes_a_certificate_from_the_directory_ca() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    init_dir(dir, &InitOptions::default())?;
    let files = issue_client_file(dir, "carol")?;
    assert_eq!(
        (files.cert.clone(), files.key.clone()),
        client_paths(dir, "carol")
    );
    let issued = IssuedCert {
        cert_pem: fs::read_to_string(&files.cert)?,
        key_pem: fs::read_to_string(&files.key)?,
    };
    let der = issued.cert_der()?;
    let ca_pem = fs::read_to_string(dir.join("ca.crt"))?;
    let ca_der = CertificateDer::from_pem_slice(ca_pem.as_bytes())?;
    assert_eq!(parse(&der)?.issuer(), parse(&ca_der)?.subject());
    issued.key_der()?;
    Ok(())
}

#[test]
fn issue_client_file_without_a_ca_names_the_directory() -> TestResult {
    let temp = tempfile::tempdir()?;
    let result = issue_client_file(temp.path(), "carol");
    let error = result.err().ok_or("issuing without a CA succeeded")?;
    assert!(matches!(error, CertError::CaMissing { .. }), "{error:?}");
    assert!(error
        .to_string()
        .contains(&temp.path().display().to_string()));
    Ok(())
}

#[test]
fn io_errors_name_the_file() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    init_dir(dir, &InitOptions::default())?;
    fs::remove_file(dir.join("ca.key"))?;
    fs::create_dir(dir.join("ca.key"))?;
    let error = CertificateAuthority::load(dir)
        .err()
        .ok_or("loaded a CA without a key")?;
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("reading {}: ", dir.join("ca.key").display())),
        "{message}"
    );
    Ok(())
}

#[test]
fn ensure_dev_certs_creates_certificates_once_then_leaves_them_alone() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("dev");
    let report = ensure_dev_certs(&dir)?.ok_or("nothing created in an empty directory")?;
    assert_eq!(report.ca, CaStatus::Created);
    let (cert, key) = client_paths(&dir, DEV_CLIENT_NAME);
    assert!(cert.is_file() && key.is_file());
    let server_before = fs::read_to_string(dir.join("server.crt"))?;

    assert!(ensure_dev_certs(&dir)?.is_none());
    assert_eq!(fs::read_to_string(dir.join("server.crt"))?, server_before);

    fs::remove_file(dir.join("server.crt"))?;
    let report = ensure_dev_certs(&dir)?.ok_or("server certificate not re-created")?;
    assert_eq!(report.ca, CaStatus::Reused);
    Ok(())
}

#[test]
fn debug_output_never_shows_private_keys() -> TestResult {
    let ca = CertificateAuthority::generate("Test CA")?;
    let issued = ca.issue_client("alice")?;
    for debug in [format!("{ca:?}"), format!("{issued:?}")] {
        assert!(!debug.contains("PRIVATE KEY"), "{debug}");
    }
    Ok(())
}

/// The serials a CRL lists and its CRL number, big-endian.
type CrlContents = (Vec<Vec<u8>>, Vec<u8>);

fn revoked_serials(dir: &Path) -> Result<CrlContents, Box<dyn Error>> {
    let pem = fs::read_to_string(crl_path(dir))?;
    let der = rustls_pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes())?;
    let (_, crl) = x509_parser::parse_x509_crl(&der)?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|entry| entry.raw_serial().to_vec())
        .collect();
    let number = crl
        .crl_number()
        .map(|n| n.to_bytes_be())
        .ok_or("no CRL number")?;
    Ok((serials, number))
}

#[test]
fn revoking_adds_to_the_crl_and_keeps_earlier_entries() -> TestResult {
    let dir = tempfile::tempdir()?;
    let opts = InitOptions {
        clients: vec!["alice".into(), "bob".into()],
        ..InitOptions::default()
    };
    init_dir(dir.path(), &opts)?;
    let serial_of = |name: &str| -> Result<Vec<u8>, Box<dyn Error>> {
        let (cert, _) = client_paths(dir.path(), name);
        let der = CertificateDer::from_pem_slice(fs::read_to_string(cert)?.as_bytes())?;
        Ok(parse(&der)?.raw_serial().to_vec())
    };

    let first = revoke_client_file(dir.path(), "alice")?;
    assert!(!first.already_revoked);
    assert_eq!(first.revoked_count, 1);
    assert_eq!(
        revoked_serials(dir.path())?,
        (vec![serial_of("alice")?], vec![1])
    );

    let second = revoke_client_file(dir.path(), "bob")?;
    assert_eq!(second.revoked_count, 2);
    let again = revoke_client_file(dir.path(), "alice")?;
    assert!(again.already_revoked);
    let (serials, number) = revoked_serials(dir.path())?;
    assert_eq!(serials, vec![serial_of("alice")?, serial_of("bob")?]);
    assert_eq!(number, vec![3], "every signing raises the CRL number");

    assert!(matches!(
        revoke_client_file(dir.path(), "carol"),
        Err(CertError::NoClientCertificate { .. })
    ));
    Ok(())
}

#[test]
fn rotating_the_server_certificate_keeps_its_names_and_the_ca() -> TestResult {
    let dir = tempfile::tempdir()?;
    let opts = InitOptions {
        server_names: vec!["broker.example".into(), "10.1.2.3".into()],
        ..InitOptions::default()
    };
    init_dir(dir.path(), &opts)?;
    let paths = CertPaths::in_dir(dir.path());
    let before = fs::read_to_string(&paths.server_cert)?;
    let ca_before = fs::read_to_string(&paths.ca)?;
    let rotated = rotate_server_file(dir.path(), &["extra.example".into()])?;
    assert_eq!(
        rotated.names,
        vec!["broker.example", "10.1.2.3", "extra.example"]
    );
    let after = fs::read_to_string(&paths.server_cert)?;
    assert_ne!(before, after);
    assert_eq!(ca_before, fs::read_to_string(&paths.ca)?);
    let der = CertificateDer::from_pem_slice(after.as_bytes())?;
    let names = san_strings(&parse(&der)?)?;
    for name in [
        "DNS:localhost",
        "DNS:broker.example",
        "IP:10.1.2.3",
        "DNS:extra.example",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    assert_eq!(mode(&paths.server_key)? & 0o777, 0o600);
    Ok(())
}

#[test]
fn init_dir_with_a_kept_ca_adds_clients_without_touching_the_server_or_the_default_client(
) -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let first = InitOptions {
        server_names: vec!["broker.example.com".to_owned()],
        clients_if_missing: vec!["dev".to_owned()],
        ..InitOptions::default()
    };
    init_dir(dir, &first)?;
    let server = fs::read_to_string(dir.join("server.crt"))?;
    let dev = fs::read_to_string(dir.join("client-dev.key"))?;
    let more = InitOptions {
        clients: vec!["alice".to_owned()],
        clients_if_missing: vec!["dev".to_owned()],
        nodes: vec!["n1".to_owned()],
        ..InitOptions::default()
    };
    let report = init_dir(dir, &more)?;
    let expected: Vec<PathBuf> = [
        "client-alice.crt",
        "client-alice.key",
        "node-n1.crt",
        "node-n1.key",
    ]
    .iter()
    .map(|name| dir.join(name))
    .collect();
    assert_eq!(report.written, expected);
    assert_eq!(fs::read_to_string(dir.join("server.crt"))?, server);
    assert_eq!(fs::read_to_string(dir.join("client-dev.key"))?, dev);
    Ok(())
}
