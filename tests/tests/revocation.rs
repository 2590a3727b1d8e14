//! Revocation and rotation end to end: a CRL installed by a reload closes the revoked client's
//! live connection and refuses it at every later handshake (no resumption can bypass it), and
//! ends every session the revoked certificate opened, so a re-issued certificate cannot resume
//! them; a certificate that expires while connected closes its connection (the session stays,
//! for a renewed certificate to resume); an unknown revocation status fails closed; a rotated
//! server certificate is what new clients see, while connections opened before continue.

use cassini_client::Client;
use cassini_e2e::raw::{self, close_of, server_cert_of};
use cassini_e2e::{assert_delivers, identity_of, TestBroker};
use cassini_protocol::ErrorCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cassini_quic::certs::{CertificateAuthority, IssuedCert, Validity};
use cassini_quic::tls::RevocationOptions;

/// Whether the broker lets a client presenting `cert` through to a `Welcome`. With TLS 1.3 a
/// refused client may see its handshake complete and learn of the refusal only as a close, so
/// this speaks the protocol before answering.
async fn admitted(broker: &TestBroker, cert: &IssuedCert) -> Result<(), String> {
    let (_endpoint, connection) = broker
        .raw_connection_as(cert)
        .await
        .map_err(|err| err.to_string())?;
    match raw::hello(&connection, None).await {
        Some(_) => Ok(()),
        None => Err(connection
            .close_reason()
            .map_or_else(|| "closed".to_owned(), |reason| reason.to_string())),
    }
}

async fn client_as(broker: &TestBroker, cert: &IssuedCert) -> Client {
    let (chain, key) = identity_of(cert);
    Client::builder(broker.addr)
        .ca_certs(broker.pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
        .connect()
        .await
        .expect("client connects")
}

async fn assert_pubsub_works(client: &Client, topic: &str) {
    let mut subscription = client.subscribe(topic).await.expect("subscribe");
    assert_delivers(client, topic, b"ok", &mut subscription, "delivery").await;
}

#[tokio::test]
async fn a_revoked_client_is_closed_live_and_refused_when_it_reconnects() {
    let broker = TestBroker::start().await;
    let alice = broker.pki.client("alice");
    let bob = broker.pki.client("bob");
    let (_alice_endpoint, alice_live) = broker.raw_connection_as(&alice).await.expect("alice");
    let _alice_control = raw::hello(&alice_live, None).await.expect("alice welcomed");
    let bob_live = client_as(&broker, &bob).await;

    let crl = broker.pki.ca.revocation_list(&[&alice], 1).expect("CRL");
    let report = broker.reload(&broker.server_tls(
        &broker.pki.server,
        vec![crl],
        RevocationOptions::default(),
    ));
    assert_eq!(report.closed.len(), 1, "{report:?}");
    assert_eq!(report.closed[0].0, "alice");

    let (code, reason) = close_of(&alice_live).await;
    assert_eq!(code, ErrorCode::CERTIFICATE_REVOKED);
    assert!(reason.to_lowercase().contains("revoked"), "{reason}");

    // Every reconnect runs the verifier (no session resumption), so the CRL applies at once.
    for attempt in 0..3 {
        let refusal = admitted(&broker, &alice).await.expect_err("alice refused");
        assert!(
            refusal.contains("error 44") && refusal.contains("Revoked"),
            "attempt {attempt}: a certificate_revoked alert, got {refusal}"
        );
    }
    assert_pubsub_works(&bob_live, "bob.still.here").await;
    admitted(&broker, &broker.pki.client("carol"))
        .await
        .expect("others still get in");
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_revocation_status_fails_closed_unless_allowed() {
    let broker = TestBroker::start().await;
    let alice = broker.pki.client("alice");
    // A CRL from another CA (another name) says nothing about the broker's clients.
    let foreign = CertificateAuthority::generate("Another CA")
        .expect("CA")
        .revocation_list(&[], 1)
        .expect("foreign CRL");

    broker.reload(&broker.server_tls(
        &broker.pki.server,
        vec![foreign.clone()],
        RevocationOptions::default(),
    ));
    let refusal = admitted(&broker, &alice)
        .await
        .expect_err("unknown status is refused by default");
    assert!(
        refusal.contains("error 48") && refusal.contains("UnknownRevocationStatus"),
        "an unknown CA alert naming the unknown status, got {refusal}"
    );

    broker.reload(&broker.server_tls(
        &broker.pki.server,
        vec![foreign],
        RevocationOptions {
            allow_unknown_status: true,
            ..RevocationOptions::default()
        },
    ));
    admitted(&broker, &alice)
        .await
        .expect("admitted once unknown status is allowed");

    // A CRL from the broker's own CA that lists someone else: alice's status is known.
    let mallory = broker.pki.client("mallory");
    let own = broker.pki.ca.revocation_list(&[&mallory], 2).expect("CRL");
    broker.reload(&broker.server_tls(&broker.pki.server, vec![own], RevocationOptions::default()));
    admitted(&broker, &alice).await.expect("not revoked");
    admitted(&broker, &mallory).await.expect_err("revoked");
    broker.stop().await;
}

#[tokio::test]
async fn after_a_server_rotation_new_clients_see_the_new_certificate_and_old_ones_continue() {
    let broker = TestBroker::start().await;
    let old_der = broker.pki.server.cert_der().expect("DER");
    let (_old_endpoint, old_raw) = broker
        .raw_connection_as(&broker.pki.client("old-raw"))
        .await
        .expect("connect");
    assert_eq!(server_cert_of(&old_raw), old_der);
    let old_client = broker.client("old-client").await;
    let mut old_subscription = old_client.subscribe("rotation.>").await.expect("subscribe");

    let rotated = broker
        .pki
        .ca
        .issue_server(&[])
        .expect("new server certificate");
    let report =
        broker.reload(&broker.server_tls(&rotated, Vec::new(), RevocationOptions::default()));
    assert!(
        report.closed.is_empty(),
        "rotation closes nothing: {report:?}"
    );

    let (_new_endpoint, new_raw) = broker
        .raw_connection_as(&broker.pki.client("new-raw"))
        .await
        .expect("connect after rotation");
    let new_der = rotated.cert_der().expect("DER");
    assert_ne!(new_der, old_der);
    assert_eq!(
        server_cert_of(&new_raw),
        new_der,
        "new clients see the new certificate"
    );

    let new_client = broker.client("new-client").await;
    assert_delivers(
        &new_client,
        "rotation.x",
        b"after",
        &mut old_subscription,
        "old subscription still delivers",
    )
    .await;
    assert!(
        raw::hello(&old_raw, None).await.is_some(),
        "old raw connection still served"
    );
    assert_pubsub_works(&old_client, "rotation.old").await;
    broker.stop().await;
}

#[tokio::test]
async fn a_connection_is_closed_with_certificate_expired_when_its_certificate_expires() {
    let broker = TestBroker::start().await;
    let now = time::OffsetDateTime::now_utc();
    let not_after = now + time::Duration::seconds(3);
    let brief = broker.pki.client_with(
        "brief",
        Validity {
            not_before: now - time::Duration::days(1),
            not_after,
        },
    );
    let (_endpoint, connection) = broker.raw_connection_as(&brief).await.expect("connect");
    let (welcome, _send, _recv) = raw::hello(&connection, None).await.expect("welcomed");
    let bystander = broker.client("bystander").await;

    let (code, reason) = close_of(&connection).await;
    let closed_at = SystemTime::now();
    assert_eq!(code, ErrorCode::CERTIFICATE_EXPIRED, "{reason}");
    assert!(reason.contains("certificate expired"), "{reason}");
    // X.509 times are whole seconds: the certificate is valid through that second.
    let expired_at = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(not_after.unix_timestamp()).expect("after 1970") + 1);
    let late = closed_at
        .duration_since(expired_at)
        .expect("not closed before the certificate expired");
    assert!(
        late < Duration::from_secs(3),
        "closed {late:?} after expiry"
    );

    // Expiry only detaches the session: a renewed certificate for the identity resumes it.
    let renewed = broker.pki.client("brief");
    let (_endpoint, again) = broker.raw_connection_as(&renewed).await.expect("connect");
    let (resumed, _send, _recv) = raw::hello(&again, Some(welcome.session_id))
        .await
        .expect("the renewed certificate resumes the session");
    assert!(resumed.resumed);
    assert_pubsub_works(&bystander, "bystander.still.here").await;
    broker.stop().await;
}

#[tokio::test]
async fn each_connection_is_closed_when_its_own_certificate_expires() {
    // The certificate that expires later connects first: whatever waits for its expiry must
    // still close the other connection at the earlier one.
    let broker = TestBroker::start().await;
    let now = time::OffsetDateTime::now_utc();
    let valid_for = |seconds| Validity {
        not_before: now - time::Duration::days(1),
        not_after: now + time::Duration::seconds(seconds),
    };
    let (later_cert, later_until) = (broker.pki.client_with("later", valid_for(7)), 7);
    let (sooner_cert, sooner_until) = (broker.pki.client_with("sooner", valid_for(4)), 4);
    let (_later_endpoint, later) = broker
        .raw_connection_as(&later_cert)
        .await
        .expect("connect");
    let _later_control = raw::hello(&later, None).await.expect("welcomed");
    let (_sooner_endpoint, sooner) = broker
        .raw_connection_as(&sooner_cert)
        .await
        .expect("connect");
    let _sooner_control = raw::hello(&sooner, None).await.expect("welcomed");

    assert_closed_at_expiry(&sooner, now + time::Duration::seconds(sooner_until)).await;
    assert!(
        later.close_reason().is_none(),
        "the connection whose certificate is still valid stays open"
    );
    assert_closed_at_expiry(&later, now + time::Duration::seconds(later_until)).await;
    broker.stop().await;
}

/// Waits for `connection` to close and checks it was closed with `CERTIFICATE_EXPIRED` within
/// 3 s after its certificate's `not_after` second ended.
async fn assert_closed_at_expiry(connection: &quinn::Connection, not_after: time::OffsetDateTime) {
    let (code, reason) = close_of(connection).await;
    let closed_at = SystemTime::now();
    assert_eq!(code, ErrorCode::CERTIFICATE_EXPIRED, "{reason}");
    // X.509 times are whole seconds: the certificate is valid through that second.
    let expired_at = UNIX_EPOCH
        + Duration::from_secs(u64::try_from(not_after.unix_timestamp()).expect("after 1970") + 1);
    let late = closed_at
        .duration_since(expired_at)
        .expect("not closed before the certificate expired");
    assert!(
        late < Duration::from_secs(3),
        "closed {late:?} after expiry"
    );
}

/// Opens a session as `cert` and drops the connection without a goodbye: the session stays,
/// detached. Returns its id.
async fn detached_session(broker: &TestBroker, cert: &IssuedCert) -> cassini_protocol::SessionId {
    let (_endpoint, connection) = broker.raw_connection_as(cert).await.expect("connect");
    let (welcome, _send, _recv) = raw::hello(&connection, None).await.expect("welcomed");
    connection.close(quinn::VarInt::from_u32(0), b"dropped");
    welcome.session_id
}

/// How a resume of `session` presenting `cert` ends: `Ok` if resumed, else the close code.
async fn resume(
    broker: &TestBroker,
    cert: &IssuedCert,
    session: cassini_protocol::SessionId,
) -> Result<(), ErrorCode> {
    let (_endpoint, connection) = broker.raw_connection_as(cert).await.expect("connect");
    match raw::hello(&connection, Some(session)).await {
        Some((welcome, _send, _recv)) if welcome.resumed => Ok(()),
        Some(_) => panic!("a resume answered with a new session"),
        None => Err(close_of(&connection).await.0),
    }
}

#[tokio::test]
async fn a_revoked_certificates_sessions_end_and_a_reissued_certificate_cannot_resume_them() {
    let broker = TestBroker::start().await;
    let alice = broker.pki.client("alice");
    let bob = broker.pki.client("bob");
    let detached = detached_session(&broker, &alice).await;
    let bobs = detached_session(&broker, &bob).await;
    let (_endpoint, live) = broker.raw_connection_as(&alice).await.expect("connect");
    let (welcome, _send, _recv) = raw::hello(&live, None).await.expect("welcomed");
    broker
        .wait_for_stats("two detached sessions and a live one", |stats| {
            stats.sessions == 3 && stats.connections == 1
        })
        .await;

    let crl = broker.pki.ca.revocation_list(&[&alice], 1).expect("CRL");
    broker.reload(&broker.server_tls(&broker.pki.server, vec![crl], RevocationOptions::default()));
    let (code, _) = close_of(&live).await;
    assert_eq!(code, ErrorCode::CERTIFICATE_REVOKED);
    broker
        .wait_for_stats("only bob's session is left", |stats| stats.sessions == 1)
        .await;

    // A certificate re-issued for the same identity finds neither session.
    let reissued = broker.pki.client("alice");
    assert_eq!(
        resume(&broker, &reissued, detached).await,
        Err(ErrorCode::SESSION_NOT_FOUND),
        "the detached session ended"
    );
    assert_eq!(
        resume(&broker, &reissued, welcome.session_id).await,
        Err(ErrorCode::SESSION_NOT_FOUND),
        "the live session ended, not detached"
    );
    resume(&broker, &bob, bobs)
        .await
        .expect("bob's session is untouched");
    broker.stop().await;
}
