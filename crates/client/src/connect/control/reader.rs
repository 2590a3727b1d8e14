//! The control stream's receive half: matches answers to requests.

use std::sync::Arc;

use cassini_protocol::{
    ErrorCode, ErrorFrame, Frame, Ping, RequestId, Subscribed, SubscriptionEnded, Unsubscribed,
};

use crate::connect::control::handle::{Answer, ControlRequest, Expected, WeakControlHandle};
use crate::connect::control::pending::{PendingRequest, PendingRequests};
use crate::connect::framed::{decode_close_code, FrameReader, ReadFrameError};
use crate::error::SubscribeError;
use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::registry::SubscriptionRegistry;

/// Reads answers until the broker finishes the control stream or the connection ends, then
/// closes the pending table so that nobody waits for an answer that cannot come.
pub(crate) async fn run_reader(
    mut reader: FrameReader,
    pending: Arc<PendingRequests>,
    registry: Arc<SubscriptionRegistry>,
    control: WeakControlHandle,
) {
    let dispatcher = Dispatcher {
        pending: &pending,
        registry: &registry,
        control: &control,
    };
    loop {
        match reader.next().await {
            Ok(Some(frame)) => {
                if let Err(violation) = dispatcher.dispatch(frame) {
                    control
                        .link()
                        .protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &violation.reason);
                    // Only now does the waiting caller learn of it, and read the violation.
                    drop(violation.request);
                    break;
                }
            }
            Ok(None) => {
                tracing::debug!("the broker finished the control stream");
                break;
            }
            Err(ReadFrameError::Stream(error)) => {
                tracing::debug!(%error, "control stream ended");
                break;
            }
            Err(ReadFrameError::Decode(error)) => {
                let reason = format!("undecodable frame on the control stream: {error}");
                control
                    .link()
                    .protocol_violation(decode_close_code(&error), &reason);
                break;
            }
        }
    }
    pending.close();
}

/// A frame the broker should not have sent.
struct Violation {
    /// What was wrong.
    reason: String,
    /// The request it claimed to answer, dropped only after the violation is recorded.
    request: Option<PendingRequest>,
}

impl Violation {
    fn wrong_answer(answer: &str, request: PendingRequest) -> Self {
        Self {
            reason: format!("{answer} answers a {} request", request.expected.name()),
            request: Some(request),
        }
    }
}

/// Applies one frame from the broker.
struct Dispatcher<'a> {
    /// Requests waiting for answers.
    pending: &'a PendingRequests,
    /// Where confirmed subscriptions wait for their streams.
    registry: &'a SubscriptionRegistry,
    /// For unsubscribing abandoned subscriptions, and the connection.
    control: &'a WeakControlHandle,
}

impl Dispatcher<'_> {
    /// Applies `frame`, or says why it breaks the protocol.
    fn dispatch(&self, frame: Frame) -> Result<(), Violation> {
        match frame {
            Frame::Subscribed(Subscribed {
                request_id,
                subscription,
            }) => {
                let Some(request) = self.answered(request_id, "Subscribed") else {
                    return Ok(());
                };
                let PendingRequest {
                    expected: Expected::Subscribed(sink),
                    reply,
                } = request
                else {
                    return Err(Violation::wrong_answer("Subscribed", request));
                };
                self.registry.register(subscription, sink);
                let delivered = reply
                    .is_some_and(|reply| reply.send(Ok(Answer::Subscribed(subscription))).is_ok());
                if !delivered {
                    // Whoever subscribed stopped waiting: end the subscription again.
                    self.unsubscribe_in_background(subscription);
                }
            }
            Frame::Unsubscribed(Unsubscribed { request_id, .. }) => {
                let Some(request) = self.answered(request_id, "Unsubscribed") else {
                    return Ok(());
                };
                let Expected::Unsubscribed(subscription) = request.expected else {
                    return Err(Violation::wrong_answer("Unsubscribed", request));
                };
                self.registry.unsubscribe_confirmed(subscription);
                reply(request, Ok(Answer::Unsubscribed));
            }
            Frame::Pong(Ping { nonce }) => {
                let Some(request) = self.answered(nonce, "Pong") else {
                    return Ok(());
                };
                if !matches!(request.expected, Expected::Pong) {
                    return Err(Violation::wrong_answer("Pong", request));
                }
                reply(request, Ok(Answer::Pong));
            }
            Frame::Error(ErrorFrame {
                request_id: Some(request_id),
                code,
                reason,
            }) => {
                if let Some(request) = self.answered(request_id, "Error") {
                    if let Expected::Unsubscribed(subscription) = request.expected {
                        // The broker does not have it (any more): nothing left to end.
                        self.registry.unsubscribe_confirmed(subscription);
                    }
                    reply(request, Err(SubscribeError::Refused { code, reason }));
                }
            }
            Frame::Error(ErrorFrame {
                request_id: None,
                code,
                reason,
            }) => {
                tracing::warn!(?code, %reason, "the broker reports a connection error");
            }
            Frame::SubscriptionEnded(SubscriptionEnded {
                subscription,
                code,
                reason,
            }) => {
                tracing::info!(subscription, ?code, %reason, "the broker ended a subscription");
                let end = match code {
                    ErrorCode::SLOW_CONSUMER => SubscriptionEnd::SlowConsumer,
                    other => SubscriptionEnd::Reset(other),
                };
                self.registry.ended_by_broker(subscription, end);
            }
            Frame::GoingAway(going_away) => {
                tracing::warn!(
                    reason = %going_away.reason,
                    reconnect_after_ms = going_away.reconnect_after_ms,
                    "the broker is going away"
                );
                self.control.link().set_going_away(going_away);
            }
            other => {
                return Err(Violation {
                    reason: format!("{} frame on the control stream", other.kind()),
                    request: None,
                })
            }
        }
        Ok(())
    }

    /// The pending request an answer names. An unknown id is logged and ignored: the request
    /// may have been abandoned.
    fn answered(&self, id: RequestId, answer: &str) -> Option<PendingRequest> {
        let request = self.pending.take(id);
        if request.is_none() {
            tracing::warn!(
                request_id = id,
                answer,
                "answer to an unknown request ignored"
            );
        }
        request
    }

    fn unsubscribe_in_background(&self, subscription: u64) {
        if let Some(control) = self.control.upgrade() {
            control.request_in_background(ControlRequest::Unsubscribe { subscription });
        }
    }
}

fn reply(request: PendingRequest, result: Result<Answer, SubscribeError>) {
    if let Some(reply) = request.reply {
        let _ = reply.send(result);
    }
}
