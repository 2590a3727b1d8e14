//! Binding the monitoring listener and serving it until told to stop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::net::TcpListener;

use crate::routes;
use crate::sources::{MonitorError, MonitorSources, State};

/// A bound monitoring endpoint.
#[derive(Debug)]
pub struct Monitor {
    listener: TcpListener,
    state: Arc<State>,
}

impl Monitor {
    /// Binds `addr` (port 0 for any free port).
    pub async fn bind(addr: SocketAddr, sources: MonitorSources) -> Result<Self, MonitorError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MonitorError::Bind { addr, source })?;
        let monitor_addr = listener
            .local_addr()
            .map_err(|source| MonitorError::Bind { addr, source })?;
        Ok(Self {
            listener,
            state: Arc::new(State {
                sources,
                monitor_addr,
                started_at: SystemTime::now(),
                started: Instant::now(),
            }),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.state.monitor_addr
    }

    /// Serves requests until `shutdown` completes; requests in progress are finished first.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) {
        let app = routes::router(self.state);
        if let Err(err) = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%err, "the monitoring endpoint stopped");
        }
    }
}
