//! Request and reply: the client's reply inbox, the requests waiting for a reply, and serving
//! requests ([`Responder`](responder::Responder)).

pub(crate) mod inbox;
pub(crate) mod replies;
pub(crate) mod responder;
