//! `cassini serve`: the broker core behind a QUIC endpoint, until SIGINT or SIGTERM; reloads
//! certificates, the CRL and the ACL on SIGHUP and when their files change (see `reload`).

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::{Acl, Broker, BrokerConfig};
use cassini_protocol::ErrorCode;
use cassini_quic::certs::ensure_dev_certs;
use cassini_quic::server::{server_tls_from_dir, QuicServer, ServerOptions};
use cassini_quic::tls::{QuicOptions, RevocationOptions};

use crate::cli::ServeArgs;
use crate::reload::Reloader;

const SHUTDOWN_REASON: &str = "server shutting down";

pub(crate) async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(report) = ensure_dev_certs(&args.certs)
        .with_context(|| format!("preparing certificates in {}", args.certs.display()))?
    {
        tracing::warn!(
            dir = %args.certs.display(),
            files = report.written.len(),
            "no certificates found: created development certificates (CA, server, client 'dev'); \
             do not use them in production"
        );
    }
    let certs = std::fs::canonicalize(&args.certs)
        .with_context(|| format!("finding {}", args.certs.display()))?;
    let revocation = RevocationOptions {
        allow_unknown_status: args.allow_unknown_revocation,
        enforce_crl_expiry: args.enforce_crl_expiry,
    };
    let tls = server_tls_from_dir(&certs, revocation)
        .with_context(|| format!("loading certificates from {}", certs.display()))?;
    let acl_path = match &args.acl {
        Some(path) => Some(
            std::fs::canonicalize(path)
                .with_context(|| format!("finding the ACL file {}", path.display()))?,
        ),
        None => None,
    };

    let mut config = BrokerConfig::default();
    config.sessions.expiry = Duration::from_secs(args.session_expiry);
    if let Some(path) = &acl_path {
        config.acl = Acl::load(path).context("loading the ACL")?;
        tracing::info!(acl = %path.display(), rules = config.acl.rules.len(), "ACL loaded");
    }
    let broker = Broker::start(config).await.context("starting the broker")?;

    let options = ServerOptions {
        quic: QuicOptions {
            idle_timeout: Duration::from_secs(args.idle_timeout),
            ..QuicOptions::default()
        },
        identity_rule: args.identity_rule.clone(),
        address_validation: args.address_validation,
        ..ServerOptions::default()
    };
    let server = Arc::new(
        QuicServer::bind(args.listen, Arc::clone(&tls.config), options)
            .with_context(|| format!("listening on {}", args.listen))?,
    );
    let _watcher = Reloader {
        certs: certs.clone(),
        acl: acl_path,
        revocation,
        server: Arc::clone(&server),
        broker: broker.clone(),
    }
    .spawn()
    .context("watching certificates and the ACL for changes")?;
    let local = server.local_addr().context("reading the bound address")?;
    let buffers = server.socket_buffers();
    tracing::info!(
        addr = %local,
        recv_buffer = buffers.recv,
        send_buffer = buffers.send,
        certs = %certs.display(),
        identity_rule = %args.identity_rule,
        "cassini listening"
    );

    tokio::select! {
        () = server.serve(broker.clone()) => {
            tracing::error!("the QUIC endpoint stopped unexpectedly");
            return Ok(ExitCode::FAILURE);
        }
        signal = shutdown_signal() => {
            tracing::info!(signal, "shutting down");
        }
    }
    let graceful = async {
        broker.shutdown(SHUTDOWN_REASON).await;
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
            tracing::info!("stopped");
            Ok(ExitCode::SUCCESS)
        }
        signal = shutdown_signal() => {
            tracing::warn!(signal, "second signal: exiting at once");
            Ok(ExitCode::from(130))
        }
    }
}

/// Completes on SIGINT or SIGTERM, naming which.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => stream,
        Err(err) => {
            tracing::warn!(%err, "cannot listen for SIGTERM; only Ctrl-C stops the broker");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
