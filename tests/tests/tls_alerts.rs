//! The TLS alert a refused client actually receives, for every refusal docs/PROTOCOL.md lists:
//! a QUIC transport close with code `0x100 + alert`, whether the client learns it from the
//! handshake or (TLS 1.3) from the close after its side of the handshake completed.

use std::sync::Arc;

use cassini_e2e::raw;
use cassini_e2e::{days_from_now, identity_of, within, Pki, TestBroker};
use cassini_quic::certs::{CertificateAuthority, IssuedCert};
use cassini_quic::tls::{self, QuicOptions, RevocationOptions};

/// The TLS alert the broker refused `crypto` with; panics if it let the client in.
async fn alert_for(broker: &TestBroker, crypto: rustls::ClientConfig) -> u64 {
    let options = QuicOptions::default();
    let config = tls::client_config(Arc::new(crypto), &options).expect("config");
    let endpoint =
        cassini_quic::endpoint::bind_client("127.0.0.1:0".parse().expect("addr"), config, &options)
            .expect("endpoint");
    let error = match within(
        "handshake",
        endpoint.connect(broker.addr, "localhost").expect("connect"),
    )
    .await
    {
        Err(error) => error,
        Ok(connection) => {
            assert!(
                raw::hello(&connection, None).await.is_none(),
                "the broker let the client in"
            );
            connection.close_reason().expect("closed")
        }
    };
    match error {
        quinn::ConnectionError::ConnectionClosed(close) => {
            let code = u64::from(close.error_code);
            assert!((0x100..0x200).contains(&code), "not a TLS alert: {close}");
            code - 0x100
        }
        other => panic!("expected a TLS alert, got {other}"),
    }
}

/// A client configuration trusting `broker`'s CA and presenting `cert`.
fn presenting(broker: &TestBroker, cert: &IssuedCert) -> rustls::ClientConfig {
    let (chain, key) = identity_of(cert);
    let crypto = tls::client_crypto(broker.pki.ca_certs(), chain, key).expect("crypto");
    Arc::unwrap_or_clone(crypto)
}

#[tokio::test]
async fn a_certificate_from_an_unknown_ca_gets_alert_48() {
    let broker = TestBroker::start().await;
    let stranger = CertificateAuthority::generate("Some Other CA").expect("CA");
    let cert = stranger.issue_client("mallory").expect("cert");
    assert_eq!(alert_for(&broker, presenting(&broker, &cert)).await, 48);
    broker.stop().await;
}

#[tokio::test]
async fn a_certificate_from_a_same_named_ca_with_another_key_gets_alert_51() {
    let broker = TestBroker::start().await;
    // `Pki::new` names every CA alike: the issuer matches, the signature does not verify.
    let impostor = Pki::new();
    let cert = impostor.client("mallory");
    assert_eq!(alert_for(&broker, presenting(&broker, &cert)).await, 51);
    broker.stop().await;
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_certificate_gets_alert_45() {
    let broker = TestBroker::start().await;
    let expired = broker.pki.client_with("expired", days_from_now(-30, -1));
    let early = broker.pki.client_with("early", days_from_now(1, 30));
    assert_eq!(alert_for(&broker, presenting(&broker, &expired)).await, 45);
    assert_eq!(alert_for(&broker, presenting(&broker, &early)).await, 45);
    broker.stop().await;
}

#[tokio::test]
async fn a_wrong_alpn_gets_alert_120() {
    let broker = TestBroker::start().await;
    let mut crypto = presenting(&broker, &broker.pki.client("alice"));
    crypto.alpn_protocols = vec![b"cassini/2".to_vec()];
    assert_eq!(alert_for(&broker, crypto).await, 120);
    broker.stop().await;
}

#[tokio::test]
async fn revocation_refusals_get_alerts_44_48_and_40() {
    let broker = TestBroker::start().await;
    let alice = broker.pki.client("alice");
    let mallory = broker.pki.client("mallory");

    // Listed in the broker's CRL: 44 certificate_revoked.
    let own = broker.pki.ca.revocation_list(&[&mallory], 1).expect("CRL");
    broker.reload(&broker.server_tls(&broker.pki.server, vec![own], RevocationOptions::default()));
    assert_eq!(alert_for(&broker, presenting(&broker, &mallory)).await, 44);

    // No CRL from the issuing CA (unknown status, failing closed): 48 unknown_ca.
    let foreign = CertificateAuthority::generate("Another CA")
        .expect("CA")
        .revocation_list(&[], 1)
        .expect("CRL");
    broker.reload(&broker.server_tls(
        &broker.pki.server,
        vec![foreign],
        RevocationOptions::default(),
    ));
    assert_eq!(alert_for(&broker, presenting(&broker, &alice)).await, 48);

    // A CRL naming the right issuer but signed with another key: 40 handshake_failure.
    let forged = Pki::new().ca.revocation_list(&[], 2).expect("CRL");
    broker.reload(&broker.server_tls(
        &broker.pki.server,
        vec![forged],
        RevocationOptions::default(),
    ));
    assert_eq!(alert_for(&broker, presenting(&broker, &alice)).await, 40);
    broker.stop().await;
}

#[tokio::test]
async fn a_server_certificate_presented_as_a_client_certificate_gets_alert_43() {
    let broker = TestBroker::start().await;
    // Issued for server authentication only (extended key usage).
    let server = broker.pki.ca.issue_server(&[]).expect("server certificate");
    assert_eq!(alert_for(&broker, presenting(&broker, &server)).await, 43);
    broker.stop().await;
}

#[tokio::test]
async fn a_client_refusing_the_broker_s_certificate_is_counted_as_a_tls_failure() {
    use cassini_quic::server::HandshakeFailure;
    let broker = TestBroker::start().await;
    // The client trusts another CA: it refuses the broker's certificate with a TLS alert.
    let stranger = CertificateAuthority::generate("Some Other CA").expect("CA");
    let (chain, key) = identity_of(&broker.pki.client("dev"));
    let crypto = tls::client_crypto(vec![stranger.cert_der().clone()], chain, key).expect("TLS");
    let options = QuicOptions::default();
    let config = tls::client_config(crypto, &options).expect("config");
    let endpoint =
        cassini_quic::endpoint::bind_client("127.0.0.1:0".parse().expect("addr"), config, &options)
            .expect("endpoint");
    let refused = within(
        "handshake",
        endpoint.connect(broker.addr, "localhost").expect("connect"),
    )
    .await;
    assert!(refused.is_err(), "the client refuses the broker");
    let stats = broker.accept_stats();
    cassini_e2e::eventually("the broker counts the refusal", || async {
        (stats.refused_for(HandshakeFailure::Tls) >= 1).then_some(())
    })
    .await;
    assert_eq!(stats.refused_for(HandshakeFailure::Other), 0);
    broker.stop().await;
}
