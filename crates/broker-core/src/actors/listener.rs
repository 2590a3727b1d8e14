//! A listener: the task that owns one connection for as long as it lives.
//!
//! It is a plain task, not an actor: a connection has nothing to say to the actor tree but
//! "attached" and "ended", and an actor's mailbox, supervision channels and task cost about
//! 6 KiB per connection (docs/BENCHMARKS.md, "Connections"). The listener manager spawns it,
//! counts it, tells it the broker is going away (through one watch channel for every
//! connection) and aborts it when the manager stops.
//!
//! The task runs the connection's driver and, when the connection ends however it ends (the
//! driver returned, the task was aborted, or it panicked), its [`Owner`]'s `Drop` closes the
//! connection, tells the session (a goodbye ends the session, anything else detaches it) and
//! then tells the manager, through the callback the manager gave.
//!
//! The task runs inside a `connection` tracing span carrying the peer's `remote` address and
//! `identity`; the driver records `session` on it once the session is attached, so every log
//! line of the connection names all three. The connection is in the monitoring registry for as
//! long as the task lives.

use std::sync::Arc;

use cassini_protocol::ErrorCode;
use ractor::ActorRef;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::session::SessionMsg;
use super::session_manager::SessionManagerMsg;
use crate::connection::driver::{drive_connection, Attachment};
use crate::context::Shared;
use crate::introspect::registry::Registration;
use crate::transport::Connection;

/// What a listener is started with.
pub(crate) struct ListenerArgs {
    pub(crate) connection: Arc<dyn Connection>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sessions: ActorRef<SessionManagerMsg>,
    /// The broker's tracker of connections: the listener runs on it, so shutdown waits until
    /// its `Owner` has been dropped (after the notice to the session was sent).
    pub(crate) connections: TaskTracker,
    /// `Some(reason)` once the broker is going away; one channel for every connection.
    pub(crate) going_away: watch::Receiver<Option<String>>,
}

/// Starts the listener of `args.connection`; `ended` is called once, last, when it ends.
/// The handle aborts it (its `Owner` is dropped all the same).
pub(crate) fn spawn_listener(
    args: ListenerArgs,
    ended: impl FnOnce() + Send + 'static,
) -> AbortHandle {
    let registration = args.shared.registry.register(&args.connection);
    let peer = args.connection.peer();
    let span = tracing::info_span!(
        "connection",
        remote = %peer.remote_addr,
        identity = %peer.identity,
        client = tracing::field::Empty,
        session = tracing::field::Empty,
    );
    let mut owner = Owner {
        connection: Arc::clone(&args.connection),
        going_away: args.going_away.clone(),
        attachment: None,
        clean: false,
        _registration: registration,
        ended: Some(ended),
    };
    let task = async move {
        let clean = drive_connection(
            args.connection,
            args.shared,
            args.sessions,
            &mut owner.attachment,
            args.going_away,
        )
        .await;
        owner.driven(clean);
    };
    args.connections.spawn(task.instrument(span)).abort_handle()
}

/// What the listener's task holds for its connection; its `Drop` is the connection's end.
struct Owner<F: FnOnce()> {
    connection: Arc<dyn Connection>,
    /// Read at the end: a connection of a broker going away closes with
    /// `SERVER_SHUTTING_DOWN`.
    going_away: watch::Receiver<Option<String>>,
    /// The session the driver attached the connection to, and the attach's epoch.
    attachment: Option<Attachment>,
    /// Whether the client said goodbye.
    clean: bool,
    /// Keeps the connection in the monitoring registry until the listener ends.
    _registration: Registration,
    /// Tells the listener manager; `None` once called.
    ended: Option<F>,
}

impl<F: FnOnce()> Owner<F> {
    /// The driver returned; `clean` when the client said goodbye.
    fn driven(&mut self, clean: bool) {
        self.clean = clean;
    }
}

impl<F: FnOnce()> Drop for Owner<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!("listener failed; cleaning up after it");
        }
        match self.going_away.borrow().as_deref() {
            Some(reason) => self
                .connection
                .close(ErrorCode::SERVER_SHUTTING_DOWN, reason),
            None => self
                .connection
                .close(ErrorCode::NORMAL, "connection closed"),
        }
        if let Some(Attachment { session, epoch }) = self.attachment.take() {
            let notice = if self.clean {
                SessionMsg::End { epoch }
            } else {
                SessionMsg::Detach {
                    epoch,
                    expiry: self.connection.session_expiry(),
                }
            };
            let _ = session.send_message(notice);
        }
        if let Some(ended) = self.ended.take() {
            ended();
        }
    }
}
