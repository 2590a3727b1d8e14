//! The control stream: subscribe, unsubscribe, ping, acknowledgements, goodbye.
//!
//! Two tasks own the stream's halves. The writer (`writer`) takes commands from a bounded queue,
//! gives each request an id, records it in the `PendingRequests` table and writes its frame; since
//! only the writer touches the send stream, a caller that gives up waiting can never leave half a
//! frame behind. The reader (`reader`) matches each answer to its pending request and completes it;
//! for a subscription it first registers the subscription's channel so that the subscription's
//! stream can find it. [`ControlHandle`](handle::ControlHandle) is what the rest of the client
//! uses: it queues a command and waits for the answer.
//!
//! `handle` holds the types the other files share; `pending` is the table of requests waiting
//! for their answer; `writer` and `reader` are the two tasks.

pub(crate) mod handle;
pub(crate) mod pending;
pub(crate) mod reader;
pub(crate) mod writer;
