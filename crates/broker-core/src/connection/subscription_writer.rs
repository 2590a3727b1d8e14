//! One subscription's stream: the end of the hot path.
//!
//! The writer opens a unidirectional stream, sends `SubscriptionStart`, then moves batches out
//! of the subscription's queue, encodes them (`Dropped` first when the policy dropped anything)
//! and writes them in one stream write. It is the queue's only consumer. Flow control on this
//! stream only ever holds up this subscription: the queue fills and its policy applies.

use std::sync::Arc;

use bytes::BytesMut;
use cassini_protocol::codec::encode_delivery;
use cassini_protocol::{encode_frame, Dropped, ErrorCode, Frame, SubscriptionStart};
use tokio_util::sync::CancellationToken;

use crate::queue::{CloseReason, Popped, SubscriptionQueue};
use crate::router::SubscriberKey;
use crate::transport::{Connection, SendStream, TransportError};

/// Most messages taken from the queue for one stream write.
const MAX_BATCH: usize = 256;

/// Subscription streams yield to the control stream and to publish replies.
pub(crate) const SUBSCRIPTION_STREAM_PRIORITY: i32 = 0;

/// How a writer ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum WriterOutcome {
    /// Asked to stop (detach, unsubscribe, session end).
    Cancelled,
    /// The queue was closed and drained; the stream was finished.
    Ended,
    /// The queue overflowed under the `close` policy; the stream was reset.
    Overflowed,
    /// The client stopped the stream.
    StoppedByPeer(ErrorCode),
    /// The connection went away.
    ConnectionLost(String),
}

impl From<TransportError> for WriterOutcome {
    fn from(err: TransportError) -> Self {
        match err {
            TransportError::Stopped(code) => WriterOutcome::StoppedByPeer(code),
            other => WriterOutcome::ConnectionLost(other.to_string()),
        }
    }
}

/// Feeds `queue` into a new stream on `connection` until cancelled or the queue closes.
pub(crate) async fn run_subscription_writer(
    connection: Arc<dyn Connection>,
    key: SubscriberKey,
    queue: Arc<SubscriptionQueue>,
    cancel: CancellationToken,
    max_frame_bytes: u32,
) -> WriterOutcome {
    let mut stream = tokio::select! {
        _ = cancel.cancelled() => return WriterOutcome::Cancelled,
        opened = connection.open_uni() => match opened {
            Ok(stream) => stream,
            Err(err) => return err.into(),
        },
    };
    stream.set_priority(SUBSCRIPTION_STREAM_PRIORITY);
    let mut buf = BytesMut::new();
    let start = Frame::SubscriptionStart(SubscriptionStart {
        subscription: key.subscription,
    });
    if encode_frame(&start, &mut buf, max_frame_bytes).is_err() {
        return WriterOutcome::ConnectionLost("cannot encode SubscriptionStart".into());
    }
    if let Err(outcome) = write_or_cancel(stream.as_mut(), &buf, &cancel).await {
        return outcome;
    }
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        buf.clear();
        let popped = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = stream.finish();
                return WriterOutcome::Cancelled;
            }
            popped = queue.pop_batch(&mut batch, MAX_BATCH) => popped,
        };
        match popped {
            Popped::Closed(CloseReason::Ended) => {
                let _ = stream.finish();
                return WriterOutcome::Ended;
            }
            Popped::Closed(CloseReason::Overflow) => {
                stream.reset(ErrorCode::SLOW_CONSUMER);
                return WriterOutcome::Overflowed;
            }
            Popped::Batch { dropped } => {
                if dropped > 0 {
                    let frame = Frame::Dropped(Dropped { count: dropped });
                    if encode_frame(&frame, &mut buf, max_frame_bytes).is_err() {
                        tracing::error!("cannot encode a Dropped frame");
                    }
                }
                for queued in batch.drain(..) {
                    let message = &queued.message;
                    if let Err(err) = encode_delivery(
                        queued.sequence,
                        message.topic.as_str(),
                        &message.headers,
                        &message.payload,
                        &mut buf,
                        max_frame_bytes,
                    ) {
                        // The publish path bounds payloads below the frame limit, so this only
                        // happens if the two limits are configured inconsistently.
                        tracing::error!(%err, "delivery does not fit in a frame; dropped");
                    }
                }
                if let Err(outcome) = write_or_cancel(stream.as_mut(), &buf, &cancel).await {
                    return outcome;
                }
            }
        }
    }
}

async fn write_or_cancel(
    stream: &mut dyn SendStream,
    buf: &[u8],
    cancel: &CancellationToken,
) -> Result<(), WriterOutcome> {
    tokio::select! {
        _ = cancel.cancelled() => {
            // Mid-write: the stream may hold half a frame, so it is reset, not finished.
            stream.reset(ErrorCode::NORMAL);
            Err(WriterOutcome::Cancelled)
        }
        written = stream.write_all(buf) => written.map_err(WriterOutcome::from),
    }
}
