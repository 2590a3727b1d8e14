//! `cassini serve`: the broker core behind a QUIC endpoint, until SIGINT or SIGTERM.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::config::{StorageMode, SyncPolicy};
use cassini_broker::{Broker, BrokerConfig};
use cassini_protocol::ErrorCode;
use cassini_quic::certs::ensure_dev_certs;
use cassini_quic::server::{server_crypto_from_dir, QuicServer, ServerOptions};
use cassini_quic::tls::QuicOptions;

use crate::cli::{ServeArgs, StorageArg, SyncArg};

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
    let crypto = server_crypto_from_dir(&args.certs)
        .with_context(|| format!("loading certificates from {}", args.certs.display()))?;

    let mut config = BrokerConfig::default();
    config.sessions.expiry = Duration::from_secs(args.session_expiry);
    config.queue.max_backlog_age =
        (args.max_backlog_age > 0).then(|| Duration::from_secs(args.max_backlog_age));
    config.storage.mode = match args.storage {
        StorageArg::Memory => StorageMode::Memory,
        StorageArg::Disk => StorageMode::Disk,
    };
    config.storage.data_dir = args.data_dir.clone();
    config.storage.sync = match args.storage_sync {
        SyncArg::Always => SyncPolicy::Always,
        SyncArg::Relaxed => SyncPolicy::Relaxed,
    };
    config.storage.max_disk_bytes = args.storage_max_bytes;
    let broker = Broker::start(config).await.context("starting the broker")?;

    let options = ServerOptions {
        quic: QuicOptions {
            idle_timeout: Duration::from_secs(args.idle_timeout),
            ..QuicOptions::default()
        },
        ..ServerOptions::default()
    };
    let server = QuicServer::bind(args.listen, crypto, options)
        .with_context(|| format!("listening on {}", args.listen))?;
    let local = server.local_addr().context("reading the bound address")?;
    let buffers = server.socket_buffers();
    tracing::info!(
        addr = %local,
        recv_buffer = buffers.recv,
        send_buffer = buffers.send,
        certs = %args.certs.display(),
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
