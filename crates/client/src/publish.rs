//! Publishing: validation, and which lane carries which topic.
//!
//! Every topic is published on its own stream, a lane (see [`crate::lane`]), so messages to one
//! topic stay in order and a large or slow topic does not delay the others. At most
//! `max_lanes` lanes are open; a new topic closes the least recently used lane. A closed lane
//! finishes its stream, and a later lane for the same topic waits until the broker has
//! acknowledged that stream before it sends, so per-topic order holds across lanes too.
//!
//! [`prepare`] validates before anything is queued (topic rules, for the topic and any
//! `reply_to`, and payload size from the broker's `Welcome`) and encodes the frame;
//! [`Publisher::send`] then waits for room in the lane's bounded queue: that wait is the
//! backpressure a fast publisher feels when the broker or the network is slower. A `Publisher`
//! belongs to one connection; when that connection is gone, `send` hands the message back so
//! the session can keep it for the next one (see [`crate::session`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{encode_publish, header_size, PublishRef};
use cassini_protocol::{Headers, Limits, PublishRejected, SessionId, TopicName};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::acks::PendingAcks;
use crate::error::ClientError;
use crate::lane::{run_lane, LaneContext, LaneDone};
use crate::lanes::LruMap;
use crate::link::Link;
use crate::publish_options::PublishOptions;
use crate::replies::PendingReplies;
use crate::sync::lock;

/// How the publisher sizes its lanes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PublisherSettings {
    /// Most publish streams open at once.
    pub(crate) max_lanes: usize,
    /// Encoded frames queued per lane before `publish` waits.
    pub(crate) lane_buffer: usize,
    /// How long a closing lane waits for the broker to acknowledge its stream; also the bound on
    /// draining every lane in [`Publisher::close`].
    pub(crate) close_timeout: Duration,
}

/// A validated, encoded publish, ready for its topic's lane.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The topic, which picks the lane.
    pub(crate) topic: TopicName,
    /// The encoded `Publish` frame.
    pub(crate) frame: BytesMut,
    /// The message id, when the publish waits for an acknowledgement (see [`crate::acks`]).
    pub(crate) ack: Option<u64>,
}

/// Why [`Publisher::send`] did not queue a message.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The connection is gone; here is the message, unsent.
    ConnectionGone(Outgoing),
    /// The publisher is closed, or the lane failed for another reason.
    Failed(ClientError),
}

impl From<SendError> for ClientError {
    fn from(error: SendError) -> Self {
        match error {
            SendError::ConnectionGone(_) => ClientError::ConnectionLost {
                reason: "the connection dropped before the message was sent".to_owned(),
            },
            SendError::Failed(error) => error,
        }
    }
}

/// Bytes a publish frame takes beyond its topic, payload, reply subject and headers, rounded
/// up: the length prefix, the variant and field markers, the integers and the session id.
const FRAME_OVERHEAD_BYTES: usize = 96;

/// Checks one message against the broker's limits as `link` announced them, and encodes it;
/// `to_session` makes it a direct message.
pub(crate) fn prepare(
    link: &Link,
    topic: &str,
    payload: Bytes,
    options: PublishOptions,
    to_session: Option<SessionId>,
) -> Result<Outgoing, ClientError> {
    let limits = link.topic_limits();
    let topic = TopicName::parse(topic, &limits).map_err(ClientError::InvalidTopic)?;
    if let Some(reply_to) = &options.reply_to {
        TopicName::parse(reply_to, &limits).map_err(ClientError::InvalidReplyTo)?;
    }
    let max = link.limits().max_payload_bytes;
    if payload.len() > max as usize {
        return Err(ClientError::PayloadTooLarge {
            size: payload.len(),
            max,
        });
    }
    check_headers(&options.headers, link.limits())?;
    let PublishOptions {
        headers,
        message_id,
        retain,
        reply_to,
        ack,
    } = options;
    let ack = message_id.filter(|_| ack);
    let publish = PublishRef {
        topic: topic.as_str(),
        headers: &headers,
        payload: &payload,
        message_id,
        reply_to: reply_to.as_deref(),
        retain,
        to_session,
        ack: ack.is_some(),
    };
    // Room for the whole frame up front, so encoding never grows the buffer: the fields'
    // bytes plus a generous allowance for MessagePack's markers and the length prefix.
    let capacity = FRAME_OVERHEAD_BYTES
        + topic.as_str().len()
        + payload.len()
        + reply_to.as_ref().map_or(0, String::len)
        + headers
            .iter()
            .map(|(name, value)| name.len() + value.len() + 10)
            .sum::<usize>();
    let mut frame = BytesMut::with_capacity(capacity);
    encode_publish(&publish, &mut frame, link.max_frame_bytes())?;
    Ok(Outgoing { topic, frame, ack })
}

/// Refuses headers beyond the broker's announced `max_headers` and `max_header_bytes` (a limit
/// of 0 was not announced: an older broker, which checks nothing either).
fn check_headers(headers: &Headers, limits: Limits) -> Result<(), ClientError> {
    let (count, size) = header_size(headers);
    let max = limits.max_headers;
    if max > 0 && count > max as usize {
        return Err(ClientError::TooManyHeaders { count, max });
    }
    let max = limits.max_header_bytes;
    if max > 0 && size > max as usize {
        return Err(ClientError::HeadersTooLarge { size, max });
    }
    Ok(())
}

/// Owns the lanes.
#[derive(Debug)]
pub(crate) struct Publisher {
    /// The connection: limits for validation, and what a failure reports.
    link: Arc<Link>,
    /// Lane count and sizes.
    settings: PublisherSettings,
    /// Which lanes exist.
    lanes: Mutex<LaneTable>,
    /// Every lane task, so that `close` can wait for all of them.
    tracker: TaskTracker,
    /// Given to each lane for the broker's rejections.
    rejections: mpsc::Sender<PublishRejected>,
    /// Given to each lane for the broker's `NoResponders` answers.
    replies: Arc<PendingReplies>,
    /// Given to each lane for the broker's `PublishAck` answers.
    acks: Arc<PendingAcks>,
}

#[derive(Debug)]
struct LaneTable {
    /// Open lanes by topic.
    open: LruMap<TopicName, OpenLane>,
    /// Lanes that were evicted and may still be writing, by topic: the next lane for the topic
    /// waits for them.
    closing: HashMap<TopicName, LaneDone>,
    /// Set by `close`: no new lanes.
    closed: bool,
}

#[derive(Debug)]
struct OpenLane {
    /// The lane's queue; dropping the last sender closes the lane.
    frames: mpsc::Sender<BytesMut>,
    /// Whether the lane's task has ended.
    done: LaneDone,
}

impl Publisher {
    pub(crate) fn new(
        link: Arc<Link>,
        settings: PublisherSettings,
        rejections: mpsc::Sender<PublishRejected>,
        replies: Arc<PendingReplies>,
        acks: Arc<PendingAcks>,
    ) -> Self {
        Self {
            link,
            settings,
            lanes: Mutex::new(LaneTable {
                open: LruMap::new(settings.max_lanes),
                closing: HashMap::new(),
                closed: false,
            }),
            tracker: TaskTracker::new(),
            rejections,
            replies,
            acks,
        }
    }

    /// Queues one prepared message on its topic's lane. Returns once it is queued, not when
    /// the broker has it. If the connection is gone the message comes back, unsent.
    pub(crate) async fn send(&self, outgoing: Outgoing) -> Result<(), SendError> {
        let lane = self.lane(&outgoing.topic)?;
        let Err(mpsc::error::SendError(frame)) = lane.send(outgoing.frame).await else {
            return Ok(());
        };
        let outgoing = Outgoing { frame, ..outgoing };
        if self.link.is_dead() {
            return Err(SendError::ConnectionGone(outgoing));
        }
        // The lane's stream failed but the connection is up: a new lane takes over.
        let lane = self.lane(&outgoing.topic)?;
        match lane.send(outgoing.frame).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendError(frame)) if self.link.is_dead() => {
                Err(SendError::ConnectionGone(Outgoing { frame, ..outgoing }))
            }
            Err(_) => Err(SendError::Failed(self.link.error())),
        }
    }

    /// The queue of `topic`'s lane, opening the lane if needed.
    fn lane(&self, topic: &TopicName) -> Result<mpsc::Sender<BytesMut>, SendError> {
        let mut table = lock(&self.lanes);
        if table.closed {
            return Err(SendError::Failed(ClientError::Closed));
        }
        if let Some(lane) = table.open.get(topic) {
            if !lane.frames.is_closed() {
                return Ok(lane.frames.clone());
            }
        }
        let predecessor = match table.open.remove(topic) {
            Some(failed) => Some(failed.done),
            None => table.closing.remove(topic),
        };
        let (frames, queue) = mpsc::channel(self.settings.lane_buffer);
        let context = LaneContext {
            link: Arc::clone(&self.link),
            topic: topic.clone(),
            rejections: self.rejections.clone(),
            replies: Arc::clone(&self.replies),
            acks: Arc::clone(&self.acks),
            close_timeout: self.settings.close_timeout,
        };
        let (running, done) = LaneDone::new();
        self.tracker.spawn(async move {
            let _running = running;
            run_lane(context, queue, predecessor).await;
        });
        let lane = OpenLane {
            frames: frames.clone(),
            done,
        };
        if let Some((evicted_topic, evicted)) = table.open.insert(topic.clone(), lane) {
            // Its sender is dropped here: the lane writes what is queued, then finishes.
            table.closing.retain(|_, done| !done.is_done());
            table.closing.insert(evicted_topic, evicted.done);
        }
        Ok(frames)
    }

    /// Closes every open lane and waits until the broker has read each one's stream to its end
    /// and answered it (rejections included): every publish queued before the call has then
    /// been processed by the broker. Later publishes open new lanes, which wait for these.
    pub(crate) async fn flush(&self) -> Result<(), ClientError> {
        let lanes: Vec<LaneDone> = {
            let mut table = lock(&self.lanes);
            if table.closed {
                return Err(ClientError::Closed);
            }
            table.closing.retain(|_, done| !done.is_done());
            for (topic, lane) in table.open.drain() {
                // Dropping its sender lets the lane write what is queued, then finish.
                table.closing.insert(topic, lane.done);
            }
            table.closing.values().cloned().collect()
        };
        let all = futures_util::future::join_all(lanes.into_iter().map(LaneDone::wait));
        timeout(self.settings.close_timeout, all)
            .await
            .map_err(|_| {
                ClientError::Timeout("waiting for the broker to read published messages")
            })?;
        if self.link.is_dead() {
            // A lane that ended with its connection may not have written everything.
            return Err(self.link.error());
        }
        Ok(())
    }

    /// Closes every lane and waits until each has written its queue and the broker has
    /// acknowledged its stream. Later publishes fail with [`ClientError::Closed`].
    pub(crate) async fn close(&self) -> Result<(), ClientError> {
        {
            let mut table = lock(&self.lanes);
            table.closed = true;
            let open = table.open.drain();
            drop(open);
            table.closing.clear();
        }
        self.tracker.close();
        timeout(self.settings.close_timeout, self.tracker.wait())
            .await
            .map_err(|_| {
                ClientError::Timeout("waiting for the broker to acknowledge published messages")
            })
    }
}
