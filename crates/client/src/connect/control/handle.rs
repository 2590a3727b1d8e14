//! [`ControlHandle`]: what the rest of the client uses to make a request on the control stream,
//! and the requests, answers and commands the writer and reader tasks pass along.

use std::sync::Arc;

use cassini_protocol::{Ack, Frame, Ping, RequestId, Subscribe, SubscriptionId, Unsubscribe};
use tokio::sync::{mpsc, oneshot};

use crate::connect::link::Link;
use crate::error::{ConnectionError, SubscribeError};
use crate::subscribe::sink::SubscriptionSink;

/// Commands waiting for the writer. Requests are small and each caller waits for its answer, so
/// a short queue is enough; a full queue makes callers wait.
pub(crate) const COMMAND_QUEUE: usize = 64;

/// A control request, before the writer gives it an id.
#[derive(Debug)]
pub(crate) enum ControlRequest {
    /// Start a subscription whose messages go to `sink`, with the sink's filter and options.
    Subscribe {
        /// Registered for the subscription's stream once the broker answers `Subscribed`.
        sink: Arc<SubscriptionSink>,
    },
    /// End a subscription.
    Unsubscribe {
        /// The subscription to end.
        subscription: SubscriptionId,
    },
    /// Measure a round trip.
    Ping,
}

/// What kind of answer a pending request expects, and what it carries until then.
#[derive(Debug)]
pub(crate) enum Expected {
    /// `Subscribed` (or `Error`); the sink is registered when it arrives.
    Subscribed(Arc<SubscriptionSink>),
    /// `Unsubscribed` (or `Error`) for this subscription.
    Unsubscribed(SubscriptionId),
    /// `Pong` with the request id as nonce.
    Pong,
}

impl Expected {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Expected::Subscribed(_) => "Subscribe",
            Expected::Unsubscribed(_) => "Unsubscribe",
            Expected::Pong => "Ping",
        }
    }
}

impl ControlRequest {
    /// The request's frame with id `id`, and what its answer will be.
    pub(crate) fn into_frame(self, id: RequestId) -> (Frame, Expected) {
        match self {
            ControlRequest::Subscribe { sink } => (
                Frame::Subscribe(Subscribe {
                    request_id: id,
                    filter: sink.filter.clone(),
                    options: sink.options.clone(),
                }),
                Expected::Subscribed(sink),
            ),
            ControlRequest::Unsubscribe { subscription } => (
                Frame::Unsubscribe(Unsubscribe {
                    request_id: id,
                    subscription,
                }),
                Expected::Unsubscribed(subscription),
            ),
            ControlRequest::Ping => (Frame::Ping(Ping { nonce: id }), Expected::Pong),
        }
    }
}

/// A successful answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The subscription was created with this id.
    Subscribed(SubscriptionId),
    /// The subscription was ended.
    Unsubscribed,
    /// The ping came back.
    Pong,
}

/// Where the answer to one request goes.
pub(crate) type Reply = oneshot::Sender<Result<Answer, SubscribeError>>;

/// One unit of work for the writer.
#[derive(Debug)]
pub(crate) enum ControlCommand {
    /// Send a request; answer on `reply` if there is one.
    Request {
        /// The request.
        request: ControlRequest,
        /// `None` for fire-and-forget requests (unsubscribe on drop).
        reply: Option<Reply>,
    },
    /// Send an acknowledgement of deliveries; nothing answers it.
    Ack(Ack),
    /// Finish the control stream (the goodbye), then signal `done`.
    Goodbye {
        /// Completed once the stream is finished.
        done: oneshot::Sender<()>,
    },
}

/// Sends control requests and waits for their answers. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct ControlHandle {
    /// The writer's queue.
    commands: mpsc::Sender<ControlCommand>,
    /// Why the connection failed, when the writer or reader is gone.
    link: Arc<Link>,
}

/// A [`ControlHandle`] that does not keep the writer alive: held by the reader task, which
/// needs one only to unsubscribe subscriptions nobody waits for any more.
#[derive(Debug, Clone)]
pub(crate) struct WeakControlHandle {
    /// The writer's queue, without keeping it open.
    commands: mpsc::WeakSender<ControlCommand>,
    /// The connection, for recording violations and `GoingAway`.
    link: Arc<Link>,
}

impl WeakControlHandle {
    pub(crate) fn link(&self) -> &Arc<Link> {
        &self.link
    }

    pub(crate) fn upgrade(&self) -> Option<ControlHandle> {
        Some(ControlHandle {
            commands: self.commands.upgrade()?,
            link: Arc::clone(&self.link),
        })
    }
}

impl ControlHandle {
    pub(crate) fn new(commands: mpsc::Sender<ControlCommand>, link: Arc<Link>) -> Self {
        Self { commands, link }
    }

    pub(crate) fn downgrade(&self) -> WeakControlHandle {
        WeakControlHandle {
            commands: self.commands.downgrade(),
            link: Arc::clone(&self.link),
        }
    }

    /// Subscribes to the sink's filter with its options; the subscription's messages will go
    /// to `sink`.
    pub(crate) async fn subscribe(
        &self,
        sink: Arc<SubscriptionSink>,
    ) -> Result<SubscriptionId, SubscribeError> {
        match self.request(ControlRequest::Subscribe { sink }).await? {
            Answer::Subscribed(id) => Ok(id),
            other => Err(mismatch(other)),
        }
    }

    /// Ends subscription `subscription` and waits for the broker's answer.
    pub(crate) async fn unsubscribe(
        &self,
        subscription: SubscriptionId,
    ) -> Result<(), SubscribeError> {
        match self
            .request(ControlRequest::Unsubscribe { subscription })
            .await?
        {
            Answer::Unsubscribed => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    /// One round trip on the control stream.
    pub(crate) async fn ping(&self) -> Result<(), SubscribeError> {
        match self.request(ControlRequest::Ping).await? {
            Answer::Pong => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    /// Queues `request` without waiting for its answer. Never blocks: when the queue is full the
    /// request is queued by a separate task.
    pub(crate) fn request_in_background(&self, request: ControlRequest) {
        let command = ControlCommand::Request {
            request,
            reply: None,
        };
        match self.commands.try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(command)) => {
                let commands = self.commands.clone();
                if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                    runtime.spawn(async move {
                        let _ = commands.send(command).await;
                    });
                }
            }
        }
    }

    /// Queues an acknowledgement without waiting; `false` if it could not be queued now (the
    /// queue is full or the connection is gone), so the caller keeps it for later.
    pub(crate) fn send_ack(&self, ack: &Ack) -> bool {
        self.commands
            .try_send(ControlCommand::Ack(ack.clone()))
            .is_ok()
    }

    /// Finishes the control stream after every request queued before it was written: the
    /// broker takes the end of the control stream as this client's goodbye.
    pub(crate) async fn goodbye(&self) -> Result<(), ConnectionError> {
        let (done, finished) = oneshot::channel();
        self.commands
            .send(ControlCommand::Goodbye { done })
            .await
            .map_err(|_| self.link.error())?;
        finished.await.map_err(|_| self.link.error())
    }

    /// Makes `request` and waits for its answer. Control requests fail as a [`SubscribeError`]:
    /// refused by the broker, or the connection's error.
    async fn request(&self, request: ControlRequest) -> Result<Answer, SubscribeError> {
        let (reply, answer) = oneshot::channel();
        let command = ControlCommand::Request {
            request,
            reply: Some(reply),
        };
        self.commands
            .send(command)
            .await
            .map_err(|_| self.link.error())?;
        answer
            .await
            .map_err(|_| SubscribeError::from(self.link.error()))?
    }
}

/// The reader checks each answer against its request, so this does not happen; if it did, it
/// would be a protocol error.
fn mismatch(answer: Answer) -> SubscribeError {
    SubscribeError::Connection(ConnectionError::Protocol {
        reason: format!("unexpected answer {answer:?}"),
    })
}
