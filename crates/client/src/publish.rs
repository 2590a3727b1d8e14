//! Publishing: validation, and which lane carries which topic.
//!
//! Every topic is published on its own stream, a lane (see [`crate::lane`]), so messages to one
//! topic stay in order and a large or slow topic does not delay the others. At most
//! `max_lanes` lanes are open; a new topic closes the least recently used lane. A closed lane
//! finishes its stream, and a later lane for the same topic waits until the broker has
//! acknowledged that stream before it sends, so per-topic order holds across lanes too.
//!
//! `publish` validates before anything is queued (topic rules, for the topic and any `reply_to`,
//! and payload size from the broker's `Welcome`), then waits for room in the lane's bounded queue: that wait is the backpressure a
//! fast publisher feels when the broker or the network is slower.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_protocol::{Frame, Publish, PublishRejected, SessionId, TopicName};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::task::TaskTracker;

use crate::error::ClientError;
use crate::framed::encode;
use crate::lane::{run_lane, LaneContext};
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
}

#[derive(Debug)]
struct LaneTable {
    /// Open lanes by topic.
    open: LruMap<TopicName, OpenLane>,
    /// Lanes that were evicted and may still be writing, by topic: the next lane for the topic
    /// waits for them.
    closing: HashMap<TopicName, JoinHandle<()>>,
    /// Set by `close`: no new lanes.
    closed: bool,
}

#[derive(Debug)]
struct OpenLane {
    /// The lane's queue; dropping the last sender closes the lane.
    frames: mpsc::Sender<BytesMut>,
    /// The lane's task.
    task: JoinHandle<()>,
}

impl Publisher {
    pub(crate) fn new(
        link: Arc<Link>,
        settings: PublisherSettings,
        rejections: mpsc::Sender<PublishRejected>,
        replies: Arc<PendingReplies>,
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
        }
    }

    /// Validates and queues one message; `to_session` makes it a direct message. Returns once
    /// the message is queued on its topic's lane, not when the broker has it.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Bytes,
        options: PublishOptions,
        to_session: Option<SessionId>,
    ) -> Result<(), ClientError> {
        if self.link.is_closing() {
            return Err(ClientError::Closed);
        }
        let limits = self.link.topic_limits();
        let topic = TopicName::parse(topic, &limits).map_err(ClientError::InvalidTopic)?;
        if let Some(reply_to) = &options.reply_to {
            TopicName::parse(reply_to, &limits).map_err(ClientError::InvalidReplyTo)?;
        }
        let max = self.link.limits().max_payload_bytes;
        if payload.len() > max as usize {
            return Err(ClientError::PayloadTooLarge {
                size: payload.len(),
                max,
            });
        }
        let PublishOptions {
            headers,
            message_id,
            retain,
            reply_to,
        } = options;
        let publish = Frame::Publish(Publish {
            topic: topic.as_str().to_owned(),
            headers,
            payload,
            message_id,
            reply_to,
            retain,
            to_session,
        });
        let frame = encode(&publish, self.link.max_frame_bytes())?;
        let lane = self.lane(&topic)?;
        let Err(mpsc::error::SendError(frame)) = lane.send(frame).await else {
            return Ok(());
        };
        // The lane's stream failed. If the connection is still up, a new lane takes over.
        if self.link.connection().close_reason().is_some() {
            return Err(self.link.error());
        }
        let lane = self.lane(&topic)?;
        lane.send(frame).await.map_err(|_| self.link.error())
    }

    /// The queue of `topic`'s lane, opening the lane if needed.
    fn lane(&self, topic: &TopicName) -> Result<mpsc::Sender<BytesMut>, ClientError> {
        let mut table = lock(&self.lanes);
        if table.closed {
            return Err(ClientError::Closed);
        }
        if let Some(lane) = table.open.get(topic) {
            if !lane.frames.is_closed() {
                return Ok(lane.frames.clone());
            }
        }
        let predecessor = match table.open.remove(topic) {
            Some(failed) => Some(failed.task),
            None => table.closing.remove(topic),
        };
        let (frames, queue) = mpsc::channel(self.settings.lane_buffer);
        let context = LaneContext {
            link: Arc::clone(&self.link),
            topic: topic.clone(),
            rejections: self.rejections.clone(),
            replies: Arc::clone(&self.replies),
            close_timeout: self.settings.close_timeout,
        };
        let task = self.tracker.spawn(run_lane(context, queue, predecessor));
        let lane = OpenLane {
            frames: frames.clone(),
            task,
        };
        if let Some((evicted_topic, evicted)) = table.open.insert(topic.clone(), lane) {
            // Its sender is dropped here: the lane writes what is queued, then finishes.
            table.closing.retain(|_, task| !task.is_finished());
            table.closing.insert(evicted_topic, evicted.task);
        }
        Ok(frames)
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
