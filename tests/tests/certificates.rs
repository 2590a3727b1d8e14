//! Mutual TLS: only clients with a valid certificate from the broker's CA get in, and a refused
//! client never disturbs the others.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_client::{Client, ConnectionError};
use cassini_e2e::{days_from_now, identity_of, within, Pki, TestBroker};
use futures_util::StreamExt;

/// Asserts the broker refuses `builder`'s certificate and says so clearly.
async fn assert_refused(builder: cassini_client::ClientBuilder, what: &str) {
    match within("refused connect", builder.connect()).await {
        Err(ConnectionError::Certificate { reason }) => {
            assert!(!reason.is_empty(), "{what}: refusal has a reason");
        }
        Err(other) => panic!("{what}: expected a certificate error, got {other}"),
        Ok(_) => panic!("{what}: the broker accepted the client"),
    }
}

async fn assert_broker_still_serves(broker: &TestBroker) {
    let client = broker.client("healthy").await;
    let mut subscription = client.subscribe("health.check").await.expect("subscribe");
    client
        .publish("health.check", Bytes::from_static(b"ok"))
        .await
        .expect("publish");
    let message = within("delivery", subscription.next())
        .await
        .expect("message");
    assert_eq!(message.payload(), &b"ok"[..]);
    client.close().await.expect("close");
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let broker = TestBroker::start().await;
    let stranger = Pki::new();
    let (chain, key) = identity_of(&stranger.client("mallory"));
    let builder = Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost");
    assert_refused(builder, "other CA").await;
    assert_broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let broker = TestBroker::start().await;
    let expired = broker.pki.client_with("expired", days_from_now(-30, -1));
    let (chain, key) = identity_of(&expired);
    let builder = Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost");
    assert_refused(builder, "expired").await;
    assert_broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let broker = TestBroker::start().await;
    let mut roots = rustls::RootCertStore::empty();
    for cert in broker.pki.ca_certs() {
        roots.add(cert).expect("root");
    }
    let mut crypto =
        rustls::ClientConfig::builder_with_provider(cassini_quic::tls::crypto_provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("TLS 1.3")
            .with_root_certificates(roots)
            .with_no_client_auth();
    crypto.alpn_protocols = vec![cassini_protocol::ALPN.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(crypto).expect("QUIC TLS"),
    ));
    let mut endpoint =
        quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("endpoint");
    endpoint.set_default_client_config(config);
    let connection = within("anonymous handshake", async {
        endpoint
            .connect(broker.addr, "localhost")
            .expect("connect")
            .await
    })
    .await;
    // TLS 1.3: the client may finish its side of the handshake before the broker judges it, so
    // the refusal can arrive as a close after `connect` returned.
    if let Ok(connection) = connection {
        let attempt = within("anonymous stream", async {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_all(b"hello?").await?;
            let mut buf = [0u8; 1];
            recv.read(&mut buf).await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        })
        .await;
        assert!(
            attempt.is_err(),
            "no stream gets through without a certificate"
        );
        match connection.close_reason() {
            Some(quinn::ConnectionError::ConnectionClosed(close)) => {
                assert_eq!(
                    close.error_code,
                    quinn::TransportErrorCode::crypto(116),
                    "TLS alert certificate_required"
                );
            }
            other => panic!("expected a TLS alert close, got {other:?}"),
        }
    }
    let stats = broker.stats().await;
    assert_eq!(stats.connections, 0);
    assert_broker_still_serves(&broker).await;
    broker.stop().await;
}

#[tokio::test]
async fn a_not_yet_valid_certificate_is_refused() {
    let broker = TestBroker::start().await;
    let future = broker.pki.client_with("future", days_from_now(1, 30));
    let (chain, key) = identity_of(&future);
    let builder = Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .connect_timeout(Duration::from_secs(10));
    assert_refused(builder, "not yet valid").await;
    broker.stop().await;
}

#[tokio::test]
async fn the_identity_comes_from_the_certificate() {
    let broker = TestBroker::start().await;
    let client = broker.client("alice").await;
    assert_eq!(client.identity(), "alice");
    client.close().await.expect("close");
    broker.stop().await;
}
