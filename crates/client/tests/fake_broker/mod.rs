//! A scripted stand-in for the broker: real QUIC and mutual TLS, frames written by hand.
//!
//! Each test drives the broker's side of the protocol step by step, so it can produce orders of
//! events (a subscription stream before its `Subscribed` answer) and failures (a reset with
//! `SLOW_CONSUMER`, a refused certificate, a connection closed without a goodbye, a session it
//! no longer knows) on purpose. A client that reconnects comes back to the same endpoint: the
//! test accepts the new connection and answers its `Hello` as the scenario needs.

#![allow(dead_code, clippy::expect_used, clippy::panic)] // Test support: failing loudly is the point.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_client::{Client, ClientBuilder, ReconnectPolicy};
use cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES;
use cassini_protocol::{
    encode_frame, Delivery, ErrorCode, Frame, Hello, Limits, Publish, SessionId, Subscribe,
    Subscribed, SubscriptionId, SubscriptionStart, Unsubscribe, Welcome, PROTOCOL_VERSION,
};
use cassini_quic::certs::IssuedCert;
use cassini_quic::endpoint::bind_server;
use cassini_quic::test_util::FrameReader;
/// Certificates for one test: a CA that the broker trusts for clients and that issued the
/// broker's certificate (shared with the other crates' tests).
pub(crate) use cassini_quic::test_util::Pki;
use cassini_quic::tls::{server_config, server_crypto, QuicOptions};
use quinn::VarInt;
use tokio::time::timeout;

/// How long any single broker-side step may take before the test fails.
pub(crate) const STEP: Duration = Duration::from_secs(5);

/// The limits the fake broker announces.
pub(crate) const LIMITS: Limits = Limits {
    max_payload_bytes: 1024,
    max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
    max_subscriptions: 100,
    max_topic_bytes: 64,
    max_topic_depth: 8,
    max_headers: 16,
    max_header_bytes: 1024,
    max_datagram_bytes: 0,
};

/// A listening fake broker.
pub(crate) struct FakeBroker {
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) addr: SocketAddr,
    pub(crate) pki: Pki,
}

impl FakeBroker {
    /// A broker trusting client certificates from its own CA.
    pub(crate) fn start() -> Self {
        let pki = Pki::new();
        let client_ca = pki.ca.cert_der().clone();
        Self::start_trusting(pki, client_ca)
    }

    /// A broker whose certificate comes from `pki` but that trusts client certificates issued by
    /// `client_ca` only.
    pub(crate) fn start_trusting(
        pki: Pki,
        client_ca: rustls_pki_types::CertificateDer<'static>,
    ) -> Self {
        let crypto = server_crypto(
            vec![client_ca],
            vec![pki.server.cert_der().expect("server DER")],
            pki.server.key_der().expect("server key DER"),
        )
        .expect("server TLS");
        let opts = QuicOptions::default();
        let config = server_config(crypto, &opts).expect("server QUIC config");
        let (endpoint, _) =
            bind_server("127.0.0.1:0".parse().expect("address"), config, &opts).expect("bind");
        let addr = endpoint.local_addr().expect("local address");
        Self {
            endpoint,
            addr,
            pki,
        }
    }

    /// A client builder for this broker, with a fresh certificate for `name`.
    pub(crate) fn client_builder(&self, name: &str) -> ClientBuilder {
        let cert = self.pki.client(name);
        self.client_builder_with(&cert)
    }

    /// A client builder for this broker presenting `cert`.
    pub(crate) fn client_builder_with(&self, cert: &IssuedCert) -> ClientBuilder {
        Client::builder(self.addr)
            .ca_certs(vec![self.pki.ca.cert_der().clone()])
            .identity(
                vec![cert.cert_der().expect("client DER")],
                cert.key_der().expect("client key DER"),
            )
            .connect_timeout(STEP)
    }

    /// A client builder for `alice` that reconnects quickly ([`quick_reconnect`]).
    pub(crate) fn reconnecting_builder(&self) -> ClientBuilder {
        self.client_builder("alice").reconnect(quick_reconnect())
    }

    /// Connects the client `builder` makes while accepting its connection as a new session.
    pub(crate) async fn connect(&self, builder: ClientBuilder) -> (Client, Session) {
        let (client, session) = tokio::join!(builder.connect(), self.accept_session());
        (client.expect("connect"), session)
    }

    /// Connects a client for `alice` with the default settings, as [`FakeBroker::connect`].
    pub(crate) async fn connect_alice(&self) -> (Client, Session) {
        self.connect(self.client_builder("alice")).await
    }

    /// Accepts the next connection (completing TLS), or the handshake error.
    pub(crate) async fn accept_connection(
        &self,
    ) -> Result<quinn::Connection, quinn::ConnectionError> {
        let incoming = timeout(STEP, self.endpoint.accept())
            .await
            .expect("a connection attempt in time")
            .expect("endpoint open");
        incoming.await
    }

    /// Accepts a connection and answers its `Hello` with `Welcome` for a new session,
    /// [`SESSION`].
    pub(crate) async fn accept_session(&self) -> Session {
        let (mut session, _hello) = self.accept_hello().await;
        session.welcome(SESSION, false).await;
        session
    }

    /// Accepts a connection whose `Hello` asks to resume `session_id`, and resumes it.
    pub(crate) async fn accept_resume(&self, session_id: SessionId) -> Session {
        let (mut session, hello) = self.accept_hello().await;
        assert_eq!(hello.resume, Some(session_id), "Hello must ask to resume");
        session.welcome(session_id, true).await;
        session
    }

    /// Accepts a connection and reads its `Hello`, leaving the answer to the test.
    pub(crate) async fn accept_hello(&self) -> (Session, Hello) {
        let connection = self.accept_connection().await.expect("TLS handshake");
        let (send, recv) = timeout(STEP, connection.accept_bi())
            .await
            .expect("control stream in time")
            .expect("control stream");
        let mut session = Session {
            connection,
            control_send: send,
            control: Reader::new(recv),
        };
        let hello = match session.control.next().await {
            Some(Frame::Hello(hello)) => hello,
            other => panic!("expected Hello, got {other:?}"),
        };
        assert_eq!(hello.protocol_version, PROTOCOL_VERSION);
        (session, hello)
    }

    /// Asserts that the client does not try to connect within `wait`.
    pub(crate) async fn assert_no_connection_attempt(&self, wait: Duration) {
        if let Ok(incoming) = timeout(wait, self.endpoint.accept()).await {
            panic!(
                "the client connected again from {:?}",
                incoming.map(|incoming| incoming.remote_address())
            );
        }
    }
}

/// Reconnects quickly, so tests do not wait for the default backoff.
pub(crate) fn quick_reconnect() -> ReconnectPolicy {
    ReconnectPolicy {
        initial_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        ..ReconnectPolicy::default()
    }
}

/// The session id the fake broker gives a new session by default.
pub(crate) const SESSION: SessionId = SessionId([42; 16]);

/// The broker's side of one connection.
pub(crate) struct Session {
    pub(crate) connection: quinn::Connection,
    pub(crate) control_send: quinn::SendStream,
    pub(crate) control: Reader,
}

impl Session {
    /// Answers the `Hello` with `Welcome`.
    pub(crate) async fn welcome(&mut self, session_id: SessionId, resumed: bool) {
        self.send_control(&Frame::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            session_id,
            resumed,
            identity: "alice".into(),
            limits: LIMITS,
            subscriptions: Vec::new(),
            cluster_addresses: Vec::new(),
        }))
        .await;
    }

    pub(crate) async fn send_control(&mut self, frame: &Frame) {
        write(&mut self.control_send, frame).await;
    }

    /// Opens a subscription stream and sends its `SubscriptionStart`.
    pub(crate) async fn open_subscription(
        &self,
        subscription: SubscriptionId,
    ) -> quinn::SendStream {
        let mut stream = self
            .connection
            .open_uni()
            .await
            .expect("open subscription stream");
        write(
            &mut stream,
            &Frame::SubscriptionStart(SubscriptionStart { subscription }),
        )
        .await;
        stream
    }

    /// Reads the next control frame, expecting a `Subscribe`, and returns it unanswered.
    pub(crate) async fn expect_subscribe(&mut self) -> Subscribe {
        match self.control.next().await {
            Some(Frame::Subscribe(subscribe)) => subscribe,
            other => panic!("expected Subscribe, got {other:?}"),
        }
    }

    /// Answers the `Subscribe` with `request_id`: it is `subscription` now.
    pub(crate) async fn subscribed(&mut self, request_id: u64, subscription: SubscriptionId) {
        self.send_control(&Frame::Subscribed(Subscribed {
            request_id,
            subscription,
        }))
        .await;
    }

    /// Reads the next control frame, expecting a `Subscribe`, and answers `Subscribed` with
    /// `subscription` (opening no stream). Returns the request.
    pub(crate) async fn answer_subscribe(&mut self, subscription: SubscriptionId) -> Subscribe {
        let subscribe = self.expect_subscribe().await;
        self.subscribed(subscribe.request_id, subscription).await;
        subscribe
    }

    /// Reads the next control frame, expecting a `Subscribe`; answers `Subscribed` with
    /// `subscription` and opens the subscription's stream. Returns the request and the stream.
    pub(crate) async fn accept_subscribe(
        &mut self,
        subscription: SubscriptionId,
    ) -> (Subscribe, quinn::SendStream) {
        let subscribe = self.answer_subscribe(subscription).await;
        let stream = self.open_subscription(subscription).await;
        (subscribe, stream)
    }

    /// Reads the next control frame, expecting an `Unsubscribe`, and returns it unanswered.
    pub(crate) async fn expect_unsubscribe(&mut self) -> Unsubscribe {
        match self.control.next().await {
            Some(Frame::Unsubscribe(unsubscribe)) => unsubscribe,
            other => panic!("expected Unsubscribe, got {other:?}"),
        }
    }

    /// Expects what a dropped subscription does: an `Unsubscribe` for `subscription` next on the
    /// control stream, and its `stream` stopped with code 0.
    pub(crate) async fn expect_dropped(
        &mut self,
        subscription: SubscriptionId,
        stream: &quinn::SendStream,
    ) {
        assert_eq!(self.expect_unsubscribe().await.subscription, subscription);
        let stopped = timeout(STEP, stream.stopped())
            .await
            .expect("stopped in time")
            .expect("stopped");
        assert_eq!(stopped, Some(VarInt::from_u32(0)));
    }

    /// Reads the next control frame, expecting a `Ping`, and answers it with its `Pong`.
    pub(crate) async fn answer_ping(&mut self) {
        match self.control.next().await {
            Some(Frame::Ping(ping)) => self.send_control(&Frame::Pong(ping)).await,
            other => panic!("expected Ping, got {other:?}"),
        }
    }

    /// Accepts the client's next publish stream.
    pub(crate) async fn accept_publish(&self) -> (quinn::SendStream, Reader) {
        let (send, recv) = timeout(STEP, self.connection.accept_bi())
            .await
            .expect("publish stream in time")
            .expect("publish stream");
        (send, Reader::new(recv))
    }

    pub(crate) fn close(&self, code: ErrorCode, reason: &str) {
        self.connection
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
    }
}

/// A delivery of `payload` on `topic` with no headers, as the broker writes it.
pub(crate) fn delivery(sequence: u64, topic: &str, payload: &'static str) -> Delivery {
    Delivery {
        sequence,
        topic: topic.into(),
        headers: vec![],
        payload: Bytes::from_static(payload.as_bytes()),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    }
}

/// Encodes and writes one frame.
pub(crate) async fn write(stream: &mut quinn::SendStream, frame: &Frame) {
    let mut buf = BytesMut::new();
    encode_frame(frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).expect("encode");
    stream.write_all(&buf).await.expect("write frame");
}

/// Frames from one receive stream (the shared reader of `cassini_quic::test_util`).
pub(crate) struct Reader(FrameReader);

impl Reader {
    pub(crate) fn new(stream: quinn::RecvStream) -> Self {
        Self(FrameReader::new(stream))
    }

    /// The next frame, `None` at the end of the stream; fails the test on errors (a stream
    /// that ends mid-frame among them) or after [`STEP`].
    pub(crate) async fn next(&mut self) -> Option<Frame> {
        timeout(STEP, self.0.next())
            .await
            .expect("a frame in time")
            .expect("a readable stream of whole frames")
    }

    /// The next frame of a publish stream, expecting a `Publish`.
    pub(crate) async fn expect_publish(&mut self) -> Publish {
        match self.next().await {
            Some(Frame::Publish(publish)) => publish,
            other => panic!("expected Publish, got {other:?}"),
        }
    }
}
