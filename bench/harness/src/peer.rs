//! What a scenario needs from a broker's client, and nothing more: publish, subscribe, request.
//! Each broker under test gets an adapter implementing these traits (Cassini's lives in the
//! `cassini` binary, NATS's and Mosquitto's in `cassini-bench-peers`).
//!
//! An adapter must make `subscribe` return only once the broker has the subscription in place,
//! so that a message published afterwards on another connection reaches it.

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Makes connected clients of one broker.
#[async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The client type.
    type Client: BenchClient;

    /// The broker's name in reports, e.g. `cassini`, `nats`, `mosquitto-qos1`.
    fn broker(&self) -> String;

    /// Opens a new connection named `name`.
    async fn connect(&self, name: &str) -> anyhow::Result<Self::Client>;

    /// Starts a responder on its own connection that answers each request on `topic` with the
    /// request's payload, until `stop`; returns once it serves. Fails at once if the broker has
    /// no request/reply.
    async fn serve_echo(
        &self,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<JoinHandle<anyhow::Result<u64>>>;
}

/// One connection to the broker under test.
#[async_trait]
pub trait BenchClient: Clone + Send + Sync + 'static {
    /// A subscription of this client.
    type Subscription: BenchSubscription;

    /// Publishes `payload` to `topic`, waiting only as long as the client's own flow control
    /// makes it wait. Not boxed (unlike the other methods): a boxed future per message would
    /// be counted as the client's cost.
    fn publish(
        &self,
        topic: &str,
        payload: Bytes,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;

    /// Waits until every publish so far has been handed to the network.
    async fn flush(&self) -> anyhow::Result<()>;

    /// Subscribes to `topic`; returns once the broker has the subscription in place.
    async fn subscribe(&self, topic: &str) -> anyhow::Result<Self::Subscription>;

    /// Sends a request and waits at most `timeout` for its reply.
    async fn request(
        &self,
        topic: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> anyhow::Result<Bytes>;

    /// Closes the connection.
    async fn close(&self) -> anyhow::Result<()>;
}

/// The messages of one subscription.
pub trait BenchSubscription: Send + 'static {
    /// The next message's payload, or `None` once the subscription has ended. Not boxed, as
    /// [`BenchClient::publish`].
    fn next(&mut self) -> impl Future<Output = Option<Bytes>> + Send;
}

/// The two ends of a one-publisher, one-subscriber scenario: a `bench-subscriber` connection
/// subscribed to `topic`, its subscription, and a `bench-publisher` connection.
pub async fn publisher_and_subscriber<C: Connector>(
    connector: &C,
    topic: &str,
) -> anyhow::Result<(
    C::Client,
    <C::Client as BenchClient>::Subscription,
    C::Client,
)> {
    let subscriber = connector
        .connect("bench-subscriber")
        .await
        .context("subscriber")?;
    let subscription = subscriber.subscribe(topic).await?;
    let publisher = connector
        .connect("bench-publisher")
        .await
        .context("publisher")?;
    Ok((subscriber, subscription, publisher))
}

/// The loop of a [`Connector::serve_echo`] responder: hands each request of `requests` to
/// `answer` (which says whether it answered it) until `stop` is cancelled or the requests end,
/// and returns how many it answered.
pub async fn answer_until_stopped<S, A, F>(
    requests: &mut S,
    stop: &CancellationToken,
    mut answer: A,
) -> anyhow::Result<u64>
where
    S: Stream + Unpin,
    A: FnMut(S::Item) -> F,
    F: Future<Output = anyhow::Result<bool>>,
{
    let mut answered = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            request = requests.next() => {
                let Some(request) = request else { break };
                if answer(request).await? {
                    answered += 1;
                }
            }
        }
    }
    Ok(answered)
}
