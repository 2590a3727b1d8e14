//! One connection of the client and the tasks that serve it.
//!
//! An [`Attachment`] is what a successful handshake becomes: the [`Link`], the control stream's
//! writer and reader tasks behind a [`ControlHandle`], the task accepting subscription streams, and
//! the [`Publisher`] with its lanes. Everything here lives and dies with its connection; what must
//! outlive it (the subscriptions, the outbound buffer) is in [`crate::connect::session`], and the
//! parts shared with every attachment are in [`AttachmentContext`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use cassini_protocol::PublishRejected;
use tokio::sync::mpsc;

use crate::connect::connector::Established;
use crate::connect::control::handle::{self as control, ControlHandle};
use crate::connect::control::pending::PendingRequests;
use crate::connect::control::reader::run_reader;
use crate::connect::control::writer::run_writer;
use crate::connect::link::Link;
use crate::publish::publisher::{Publisher, PublisherSettings};
use crate::publish::receipt::PendingAcks;
use crate::request::replies::PendingReplies;
use crate::subscribe::incoming::accept_streams;
use crate::subscribe::registry::SubscriptionRegistry;

/// The next [`Attachment::id`].
static NEXT_ATTACHMENT_ID: AtomicU64 = AtomicU64::new(1);

/// What every connection of one client shares.
#[derive(Debug)]
pub(crate) struct AttachmentContext {
    /// The session's subscriptions, which every connection's streams deliver to.
    pub(crate) registry: Arc<SubscriptionRegistry>,
    /// Set when the user closes the client.
    pub(crate) closing: Arc<AtomicBool>,
    /// Where publish rejections go for the application.
    pub(crate) rejections: mpsc::Sender<PublishRejected>,
    /// Requests waiting for a reply, which a `NoResponders` answer completes.
    pub(crate) replies: Arc<PendingReplies>,
    /// Acknowledged publishes waiting, across connections.
    pub(crate) acks: Arc<PendingAcks>,
    /// Lane count and sizes.
    pub(crate) publisher: PublisherSettings,
}

/// One established connection and its tasks.
#[derive(Debug)]
pub(crate) struct Attachment {
    /// Distinguishes this connection from every other of the process: which connection an
    /// acknowledged publish was handed to.
    pub(crate) id: u64,
    /// The connection and what is known about it.
    pub(crate) link: Arc<Link>,
    /// Requests on this connection's control stream.
    pub(crate) control: ControlHandle,
    /// This connection's publish lanes.
    pub(crate) publisher: Publisher,
}

impl Attachment {
    /// Starts the tasks that serve `established`.
    pub(crate) fn start(established: Established, context: &AttachmentContext) -> Arc<Self> {
        let Established {
            connection,
            control_send,
            control_reader,
            welcome,
        } = established;
        let link = Arc::new(Link::new(connection, welcome, Arc::clone(&context.closing)));
        let pending = Arc::new(PendingRequests::default());
        let (commands, command_queue) = mpsc::channel(control::COMMAND_QUEUE);
        let control = ControlHandle::new(commands, Arc::clone(&link));
        tokio::spawn(run_writer(
            control_send,
            command_queue,
            Arc::clone(&pending),
            Arc::clone(&link),
        ));
        tokio::spawn(run_reader(
            control_reader,
            pending,
            Arc::clone(&context.registry),
            control.downgrade(),
        ));
        tokio::spawn(accept_streams(
            Arc::clone(&link),
            Arc::clone(&context.registry),
        ));
        tokio::spawn(crate::subscribe::incoming::read_datagrams(
            Arc::clone(&link),
            Arc::clone(&context.registry),
        ));
        let publisher = Publisher::new(
            Arc::clone(&link),
            context.publisher,
            context.rejections.clone(),
            Arc::clone(&context.replies),
            Arc::clone(&context.acks),
        );
        Arc::new(Self {
            id: NEXT_ATTACHMENT_ID.fetch_add(1, Ordering::Relaxed),
            link,
            control,
            publisher,
        })
    }

    /// Whether this connection has ended.
    pub(crate) fn is_dead(&self) -> bool {
        self.link.is_dead()
    }
}
