//! The end-to-end harness: a real broker on `127.0.0.1:0` behind a real QUIC endpoint, with a
//! certificate authority made inside the test.
//!
//! Layering: `relay`, `history` and `ownership` import nothing of this crate; `edge` imports `lib.rs` and
//! `relay`; `gateway` and `cluster` import `lib.rs`; `lib.rs` (the broker, `raw`, the waits)
//! imports none of them.
//!
//! - [`Pki`]: a fresh CA with a server certificate and any client certificates a test asks for
//!   (`cassini_quic::test_util`, shared with the other crates' tests).
//! - [`TestBroker`]: the broker core plus a `QuicServer`, and helpers to connect clients (the real
//!   `cassini-client`, or a raw quinn connection for clients that misbehave on purpose).
//! - [`eventually`]: waits for a condition with a deadline; tests never sleep to wait.
//! - [`raw`]: the protocol spoken by hand over a raw quinn connection (`Hello`, frames read with
//!   the shared reader of `cassini_quic::test_util`, close codes).
//! - [`relay::UdpRelay`]: a UDP relay a test can cut and restore, to drop connections silently.
//! - [`edge`]: clients and brokers that notice such a drop within a second, and a wait for a
//!   client's connection state.
//! - [`history`]: a record of every publish and delivery of a fault run, checked against the
//!   guarantees of `docs/SESSIONS.md`.
//! - [`ownership`]: the cluster nodes' ownership history (their `session claim` log lines),
//!   checked for two owners of one session at once.
//! - [`gateway::Gateway`]: a broker with its MQTT gateway, and its clients' certificate files.
//! - [`cluster`]: a cluster node's endpoint, and a full mesh of them.
//! - [`closed_udp_addr`]: an address where nothing listens.

pub mod cluster;
pub mod edge;
pub mod gateway;
pub mod history;
pub mod ownership;
pub mod relay;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cassini_broker::{Broker, BrokerConfig, BrokerHandle, BrokerLimits, BrokerStats};
use cassini_client::{Client, ClientBuilder, Subscription};
use cassini_quic::certs::{IssuedCert, Validity};
use cassini_quic::server::{AcceptStats, QuicServer, ReloadReport, ServerOptions};
pub use cassini_quic::test_util::{identity_of, Pki};
use cassini_quic::tls::{self, QuicOptions, RevocationOptions, ServerTls};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::task::JoinHandle;

/// How long any single wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Installs a test log subscriber once (controlled by `RUST_LOG`).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A running broker on an ephemeral loopback port.
pub struct TestBroker {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The broker core, for stats and shutdown.
    pub broker: BrokerHandle,
    /// The certificates it trusts and presents.
    pub pki: Pki,
    server: Arc<QuicServer>,
    serve_task: JoinHandle<()>,
}

impl TestBroker {
    /// A broker with default configuration.
    pub async fn start() -> Self {
        Self::start_with(BrokerConfig::default(), ServerOptions::default()).await
    }

    /// A broker with the given configuration.
    pub async fn start_with(config: BrokerConfig, options: ServerOptions) -> Self {
        init_tracing();
        let addr = "127.0.0.1:0".parse().expect("addr");
        Self::start_on(addr, Pki::new(), config, options).await
    }

    /// Waits until the broker holds nothing: no connection, session, subscriber, topic or
    /// route.
    pub async fn wait_until_empty(&self, what: &str) {
        self.wait_for_stats(what, |s| {
            s.connections == 0
                && s.sessions == 0
                && s.subscribers == 0
                && s.topics == 0
                && s.routes_empty
        })
        .await;
    }

    /// Asserts that a new client named `name` notices nothing: it publishes to itself and
    /// receives it, then closes.
    pub async fn assert_bystander_unaffected(&self, name: &str) {
        let client = self.client(name).await;
        let mut subscription = client.subscribe("bystander.x").await.expect("subscribe");
        assert_delivers(
            &client,
            "bystander.x",
            b"fine",
            &mut subscription,
            "bystander delivery",
        )
        .await;
        client.close().await.expect("close");
    }

    /// A broker with `config` whose certificates come from the CA of `pki` (a node of a
    /// cluster in a test: every node trusts the same CA).
    pub async fn start_sharing_ca(pki: &Pki, config: BrokerConfig) -> Self {
        init_tracing();
        let ca = cassini_quic::certs::CertificateAuthority::from_pem(
            pki.ca.cert_pem(),
            pki.ca.key_pem(),
        )
        .expect("the same CA");
        let pki = Pki {
            ca,
            server: pki.server.clone(),
        };
        let addr = "127.0.0.1:0".parse().expect("addr");
        Self::start_on(addr, pki, config, ServerOptions::default()).await
    }

    /// Stops this broker, losing everything it held in memory, and starts a new one with
    /// default configuration on the same address with the same certificates: what clients see
    /// of a broker restart.
    pub async fn restart(self) -> Self {
        self.restart_with(BrokerConfig::default()).await
    }

    /// Stops this broker and starts a new one with `config` on the same address with the same
    /// certificates: a restart that keeps what `config.storage` keeps on disk.
    pub async fn restart_with(self, config: BrokerConfig) -> Self {
        let Self {
            addr,
            broker,
            pki,
            server,
            serve_task,
        } = self;
        shut_down(broker, server, serve_task).await;
        Self::start_on(addr, pki, config, ServerOptions::default()).await
    }

    async fn start_on(
        addr: SocketAddr,
        pki: Pki,
        config: BrokerConfig,
        options: ServerOptions,
    ) -> Self {
        // After a restart the old endpoint lets go of its port once its last connection is
        // gone, which can take a moment.
        let server = eventually("the broker's port is free", || async {
            let (chain, key) = identity_of(&pki.server);
            let crypto = tls::server_crypto(pki.ca_certs(), chain, key).expect("server TLS");
            QuicServer::bind(addr, crypto, options.clone()).ok()
        })
        .await;
        let server = Arc::new(server);
        let addr = server.local_addr().expect("local addr");
        let broker = Broker::start(config).await.expect("broker starts");
        let serve_task = {
            let server = Arc::clone(&server);
            let broker = broker.clone();
            tokio::spawn(async move { server.serve(broker).await })
        };
        Self {
            addr,
            broker,
            pki,
            server,
            serve_task,
        }
    }

    /// A client builder for a new client certificate named `name`.
    pub fn client_builder(&self, name: &str) -> ClientBuilder {
        client_builder_for(self.addr, &self.pki, name)
    }

    /// A connected client named `name`.
    pub async fn client(&self, name: &str) -> Client {
        self.client_builder(name)
            .connect()
            .await
            .expect("client connects")
    }

    /// A connected client named `name` whose subscriptions hand over at most `messages` at a
    /// time: a small buffer makes a slow reader's subscription fall behind at the broker.
    pub async fn client_with_buffer(&self, name: &str, messages: usize) -> Client {
        self.client_builder(name)
            .subscription_buffer(messages)
            .connect()
            .await
            .expect("client connects")
    }

    /// A raw quinn connection with a valid client certificate, for tests that speak the
    /// protocol badly on purpose. The endpoint must outlive the connection.
    pub async fn raw_connection(&self, name: &str) -> (quinn::Endpoint, quinn::Connection) {
        self.raw_connection_with(name, &QuicOptions::default())
            .await
    }

    /// [`TestBroker::raw_connection`] with the client's QUIC settings `options`.
    pub async fn raw_connection_with(
        &self,
        name: &str,
        options: &QuicOptions,
    ) -> (quinn::Endpoint, quinn::Connection) {
        let (chain, key) = identity_of(&self.pki.client(name));
        raw_connect_with(self.addr, self.pki.ca_certs(), chain, key, options)
            .await
            .expect("raw connection")
    }

    /// TLS material for this broker's CA and `server` certificate, with `crls`.
    pub fn server_tls(
        &self,
        server: &IssuedCert,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: RevocationOptions,
    ) -> ServerTls {
        let (chain, key) = identity_of(server);
        ServerTls::build(self.pki.ca_certs(), chain, key, crls, revocation).expect("server TLS")
    }

    /// Installs new TLS material, as `cassini serve` does on reload.
    pub fn reload(&self, tls: &ServerTls) -> ReloadReport {
        self.server.reload(tls).expect("reload")
    }

    /// Waits until the QUIC endpoint holds no connection at all, draining ones included: from
    /// then on it answers a packet of any earlier connection with a stateless reset.
    pub async fn wait_until_quic_forgets_every_connection(&self, what: &str) {
        eventually(what, || async {
            (self.server.quic_connections() == 0).then_some(())
        })
        .await
    }

    /// The QUIC server's accept-path counters.
    pub fn accept_stats(&self) -> Arc<AcceptStats> {
        self.server.stats()
    }

    /// A raw quinn connection presenting `cert`, for tests that need the connection's own
    /// close code or the server's certificate.
    pub async fn raw_connection_as(
        &self,
        cert: &IssuedCert,
    ) -> Result<(quinn::Endpoint, quinn::Connection), Box<dyn std::error::Error>> {
        let (chain, key) = identity_of(cert);
        raw_connect(self.addr, self.pki.ca_certs(), chain, key).await
    }

    /// Publishes `payloads` to `topic` as the client `publisher`, each acknowledged by the
    /// broker (so routed into every matching subscription's queue).
    pub async fn publish_acked(&self, topic: &str, payloads: &[&'static str]) {
        let publisher = self.client("publisher").await;
        for payload in payloads {
            within(
                "publish acknowledged",
                publisher.publish_acked(topic, bytes::Bytes::from_static(payload.as_bytes())),
            )
            .await
            .expect("publish acknowledged");
        }
        publisher.close().await.expect("publisher closes");
    }

    /// Current actor counts.
    pub async fn stats(&self) -> BrokerStats {
        self.broker.stats().await.expect("stats")
    }

    /// Waits until the broker's actor counts satisfy `condition`.
    pub async fn wait_for_stats(
        &self,
        what: &str,
        condition: impl Fn(&BrokerStats) -> bool,
    ) -> BrokerStats {
        eventually(what, || async {
            let stats = self.stats().await;
            condition(&stats).then_some(stats)
        })
        .await
    }

    /// Shuts the broker down.
    pub async fn stop(self) {
        shut_down(self.broker, self.server, self.serve_task).await;
    }

    /// Shuts the broker down, keeping its address and certificates to start it again: what a
    /// client sees of a broker that is not there yet.
    pub async fn stop_for_now(self) -> StoppedBroker {
        shut_down(self.broker, self.server, self.serve_task).await;
        StoppedBroker {
            addr: self.addr,
            pki: self.pki,
        }
    }
}

/// A client builder for the broker at `addr` with a new certificate named `name` from `pki`.
fn client_builder_for(addr: SocketAddr, pki: &Pki, name: &str) -> ClientBuilder {
    let (chain, key) = identity_of(&pki.client(name));
    Client::builder(addr)
        .ca_certs(pki.ca_certs())
        .identity(chain, key)
        .server_name("localhost")
}

/// A broker stopped by [`TestBroker::stop_for_now`].
pub struct StoppedBroker {
    /// Where it listened, and will again.
    pub addr: SocketAddr,
    pki: Pki,
}

impl StoppedBroker {
    /// A client builder for `name`, as [`TestBroker::client_builder`].
    pub fn client_builder(&self, name: &str) -> ClientBuilder {
        client_builder_for(self.addr, &self.pki, name)
    }

    /// Starts it again with the default configuration, on the same address.
    pub async fn start(self) -> TestBroker {
        TestBroker::start_on(
            self.addr,
            self.pki,
            BrokerConfig::default(),
            ServerOptions::default(),
        )
        .await
    }
}

async fn shut_down(broker: BrokerHandle, server: Arc<QuicServer>, serve_task: JoinHandle<()>) {
    broker.shutdown("test over").await;
    server
        .close(
            cassini_protocol::ErrorCode::SERVER_SHUTTING_DOWN,
            "test over",
            Duration::from_secs(1),
        )
        .await;
    serve_task.abort();
}

/// Connects to `addr` with mutual TLS using raw quinn.
pub async fn raw_connect(
    addr: SocketAddr,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<(quinn::Endpoint, quinn::Connection), Box<dyn std::error::Error>> {
    raw_connect_with(addr, ca, chain, key, &QuicOptions::default()).await
}

/// [`raw_connect`] with the client's QUIC settings `options`.
pub async fn raw_connect_with(
    addr: SocketAddr,
    ca: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    options: &QuicOptions,
) -> Result<(quinn::Endpoint, quinn::Connection), Box<dyn std::error::Error>> {
    let crypto = tls::client_crypto(ca, chain, key)?;
    let config = tls::client_config(crypto, options)?;
    let endpoint = cassini_quic::endpoint::bind_client("127.0.0.1:0".parse()?, config, options)?;
    let connection = endpoint.connect(addr, "localhost")?.await?;
    Ok((endpoint, connection))
}

/// An address where nothing listens, for tests of a client that cannot reach it: a port the
/// system gave a UDP socket that is closed again. This is the one socket a test binds and
/// drops, on purpose (a broker always binds port 0 instead): should another process take the
/// port meanwhile, it would still not complete a handshake with the test's certificates.
pub fn closed_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .expect("a UDP port")
}

/// Polls `check` until it returns `Some`, failing the test after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, check: F) -> T
where
    F: Fn() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A certificate validity window from `from_days` to `to_days` days from now (negative: in the
/// past): `(-30, -1)` has expired, `(1, 30)` is not yet valid.
pub fn days_from_now(from_days: i64, to_days: i64) -> Validity {
    let now = time::OffsetDateTime::now_utc();
    Validity {
        not_before: now + time::Duration::days(from_days),
        not_after: now + time::Duration::days(to_days),
    }
}

/// `BrokerConfig::default()` with `limits`.
pub fn with_limits(limits: BrokerLimits) -> BrokerConfig {
    BrokerConfig {
        limits,
        ..BrokerConfig::default()
    }
}

/// Sends `ping 0` to `ping 4` as requests to `svc.echo` and asserts that each reply is
/// `echo: ` and the request (`what` names the reply in a failure).
pub async fn assert_echoed(caller: &Client, what: &str) {
    for i in 0..5 {
        let reply = caller
            .request(
                "svc.echo",
                Bytes::from(format!("ping {i}")),
                Duration::from_secs(10),
            )
            .await
            .expect(what);
        assert_eq!(reply.payload(), format!("echo: ping {i}").as_bytes());
    }
}

/// Publishes `payload` to `topic` from `publisher`, acknowledged, and asserts that
/// `subscription` delivers it next (within the deadline; `what` names the wait).
pub async fn assert_delivers(
    publisher: &Client,
    topic: &str,
    payload: &'static [u8],
    subscription: &mut Subscription,
    what: &str,
) {
    publisher
        .publish_acked(topic, Bytes::from_static(payload))
        .await
        .expect("publish");
    let message = within(what, subscription.recv()).await.expect("message");
    assert_eq!(message.payload().as_ref(), payload);
}

/// Serves `subject` from `service`: each request is answered with `echo: ` and its payload,
/// until the returned task is aborted.
pub async fn echo_service(service: &Client, subject: &str) -> JoinHandle<()> {
    let mut requests = service.serve(subject).await.expect("serve");
    tokio::spawn(async move {
        while let Some(request) = requests.recv().await {
            let mut reply = b"echo: ".to_vec();
            reply.extend_from_slice(request.message().payload());
            let _ = request.respond(Bytes::from(reply)).await;
        }
    })
}

/// Asserts that a request to `subject` from `caller` fails with no-responders, before the
/// harness deadline and long before its own 30 s timeout (`why` says why nobody answers).
pub async fn assert_no_responders(caller: &Client, subject: &str, why: &str) {
    let outcome = within(
        "no responders",
        caller.request(subject, Bytes::from_static(b"anyone?"), 2 * DEADLINE),
    )
    .await;
    assert!(
        matches!(
            outcome,
            Err(cassini_client::RequestError::NoResponders { .. })
        ),
        "{why}: {outcome:?}"
    );
}

/// Awaits `future`, failing the test after [`DEADLINE`].
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(DEADLINE, future).await {
        Ok(value) => value,
        Err(_) => panic!("timed out: {what}"),
    }
}

/// Speaks the protocol by hand over a raw quinn connection, for tests of what the client crate
/// would never send.
pub mod raw {
    use bytes::BytesMut;
    use cassini_protocol::{
        encode_frame, ErrorCode, Frame, FrameDecoder, Hello, SessionId, Welcome, PROTOCOL_VERSION,
    };
    use cassini_quic::test_util::{self, FrameReadError};
    use rustls::pki_types::CertificateDer;

    use super::within;

    /// Encodes one frame with its length prefix.
    pub fn encoded(frame: &Frame) -> BytesMut {
        let mut buf = BytesMut::new();
        encode_frame(frame, &mut buf, u32::MAX).expect("encode");
        buf
    }

    /// Reads one frame from `recv` (the shared reader of `cassini_quic::test_util`), failing
    /// the test on a decode error or timeout; `None` when the stream ends or fails. Keep one
    /// `buf` per stream: it holds what arrived after the frame.
    pub async fn read_frame(recv: &mut quinn::RecvStream, buf: &mut BytesMut) -> Option<Frame> {
        let decoder = FrameDecoder::default();
        match within("frame", test_util::read_frame(recv, buf, &decoder)).await {
            Ok(frame) => frame,
            Err(FrameReadError::Decode(error)) => panic!("not a valid frame: {error}"),
            Err(FrameReadError::Read(_) | FrameReadError::Truncated(_)) => None,
        }
    }

    /// Sends `Hello` (resuming `resume` if given) and returns the `Welcome` with the control
    /// stream, or `None` if the broker closed the connection instead.
    pub async fn hello(
        connection: &quinn::Connection,
        resume: Option<SessionId>,
    ) -> Option<(Welcome, quinn::SendStream, quinn::RecvStream)> {
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            resume,
            client_name: Some("raw".into()),
            positions: Vec::new(),
            session_name: None,
        };
        send_hello(connection, hello).await
    }

    /// Sends `hello` on a new control stream and returns the `Welcome` with the control
    /// stream, or `None` if the broker closed the connection instead. Dropping the send half
    /// finishes the control stream, which is a goodbye.
    pub async fn send_hello(
        connection: &quinn::Connection,
        hello: Hello,
    ) -> Option<(Welcome, quinn::SendStream, quinn::RecvStream)> {
        let (mut send, mut recv) = connection.open_bi().await.ok()?;
        send.write_all(&encoded(&Frame::Hello(hello))).await.ok()?;
        let mut buf = BytesMut::new();
        match read_frame(&mut recv, &mut buf).await? {
            Frame::Welcome(welcome) => Some((welcome, send, recv)),
            other => panic!("expected Welcome, got {}", other.kind()),
        }
    }

    /// Writes a `Subscribe` for `filter`, with default options, on the control stream `send`.
    pub async fn send_subscribe(send: &mut quinn::SendStream, request_id: u64, filter: &str) {
        let subscribe = Frame::Subscribe(cassini_protocol::Subscribe {
            request_id,
            filter: filter.into(),
            options: cassini_protocol::SubscribeOptions::default(),
        });
        send.write_all(&encoded(&subscribe))
            .await
            .expect("write Subscribe");
    }

    /// Closes `connection` with no goodbye (code 99, "vanishing") and waits until `endpoint`
    /// has told the broker: the broker sees a client vanish, and keeps its session detached.
    pub async fn vanish(endpoint: &quinn::Endpoint, connection: &quinn::Connection) {
        connection.close(quinn::VarInt::from_u32(99), b"vanishing");
        endpoint.wait_idle().await;
    }

    /// The leaf certificate the broker presented on `connection`.
    pub fn server_cert_of(connection: &quinn::Connection) -> CertificateDer<'static> {
        let identity = connection.peer_identity().expect("server certificate");
        let chain = identity
            .downcast::<Vec<CertificateDer<'static>>>()
            .expect("a certificate chain");
        chain.first().expect("leaf").clone()
    }

    /// The application close code and reason of a closed connection.
    pub async fn close_of(connection: &quinn::Connection) -> (ErrorCode, String) {
        match within("connection close", connection.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => (
                ErrorCode(u32::try_from(close.error_code.into_inner()).unwrap_or(u32::MAX)),
                String::from_utf8_lossy(&close.reason).into_owned(),
            ),
            other => panic!("expected an application close, got {other}"),
        }
    }
}
