//! Client settings, their validation, and connecting.
//!
//! [`ClientBuilder`] collects where the broker is, how to trust it, who this client is, and how
//! large the client's buffers are. `connect` checks the settings before touching the network,
//! loads certificates, binds a UDP endpoint, and runs the handshake within `connect_timeout`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::SessionId;
use cassini_quic::certs::{client_paths, CertPaths};
use cassini_quic::endpoint::{bind_client_layered, SocketLayer};
use cassini_quic::tls::{self, QuicOptions};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::timeout;

use crate::client::{Client, ClientSettings};
use crate::connect::broker_address::BrokerAddress;
use crate::connect::cluster_addresses::ClusterAddresses;
use crate::connect::connector::Connector;
use crate::connect::first_connect;
use crate::connect::liveness::Liveness;
use crate::connect::reconnect_policy::{classify, Loss, ReconnectPolicy};
use crate::error::ConnectionError;
use crate::publish::outbound::OutboundBuffer;
use crate::publish::publisher::PublisherSettings;

/// The CA certificates that verify the broker.
enum Trust {
    /// A PEM file, read by `connect`.
    File(PathBuf),
    /// Certificates already in memory.
    Certs(Vec<CertificateDer<'static>>),
}

/// This client's certificate chain and key.
enum Identity {
    /// PEM files, read by `connect`.
    Files { cert: PathBuf, key: PathBuf },
    /// A chain and key already in memory.
    InMemory {
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    },
}

impl Client {
    /// Starts configuring a client for the broker at `address` (`"host:port"`, `"ip:port"` or a
    /// [`SocketAddr`]).
    pub fn builder(address: impl Into<BrokerAddress>) -> ClientBuilder {
        ClientBuilder::new(address.into())
    }
}

/// Configures and connects a [`Client`]. Create one with [`Client::builder`].
///
/// A CA (`ca_file` or `ca_certs`) and a client identity (`identity_files` or `identity`) are
/// required; everything else has a default.
pub struct ClientBuilder {
    /// Where the broker listens.
    address: BrokerAddress,
    /// The name the broker's certificate must carry; `None` derives it from the address.
    server_name: Option<String>,
    /// What verifies the broker; required.
    trust: Option<Trust>,
    /// What the client presents; required, since the broker demands a certificate.
    identity: Option<Identity>,
    /// Sent in `Hello` for the broker's logs.
    client_name: Option<String>,
    /// The session to resume on the first connection, if any.
    resume: Option<SessionId>,
    /// The stable session name sent in every `Hello`, if any.
    session_name: Option<String>,
    /// QUIC transport settings.
    quic: QuicOptions,
    /// Local UDP address; `None` picks the wildcard of the broker's address family.
    bind_address: Option<SocketAddr>,
    /// Wraps the UDP socket (fault injection); `None` uses it as it is.
    socket_layer: Option<SocketLayer>,
    /// Bound on the whole of `connect`.
    connect_timeout: Duration,
    /// Bound on each wait of `close`.
    close_timeout: Duration,
    /// Messages buffered per subscription.
    subscription_buffer: usize,
    /// Publish streams kept open.
    max_publish_lanes: usize,
    /// Messages queued per publish stream.
    publish_lane_buffer: usize,
    /// Whether and how to reconnect.
    reconnect: ReconnectPolicy,
    /// Whether `connect` tries the first connection again while it fails.
    retry_first_connect: bool,
    /// How a broker that stopped answering is noticed.
    liveness: Liveness,
    /// Publishes kept while reconnecting.
    outbound_buffer: OutboundBuffer,
    /// Default wait for a publish acknowledgement.
    ack_timeout: Duration,
    /// Most acknowledged publishes waiting at once.
    max_unacked_publishes: usize,
}

impl fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let trust = match &self.trust {
            Some(Trust::File(path)) => format!("file {}", path.display()),
            Some(Trust::Certs(certs)) => format!("{} certificates", certs.len()),
            None => "none".to_owned(),
        };
        let identity = match &self.identity {
            Some(Identity::Files { cert, .. }) => format!("file {}", cert.display()),
            Some(Identity::InMemory { chain, .. }) => format!("{} certificates", chain.len()),
            None => "none".to_owned(),
        };
        f.debug_struct("ClientBuilder")
            .field("address", &self.address)
            .field("server_name", &self.server_name)
            .field("trust", &trust)
            .field("identity", &identity)
            .field("client_name", &self.client_name)
            .field("resume", &self.resume)
            .field("session_name", &self.session_name)
            .field("quic", &self.quic)
            .field("bind_address", &self.bind_address)
            .field("socket_layer", &self.socket_layer.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("subscription_buffer", &self.subscription_buffer)
            .field("max_publish_lanes", &self.max_publish_lanes)
            .field("publish_lane_buffer", &self.publish_lane_buffer)
            .field("reconnect", &self.reconnect)
            .field("retry_first_connect", &self.retry_first_connect)
            .field("liveness", &self.liveness)
            .field("outbound_buffer", &self.outbound_buffer)
            .field("ack_timeout", &self.ack_timeout)
            .field("max_unacked_publishes", &self.max_unacked_publishes)
            .finish()
    }
}

/// Settings checked and certificates loaded: ready to connect.
struct Prepared {
    /// The quinn client configuration, certificates loaded.
    tls: quinn::ClientConfig,
    /// The name to verify the broker's certificate against.
    server_name: String,
    /// What the client keeps after connecting.
    client: ClientSettings,
}

impl ClientBuilder {
    pub(crate) fn new(address: BrokerAddress) -> Self {
        Self {
            address,
            server_name: None,
            trust: None,
            identity: None,
            client_name: None,
            resume: None,
            session_name: None,
            quic: QuicOptions::default(),
            bind_address: None,
            socket_layer: None,
            connect_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            subscription_buffer: 1024,
            max_publish_lanes: 64,
            publish_lane_buffer: 256,
            reconnect: ReconnectPolicy::default(),
            retry_first_connect: false,
            liveness: Liveness::default(),
            outbound_buffer: OutboundBuffer::default(),
            ack_timeout: Duration::from_secs(60),
            max_unacked_publishes: 1024,
        }
    }

    /// Trust brokers whose certificate was issued by a CA in this PEM file (the broker's
    /// `ca.crt`).
    pub fn ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.trust = Some(Trust::File(path.as_ref().to_owned()));
        self
    }

    /// Trust brokers whose certificate was issued by one of these CA certificates.
    pub fn ca_certs(mut self, certs: Vec<CertificateDer<'static>>) -> Self {
        self.trust = Some(Trust::Certs(certs));
        self
    }

    /// This client's certificate chain (PEM, leaf first) and private key (PEM; PKCS#8, PKCS#1
    /// or SEC1). The broker takes the client's identity from this certificate.
    pub fn identity_files(mut self, cert: impl AsRef<Path>, key: impl AsRef<Path>) -> Self {
        self.identity = Some(Identity::Files {
            cert: cert.as_ref().to_owned(),
            key: key.as_ref().to_owned(),
        });
        self
    }

    /// This client's certificate chain (leaf first) and private key, already in memory.
    pub fn identity(
        mut self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.identity = Some(Identity::InMemory { chain, key });
        self
    }

    /// The CA and the identity of client `name` from a Cassini certificate directory:
    /// `DIR/ca.crt`, `DIR/client-NAME.crt` and `DIR/client-NAME.key` (the layout `cassini certs`
    /// writes).
    pub fn cert_dir(self, dir: impl AsRef<Path>, name: &str) -> Self {
        let dir = dir.as_ref();
        let (cert, key) = client_paths(dir, name);
        self.ca_file(CertPaths::in_dir(dir).ca)
            .identity_files(cert, key)
    }

    /// Replaces the broker's address (one, a comma-separated list, or a `Vec`; see
    /// [`BrokerAddress`]). Every connection attempt tries the addresses in order, each with an
    /// equal share of the connect timeout for its QUIC handshake; a broker that completed it
    /// has the rest of the timeout to send its `Welcome`.
    pub fn address(mut self, address: impl Into<BrokerAddress>) -> Self {
        self.address = address.into();
        self
    }

    /// The name the broker's certificate must be valid for. Default: the host of a `host:port`
    /// address, or `localhost` for an IP address.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// A name for the broker's logs. It is not the identity: that comes from the certificate.
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.client_name = Some(name.into());
        self
    }

    /// Resumes session `id` (from [`crate::Client::session_id`] of an earlier client, e.g. one
    /// that ran before the process restarted) on the first connection, so its stored messages
    /// (an at-least-once backlog) are delivered. The session's subscriptions are taken up by
    /// subscribing with the same filter and options (see
    /// [`crate::Client::unclaimed_subscriptions`]). If the broker no longer knows the session
    /// (`SESSION_NOT_FOUND`: it expired or the broker lost it) the client starts a new one:
    /// [`crate::Client::state`] then says `resumed: false`, and every subscription made is new.
    /// Ignored when [`ClientBuilder::session_name`] is set.
    pub fn resume_session(mut self, id: SessionId) -> Self {
        self.resume = Some(id);
        self
    }

    /// Names the session (like MQTT's client id with a clean start of false): the broker keeps
    /// one session per name and certificate identity, created by the first connection with
    /// that name and resumed by every later one, from this process or another, after a broker
    /// restart too in disk mode. A connection with the name takes the session over from one
    /// still attached (which ends with `SESSION_TAKEN_OVER`). Take up the session's
    /// subscriptions as with [`ClientBuilder::resume_session`]. The name is 1 to 128 bytes of
    /// ASCII letters, digits, `-`, `_` and `.`; another is refused by
    /// [`ClientBuilder::connect`] with [`ConnectionError::Config`].
    pub fn session_name(mut self, name: impl Into<String>) -> Self {
        self.session_name = Some(name.into());
        self
    }

    /// QUIC transport settings: idle timeout, keep-alive, stream limits, socket buffers.
    pub fn quic_options(mut self, options: QuicOptions) -> Self {
        self.quic = options;
        self
    }

    /// The local UDP address to bind. Default: `0.0.0.0:0`, or `[::]:0` for an IPv6 broker.
    pub fn bind_address(mut self, addr: SocketAddr) -> Self {
        self.bind_address = Some(addr);
        self
    }

    /// Wraps the client's UDP socket, now and after every [`Client::rebind`]: for fault
    /// injection, e.g. with [`cassini_quic::faults::FaultySocket`]. Default: none.
    pub fn socket_layer(mut self, layer: SocketLayer) -> Self {
        self.socket_layer = Some(layer);
        self
    }

    /// How long `connect` may take, from resolving the address to the broker's `Welcome`.
    /// Default: 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long each step of [`Client::close`] may wait for the broker: acknowledging the
    /// publish streams, then closing the connection after the goodbye. Default: 5 s.
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout;
        self
    }

    /// Messages buffered per subscription before the client stops reading its stream (and the
    /// broker's overflow policy for it takes over). Larger absorbs bursts of a slow reader at
    /// the cost of memory (up to this many payloads per subscription, plus at most 32 the
    /// subscription has taken to yield next). Default: 1024.
    pub fn subscription_buffer(mut self, messages: usize) -> Self {
        self.subscription_buffer = messages;
        self
    }

    /// Most publish streams (one per topic) kept open; publishing to one more topic closes the
    /// least recently used stream. Each open stream costs a little memory on both sides, and
    /// the broker caps them (default 256). Default: 64.
    pub fn max_publish_lanes(mut self, lanes: usize) -> Self {
        self.max_publish_lanes = lanes;
        self
    }

    /// Messages queued per publish stream before `publish` waits. Larger lets a burst return
    /// sooner at the cost of memory (up to this many payloads per topic). Default: 256.
    pub fn publish_lane_buffer(mut self, messages: usize) -> Self {
        self.publish_lane_buffer = messages;
        self
    }

    /// Whether and how the client reconnects after losing its connection: see
    /// [`ReconnectPolicy`] and the [`Client`] documentation. Default: on, backing off from
    /// 100 ms to 10 s, forever. [`ReconnectPolicy::disabled`] makes a lost connection end the
    /// client.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Whether [`ClientBuilder::connect`] tries the first connection again while it fails for
    /// a reason that may pass (nothing listens yet, no answer, a broker that is starting or
    /// stopping), on the reconnect policy's schedule and until its `give_up_after`, as NATS
    /// clients' `retry_on_failed_connect` does; each attempt is bounded by `connect_timeout`.
    /// A refusal that would only repeat (the broker refused the certificate, a bad setting)
    /// still fails at once, as does everything with the reconnect policy disabled. Default:
    /// off, so that a person or a script waiting on `connect` hears of a broker that is not
    /// there within `connect_timeout`.
    pub fn retry_first_connect(mut self, retry: bool) -> Self {
        self.retry_first_connect = retry;
        self
    }

    /// How the client notices a broker that stopped answering: see [`Liveness`]. Default:
    /// [`Liveness::Auto`], which pings every 500 ms and counts the connection as lost after
    /// 1.5 s without an answer when the client knows more than one broker address (given, or
    /// learned from a cluster node's `Welcome`: another node can take over), and otherwise
    /// leaves it to QUIC's idle timeout.
    pub fn liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = liveness;
        self
    }

    /// How many publishes, and for how long, the client keeps while reconnecting: see
    /// [`OutboundBuffer`]. Default: 1024 messages, 60 s. [`OutboundBuffer::disabled`] makes a
    /// publish while reconnecting fail at once.
    pub fn outbound_buffer(mut self, buffer: OutboundBuffer) -> Self {
        self.outbound_buffer = buffer;
        self
    }

    /// How long [`Client::publish_acked`] (and every acknowledged publish without its own
    /// timeout) waits for the broker's acknowledgement, including any reconnect in between.
    /// Longer rides out longer outages; after it passes the message may or may not have been
    /// delivered. Default: 60 s, twice the idle timeout: a broker that vanished is noticed at
    /// the idle timeout at the latest (a restarted one at the client's next packet, by its
    /// stateless reset), so a publish in flight outlives the detection, the reconnect and its
    /// resend instead of failing just as the client notices. Keep it within the broker's dedupe
    /// window (`dedupe.max_age_secs`, 120 s by default): a publish resent after the broker
    /// forgot its message id is delivered again.
    pub fn ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
    }

    /// Most acknowledged publishes waiting for their acknowledgement at once; one more waits
    /// for a free slot (within its timeout). Each costs a copy of its encoded message until it
    /// is acknowledged. Default: 1024.
    pub fn max_unacked_publishes(mut self, publishes: usize) -> Self {
        self.max_unacked_publishes = publishes;
        self
    }

    /// Connects, authenticates with the client certificate, and opens a session.
    ///
    /// A certificate the broker refuses fails here with [`ConnectionError::Certificate`], a broker
    /// certificate this client does not trust with [`ConnectionError::BrokerCertificate`]. This
    /// first connection is tried once, within `connect_timeout`, unless
    /// [`ClientBuilder::retry_first_connect`] is on; reconnecting starts once a session exists.
    pub async fn connect(self) -> Result<Client, ConnectionError> {
        let connect_timeout = self.connect_timeout;
        let address = self.address.clone();
        let bind_address = self.bind_address;
        let socket_layer = self.socket_layer.clone();
        let client_name = self.client_name.clone();
        let session_name = self.session_name.clone();
        let resume = self.resume.filter(|_| session_name.is_none());
        let quic = self.quic.clone();
        let shown_address = self.address.to_string();
        let retry =
            Some(self.reconnect).filter(|policy| self.retry_first_connect && policy.enabled);
        let prepared = self.prepare()?;
        let attempt = || {
            let (address, client_name, session_name) =
                (address.clone(), client_name.clone(), session_name.clone());
            let (tls, server_name) = (prepared.tls.clone(), prepared.server_name.clone());
            let (quic, socket_layer, shown_address) = (&quic, &socket_layer, &shown_address);
            let connecting = async move {
                let remotes = address.resolve_all().await?;
                let bind = bind_address.unwrap_or_else(|| unspecified_for(&remotes));
                let endpoint = bind_client_layered(bind, tls, quic, socket_layer.as_ref())?;
                let connector = Connector {
                    endpoint,
                    address,
                    server_name,
                    client_name,
                    session_name,
                    connect_timeout,
                    cluster: ClusterAddresses::default(),
                    answered: Arc::default(),
                };
                let mut first = connector.connect(resume, Vec::new(), true, None).await;
                if let (Some(id), Err(error)) = (resume, &first) {
                    if classify(error) == Loss::SessionLost {
                        tracing::warn!(session = %id, "the broker does not know the session to resume; starting a new one");
                        first = connector.connect(None, Vec::new(), true, None).await;
                    }
                }
                match first {
                    Ok(established) => Ok((connector, established)),
                    Err(error) => {
                        connector.endpoint.close(0u32.into(), b"");
                        Err(error)
                    }
                }
            };
            async move {
                timeout(connect_timeout, connecting).await.map_err(|_| {
                    crate::connect::connector::no_answer(shown_address, connect_timeout)
                })?
            }
        };
        let (connector, established) = match retry {
            None => attempt().await?,
            Some(policy) => first_connect::retried(policy, attempt).await?,
        };
        Ok(Client::start(connector, established, prepared.client))
    }

    /// Checks the settings and loads the certificates, without touching the network.
    fn prepare(self) -> Result<Prepared, ConnectionError> {
        let positive = |value: usize, setting: &str| {
            if value == 0 {
                Err(ConnectionError::Config {
                    reason: format!("{setting} must be at least 1"),
                })
            } else {
                Ok(())
            }
        };
        positive(self.subscription_buffer, "subscription_buffer")?;
        positive(self.max_publish_lanes, "max_publish_lanes")?;
        positive(self.publish_lane_buffer, "publish_lane_buffer")?;
        positive(self.max_unacked_publishes, "max_unacked_publishes")?;
        if self.connect_timeout.is_zero() {
            return Err(ConnectionError::Config {
                reason: "connect_timeout must be longer than zero".to_owned(),
            });
        }
        if let Some(name) = &self.session_name {
            if !cassini_protocol::valid_session_name(name) {
                return Err(ConnectionError::Config {
                    reason: format!(
                        "session name {name:?} must be 1 to {} bytes of ASCII letters, digits, \
                         '-', '_' and '.'",
                        cassini_protocol::MAX_SESSION_NAME_BYTES
                    ),
                });
            }
        }
        if self.ack_timeout.is_zero() {
            return Err(ConnectionError::Config {
                reason: "ack_timeout must be longer than zero".to_owned(),
            });
        }
        self.reconnect
            .check()
            .and_then(|()| self.outbound_buffer.check())
            .and_then(|()| self.liveness.check())
            .map_err(|reason| ConnectionError::Config { reason })?;
        let ca = match self.trust {
            Some(Trust::File(path)) => tls::load_certs(&path)?,
            Some(Trust::Certs(certs)) => certs,
            None => {
                return Err(ConnectionError::Config {
                    reason: "no CA to verify the broker with: call ca_file() or ca_certs()"
                        .to_owned(),
                })
            }
        };
        let (chain, key) = match self.identity {
            Some(Identity::Files { cert, key }) => (tls::load_certs(&cert)?, tls::load_key(&key)?),
            Some(Identity::InMemory { chain, key }) => (chain, key),
            None => {
                return Err(ConnectionError::Config {
                    reason: "no client certificate: the broker requires one; call \
                             identity_files() or identity()"
                        .to_owned(),
                })
            }
        };
        let crypto = tls::client_crypto(ca, chain, key)?;
        let tls = tls::client_config(crypto, &self.quic)?;
        let server_name = self
            .server_name
            .unwrap_or_else(|| self.address.default_server_name());
        Ok(Prepared {
            tls,
            server_name,
            client: ClientSettings {
                subscription_buffer: self.subscription_buffer,
                close_timeout: self.close_timeout,
                publisher: PublisherSettings {
                    max_lanes: self.max_publish_lanes,
                    lane_buffer: self.publish_lane_buffer,
                    close_timeout: self.close_timeout,
                },
                reconnect: self.reconnect,
                liveness: self.liveness,
                outbound: self.outbound_buffer,
                ack_timeout: self.ack_timeout,
                max_unacked_publishes: self.max_unacked_publishes,
                socket_layer: self.socket_layer,
            },
        })
    }
}

/// The wildcard local address of the broker's address family.
/// The local address to bind for reaching `remotes`: IPv4's unspecified address when every
/// candidate is IPv4, else IPv6's, which the endpoint makes dual-stack (it reaches IPv4
/// candidates through mapped addresses).
fn unspecified_for(remotes: &[SocketAddr]) -> SocketAddr {
    if remotes.iter().all(SocketAddr::is_ipv4) {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0)
    } else {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)
    }
}

#[cfg(test)]
mod tests {
    //! The builder refuses settings that cannot work before it touches the network.

    #![allow(clippy::panic, clippy::expect_used)] // A failed expectation in a test panics on purpose.

    use std::time::Duration;

    use cassini_quic::certs::CertificateAuthority;

    use super::*;

    /// A builder with a valid in-memory CA and client identity.
    fn complete_builder() -> ClientBuilder {
        let ca = CertificateAuthority::generate("test CA").expect("CA");
        let client = ca.issue_client("alice").expect("client certificate");
        ClientBuilder::new("127.0.0.1:7700".into())
            .ca_certs(vec![ca.cert_der().clone()])
            .identity(
                vec![client.cert_der().expect("certificate DER")],
                client.key_der().expect("key DER"),
            )
    }

    fn config_reason(builder: ClientBuilder) -> String {
        match builder.prepare() {
            Err(ConnectionError::Config { reason }) => reason,
            Err(other) => panic!("expected a configuration error, got {other:?}"),
            Ok(_) => panic!("expected a configuration error, got a valid configuration"),
        }
    }

    #[test]
    fn a_complete_builder_is_ready_to_connect() {
        let prepared = complete_builder().prepare().expect("valid settings");
        assert_eq!(prepared.server_name, "localhost");
        assert_eq!(prepared.client.subscription_buffer, 1024);
        assert_eq!(prepared.client.publisher.max_lanes, 64);
    }

    #[test]
    fn a_missing_ca_is_refused_with_the_fix() {
        let builder = ClientBuilder::new("127.0.0.1:7700".into());
        let reason = config_reason(builder);
        assert!(reason.contains("ca_file()"), "{reason}");
    }

    #[test]
    fn a_missing_client_certificate_is_refused_with_the_fix() {
        let ca = CertificateAuthority::generate("test CA").expect("CA");
        let builder =
            ClientBuilder::new("127.0.0.1:7700".into()).ca_certs(vec![ca.cert_der().clone()]);
        let reason = config_reason(builder);
        assert!(reason.contains("identity_files()"), "{reason}");
    }

    #[test]
    fn zero_sized_buffers_and_timeouts_are_refused() {
        let reason = config_reason(complete_builder().subscription_buffer(0));
        assert!(reason.contains("subscription_buffer"), "{reason}");
        let reason = config_reason(complete_builder().max_publish_lanes(0));
        assert!(reason.contains("max_publish_lanes"), "{reason}");
        let reason = config_reason(complete_builder().publish_lane_buffer(0));
        assert!(reason.contains("publish_lane_buffer"), "{reason}");
        let reason = config_reason(complete_builder().connect_timeout(Duration::ZERO));
        assert!(reason.contains("connect_timeout"), "{reason}");
    }

    #[test]
    fn an_unreadable_ca_file_names_the_file() {
        let builder = complete_builder().ca_file("/nonexistent/cassini/ca.crt");
        match builder.prepare() {
            Err(error @ ConnectionError::Tls(_)) => {
                assert!(
                    error.to_string().contains("/nonexistent/cassini/ca.crt"),
                    "{error}"
                );
            }
            Err(other) => panic!("expected a TLS error, got {other:?}"),
            Ok(_) => panic!("expected a TLS error, got a valid configuration"),
        }
    }

    #[test]
    fn a_cert_dir_reads_the_cassini_layout() {
        let builder = ClientBuilder::new("127.0.0.1:7700".into()).cert_dir("/etc/cassini", "dev");
        let debug = format!("{builder:?}");
        assert!(debug.contains("/etc/cassini/ca.crt"), "{debug}");
        assert!(debug.contains("/etc/cassini/client-dev.crt"), "{debug}");
    }

    #[test]
    fn the_debug_output_never_shows_the_key() {
        let debug = format!("{:?}", complete_builder());
        assert!(!debug.contains("PrivateKey"), "{debug}");
        assert!(debug.contains("1 certificates"), "{debug}");
    }

    #[test]
    fn an_explicit_server_name_wins() {
        let prepared = complete_builder()
            .server_name("broker.internal")
            .prepare()
            .expect("valid settings");
        assert_eq!(prepared.server_name, "broker.internal");
    }

    #[test]
    fn addresses_parse_as_socket_addresses_when_they_can() {
        assert_eq!(
            BrokerAddress::from("127.0.0.1:7700"),
            BrokerAddress::Socket("127.0.0.1:7700".parse().expect("address"))
        );
        assert_eq!(
            BrokerAddress::from("[::1]:7700"),
            BrokerAddress::Socket("[::1]:7700".parse().expect("address"))
        );
        assert_eq!(
            BrokerAddress::from("broker.internal:7700"),
            BrokerAddress::HostPort("broker.internal:7700".into())
        );
    }

    #[test]
    fn the_default_server_name_is_the_host_or_localhost() {
        let name = |addr: &str| BrokerAddress::from(addr).default_server_name();
        assert_eq!(name("127.0.0.1:7700"), "localhost");
        assert_eq!(name("[::1]:7700"), "localhost");
        assert_eq!(name("localhost:7700"), "localhost");
        assert_eq!(name("broker.internal:7700"), "broker.internal");
    }

    #[tokio::test]
    async fn an_unresolvable_host_is_a_resolve_error() {
        let result = complete_builder_for("no-such-host.invalid:7700")
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await;
        match result {
            Err(ConnectionError::Resolve { addr, .. }) => {
                assert_eq!(addr, "no-such-host.invalid:7700")
            }
            Err(ConnectionError::Timeout(_)) => {} // a resolver without network may hang instead
            Err(other) => panic!("expected a resolve error, got {other:?}"),
            Ok(_) => panic!("connected to a host that does not exist"),
        }
    }

    #[tokio::test]
    async fn a_silent_broker_address_times_out() {
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
        let address = silent.local_addr().expect("local address");
        let result = complete_builder_for(&address.to_string())
            .connect_timeout(Duration::from_millis(300))
            .connect()
            .await;
        match result {
            Err(ConnectionError::Connect { reason }) => {
                assert_eq!(reason, format!("no answer from {address} within 300ms"))
            }
            Err(other) => panic!("expected a timeout naming the address, got {other:?}"),
            Ok(_) => panic!("connected to a socket that never answers"),
        }
    }

    #[tokio::test]
    async fn an_address_where_nothing_listens_fails_fast_and_is_named() {
        let closed = std::net::UdpSocket::bind("127.0.0.1:0").expect("UDP socket");
        let address = closed.local_addr().expect("local address");
        drop(closed);
        let started = std::time::Instant::now();
        let result = complete_builder_for(&address.to_string())
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await;
        match result {
            Err(ConnectionError::Connect { reason }) => assert_eq!(
                reason,
                format!("nothing listens on {address} (the port is unreachable)")
            ),
            Err(other) => panic!("expected the unreachable port, got {other:?}"),
            Ok(_) => panic!("connected to a closed port"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "failed on the ICMP answer, not at the connect timeout"
        );
    }

    fn complete_builder_for(address: &str) -> ClientBuilder {
        let mut builder = complete_builder();
        builder.address = BrokerAddress::from(address);
        builder
    }
}
