//! `cassini serve`: the broker core behind a QUIC endpoint, until SIGINT or SIGTERM; reloads
//! certificates, the CRL and the ACL on SIGHUP and when their files change (see `reload`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::config::{StorageMode, SyncPolicy};
use cassini_broker::{Acl, Broker, BrokerConfig};
use cassini_mqtt::{MqttOptions, MqttServer};
use cassini_protocol::ErrorCode;
use cassini_quic::certs::{ensure_dev_certs, issue_node_file, node_paths};
use cassini_quic::cluster::{ClusterNode, ClusterOptions};
use cassini_quic::reset_key::{KeySource, StatelessResetKey};
use cassini_quic::revocation::CrlSource;
use cassini_quic::server::QuicServer;
use cassini_quic::tls::RevocationOptions;

use crate::cli::{ServeArgs, StorageArg, SyncArg};
use crate::config::LogFormat;
use crate::config::{self, ConfigError, Settings};
use crate::monitoring::Monitoring;
use crate::reload::{load_cluster_tls, load_server_tls, ClusterLink, NodeFiles, Reloader};
use crate::signals::ShutdownSignals;

const SHUTDOWN_REASON: &str = "server shutting down";

/// The settings `serve` runs with: defaults, `--config`, the environment, then the flags.
pub(crate) fn settings(
    args: &ServeArgs,
    log_format: Option<LogFormat>,
) -> Result<Settings, ConfigError> {
    let overrides = config::Overrides {
        listen: args.listen,
        certs: args.certs.clone(),
        session_expiry: args.session_expiry,
        idle_timeout: args.idle_timeout,
        congestion: args.congestion,
        monitor: args.monitor,
        log_format,
        acl: args.acl.clone(),
        identity_rule: args.identity_rule.clone(),
        address_validation: args.address_validation.clone(),
        allow_unknown_revocation: args.allow_unknown_revocation,
        enforce_crl_expiry: args.enforce_crl_expiry,
        require_crl: args.require_crl,
        monitor_token_file: args.monitor_token_file.clone(),
        cluster: args.cluster.clone(),
        node: args.node.clone(),
        cluster_listen: args.cluster_listen,
        peers: args.peers.clone(),
        cluster_advertise: args.cluster_advertise.clone(),
        members: args.members.clone(),
        mqtt: args.mqtt,
    };
    config::resolve(args.config.as_deref(), &config::process_env(), &overrides)
}

/// The durable-mode flags of `serve`, applied over the configuration.
pub(crate) struct StorageFlags {
    storage: Option<StorageArg>,
    data_dir: Option<std::path::PathBuf>,
    sync: Option<SyncArg>,
    max_bytes: Option<u64>,
    max_backlog_age: Option<u64>,
}

impl StorageFlags {
    pub(crate) fn from_args(args: &ServeArgs) -> Self {
        Self {
            storage: args.storage,
            data_dir: args.data_dir.clone(),
            sync: args.storage_sync,
            max_bytes: args.storage_max_bytes,
            max_backlog_age: args.max_backlog_age,
        }
    }

    fn apply(&self, config: &mut BrokerConfig) {
        if let Some(storage) = self.storage {
            config.storage.mode = match storage {
                StorageArg::Memory => StorageMode::Memory,
                StorageArg::Disk => StorageMode::Disk,
            };
        }
        if let Some(dir) = &self.data_dir {
            config.storage.data_dir = dir.clone();
        }
        if let Some(sync) = self.sync {
            config.storage.sync = match sync {
                SyncArg::Always => SyncPolicy::Always,
                SyncArg::Relaxed => SyncPolicy::Relaxed,
            };
        }
        if let Some(max_bytes) = self.max_bytes {
            config.storage.max_disk_bytes = max_bytes;
        }
        if let Some(secs) = self.max_backlog_age {
            config.queue.max_backlog_age = (secs > 0).then(|| Duration::from_secs(secs));
        }
    }
}

pub(crate) async fn run(settings: Settings, storage: StorageFlags) -> anyhow::Result<ExitCode> {
    let mut signals = ShutdownSignals::install()?;
    for warning in settings
        .warnings()
        .into_iter()
        .chain(config::unknown_env(&config::process_env()))
    {
        tracing::warn!("{warning}");
    }
    let certs = &settings.certs;
    if certs.generate_dev && certs.uses_dir_only() {
        if let Some(report) = ensure_dev_certs(&certs.dir)
            .with_context(|| format!("preparing certificates in {}", certs.dir.display()))?
        {
            tracing::warn!(
                dir = %certs.dir.display(),
                files = report.written.len(),
                "no certificates found: created development certificates (CA, server, client 'dev'); \
                 do not use them in production"
            );
        }
    }
    let files = certs.files();
    let revocation = settings.security.revocation();
    let crl = Arc::new(CrlSource::new(files.crl.clone(), certs.require_crl));
    let (tls, _) = load_server_tls(&files, &crl, revocation).with_context(|| {
        format!(
            "loading certificates (ca {}, cert {}, key {}, crl {} {})",
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            files.crl.display(),
            if certs.require_crl {
                "required: certs.require_crl"
            } else {
                "if present"
            }
        )
    })?;
    let crl_status = crl.status();
    tracing::info!(
        crl = %files.crl.display(),
        in_force = crl_status.in_force,
        revoked = crl_status.revoked,
        "revocation"
    );
    let acl_path = match settings.security.acl() {
        Some(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("finding the ACL file {}", path.display()))?,
        ),
        None => None,
    };

    let mut broker_config = settings.broker_config();
    storage.apply(&mut broker_config);
    if let Some(path) = &acl_path {
        broker_config.acl = Acl::load(path).context("loading the ACL")?;
        tracing::info!(acl = %path.display(), rules = broker_config.acl.rules.len(), "ACL loaded");
    }
    let broker = Broker::start(broker_config)
        .await
        .context("starting the broker")?;
    let mut server_options = settings.server_options();
    server_options.quic.stateless_reset_key = reset_key(&files.reset_key);
    let server = Arc::new(
        QuicServer::bind(settings.listen, Arc::clone(&tls.config), server_options)
            .with_context(|| format!("listening on {}", settings.listen))?,
    );
    let mqtt = match settings.mqtt.listen() {
        Some(listen) => {
            let options = MqttOptions {
                allow_plaintext_loopback: settings.mqtt.allow_plaintext_loopback,
                tls12: settings.mqtt.tls12,
                identity_rule: settings.security.identity_rule(),
                max_connecting: settings.mqtt.max_connecting,
                ..MqttOptions::new(listen)
            };
            let mqtt = MqttServer::bind(options, &tls)
                .await
                .context("starting the MQTT gateway")?;
            let addr = mqtt.local_addr().context("reading the MQTT address")?;
            tracing::info!(
                addr = %addr,
                plaintext_loopback = settings.mqtt.allow_plaintext_loopback,
                tls12 = settings.mqtt.tls12,
                "MQTT gateway listening"
            );
            let mqtt = Arc::new(mqtt);
            let serving = Arc::clone(&mqtt);
            let broker = broker.clone();
            tokio::spawn(async move { serving.serve(broker).await });
            Some(mqtt)
        }
        None => None,
    };
    let local = server.local_addr().context("reading the bound address")?;
    let buffers = server.socket_buffers();
    tracing::info!(
        addr = %local,
        recv_buffer = buffers.recv,
        send_buffer = buffers.send,
        certs = %certs.dir.display(),
        identity_rule = %settings.security.identity_rule(),
        ca = %files.ca.display(),
        cert = %files.cert.display(),
        "cassini listening"
    );
    let cluster = start_cluster(&settings, &broker, local, &crl, revocation)?;
    let _watcher = Reloader {
        certs: files.clone(),
        acl: acl_path,
        revocation,
        crl: Arc::clone(&crl),
        server: Arc::clone(&server),
        mqtt: mqtt.clone(),
        cluster: cluster.clone(),
        broker: broker.clone(),
    }
    .spawn()
    .context("watching certificates and the ACL for changes")?;
    let monitoring =
        Monitoring::start(&settings, &broker, &server, &crl, local, mqtt.as_deref()).await?;
    monitoring.set_ready(true);

    tokio::select! {
        () = server.serve(broker.clone()) => {
            tracing::error!("the QUIC endpoint stopped unexpectedly");
            return Ok(ExitCode::FAILURE);
        }
        signal = signals.next() => {
            tracing::info!(signal, "shutting down");
        }
    }
    monitoring.set_ready(false);
    let graceful = async {
        if let Some(cluster) = &cluster {
            cluster.node.close(Duration::from_secs(1)).await;
        }
        broker.shutdown(SHUTDOWN_REASON).await;
        if let Some(mqtt) = &mqtt {
            mqtt.close(Duration::from_secs(3)).await;
        }
        server
            .close(
                ErrorCode::SERVER_SHUTTING_DOWN,
                SHUTDOWN_REASON,
                Duration::from_secs(3),
            )
            .await;
    };
    tokio::select! {
        () = graceful => {
            monitoring.stop().await;
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        signal = signals.next() => {
            tracing::warn!(signal, "second signal: exiting at once");
            Ok(ExitCode::from(130))
        }
    }
}

/// Starts this node's cluster endpoint when `[cluster]` names a cluster: node certificate
/// `node-NODE.crt` / `.key` from `certs.dir` (issued there from the CA when development
/// certificates are on and it is missing), trusting `certs.ca` and refusing the node
/// certificates the CRL `crl` revokes; advertising the client address `cluster.advertise`, or
/// `client_addr` (the bound one) when that is not a wildcard.
fn start_cluster(
    settings: &Settings,
    broker: &cassini_broker::BrokerHandle,
    client_addr: std::net::SocketAddr,
    crl: &CrlSource,
    revocation: RevocationOptions,
) -> anyhow::Result<Option<ClusterLink>> {
    let cluster = &settings.cluster;
    if !cluster.enabled() {
        return Ok(None);
    }
    let Some(port) = broker.cluster() else {
        anyhow::bail!("the broker was started without its cluster settings");
    };
    let certs = &settings.certs;
    let (cert, key) = node_paths(&certs.dir, &cluster.node);
    if certs.generate_dev && certs.uses_dir_only() && !cert.exists() {
        issue_node_file(&certs.dir, &cluster.node).with_context(|| {
            format!(
                "issuing a development node certificate in {}",
                certs.dir.display()
            )
        })?;
        tracing::warn!(node = %cluster.node, dir = %certs.dir.display(), "issued a development node certificate");
    }
    let files = NodeFiles {
        ca: certs.files().ca,
        cert,
        key,
    };
    let tls = load_cluster_tls(&files, crl, revocation)
        .with_context(|| format!("loading the node certificate {}", files.cert.display()))?;
    let mut options =
        ClusterOptions::new(cluster.name.clone(), cluster.listen, cluster.peers.clone());
    options.advertise = cluster.advertised(client_addr);
    if options.advertise.is_none() {
        tracing::warn!(
            addr = %client_addr,
            "the client address is a wildcard and cluster.advertise is not set: clients are not told this node's address"
        );
    }
    let node = ClusterNode::start(options, tls, port)
        .with_context(|| format!("listening for the cluster on {}", cluster.listen))?;
    tracing::info!(
        cluster = %cluster.name,
        node = %cluster.node,
        addr = %node.local_addr().context("reading the cluster address")?,
        peers = cluster.peers.len(),
        advertise = cluster.advertised(client_addr).unwrap_or_default(),
        "cluster listening"
    );
    Ok(Some(ClusterLink {
        node: Arc::new(node),
        files,
    }))
}

/// What `config check` adds to the configuration's own checks: the files it names load as
/// `serve` would load them: the ACL, and the CA, server certificate, key and CRL (an empty
/// certificate directory that `serve` would fill with development certificates is not an
/// error). Read-only: nothing is created.
pub(crate) fn check_files(settings: &Settings) -> anyhow::Result<()> {
    if let Some(path) = settings.security.acl() {
        Acl::load(path).with_context(|| format!("checking the ACL file {}", path.display()))?;
    }
    let certs = &settings.certs;
    let files = certs.files();
    let empty_dev_dir = certs.generate_dev
        && certs.uses_dir_only()
        && !files.ca.exists()
        && !files.cert.exists()
        && !files.key.exists();
    let crl = CrlSource::new(files.crl.clone(), certs.require_crl);
    if empty_dev_dir {
        // `serve` would write development certificates there, but never a CRL.
        crl.load().with_context(|| {
            format!(
                "checking the CRL {} (required: certs.require_crl)",
                files.crl.display()
            )
        })?;
        return Ok(());
    }
    load_server_tls(&files, &crl, settings.security.revocation()).with_context(|| {
        format!(
            "checking the certificates (ca {}, cert {}, key {}, crl {} if present)",
            files.ca.display(),
            files.cert.display(),
            files.key.display(),
            files.crl.display()
        )
    })?;
    Ok(())
}

/// The stateless reset key from `path`, created there if missing. Without it (the file cannot
/// be read or written) the endpoint draws a random key, and clients of this process notice a
/// restart only at their idle timeout.
fn reset_key(path: &std::path::Path) -> Option<StatelessResetKey> {
    match StatelessResetKey::load_or_create(path) {
        Ok((key, KeySource::Loaded)) => Some(key),
        Ok((key, KeySource::Created)) => {
            tracing::info!(file = %path.display(), "created the stateless reset key");
            Some(key)
        }
        Err(error) => {
            tracing::warn!(
                %error,
                "using a random stateless reset key: after a restart, clients of this process \
                 notice that their connection is gone only at their idle timeout"
            );
            None
        }
    }
}
