//! SIGINT and SIGTERM for every long-running command: `serve`, `sub`, `reply` and `top` treat
//! both alike (SIGTERM is what `timeout`, systemd and container runtimes send), so each ends
//! the way Ctrl-C ends it: with a goodbye to the broker and exit status 0.

use anyhow::Context;
use tokio::signal::unix::{signal, Signal, SignalKind};

/// SIGINT and SIGTERM, listened for from the moment this is installed, so a signal that arrives
/// right after a command announced itself is not lost to the default action (which would kill
/// the process without a goodbye).
pub(crate) struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
}

impl ShutdownSignals {
    /// Starts listening for both signals.
    pub(crate) fn install() -> anyhow::Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
        })
    }

    /// Completes on the next SIGINT or SIGTERM, naming which.
    pub(crate) async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}
