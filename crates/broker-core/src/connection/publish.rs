//! One publish stream: validate each `Publish` and hand it to the router.
//!
//! This is the start of the hot path and it involves no actor: the router pushes into each
//! matching subscription's bounded queue and returns at once, so a publisher never waits on a
//! subscriber. A refused publish is answered with `PublishRejected` on the same stream, which
//! stays usable; a request (a publish with `reply_to`) that reached no subscription is answered
//! with `NoResponders`; a publish the ACL does not allow is answered with `PublishRejected`
//! (`NOT_AUTHORIZED`) and routed nowhere; a publish with `ack` is answered with `PublishAck` once routed, or once
//! recognised as a duplicate inside the dedupe window (then it is not routed again). Anything
//! that is not a `Publish` closes the connection. When the client finishes the stream, the
//! broker finishes its side only after routing everything on it.
//!
//! A client keeps one publish stream per topic, so the stream remembers its last topic: a
//! publish to the same topic reuses the validated [`TopicName`] and the router's
//! [`RouteCache`] instead of parsing the name and walking the trie again.

use std::sync::Arc;
use std::time::Instant;

use cassini_protocol::{Frame, NoResponders, Publish, PublishAck, PublishRejected, TopicName};

use crate::acl::{PermissionCache, Permissions};
use crate::actors::Shared;
use crate::config::BrokerConfig;
use crate::connection::framed::{write_frame, FrameReader};
use crate::error::BrokerError;
use crate::message::PublishedMessage;
use crate::router::{RouteCache, Router};
use crate::transport::{RecvStream, SendStream};

/// Serves one publish stream of the client `identity` until the client finishes it.
pub(crate) async fn serve_publish_stream(
    mut send: Box<dyn SendStream>,
    recv: Box<dyn RecvStream>,
    shared: Arc<Shared>,
    identity: Arc<str>,
) -> Result<(), BrokerError> {
    let config = &shared.config;
    let max_frame_bytes = config.limits.max_frame_bytes;
    let mut reader = FrameReader::new(recv, max_frame_bytes);
    let mut permissions = PermissionCache::new(&shared.acl, &identity);
    let mut last = LastTopic::default();
    while let Some(frame) = reader.next().await? {
        let Frame::Publish(publish) = frame else {
            return Err(BrokerError::ProtocolViolation(format!(
                "{} frame on a publish stream",
                frame.kind()
            )));
        };
        let topic = publish.topic.clone();
        let target = publish.to_session;
        let retain = publish.retain;
        let message_id = publish.message_id;
        let ack = publish.ack;
        let counters = shared.router.counters();
        let answers = match accept_with(publish, config, &mut last.topic)
            .and_then(|message| authorize(permissions.get(&shared.acl, &identity), message))
        {
            Ok(message) => answer(
                &shared,
                &identity,
                message,
                Routing {
                    target,
                    retain,
                    cache: &mut last.routes,
                },
                ack,
                message_id,
            )
            .unwrap_or_else(|err| {
                counters.rejected();
                vec![rejected(topic, message_id, &err)]
            }),
            Err(err) => {
                counters.rejected();
                vec![rejected(topic, message_id, &err)]
            }
        };
        for answer in &answers {
            write_frame(send.as_mut(), answer, max_frame_bytes).await?;
        }
    }
    let _ = send.finish();
    Ok(())
}

/// What a stream remembers of its last publish.
#[derive(Default)]
struct LastTopic {
    /// The last topic, validated.
    topic: Option<TopicName>,
    /// The routes it matched.
    routes: RouteCache,
}

/// Where one message goes.
struct Routing<'a> {
    /// Only to this session's subscriptions (a direct message).
    target: Option<cassini_protocol::SessionId>,
    /// Also keep it as the topic's retained value.
    retain: bool,
    /// The stream's route cache.
    cache: &'a mut RouteCache,
}

/// Routes one accepted message unless it is a duplicate acknowledged publish, and returns the
/// frames that answer it: `NoResponders` for a request nobody received, `PublishAck` when asked.
fn answer(
    shared: &Shared,
    identity: &Arc<str>,
    message: PublishedMessage,
    routing: Routing<'_>,
    ack: bool,
    message_id: Option<u64>,
) -> Result<Vec<Frame>, BrokerError> {
    if !ack {
        return Ok(route(&shared.router, message, routing)?
            .into_iter()
            .collect());
    }
    let message_id = message_id.ok_or(BrokerError::MissingMessageId)?;
    let first_time = shared
        .dedupe
        .first_time(identity, message_id, Instant::now());
    let mut answers = Vec::new();
    if first_time {
        answers.extend(route(&shared.router, message, routing)?);
    } else {
        shared.router.counters().duplicate();
    }
    answers.push(Frame::PublishAck(PublishAck {
        message_id,
        duplicate: !first_time,
    }));
    Ok(answers)
}

/// Routes one accepted message; answers `NoResponders` for a request nobody received.
fn route(
    router: &Router,
    message: PublishedMessage,
    routing: Routing<'_>,
) -> Result<Option<Frame>, BrokerError> {
    if routing.retain {
        router.retain(&message)?;
    }
    let message = Arc::new(message);
    let report = router.publish_cached(&message, routing.target, routing.cache);
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

/// Lets `message` through if the ACL allows its publisher that topic.
fn authorize(
    permissions: &Permissions,
    message: PublishedMessage,
) -> Result<PublishedMessage, BrokerError> {
    if permissions.may_publish(&message.topic) {
        Ok(message)
    } else {
        Err(BrokerError::NotAuthorized {
            action: "publish to",
            target: message.topic.to_string(),
        })
    }
}

/// Checks a publish against the limits and turns it into the broker's shared form.
pub(crate) fn accept(
    publish: Publish,
    config: &BrokerConfig,
) -> Result<PublishedMessage, BrokerError> {
    accept_with(publish, config, &mut None)
}

/// [`accept`] for a stream or connection that remembers its last valid topic in `last`: the
/// same name again is not parsed again (the limits are the same).
fn accept_with(
    publish: Publish,
    config: &BrokerConfig,
    last: &mut Option<TopicName>,
) -> Result<PublishedMessage, BrokerError> {
    let limits = &config.limits;
    if publish.payload.len() > limits.max_payload_bytes as usize {
        return Err(BrokerError::PayloadTooLarge {
            size: publish.payload.len(),
            max: limits.max_payload_bytes,
        });
    }
    let topic = match last {
        Some(known) if known.as_str() == publish.topic => known.clone(),
        _ => {
            let topic = TopicName::parse(&publish.topic, &limits.topics)
                .map_err(BrokerError::InvalidTopic)?;
            last.insert(topic).clone()
        }
    };
    if let Some(reply_to) = &publish.reply_to {
        TopicName::parse(reply_to, &limits.topics).map_err(BrokerError::InvalidTopic)?;
    }
    Ok(PublishedMessage {
        topic,
        headers: publish.headers,
        payload: publish.payload,
        message_id: publish.message_id,
        reply_to: publish.reply_to,
        retained: false,
    })
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
    /// The last datagram's topic and routes.
    last: LastTopic,
}

impl DatagramPublishes {
    pub(crate) fn new(shared: Arc<Shared>, identity: Arc<str>) -> Self {
        let permissions = PermissionCache::new(&shared.acl, &identity);
        Self {
            shared,
            identity,
            permissions,
            last: LastTopic::default(),
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
        let routed = accept_with(publish, config, &mut self.last.topic)
            .and_then(|message| {
                authorize(
                    self.permissions.get(&self.shared.acl, &self.identity),
                    message,
                )
            })
            .and_then(|message| {
                let routing = Routing {
                    target,
                    retain,
                    cache: &mut self.last.routes,
                };
                route(&self.shared.router, message, routing)
            });
        if let Err(err) = routed {
            self.shared.router.counters().rejected();
            tracing::debug!(%topic, %err, "datagram publish refused");
        }
        Ok(())
    }
}
