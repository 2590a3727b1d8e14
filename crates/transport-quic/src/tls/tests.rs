use std::error::Error;
use std::fs;

use super::*;
use crate::certs::{CertificateAuthority, IssuedCert};

type TestResult = Result<(), Box<dyn Error>>;

struct Pki {
    ca: CertificateAuthority,
    server: IssuedCert,
    client: IssuedCert,
}

fn pki() -> Result<Pki, Box<dyn Error>> {
    let ca = CertificateAuthority::generate("Test CA")?;
    let server = ca.issue_server(&[])?;
    let client = ca.issue_client("alice")?;
    Ok(Pki { ca, server, client })
}

impl Pki {
    /// The broker's TLS configuration: its certificate, trusting the CA.
    fn server_crypto(&self) -> Result<Arc<rustls::ServerConfig>, Box<dyn Error>> {
        Ok(server_crypto(
            vec![self.ca.cert_der().clone()],
            vec![self.server.cert_der()?],
            self.server.key_der()?,
        )?)
    }
}

#[test]
fn server_config_issues_no_tickets_keeps_no_sessions_and_refuses_early_data() -> TestResult {
    let pki = pki()?;
    let config = pki.server_crypto()?;
    assert_eq!(config.alpn_protocols, [cassini_protocol::ALPN.to_vec()]);
    assert_eq!(config.send_tls13_tickets, 0);
    assert_eq!(config.max_early_data_size, 0);
    assert!(!config.session_storage.can_cache());
    assert!(!config.ticketer.enabled());
    server_config(config, &QuicOptions::default())?;
    Ok(())
}

#[test]
fn client_config_never_resumes_and_sends_no_early_data() -> TestResult {
    let pki = pki()?;
    let config = client_crypto(
        vec![pki.ca.cert_der().clone()],
        vec![pki.client.cert_der()?],
        pki.client.key_der()?,
    )?;
    assert_eq!(config.alpn_protocols, [cassini_protocol::ALPN.to_vec()]);
    assert!(!config.enable_early_data);
    assert!(config.client_auth_cert_resolver.has_certs());
    client_config(config, &QuicOptions::default())?;
    Ok(())
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() -> TestResult {
    let pki = pki()?;
    let result = server_crypto(
        vec![pki.ca.cert_der().clone()],
        vec![pki.server.cert_der()?],
        pki.client.key_der()?,
    );
    assert!(matches!(result, Err(TlsError::Rustls(_))), "{result:?}");
    Ok(())
}

#[test]
fn configs_without_a_ca_certificate_are_refused() -> TestResult {
    let pki = pki()?;
    let server = server_crypto(
        Vec::new(),
        vec![pki.server.cert_der()?],
        pki.server.key_der()?,
    );
    assert!(
        matches!(server, Err(TlsError::NoCaCertificates)),
        "{server:?}"
    );
    let client = client_crypto(
        Vec::new(),
        vec![pki.client.cert_der()?],
        pki.client.key_der()?,
    );
    assert!(
        matches!(client, Err(TlsError::NoCaCertificates)),
        "{client:?}"
    );
    Ok(())
}

#[test]
fn an_idle_timeout_quic_cannot_express_is_refused() -> TestResult {
    let pki = pki()?;
    let crypto = pki.server_crypto()?;
    let opts = QuicOptions {
        idle_timeout: Duration::MAX,
        ..QuicOptions::default()
    };
    let result = server_config(crypto, &opts);
    assert!(
        matches!(
            result,
            Err(TlsError::InvalidOption {
                option: "idle_timeout",
                ..
            })
        ),
        "{:?}",
        result.err()
    );
    Ok(())
}

#[test]
fn a_udp_payload_bound_outside_1200_to_6500_is_refused() -> TestResult {
    let pki = pki()?;
    for (bound, accepted) in [(1_199, false), (1_200, true), (6_500, true), (6_501, false)] {
        let crypto = pki.server_crypto()?;
        let opts = QuicOptions {
            max_udp_payload_bytes: bound,
            ..QuicOptions::default()
        };
        let result = server_config(crypto, &opts);
        assert_eq!(
            result.is_ok(),
            accepted,
            "{bound}: {:?}",
            result.as_ref().err()
        );
        if !accepted {
            assert!(
                matches!(
                    result,
                    Err(TlsError::InvalidOption {
                        option: "max_udp_payload_bytes",
                        ..
                    })
                ),
                "{bound}"
            );
        }
    }
    Ok(())
}

#[test]
fn load_certs_and_load_key_read_pem_files() -> TestResult {
    let pki = pki()?;
    let temp = tempfile::tempdir()?;
    let chain_path = temp.path().join("chain.crt");
    fs::write(
        &chain_path,
        format!("{}{}", pki.server.cert_pem, pki.ca.cert_pem()),
    )?;
    let key_path = temp.path().join("server.key");
    fs::write(&key_path, &pki.server.key_pem)?;

    let chain = load_certs(&chain_path)?;
    assert_eq!(chain, [pki.server.cert_der()?, pki.ca.cert_der().clone()]);
    let key = load_key(&key_path)?;
    assert_eq!(key.secret_der(), pki.server.key_der()?.secret_der());
    Ok(())
}

#[test]
fn load_certs_from_a_missing_file_names_the_file() -> TestResult {
    let temp = tempfile::tempdir()?;
    let path = temp.path().join("missing.crt");
    let error = load_certs(&path).err().ok_or("read a missing file")?;
    assert!(matches!(error, TlsError::Read { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with(&format!("reading {}: ", path.display())),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_file_without_certificates_is_reported_as_such() -> TestResult {
    let pki = pki()?;
    let temp = tempfile::tempdir()?;
    let path = temp.path().join("server.key");
    fs::write(&path, &pki.server.key_pem)?;
    let error = load_certs(&path)
        .err()
        .ok_or("found certificates in a key file")?;
    assert!(
        matches!(error, TlsError::NoCertificates { .. }),
        "{error:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    Ok(())
}

#[test]
fn a_file_without_a_private_key_is_reported_as_such() -> TestResult {
    let pki = pki()?;
    let temp = tempfile::tempdir()?;
    let path = temp.path().join("server.crt");
    fs::write(&path, &pki.server.cert_pem)?;
    let error = load_key(&path)
        .err()
        .ok_or("found a key in a certificate file")?;
    assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error:?}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    Ok(())
}
