//! The control stream's send half: one task writes every request, then the goodbye.

use std::sync::Arc;

use cassini_protocol::Frame;
use tokio::sync::mpsc;

use crate::connect::control::handle::{Answer, ControlCommand, Reply};
use crate::connect::control::pending::{PendingRequest, PendingRequests};
use crate::connect::disconnect::{write_error, Phase};
use crate::connect::framed::encode;
use crate::connect::link::Link;
use crate::error::SubscribeError;

/// Writes queued requests until the goodbye, until every handle is gone, or until a write
/// fails.
pub(crate) async fn run_writer(
    mut send: quinn::SendStream,
    mut commands: mpsc::Receiver<ControlCommand>,
    pending: Arc<PendingRequests>,
    link: Arc<Link>,
) {
    let mut next_id = 1;
    while let Some(command) = commands.recv().await {
        let (request, reply) = match command {
            ControlCommand::Goodbye { done } => {
                let _ = send.finish();
                let _ = done.send(());
                return;
            }
            ControlCommand::Request { request, reply } => (request, reply),
            ControlCommand::Ack(ack) => {
                let Ok(bytes) = encode(&Frame::Ack(ack), link.max_frame_bytes()) else {
                    continue;
                };
                if let Err(error) = send.write_all(&bytes).await {
                    let error = write_error(&error, Phase::Established);
                    tracing::debug!(%error, "control stream write failed");
                    return;
                }
                continue;
            }
        };
        let id = next_id;
        next_id += 1;
        let (frame, expected) = request.into_frame(id);
        let bytes = match encode(&frame, link.max_frame_bytes()) {
            Ok(bytes) => bytes,
            Err(error) => {
                answer(reply, Err(error.into()));
                continue;
            }
        };
        if let Err(refused) = pending.insert(id, PendingRequest { expected, reply }) {
            answer(refused.reply, Err(link.error().into()));
            continue;
        }
        if let Err(error) = send.write_all(&bytes).await {
            let error = write_error(&error, Phase::Established);
            tracing::debug!(%error, "control stream write failed");
            if let Some(request) = pending.take(id) {
                answer(request.reply, Err(error.into()));
            }
            return;
        }
    }
    // Every handle is gone: the client was dropped without `close()`.
    let _ = send.finish();
}

fn answer(reply: Option<Reply>, result: Result<Answer, SubscribeError>) {
    if let Some(reply) = reply {
        let _ = reply.send(result);
    }
}
