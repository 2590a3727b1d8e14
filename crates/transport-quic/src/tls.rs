//! TLS and QUIC configuration: rustls configs for mutual TLS, wrapped for quinn.
//!
//! This module owns every security decision of the transport: TLS 1.3 only, ALPN
//! [`cassini_protocol::ALPN`], client certificates required and verified against the Cassini CA,
//! no session resumption, no 0-RTT. It also loads certificates and keys from PEM files and turns
//! [`QuicOptions`] into quinn transport settings. It does not open sockets (see
//! [`crate::endpoint`]) or read identities (see [`crate::identity`]).
//!
//! Revocation: [`ServerTls::build`] takes certificate revocation lists. With at least one CRL,
//! a client whose certificate is listed is refused at the handshake, and a client whose
//! revocation status no CRL can tell (a CRL from another issuer only) is refused too unless
//! [`RevocationOptions::allow_unknown_status`] is set: revocation fails closed. With no CRL at
//! all, no revocation check is made.
//!
//! Resumption is off on both sides because a resumed TLS 1.3 session takes the peer identity
//! from the stored session without running the client certificate verifier again: a revoked or
//! expired client could otherwise keep reconnecting.
//!
//! Cluster links take the same CRLs both ways: the cluster listener checks a dialing node's
//! certificate as a client's ([`ServerTls::build_cluster`]) and a dialing node the listener's
//! ([`cluster_client_crypto`]).
//!
//! Kinds of certificate: a cluster node certificate ([`crate::identity::node_name`]) is refused
//! on the client ALPN, and every other certificate on the cluster ALPN [`CLUSTER_ALPN`], inside
//! the handshake and after the CA chain is verified ([`PeerKind`]; docs/CLUSTERING.md).
//!
//! The crypto provider is always ring, passed explicitly ([`crypto_provider`]); nothing here
//! relies on a process-wide default provider.
//!
//! Error messages are complete on their own (they include the underlying cause), so
//! [`TlsError`] does not chain causes through `source()`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{AckFrequencyConfig, IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};

pub use self::error::TlsError;
pub use self::pem_files::{load_certs, load_crls, load_key};
use crate::revocation::{revoked_keys, RevokedKeys};

/// The ALPN of the connections between cluster nodes (clients use [`cassini_protocol::ALPN`]).
pub const CLUSTER_ALPN: &[u8] = b"cassini-cluster/1";

/// Which kind of peer certificate a listener or a dialing node lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// A client: any certificate the CA signed except a cluster node's.
    Client,
    /// A cluster node: only a node certificate (URI SAN `cassini-node:NAME`).
    Node,
}

impl PeerKind {
    /// Refuses `leaf` unless it is of this kind.
    fn check(self, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let is_node = crate::identity::node_name(leaf).is_some();
        let refusal = match (self, is_node) {
            (Self::Client, true) => "a cluster node certificate is not accepted from a client",
            (Self::Node, false) => "only a cluster node certificate is accepted from a node",
            _ => return Ok(()),
        };
        Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::Other(rustls::OtherError(Arc::new(WrongKind(refusal)))),
        ))
    }
}

/// Why a certificate of the wrong kind was refused.
#[derive(Debug)]
struct WrongKind(&'static str);

impl std::fmt::Display for WrongKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for WrongKind {}

/// The handshake signature checks and schemes of a verifier that wraps another (`inner`), as
/// the inner one makes them: the same three methods in `ClientCertVerifier` and
/// `ServerCertVerifier`, which share no trait.
macro_rules! delegate_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls12_signature(message, cert, dss)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            self.inner.verify_tls13_signature(message, cert, dss)
        }

        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.inner.supported_verify_schemes()
        }
    };
}

/// A WebPKI verifier builder (`$builder`, for client or server certificates: the two builders
/// share these methods and no trait) checking `$crls` as [`RevocationOptions`] say; with no
/// CRL, no revocation check. The one place the revocation options are applied.
macro_rules! with_revocation {
    ($builder:expr, $crls:expr, $revocation:expr) => {{
        let mut builder = $builder;
        let crls = $crls;
        if !crls.is_empty() {
            builder = builder.with_crls(crls);
            if $revocation.allow_unknown_status {
                builder = builder.allow_unknown_revocation_status();
            }
            if $revocation.enforce_crl_expiry {
                builder = builder.enforce_revocation_expiration();
            }
        }
        builder
    }};
}

/// A client certificate verifier that lets in only certificates of one [`PeerKind`], after the
/// verifier it wraps accepted them.
#[derive(Debug)]
struct KindVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    kind: PeerKind,
}

impl ClientCertVerifier for KindVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        self.kind.check(end_entity)?;
        Ok(verified)
    }

    delegate_signature_checks!();
}

/// A server certificate verifier for a dialing node: the CA chain and the name
/// [`crate::certs::NODE_SERVER_NAME`] as webpki checks them, then a node certificate only.
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        PeerKind::Node.check(end_entity)?;
        Ok(verified)
    }

    delegate_signature_checks!();
}

/// TLS protocol versions Cassini speaks: TLS 1.3 only (QUIC requires it).
static PROTOCOL_VERSIONS: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// QUIC transport settings shared by the broker and clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    /// Close a connection after this long without hearing from the peer (the smaller of both
    /// sides' values applies). Shorter detects dead peers sooner but drops connections over
    /// brief outages; `Duration::ZERO` disables the timeout, so dead peers are never noticed.
    /// Default: 30 s.
    pub idle_timeout: Duration,
    /// Send a keep-alive packet after this long without sending anything, so quiet connections
    /// and NAT bindings stay up. Each keep-alive costs a small packet per connection; it should
    /// be well under `idle_timeout`. `Duration::ZERO` disables keep-alives. Default: 10 s.
    pub keep_alive_interval: Duration,
    /// Unidirectional streams the peer may have open at once. Each open stream costs buffer
    /// memory and bookkeeping; too few stalls senders that use a stream per message.
    /// Default: 1024.
    pub max_concurrent_uni_streams: u32,
    /// Bidirectional streams the peer may have open at once. Same trade-off as
    /// `max_concurrent_uni_streams`. Default: 256.
    pub max_concurrent_bidi_streams: u32,
    /// Bidirectional streams the peer may open before it has opened any (at most
    /// `max_concurrent_bidi_streams`). quinn sets aside about 70 bytes for every stream the peer
    /// may open as soon as a connection is accepted; a server ([`crate::server::QuicServer`])
    /// starts each connection at this limit (at least 1) and doubles it, up to
    /// `max_concurrent_bidi_streams`, each time it has accepted half of it, so idle
    /// connections reserve little and busy ones reach the full limit. A peer learns of each
    /// raise in a `MAX_STREAMS` frame; a stream counts once its first bytes arrive. Default:
    /// the same as `max_concurrent_bidi_streams` (no raising); [`QuicOptions::broker`]: 8.
    pub initial_concurrent_bidi_streams: u32,
    /// Requested UDP receive and send buffer size of the endpoint's socket. Larger buffers
    /// absorb bursts (thousands of simultaneous handshakes) without dropping packets, at the
    /// cost of kernel memory; the kernel may grant less (Linux caps it at
    /// `net.core.rmem_max` / `wmem_max`). Default: 4 MiB.
    pub socket_buffer_bytes: usize,
    /// Offer QUIC datagrams (RFC 9221): needed by datagram subscriptions and datagram
    /// publishes. Received datagrams wait in a 1.25 MiB buffer (quinn drops the oldest when it
    /// is full). Default: on.
    pub datagrams: bool,
    /// The congestion controller of this side's connections. Default: Cubic.
    pub congestion: CongestionControl,
    /// The longest the peer should wait before acknowledging a packet, asked of it with
    /// QUIC's ACK frequency extension (draft-ietf-quic-ack-frequency, which quinn speaks on
    /// both ends; a peer without it keeps its own delay, 25 ms by default). A short delay
    /// keeps a lossy link moving: once losses have cut the congestion window to a few
    /// packets, every send waits for an acknowledgement, and a receiver holding a single
    /// unacknowledged packet waits out its whole delay; the probe timeout after a lost tail
    /// packet also includes it. The cost: while packets arrive further apart than the delay,
    /// the peer acknowledges each one instead of every other; under load nothing changes.
    /// quinn cannot go below its 1 ms timer granularity. `Duration::ZERO` asks for nothing.
    /// Default: 1 ms (docs/BENCHMARKS.md, "Datagram subscriptions under loss").
    pub max_ack_delay: Duration,
    /// A server's stateless reset key ([`crate::reset_key`]). Give the same key across
    /// restarts so that clients of the previous process learn at their next packet that their
    /// connection is gone. Unused by clients. Default: `None`, a random key per endpoint.
    pub stateless_reset_key: Option<crate::reset_key::StatelessResetKey>,
    /// Most bytes the peer may send on one connection ahead of what this side's application
    /// has read, over all its streams (QUIC's connection-level flow-control window). Bounds what
    /// quinn buffers for a connection whose streams are read slower than they arrive; the cost:
    /// one connection carries at most this much per round trip. `u64::MAX`: no bound beyond
    /// each stream's own window (quinn's default). Default: no bound; [`QuicOptions::broker`]:
    /// 16 MiB.
    pub receive_window_bytes: u64,
    /// The largest UDP payload this side sends and accepts. A connection starts with packets
    /// of 1,200 bytes; QUIC's path MTU discovery (RFC 8899) then probes upward to the smaller
    /// of this bound and the peer's, and keeps the largest size the path carries (1,452 to
    /// 1,472 on Ethernet; this bound on loopback or a jumbo-frame network). Larger packets
    /// carry more messages each, and most of QUIC's cost is per packet (docs/BENCHMARKS.md,
    /// "Packet size"). A probe the path cannot carry is lost and the size stays. The costs:
    /// about eight probes after each handshake, some 4.5 KiB more per connection, and an
    /// endpoint's receive buffer of this × 64 × 32 bytes (8 MiB at 4,000, 2.9 MiB at 1,472;
    /// memory is used as bursts reach into it). From 1,200 to 6,500:
    /// quinn sends up to ten packets of one size in one UDP segmentation-offload call, which
    /// the kernel refuses beyond 64 KiB, and it would take those refused packets for a path
    /// that drops large packets and fall back to 1,200. Default: 4,000.
    pub max_udp_payload_bytes: u16,
}

/// The range of [`QuicOptions::max_udp_payload_bytes`].
pub const UDP_PAYLOAD_BYTES_RANGE: std::ops::RangeInclusive<u16> = 1_200..=6_500;

/// Which congestion controller a QUIC endpoint runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CongestionControl {
    /// Cubic (loss-based; quinn's default).
    #[default]
    Cubic,
    /// BBR (model-based; less sensitive to random loss; quinn marks it experimental).
    Bbr,
}

impl QuicOptions {
    /// The broker's settings: [`QuicOptions::default`], except that clients may open no
    /// unidirectional streams. In Cassini only the broker opens them (one per subscription),
    /// and quinn sets aside state for every stream the peer may open as soon as it accepts a
    /// connection: the 1,024 that clients need cost the broker about 41 KiB per connection
    /// (`cassini bench connections`, docs/BENCHMARKS.md). For the same reason a connection
    /// starts with 8 bidirectional streams (the control stream and a few publish streams),
    /// raised towards 256 as the client opens them. And each connection's receive window is
    /// 16 MiB: the broker reads every stream as data arrives, and the window bounds what quinn
    /// holds for a connection when the readers fall behind (docs/SECURITY.md).
    pub fn broker() -> Self {
        Self {
            max_concurrent_uni_streams: 0,
            initial_concurrent_bidi_streams: 8,
            receive_window_bytes: 16 * 1024 * 1024,
            ..Self::default()
        }
    }

    /// The bidirectional stream limit a connection starts with:
    /// `initial_concurrent_bidi_streams`, at least 1 (a peer granted none could never open
    /// the stream that would raise it) and at most `max_concurrent_bidi_streams`.
    pub fn initial_bidi_streams(&self) -> u32 {
        self.initial_concurrent_bidi_streams
            .max(1)
            .min(self.max_concurrent_bidi_streams)
    }
}

impl Default for QuicOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive_interval: Duration::from_secs(10),
            max_concurrent_uni_streams: 1024,
            max_concurrent_bidi_streams: 256,
            initial_concurrent_bidi_streams: 256,
            datagrams: true,
            congestion: CongestionControl::Cubic,
            max_ack_delay: Duration::from_millis(1),
            socket_buffer_bytes: 4 * 1024 * 1024,
            stateless_reset_key: None,
            receive_window_bytes: u64::MAX,
            max_udp_payload_bytes: 4_000,
        }
    }
}

/// The crypto provider every Cassini TLS configuration uses: ring's default provider.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How certificate revocation lists are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RevocationOptions {
    /// Accept a client whose revocation status no given CRL can tell (none of the CRLs is from
    /// its issuer). Off by default: an unknown status is a refusal (fail closed).
    pub allow_unknown_status: bool,
    /// Refuse every client once a CRL's `nextUpdate` has passed, until a fresh CRL is loaded.
    /// Off by default: an outdated CRL still revokes what it lists.
    pub enforce_crl_expiry: bool,
}

/// The broker's TLS material, built once per load or reload: the rustls configuration, and
/// the client certificate verifier inside it (kept to re-check live connections on reload).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// The rustls configuration for new connections.
    pub config: Arc<rustls::ServerConfig>,
    /// The client certificate verifier `config` uses.
    pub verifier: Arc<dyn ClientCertVerifier>,
    /// The keys ([`crate::revocation::certificate_key`]) of every certificate the CRLs list:
    /// installing this material ends the sessions these certificates opened.
    pub revoked: RevokedKeys,
}

impl ServerTls {
    /// Presents `chain` (leaf first) with `key`; requires every client to present a
    /// certificate issued by one of `ca_certs` and not revoked by `crls` (see the module docs for
    /// how revocation fails closed); negotiates ALPN [`cassini_protocol::ALPN`] over TLS 1.3
    /// only; issues no session tickets and keeps no sessions, so every connection runs the
    /// verifier and a new CRL applies to every reconnecting client.
    /// Refuses cluster node certificates ([`PeerKind::Client`]).
    pub fn build(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: RevocationOptions,
    ) -> Result<Self, TlsError> {
        Self::build_for(PeerKind::Client, ca_certs, chain, key, crls, revocation)
    }

    /// The cluster listener's material: like [`ServerTls::build`], but presenting a node
    /// certificate, letting in node certificates only ([`PeerKind::Node`]) and negotiating
    /// [`CLUSTER_ALPN`].
    pub fn build_cluster(
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: RevocationOptions,
    ) -> Result<Self, TlsError> {
        Self::build_for(PeerKind::Node, ca_certs, chain, key, crls, revocation)
    }

    fn build_for(
        kind: PeerKind,
        ca_certs: Vec<CertificateDer<'static>>,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        crls: Vec<CertificateRevocationListDer<'static>>,
        revocation: RevocationOptions,
    ) -> Result<Self, TlsError> {
        let provider = crypto_provider();
        let revoked = Arc::new(revoked_keys(&crls, Path::new("the CRL"))?);
        let roots = Arc::new(root_store(ca_certs)?);
        let builder = with_revocation!(
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()),
            crls,
            revocation
        );
        let verifier: Arc<dyn ClientCertVerifier> = Arc::new(KindVerifier {
            inner: builder.build().map_err(TlsError::ClientVerifier)?,
            kind,
        });
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(PROTOCOL_VERSIONS)?
            .with_client_cert_verifier(Arc::clone(&verifier))
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![match kind {
            PeerKind::Client => cassini_protocol::ALPN.to_vec(),
            PeerKind::Node => CLUSTER_ALPN.to_vec(),
        }];
        config.send_tls13_tickets = 0;
        config.session_storage = Arc::new(NoServerSessionStorage {});
        config.max_early_data_size = 0;
        Ok(Self {
            config: Arc::new(config),
            verifier,
            revoked,
        })
    }

    /// Whether a client presenting `chain` (leaf first) would be let in now: the check a live
    /// connection gets when the material is reloaded. The error says why not.
    pub fn verify_client(&self, chain: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        self.verifier
            .verify_client_cert(leaf, intermediates, UnixTime::now())
            .map(|_| ())
    }
}

/// The broker's rustls configuration without revocation lists: [`ServerTls::build`] with no
/// CRL.
pub fn server_crypto(
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    ServerTls::build(
        ca_certs,
        chain,
        key,
        Vec::new(),
        RevocationOptions::default(),
    )
    .map(|tls| tls.config)
}

/// A client's rustls configuration.
///
/// Trusts servers whose certificate was issued by one of `ca_certs`, presents `chain` (leaf
/// first) with `key`, negotiates ALPN [`cassini_protocol::ALPN`] over TLS 1.3 only, and neither
/// resumes sessions nor sends early data.
pub fn client_crypto(
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let roots = root_store(ca_certs)?;
    let config = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(without_resumption(config, cassini_protocol::ALPN))
}

/// A dialing cluster node's rustls configuration: trusts only node certificates
/// ([`PeerKind::Node`]) issued by one of `ca_certs` for the name
/// [`crate::certs::NODE_SERVER_NAME`] (connect with that name) and not revoked by `crls` (as
/// [`ServerTls::build`] checks clients: with at least one CRL, an unknown revocation status is
/// a refusal unless `revocation` allows it), presents the node's own `chain` with `key`,
/// negotiates [`CLUSTER_ALPN`] over TLS 1.3 only, without resumption or early data.
pub fn cluster_client_crypto(
    ca_certs: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    revocation: RevocationOptions,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = crypto_provider();
    let roots = Arc::new(root_store(ca_certs)?);
    let builder = with_revocation!(
        WebPkiServerVerifier::builder_with_provider(roots, provider.clone()),
        crls,
        revocation
    );
    let inner = builder.build().map_err(TlsError::ServerVerifier)?;
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(PROTOCOL_VERSIONS)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier { inner }))
        .with_client_auth_cert(chain, key)?;
    Ok(without_resumption(config, CLUSTER_ALPN))
}

/// A dialing side's `config` negotiating `alpn`, with neither resumption nor early data (see
/// the module docs for why).
fn without_resumption(mut config: rustls::ClientConfig, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    Arc::new(config)
}

/// The broker's quinn configuration: `crypto` (from [`server_crypto`]) with transport settings
/// from `opts`.
pub fn server_config(
    crypto: Arc<rustls::ServerConfig>,
    opts: &QuicOptions,
) -> Result<quinn::ServerConfig, TlsError> {
    let crypto = QuicServerConfig::try_from(crypto).map_err(TlsError::NotQuicCapable)?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(opts)?));
    Ok(config)
}

/// A client's quinn configuration: `crypto` (from [`client_crypto`]) with transport settings
/// from `opts`.
pub fn client_config(
    crypto: Arc<rustls::ClientConfig>,
    opts: &QuicOptions,
) -> Result<quinn::ClientConfig, TlsError> {
    let crypto = QuicClientConfig::try_from(crypto).map_err(TlsError::NotQuicCapable)?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config(opts)?));
    Ok(config)
}

fn root_store(ca_certs: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    if ca_certs.is_empty() {
        return Err(TlsError::NoCaCertificates);
    }
    let mut roots = RootCertStore::empty();
    for cert in ca_certs {
        roots.add(cert).map_err(TlsError::InvalidCaCertificate)?;
    }
    Ok(roots)
}

fn transport_config(opts: &QuicOptions) -> Result<TransportConfig, TlsError> {
    let idle_timeout = if opts.idle_timeout.is_zero() {
        None
    } else {
        Some(
            IdleTimeout::try_from(opts.idle_timeout).map_err(|_| TlsError::InvalidOption {
                option: "idle_timeout",
                reason: "too large for QUIC (at most 2^62 - 1 ms)",
            })?,
        )
    };
    let keep_alive_interval =
        (!opts.keep_alive_interval.is_zero()).then_some(opts.keep_alive_interval);
    if !UDP_PAYLOAD_BYTES_RANGE.contains(&opts.max_udp_payload_bytes) {
        return Err(TlsError::InvalidOption {
            option: "max_udp_payload_bytes",
            reason: "must be from 1200 to 6500",
        });
    }
    let mut mtu_discovery = MtuDiscoveryConfig::default();
    mtu_discovery.upper_bound(opts.max_udp_payload_bytes);
    let mut transport = TransportConfig::default();
    transport
        .mtu_discovery_config(Some(mtu_discovery))
        .max_idle_timeout(idle_timeout)
        .keep_alive_interval(keep_alive_interval)
        .max_concurrent_uni_streams(VarInt::from_u32(opts.max_concurrent_uni_streams))
        .max_concurrent_bidi_streams(VarInt::from_u32(opts.initial_bidi_streams()))
        .receive_window(VarInt::from_u64(opts.receive_window_bytes).unwrap_or(VarInt::MAX));
    if !opts.datagrams {
        transport.datagram_receive_buffer_size(None);
    }
    if opts.congestion == CongestionControl::Bbr {
        transport.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    }
    if !opts.max_ack_delay.is_zero() {
        let mut ack_frequency = AckFrequencyConfig::default();
        ack_frequency.max_ack_delay(Some(opts.max_ack_delay));
        transport.ack_frequency_config(Some(ack_frequency));
    }
    Ok(transport)
}

pub(crate) mod error;
pub(crate) mod pem_files;
#[cfg(test)]
mod tests;
