//! `cassini serve`'s configuration: one TOML file, overridden by `CASSINI_*` environment
//! variables, overridden by command-line flags.
//!
//! # Layout
//! - this module: the [`Settings`] tree (every key, its type and its default, taken from the
//!   broker's own defaults so the two cannot drift) and its conversion into the broker's and the
//!   transport's configuration.
//! - `keys`: one documentation line per key, the source of `cassini config default`'s comments
//!   and of the environment variable names.
//! - `load`: reading a file, applying the environment and the flags, and checking the result.
//! - `error`: [`ConfigError`], every way a configuration can be refused.

mod error;
mod keys;
mod load;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cassini_broker::config::{DedupeConfig, EventsConfig, SessionConfig, ShutdownConfig};
use cassini_broker::{BrokerConfig, BrokerLimits, QueueConfig};
use cassini_protocol::TopicLimits;
use cassini_quic::identity::IdentityRule;
use cassini_quic::server::{AddressValidation, ServerOptions};
use cassini_quic::tls::{QuicOptions, RevocationOptions};
use serde::{Deserialize, Serialize};

pub(crate) use error::ConfigError;
pub(crate) use keys::default_file;
pub(crate) use load::{check_file, process_env, resolve, unknown_env, Overrides};

/// The whole configuration of `cassini serve`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct Settings {
    /// The UDP address the broker listens on.
    pub(crate) listen: SocketAddr,
    /// Where the broker's certificates are.
    pub(crate) certs: CertSettings,
    /// Size and count limits.
    pub(crate) limits: LimitSettings,
    /// Per-subscription queue bounds.
    pub(crate) queue: QueueSettings,
    /// Session lifetime.
    pub(crate) sessions: SessionSettings,
    /// System events on `$SYS.event.>`.
    pub(crate) events: EventSettings,
    /// The acknowledged-publish dedupe window.
    pub(crate) dedupe: DedupeSettings,
    /// Graceful shutdown.
    pub(crate) shutdown: ShutdownSettings,
    /// QUIC transport options.
    pub(crate) quic: QuicSettings,
    /// The HTTP monitoring endpoint.
    pub(crate) monitor: MonitorSettings,
    /// Log lines.
    pub(crate) log: LogSettings,
    /// Where state is kept.
    pub(crate) storage: StorageSettings,
    /// Authorization, identity and revocation.
    pub(crate) security: SecuritySettings,
    /// Membership of a cluster; no `name`: a standalone broker.
    pub(crate) cluster: ClusterSettings,
    /// The MQTT gateway.
    pub(crate) mqtt: MqttSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            certs: CertSettings::default(),
            limits: LimitSettings::default(),
            queue: QueueSettings::default(),
            sessions: SessionSettings::default(),
            events: EventSettings::default(),
            dedupe: DedupeSettings::default(),
            shutdown: ShutdownSettings::default(),
            quic: QuicSettings::default(),
            monitor: MonitorSettings::default(),
            log: LogSettings::default(),
            storage: StorageSettings::default(),
            security: SecuritySettings::default(),
            cluster: ClusterSettings::default(),
            mqtt: MqttSettings::default(),
        }
    }
}

/// `[cluster]` (docs/CLUSTERING.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSettings {
    /// The cluster's name; empty: no cluster (a standalone broker).
    pub(crate) name: String,
    /// This node's name: its certificate is `node-NAME.crt` in `certs.dir`.
    pub(crate) node: String,
    /// The cluster address (UDP).
    pub(crate) listen: SocketAddr,
    /// The cluster addresses of the nodes (this one's may be among them).
    pub(crate) peers: Vec<SocketAddr>,
    /// Messages waiting for one peer before forwards to it are dropped and announced.
    pub(crate) max_queued_messages: usize,
    /// This node's client address as clients should dial it (`host:port`), told to the
    /// peers and listed in clients' `Welcome`; empty: the bound client address, unless that
    /// is a wildcard address (then none is advertised).
    pub(crate) advertise: String,
    /// The names of the voting members of the cluster's Raft group (replicated session
    /// ownership), this node's included; empty: no Raft.
    pub(crate) members: Vec<String>,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            name: String::new(),
            node: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 7701)),
            peers: Vec::new(),
            max_queued_messages: cassini_broker::cluster::ClusterConfig::node("")
                .max_queued_messages,
            advertise: String::new(),
            members: Vec::new(),
        }
    }
}

impl ClusterSettings {
    /// Whether this broker is a cluster node.
    pub(crate) fn enabled(&self) -> bool {
        !self.name.is_empty()
    }

    /// The client address to advertise when the broker's client address is `bound`:
    /// `advertise` if set, else `bound` unless it is a wildcard address.
    pub(crate) fn advertised(&self, bound: SocketAddr) -> Option<String> {
        let set = self.advertise.trim();
        if !set.is_empty() {
            return Some(set.to_owned());
        }
        (!bound.ip().is_unspecified()).then(|| bound.to_string())
    }
}

/// `[mqtt]`: the MQTT gateway (docs/MQTT.md). Off by default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MqttSettings {
    /// The TCP address of the gateway; empty: no gateway.
    pub(crate) listen: String,
    /// Accept plain TCP (no TLS) too, on a loopback `listen` only.
    pub(crate) allow_plaintext_loopback: bool,
    /// Accept TLS 1.2 clients as well as TLS 1.3 ones (as Mosquitto does by default).
    pub(crate) tls12: bool,
    /// The most connections that have not sent `CONNECT` yet; one more is closed at once.
    pub(crate) max_connecting: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            listen: String::new(),
            allow_plaintext_loopback: false,
            tls12: true,
            max_connecting: 4096,
        }
    }
}

impl MqttSettings {
    /// The gateway's address, if it is on (checked when the settings were resolved).
    pub(crate) fn listen(&self) -> Option<SocketAddr> {
        self.listen.trim().parse().ok()
    }
}

/// `[certs]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct CertSettings {
    /// The certificate directory.
    pub(crate) dir: PathBuf,
    /// The CA file clients' certificates must chain to; empty: `<dir>/ca.crt`.
    pub(crate) ca: PathBuf,
    /// The server certificate chain; empty: `<dir>/server.crt`.
    pub(crate) cert: PathBuf,
    /// The server private key; empty: `<dir>/server.key`.
    pub(crate) key: PathBuf,
    /// Certificate revocation lists (PEM), used whenever the file exists; empty:
    /// `<dir>/crl.pem`.
    pub(crate) crl: PathBuf,
    /// The stateless reset key, created when missing; empty: `<dir>/stateless-reset.key`.
    pub(crate) reset_key: PathBuf,
    /// Create development certificates in `dir` when it has none (never with explicit files).
    pub(crate) generate_dev: bool,
    /// Refuse to start without a CRL file.
    pub(crate) require_crl: bool,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("certs"),
            ca: PathBuf::new(),
            cert: PathBuf::new(),
            key: PathBuf::new(),
            crl: PathBuf::new(),
            reset_key: PathBuf::new(),
            generate_dev: true,
            require_crl: false,
        }
    }
}

/// The certificate files the broker loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CertFiles {
    /// The trust anchor for client certificates.
    pub(crate) ca: PathBuf,
    /// The server's certificate chain.
    pub(crate) cert: PathBuf,
    /// The server's private key.
    pub(crate) key: PathBuf,
    /// The CRL file, used whenever it exists.
    pub(crate) crl: PathBuf,
    /// The stateless reset key file, created when missing.
    pub(crate) reset_key: PathBuf,
}

impl CertSettings {
    /// Whether every file is taken from `dir` (so development certificates may be created).
    pub(crate) fn uses_dir_only(&self) -> bool {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .all(|path| path.as_os_str().is_empty())
    }

    /// The files to load: explicit paths, or their standard names in `dir`.
    pub(crate) fn files(&self) -> CertFiles {
        let pick = |explicit: &PathBuf, name: &str| {
            if explicit.as_os_str().is_empty() {
                self.dir.join(name)
            } else {
                explicit.clone()
            }
        };
        CertFiles {
            ca: pick(&self.ca, "ca.crt"),
            cert: pick(&self.cert, "server.crt"),
            key: pick(&self.key, "server.key"),
            crl: pick(&self.crl, "crl.pem"),
            reset_key: pick(&self.reset_key, "stateless-reset.key"),
        }
    }
}

/// `[limits]` keys that are `BrokerLimits` fields of the same name and type, listed once for
/// both ways (the defaults and [`Settings::broker_config`]): `same_named_limits!(from => Type {
/// other fields })` builds `Type` with these copied from `from` and the others as given.
macro_rules! same_named_limits {
    ($from:ident => $to:ident { $($other:tt)* }) => {
        $to {
            max_payload_bytes: $from.max_payload_bytes,
            max_frame_bytes: $from.max_frame_bytes,
            max_subscriptions_per_session: $from.max_subscriptions_per_session,
            max_subscriptions_per_identity: $from.max_subscriptions_per_identity,
            max_connections: $from.max_connections,
            max_publish_streams_per_connection: $from.max_publish_streams_per_connection,
            max_retained_topics: $from.max_retained_topics,
            max_queue_group_bytes: $from.max_queue_group_bytes,
            max_connections_per_identity: $from.max_connections_per_identity,
            max_pending_bytes_per_session: $from.max_pending_bytes_per_session,
            max_retained_topics_per_identity: $from.max_retained_topics_per_identity,
            max_retained_bytes_per_identity: $from.max_retained_bytes_per_identity,
            max_retained_bytes: $from.max_retained_bytes,
            max_sessions_per_identity: $from.max_sessions_per_identity,
            max_dedupe_entries_per_identity: $from.max_dedupe_entries_per_identity,
            max_headers: $from.max_headers,
            max_header_bytes: $from.max_header_bytes,
            max_memory_bytes: $from.max_memory_bytes,
            max_partial_frame_bytes_per_identity: $from.max_partial_frame_bytes_per_identity,
            max_tracked_topics: $from.max_tracked_topics,
            $($other)*
        }
    };
}

/// `[limits]`: the broker's `BrokerLimits`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LimitSettings {
    pub(crate) max_payload_bytes: u32,
    pub(crate) max_frame_bytes: u32,
    pub(crate) max_subscriptions_per_session: u32,
    pub(crate) max_subscriptions_per_identity: u32,
    pub(crate) max_topic_bytes: usize,
    pub(crate) max_topic_depth: usize,
    pub(crate) max_connections: usize,
    pub(crate) max_publish_streams_per_connection: usize,
    pub(crate) hello_timeout_ms: u64,
    pub(crate) max_retained_topics: usize,
    pub(crate) max_queue_group_bytes: usize,
    pub(crate) max_connections_per_identity: usize,
    pub(crate) max_pending_bytes_per_session: u64,
    pub(crate) max_retained_topics_per_identity: usize,
    pub(crate) max_retained_bytes_per_identity: u64,
    pub(crate) max_retained_bytes: u64,
    pub(crate) max_sessions_per_identity: usize,
    pub(crate) max_dedupe_entries_per_identity: usize,
    pub(crate) max_headers: u32,
    pub(crate) max_header_bytes: u32,
    pub(crate) max_memory_bytes: u64,
    pub(crate) max_partial_frame_bytes_per_identity: u64,
    pub(crate) max_tracked_topics: usize,
}

impl Default for LimitSettings {
    fn default() -> Self {
        let limits = BrokerLimits::default();
        same_named_limits!(limits => Self {
            max_topic_bytes: limits.topics.max_bytes,
            max_topic_depth: limits.topics.max_depth,
            hello_timeout_ms: millis(limits.hello_timeout),
        })
    }
}

/// `[queue]`: the broker's `QueueConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QueueSettings {
    pub(crate) default_messages: u32,
    pub(crate) default_bytes: u64,
    pub(crate) max_messages: u32,
    pub(crate) max_bytes: u64,
    pub(crate) default_max_in_flight: u32,
    pub(crate) max_in_flight: u32,
    pub(crate) default_ack_timeout_ms: u64,
    pub(crate) min_ack_timeout_ms: u64,
    pub(crate) max_backlog_age_secs: u64,
}

impl Default for QueueSettings {
    fn default() -> Self {
        let queue = QueueConfig::default();
        Self {
            default_messages: queue.default_messages,
            default_bytes: queue.default_bytes,
            max_messages: queue.max_messages,
            max_bytes: queue.max_bytes,
            default_max_in_flight: queue.default_max_in_flight,
            max_in_flight: queue.max_in_flight,
            default_ack_timeout_ms: millis(queue.default_ack_timeout),
            min_ack_timeout_ms: millis(queue.min_ack_timeout),
            max_backlog_age_secs: queue.max_backlog_age.map_or(0, |age| age.as_secs()),
        }
    }
}

/// `[sessions]`: the broker's `SessionConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SessionSettings {
    pub(crate) expiry_secs: u64,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self {
            expiry_secs: SessionConfig::default().expiry.as_secs(),
        }
    }
}

/// `[events]`: the broker's `EventsConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct EventSettings {
    pub(crate) stats_interval_secs: u64,
    pub(crate) queue: usize,
}

impl Default for EventSettings {
    fn default() -> Self {
        let events = EventsConfig::default();
        Self {
            stats_interval_secs: events.stats_interval.as_secs(),
            queue: events.queue,
        }
    }
}

/// `[dedupe]`: the broker's `DedupeConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct DedupeSettings {
    pub(crate) max_entries: usize,
    pub(crate) max_age_secs: u64,
}

impl Default for DedupeSettings {
    fn default() -> Self {
        let dedupe = DedupeConfig::default();
        Self {
            max_entries: dedupe.max_entries,
            max_age_secs: dedupe.max_age.as_secs(),
        }
    }
}

/// `[shutdown]`: the broker's `ShutdownConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ShutdownSettings {
    pub(crate) reconnect_hint_ms: u64,
    pub(crate) drain_ms: u64,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        let shutdown = ShutdownConfig::default();
        Self {
            reconnect_hint_ms: millis(shutdown.reconnect_hint),
            drain_ms: millis(shutdown.drain),
        }
    }
}

/// `[quic]`: the transport's `QuicOptions` and `ServerOptions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct QuicSettings {
    pub(crate) idle_timeout_secs: u64,
    pub(crate) keep_alive_interval_secs: u64,
    pub(crate) max_concurrent_uni_streams: u32,
    pub(crate) max_concurrent_bidi_streams: u32,
    pub(crate) initial_concurrent_bidi_streams: u32,
    pub(crate) socket_buffer_bytes: usize,
    pub(crate) datagrams: bool,
    pub(crate) handshake_timeout_ms: u64,
    pub(crate) congestion: Congestion,
    pub(crate) max_ack_delay_ms: u64,
    pub(crate) receive_window_bytes: u64,
    pub(crate) max_udp_payload_bytes: u16,
}

/// `quic.congestion`: the congestion controller of the broker's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Congestion {
    /// Cubic, loss-based (quinn's default).
    #[default]
    Cubic,
    /// BBR, model-based: does not read random loss as congestion (quinn marks it
    /// experimental; docs/BENCHMARKS.md).
    Bbr,
}

impl Default for QuicSettings {
    fn default() -> Self {
        let server = ServerOptions::default();
        let quic = &server.quic;
        Self {
            idle_timeout_secs: quic.idle_timeout.as_secs(),
            keep_alive_interval_secs: quic.keep_alive_interval.as_secs(),
            max_concurrent_uni_streams: quic.max_concurrent_uni_streams,
            max_concurrent_bidi_streams: quic.max_concurrent_bidi_streams,
            initial_concurrent_bidi_streams: quic.initial_concurrent_bidi_streams,
            socket_buffer_bytes: quic.socket_buffer_bytes,
            datagrams: quic.datagrams,
            handshake_timeout_ms: millis(server.handshake_timeout),
            congestion: match quic.congestion {
                cassini_quic::tls::CongestionControl::Cubic => Congestion::Cubic,
                cassini_quic::tls::CongestionControl::Bbr => Congestion::Bbr,
            },
            max_ack_delay_ms: millis(quic.max_ack_delay),
            receive_window_bytes: quic.receive_window_bytes,
            max_udp_payload_bytes: quic.max_udp_payload_bytes,
        }
    }
}

/// `log.format`, `--log-format`: how log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[monitor]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct MonitorSettings {
    /// Whether the HTTP monitoring endpoint runs.
    pub(crate) enabled: bool,
    /// Its TCP address.
    pub(crate) listen: SocketAddr,
    /// The file holding the bearer token every endpoint but `/` (the status page), `/healthz`
    /// and `/readyz` requires; empty: no token (session ids are then redacted).
    pub(crate) token_file: PathBuf,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            listen: SocketAddr::from(([127, 0, 0, 1], 8222)),
            token_file: PathBuf::new(),
        }
    }
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSettings {
    /// A `RUST_LOG`-style filter.
    pub(crate) level: String,
    /// Pretty or JSON lines.
    pub(crate) format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Pretty,
        }
    }
}

/// `[security]`: authorization, the identity rule, address validation and revocation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct SecuritySettings {
    /// The ACL file; empty: none (every authenticated client is allowed everything on
    /// non-system topics but other identities' reply inboxes).
    pub(crate) acl_file: PathBuf,
    /// Which certificate name is the identity: `default`, `uri:PREFIX`, `dns` or `cn`.
    pub(crate) identity_rule: String,
    /// When clients must prove their address with a Retry: `never`, `under-load`, `always`.
    pub(crate) address_validation: String,
    /// Accept clients whose revocation status no CRL covers.
    pub(crate) allow_unknown_revocation: bool,
    /// Refuse every client once the CRL's next-update time has passed.
    pub(crate) enforce_crl_expiry: bool,
}

impl Default for SecuritySettings {
    fn default() -> Self {
        Self {
            acl_file: PathBuf::new(),
            identity_rule: IdentityRule::default().to_string(),
            address_validation: "under-load".into(),
            allow_unknown_revocation: false,
            enforce_crl_expiry: false,
        }
    }
}

impl SecuritySettings {
    /// The ACL file, if one is set.
    pub(crate) fn acl(&self) -> Option<&Path> {
        (!self.acl_file.as_os_str().is_empty()).then_some(self.acl_file.as_path())
    }

    /// The identity rule (checked when the settings were resolved).
    pub(crate) fn identity_rule(&self) -> IdentityRule {
        self.identity_rule.parse().unwrap_or_default()
    }

    /// The address validation policy (checked when the settings were resolved).
    pub(crate) fn address_validation(&self) -> AddressValidation {
        self.address_validation.parse().unwrap_or_default()
    }

    /// How revocation is checked.
    pub(crate) fn revocation(&self) -> RevocationOptions {
        RevocationOptions {
            allow_unknown_status: self.allow_unknown_revocation,
            enforce_crl_expiry: self.enforce_crl_expiry,
        }
    }
}

/// `[storage]`: the broker's `StorageConfig`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct StorageSettings {
    /// Where state lives.
    pub(crate) mode: StorageMode,
    /// The directory of the disk store.
    pub(crate) data_dir: PathBuf,
    /// When an acknowledged publish is confirmed in disk mode.
    pub(crate) sync: SyncMode,
    /// The most bytes of stored records.
    pub(crate) max_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        let storage = cassini_broker::config::StorageConfig::default();
        Self {
            mode: StorageMode::Memory,
            data_dir: storage.data_dir,
            sync: SyncMode::Always,
            max_bytes: storage.max_disk_bytes,
        }
    }
}

/// Where sessions, queues and retained values live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum StorageMode {
    /// In memory: everything ends with the process.
    #[default]
    Memory,
    /// On disk, in `data_dir`: see docs/DURABILITY.md.
    Disk,
}

/// When an acknowledged publish is confirmed in disk mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum SyncMode {
    /// After it is on stable storage (fsync, shared by concurrent publishes).
    #[default]
    Always,
    /// As soon as it is routed; the write follows at once.
    Relaxed,
}

impl Settings {
    /// The broker core's configuration.
    pub(crate) fn broker_config(&self) -> BrokerConfig {
        let limits = &self.limits;
        BrokerConfig {
            limits: same_named_limits!(limits => BrokerLimits {
                topics: TopicLimits {
                    max_bytes: limits.max_topic_bytes,
                    max_depth: limits.max_topic_depth,
                },
                hello_timeout: Duration::from_millis(limits.hello_timeout_ms),
            }),
            acl: cassini_broker::Acl::default(),
            cluster: self
                .cluster
                .enabled()
                .then(|| cassini_broker::cluster::ClusterConfig {
                    max_queued_messages: self.cluster.max_queued_messages,
                    members: self.cluster.members.clone(),
                    ..cassini_broker::cluster::ClusterConfig::node(self.cluster.node.clone())
                }),
            queue: QueueConfig {
                default_messages: self.queue.default_messages,
                default_bytes: self.queue.default_bytes,
                max_messages: self.queue.max_messages,
                max_bytes: self.queue.max_bytes,
                default_max_in_flight: self.queue.default_max_in_flight,
                max_in_flight: self.queue.max_in_flight,
                default_ack_timeout: Duration::from_millis(self.queue.default_ack_timeout_ms),
                min_ack_timeout: Duration::from_millis(self.queue.min_ack_timeout_ms),
                max_backlog_age: (self.queue.max_backlog_age_secs > 0)
                    .then(|| Duration::from_secs(self.queue.max_backlog_age_secs)),
            },
            sessions: SessionConfig {
                expiry: Duration::from_secs(self.sessions.expiry_secs),
            },
            events: EventsConfig {
                stats_interval: Duration::from_secs(self.events.stats_interval_secs),
                queue: self.events.queue,
            },
            dedupe: DedupeConfig {
                max_entries: self.dedupe.max_entries,
                max_age: Duration::from_secs(self.dedupe.max_age_secs),
            },
            shutdown: ShutdownConfig {
                reconnect_hint: Duration::from_millis(self.shutdown.reconnect_hint_ms),
                drain: Duration::from_millis(self.shutdown.drain_ms),
            },
            storage: cassini_broker::config::StorageConfig {
                mode: match self.storage.mode {
                    StorageMode::Memory => cassini_broker::config::StorageMode::Memory,
                    StorageMode::Disk => cassini_broker::config::StorageMode::Disk,
                },
                data_dir: self.storage.data_dir.clone(),
                sync: match self.storage.sync {
                    SyncMode::Always => cassini_broker::config::SyncPolicy::Always,
                    SyncMode::Relaxed => cassini_broker::config::SyncPolicy::Relaxed,
                },
                max_disk_bytes: self.storage.max_bytes,
                ..cassini_broker::config::StorageConfig::default()
            },
        }
    }

    /// Settings that work but are probably not what was meant, one sentence each, for the
    /// log once it is set up.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let quic = &self.quic;
        let mut warnings = Vec::new();
        if quic.idle_timeout_secs > 0 && quic.keep_alive_interval_secs >= quic.idle_timeout_secs {
            warnings.push(format!(
                "quic.keep_alive_interval_secs ({}) is not below quic.idle_timeout_secs ({}): \
                 quiet connections will time out; lower the keep-alive interval",
                quic.keep_alive_interval_secs, quic.idle_timeout_secs
            ));
        }
        if quic.keep_alive_interval_secs == 0 && quic.idle_timeout_secs > 0 {
            warnings.push(
                "quic.keep_alive_interval_secs is 0: quiet connections will time out after \
                 quic.idle_timeout_secs"
                    .to_string(),
            );
        }
        warnings
    }

    /// The QUIC endpoint's options.
    pub(crate) fn server_options(&self) -> ServerOptions {
        let quic = &self.quic;
        ServerOptions {
            quic: QuicOptions {
                idle_timeout: Duration::from_secs(quic.idle_timeout_secs),
                keep_alive_interval: Duration::from_secs(quic.keep_alive_interval_secs),
                max_concurrent_uni_streams: quic.max_concurrent_uni_streams,
                max_concurrent_bidi_streams: quic.max_concurrent_bidi_streams,
                initial_concurrent_bidi_streams: quic.initial_concurrent_bidi_streams,
                socket_buffer_bytes: quic.socket_buffer_bytes,
                datagrams: quic.datagrams,
                congestion: match quic.congestion {
                    Congestion::Cubic => cassini_quic::tls::CongestionControl::Cubic,
                    Congestion::Bbr => cassini_quic::tls::CongestionControl::Bbr,
                },
                max_ack_delay: Duration::from_millis(quic.max_ack_delay_ms),
                // Read from its file by `serve`, not part of the settings.
                stateless_reset_key: None,
                receive_window_bytes: quic.receive_window_bytes,
                max_udp_payload_bytes: quic.max_udp_payload_bytes,
            },
            handshake_timeout: Duration::from_millis(quic.handshake_timeout_ms),
            identity_rule: self.security.identity_rule(),
            address_validation: self.security.address_validation(),
            ..ServerOptions::default()
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
