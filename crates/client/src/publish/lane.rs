//! One publish lane: the task that owns one topic's publish stream.
//!
//! The lane opens a bidirectional stream (after the lane it replaces for the same topic, if any,
//! has been acknowledged, so that the broker reads the topic's messages in order), then writes
//! the encoded `Publish` frames it receives from its bounded queue. After taking one frame it
//! takes the frames already queued behind it at once (as many as would fill [`MAX_BATCH_BYTES`]
//! were they the first's size), and writes the batch in one write: gathered into a buffer sized
//! for them, and handed to quinn as it is (a chunk quinn keeps, rather than bytes it copies). A second task reads the stream's receive half: the broker's `PublishRejected`
//! answers, which are logged and offered to the application, and its `NoResponders` answers,
//! which complete the waiting request at once.
//!
//! When every sender of its queue is gone the lane finishes its stream, waits for the broker to
//! acknowledge it (`stopped()`), then waits for the broker to finish the stream's other half.
//! The second wait is what keeps per-topic order across lanes: `stopped()` only says the
//! broker's QUIC stack has the bytes, while the broker finishes its half after it has read and
//! routed every `Publish` on the stream. It also means a rejection of the last publishes is
//! still read. Both waits are bounded by the close timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cassini_protocol::{ErrorCode, Frame, NoResponders, PublishRejected, TopicName};
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;

use crate::connect::disconnect::{write_error, Phase};
use crate::connect::framed::{decode_close_code, FrameReader, ReadFrameError};
use crate::connect::link::Link;
use crate::publish::receipt::PendingAcks;
use crate::request::replies::PendingReplies;

/// Most bytes gathered into one stream write.
pub(crate) const MAX_BATCH_BYTES: usize = 64 * 1024;

/// What a lane needs besides its queue.
#[derive(Debug, Clone)]
pub(crate) struct LaneContext {
    /// The connection.
    pub(crate) link: Arc<Link>,
    /// The topic every frame of this lane is for (for logs).
    pub(crate) topic: TopicName,
    /// Where rejections go for the application; full or untaken means logged only.
    pub(crate) rejections: mpsc::Sender<PublishRejected>,
    /// Requests waiting for a reply, which a `NoResponders` answer completes.
    pub(crate) replies: Arc<PendingReplies>,
    /// Acknowledged publishes waiting, which a `PublishAck` or `PublishRejected` completes.
    pub(crate) acks: Arc<PendingAcks>,
    /// How long to wait for the broker to acknowledge the finished stream.
    pub(crate) close_timeout: Duration,
}

/// Resolves once a lane's task has ended, however it ended (its `watch` sender lives in the
/// task's future). Clonable, so the next lane for the topic and a flush can both wait for it.
#[derive(Debug, Clone)]
pub(crate) struct LaneDone(watch::Receiver<()>);

impl LaneDone {
    /// A pair: the sender, to keep inside the lane's task, and the signal it drops.
    pub(crate) fn new() -> (watch::Sender<()>, Self) {
        let (sender, receiver) = watch::channel(());
        (sender, Self(receiver))
    }

    /// Whether the lane's task has ended.
    pub(crate) fn is_done(&self) -> bool {
        self.0.has_changed().is_err()
    }

    /// Waits until the lane's task has ended.
    pub(crate) async fn wait(mut self) {
        while self.0.changed().await.is_ok() {}
    }
}

/// Runs one lane until its queue is closed and its stream acknowledged, or its stream fails.
pub(crate) async fn run_lane(
    context: LaneContext,
    mut frames: mpsc::Receiver<BytesMut>,
    predecessor: Option<LaneDone>,
) {
    let topic = &context.topic;
    if let Some(predecessor) = predecessor {
        // Messages of the lane this one replaces must reach the broker first.
        predecessor.wait().await;
    }
    let (mut send, recv) = match context.link.connection().open_bi().await {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%topic, %error, "cannot open a publish stream");
            return;
        }
    };
    let reader = FrameReader::new(recv, context.link.max_frame_bytes());
    let answers = tokio::spawn(read_answers(
        reader,
        Arc::clone(&context.link),
        context.rejections.clone(),
        Arc::clone(&context.replies),
        Arc::clone(&context.acks),
    ));
    let mut taken = Vec::new();
    while let Some(first) = frames.recv().await {
        let batch = gather(first, &mut frames, &mut taken).await;
        if let Err(error) = send.write_chunk(batch).await {
            let error = write_error(&error, Phase::Established);
            if context.link.is_dead() {
                // The connection's end is logged once, where subscription streams are accepted.
                tracing::debug!(%topic, %error, "publish stream ended with the connection");
            } else {
                tracing::warn!(%topic, %error, "publish stream failed; messages queued on it are lost");
            }
            answers.abort();
            return;
        }
    }
    let _ = send.finish();
    match timeout(context.close_timeout, send.stopped()).await {
        Ok(Ok(None)) => {}
        Ok(Ok(Some(code))) => {
            tracing::warn!(%topic, %code, "the broker stopped a publish stream before reading it all");
        }
        Ok(Err(error)) => tracing::debug!(%topic, %error, "publish stream not acknowledged"),
        Err(_) => tracing::warn!(
            %topic,
            timeout = ?context.close_timeout,
            "publish stream not acknowledged in time"
        ),
    }
    if timeout(context.close_timeout, answers).await.is_err() {
        tracing::warn!(
            %topic,
            "the broker did not finish a closed publish stream in time; a newer stream for the \
             topic may overtake it"
        );
    }
}

/// `first` and the frames queued behind it now, in one buffer. A lone frame is its own batch.
/// The others are taken out of the queue in one go (one return of the queue's permits, not one
/// per frame): as many as would fill [`MAX_BATCH_BYTES`] if each were the size of `first`, and
/// at most what is queued, so this never waits. `taken` is scratch space, left empty.
async fn gather(
    first: BytesMut,
    frames: &mut mpsc::Receiver<BytesMut>,
    taken: &mut Vec<BytesMut>,
) -> Bytes {
    let queued = frames.len();
    if queued == 0 || first.len() >= MAX_BATCH_BYTES {
        return first.freeze();
    }
    let limit = (MAX_BATCH_BYTES / first.len().max(1) - 1).clamp(1, queued);
    frames.recv_many(taken, limit).await;
    let size = first.len() + taken.iter().map(BytesMut::len).sum::<usize>();
    let mut batch = BytesMut::with_capacity(size);
    batch.extend_from_slice(&first);
    for frame in taken.drain(..) {
        batch.extend_from_slice(&frame);
    }
    batch.freeze()
}

/// Reads the broker's answers on a publish stream until it finishes it.
async fn read_answers(
    mut reader: FrameReader,
    link: Arc<Link>,
    rejections: mpsc::Sender<PublishRejected>,
    replies: Arc<PendingReplies>,
    acks: Arc<PendingAcks>,
) {
    loop {
        match reader.next().await {
            Ok(Some(Frame::PublishRejected(rejected))) => {
                tracing::warn!(
                    topic = %rejected.topic,
                    code = ?rejected.code,
                    reason = %rejected.reason,
                    "the broker rejected a publish"
                );
                // An acknowledged publish's caller gets its rejection; otherwise a full or
                // untaken queue leaves it in the log only.
                if !acks.rejected(&rejected) {
                    let _ = rejections.try_send(rejected);
                }
            }
            Ok(Some(Frame::PublishAck(ack))) => {
                if !acks.acknowledged(ack) {
                    tracing::debug!(
                        message_id = ack.message_id,
                        "acknowledgement for a publish nobody waits for"
                    );
                }
            }
            Ok(Some(Frame::NoResponders(NoResponders { reply_to }))) => {
                if !replies.no_responders(&reply_to) {
                    tracing::debug!(%reply_to, "no responders for a request nobody waits for");
                }
            }
            Ok(Some(other)) => {
                let reason = format!("{} frame on a publish stream", other.kind());
                link.protocol_violation(ErrorCode::PROTOCOL_VIOLATION, &reason);
                return;
            }
            Ok(None) => return,
            Err(ReadFrameError::Stream(error)) => {
                tracing::debug!(%error, "publish stream answers ended");
                return;
            }
            Err(ReadFrameError::Decode(error)) => {
                let reason = format!("undecodable frame on a publish stream: {error}");
                link.protocol_violation(decode_close_code(&error), &reason);
                return;
            }
        }
    }
}
