//! The goodbye: [`Client::close`].
//!
//! Closing stops the reconnecting task first, so that no new connection is made, then says
//! goodbye on the current connection if there is one, and finally ends the session's state
//! (subscriptions, outbound buffer) with [`DisconnectReason::Closed`].

use std::time::Duration;

use tokio::time::timeout;

use super::Client;
use crate::connect::attachment::Attachment;
use crate::connect::connection_state::DisconnectReason;
use crate::connect::disconnect::{connection_error, Phase};
use crate::connect::session::AtClose;
use crate::error::{ClientError, ConnectionError};

/// After the connection is closed, how long to wait for the endpoint to tell the broker.
const WAIT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

impl Client {
    /// Says goodbye without losing published messages, then closes the connection; stops
    /// reconnecting for good.
    ///
    /// In order: closes every publish stream and waits until the broker has acknowledged all
    /// of them; finishes the control stream (the goodbye: the broker reads the publish streams
    /// to their end, ends the session and closes the connection); waits for the broker's
    /// close; waits for the endpoint to be idle, except for the draining period of the
    /// connection the broker closed. Each wait is bounded by `close_timeout`.
    /// Afterwards every operation fails with a `Closed` error ([`ConnectionError::Closed`]),
    /// every subscription ends with [`crate::SubscriptionEnd::Closed`] and the state is
    /// [`crate::ConnectionState::Disconnected`].
    ///
    /// Returns an error if the connection had already failed (messages may have been lost),
    /// if the client was reconnecting ([`ClientError::Disconnected`]: buffered publishes are
    /// dropped, and the broker keeps the session until it expires), if the client had ended
    /// for good (that error), or if the broker did not acknowledge the publish streams in
    /// time. A stateless reset in answer to the goodbye (the broker's close was lost and the
    /// broker has since forgotten the connection) counts as the broker's close; the same
    /// answer comes from a broker that had dropped the connection before the goodbye reached it
    /// (an idle timeout not yet noticed here), whose session is then only detached and expires
    /// after `sessions.expiry_secs`. Calling it again only waits for the first call to finish.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.end(Ending::Goodbye).await
    }

    /// Closes the connection without ending the session, which the broker keeps for its
    /// session expiry (`sessions.expiry`): a later client resumes it with
    /// [`crate::ClientBuilder::session_name`] or [`crate::ClientBuilder::resume_session`] and
    /// gets what was published meanwhile (queued under each subscription's bounds; at least
    /// once for at-least-once subscriptions, also across a broker restart in disk mode).
    ///
    /// In order: closes every publish stream and waits until the broker has acknowledged all
    /// of them; makes one round trip on the control stream, so that every acknowledgement sent
    /// before has reached the broker (call [`crate::Subscription::acknowledge`] first to
    /// include the message the application holds); closes the connection without a goodbye.
    /// Each wait is bounded by `close_timeout`. Afterwards the client is ended as after
    /// [`Client::close`]; its [`crate::Subscription`]s end, but stay in the broker's session.
    pub async fn leave(&self) -> Result<(), ClientError> {
        self.end(Ending::Leave).await
    }

    /// What [`Client::close`] and [`Client::leave`] share: a second call only waits for the
    /// first to finish; the reconnecting task stops first; whatever happens on the connection,
    /// the endpoint is closed and the client ended with [`DisconnectReason::Closed`].
    async fn end(&self, ending: Ending) -> Result<(), ClientError> {
        let inner = &self.inner;
        let core = &inner.core;
        let close_timeout = inner.settings.close_timeout;
        if core.start_closing() {
            let mut states = core.state_changes();
            let _ = timeout(
                close_timeout,
                states.wait_for(|state| state.is_disconnected()),
            )
            .await;
            return Ok(());
        }
        core.stop_token().cancel();
        // After a goodbye the broker closes the connection; then nothing of ours is left to
        // deliver and waiting out QUIC's draining period would only delay the caller.
        let mut broker_closed = false;
        let result = match core.at_close() {
            AtClose::Attached(attachment) => match ending {
                Ending::Goodbye => {
                    let farewell = goodbye(&attachment, close_timeout).await;
                    broker_closed = farewell.broker_closed;
                    farewell.result
                }
                Ending::Leave => leave(&attachment, close_timeout).await,
            },
            AtClose::Reconnecting { reason, buffered } => {
                Err(ending.while_reconnecting(&reason, buffered))
            }
            AtClose::Ended(ConnectionError::Closed) => Ok(()),
            AtClose::Ended(error) => Err(error.into()),
        };
        let (endpoint_reason, after): (&[u8], &str) = match ending {
            Ending::Goodbye => (b"goodbye", "close"),
            Ending::Leave => (b"leaving", "leaving"),
        };
        inner.endpoint.close(0u32.into(), endpoint_reason);
        // A connection left from an earlier attempt may still be sending its own close: the
        // endpoint is waited for unless the one the broker closed is all it holds.
        let only_the_closed_one = broker_closed && inner.endpoint.open_connections() <= 1;
        if !only_the_closed_one
            && timeout(WAIT_IDLE_TIMEOUT, inner.endpoint.wait_idle())
                .await
                .is_err()
        {
            tracing::debug!("endpoint not idle in time after {after}");
        }
        core.end(ConnectionError::Closed, DisconnectReason::Closed);
        result
    }
}

/// How the client ends: with a goodbye that ends the session ([`Client::close`]), or leaving
/// the session to the broker ([`Client::leave`]).
#[derive(Clone, Copy)]
enum Ending {
    Goodbye,
    Leave,
}

impl Ending {
    /// The error for an end while reconnecting, when the connection was down for `reason` and
    /// `buffered` publishes were never sent.
    fn while_reconnecting(self, reason: &str, buffered: usize) -> ClientError {
        let reason = match self {
            Ending::Goodbye => {
                if buffered > 0 {
                    tracing::warn!(
                        buffered,
                        "closed while reconnecting: buffered publishes dropped"
                    );
                }
                format!(
                    "closed while reconnecting ({reason}); {buffered} buffered publishes were \
                     not sent"
                )
            }
            Ending::Leave => format!("left while reconnecting ({reason})"),
        };
        ClientError::Disconnected { reason }
    }
}

/// Drains the publish lanes, makes one round trip on the control stream so that every
/// acknowledgement sent before has reached the broker, and closes the connection without a
/// goodbye.
async fn leave(attachment: &Attachment, close_timeout: Duration) -> Result<(), ClientError> {
    let drained = attachment.publisher.close().await;
    let synced = match timeout(close_timeout, attachment.control.ping()).await {
        Ok(result) => result.map_err(ClientError::from),
        Err(_) => Err(ClientError::Timeout("the broker's answer before leaving")),
    };
    attachment
        .link
        .connection()
        .close(0u32.into(), b"leaving; the session stays");
    drained.and(synced)
}

/// What [`goodbye`] came to.
struct Farewell {
    result: Result<(), ClientError>,
    /// The broker closed the connection (or, having closed it, answered with a reset): nothing
    /// of ours is left for the endpoint to deliver. Read from the close the broker sent, not
    /// from the connection afterwards: quinn reports every connection closed here as
    /// `LocallyClosed` once `close` has been called on it.
    broker_closed: bool,
}

/// Drains the publish lanes, sends the goodbye and waits for the broker to close the
/// connection.
async fn goodbye(attachment: &Attachment, close_timeout: Duration) -> Farewell {
    let connection = attachment.link.connection();
    let failed_before = connection.close_reason();
    let drained = attachment.publisher.close().await;
    let mut closed_by_broker = None;
    let mut broker_closed = false;
    if failed_before.is_none() {
        let said_goodbye = match attachment.control.goodbye().await {
            Ok(()) => true,
            Err(error) => {
                tracing::debug!(%error, "goodbye not sent");
                false
            }
        };
        match timeout(close_timeout, connection.closed()).await {
            // The broker's close was lost and the broker, having closed the connection on the
            // goodbye, no longer knows it: the goodbye was heard.
            Ok(quinn::ConnectionError::Reset) if said_goodbye => {
                tracing::debug!("the broker reset the connection after the goodbye");
                broker_closed = true;
            }
            Ok(reason) => {
                broker_closed = matches!(reason, quinn::ConnectionError::ApplicationClosed(_));
                closed_by_broker = Some(reason);
            }
            Err(_) => tracing::warn!(
                timeout = ?close_timeout,
                "the broker did not close the connection after goodbye; closing it"
            ),
        }
    }
    connection.close(0u32.into(), b"goodbye");
    let failure = [failed_before, closed_by_broker]
        .into_iter()
        .flatten()
        .map(|reason| connection_error(&reason, Phase::Established))
        .find(|error| !matches!(error, ConnectionError::Closed));
    Farewell {
        result: failure.map_or(drained, |error| Err(error.into())),
        broker_closed,
    }
}
