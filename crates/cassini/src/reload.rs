//! Hot reload: the certificate files (`certs.ca`, `certs.cert`, `certs.key`, `certs.crl`; by
//! default `ca.crt`, `server.crt`, `server.key` and `crl.pem` in the certificate directory) and
//! the ACL file, on SIGHUP and whenever one of those files changes; on a cluster node also its
//! node certificate and key (`node-NAME.crt`, `node-NAME.key`).
//!
//! A file watcher (notify, inotify on Linux) watches the directories holding those files
//! (directories, so files replaced by rename are seen too). Changes are
//! debounced: a reload runs [`DEBOUNCE`] after the last change of a burst, so the two renames of
//! `cassini certs rotate-server` become one reload. The trigger channel holds one pending
//! reload; a trigger while one is pending is folded into it.
//!
//! A reload builds all new material before installing any: if a file is missing or invalid,
//! the error is logged and the broker keeps what it had. The CRL file follows the CRL rule
//! (`cassini_quic::revocation`): once a CRL has been in force, a missing, unreadable or invalid
//! CRL file keeps the last good CRL in force, logged at error level at every reload and shown in
//! `/varz` (`revocation.problem`), while the other files are installed as usual. Installed TLS material applies to new
//! connections at once, and live connections whose certificate it refuses are closed with
//! `CERTIFICATE_REVOKED` (see `QuicServer::reload`; the MQTT gateway's with `MqttServer::reload`;
//! cluster links to a node whose certificate it refuses with `ClusterNode::reload`); a new ACL applies to new requests at once
//! and ends the live subscriptions it no longer allows (`BrokerHandle::set_acl`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cassini_broker::{Acl, BrokerHandle};
use cassini_mqtt::MqttServer;
use cassini_quic::cluster::{ClusterNode, ClusterTls};
use cassini_quic::revocation::CrlSource;
use cassini_quic::server::{QuicServer, ServerTls};
use cassini_quic::tls::{self, RevocationOptions, TlsError};

use crate::config::CertFiles;
use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// How long after the last file change of a burst the reload runs.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);

/// Loads the server's TLS material from `files`, with the CRL `crl` reads under the CRL rule
/// (see `cassini_quic::revocation`). Also returns, when the last good CRL was kept because the
/// file could not be used, why.
pub(crate) fn load_server_tls(
    files: &CertFiles,
    crl: &CrlSource,
    revocation: RevocationOptions,
) -> Result<(ServerTls, Option<String>), TlsError> {
    let crls = crl.load()?;
    let tls = ServerTls::build(
        tls::load_certs(&files.ca)?,
        tls::load_certs(&files.cert)?,
        tls::load_key(&files.key)?,
        crls.crls,
        revocation,
    )?;
    Ok((tls, crls.kept_last_good))
}

/// The files of a cluster node's TLS material: the CA, and its node certificate and key.
#[derive(Debug, Clone)]
pub(crate) struct NodeFiles {
    pub(crate) ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// A running cluster endpoint and the files its TLS material is loaded from.
#[derive(Clone)]
pub(crate) struct ClusterLink {
    pub(crate) node: Arc<ClusterNode>,
    pub(crate) files: NodeFiles,
}

/// Loads a cluster node's TLS material from `files`, refusing the node certificates the CRL
/// `crl` reads (under the CRL rule) revokes.
pub(crate) fn load_cluster_tls(
    files: &NodeFiles,
    crl: &CrlSource,
    revocation: RevocationOptions,
) -> Result<ClusterTls, TlsError> {
    let crls = crl.load()?;
    ClusterTls::build(
        tls::load_certs(&files.ca)?,
        tls::load_certs(&files.cert)?,
        tls::load_key(&files.key)?,
        crls.crls,
        revocation,
    )
}

/// Says loudly that the CRL file could not be used and the last good CRL stays in force.
pub(crate) fn log_kept_crl(crl: &CrlSource, why: &str, problem: &str) {
    let status = crl.status();
    tracing::error!(
        why,
        crl = %crl.path().display(),
        problem,
        revoked = status.revoked,
        "the CRL file cannot be used; keeping the last good CRL in force (revocation is NOT turned off). Restore the file"
    );
}

/// What to reload and where to install it.
pub(crate) struct Reloader {
    pub(crate) certs: CertFiles,
    pub(crate) acl: Option<PathBuf>,
    pub(crate) revocation: RevocationOptions,
    /// The CRL file, read under the CRL rule; shared with monitoring.
    pub(crate) crl: Arc<CrlSource>,
    pub(crate) server: Arc<QuicServer>,
    /// The MQTT gateway, when it runs: it takes the same TLS material.
    pub(crate) mqtt: Option<Arc<MqttServer>>,
    /// The cluster endpoint, when this broker is a cluster node: its node certificate, the CA
    /// and the CRL are reloaded with the rest.
    pub(crate) cluster: Option<ClusterLink>,
    pub(crate) broker: BrokerHandle,
}

impl Reloader {
    /// Reloads everything once, logging what changed and what failed.
    pub(crate) fn reload(&self, why: &str) {
        match load_server_tls(&self.certs, &self.crl, self.revocation) {
            Ok((tls, kept_crl)) => match self.server.reload(&tls) {
                Ok(report) => {
                    if let Some(mqtt) = &self.mqtt {
                        let cut = mqtt.reload(&tls);
                        tracing::info!(
                            why,
                            closed = cut,
                            "reloaded the MQTT gateway's certificates"
                        );
                    }
                    if let Some(problem) = kept_crl {
                        log_kept_crl(&self.crl, why, &problem);
                    }
                    tracing::info!(
                    why,
                    cert = %self.certs.cert.display(),
                    kept = report.kept,
                    closed = report.closed.len(),
                    revoked = tls.revoked.len(),
                    "reloaded certificates and CRL"
                    )
                }
                Err(err) => {
                    tracing::error!(why, %err, "cannot install the reloaded certificates; keeping the previous ones")
                }
            },
            Err(err) => tracing::error!(
                why,
                cert = %self.certs.cert.display(),
                %err,
                "cannot reload certificates; keeping the previous ones"
            ),
        }
        if let Some(cluster) = &self.cluster {
            self.reload_cluster(cluster, why);
        }
        if let Some(path) = &self.acl {
            match Acl::load(path) {
                Ok(acl) => {
                    let rules = acl.rules.len();
                    self.broker.set_acl(acl);
                    tracing::info!(why, acl = %path.display(), rules, "reloaded the ACL");
                }
                Err(err) => {
                    tracing::error!(why, %err, "cannot reload the ACL; keeping the previous one")
                }
            }
        }
    }

    /// Installs the cluster node's reloaded TLS material: links made from now on use it, and
    /// live links to peers whose node certificate it refuses are closed.
    fn reload_cluster(&self, cluster: &ClusterLink, why: &str) {
        let installed = load_cluster_tls(&cluster.files, &self.crl, self.revocation)
            .map_err(|err| err.to_string())
            .and_then(|tls| cluster.node.reload(tls).map_err(|err| err.to_string()));
        match installed {
            Ok(closed) => tracing::info!(
                why,
                cert = %cluster.files.cert.display(),
                closed = closed.len(),
                "reloaded the cluster's certificates and CRL"
            ),
            Err(err) => tracing::error!(
                why,
                cert = %cluster.files.cert.display(),
                %err,
                "cannot reload the cluster's certificates; keeping the previous ones"
            ),
        }
    }

    /// Reloads on every SIGHUP and on every (debounced) change of a watched file, until the
    /// process ends. Returns the watcher, which must be kept alive.
    pub(crate) fn spawn(self) -> anyhow::Result<notify::RecommendedWatcher> {
        let (trigger, mut triggered) = mpsc::channel::<&'static str>(1);
        let watcher = self.watch(trigger.clone())?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let _ = trigger.try_send("SIGHUP");
            }
        });
        tokio::spawn(async move {
            while let Some(mut why) = triggered.recv().await {
                if why == "file change" {
                    // Wait for the burst to end: every further change restarts the wait.
                    while let Ok(Some(next)) =
                        tokio::time::timeout(DEBOUNCE, triggered.recv()).await
                    {
                        if next != "file change" {
                            why = next;
                        }
                    }
                }
                self.reload(why);
            }
        });
        Ok(watcher)
    }

    fn watch(
        &self,
        trigger: mpsc::Sender<&'static str>,
    ) -> anyhow::Result<notify::RecommendedWatcher> {
        let watched: Vec<PathBuf> = [
            &self.certs.ca,
            &self.certs.cert,
            &self.certs.key,
            &self.certs.crl,
        ]
        .into_iter()
        .chain(self.acl.as_ref())
        .chain(
            self.cluster
                .iter()
                .flat_map(|cluster| [&cluster.files.cert, &cluster.files.key]),
        )
        .map(|path| absolute(path))
        .collect();
        let files = watched.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let Ok(event) = event else { return };
                if event.kind.is_access() {
                    return;
                }
                if event
                    .paths
                    .iter()
                    .any(|path| files.contains(&absolute(path)))
                {
                    let _ = trigger.try_send("file change");
                }
            })?;
        let mut dirs: Vec<&Path> = watched.iter().filter_map(|path| path.parent()).collect();
        dirs.sort();
        dirs.dedup();
        for dir in dirs {
            watcher.watch(dir, RecursiveMode::NonRecursive)?;
        }
        Ok(watcher)
    }
}

/// `path` made absolute against the current directory (without resolving links), so paths
/// from the settings and from the watcher compare equal.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
