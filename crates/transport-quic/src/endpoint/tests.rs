use std::error::Error;
use std::net::Ipv4Addr;
use std::time::Duration;

use quinn::{ConnectionError, TransportErrorCode};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::time::timeout;

use super::*;
use crate::certs::{self, CertPaths, CertificateAuthority, InitOptions, IssuedCert, Validity};
use crate::identity::peer_identity;
use crate::tls::{self, QuicOptions};

type BoxError = Box<dyn Error + Send + Sync>;
type TestResult<T = ()> = Result<T, BoxError>;

/// Upper bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

// TLS alerts, as carried in QUIC CRYPTO_ERROR close codes (0x100 + alert).
const ALERT_UNSUPPORTED_CERTIFICATE: u8 = 43;
const ALERT_CERTIFICATE_EXPIRED: u8 = 45;
const ALERT_UNKNOWN_CA: u8 = 48;
const ALERT_CERTIFICATE_REQUIRED: u8 = 116;

fn loopback() -> SocketAddr {
    (Ipv4Addr::LOCALHOST, 0).into()
}

/// A CA and the broker certificate it issued.
struct Pki {
    ca: CertificateAuthority,
    server: IssuedCert,
}

impl Pki {
    fn new() -> TestResult<Self> {
        let ca = CertificateAuthority::generate("Test CA")?;
        let server = ca.issue_server(&[])?;
        Ok(Self { ca, server })
    }

    fn server_endpoint(&self) -> TestResult<quinn::Endpoint> {
        self.server_endpoint_with(&QuicOptions::default())
    }

    fn server_endpoint_with(&self, opts: &QuicOptions) -> TestResult<quinn::Endpoint> {
        let (endpoint, _) = bind_server(loopback(), self.server_config(opts)?, opts)?;
        Ok(endpoint)
    }

    /// The broker's QUIC configuration: this CA's server certificate, trusting this CA's clients.
    fn server_config(&self, opts: &QuicOptions) -> TestResult<quinn::ServerConfig> {
        let crypto = tls::server_crypto(
            vec![self.ca.cert_der().clone()],
            vec![self.server.cert_der()?],
            self.server.key_der()?,
        )?;
        Ok(tls::server_config(crypto, opts)?)
    }

    /// A client endpoint that trusts this CA and presents `client`.
    fn client_endpoint(&self, client: &IssuedCert) -> TestResult<quinn::Endpoint> {
        client_endpoint(self.ca.cert_der(), client)
    }
}

fn client_endpoint(
    trusted_ca: &CertificateDer<'static>,
    client: &IssuedCert,
) -> TestResult<quinn::Endpoint> {
    client_endpoint_with(trusted_ca, client, &QuicOptions::default())
}

fn client_endpoint_with(
    trusted_ca: &CertificateDer<'static>,
    client: &IssuedCert,
    opts: &QuicOptions,
) -> TestResult<quinn::Endpoint> {
    Ok(bind_client(
        loopback(),
        client_config(trusted_ca, client, opts)?,
        opts,
    )?)
}

/// A client's QUIC configuration: trusting `trusted_ca`, presenting `client`.
fn client_config(
    trusted_ca: &CertificateDer<'static>,
    client: &IssuedCert,
    opts: &QuicOptions,
) -> TestResult<quinn::ClientConfig> {
    let crypto = tls::client_crypto(
        vec![trusted_ca.clone()],
        vec![client.cert_der()?],
        client.key_der()?,
    )?;
    Ok(tls::client_config(crypto, opts)?)
}

/// Accepts one connection and answers one bidirectional stream with "IDENTITY: REQUEST".
/// Returns the peer identity once the client has closed the connection.
async fn serve_one(endpoint: &quinn::Endpoint) -> TestResult<String> {
    let incoming = endpoint.accept().await.ok_or("server endpoint closed")?;
    let conn = incoming.await?;
    let identity = peer_identity(&conn)?;
    let (mut send, mut recv) = conn.accept_bi().await?;
    let request = recv.read_to_end(1024).await?;
    send.write_all(format!("{identity}: ").as_bytes()).await?;
    send.write_all(&request).await?;
    send.finish()?;
    // Dropping the connection would close it before the reply is delivered.
    conn.closed().await;
    Ok(identity)
}

/// Sends `payload` on a new bidirectional stream and reads the whole reply.
async fn request(conn: &quinn::Connection, payload: &[u8]) -> TestResult<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(payload).await?;
    send.finish()?;
    Ok(recv.read_to_end(1024).await?)
}

/// Connects, sends one request, closes; returns the reply.
async fn ping(client: &quinn::Endpoint, server: SocketAddr) -> TestResult<Vec<u8>> {
    let conn = client.connect(server, "localhost")?.await?;
    let handshake = conn
        .handshake_data()
        .ok_or("no handshake data")?
        .downcast::<quinn::crypto::rustls::HandshakeData>()
        .map_err(|_| "handshake data is not rustls'")?;
    assert_eq!(handshake.protocol.as_deref(), Some(cassini_protocol::ALPN));
    let reply = request(&conn, b"ping").await?;
    conn.close(0u32.into(), b"done");
    Ok(reply)
}

/// Runs one connection from `client` to `server` and returns what each side saw.
async fn exchange(
    server: &quinn::Endpoint,
    client: &quinn::Endpoint,
) -> TestResult<(TestResult<String>, TestResult<Vec<u8>>)> {
    let addr = server.local_addr()?;
    let (served, replied) = tokio::join!(
        timeout(WAIT, serve_one(server)),
        timeout(WAIT, ping(client, addr))
    );
    Ok((served?, replied?))
}

/// Connects a client the server must refuse and returns the error that closed the connection.
///
/// In TLS 1.3 the client finishes its handshake before the server has judged the client
/// certificate, so `connect` may succeed: the refusal shows as a close on first use.
async fn refused_connection(
    client: &quinn::Endpoint,
    server: SocketAddr,
) -> TestResult<ConnectionError> {
    let conn = match client.connect(server, "localhost")?.await {
        Ok(conn) => conn,
        Err(error) => return Ok(error),
    };
    let used = request(&conn, b"ping").await;
    assert!(
        used.is_err(),
        "a refused client got a reply: {:?}",
        used.ok()
    );
    Ok(conn.closed().await)
}

/// Asserts that the server refuses `client`, and returns the error the client saw.
async fn assert_refused(
    server: &quinn::Endpoint,
    client: &quinn::Endpoint,
) -> TestResult<ConnectionError> {
    let addr = server.local_addr()?;
    let (served, refused) = tokio::join!(
        timeout(WAIT, serve_one(server)),
        timeout(WAIT, refused_connection(client, addr))
    );
    let served = served?;
    assert!(served.is_err(), "the server accepted {:?}", served.ok());
    refused?
}

fn is_closed_by_peer_with_alert(error: &ConnectionError, alert: u8) -> bool {
    matches!(error, ConnectionError::ConnectionClosed(close)
        if close.error_code == TransportErrorCode::crypto(alert))
}

/// Asserts that `pki`'s server refuses `client` and that the client saw the TLS `alert`.
async fn assert_refused_with_alert(pki: &Pki, client: &quinn::Endpoint, alert: u8) -> TestResult {
    let server = pki.server_endpoint()?;
    let error = assert_refused(&server, client).await?;
    assert!(is_closed_by_peer_with_alert(&error, alert), "{error}");
    Ok(())
}

/// A validity window from `from_days` to `to_days` days from now (negative: in the past).
fn validity_in_days(from_days: i64, to_days: i64) -> Validity {
    let now = OffsetDateTime::now_utc();
    Validity {
        not_before: now + time::Duration::days(from_days),
        not_after: now + time::Duration::days(to_days),
    }
}

#[tokio::test]
async fn client_with_a_certificate_from_the_ca_is_served_and_identified_by_name() -> TestResult {
    let pki = Pki::new()?;
    let server = pki.server_endpoint()?;
    let client = pki.client_endpoint(&pki.ca.issue_client("alice")?)?;

    let (served, replied) = exchange(&server, &client).await?;
    assert_eq!(served?, "alice");
    assert_eq!(replied?, b"alice: ping");
    Ok(())
}

#[tokio::test]
async fn client_with_a_certificate_from_another_ca_is_refused() -> TestResult {
    let pki = Pki::new()?;
    let other_ca = CertificateAuthority::generate("Other CA")?;
    let client = pki.client_endpoint(&other_ca.issue_client("alice")?)?;
    assert_refused_with_alert(&pki, &client, ALERT_UNKNOWN_CA).await
}

#[tokio::test]
async fn client_with_an_expired_certificate_is_refused() -> TestResult {
    let pki = Pki::new()?;
    let expired = validity_in_days(-30, -1);
    let client = pki.client_endpoint(&pki.ca.issue_client_with("alice", expired)?)?;
    assert_refused_with_alert(&pki, &client, ALERT_CERTIFICATE_EXPIRED).await
}

#[tokio::test]
async fn client_with_a_certificate_not_yet_valid_is_refused() -> TestResult {
    let pki = Pki::new()?;
    let future = validity_in_days(1, 30);
    let client = pki.client_endpoint(&pki.ca.issue_client_with("alice", future)?)?;
    assert_refused_with_alert(&pki, &client, ALERT_CERTIFICATE_EXPIRED).await
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() -> TestResult {
    let pki = Pki::new()?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.cert_der().clone())?;
    let mut crypto = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    crypto.alpn_protocols = vec![cassini_protocol::ALPN.to_vec()];
    let opts = QuicOptions::default();
    let config = tls::client_config(Arc::new(crypto), &opts)?;
    let client = bind_client(loopback(), config, &opts)?;
    assert_refused_with_alert(&pki, &client, ALERT_CERTIFICATE_REQUIRED).await
}

#[tokio::test]
async fn a_server_certificate_is_not_accepted_as_a_client_certificate() -> TestResult {
    let pki = Pki::new()?;
    let client = pki.client_endpoint(&pki.server)?;
    assert_refused_with_alert(&pki, &client, ALERT_UNSUPPORTED_CERTIFICATE).await
}

#[tokio::test]
async fn client_refuses_a_server_whose_certificate_is_from_another_ca() -> TestResult {
    let pki = Pki::new()?;
    let server = pki.server_endpoint()?;
    let other_ca = CertificateAuthority::generate("Other CA")?;
    let client = client_endpoint(other_ca.cert_der(), &other_ca.issue_client("alice")?)?;

    let (served, replied) = exchange(&server, &client).await?;
    assert!(served.is_err(), "the server accepted {:?}", served.ok());
    let error = replied
        .err()
        .ok_or("the client talked to an untrusted server")?;
    let error = error.downcast::<ConnectionError>()?;
    assert!(
        matches!(&*error, ConnectionError::TransportError(local)
            if local.code == TransportErrorCode::crypto(ALERT_UNKNOWN_CA)),
        "{error}"
    );
    Ok(())
}

#[tokio::test]
async fn certificates_written_by_init_dir_work_end_to_end() -> TestResult {
    let temp = tempfile::tempdir()?;
    let dir = temp.path();
    let opts = InitOptions {
        clients: vec!["alice".to_owned()],
        ..InitOptions::default()
    };
    certs::init_dir(dir, &opts)?;
    let paths = CertPaths::in_dir(dir);
    let (client_cert, client_key) = certs::client_paths(dir, "alice");
    let quic = QuicOptions::default();

    let server_crypto = tls::server_crypto(
        tls::load_certs(&paths.ca)?,
        tls::load_certs(&paths.server_cert)?,
        tls::load_key(&paths.server_key)?,
    )?;
    let (server, _) = bind_server(loopback(), tls::server_config(server_crypto, &quic)?, &quic)?;
    let client_crypto = tls::client_crypto(
        tls::load_certs(&paths.ca)?,
        tls::load_certs(&client_cert)?,
        tls::load_key(&client_key)?,
    )?;
    let client = bind_client(loopback(), tls::client_config(client_crypto, &quic)?, &quic)?;

    let (served, replied) = exchange(&server, &client).await?;
    assert_eq!(served?, "alice");
    assert_eq!(replied?, b"alice: ping");
    Ok(())
}

#[tokio::test]
async fn bind_server_reports_socket_buffers_at_least_as_large_as_requested() -> TestResult {
    // 64 KiB is below Linux's default cap (net.core.rmem_max, 208 KiB), so it is granted.
    let requested = 64 * 1024;
    let pki = Pki::new()?;
    let opts = QuicOptions {
        socket_buffer_bytes: requested,
        ..QuicOptions::default()
    };
    let (_endpoint, buffers) = bind_server(loopback(), pki.server_config(&opts)?, &opts)?;
    assert!(buffers.recv >= requested, "{buffers:?}");
    assert!(buffers.send >= requested, "{buffers:?}");
    Ok(())
}

#[test]
fn binding_outside_a_tokio_runtime_is_an_error_not_a_panic() -> TestResult {
    let pki = Pki::new()?;
    let client = pki.ca.issue_client("alice")?;
    let opts = QuicOptions::default();
    let config = client_config(pki.ca.cert_der(), &client, &opts)?;
    let result = bind_client(loopback(), config, &opts);
    assert!(
        matches!(result, Err(EndpointError::NoRuntime)),
        "{:?}",
        result.err()
    );
    Ok(())
}

/// Connects `client` to `server`, each configured with `opts`, and returns both ends once the
/// server has read one request.
async fn connected_pair(
    pki: &Pki,
    opts: &QuicOptions,
) -> TestResult<(
    quinn::Endpoint,
    quinn::Connection,
    quinn::Endpoint,
    quinn::Connection,
)> {
    let server = pki.server_endpoint_with(opts)?;
    let client = client_endpoint_with(pki.ca.cert_der(), &pki.ca.issue_client("alice")?, opts)?;
    let addr = server.local_addr()?;
    let accept = async {
        let incoming = server.accept().await.ok_or("server endpoint closed")?;
        let conn = incoming.await?;
        let mut recv = conn.accept_uni().await?;
        recv.read_to_end(1024).await?;
        Ok::<_, BoxError>(conn)
    };
    let connect = async {
        let conn = client.connect(addr, "localhost")?.await?;
        let mut send = conn.open_uni().await?;
        send.write_all(b"ping").await?;
        send.finish()?;
        Ok::<_, BoxError>(conn)
    };
    let (served, connected) = timeout(WAIT, async { tokio::join!(accept, connect) }).await?;
    Ok((server, served?, client, connected?))
}

/// Waits until both ends have received an ACK_FREQUENCY frame, or `WAIT` has passed; returns
/// how many each received.
async fn ack_frequency_frames_received(a: &quinn::Connection, b: &quinn::Connection) -> (u64, u64) {
    let received = || {
        (
            a.stats().frame_rx.ack_frequency,
            b.stats().frame_rx.ack_frequency,
        )
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while received().0 == 0 || received().1 == 0 {
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    received()
}

#[tokio::test]
async fn each_end_asks_the_other_to_acknowledge_within_the_configured_delay() -> TestResult {
    let pki = Pki::new()?;
    let opts = QuicOptions::default();
    assert_eq!(opts.max_ack_delay, Duration::from_millis(1));
    let (_server, served, _client, connected) = connected_pair(&pki, &opts).await?;

    let (at_server, at_client) = ack_frequency_frames_received(&served, &connected).await;
    assert!(at_server >= 1, "the client asked for nothing");
    assert!(at_client >= 1, "the server asked for nothing");
    Ok(())
}

#[tokio::test]
async fn a_zero_max_ack_delay_asks_nothing_of_the_peer() -> TestResult {
    let pki = Pki::new()?;
    let opts = QuicOptions {
        max_ack_delay: Duration::ZERO,
        ..QuicOptions::default()
    };
    let (_server, served, _client, connected) = connected_pair(&pki, &opts).await?;
    // Traffic both ways after the handshake: any ACK_FREQUENCY frame would have gone with it.
    let (mut send, mut recv) = connected.open_bi().await?;
    send.write_all(b"ping").await?;
    send.finish()?;
    let (mut reply, mut request) = timeout(WAIT, served.accept_bi()).await??;
    request.read_to_end(1024).await?;
    reply.write_all(b"pong").await?;
    reply.finish()?;
    timeout(WAIT, recv.read_to_end(1024)).await??;

    assert_eq!(served.stats().frame_rx.ack_frequency, 0);
    assert_eq!(connected.stats().frame_rx.ack_frequency, 0);
    Ok(())
}
