//! The listener manager: one listener (a task, [`super::listener`]) per accepted connection,
//! and the connection limits (in total, and per certificate identity).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

use super::listener::{spawn_listener, ListenerArgs};
use super::session_manager::SessionManagerMsg;
use crate::context::Shared;
use crate::error::BrokerError;
use crate::transport::Connection;

pub(crate) struct ListenerManager;

pub(crate) enum ListenerManagerMsg {
    /// A transport authenticated a new connection.
    Accept(Arc<dyn Connection>),
    /// Refuse new connections and close every open one with `reason`.
    Shutdown {
        reason: String,
        reply: RpcReplyPort<()>,
    },
    /// How many listeners exist.
    Count(RpcReplyPort<usize>),
    /// The listener numbered so ended (sent last by its task, however it ended).
    Ended(u64),
}

pub(crate) struct ListenerManagerArgs {
    pub(crate) shared: Arc<Shared>,
    pub(crate) sessions: ActorRef<SessionManagerMsg>,
    /// Where every listener is tracked while it lives.
    pub(crate) connections: TaskTracker,
}

pub(crate) struct ListenerManagerState {
    shared: Arc<Shared>,
    sessions: ActorRef<SessionManagerMsg>,
    connections: TaskTracker,
    /// Every live listener by its number: what stops it, and its connection's identity.
    listeners: HashMap<u64, (AbortHandle, Arc<str>)>,
    /// The number the next listener gets.
    next_listener: u64,
    /// Open connections per certificate identity; an identity with none has no entry.
    per_identity: HashMap<Arc<str>, usize>,
    /// `Some(reason)` once the broker is going away: every listener watches it.
    going_away: watch::Sender<Option<String>>,
}

impl Actor for ListenerManager {
    type Msg = ListenerManagerMsg;
    type State = ListenerManagerState;
    type Arguments = ListenerManagerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ListenerManagerState {
            shared: args.shared,
            sessions: args.sessions,
            connections: args.connections,
            listeners: HashMap::new(),
            next_listener: 0,
            per_identity: HashMap::new(),
            going_away: watch::Sender::new(None),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ListenerManagerMsg::Accept(connection) => {
                let limits = &state.shared.config.limits;
                let max = limits.max_connections;
                let identity = Arc::clone(&connection.peer().identity);
                let of_identity = state.per_identity.get(&identity).copied().unwrap_or(0);
                let refusal = if state.going_away.borrow().is_some() {
                    Some(BrokerError::ShuttingDown)
                } else if state.listeners.len() >= max {
                    Some(BrokerError::TooManyConnections(max))
                } else if of_identity >= limits.max_connections_per_identity {
                    Some(BrokerError::TooManyConnectionsForIdentity {
                        identity: identity.to_string(),
                        max: limits.max_connections_per_identity,
                    })
                } else {
                    None
                };
                if let Some(err) = refusal {
                    let shutting_down = matches!(err, BrokerError::ShuttingDown);
                    state
                        .shared
                        .router
                        .counters()
                        .connection_refused(shutting_down);
                    tracing::debug!(
                        remote = %connection.peer().remote_addr,
                        identity = %connection.peer().identity,
                        %err,
                        "connection refused"
                    );
                    connection.close(err.code(), &err.reason());
                    return Ok(());
                }
                let args = ListenerArgs {
                    connection,
                    shared: Arc::clone(&state.shared),
                    sessions: state.sessions.clone(),
                    connections: state.connections.clone(),
                    going_away: state.going_away.subscribe(),
                };
                let number = state.next_listener;
                state.next_listener += 1;
                let manager = myself.clone();
                let listener = spawn_listener(args, move || {
                    let _ = manager.send_message(ListenerManagerMsg::Ended(number));
                });
                *state.per_identity.entry(Arc::clone(&identity)).or_default() += 1;
                state.listeners.insert(number, (listener, identity));
            }
            ListenerManagerMsg::Shutdown { reason, reply } => {
                state.going_away.send_replace(Some(reason));
                let _ = reply.send(());
            }
            ListenerManagerMsg::Count(reply) => {
                let _ = reply.send(state.listeners.len());
            }
            ListenerManagerMsg::Ended(number) => {
                if let Some((_, identity)) = state.listeners.remove(&number) {
                    if let Some(count) = state.per_identity.get_mut(&identity) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            state.per_identity.remove(&identity);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Stopping the manager (the broker stopping) stops every listener left: each closes its
    /// connection (with `SERVER_SHUTTING_DOWN` once the broker is going away, a connection still
    /// in its handshake among them) and detaches its session.
    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        for (listener, _) in state.listeners.values() {
            listener.abort();
        }
        Ok(())
    }
}
