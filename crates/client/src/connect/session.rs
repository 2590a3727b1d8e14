//! The client's session: what outlives a connection.
//!
//! [`SessionCore`] owns the state every connection of the client shares: which connection is
//! current ([`Attachment`]), whether the client is attached, reconnecting or ended, the
//! subscriptions (through the [`SubscriptionRegistry`]), the outbound buffer of publishes made
//! while reconnecting, and the [`ConnectionState`] the application watches. Operations ask it for
//! the current connection; the reconnecting task ([`crate::connect::supervisor`]) moves it from one
//! state to the next. It opens no connection itself.
//!
//! Order of publishes across a reconnect: a publish made while reconnecting goes to the buffer;
//! the new connection becomes current only once the buffer is empty, so a later publish can
//! never overtake a buffered one. Acknowledged publishes still waiting for their answer when
//! a connection dropped are sent again on the new connection before the buffer (see
//! [`crate::publish::receipt`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use cassini_protocol::SessionId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::connect::attachment::{Attachment, AttachmentContext};
use crate::connect::connection_state::{ConnectionState, DisconnectReason};
use crate::connect::connector::Established;
use crate::connect::control::handle::ControlHandle;
use crate::connect::reconnect_policy::{classify, Loss, ReconnectPolicy};
use crate::error::{ConnectionError, PublishError};
use crate::publish::options::PublishOptions;
use crate::publish::outbound::{
    BufferRefusal, Buffered, OutboundBuffer, OutboundQueue, OutboundStats,
};
use crate::publish::outgoing::{prepare, Outgoing};
use crate::publish::publisher::SendError;
use crate::publish::receipt::PublishReceipt;
use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::registry::SubscriptionRegistry;
use crate::sync::lock;

/// What the session does now.
#[derive(Debug)]
enum Status {
    /// The current attachment serves every operation.
    Attached,
    /// The connection was lost and the client is getting it back.
    Reconnecting {
        /// Why the connection is down.
        reason: String,
    },
    /// The client ended for good.
    Ended {
        /// What every operation fails with from now on.
        error: ConnectionError,
    },
}

/// The current connection and what waits for the next one.
#[derive(Debug)]
struct Current {
    /// The latest connection; kept while reconnecting for its limits and session id.
    attachment: Arc<Attachment>,
    /// Attached, reconnecting or ended.
    status: Status,
    /// Publishes made while reconnecting, oldest first.
    outbound: OutboundQueue<Outgoing>,
}

/// What [`crate::Client::close`] finds.
#[derive(Debug)]
pub(crate) enum AtClose {
    /// A connection to say goodbye on (it may have just failed).
    Attached(Arc<Attachment>),
    /// No connection: the client was reconnecting.
    Reconnecting {
        /// Why the connection was down.
        reason: String,
        /// Publishes that will not be sent.
        buffered: usize,
    },
    /// The client had ended with this error.
    Ended(ConnectionError),
}

/// The session's state across connections. Shared by the [`crate::Client`] handles, every
/// [`crate::Subscription`], and the reconnecting task.
#[derive(Debug)]
pub(crate) struct SessionCore {
    /// The current connection and the outbound buffer, under one lock so that switching to a
    /// new connection and emptying the buffer are one step.
    current: Mutex<Current>,
    /// What every connection shares: the subscriptions, the closing flag, the publish settings.
    context: AttachmentContext,
    /// What the application watches.
    state: watch::Sender<ConnectionState>,
    /// Cancelled by `close` and by dropping the client: stops the reconnecting task.
    stop: CancellationToken,
    /// How to reconnect.
    reconnect: ReconnectPolicy,
    /// Connections made after a lost one (each `Reconnecting` → `Connected`).
    reconnects: AtomicU64,
}

impl SessionCore {
    /// The session of a first connection; returns the connection too, for the task that
    /// watches it.
    pub(crate) fn start(
        established: Established,
        context: AttachmentContext,
        reconnect: ReconnectPolicy,
        outbound: OutboundBuffer,
    ) -> (Arc<Self>, Arc<Attachment>) {
        let attachment = Attachment::start(established, &context);
        let welcome = attachment.link.welcome();
        let state = ConnectionState::Connected {
            session_id: welcome.session_id,
            resumed: welcome.resumed,
        };
        let core = Arc::new(Self {
            current: Mutex::new(Current {
                attachment: Arc::clone(&attachment),
                status: Status::Attached,
                outbound: OutboundQueue::new(outbound),
            }),
            context,
            state: watch::Sender::new(state),
            stop: CancellationToken::new(),
            reconnect,
            reconnects: AtomicU64::new(0),
        });
        (core, attachment)
    }

    /// What every connection shares.
    pub(crate) fn context(&self) -> &AttachmentContext {
        &self.context
    }

    /// The session's subscriptions.
    pub(crate) fn registry(&self) -> &Arc<SubscriptionRegistry> {
        &self.context.registry
    }

    /// How to reconnect.
    pub(crate) fn reconnect_policy(&self) -> ReconnectPolicy {
        self.reconnect
    }

    /// Cancelled when the reconnecting task must stop.
    pub(crate) fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }

    /// The latest connection, live or not: for limits, the session id, the broker's address.
    pub(crate) fn attachment(&self) -> Arc<Attachment> {
        Arc::clone(&lock(&self.current).attachment)
    }

    /// The current session id.
    pub(crate) fn session_id(&self) -> SessionId {
        self.attachment().link.welcome().session_id
    }

    /// Marks the client as closing; returns whether it already was.
    pub(crate) fn start_closing(&self) -> bool {
        self.context.closing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.context.closing.load(Ordering::Acquire)
    }

    /// Whether the client ended for good.
    pub(crate) fn is_ended(&self) -> bool {
        matches!(lock(&self.current).status, Status::Ended { .. })
    }

    /// The state the application sees.
    pub(crate) fn state(&self) -> ConnectionState {
        self.state.borrow().clone()
    }

    /// A receiver of every state change.
    pub(crate) fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.state.subscribe()
    }

    /// What the outbound buffer holds and has dropped.
    pub(crate) fn outbound_stats(&self) -> OutboundStats {
        lock(&self.current).outbound.stats()
    }

    /// The control stream of the current connection, for a request. While reconnecting this is
    /// [`ConnectionError::Disconnected`]: requests do not wait for the reconnect.
    pub(crate) fn control(&self) -> Result<ControlHandle, ConnectionError> {
        if self.is_closing() {
            return Err(ConnectionError::Closed);
        }
        let current = lock(&self.current);
        match &current.status {
            Status::Attached => Ok(current.attachment.control.clone()),
            Status::Reconnecting { reason } => Err(ConnectionError::Disconnected {
                reason: reconnecting(reason),
            }),
            Status::Ended { error } => Err(error.clone()),
        }
    }

    /// Why an operation cannot complete now.
    pub(crate) fn error(&self) -> ConnectionError {
        let current = lock(&self.current);
        match &current.status {
            Status::Ended { error } => error.clone(),
            _ if self.is_closing() => ConnectionError::Closed,
            Status::Reconnecting { reason } => ConnectionError::Disconnected {
                reason: reconnecting(reason),
            },
            Status::Attached => current.attachment.link.error(),
        }
    }

    /// What `close` finds: the connection to say goodbye on, or why there is none.
    pub(crate) fn at_close(&self) -> AtClose {
        let current = lock(&self.current);
        match &current.status {
            Status::Attached => AtClose::Attached(Arc::clone(&current.attachment)),
            Status::Reconnecting { reason } => AtClose::Reconnecting {
                reason: reason.clone(),
                buffered: current.outbound.stats().buffered,
            },
            Status::Ended { error } => AtClose::Ended(error.clone()),
        }
    }

    /// Validates and publishes one message: on the current connection, or into the outbound
    /// buffer while reconnecting. See [`crate::Client::publish`].
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        options: PublishOptions,
        to_session: Option<SessionId>,
    ) -> Result<(), PublishError> {
        if self.is_closing() {
            return Err(ConnectionError::Closed.into());
        }
        let (latest, live) = self.attachment_for_publish();
        let topic = latest
            .publisher
            .topic_name(topic, &latest.link.topic_limits())
            .map_err(PublishError::InvalidTopic)?;
        let outgoing = prepare(&latest.link, topic, payload, options, to_session)?;
        self.send(outgoing, live.then_some(latest)).await
    }

    /// The latest connection, and whether a publish may go straight to it: attached, and not
    /// seen to have ended. One lock, and no look at quinn's state: a publish made as the
    /// connection drops, before the client notices, is lost with it (docs/SESSIONS.md).
    fn attachment_for_publish(&self) -> (Arc<Attachment>, bool) {
        let current = lock(&self.current);
        let live =
            matches!(current.status, Status::Attached) && !current.attachment.link.noticed_dead();
        (Arc::clone(&current.attachment), live)
    }

    /// Validates and publishes one message with an acknowledgement, assigning a message id if
    /// it has none, and waits for the broker's answer, sending it again after every reconnect
    /// until then. Unbounded in time: the caller bounds it. See
    /// [`crate::Client::publish_acked`].
    pub(crate) async fn publish_acked(
        &self,
        topic: &str,
        payload: Bytes,
        mut options: PublishOptions,
        to_session: Option<SessionId>,
    ) -> Result<PublishReceipt, PublishError> {
        if self.is_closing() {
            return Err(ConnectionError::Closed.into());
        }
        let acks = &self.context.acks;
        let permit = acks.permit().await?;
        let message_id = *options.message_id.get_or_insert_with(|| acks.next_id());
        options.ack = true;
        let latest = self.attachment();
        let topic = latest
            .publisher
            .topic_name(topic, &latest.link.topic_limits())
            .map_err(PublishError::InvalidTopic)?;
        let outgoing = prepare(&latest.link, topic, payload, options, to_session)?;
        drop(latest);
        let mut pending = acks.register(message_id, &outgoing, permit)?;
        self.send(outgoing, None).await?;
        pending
            .outcome()
            .await
            .unwrap_or_else(|| Err(self.error().into()))
    }

    /// Sends a prepared publish on the current connection, or buffers it while reconnecting;
    /// first on `live`, when the caller found the connection attached. An acknowledged publish
    /// is marked with the connection it is handed to, so that a reconnect knows to send it
    /// again.
    async fn send(
        &self,
        mut outgoing: Outgoing,
        mut live: Option<Arc<Attachment>>,
    ) -> Result<(), PublishError> {
        let acks = &self.context.acks;
        loop {
            let (attachment, next) = match live.take() {
                Some(attachment) => (attachment, outgoing),
                None => match self.route(outgoing)? {
                    Some(routed) => routed,
                    None => return Ok(()),
                },
            };
            let ack = next.ack;
            if let Some(message_id) = ack {
                acks.mark_sent(message_id, attachment.id);
            }
            match attachment.publisher.send(next).await {
                Ok(()) => {
                    // Queued on a connection that may have died before its lane wrote it. If it
                    // died, the reconnect that follows may have looked for publishes to send
                    // again before this one was marked: route it again rather than wait for an
                    // acknowledgement that cannot come. A copy that did arrive is a duplicate the
                    // broker drops.
                    match ack {
                        Some(message_id)
                            if attachment.is_dead()
                                && acks.mark_unsent(message_id, attachment.id) =>
                        {
                            let Some(again) = acks.outgoing(message_id) else {
                                return Ok(());
                            };
                            outgoing = again;
                        }
                        _ => return Ok(()),
                    }
                }
                // The connection dropped under the publish: route it again, unless a reconnect
                // has sent it again already.
                Err(SendError::ConnectionGone(back)) => {
                    if let Some(message_id) = back.ack {
                        if !acks.mark_unsent(message_id, attachment.id) {
                            return Ok(());
                        }
                    }
                    outgoing = back;
                }
                Err(SendError::Failed(error)) => return Err(error.into()),
            }
        }
    }

    /// Where `outgoing` goes: the live connection to send it on, or (`None`) the outbound
    /// buffer, which took it.
    fn route(
        &self,
        outgoing: Outgoing,
    ) -> Result<Option<(Arc<Attachment>, Outgoing)>, PublishError> {
        if self.is_closing() {
            return Err(ConnectionError::Closed.into());
        }
        let mut current = lock(&self.current);
        let reason = match &current.status {
            Status::Ended { error } => return Err(error.clone().into()),
            Status::Attached if !current.attachment.is_dead() => {
                return Ok(Some((Arc::clone(&current.attachment), outgoing)));
            }
            Status::Attached => {
                // Lost, and the reconnecting task has not seen it yet: decide as it will.
                let error = current.attachment.link.error();
                if !self.will_reconnect(&error) {
                    return Err(error.into());
                }
                error.to_string()
            }
            Status::Reconnecting { reason } => reason.clone(),
        };
        match current.outbound.push(outgoing, Instant::now()) {
            Ok(()) => Ok(None),
            Err(BufferRefusal::Disabled) => Err(ConnectionError::Disconnected {
                reason: reconnecting(&reason),
            }
            .into()),
            Err(BufferRefusal::Full { capacity }) => {
                Err(PublishError::OutboundBufferFull { capacity })
            }
        }
    }

    /// Whether a connection lost with `error` will be reconnected.
    fn will_reconnect(&self, error: &ConnectionError) -> bool {
        self.reconnect.enabled && !matches!(classify(error), Loss::Final(_))
    }

    /// The connection is down: attempt `attempt` is under way or about to start.
    pub(crate) fn set_reconnecting(&self, attempt: u32, reason: String) {
        {
            let mut current = lock(&self.current);
            if matches!(current.status, Status::Ended { .. }) {
                return;
            }
            current.status = Status::Reconnecting {
                reason: reason.clone(),
            };
        }
        self.announce(ConnectionState::Reconnecting { attempt, reason });
    }

    /// Sends the buffered publishes on `attachment`, oldest first, then makes it the current
    /// connection. Fails if the connection drops meanwhile; unsent publishes stay buffered.
    pub(crate) async fn flush_and_attach(
        &self,
        attachment: &Arc<Attachment>,
    ) -> Result<(), ConnectionError> {
        let acks = &self.context.acks;
        let resend = acks.take_for_resend(attachment.id);
        let resent = resend.len();
        for (message_id, outgoing) in resend {
            if self.is_closing() {
                return Err(ConnectionError::Closed);
            }
            match attachment.publisher.send(outgoing).await {
                Ok(()) => {}
                // Still marked with this (dead) connection: the next one sends it again.
                Err(SendError::ConnectionGone(_)) => return Err(attachment.link.error()),
                Err(SendError::Failed(error)) => {
                    acks.fail(message_id, error.into());
                }
            }
        }
        if resent > 0 {
            tracing::info!(
                resent,
                "unacknowledged publishes sent again after the reconnect"
            );
        }
        let mut sent = 0usize;
        loop {
            let Buffered { item, queued_at } = {
                let mut current = lock(&self.current);
                if self.is_closing() || matches!(current.status, Status::Ended { .. }) {
                    return Err(ConnectionError::Closed);
                }
                match current.outbound.pop(Instant::now()) {
                    Some(buffered) => buffered,
                    None => {
                        current.attachment = Arc::clone(attachment);
                        current.status = Status::Attached;
                        break;
                    }
                }
            };
            if let Some(message_id) = item.ack {
                acks.mark_sent(message_id, attachment.id);
            }
            match attachment.publisher.send(item).await {
                Ok(()) => sent += 1,
                Err(SendError::ConnectionGone(item)) => {
                    if let Some(message_id) = item.ack {
                        acks.mark_unsent(message_id, attachment.id);
                    }
                    lock(&self.current)
                        .outbound
                        .push_front(Buffered { item, queued_at });
                    return Err(attachment.link.error());
                }
                Err(SendError::Failed(error)) => {
                    tracing::warn!(%error, "a buffered publish could not be sent; dropped");
                }
            }
        }
        if sent > 0 {
            tracing::info!(sent, "buffered publishes sent after the reconnect");
        }
        let welcome = attachment.link.welcome();
        self.announce(ConnectionState::Connected {
            session_id: welcome.session_id,
            resumed: welcome.resumed,
        });
        Ok(())
    }

    /// Ends the client for good: every operation fails with `error` from now on, every
    /// subscription ends, buffered publishes are dropped. Does nothing if it had ended.
    pub(crate) fn end(&self, error: ConnectionError, reason: DisconnectReason) {
        let (discarded, subscriptions_end, failure) = {
            let mut current = lock(&self.current);
            if matches!(current.status, Status::Ended { .. }) {
                return;
            }
            let subscriptions_end = SubscriptionEnd::after(&error, &reason);
            let failure = error.clone();
            current.status = Status::Ended { error };
            (current.outbound.discard_all(), subscriptions_end, failure)
        };
        self.context.acks.fail_all(|| failure.clone().into());
        if discarded > 0 {
            tracing::warn!(
                discarded,
                "buffered publishes dropped: the client will not reconnect"
            );
        }
        self.context.registry.close(subscriptions_end);
        self.announce(ConnectionState::Disconnected { reason });
    }

    /// How many times the client connected again after losing its connection.
    pub(crate) fn reconnects(&self) -> u64 {
        self.reconnects.load(Ordering::Relaxed)
    }

    /// Publishes and logs a new state.
    fn announce(&self, state: ConnectionState) {
        if state.is_connected()
            && matches!(*self.state.borrow(), ConnectionState::Reconnecting { .. })
        {
            self.reconnects.fetch_add(1, Ordering::Relaxed);
        }
        match &state {
            ConnectionState::Connected { .. } => tracing::info!(%state, "connection state"),
            ConnectionState::Reconnecting { attempt: 1, .. } => {
                tracing::warn!(%state, "connection state");
            }
            ConnectionState::Reconnecting { .. } => tracing::info!(%state, "connection state"),
            ConnectionState::Disconnected {
                reason: DisconnectReason::Closed,
            } => tracing::info!(%state, "connection state"),
            ConnectionState::Disconnected { .. } => tracing::warn!(%state, "connection state"),
        }
        self.state.send_replace(state);
    }
}

/// What an operation refused while reconnecting says.
fn reconnecting(reason: &str) -> String {
    format!("reconnecting after: {reason}")
}
