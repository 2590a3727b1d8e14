//! One subscription's stream: the end of the hot path.
//!
//! The writer begins a new attachment of the subscription's queue (so an older writer gets
//! nothing more), opens a unidirectional stream, sends `SubscriptionStart`, then moves batches
//! out of the queue, encodes them (a `Gap` before any sequence the client will never get, see
//! [`GapAnnouncer`]) and writes each batch in one stream write, handing the encoded batch to the
//! transport as a chunk it may keep (quinn does) rather than copy. It is the queue's only
//! consumer. Flow control on this stream only ever holds up this subscription: the queue fills
//! and its policy applies.
//!
//! A datagram subscription's client counts a datagram as lost when a later sequence arrives
//! before it. So that the last ones sent before a pause are counted too, the writer follows
//! every run of datagrams, once nothing more was sent for [`DATAGRAMS_SENT_AFTER`], with a
//! `DatagramsSent` frame on the stream naming the highest sequence sent.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{encode_datagram, encode_delivery, DeliveryRef};
use cassini_protocol::{
    encode_frame, DatagramsSent, DeliveryClass, ErrorCode, Frame, Gap, GapReason, OversizeRule,
    SubscriptionEnded, SubscriptionStart,
};
use tokio_util::sync::CancellationToken;

use crate::connection::gaps::GapAnnouncer;
use crate::log_budget::{LogBudget, DEFAULT_LINES_PER_SECOND};
use crate::queue::{CloseReason, Popped, SubscriptionQueue};
use crate::router::SubscriberKey;
use crate::transport::{Connection, SendStream, TransportError};

/// Where a subscription's writer reports that the broker ended the subscription, for the
/// session to announce on its connection's control stream with `SubscriptionEnded` (a stream
/// reset alone may overtake the stream's `SubscriptionStart`, leaving the client unable to tell
/// which subscription ended). The session actor provides it; the writer only calls it.
#[derive(Clone)]
pub(crate) struct EndNotices(Arc<dyn Fn(SubscriptionEnded) + Send + Sync>);

impl EndNotices {
    /// Notices that go to `report`.
    pub(crate) fn new(report: impl Fn(SubscriptionEnded) + Send + Sync + 'static) -> Self {
        Self(Arc::new(report))
    }

    /// Reports `notice`.
    pub(crate) fn announce(&self, notice: SubscriptionEnded) {
        (self.0)(notice);
    }
}

/// Most messages taken from the queue for one stream write.
const MAX_BATCH: usize = 256;

/// How long opening a subscription's stream may wait for the client to allow one more
/// unidirectional stream. A client that allows fewer streams than it has subscriptions would
/// otherwise never get the later ones' streams, silently; past this, the subscription ends
/// with `STREAM_LIMIT`, announced on the control stream.
pub(crate) const STREAM_OPEN_DEADLINE: Duration = Duration::from_secs(5);

/// How long a datagram subscription sends nothing before the writer says, with `DatagramsSent`
/// on the stream, how far it has sent. Long enough that the stream frame does not overtake the
/// last datagram on the way (a late datagram still counts as received), short enough that a
/// loss on a quiet topic is counted promptly.
pub(crate) const DATAGRAMS_SENT_AFTER: Duration = Duration::from_millis(50);

/// How long a cancelled writer may finish the write it started before the stream is reset.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Bulk subscription streams yield to the control stream and to reply inboxes.
pub(crate) const SUBSCRIPTION_STREAM_PRIORITY: i32 = 0;

/// Reply inboxes (filters under `_INBOX.`) go ahead of bulk subscriptions, so request/reply
/// latency does not suffer from a busy subscription on the same connection.
pub(crate) const INBOX_STREAM_PRIORITY: i32 = 50;

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
    /// The client allowed no stream for the subscription within [`STREAM_OPEN_DEADLINE`].
    NoStream,
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

/// How a subscription's writer sends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WriterSettings {
    /// The largest frame the connection accepts.
    pub(crate) max_frame_bytes: u32,
    /// The stream's send priority.
    pub(crate) priority: i32,
    /// Stream or datagrams.
    pub(crate) delivery: DeliveryClass,
}

/// Feeds `queue` into a new stream on `connection` until cancelled or the queue closes.
/// `last_received` is where the client says it stands in this subscription, if it said. A
/// datagram subscription sends each delivery in a QUIC datagram of its own; its stream carries
/// the gaps, and messages too large for a datagram when its oversize rule says so.
pub(crate) async fn run_subscription_writer(
    connection: Arc<dyn Connection>,
    key: SubscriberKey,
    queue: Arc<SubscriptionQueue>,
    cancel: CancellationToken,
    settings: WriterSettings,
    last_received: Option<u64>,
    notices: EndNotices,
) -> WriterOutcome {
    let WriterSettings {
        max_frame_bytes,
        priority,
        delivery: class,
    } = settings;
    let attachment = queue.attach(last_received);
    let mut gaps = GapAnnouncer::new(key.subscription, &attachment);
    gaps.lost_on_route(queue.take_route_lost());
    let mut stream = tokio::select! {
        _ = cancel.cancelled() => return WriterOutcome::Cancelled,
        opened = tokio::time::timeout(STREAM_OPEN_DEADLINE, connection.open_uni()) => match opened {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return err.into(),
            Err(_) => {
                static NO_STREAMS: LogBudget = LogBudget::new(DEFAULT_LINES_PER_SECOND);
                if let Some(suppressed) = NO_STREAMS.admit() {
                    tracing::warn!(subscription = key.subscription, suppressed, "the client allows no more unidirectional streams; ending the subscription");
                }
                announce_end(
                    &notices,
                    key,
                    ErrorCode::STREAM_LIMIT,
                    "the client allows no more unidirectional streams: allow one per subscription",
                );
                return WriterOutcome::NoStream;
            }
        },
    };
    stream.set_priority(priority);
    let mut buf = BytesMut::new();
    let start = Frame::SubscriptionStart(SubscriptionStart {
        subscription: key.subscription,
    });
    if encode_frame(&start, &mut buf, max_frame_bytes).is_err() {
        return WriterOutcome::ConnectionLost("cannot encode SubscriptionStart".into());
    }
    // What the client can already be told it will never get goes with the start, even if no
    // message follows for a long time.
    encode_gaps(
        &gaps.through(attachment.lost_through),
        &mut buf,
        max_frame_bytes,
    );
    if let Err(outcome) = write_or_cancel(stream.as_mut(), buf.split().freeze(), &cancel).await {
        return outcome;
    }
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // How large the last batch was: room for as much is made before encoding the next, once,
    // instead of growing `buf` frame by frame after a chunk was split off it.
    let mut last_batch_bytes = 0;
    // A datagram subscription's highest sequence sent since the last `DatagramsSent`, and when
    // to announce it if nothing more is sent before then.
    let mut unannounced: Option<(u64, tokio::time::Instant)> = None;
    loop {
        buf.clear();
        let popped = tokio::select! {
            _ = cancel.cancelled() => {
                let _ = stream.finish();
                return WriterOutcome::Cancelled;
            }
            popped = queue.pop_batch(&attachment, &mut batch, MAX_BATCH) => popped,
            () = sleep_until_announced(unannounced) => {
                if let Some((through, _)) = unannounced.take() {
                    let sent = Frame::DatagramsSent(DatagramsSent {
                        subscription: key.subscription,
                        through,
                    });
                    if encode_frame(&sent, &mut buf, max_frame_bytes).is_ok() {
                        let chunk = buf.split().freeze();
                        if let Err(outcome) = write_or_cancel(stream.as_mut(), chunk, &cancel).await {
                            return outcome;
                        }
                    }
                }
                continue;
            }
        };
        match popped {
            Popped::Superseded => {
                let _ = stream.finish();
                return WriterOutcome::Cancelled;
            }
            Popped::Closed(CloseReason::Ended) => {
                let _ = stream.finish();
                return WriterOutcome::Ended;
            }
            Popped::Closed(CloseReason::Overflow) => {
                announce_end(
                    &notices,
                    key,
                    ErrorCode::SLOW_CONSUMER,
                    "the subscription's queue overflowed under the Close policy",
                );
                stream.reset(ErrorCode::SLOW_CONSUMER);
                return WriterOutcome::Overflowed;
            }
            Popped::Closed(CloseReason::NotAuthorized) => {
                announce_end(
                    &notices,
                    key,
                    ErrorCode::NOT_AUTHORIZED,
                    "the ACL no longer allows the subscription",
                );
                stream.reset(ErrorCode::NOT_AUTHORIZED);
                return WriterOutcome::Ended;
            }
            Popped::Batch {
                last_sequence,
                drained,
                ..
            } => {
                gaps.lost_on_route(queue.take_route_lost());
                // Counted in the queue's bound until written; the messages themselves are
                // kept (so their memory charge stays) until the write completes.
                let _unwritten = queue.writing(&batch);
                // Not raced against `cancel`: the wait ends with the commit that follows the
                // one in progress (or with a failed or closed store), and a batch taken out of
                // the queue is sent, not dropped.
                if !queue.until_durable().await {
                    // Another node owns the session: it sends this batch (the records hold
                    // it), this copy nothing.
                    cancel.cancelled().await;
                    return WriterOutcome::Cancelled;
                }
                buf.reserve(last_batch_bytes);
                let mut highest_sent = None;
                let mut sent_a_datagram = false;
                for queued in &batch {
                    highest_sent = Some(queued.sequence);
                    if !queued.redelivered {
                        encode_gaps(&gaps.before(queued.sequence), &mut buf, max_frame_bytes);
                    }
                    let delivery = queued
                        .message
                        .as_delivery(queued.sequence, queued.redelivered);
                    if let DeliveryClass::Datagram { oversize } = class {
                        match send_datagram(connection.as_ref(), key, &delivery, max_frame_bytes) {
                            Ok(true) => {
                                sent_a_datagram = true;
                                continue;
                            }
                            Ok(false) if oversize == OversizeRule::Drop => {
                                let gap = Gap {
                                    subscription: key.subscription,
                                    from: queued.sequence,
                                    to: queued.sequence,
                                    reason: GapReason::TooLargeForDatagram,
                                };
                                encode_gaps(&[gap], &mut buf, max_frame_bytes);
                                continue;
                            }
                            Ok(false) => {}
                            Err(err) => return err.into(),
                        }
                    }
                    if let Err(err) = encode_delivery(&delivery, &mut buf, max_frame_bytes) {
                        // The publish path bounds payloads below the frame limit, so this only
                        // happens if the two limits are configured inconsistently.
                        tracing::error!(%err, "delivery does not fit in a frame; dropped");
                    }
                }
                if drained {
                    encode_gaps(&gaps.through(last_sequence), &mut buf, max_frame_bytes);
                }
                if let (true, Some(through)) = (sent_a_datagram, highest_sent) {
                    let announce_at = tokio::time::Instant::now() + DATAGRAMS_SENT_AFTER;
                    unannounced = Some((through, announce_at));
                }
                if buf.is_empty() {
                    batch.clear();
                    continue;
                }
                // The batch leaves as a chunk of `buf`'s allocation; `buf` keeps the room after
                // it, and gets the whole allocation back once the transport has let go of it.
                last_batch_bytes = buf.len();
                let chunk = buf.split().freeze();
                if let Err(outcome) = write_or_cancel(stream.as_mut(), chunk, &cancel).await {
                    return outcome;
                }
                batch.clear();
            }
        }
    }
}

/// Completes when a datagram subscription's `DatagramsSent` is due; never without one due.
async fn sleep_until_announced(unannounced: Option<(u64, tokio::time::Instant)>) {
    match unannounced {
        Some((_, at)) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Tells the connection's control stream that the broker ended the subscription, and why.
fn announce_end(notices: &EndNotices, key: SubscriberKey, code: ErrorCode, reason: &str) {
    notices.announce(SubscriptionEnded {
        subscription: key.subscription,
        code,
        reason: reason.to_owned(),
    });
}

/// Sends one delivery as a datagram; `Ok(false)` when it is larger than the connection's
/// datagram size (the caller applies the oversize rule).
fn send_datagram(
    connection: &dyn Connection,
    key: SubscriberKey,
    delivery: &DeliveryRef<'_>,
    max_frame_bytes: u32,
) -> Result<bool, TransportError> {
    let Some(max) = connection.max_datagram_size() else {
        return Ok(false);
    };
    let mut datagram = BytesMut::new();
    if encode_datagram(key.subscription, delivery, &mut datagram, max_frame_bytes).is_err()
        || datagram.len() > max
    {
        return Ok(false);
    }
    match connection.send_datagram(datagram.freeze()) {
        Ok(()) => Ok(true),
        Err(TransportError::DatagramTooLarge) => Ok(false),
        Err(err) => Err(err),
    }
}

fn encode_gaps(gaps: &[Gap], buf: &mut BytesMut, max_frame_bytes: u32) {
    for gap in gaps {
        if encode_frame(&Frame::Gap(*gap), buf, max_frame_bytes).is_err() {
            tracing::error!("cannot encode a Gap frame");
        }
    }
}

/// The largest batch handed to the transport to keep rather than copied (see
/// [`write_or_cancel`]).
const KEPT_CHUNK_BYTES: usize = 64 * 1024;

async fn write_or_cancel(
    stream: &mut dyn SendStream,
    chunk: Bytes,
    cancel: &CancellationToken,
) -> Result<(), WriterOutcome> {
    let completed = {
        // A small batch goes as a chunk the transport keeps (no copy: the cost that matters
        // for small messages); a large one is copied, so the writer's buffer is reused at once
        // instead of another of that size being made while the transport holds the first.
        let copied;
        let write = if chunk.len() <= KEPT_CHUNK_BYTES {
            stream.write_chunk(chunk)
        } else {
            copied = chunk;
            stream.write_all(&copied)
        };
        tokio::pin!(write);
        tokio::select! {
            written = &mut write => return written.map_err(WriterOutcome::from),
            // These messages already left the queue: give the write a moment to complete so
            // they are delivered, and only then end the stream.
            _ = cancel.cancelled() => matches!(
                tokio::time::timeout(CANCEL_GRACE, &mut write).await,
                Ok(Ok(()))
            ),
        }
    };
    if completed {
        let _ = stream.finish();
    } else {
        // Mid-frame: the stream may hold half a frame, so it is reset, not finished.
        stream.reset(ErrorCode::NORMAL);
    }
    Err(WriterOutcome::Cancelled)
}
