//! What the broker sends a subscription: its stream, or its datagrams.
//!
//! Subscription streams: the broker opens one unidirectional stream per subscription.
//!
//! One task accepts the streams for the whole connection. Each stream gets its own task: it reads
//! `SubscriptionStart`, claims the subscription from the [`SubscriptionRegistry`] (waiting up to
//! [`START_DEADLINE`] for the `Subscribed` answer if the stream came first, and for the previous
//! connection's reader to let go after a resume), then moves `Message`s into the subscription's
//! channel, each marked with the subscription's epoch, together with the broker's `Gap`
//! announcements (adding up the overflow ones) and `DatagramsSent` marks, and records the highest sequence read, where the
//! client stands if it resumes the session. What one read of the stream yields goes into the
//! channel as one batch (at most [`DELIVER_BATCH`]), with one wait for room. When the channel is
//! full the task waits before reading more, so flow control holds up this subscription's stream
//! only. When the stream ends, the task
//! records why on the subscription and closes the channel; when the connection is lost instead, it
//! releases the subscription for the next connection (the session decides whether there is one).
//!
//! QUIC datagrams: deliveries of datagram subscriptions.
//!
//! One task per connection reads the broker's datagrams. Each holds one `Datagram` frame for
//! one subscription; the task hands its message to that subscription's channel if there is room
//! now, and otherwise drops it: a datagram subscription prefers the newest data, and a message
//! dropped here shows as lost like one the network lost. A datagram that does not decode, or
//! holds another frame, closes the connection as a protocol violation. No datagram waits.

use std::sync::Arc;
use std::time::Duration;

use cassini_protocol::codec::DecodedInto;
use cassini_protocol::decode_frame;
use cassini_protocol::{Delivery, ErrorCode, Frame, GapReason, SubscriptionId};
use tokio::time::{timeout_at, Instant};

use crate::connect::disconnect::error_code;
use crate::connect::framed::{decode_close_code, FrameReader, ReadFrameError};
use crate::connect::link::Link;
use crate::message::Message;
use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::registry::{ClaimError, ClaimedSink, SubscriptionRegistry};
use crate::subscribe::sink::{Delivered, StreamItem};

/// How long a new stream may take to name its subscription and for that subscription to be
/// confirmed on the control stream. A stream still unknown then is stopped.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(10);

/// Accepts subscription streams until the connection ends.
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
                // The session logs what the end means (reconnecting, or the client's end).
                tracing::debug!(%error, "connection ended; no more subscription streams");
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
    // A subscription of the resumed session that the application has not taken up yet waits
    // with no deadline, but no longer than its connection.
    let claimed = tokio::select! {
        claimed = registry.claim(id, deadline) => claimed,
        _ = link.connection().closed() => return,
    };
    let sink = match claimed {
        Ok(sink) => sink,
        Err(ClaimError::TimedOut) => {
            tracing::warn!(
                subscription = id,
                "stream for a subscription this client does not know; stopping it"
            );
            reader.stop(ErrorCode::UNKNOWN_SUBSCRIPTION);
            return;
        }
        Err(ClaimError::Abandoned) => {
            tracing::debug!(
                subscription = id,
                "stream for a subscription this client ended; stopping it"
            );
            reader.stop(ErrorCode::NORMAL);
            return;
        }
        Err(ClaimError::Closed) => return,
    };
    match deliver(&mut reader, &sink, &link).await {
        StreamOutcome::Ended(end) => {
            tracing::debug!(subscription = id, ?end, "subscription stream ended");
            sink.finish(end);
        }
        StreamOutcome::ConnectionLost => {
            tracing::debug!(
                subscription = id,
                "subscription stream lost with the connection"
            );
            sink.release();
        }
    }
}

/// How a subscription stream ended.
#[derive(Debug)]
enum StreamOutcome {
    /// The subscription ended, for this reason.
    Ended(SubscriptionEnd),
    /// The connection was lost: the subscription may continue on the next one.
    ConnectionLost,
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
            let _ = stream_failed(error, link);
            None
        }
        Err(_) => {
            tracing::warn!("a subscription stream named no subscription in time; stopping it");
            reader.stop(ErrorCode::PROTOCOL_VIOLATION);
            None
        }
    }
}

/// The topic of the message a stream delivered last, shared with the messages after it that
/// name the same topic: a stream of one topic allocates its topic once, not per message.
#[derive(Default)]
struct SharedTopic(Option<Arc<str>>);

impl SharedTopic {
    fn of(&mut self, topic: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *topic => Arc::clone(last),
            _ => Arc::clone(self.0.insert(Arc::from(topic))),
        }
    }
}

/// Most deliveries a stream reader decodes before handing them to the subscription's channel
/// together: what one stream read yields, up to this many, costs one wait for room in the
/// channel instead of one per message. They are held outside the channel meanwhile, so the
/// client holds at most this many beyond the channel's bound per subscription stream.
pub(crate) const DELIVER_BATCH: usize = 32;

/// Moves deliveries into the subscription's channel until the stream ends; returns why.
async fn deliver(reader: &mut FrameReader, claimed: &ClaimedSink, link: &Link) -> StreamOutcome {
    let Some(sender) = claimed.sender() else {
        return StreamOutcome::Ended(SubscriptionEnd::Closed);
    };
    let state = &claimed.sink().state;
    let batch_limit = DELIVER_BATCH.min(sender.max_capacity()).max(1);
    let mut batch: Vec<Delivered> = Vec::new();
    let mut topics = SharedTopic::default();
    // Every message is decoded into this one, then its parts are taken into a `Message`; the
    // topic string stays for the next frame to compare.
    let mut delivery = Delivery::default();
    loop {
        // A frame already buffered is taken without waiting; only a read that must wait for the
        // stream also watches for the application dropping the subscription (watching costs a
        // registration per wait, too much per message). A dropped subscription found with
        // frames still buffered shows as a failed send below.
        let frame = match reader.next_buffered_into(&mut delivery) {
            Ok(None) => tokio::select! {
                biased;
                () = sender.closed() => {
                    // The application dropped the subscription: nobody will read more.
                    reader.stop(ErrorCode::NORMAL);
                    return StreamOutcome::Ended(SubscriptionEnd::Unsubscribed);
                }
                frame = reader.next_into(&mut delivery) => frame,
            },
            buffered => buffered,
        };
        // The first frame, then whatever else the last read left buffered, up to the batch's
        // size: everything that is not a delivery ends the batch and is handled after it.
        let mut next = frame;
        let mut highest = 0;
        let end = loop {
            match next {
                Ok(Some(DecodedInto::Written)) => {
                    highest = delivery.sequence;
                    let topic = topics.of(&delivery.topic);
                    batch.push(Delivered {
                        epoch: claimed.epoch(),
                        item: StreamItem::Message(Message::take_from(&mut delivery, topic)),
                    });
                }
                Ok(Some(DecodedInto::Other(Frame::Gap(gap)))) => {
                    if matches!(gap.reason, GapReason::Overflow | GapReason::ClusterRoute) {
                        state.add_dropped(gap.len());
                    }
                    highest = gap.to;
                    batch.push(Delivered {
                        epoch: claimed.epoch(),
                        item: StreamItem::Gap(gap),
                    });
                }
                Ok(Some(DecodedInto::Other(Frame::DatagramsSent(sent)))) => {
                    batch.push(Delivered {
                        epoch: claimed.epoch(),
                        item: StreamItem::SentThrough(sent.through),
                    });
                }
                Ok(Some(DecodedInto::Other(other))) => break Some(Ok(Some(other))),
                Ok(None) => break Some(Ok(None)),
                Err(error) => break Some(Err(error)),
            }
            if batch.len() == batch_limit {
                break None;
            }
            next = reader.next_buffered_into(&mut delivery);
            if matches!(next, Ok(None)) {
                break None;
            }
        };
        if !batch.is_empty() {
            state.note_received(claimed.epoch(), highest);
            // Waits while the channel has no room for the whole batch: this is where
            // backpressure starts.
            let Ok(permits) = sender.reserve_many(batch.len()).await else {
                reader.stop(ErrorCode::NORMAL);
                return StreamOutcome::Ended(SubscriptionEnd::Unsubscribed);
            };
            for (permit, delivered) in permits.zip(batch.drain(..)) {
                permit.send(delivered);
            }
        }
        match end {
            None => {}
            Some(Ok(Some(other))) => {
                let reason = format!("{} frame on a subscription stream", other.kind());
                link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
                return StreamOutcome::Ended(SubscriptionEnd::ProtocolError { reason });
            }
            Some(Ok(None)) => return ended_cleanly(claimed, link),
            Some(Err(ReadFrameError::Stream(quinn::ReadError::Reset(code)))) => {
                return match error_code(code) {
                    ErrorCode::SLOW_CONSUMER => StreamOutcome::Ended(SubscriptionEnd::SlowConsumer),
                    ErrorCode::NORMAL => ended_cleanly(claimed, link),
                    other => StreamOutcome::Ended(SubscriptionEnd::Reset(other)),
                };
            }
            Some(Err(error)) => return stream_failed(error, link),
        }
    }
}

/// The end of a stream the broker finished (or reset with `NORMAL`). A stream ended as its
/// connection goes down (the broker's writer was cancelled) is a lost connection, not the end
/// of the subscription.
fn ended_cleanly(claimed: &ClaimedSink, link: &Link) -> StreamOutcome {
    let end = if claimed.sink().state.is_unsubscribing() {
        SubscriptionEnd::Unsubscribed
    } else if link.is_closing() {
        SubscriptionEnd::Closed
    } else if link.is_dead() {
        return StreamOutcome::ConnectionLost;
    } else {
        SubscriptionEnd::EndedByBroker
    };
    StreamOutcome::Ended(end)
}

/// The end of a stream that could not be read.
fn stream_failed(error: ReadFrameError, link: &Link) -> StreamOutcome {
    let end = match error {
        ReadFrameError::Decode(error) => {
            let reason = format!("undecodable frame on a subscription stream: {error}");
            link.protocol_violation(decode_close_code(&error), &reason);
            SubscriptionEnd::ProtocolError { reason }
        }
        ReadFrameError::Stream(quinn::ReadError::ConnectionLost(_)) => {
            return StreamOutcome::ConnectionLost
        }
        ReadFrameError::Stream(quinn::ReadError::Reset(code)) => {
            SubscriptionEnd::Reset(error_code(code))
        }
        ReadFrameError::Stream(other) => SubscriptionEnd::ConnectionLost {
            reason: other.to_string(),
        },
    };
    StreamOutcome::Ended(end)
}

/// Reads datagrams until the connection ends.
pub(crate) async fn read_datagrams(link: Arc<Link>, registry: Arc<SubscriptionRegistry>) {
    loop {
        let datagram = match link.connection().read_datagram().await {
            Ok(datagram) => datagram,
            Err(error) => {
                tracing::debug!(%error, "connection ended; no more datagrams");
                return;
            }
        };
        match decode_frame(&datagram, link.max_frame_bytes()) {
            Ok((Frame::Datagram(delivery), _)) => {
                let Some(sink) = registry.live(delivery.subscription) else {
                    // Not (or no longer) ours: a subscription that just ended.
                    continue;
                };
                if !sink.offer_datagram(Message::from(delivery.message)) {
                    tracing::trace!(
                        subscription = delivery.subscription,
                        "datagram dropped: the subscription's buffer is full"
                    );
                }
            }
            Ok((other, _)) => {
                let reason = format!("{} frame in a datagram", other.kind());
                link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
                return;
            }
            Err(error) => {
                let reason = format!("undecodable datagram: {error}");
                link.protocol_violation(decode_close_code(&error), &reason);
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_in_a_row_to_one_topic_share_its_text() {
        let mut topics = SharedTopic::default();
        let first = topics.of("sensors.kitchen");
        let again = topics.of("sensors.kitchen");
        assert!(Arc::ptr_eq(&first, &again));
        let other = topics.of("sensors.hall");
        assert_eq!(&*other, "sensors.hall");
        assert_eq!(
            &*first, "sensors.kitchen",
            "an earlier message keeps its topic"
        );
        let back = topics.of("sensors.kitchen");
        assert_eq!(&*back, "sensors.kitchen");
        assert!(
            !Arc::ptr_eq(&first, &back),
            "only the last topic is remembered"
        );
    }
}
