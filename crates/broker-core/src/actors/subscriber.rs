//! A subscriber actor: owns one subscription's queue and the writer task feeding its stream.
//!
//! While its session is attached to a connection, a writer task drains the queue into a
//! stream on that connection; while detached, the queue keeps filling within its bounds.

use std::sync::Arc;

use cassini_protocol::{DeliveryClass, TopicFilter};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::connection::subscription_writer::{
    run_subscription_writer, EndNotices, WriterOutcome, WriterSettings, INBOX_STREAM_PRIORITY,
    SUBSCRIPTION_STREAM_PRIORITY,
};
use crate::queue::SubscriptionQueue;
use crate::router::SubscriberKey;
use crate::transport::Connection;

pub(crate) struct Subscriber;

pub(crate) struct SubscriberArgs {
    pub(crate) key: SubscriberKey,
    pub(crate) filter: TopicFilter,
    pub(crate) queue: Arc<SubscriptionQueue>,
    pub(crate) connection: Option<(Arc<dyn Connection>, EndNotices)>,
    pub(crate) max_frame_bytes: u32,
    pub(crate) delivery: DeliveryClass,
}

pub(crate) enum SubscriberMsg {
    /// Start writing to a new stream on this connection, continuing after `last_received` (the
    /// last sequence the client says it received) when it is known.
    Attach {
        connection: Arc<dyn Connection>,
        last_received: Option<u64>,
        /// Where the writer announces that the broker ended the subscription.
        notices: EndNotices,
    },
    /// Stop writing; keep queueing.
    Detach,
    /// The writer task of generation `generation` ended.
    WriterEnded {
        generation: u64,
        outcome: WriterOutcome,
    },
}

struct Writer {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

pub(crate) struct SubscriberState {
    key: SubscriberKey,
    priority: i32,
    queue: Arc<SubscriptionQueue>,
    max_frame_bytes: u32,
    delivery: DeliveryClass,
    writer: Option<Writer>,
    generation: u64,
}

impl SubscriberState {
    fn stop_writer(&mut self) {
        self.queue.set_attached(false);
        if let Some(writer) = self.writer.take() {
            writer.cancel.cancel();
        }
    }

    fn start_writer(
        &mut self,
        myself: &ActorRef<SubscriberMsg>,
        connection: Arc<dyn Connection>,
        last_received: Option<u64>,
        notices: EndNotices,
    ) {
        self.stop_writer();
        self.generation += 1;
        let generation = self.generation;
        let cancel = CancellationToken::new();
        let future = run_subscription_writer(
            connection,
            self.key,
            Arc::clone(&self.queue),
            cancel.clone(),
            WriterSettings {
                max_frame_bytes: self.max_frame_bytes,
                priority: self.priority,
                delivery: self.delivery,
            },
            last_received,
            notices,
        );
        self.queue.set_attached(true);
        let myself = myself.clone();
        let task = tokio::spawn(async move {
            let outcome = future.await;
            let _ = myself.send_message(SubscriberMsg::WriterEnded {
                generation,
                outcome,
            });
        });
        self.writer = Some(Writer { cancel, task });
    }
}

impl Drop for SubscriberState {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(writer) = self.writer.take() {
            writer.cancel.cancel();
            // The writer finishes or resets its stream when cancelled; it is only aborted if it
            // is still running after that, which cannot block (it is not awaited here).
            drop(writer.task);
        }
    }
}

impl Actor for Subscriber {
    type Msg = SubscriberMsg;
    type State = SubscriberState;
    type Arguments = SubscriberArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        tracing::debug!(subscription = args.key.subscription, filter = %args.filter, "subscriber started");
        let priority = if args.filter.as_str().starts_with("_INBOX.") {
            INBOX_STREAM_PRIORITY
        } else {
            SUBSCRIPTION_STREAM_PRIORITY
        };
        let mut state = SubscriberState {
            key: args.key,
            priority,
            queue: args.queue,
            max_frame_bytes: args.max_frame_bytes,
            delivery: args.delivery,
            writer: None,
            generation: 0,
        };
        if let Some((connection, notices)) = args.connection {
            state.start_writer(&myself, connection, None, notices);
        }
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            SubscriberMsg::Attach {
                connection,
                last_received,
                notices,
            } => state.start_writer(&myself, connection, last_received, notices),
            SubscriberMsg::Detach => state.stop_writer(),
            SubscriberMsg::WriterEnded {
                generation,
                outcome,
            } => {
                if generation != state.generation {
                    return Ok(());
                }
                state.writer = None;
                state.queue.set_attached(false);
                match outcome {
                    WriterOutcome::Overflowed => myself.stop(Some("slow consumer".into())),
                    WriterOutcome::Ended => myself.stop(Some("ended".into())),
                    WriterOutcome::NoStream => {
                        myself.stop(Some("the client allowed no stream for it".into()))
                    }
                    WriterOutcome::StoppedByPeer(code) => {
                        myself.stop(Some(format!("stream stopped by client with {code}")))
                    }
                    WriterOutcome::Cancelled | WriterOutcome::ConnectionLost(_) => {}
                }
            }
        }
        Ok(())
    }
}
