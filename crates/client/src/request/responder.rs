//! Serving requests: a [`Responder`] is a subscription whose messages come as [`Request`]s,
//! each able to publish its reply.
//!
//! A request is an ordinary message with a `reply_to` topic (see [`crate::Client::request`]);
//! answering it is an ordinary publish to that topic. This module only pairs each delivered
//! message with the client that can publish the answer.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;

use crate::client::Client;
use crate::error::{ClientError, SubscribeError};
use crate::message::Message;
use crate::publish::options::PublishOptions;
use crate::subscribe::subscription::Subscription;

/// Serving requests: the way to a [`Responder`].
impl Client {
    /// Serves requests published to `filter`: every subscriber gets every request, so with
    /// several responders the requester takes the first reply. See [`Client::serve_queue`] to
    /// share the load instead.
    pub async fn serve(&self, filter: &str) -> Result<Responder, SubscribeError> {
        let subscription = self.subscribe(filter).await?;
        Ok(Responder::new(subscription, self.clone()))
    }

    /// Serves requests published to `filter` as a member of the queue group `group`: each
    /// request goes to one of the responders sharing the filter and group name. See
    /// [`Client::subscribe_queue`].
    pub async fn serve_queue(
        &self,
        filter: &str,
        group: &str,
    ) -> Result<Responder, SubscribeError> {
        let subscription = self.subscribe_queue(filter, group).await?;
        Ok(Responder::new(subscription, self.clone()))
    }
}

/// A [`Stream`] of the [`Request`]s published to a filter; made by [`Client::serve`] or
/// [`Client::serve_queue`].
///
/// It yields every message the subscription receives, in order, including messages without a
/// `reply_to`, which cannot be answered ([`Request::respond`] fails on them). It holds a clone
/// of the [`Client`], so the connection stays open while the responder lives. Dropping it ends
/// the subscription, as dropping a [`Subscription`] does.
#[derive(Debug)]
pub struct Responder {
    /// The subscription the requests arrive on.
    subscription: Subscription,
    /// Publishes the replies.
    client: Client,
}

impl Responder {
    pub(crate) fn new(subscription: Subscription, client: Client) -> Self {
        Self {
            subscription,
            client,
        }
    }

    /// The subscription the requests arrive on: its id, filter, drops and end reason.
    pub fn subscription(&self) -> &Subscription {
        &self.subscription
    }

    /// The next request, or `None` once the subscription has ended (see
    /// [`Subscription::end_reason`]). The same as `StreamExt::next`, without importing the trait.
    pub async fn recv(&mut self) -> Option<Request> {
        let message = self.subscription.recv().await?;
        Some(self.request(message))
    }

    /// Stops serving: ends the subscription and waits for the broker's answer; see
    /// [`Subscription::unsubscribe`].
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        self.subscription.unsubscribe().await
    }

    fn request(&self, message: Message) -> Request {
        Request {
            message,
            client: self.client.clone(),
        }
    }
}

impl Stream for Responder {
    type Item = Request;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Request>> {
        Pin::new(&mut self.subscription)
            .poll_next(cx)
            .map(|message| message.map(|message| self.request(message)))
    }
}

/// One request received by a [`Responder`].
#[derive(Debug, Clone)]
pub struct Request {
    /// The request as delivered.
    message: Message,
    /// Publishes the reply.
    client: Client,
}

impl Request {
    /// The request message: topic, headers, payload and `reply_to`.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The request's payload.
    pub fn payload(&self) -> &Bytes {
        self.message.payload()
    }

    /// Takes the request message.
    pub fn into_message(self) -> Message {
        self.message
    }

    /// Publishes `payload` to the request's `reply_to`. Fails with [`ClientError::NoReplyTo`]
    /// if the message has none; otherwise as [`Client::publish`] does. Only the first reply
    /// reaches a [`Client::request`]; the requester drops later ones.
    pub async fn respond(&self, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.respond_with(payload, PublishOptions::default()).await
    }

    /// Publishes `payload` with `options` (e.g. headers) to the request's `reply_to`; see
    /// [`Request::respond`].
    pub async fn respond_with(
        &self,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<(), ClientError> {
        let reply_to = self
            .message
            .reply_to()
            .ok_or_else(|| ClientError::NoReplyTo {
                topic: self.message.topic().to_owned(),
            })?;
        Ok(self.client.publish_with(reply_to, payload, options).await?)
    }
}
