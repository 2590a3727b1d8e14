//! A listener actor: owns one connection for as long as it lives.
//!
//! It runs the connection's driver task and, when the connection ends however it ends, tells
//! the session: a goodbye ends the session, anything else detaches it. That notice is sent from
//! the state's `Drop`, so it also happens if this actor fails.
//!
//! The driver runs inside a `connection` tracing span carrying the peer's `remote` address and
//! `identity`; the driver records `session` on it once the session is attached, so every log
//! line of the connection names all three. The connection is in the monitoring registry for as
//! long as this actor's state lives.

use std::sync::Arc;

use cassini_protocol::ErrorCode;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::task::task_tracker::TaskTrackerToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::session::SessionMsg;
use super::session_manager::SessionManagerMsg;
use crate::connection::driver::{drive_connection, DriverEvent};
use crate::context::Shared;
use crate::introspect::registry::Registration;
use crate::transport::Connection;

pub(crate) struct Listener;

pub(crate) struct ListenerArgs {
    pub(crate) connection: Arc<dyn Connection>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sessions: ActorRef<SessionManagerMsg>,
    /// The broker's tracker of connections: the driver runs on it, and this listener is
    /// counted in it until its state is dropped.
    pub(crate) connections: TaskTracker,
}

pub(crate) enum ListenerMsg {
    /// What the driver reported: the connection was attached to a session, or the driver
    /// finished.
    Driver(DriverEvent),
    /// The broker is shutting down.
    Shutdown { reason: String },
}

pub(crate) struct ListenerState {
    connection: Arc<dyn Connection>,
    driver: JoinHandle<()>,
    /// Tells the driver the broker is going away, with the reason.
    going_away: watch::Sender<Option<String>>,
    session: Option<(ActorRef<SessionMsg>, u64)>,
    clean: bool,
    /// Keeps the connection in the monitoring registry until this state is dropped.
    _registration: Registration,
    /// Keeps the listener counted in the broker's connection tracker (what shutdown waits
    /// for) until this state is dropped, after the notice to the session was sent.
    _tracked: TaskTrackerToken,
}

impl Drop for ListenerState {
    fn drop(&mut self) {
        self.driver.abort();
        match self.going_away.borrow().as_deref() {
            Some(reason) => self
                .connection
                .close(ErrorCode::SERVER_SHUTTING_DOWN, reason),
            None => self
                .connection
                .close(ErrorCode::NORMAL, "connection closed"),
        }
        if let Some((session, epoch)) = self.session.take() {
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
    }
}

impl Actor for Listener {
    type Msg = ListenerMsg;
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (going_away, going_away_rx) = watch::channel(None);
        let registration = args.shared.registry.register(&args.connection);
        let peer = args.connection.peer();
        let span = tracing::info_span!(
            "connection",
            remote = %peer.remote_addr,
            identity = %peer.identity,
            session = tracing::field::Empty,
        );
        let report = Box::new(move |event| {
            let _ = myself.send_message(ListenerMsg::Driver(event));
        });
        let tracked = args.connections.token();
        let driver = args.connections.spawn(
            drive_connection(
                Arc::clone(&args.connection),
                args.shared,
                args.sessions,
                report,
                going_away_rx,
            )
            .instrument(span),
        );
        Ok(ListenerState {
            connection: args.connection,
            driver,
            going_away,
            session: None,
            clean: false,
            _registration: registration,
            _tracked: tracked,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerMsg::Driver(DriverEvent::Established { session, epoch }) => {
                state.session = Some((session, epoch))
            }
            ListenerMsg::Driver(DriverEvent::Ended { clean }) => {
                state.clean = clean;
                myself.stop(None);
            }
            ListenerMsg::Shutdown { reason } => {
                // The driver sends `GoingAway` and closes; a connection still in its handshake
                // is closed with the same code when this actor stops.
                state.going_away.send_replace(Some(reason));
            }
        }
        Ok(())
    }
}
