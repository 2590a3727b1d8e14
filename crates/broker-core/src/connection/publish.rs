//! One publish stream, and one connection's datagram publishes: each `Publish` goes through
//! [`Publisher::admit`] (every check, then the router; see [`crate::admission`]) and its outcome
//! becomes the frames that answer it.
//!
//! This is the start of the hot path and it involves no actor: the router pushes into each
//! matching subscription's bounded queue and returns at once, so a publisher never waits on a
//! subscriber. A refused publish is answered with `PublishRejected` on the same stream, which
//! stays usable; a request (a publish with `reply_to`) that reached no subscription is answered
//! with `NoResponders`; a publish the ACL does not allow is answered with `PublishRejected`
//! (`NOT_AUTHORIZED`) and routed nowhere, and so is a request whose `reply_to` its publisher
//! may not subscribe to; a publish with `ack` is answered with `PublishAck` once routed, or once
//! recognised as a duplicate inside the dedupe window (then it is not routed again). Anything
//! that is not a `Publish` closes the connection. When the client finishes the stream, the
//! broker finishes its side only after routing everything on it. When the client resets the
//! stream (or stops the broker's side), only that stream ends: what was read whole was routed.
//!
//! In disk mode (with the default [`SyncPolicy::Always`]) a `PublishAck` leaves only once
//! everything the publish stored is on stable storage. The stream is read and answered by two
//! halves joined by a bounded channel, so the reader keeps routing the next publishes while the
//! answers wait for their sync: a client with many acknowledged publishes in flight on one
//! stream shares one sync among them, as do publishes on different streams. Before routing, the
//! reader waits while the store's pending bound is exceeded; a publish whose message would be
//! stored beyond the disk limit is refused with `STORAGE_FULL` and not routed at all.
//!
//! A client that does not read its answers holds up their writes, and with them the reading of
//! its stream, while QUIC keeps what it sends meanwhile (up to the connection's receive window).
//! An answer that cannot be written for [`ANSWER_WRITE_TIMEOUT`] ends the stream: the broker
//! stops it and resets its own side with `SLOW_CONSUMER`, which drops what QUIC held of it; the
//! connection and its other streams go on.

use std::sync::Arc;

use bytes::Bytes;
use cassini_protocol::codec::MAX_KEPT_TOPIC_BYTES;
use cassini_protocol::{ErrorCode, Frame, NoResponders, Publish, PublishAck, PublishRejected};
use tokio::sync::mpsc;

use crate::admission::{Admitted, Publisher, Source};
use crate::connection::framed::{not_a_publish, write_answer, FrameReader, ANSWER_WRITE_TIMEOUT};
use crate::connection::unsent_acks::UnsentAcks;
use crate::context::Shared;
use crate::error::BrokerError;
use crate::memory::FrameBufferCharge;
use crate::storage::{StorageError, SyncPolicy};
use crate::transport::{RecvStream, SendStream, TransportError};

/// Most answered publishes of one stream waiting for their sync; the reader waits beyond it.
const MAX_UNANSWERED: usize = 1024;

/// Ends a publish stream whose client left its answers unread: see the module documentation.
fn end_unread(send: &mut dyn SendStream, identity: &str) {
    tracing::debug!(%identity, "a publish stream's answers were not read for {ANSWER_WRITE_TIMEOUT:?}: stream ended with SLOW_CONSUMER");
    send.reset(ErrorCode::SLOW_CONSUMER);
}

/// The frames answering one publish, and the store ticket they wait for.
struct Answer {
    topic: String,
    frames: Vec<Frame>,
    durable_at: Option<u64>,
    /// The replicated store's ticket an acknowledged publish waits for in a cluster with
    /// `members`: its dedupe pair, its retained value and what it stored in named sessions'
    /// queues.
    replicated_at: Option<u64>,
    /// The pairs of its acknowledgements, forgotten if it is never written and what it waits
    /// for is refused.
    unsent: Option<UnsentAcks>,
}

/// Serves one publish stream of the client `identity` until the client finishes it.
pub(crate) async fn serve_publish_stream(
    send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    shared: Arc<Shared>,
    identity: Arc<str>,
    charge: FrameBufferCharge,
) -> Result<(), BrokerError> {
    let served = if shared.storage.is_none() && shared.replicated().is_none() {
        serve_in_order(send, recv, &shared, &identity, charge).await
    } else {
        let (answers, unanswered) = mpsc::channel(MAX_UNANSWERED);
        let (read, written) = tokio::join!(
            read_publishes(recv, &shared, &identity, answers, charge),
            write_answers(send, &shared, &identity, unanswered),
        );
        read.and(written)
    };
    match served {
        // The client abandoned this stream (reset its side, or stopped ours): every whole
        // publish read before was routed, a partial one is dropped, and only this stream ends.
        Err(BrokerError::Transport(
            TransportError::Reset(code) | TransportError::Stopped(code),
        )) => {
            tracing::debug!(%code, "publish stream abandoned by the client");
            Ok(())
        }
        other => other,
    }
}

/// Memory mode: no answer waits for anything, so each publish is answered before the next is
/// read.
async fn serve_in_order(
    mut send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    shared: &Shared,
    identity: &Arc<str>,
    charge: FrameBufferCharge,
) -> Result<(), BrokerError> {
    let max_frame_bytes = shared.config.limits.max_frame_bytes;
    let mut reader = FrameReader::new(recv, max_frame_bytes, charge);
    let mut publisher = Publisher::client(shared, Arc::clone(identity), Source::Stream);
    // Every publish is decoded into this one: its topic string is kept from one to the next.
    let mut publish = Publish::default();
    while reader.next_publish(&mut publish).await? {
        let frames = frames_for(&mut publish, shared, &mut publisher);
        keep_only_the_topic(&mut publish);
        for answer in &frames {
            if !write_answer(send.as_mut(), answer, max_frame_bytes).await? {
                end_unread(send.as_mut(), identity);
                reader.stop(ErrorCode::SLOW_CONSUMER);
                return Ok(());
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

/// Drops what a routed (or refused) publish still holds, such as a refused publish's payload,
/// but its topic string, which the next frame naming the same topic takes again: nothing is
/// held between frames beyond the reader's counted buffer and a topic of at most
/// [`MAX_KEPT_TOPIC_BYTES`] (as a [`cassini_protocol::codec::TopicMemo`] keeps).
fn keep_only_the_topic(publish: &mut Publish) {
    publish.payload = Bytes::new();
    publish.headers = Vec::new();
    publish.reply_to = None;
    if publish.topic.capacity() > MAX_KEPT_TOPIC_BYTES {
        publish.topic = String::new();
    }
}

/// The `Publish` a frame of a publish stream must be; anything else is an error.
fn publish_of(frame: Frame) -> Result<Publish, BrokerError> {
    match frame {
        Frame::Publish(publish) => Ok(publish),
        other => Err(not_a_publish(&other)),
    }
}

/// The frames answering one publish. Leaves the publish's topic (for the stream's reader to
/// take back); the payload, headers and `reply_to` are taken ([`Publisher::admit`]).
fn frames_for(publish: &mut Publish, shared: &Shared, publisher: &mut Publisher) -> Vec<Frame> {
    match publisher.admit(shared, publish) {
        Ok(admitted) => answers(admitted),
        Err(err) => {
            let most = shared.config.limits.topics.max_bytes.saturating_mul(2);
            let topic = echoed_topic(&publish.topic, most);
            vec![rejected(topic, publish.message_id, &err)]
        }
    }
}

/// The topic a `PublishRejected` names: the publish's, cut (at a character) to `max_bytes`
/// (twice the longest a topic may be: a topic just too long comes back whole), so that a
/// refused topic of a frame's size is not kept and sent back whole.
fn echoed_topic(topic: &str, max_bytes: usize) -> String {
    if topic.len() <= max_bytes {
        return topic.to_owned();
    }
    let mut end = max_bytes;
    while !topic.is_char_boundary(end) {
        end -= 1;
    }
    topic[..end].to_owned()
}

/// The frames answering an admitted publish: `NoResponders` for a request nobody received,
/// then `PublishAck` when asked. Most publishes need neither, and get an empty `Vec` (no
/// allocation).
fn answers(admitted: Admitted) -> Vec<Frame> {
    match admitted {
        Admitted::Routed {
            no_responders,
            acknowledged,
            ..
        } => {
            let mut frames = Vec::new();
            if let Some(reply_to) = no_responders {
                frames.push(Frame::NoResponders(NoResponders { reply_to }));
            }
            if let Some(message_id) = acknowledged {
                frames.push(Frame::PublishAck(PublishAck {
                    message_id,
                    duplicate: false,
                }));
            }
            frames
        }
        Admitted::Duplicate { message_id } => vec![Frame::PublishAck(PublishAck {
            message_id,
            duplicate: true,
        })],
    }
}

async fn read_publishes(
    recv: Box<dyn RecvStream>,
    shared: &Arc<Shared>,
    identity: &Arc<str>,
    answers: mpsc::Sender<Answer>,
    charge: FrameBufferCharge,
) -> Result<(), BrokerError> {
    let config = &shared.config;
    let mut reader = FrameReader::new(recv, config.limits.max_frame_bytes, charge);
    let mut publisher = Publisher::client(shared, Arc::clone(identity), Source::Stream);
    while let Some(frame) = reader.next().await? {
        if let Some(store) = &shared.storage {
            if let Err(err) = store.wait_for_room().await {
                tracing::debug!(%err, "storage unavailable; the publish will not be acknowledged");
            }
        }
        let acked = matches!(&frame, Frame::Publish(publish) if publish.ack);
        if let Some(store) = shared.replicated().filter(|_| acked) {
            if let Err(err) = store.wait_for_room().await {
                tracing::debug!(%err, "replicated store unavailable; the publish will not be acknowledged");
            }
        }
        let mut publish = publish_of(frame)?;
        let frames = frames_for(&mut publish, shared, &mut publisher);
        let topic = publish.topic;
        let acknowledges = frames.iter().any(|f| matches!(f, Frame::PublishAck(_)));
        let durable_at = match &shared.storage {
            Some(store) if acknowledges && config.storage.sync == SyncPolicy::Always => {
                Some(store.ticket())
            }
            _ => None,
        };
        // Its dedupe pair, retained value and what it stored for named sessions: the
        // acknowledgement waits until a majority holds them.
        let replicated_at = publisher.take_replicated_ticket().filter(|_| acknowledges);
        if frames.is_empty() {
            reader.give_back(topic);
            continue;
        }
        // The topic is kept with the answer only to name it in a rejection should its
        // acknowledgement fail; a rejection names it already.
        let topic = if acknowledges {
            topic
        } else {
            reader.give_back(topic);
            String::new()
        };
        let unsent = unsent_acks(shared, identity, &frames, durable_at, replicated_at);
        let answer = Answer {
            topic,
            frames,
            durable_at,
            replicated_at,
            unsent,
        };
        if answers.send(answer).await.is_err() {
            // The answering half failed (its error is reported) or gave up on a client that
            // does not read its answers: stop reading.
            reader.stop(ErrorCode::SLOW_CONSUMER);
            return Ok(());
        }
    }
    Ok(())
}

async fn write_answers(
    mut send: Box<dyn SendStream>,
    shared: &Shared,
    identity: &Arc<str>,
    mut unanswered: mpsc::Receiver<Answer>,
) -> Result<(), BrokerError> {
    let max_frame_bytes = shared.config.limits.max_frame_bytes;
    while let Some(Answer {
        topic,
        frames,
        durable_at,
        replicated_at,
        unsent,
    }) = unanswered.recv().await
    {
        let mut failed = match (durable_at, &shared.storage) {
            (Some(ticket), Some(store)) => store.synced(ticket).await.err(),
            _ => None,
        };
        // The entry is only late: it is written again and may still be committed.
        let mut late = false;
        if let (Some(ticket), Some(store)) = (replicated_at, shared.replicated()) {
            if let Err(err) = store.synced(ticket).await {
                late = failed.is_none() && matches!(err, StorageError::NoQuorum(_));
                failed.get_or_insert(err);
            }
        }
        if failed.is_some() && !late {
            // Not acknowledged: a resend must be accepted again, not taken for a duplicate
            // of what the store or the cluster refused (forgotten before any frame is
            // written, which may fail).
            for frame in &frames {
                if let Frame::PublishAck(ack) = frame {
                    if !ack.duplicate {
                        // Unless remembered again since, for a newer publish.
                        shared.dedupe.forget_if(identity, ack.message_id, |at| {
                            replicated_at.is_none_or(|ticket| *at == ticket)
                        });
                    }
                }
            }
        }
        match unsent {
            // Answered `NO_QUORUM`, yet the pairs stay until the entry's outcome: a resend
            // here meanwhile waits for it too, and is a duplicate once it is committed.
            Some(unsent) if late => drop(unsent),
            Some(unsent) => unsent.settled(),
            None => {}
        }
        for frame in frames {
            let frame = match (frame, &failed) {
                (Frame::PublishAck(ack), Some(err)) => {
                    let err = BrokerError::Storage(err.clone());
                    Frame::PublishRejected(PublishRejected {
                        topic: topic.clone(),
                        message_id: Some(ack.message_id),
                        code: err.code(),
                        reason: err.reason(),
                    })
                }
                (frame, _) => frame,
            };
            if !write_answer(send.as_mut(), &frame, max_frame_bytes).await? {
                end_unread(send.as_mut(), identity);
                return Ok(());
            }
        }
    }
    let _ = send.finish();
    Ok(())
}

/// The guard of an answer's acknowledgements (not duplicates) that wait for the disk store's
/// `durable_at` or the replicated store's `replicated_at`: see [`UnsentAcks`].
fn unsent_acks(
    shared: &Arc<Shared>,
    identity: &Arc<str>,
    frames: &[Frame],
    durable_at: Option<u64>,
    replicated_at: Option<u64>,
) -> Option<UnsentAcks> {
    let disk = durable_at.zip(shared.storage.clone());
    let replicated = replicated_at.zip(shared.replicated().cloned());
    if disk.is_none() && replicated.is_none() {
        return None;
    }
    let message_ids: Vec<u64> = frames
        .iter()
        .filter_map(|frame| match frame {
            Frame::PublishAck(ack) if !ack.duplicate => Some(ack.message_id),
            _ => None,
        })
        .collect();
    if message_ids.is_empty() {
        return None;
    }
    let outcome = Box::pin(async move {
        if let Some((ticket, store)) = disk {
            if store.synced(ticket).await.is_err() {
                return false;
            }
        }
        if let Some((ticket, store)) = replicated {
            if store.outcome(ticket).await.is_err() {
                return false;
            }
        }
        true
    });
    Some(UnsentAcks::new(
        Arc::clone(&shared.dedupe),
        Arc::clone(identity),
        message_ids,
        replicated_at.unwrap_or(0),
        outcome,
    ))
}

fn rejected(topic: String, message_id: Option<u64>, err: &BrokerError) -> Frame {
    Frame::PublishRejected(PublishRejected {
        topic,
        message_id,
        code: err.code(),
        reason: err.reason(),
    })
}

/// Publishes arriving in QUIC datagrams on one connection: fire and forget. Each datagram
/// holds one `Publish` frame; it is checked and routed like a stream publish, but nothing
/// answers it (no acknowledgement, no rejection, no `NoResponders`): a refused or
/// undecodable-as-publish datagram is counted and logged, and a datagram that is not a frame
/// at all closes the connection as malformed.
pub(crate) struct DatagramPublishes {
    shared: Arc<Shared>,
    publisher: Publisher,
}

impl DatagramPublishes {
    pub(crate) fn new(shared: Arc<Shared>, identity: Arc<str>) -> Self {
        let publisher = Publisher::client(&shared, identity, Source::Datagram);
        Self { shared, publisher }
    }

    /// Routes the publish in `datagram`.
    pub(crate) fn receive(&mut self, datagram: &[u8]) -> Result<(), BrokerError> {
        let max_frame_bytes = self.shared.config.limits.max_frame_bytes;
        let (frame, _) = cassini_protocol::decode_frame(datagram, max_frame_bytes)?;
        let Frame::Publish(mut publish) = frame else {
            return Err(BrokerError::ProtocolViolation(format!(
                "{} frame in a datagram",
                frame.kind()
            )));
        };
        if let Err(err) = self.publisher.admit(&self.shared, &mut publish) {
            tracing::debug!(topic = %publish.topic, %err, "datagram publish refused");
        }
        Ok(())
    }
}
