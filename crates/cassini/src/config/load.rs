//! Reading, layering and checking the configuration: defaults < file < `CASSINI_*`
//! environment variables < command-line flags.
//!
//! The file is parsed straight into [`Settings`] first, so its errors carry the `toml` crate's
//! line, column and excerpt. Environment values are typed by the key they override (a string
//! key takes the value as it is; numbers and booleans are parsed) and laid over the file's
//! table. Flags are applied last. `RUST_LOG`, when set, takes the place of `log.level`, below
//! `CASSINI_LOG_LEVEL`.

use cassini_quic::identity::IdentityRule;
use cassini_quic::server::AddressValidation;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::error::ConfigError;
use super::keys::{default_value, env_name, section_of, KEYS};
use super::LogFormat;
use super::Settings;

/// A delivery's fields besides its payload, headers, topic and `reply_to`, at most.
const DELIVERY_FRAMING_BYTES: u64 = 128;

/// The largest `limits.max_frame_bytes` a cluster with `members` takes: a Raft append carries
/// at least one whole entry (2 MiB of changes, or one message alone), within a 64 MiB frame.
const MAX_CLUSTER_FRAME_BYTES: u32 = 32 * 1024 * 1024;
/// What command-line flags set. `None`: not given, the file or environment decides.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    /// `--listen`.
    pub(crate) listen: Option<SocketAddr>,
    /// `--certs`.
    pub(crate) certs: Option<PathBuf>,
    /// `--session-expiry` (seconds).
    pub(crate) session_expiry: Option<u64>,
    /// `--idle-timeout` (seconds).
    pub(crate) idle_timeout: Option<u64>,
    /// `--congestion`.
    pub(crate) congestion: Option<super::Congestion>,
    /// `--monitor`: enables the monitor on this address.
    pub(crate) monitor: Option<SocketAddr>,
    /// `--log-format`.
    pub(crate) log_format: Option<LogFormat>,
    /// `--acl`.
    pub(crate) acl: Option<PathBuf>,
    /// `--identity-rule`.
    pub(crate) identity_rule: Option<String>,
    /// `--address-validation`.
    pub(crate) address_validation: Option<String>,
    /// `--allow-unknown-revocation` (only ever turns it on).
    pub(crate) allow_unknown_revocation: bool,
    /// `--enforce-crl-expiry` (only ever turns it on).
    pub(crate) enforce_crl_expiry: bool,
    /// `--require-crl` (only ever turns it on).
    pub(crate) require_crl: bool,
    /// `--monitor-token-file`.
    pub(crate) monitor_token_file: Option<PathBuf>,
    /// `--cluster`.
    pub(crate) cluster: Option<String>,
    /// `--node`.
    pub(crate) node: Option<String>,
    /// `--cluster-listen`.
    pub(crate) cluster_listen: Option<SocketAddr>,
    /// `--peer` (repeatable): replaces `cluster.peers` when given.
    pub(crate) peers: Vec<SocketAddr>,
    /// `--cluster-advertise`.
    pub(crate) cluster_advertise: Option<String>,
    /// `--cluster-member` (repeatable): replaces `cluster.members` when given.
    pub(crate) members: Vec<String>,
    /// `--mqtt`: enables the MQTT gateway on this address.
    pub(crate) mqtt: Option<SocketAddr>,
}

/// The settings from `file` (if any), the environment `env` and the flags, checked.
pub(crate) fn resolve(
    file: Option<&Path>,
    env: &[(String, String)],
    overrides: &Overrides,
) -> Result<Settings, ConfigError> {
    let (text, path) = match file {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            path.to_path_buf(),
        ),
        None => (String::new(), PathBuf::new()),
    };
    let parse_error = |err: toml::de::Error| ConfigError::Parse {
        path: path.clone(),
        message: err.to_string(),
    };
    let mut settings: Settings = toml::from_str(&text).map_err(parse_error)?;
    let mut table: toml::Table = toml::from_str(&text).map_err(parse_error)?;

    let mut env: Vec<&(String, String)> = env.iter().collect();
    env.sort();
    if let Some((_, level)) = env.iter().find(|(name, _)| name == "RUST_LOG") {
        settings.log.level = level.clone();
        set(&mut table, "log.level", toml::Value::String(level.clone()));
    }
    for (name, value) in env.iter().filter(|(name, _)| name.starts_with("CASSINI_")) {
        // Other tools (the examples, the test suites) read CASSINI_* variables of their own;
        // those are left alone here and named by `unknown_env`.
        let Some(key) = KEYS.iter().find(|key| env_name(key.path) == *name) else {
            continue;
        };
        let env_error = |expected: String| ConfigError::Env {
            name: name.clone(),
            key: key.path.to_string(),
            value: value.clone(),
            expected,
        };
        let typed = typed_env_value(key.path, value).map_err(|e| env_error(e.to_string()))?;
        set(&mut table, key.path, typed);
        settings = toml::Value::Table(table.clone())
            .try_into()
            .map_err(|err: toml::de::Error| env_error(err.message().to_string()))?;
    }

    apply_flags(&mut settings, overrides);
    check(&settings, &text, &path)?;
    Ok(settings)
}

/// `cassini config check FILE`: the file and the current environment, checked.
pub(crate) fn check_file(file: &Path) -> Result<Settings, ConfigError> {
    resolve(Some(file), &process_env(), &Overrides::default())
}

/// A warning for each `CASSINI_*` variable in `env` that names no configuration key: not an
/// error (other tools use the prefix too), but a typo would otherwise go unnoticed.
pub(crate) fn unknown_env(env: &[(String, String)]) -> Vec<String> {
    let mut names: Vec<&str> = env
        .iter()
        .map(|(name, _)| name.as_str())
        .filter(|name| name.starts_with("CASSINI_"))
        .filter(|name| !KEYS.iter().any(|key| env_name(key.path) == *name))
        .collect();
    names.sort_unstable();
    names
        .into_iter()
        .map(|name| {
            if crate::context::CLIENT_ENV.contains(&name) {
                format!(
                    "environment variable {name} is read by the client commands (pub, sub, \
                     req, reply, server ...), not by the broker: ignored here"
                )
            } else {
                format!(
                    "environment variable {name} names no configuration key and is ignored \
                     (`cassini config default` lists the keys; CASSINI_ and the path in capitals)"
                )
            }
        })
        .collect()
}

/// The process's `CASSINI_*` and `RUST_LOG` variables (others are no business of ours).
pub(crate) fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.into_string().ok()?;
            (name.starts_with("CASSINI_") || name == "RUST_LOG")
                .then(|| (name, value.to_string_lossy().into_owned()))
        })
        .collect()
}

fn typed_env_value(path: &str, raw: &str) -> Result<toml::Value, &'static str> {
    match default_value(path) {
        Some(toml::Value::String(_)) => Ok(toml::Value::String(raw.to_string())),
        Some(toml::Value::Integer(_)) => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| "an integer"),
        Some(toml::Value::Boolean(_)) => match raw.trim() {
            "true" => Ok(toml::Value::Boolean(true)),
            "false" => Ok(toml::Value::Boolean(false)),
            _ => Err("true or false"),
        },
        Some(toml::Value::Array(_)) => Ok(toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| toml::Value::String(item.to_string()))
                .collect(),
        )),
        _ => Err("a value this key cannot take from the environment"),
    }
}

fn set(table: &mut toml::Table, path: &str, value: toml::Value) {
    let mut table = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            table.insert(part.to_string(), value);
            return;
        }
        let entry = table
            .entry(part.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        let toml::Value::Table(inner) = entry else {
            return;
        };
        table = inner;
    }
}

fn apply_flags(settings: &mut Settings, flags: &Overrides) {
    override_with(&mut settings.listen, &flags.listen);
    override_with(&mut settings.certs.dir, &flags.certs);
    override_with(&mut settings.sessions.expiry_secs, &flags.session_expiry);
    override_with(&mut settings.quic.idle_timeout_secs, &flags.idle_timeout);
    override_with(&mut settings.quic.congestion, &flags.congestion);
    if let Some(addr) = flags.monitor {
        settings.monitor.enabled = true;
        settings.monitor.listen = addr;
    }
    override_with(&mut settings.log.format, &flags.log_format);
    override_with(&mut settings.security.acl_file, &flags.acl);
    override_with(&mut settings.security.identity_rule, &flags.identity_rule);
    override_with(
        &mut settings.security.address_validation,
        &flags.address_validation,
    );
    settings.security.allow_unknown_revocation |= flags.allow_unknown_revocation;
    settings.security.enforce_crl_expiry |= flags.enforce_crl_expiry;
    settings.certs.require_crl |= flags.require_crl;
    if let Some(addr) = flags.mqtt {
        settings.mqtt.listen = addr.to_string();
    }
    override_with(&mut settings.monitor.token_file, &flags.monitor_token_file);
    override_with(&mut settings.cluster.name, &flags.cluster);
    override_with(&mut settings.cluster.node, &flags.node);
    override_with(&mut settings.cluster.listen, &flags.cluster_listen);
    if !flags.peers.is_empty() {
        settings.cluster.peers = flags.peers.clone();
    }
    if let Some(addr) = &flags.cluster_advertise {
        settings.cluster.advertise = addr.clone();
    }
    if !flags.members.is_empty() {
        settings.cluster.members = flags.members.clone();
    }
}

/// Sets `setting` to the flag's value when the flag was given.
fn override_with<T: Clone>(setting: &mut T, flag: &Option<T>) {
    if let Some(value) = flag {
        *setting = value.clone();
    }
}

/// Checks what types cannot say.
fn check(settings: &Settings, text: &str, path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, reason: String| ConfigError::Invalid {
        key: key.to_string(),
        location: line_of(text, key)
            .map(|line| format!(" ({} line {line})", path.display()))
            .unwrap_or_default(),
        reason,
    };
    let security = &settings.security;
    if let Err(reason) = security.identity_rule.parse::<IdentityRule>() {
        return Err(invalid("security.identity_rule", reason.to_string()));
    }
    if let Err(reason) = security.address_validation.parse::<AddressValidation>() {
        return Err(invalid("security.address_validation", reason.to_string()));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(&settings.log.level) {
        return Err(invalid(
            "log.level",
            format!(
                "{:?} is not a RUST_LOG-style filter ({err}); expected e.g. \"info\" or \"warn,cassini_broker=debug\"",
                settings.log.level
            ),
        ));
    }
    let cluster = &settings.cluster;
    if cluster.enabled() {
        if let Err(err) =
            cassini_quic::certs::CertificateAuthority::validate_node_name(&cluster.node)
        {
            return Err(invalid(
                "cluster.node",
                format!("a cluster node needs a name (--node NAME): {err}"),
            ));
        }
        for member in &cluster.members {
            if let Err(err) = cassini_quic::certs::CertificateAuthority::validate_node_name(member)
            {
                return Err(invalid(
                    "cluster.members",
                    format!("{member:?} is not a node name: {err}"),
                ));
            }
        }
        if !cluster.members.is_empty() && !cluster.members.contains(&cluster.node) {
            return Err(invalid(
                "cluster.members",
                format!("this node {:?} must be one of the members", cluster.node),
            ));
        }
        if cluster.max_queued_messages == 0 {
            return Err(invalid(
                "cluster.max_queued_messages",
                "0 allows nothing; expected at least 1".into(),
            ));
        }
        let advertise = cluster.advertise.trim();
        let has_port = advertise
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !advertise.is_empty() && !has_port {
            return Err(invalid(
                "cluster.advertise",
                format!("{advertise:?} is not host:port"),
            ));
        }
    }
    let mqtt = &settings.mqtt;
    if !mqtt.listen.trim().is_empty() {
        match mqtt.listen.trim().parse::<SocketAddr>() {
            Err(err) => {
                return Err(invalid(
                    "mqtt.listen",
                    format!("{:?} is not HOST:PORT ({err}); expected e.g. \"127.0.0.1:8883\"", mqtt.listen),
                ))
            }
            Ok(addr) if mqtt.allow_plaintext_loopback && !addr.ip().is_loopback() => {
                return Err(invalid(
                    "mqtt.allow_plaintext_loopback",
                    format!("plain TCP is only allowed on a loopback address, and mqtt.listen is {addr}"),
                ))
            }
            Ok(_) => {}
        }
    }
    let limits = &settings.limits;
    if limits.max_payload_bytes >= limits.max_frame_bytes {
        return Err(invalid(
            "limits.max_payload_bytes",
            format!(
                "{} does not fit in a frame; expected less than limits.max_frame_bytes ({})",
                limits.max_payload_bytes, limits.max_frame_bytes
            ),
        ));
    }
    // The largest delivery the limits let in must fit in a frame, or the writer could not send
    // it: payload, headers (with a few bytes of framing each), topic and `reply_to`.
    let largest_delivery = u64::from(limits.max_payload_bytes)
        + u64::from(limits.max_header_bytes)
        + 11 * u64::from(limits.max_headers)
        + 2 * limits.max_topic_bytes as u64
        + DELIVERY_FRAMING_BYTES;
    if largest_delivery > u64::from(limits.max_frame_bytes) {
        return Err(invalid(
            "limits.max_frame_bytes",
            format!(
                "{} cannot hold the largest message the other limits allow ({largest_delivery} \
                 bytes: max_payload_bytes, max_header_bytes, 11 bytes for each of max_headers, \
                 twice max_topic_bytes and {DELIVERY_FRAMING_BYTES} of framing); raise it or \
                 lower those",
                limits.max_frame_bytes
            ),
        ));
    }
    if !settings.cluster.members.is_empty() && limits.max_frame_bytes > MAX_CLUSTER_FRAME_BYTES {
        return Err(invalid(
            "limits.max_frame_bytes",
            format!(
                "{} is too large with cluster.members: a named session's message travels in a Raft \
                 entry, and entries travel in cluster frames of 64 MiB; expected at most {}",
                limits.max_frame_bytes, MAX_CLUSTER_FRAME_BYTES
            ),
        ));
    }
    if limits.max_headers as usize > cassini_protocol::codec::MAX_DECODED_HEADERS {
        return Err(invalid(
            "limits.max_headers",
            format!(
                "{} is more than a frame decodes; expected at most {}",
                limits.max_headers,
                cassini_protocol::codec::MAX_DECODED_HEADERS
            ),
        ));
    }
    let udp_payload = settings.quic.max_udp_payload_bytes;
    if !cassini_quic::tls::UDP_PAYLOAD_BYTES_RANGE.contains(&udp_payload) {
        return Err(invalid(
            "quic.max_udp_payload_bytes",
            format!(
                "{udp_payload} is out of range; expected {} to {} (QUIC's smallest packet, and \
                 the most ten packets of one batched send can hold)",
                cassini_quic::tls::UDP_PAYLOAD_BYTES_RANGE.start(),
                cassini_quic::tls::UDP_PAYLOAD_BYTES_RANGE.end()
            ),
        ));
    }
    let positive = [
        ("limits.max_connections", limits.max_connections as u64),
        ("limits.max_memory_bytes", limits.max_memory_bytes),
        (
            "quic.receive_window_bytes",
            settings.quic.receive_window_bytes,
        ),
        (
            "limits.max_partial_frame_bytes_per_identity",
            limits.max_partial_frame_bytes_per_identity,
        ),
        (
            "limits.max_publish_streams_per_connection",
            limits.max_publish_streams_per_connection as u64,
        ),
        ("limits.max_topic_bytes", limits.max_topic_bytes as u64),
        ("limits.max_topic_depth", limits.max_topic_depth as u64),
        (
            "limits.max_tracked_topics",
            limits.max_tracked_topics as u64,
        ),
        ("events.queue", settings.events.queue as u64),
        ("queue.max_messages", u64::from(settings.queue.max_messages)),
        ("queue.max_bytes", settings.queue.max_bytes),
        (
            "queue.max_in_flight",
            u64::from(settings.queue.max_in_flight),
        ),
    ];
    if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
        return Err(invalid(key, "0 allows nothing; expected at least 1".into()));
    }
    let queue = &settings.queue;
    let defaults_within_caps = [
        (
            "queue.default_messages",
            u64::from(queue.default_messages),
            "queue.max_messages",
            u64::from(queue.max_messages),
        ),
        (
            "queue.default_bytes",
            queue.default_bytes,
            "queue.max_bytes",
            queue.max_bytes,
        ),
    ];
    for (key, value, cap_key, cap) in defaults_within_caps {
        if value > cap {
            return Err(invalid(
                key,
                format!("{value} is above {cap_key} ({cap}); expected at most that"),
            ));
        }
    }
    Ok(())
}

/// The line (1-based) of the file where `path`'s key is set, if it is.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let section = section_of(path);
    let name = path.rsplit('.').next().unwrap_or(path);
    let mut current = "";
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = header.trim();
            continue;
        }
        let key = line.split('=').next().unwrap_or("").trim();
        if current == section && key == name && line.contains('=') {
            return Some(index + 1);
        }
    }
    None
}
