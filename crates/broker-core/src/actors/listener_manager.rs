//! The listener manager: one listener actor per accepted connection, and the connection limit.

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};

use super::listener::{Listener, ListenerArgs, ListenerMsg};
use super::session_manager::SessionManagerMsg;
use super::{ended_child, Shared};
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
}

pub(crate) struct ListenerManagerState {
    shared: Arc<Shared>,
    sessions: ActorRef<SessionManagerMsg>,
    listeners: HashMap<ActorId, ActorRef<ListenerMsg>>,
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
            listeners: HashMap::new(),
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
                let max = state.shared.config.limits.max_connections;
                let refusal = if !state.accepting {
                    Some(BrokerError::ShuttingDown)
                } else if state.listeners.len() >= max {
                    Some(BrokerError::TooManyConnections(max))
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
                };
                match Actor::spawn_linked(None, Listener, args, myself.get_cell()).await {
                    Ok((listener, _)) => {
                        state.listeners.insert(listener.get_id(), listener);
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
                for listener in state.listeners.values() {
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
            state.listeners.remove(&cell.get_id());
        }
        Ok(())
    }
}
