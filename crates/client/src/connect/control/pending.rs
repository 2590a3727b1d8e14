//! Requests written to the control stream and not yet answered.

use std::collections::HashMap;
use std::sync::Mutex;

use cassini_protocol::RequestId;

use crate::connect::control::handle::{Expected, Reply};
use crate::sync::lock;

/// One request waiting for its answer.
#[derive(Debug)]
pub(crate) struct PendingRequest {
    /// The answer it expects, and what it carries until then.
    pub(crate) expected: Expected,
    /// Where the answer goes; `None` when nobody waits.
    pub(crate) reply: Option<Reply>,
}

/// Requests by id, shared by the control writer (which adds them) and reader (which takes them).
///
/// Once the reader is gone the table is closed: it drops every waiting request, so each caller
/// learns that the connection failed, and refuses new ones, so no caller waits for an answer
/// that can no longer arrive.
#[derive(Debug, Default)]
pub(crate) struct PendingRequests {
    /// The requests and whether answers can still arrive.
    state: Mutex<PendingState>,
}

#[derive(Debug, Default)]
struct PendingState {
    /// Waiting requests.
    requests: HashMap<RequestId, PendingRequest>,
    /// Set once no answer can arrive any more.
    closed: bool,
}

impl PendingRequests {
    /// Records a request about to be written; gives it back if the table is closed.
    pub(crate) fn insert(
        &self,
        id: RequestId,
        request: PendingRequest,
    ) -> Result<(), PendingRequest> {
        let mut state = lock(&self.state);
        if state.closed {
            return Err(request);
        }
        state.requests.insert(id, request);
        Ok(())
    }

    /// Takes the request answered by a frame naming `id`.
    pub(crate) fn take(&self, id: RequestId) -> Option<PendingRequest> {
        lock(&self.state).requests.remove(&id)
    }

    /// Drops every waiting request and refuses new ones.
    pub(crate) fn close(&self) {
        let abandoned = {
            let mut state = lock(&self.state);
            state.closed = true;
            std::mem::take(&mut state.requests)
        };
        drop(abandoned);
    }
}
