//! One publish stream: validate each `Publish` and hand it to the router.
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

use std::sync::Arc;
use std::time::Instant;

use cassini_protocol::codec::header_size;
use cassini_protocol::{
    Frame, Headers, NoResponders, Publish, PublishAck, PublishRejected, TopicLimits, TopicName,
};
use tokio::sync::mpsc;

use crate::acl::{PermissionCache, Permissions};
use crate::config::{BrokerConfig, BrokerLimits};
use crate::connection::framed::{write_frame, FrameReader};
use crate::context::Shared;
use crate::error::BrokerError;
use crate::memory::{FrameBufferCharge, MemoryCharge};
use crate::message::PublishedMessage;
use crate::router::{RouteCache, Router};
use crate::storage::{DiskStore, StorageError, SyncPolicy};
use crate::transport::{RecvStream, SendStream, TransportError};

/// Most answered publishes of one stream waiting for their sync; the reader waits beyond it.
const MAX_UNANSWERED: usize = 1024;

/// The frames answering one publish, and the store ticket they wait for.
struct Answer {
    topic: String,
    frames: Vec<Frame>,
    durable_at: Option<u64>,
}

/// What one publish stream remembers between its publishes: the publisher's permissions, and
/// for its last topic the parsed name and the matching routes. A stream usually publishes to
/// one topic over and over; then a publish neither parses its topic again nor allocates a new
/// name for it nor walks the filter trie (in disk mode the answer still keeps a copy of the
/// topic string, for a rejection after a failed sync) (`Router::publish_cached`; measured in docs/BENCHMARKS.md).
struct StreamContext {
    permissions: PermissionCache,
    topic: Option<TopicName>,
    routes: RouteCache,
}

impl StreamContext {
    fn new(shared: &Shared, identity: &Arc<str>) -> Self {
        Self {
            permissions: PermissionCache::new(&shared.acl, identity),
            topic: None,
            routes: RouteCache::default(),
        }
    }

    /// The checked name of `topic`, reusing the last one when it is the same string.
    fn topic_name(&mut self, topic: &str, config: &BrokerConfig) -> Result<TopicName, BrokerError> {
        if let Some(last) = self.topic.as_ref().filter(|last| last.as_str() == topic) {
            return Ok(last.clone());
        }
        let name =
            TopicName::parse(topic, &config.limits.topics).map_err(BrokerError::InvalidTopic)?;
        self.topic = Some(name.clone());
        Ok(name)
    }
}

/// Serves one publish stream of the client `identity` until the client finishes it.
pub(crate) async fn serve_publish_stream(
    send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    shared: Arc<Shared>,
    identity: Arc<str>,
    charge: FrameBufferCharge,
) -> Result<(), BrokerError> {
    let served = if shared.storage.is_none() {
        serve_in_order(send, recv, &shared, &identity, charge).await
    } else {
        let (answers, unanswered) = mpsc::channel(MAX_UNANSWERED);
        let (read, written) = tokio::join!(
            read_publishes(recv, &shared, &identity, answers, charge),
            write_answers(send, &shared, unanswered),
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
    let mut context = StreamContext::new(shared, identity);
    while let Some(frame) = reader.next().await? {
        for answer in &frames_for(frame, shared, identity, &mut context)? {
            write_frame(send.as_mut(), answer, max_frame_bytes).await?;
        }
    }
    let _ = send.finish();
    Ok(())
}

/// The frames answering one frame of a publish stream; anything but a `Publish` is an error.
fn frames_for(
    frame: Frame,
    shared: &Shared,
    identity: &Arc<str>,
    context: &mut StreamContext,
) -> Result<Vec<Frame>, BrokerError> {
    let Frame::Publish(mut publish) = frame else {
        return Err(BrokerError::ProtocolViolation(format!(
            "{} frame on a publish stream",
            frame.kind()
        )));
    };
    let target = publish.to_session;
    let retain = publish.retain;
    let message_id = publish.message_id;
    let ack = publish.ack;
    let counters = shared.router.counters();
    let answered = context
        .topic_name(&publish.topic, &shared.config)
        .and_then(|topic| accept_named(&mut publish, topic, shared))
        .and_then(|message| {
            authorize(
                context.permissions.get(&shared.acl, identity),
                message,
                &shared.config.limits.topics,
            )
        })
        .and_then(|message| {
            let publish = Routing {
                message,
                target,
                retain,
            };
            answer(
                shared,
                identity,
                publish,
                ack,
                message_id,
                &mut context.routes,
            )
        });
    Ok(answered.unwrap_or_else(|err| {
        counters.rejected();
        vec![rejected(publish.topic, message_id, &err)]
    }))
}

/// An accepted message and how it is to be routed.
struct Routing {
    message: PublishedMessage,
    /// Only to this session's subscriptions (`Publish::to_session`).
    target: Option<cassini_protocol::SessionId>,
    /// Also keep it as the topic's retained value.
    retain: bool,
}

async fn read_publishes(
    recv: Box<dyn RecvStream>,
    shared: &Shared,
    identity: &Arc<str>,
    answers: mpsc::Sender<Answer>,
    charge: FrameBufferCharge,
) -> Result<(), BrokerError> {
    let config = &shared.config;
    let mut reader = FrameReader::new(recv, config.limits.max_frame_bytes, charge);
    let mut context = StreamContext::new(shared, identity);
    while let Some(frame) = reader.next().await? {
        if let Some(store) = &shared.storage {
            if let Err(err) = store.wait_for_room().await {
                tracing::debug!(%err, "storage unavailable; the publish will not be acknowledged");
            }
        }
        let topic = match &frame {
            Frame::Publish(publish) => publish.topic.clone(),
            _ => String::new(),
        };
        let frames = frames_for(frame, shared, identity, &mut context)?;
        let acknowledges = frames.iter().any(|f| matches!(f, Frame::PublishAck(_)));
        let durable_at = match &shared.storage {
            Some(store) if acknowledges && config.storage.sync == SyncPolicy::Always => {
                Some(store.ticket())
            }
            _ => None,
        };
        if frames.is_empty() {
            continue;
        }
        let answer = Answer {
            topic,
            frames,
            durable_at,
        };
        if answers.send(answer).await.is_err() {
            // The answering half failed (its error is reported): stop reading.
            return Ok(());
        }
    }
    Ok(())
}

async fn write_answers(
    mut send: Box<dyn SendStream>,
    shared: &Shared,
    mut unanswered: mpsc::Receiver<Answer>,
) -> Result<(), BrokerError> {
    let max_frame_bytes = shared.config.limits.max_frame_bytes;
    while let Some(Answer {
        topic,
        frames,
        durable_at,
    }) = unanswered.recv().await
    {
        let failed = match (durable_at, &shared.storage) {
            (Some(ticket), Some(store)) => store.synced(ticket).await.err(),
            _ => None,
        };
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
            write_frame(send.as_mut(), &frame, max_frame_bytes).await?;
        }
    }
    let _ = send.finish();
    Ok(())
}

/// Routes one accepted message unless it is a duplicate acknowledged publish, and returns the
/// frames that answer it: `NoResponders` for a request nobody received, `PublishAck` when asked.
fn answer(
    shared: &Shared,
    identity: &Arc<str>,
    publish: Routing,
    ack: bool,
    message_id: Option<u64>,
    routes: &mut RouteCache,
) -> Result<Vec<Frame>, BrokerError> {
    let Routing {
        message,
        target,
        retain,
    } = publish;
    if let Some(store) = &shared.storage {
        check_room(&shared.router, store, &message, target, retain)?;
    }
    if !ack {
        return Ok(route(
            &shared.router,
            identity,
            message,
            target,
            retain,
            Some(routes),
        )?
        .into_iter()
        .collect());
    }
    let message_id = message_id.ok_or(BrokerError::MissingMessageId)?;
    // In disk mode the messages this publish stores and its dedupe entry go into one commit:
    // a crash never keeps the entry without the messages (a retry would be taken for a
    // duplicate and the message lost) nor the messages without the entry (a retry would be
    // delivered twice).
    let _whole = shared.storage.as_ref().map(|store| store.hold());
    let first_time = shared
        .dedupe
        .first_time(identity, message_id, Instant::now());
    let mut answers = Vec::new();
    if first_time {
        answers.extend(route(
            &shared.router,
            identity,
            message,
            target,
            retain,
            Some(routes),
        )?);
        shared.dedupe.store(identity, message_id);
    } else {
        shared.router.counters().duplicate();
    }
    answers.push(Frame::PublishAck(PublishAck {
        message_id,
        duplicate: !first_time,
    }));
    Ok(answers)
}

/// Refuses any publish once the store failed or closed (routing it would hand subscribers
/// messages and sequence numbers that no commit will keep), and a publish that would store a
/// message beyond the disk limit.
fn check_room(
    router: &Router,
    store: &DiskStore,
    message: &PublishedMessage,
    target: Option<cassini_protocol::SessionId>,
    retain: bool,
) -> Result<(), BrokerError> {
    store.usable()?;
    if store.has_room_for(message.memory_size()) {
        return Ok(());
    }
    if retain || router.reaches_stored_queue(&message.topic, target) {
        return Err(StorageError::Full {
            limit: store.max_disk_bytes(),
        }
        .into());
    }
    Ok(())
}

/// Routes one accepted message of `identity`; answers `NoResponders` for a request nobody
/// received.
fn route(
    router: &Router,
    identity: &Arc<str>,
    message: PublishedMessage,
    target: Option<cassini_protocol::SessionId>,
    retain: bool,
    routes: Option<&mut RouteCache>,
) -> Result<Option<Frame>, BrokerError> {
    if retain {
        router.retain(&message, Some(identity))?;
    }
    let message = Arc::new(message);
    let report = match routes {
        Some(cache) => router.publish_cached(&message, target, cache),
        None => router.publish(&message, target),
    };
    router.counters().received(message.payload.len());
    Ok(match &message.reply_to {
        Some(reply_to) if report.offered == 0 => {
            router.counters().no_responders();
            Some(Frame::NoResponders(NoResponders {
                reply_to: reply_to.clone(),
            }))
        }
        _ => None,
    })
}

fn rejected(topic: String, message_id: Option<u64>, err: &BrokerError) -> Frame {
    Frame::PublishRejected(PublishRejected {
        topic,
        message_id,
        code: err.code(),
        reason: err.reason(),
    })
}

/// Lets `message` through if the ACL allows its publisher that topic and, for a request, allows
/// it to receive on the `reply_to` topic (so a reply goes only where the requester may read).
/// Every publish that enters the broker from a client, on a stream or in a datagram, passes here.
pub(crate) fn authorize(
    permissions: &Permissions,
    message: PublishedMessage,
    limits: &TopicLimits,
) -> Result<PublishedMessage, BrokerError> {
    if !permissions.may_publish(&message.topic) {
        return Err(BrokerError::NotAuthorized {
            action: "publish to",
            target: message.topic.to_string(),
        });
    }
    if let Some(reply_to) = &message.reply_to {
        let reply_to = TopicName::parse(reply_to, limits).map_err(BrokerError::InvalidTopic)?;
        if !permissions.may_receive(&reply_to) {
            return Err(BrokerError::NotAuthorized {
                action: "ask for replies on",
                target: reply_to.to_string(),
            });
        }
    }
    Ok(message)
}

/// Checks a publish against the limits and the memory budget and turns it into the broker's
/// shared form, charged to the budget.
pub(crate) fn accept(
    mut publish: Publish,
    shared: &Shared,
) -> Result<PublishedMessage, BrokerError> {
    let topic = TopicName::parse(&publish.topic, &shared.config.limits.topics)
        .map_err(BrokerError::InvalidTopic)?;
    accept_named(&mut publish, topic, shared)
}

/// [`accept`] with the topic already checked as `topic`; takes the payload, headers and
/// `reply_to` out of `publish` and leaves its topic string (for a rejection's text).
fn accept_named(
    publish: &mut Publish,
    topic: TopicName,
    shared: &Shared,
) -> Result<PublishedMessage, BrokerError> {
    let limits = &shared.config.limits;
    if publish.payload.len() > limits.max_payload_bytes as usize {
        return Err(BrokerError::PayloadTooLarge {
            size: publish.payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    check_headers(&publish.headers, limits)?;
    if let Some(reply_to) = &publish.reply_to {
        TopicName::parse(reply_to, &limits.topics).map_err(BrokerError::InvalidTopic)?;
    }
    let mut message = PublishedMessage {
        topic,
        headers: std::mem::take(&mut publish.headers),
        payload: std::mem::take(&mut publish.payload),
        message_id: publish.message_id,
        reply_to: publish.reply_to.take(),
        retained: false,
        charge: MemoryCharge::none(),
    };
    message.charge = shared.memory.charge_message(message.memory_size())?;
    Ok(message)
}

/// Refuses headers beyond `limits.max_headers` or `limits.max_header_bytes`.
fn check_headers(headers: &Headers, limits: &BrokerLimits) -> Result<(), BrokerError> {
    let (count, bytes) = header_size(headers);
    if count > limits.max_headers as usize {
        return Err(BrokerError::TooManyHeaders {
            count,
            max: limits.max_headers,
        });
    }
    if bytes > limits.max_header_bytes as usize {
        return Err(BrokerError::HeadersTooLarge {
            size: bytes,
            max: limits.max_header_bytes,
        });
    }
    Ok(())
}

/// Publishes arriving in QUIC datagrams on one connection: fire and forget. Each datagram
/// holds one `Publish` frame; it is checked and routed like a stream publish, but nothing
/// answers it (no acknowledgement, no rejection, no `NoResponders`): a refused or
/// undecodable-as-publish datagram is counted and logged, and a datagram that is not a frame
/// at all closes the connection as malformed.
pub(crate) struct DatagramPublishes {
    shared: Arc<Shared>,
    identity: Arc<str>,
    permissions: PermissionCache,
}

impl DatagramPublishes {
    pub(crate) fn new(shared: Arc<Shared>, identity: Arc<str>) -> Self {
        let permissions = PermissionCache::new(&shared.acl, &identity);
        Self {
            shared,
            identity,
            permissions,
        }
    }

    /// Routes the publish in `datagram`.
    pub(crate) fn receive(&mut self, datagram: &[u8]) -> Result<(), BrokerError> {
        let config = &self.shared.config;
        let (frame, _) = cassini_protocol::decode_frame(datagram, config.limits.max_frame_bytes)?;
        let Frame::Publish(publish) = frame else {
            return Err(BrokerError::ProtocolViolation(format!(
                "{} frame in a datagram",
                frame.kind()
            )));
        };
        let topic = publish.topic.clone();
        let retain = publish.retain;
        let target = publish.to_session;
        let routed = accept(publish, &self.shared)
            .and_then(|message| {
                authorize(
                    self.permissions.get(&self.shared.acl, &self.identity),
                    message,
                    &config.limits.topics,
                )
            })
            .and_then(|message| {
                if let Some(store) = &self.shared.storage {
                    check_room(&self.shared.router, store, &message, target, retain)?;
                }
                route(
                    &self.shared.router,
                    &self.identity,
                    message,
                    target,
                    retain,
                    None,
                )
            });
        if let Err(err) = routed {
            self.shared.router.counters().rejected();
            tracing::debug!(%topic, %err, "datagram publish refused");
        }
        Ok(())
    }
}
