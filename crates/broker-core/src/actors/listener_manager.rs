//! The listener manager: one listener actor per accepted connection, and the connection limits
//! (in total, and per certificate identity).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio_util::task::TaskTracker;

use super::ended_child;
use super::listener::{Listener, ListenerArgs, ListenerMsg};
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
    listeners: HashMap<ActorId, (ActorRef<ListenerMsg>, Arc<str>)>,
    /// Open connections per certificate identity; an identity with none has no entry.
    per_identity: HashMap<Arc<str>, usize>,
    accepting: bool,
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
            per_identity: HashMap::new(),
            accepting: true,
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
                let refusal = if !state.accepting {
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
                    connection: Arc::clone(&connection),
                    shared: Arc::clone(&state.shared),
                    sessions: state.sessions.clone(),
                    connections: state.connections.clone(),
                };
                match Actor::spawn_linked(None, Listener, args, myself.get_cell()).await {
                    Ok((listener, _)) => {
                        *state.per_identity.entry(Arc::clone(&identity)).or_default() += 1;
                        state
                            .listeners
                            .insert(listener.get_id(), (listener, identity));
                    }
                    Err(err) => {
                        tracing::error!(%err, "cannot start a listener");
                        let err = BrokerError::Internal(err.to_string());
                        connection.close(err.code(), &err.reason());
                    }
                }
            }
            ListenerManagerMsg::Shutdown { reason, reply } => {
                state.accepting = false;
                for (listener, _) in state.listeners.values() {
                    let _ = listener.send_message(ListenerMsg::Shutdown {
                        reason: reason.clone(),
                    });
                }
                let _ = reply.send(());
            }
            ListenerManagerMsg::Count(reply) => {
                let _ = reply.send(state.listeners.len());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some((cell, _)) = ended_child(event, "listener") {
            if let Some((_, identity)) = state.listeners.remove(&cell.get_id()) {
                if let Some(count) = state.per_identity.get_mut(&identity) {
                    *count = count.saturating_sub(1);
                    if *count == 0 {
                        state.per_identity.remove(&identity);
                    }
                }
            }
        }
        Ok(())
    }
}
