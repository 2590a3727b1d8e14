//! The client: `connect` and every operation, each an asyncio awaitable over the Rust future.

use std::sync::Arc;
use std::time::Duration;

use cassini_client::{
    AckOptions, Client, DeliveryClass, OverflowPolicy, OversizeRule, PublishOptions,
    ReconnectPolicy, SessionId, SubscribeOptions,
};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use tokio::sync::{watch, Mutex};

use crate::bridge::{future_into_py, runtime};
use crate::errors::py_result;
use crate::subscription::{NativeResponder, NativeSubscription};
use crate::types::{PyConnectionState, PyMessage, PyReceipt};

/// A duration in seconds from Python.
fn seconds(value: f64, what: &str) -> PyResult<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        PyValueError::new_err(format!("{what} must be a non-negative number of seconds"))
    })
}

/// A session id written as 32 hex digits.
fn session_id(hex: &str) -> PyResult<SessionId> {
    let invalid = || {
        PyValueError::new_err(format!(
            "invalid session id {hex:?}: 32 hex digits expected"
        ))
    };
    if hex.len() != 32 || !hex.is_ascii() {
        return Err(invalid());
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| invalid())?;
    }
    Ok(SessionId(id))
}

fn overflow_policy(name: &str) -> PyResult<OverflowPolicy> {
    Ok(match name {
        "drop-oldest" | "drop_oldest" => OverflowPolicy::DropOldest,
        "drop-newest" | "drop_newest" => OverflowPolicy::DropNewest,
        "latest" => OverflowPolicy::Latest,
        "close" => OverflowPolicy::Close,
        other => {
            return Err(PyValueError::new_err(format!(
                "unknown overflow policy {other:?}: drop-oldest, drop-newest, latest or close"
            )))
        }
    })
}

/// Connects: every argument as `cassini.connect` documents it.
#[pyfunction]
#[pyo3(signature = (
    address, *, ca=None, cert=None, key=None, cert_dir=None, name=None, server_name=None,
    client_name=None, session_name=None, resume_session=None, reconnect=true,
    reconnect_give_up_after=None, connect_timeout=None, subscription_buffer=None,
    ack_timeout=None, retry_first_connect=false,
))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn connect<'py>(
    py: Python<'py>,
    address: Vec<String>,
    ca: Option<String>,
    cert: Option<String>,
    key: Option<String>,
    cert_dir: Option<String>,
    name: Option<String>,
    server_name: Option<String>,
    client_name: Option<String>,
    session_name: Option<String>,
    resume_session: Option<String>,
    reconnect: bool,
    reconnect_give_up_after: Option<f64>,
    connect_timeout: Option<f64>,
    subscription_buffer: Option<usize>,
    ack_timeout: Option<f64>,
    retry_first_connect: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let mut builder = Client::builder(address);
    if let Some(dir) = cert_dir {
        builder = builder.cert_dir(dir, name.as_deref().unwrap_or("dev"));
    }
    if let Some(ca) = ca {
        builder = builder.ca_file(ca);
    }
    match (cert, key) {
        (Some(cert), Some(key)) => builder = builder.identity_files(cert, key),
        (None, None) => {}
        _ => return Err(PyValueError::new_err("give both cert and key, or neither")),
    }
    if let Some(server_name) = server_name {
        builder = builder.server_name(server_name);
    }
    if let Some(client_name) = client_name {
        builder = builder.client_name(client_name);
    }
    if let Some(session_name) = session_name {
        builder = builder.session_name(session_name);
    }
    if let Some(id) = resume_session {
        builder = builder.resume_session(session_id(&id)?);
    }
    let mut policy = if reconnect {
        ReconnectPolicy::default()
    } else {
        ReconnectPolicy::disabled()
    };
    if let Some(after) = reconnect_give_up_after {
        policy.give_up_after = Some(seconds(after, "reconnect_give_up_after")?);
    }
    builder = builder
        .reconnect(policy)
        .retry_first_connect(retry_first_connect);
    if let Some(timeout) = connect_timeout {
        builder = builder.connect_timeout(seconds(timeout, "connect_timeout")?);
    }
    if let Some(messages) = subscription_buffer {
        builder = builder.subscription_buffer(messages);
    }
    if let Some(timeout) = ack_timeout {
        builder = builder.ack_timeout(seconds(timeout, "ack_timeout")?);
    }
    future_into_py(py, async move {
        let client = builder.connect().await?;
        Ok(NativeClient::new(client))
    })
}

/// A connected client (the Python class `cassini.Client` wraps it).
#[pyclass(frozen, module = "cassini._native")]
pub(crate) struct NativeClient {
    /// None once dropped (see `Drop`).
    client: Option<Client>,
}

/// One watcher of a client's connection state: each `state_changes()` iteration has its own,
/// so two iterations both see every change (changes faster than it is read collapse into the
/// latest, as a Rust `watch` receiver does).
#[pyclass(frozen, module = "cassini._native")]
pub(crate) struct NativeStates {
    states: Arc<Mutex<watch::Receiver<cassini_client::ConnectionState>>>,
}

#[pymethods]
impl NativeStates {
    /// Waits for the next state change and returns the new state; None once the client is
    /// gone.
    fn next<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let states = Arc::clone(&self.states);
        future_into_py(py, async move {
            let mut states = states.lock().await;
            if states.changed().await.is_err() {
                return Ok(None);
            }
            let state = states.borrow_and_update().clone();
            Ok(Some(PyConnectionState::new(state)))
        })
    }
}

impl NativeClient {
    fn new(client: Client) -> Self {
        Self {
            client: Some(client),
        }
    }

    fn client(&self) -> PyResult<Client> {
        py_result(
            self.client
                .clone()
                .ok_or(cassini_client::ClientError::Closed),
        )
    }
}

impl Drop for NativeClient {
    fn drop(&mut self) {
        // Dropping the last handle closes the connection: within the runtime.
        let _entered = runtime().enter();
        drop(self.client.take());
    }
}

#[pymethods]
impl NativeClient {
    /// Publishes; with `ack` waits for the broker's acknowledgement and returns the receipt.
    #[pyo3(signature = (topic, payload, headers=None, retain=false, reply_to=None, ack=false, message_id=None, timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn publish<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        payload: Vec<u8>,
        headers: Option<Vec<(String, String)>>,
        retain: bool,
        reply_to: Option<String>,
        ack: bool,
        message_id: Option<u64>,
        timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let mut options = PublishOptions::new().retain(retain);
        if let Some(headers) = headers {
            options = options.headers(headers);
        }
        if let Some(reply_to) = reply_to {
            options = options.reply_to(reply_to);
        }
        if let Some(id) = message_id {
            options = options.message_id(id);
        }
        let timeout = timeout.map(|t| seconds(t, "timeout")).transpose()?;
        future_into_py(py, async move {
            if !ack {
                client.publish_with(&topic, payload, options).await?;
                return Ok(None);
            }
            let receipt = match timeout {
                Some(timeout) => {
                    client
                        .publish_acked_with_timeout(&topic, payload, options, timeout)
                        .await
                }
                None => client.publish_acked_with(&topic, payload, options).await,
            };
            Ok(Some(PyReceipt::new(receipt?)))
        })
    }

    /// Publishes in one QUIC datagram: fire and forget.
    fn publish_datagram<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        payload: Vec<u8>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move {
            Ok(client.publish_datagram(&topic, payload).await?)
        })
    }

    /// Subscribes; every option as `Client.subscribe` documents it.
    #[pyo3(signature = (filter, queue=None, ack=false, overflow=None, max_queued_messages=None, max_queued_bytes=None, datagram=false, max_in_flight=None, ack_timeout=None))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe<'py>(
        &self,
        py: Python<'py>,
        filter: String,
        queue: Option<String>,
        ack: bool,
        overflow: Option<String>,
        max_queued_messages: Option<u32>,
        max_queued_bytes: Option<u64>,
        datagram: bool,
        max_in_flight: Option<u32>,
        ack_timeout: Option<f64>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let mut options = SubscribeOptions {
            queue_group: queue,
            max_queued_messages,
            max_queued_bytes,
            ..SubscribeOptions::default()
        };
        if let Some(overflow) = overflow {
            options.overflow = overflow_policy(&overflow)?;
        }
        if ack {
            let ack_timeout_ms = ack_timeout
                .map(|t| seconds(t, "ack_timeout"))
                .transpose()?
                .map(|t| u32::try_from(t.as_millis()).unwrap_or(u32::MAX));
            options.acks = Some(AckOptions {
                max_in_flight,
                ack_timeout_ms,
            });
        }
        if datagram {
            options.delivery = DeliveryClass::Datagram {
                oversize: OversizeRule::Drop,
            };
        }
        future_into_py(py, async move {
            let subscription = client.subscribe_with(&filter, options).await?;
            Ok(NativeSubscription::new(subscription))
        })
    }

    /// Publishes a request and waits up to `timeout` seconds for the first reply.
    #[pyo3(signature = (topic, payload, timeout, headers=None))]
    fn request<'py>(
        &self,
        py: Python<'py>,
        topic: String,
        payload: Vec<u8>,
        timeout: f64,
        headers: Option<Vec<(String, String)>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        let timeout = seconds(timeout, "timeout")?;
        let options = PublishOptions::new().headers(headers.unwrap_or_default());
        future_into_py(py, async move {
            let reply = client
                .request_with(&topic, payload, options, timeout)
                .await?;
            Ok(PyMessage {
                message: reply,
                subscription: None,
            })
        })
    }

    /// Serves requests on `filter`, alone or in a queue group.
    #[pyo3(signature = (filter, queue=None))]
    fn serve<'py>(
        &self,
        py: Python<'py>,
        filter: String,
        queue: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move {
            let responder = match queue {
                Some(group) => client.serve_queue(&filter, &group).await,
                None => client.serve(&filter).await,
            };
            Ok(NativeResponder::new(responder?))
        })
    }

    /// Returns once the broker has processed every publish made before.
    fn flush<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move { Ok(client.flush().await?) })
    }

    /// One round trip, in seconds.
    fn ping<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move { Ok(client.ping().await?.as_secs_f64()) })
    }

    /// Delivers what was published, then closes and ends the session.
    fn close<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move { Ok(client.close().await?) })
    }

    /// Closes without ending the session: a later client may resume it.
    fn leave<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let client = self.client()?;
        future_into_py(py, async move { Ok(client.leave().await?) })
    }

    /// The state now.
    fn state(&self) -> PyResult<PyConnectionState> {
        Ok(PyConnectionState::new(self.client()?.state()))
    }

    /// A watcher of the state's changes from now on.
    fn state_watcher(&self) -> PyResult<NativeStates> {
        Ok(NativeStates {
            states: Arc::new(Mutex::new(self.client()?.state_changes())),
        })
    }

    /// The session id, 32 hex digits.
    fn session_id(&self) -> PyResult<String> {
        Ok(self.client()?.session_id().to_string())
    }

    /// The identity the broker read from this client's certificate.
    fn identity(&self) -> PyResult<String> {
        Ok(self.client()?.identity().to_owned())
    }

    /// How many times the client reconnected.
    fn reconnects(&self) -> PyResult<u64> {
        Ok(self.client()?.reconnects())
    }

    /// Whether the client has stopped for good.
    fn is_closed(&self) -> PyResult<bool> {
        Ok(self.client()?.is_closed())
    }

    /// A resumed session's subscriptions not taken up yet: `(id, filter)` pairs.
    fn unclaimed_subscriptions(&self) -> PyResult<Vec<(u64, String)>> {
        Ok(self
            .client()?
            .unclaimed_subscriptions()
            .into_iter()
            .map(|subscription| (subscription.subscription, subscription.filter))
            .collect())
    }
}
