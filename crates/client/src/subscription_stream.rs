//! Subscription streams: the broker opens one unidirectional stream per subscription.
//!
//! One task accepts the streams for the whole connection and, when the connection ends, closes
//! the [`SubscriptionRegistry`]. Each stream gets its own task: it reads `SubscriptionStart`,
//! claims the subscription's channel from the registry (waiting up to
//! [`START_DEADLINE`] for the `Subscribed` answer if the stream came first), then moves
//! `Message`s into the channel and adds up `Dropped` counts. When the channel is full the task
//! waits before reading more, so flow control holds up this subscription's stream only. When the
//! stream ends, the task records why on the subscription and closes the channel.

use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::{Dropped, ErrorCode, Frame, SubscriptionId};
use tokio::time::{timeout_at, Instant};

use crate::disconnect::error_code;
use crate::framed::{decode_close_code, FrameReader, ReadFrameError};
use crate::link::Link;
use crate::message::Message;
use crate::registry::{ClaimError, SubscriptionRegistry};
use crate::subscription::{SubscriptionEnd, SubscriptionSink};

/// How long a new stream may take to name its subscription and for that subscription to be
/// confirmed on the control stream. A stream still unknown then is stopped.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts subscription streams until the connection ends, then ends every subscription that
/// never got its stream.
pub(crate) async fn accept_streams(link: Arc<Link>, registry: Arc<SubscriptionRegistry>) {
    loop {
        match link.connection().accept_uni().await {
            Ok(stream) => {
                tokio::spawn(read_stream(
                    stream,
                    Arc::clone(&registry),
                    Arc::clone(&link),
                ));
            }
            Err(error) => {
                if link.is_closing() {
                    tracing::debug!(%error, "connection closed");
                } else {
                    tracing::warn!(error = %link.error(), "connection to the broker ended");
                }
                registry.close(SubscriptionEnd::connection_ended(&link));
                return;
            }
        }
    }
}

/// Serves one subscription stream from its first frame to its end.
async fn read_stream(
    stream: quinn::RecvStream,
    registry: Arc<SubscriptionRegistry>,
    link: Arc<Link>,
) {
    let mut reader = FrameReader::new(stream, link.max_frame_bytes());
    let deadline = Instant::now() + START_DEADLINE;
    let Some(id) = read_start(&mut reader, deadline, &link).await else {
        return;
    };
    let sink = match registry.claim(id, deadline).await {
        Ok(sink) => sink,
        Err(ClaimError::TimedOut) => {
            tracing::warn!(
                subscription = id,
                "stream for a subscription this client does not know; stopping it"
            );
            reader.stop(ErrorCode::UNKNOWN_SUBSCRIPTION);
            return;
        }
        Err(ClaimError::Closed) => return,
    };
    let end = deliver(&mut reader, &sink, &link).await;
    tracing::debug!(subscription = id, ?end, "subscription stream ended");
    sink.finish(end);
}

/// The subscription a new stream names in its first frame, or `None` if it names none in time.
async fn read_start(
    reader: &mut FrameReader,
    deadline: Instant,
    link: &Link,
) -> Option<SubscriptionId> {
    match timeout_at(deadline, reader.next()).await {
        Ok(Ok(Some(Frame::SubscriptionStart(start)))) => Some(start.subscription),
        Ok(Ok(Some(other))) => {
            let reason = format!(
                "a subscription stream began with {} instead of SubscriptionStart",
                other.kind()
            );
            link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
            None
        }
        Ok(Ok(None)) => None,
        Ok(Err(error)) => {
            stream_failed(error, link);
            None
        }
        Err(_) => {
            tracing::warn!("a subscription stream named no subscription in time; stopping it");
            reader.stop(ErrorCode::PROTOCOL_VIOLATION);
            None
        }
    }
}

/// Moves deliveries into the subscription's channel until the stream ends; returns why.
async fn deliver(
    reader: &mut FrameReader,
    sink: &SubscriptionSink,
    link: &Link,
) -> SubscriptionEnd {
    loop {
        let frame = tokio::select! {
            biased;
            () = sink.sender.closed() => {
                // The application dropped the subscription: nobody will read more.
                reader.stop(ErrorCode::NORMAL);
                return SubscriptionEnd::Unsubscribed;
            }
            frame = reader.next() => frame,
        };
        match frame {
            Ok(Some(Frame::Message(delivery))) => {
                // Waits while the channel is full: this is where backpressure starts.
                if sink.sender.send(Message::from(delivery)).await.is_err() {
                    reader.stop(ErrorCode::NORMAL);
                    return SubscriptionEnd::Unsubscribed;
                }
            }
            Ok(Some(Frame::Dropped(Dropped { count }))) => sink.state.add_dropped(count),
            Ok(Some(other)) => {
                let reason = format!("{} frame on a subscription stream", other.kind());
                link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
                return SubscriptionEnd::ProtocolError { reason };
            }
            Ok(None) => return ended_cleanly(sink, link),
            Err(ReadFrameError::Stream(quinn::ReadError::Reset(code))) => {
                return match error_code(code) {
                    ErrorCode::SLOW_CONSUMER => SubscriptionEnd::SlowConsumer,
                    ErrorCode::NORMAL => ended_cleanly(sink, link),
                    other => SubscriptionEnd::Reset(other),
                };
            }
            Err(error) => return stream_failed(error, link),
        }
    }
}

/// The end of a stream the broker finished (or reset with `NORMAL`).
fn ended_cleanly(sink: &SubscriptionSink, link: &Link) -> SubscriptionEnd {
    if sink.state.is_unsubscribing() {
        SubscriptionEnd::Unsubscribed
    } else if link.is_closing() {
        SubscriptionEnd::Closed
    } else {
        SubscriptionEnd::EndedByBroker
    }
}

/// The end of a stream that could not be read.
fn stream_failed(error: ReadFrameError, link: &Link) -> SubscriptionEnd {
    match error {
        ReadFrameError::Decode(error) => {
            let reason = format!("undecodable frame on a subscription stream: {error}");
            link.protocol_violation(decode_close_code(&error), &reason);
            SubscriptionEnd::ProtocolError { reason }
        }
        ReadFrameError::Stream(quinn::ReadError::ConnectionLost(_)) => {
            SubscriptionEnd::connection_ended(link)
        }
        ReadFrameError::Stream(quinn::ReadError::Reset(code)) => {
            SubscriptionEnd::Reset(error_code(code))
        }
        ReadFrameError::Stream(other) => SubscriptionEnd::ConnectionLost {
            reason: other.to_string(),
        },
    }
}
