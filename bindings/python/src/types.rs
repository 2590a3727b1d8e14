//! The values handed to Python: messages, requests, gaps, connection states, receipts.

use std::sync::Arc;

use cassini_client::{ConnectionState, DisconnectReason, Gap, GapReason, Message, PublishReceipt};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use crate::subscription::SubscriptionShared;

/// The headers as a dict (a repeated key keeps its last value).
fn headers_dict<'py>(py: Python<'py>, message: &Message) -> PyResult<Bound<'py, PyDict>> {
    let dict = PyDict::new(py);
    for (key, value) in message.headers() {
        dict.set_item(key, value)?;
    }
    Ok(dict)
}

/// A delivered message.
#[pyclass(frozen, name = "Message", module = "cassini")]
pub(crate) struct PyMessage {
    pub(crate) message: Message,
    /// The at-least-once subscription it came from, and its place among the messages that
    /// subscription yielded, for `ack()`.
    pub(crate) subscription: Option<(Arc<SubscriptionShared>, u64)>,
}

#[pymethods]
impl PyMessage {
    /// The topic it was published to.
    #[getter]
    fn topic(&self) -> &str {
        self.message.topic()
    }

    /// The payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.message.payload())
    }

    /// The payload (nats.py's name).
    #[getter]
    fn data<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.message.payload())
    }

    /// The headers as a dict; a repeated key keeps its last value (see `header_list`).
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        headers_dict(py, &self.message)
    }

    /// The headers in order, as `(key, value)` pairs.
    #[getter]
    fn header_list(&self) -> Vec<(String, String)> {
        self.message.headers().clone()
    }

    /// The subscription's sequence number of this message (1, 2, 3, ...).
    #[getter]
    fn sequence(&self) -> u64 {
        self.message.sequence()
    }

    /// The publisher's message id (acknowledged publishes), or None.
    #[getter]
    fn message_id(&self) -> Option<u64> {
        self.message.message_id()
    }

    /// Where a reply goes, or None.
    #[getter]
    fn reply_to(&self) -> Option<&str> {
        self.message.reply_to()
    }

    /// Whether this is a topic's retained value replayed at subscribe time.
    #[getter]
    fn retained(&self) -> bool {
        self.message.is_retained()
    }

    /// Whether the broker sent it before (at-least-once redelivery).
    #[getter]
    fn redelivered(&self) -> bool {
        self.message.is_redelivered()
    }

    /// At-least-once: the application is done with this message; it is acknowledged now
    /// (otherwise it is when the next message is asked for, which acknowledged it already if
    /// it was). Does nothing otherwise.
    fn ack(&self) {
        if let Some((subscription, yielded)) = &self.subscription {
            subscription.acknowledge_yielded(*yielded);
        }
    }

    fn __repr__(&self) -> String {
        format!(
            "<Message topic={:?} sequence={} payload={} bytes>",
            self.message.topic(),
            self.message.sequence(),
            self.message.payload().len()
        )
    }
}

/// Messages a subscription will never yield.
#[pyclass(frozen, name = "Gap", module = "cassini")]
pub(crate) struct PyGap {
    gap: Gap,
}

impl PyGap {
    pub(crate) fn new(gap: Gap) -> Self {
        Self { gap }
    }
}

#[pymethods]
impl PyGap {
    /// `"missed"` (sequences `first..=last` skipped) or `"session_lost"` (the broker had
    /// forgotten the session: how many were lost is unknown).
    #[getter]
    fn kind(&self) -> &'static str {
        match self.gap {
            Gap::SessionLost { .. } => "session_lost",
            _ => "missed",
        }
    }

    /// The first missing sequence (`missed` only).
    #[getter]
    fn first(&self) -> Option<u64> {
        match self.gap {
            Gap::Missed { from, .. } => Some(from),
            _ => None,
        }
    }

    /// The last missing sequence, inclusive (`missed` only).
    #[getter]
    fn last(&self) -> Option<u64> {
        match self.gap {
            Gap::Missed { to, .. } => Some(to),
            _ => None,
        }
    }

    /// Why, as the broker announced it: `"overflow"`, `"undelivered"`,
    /// `"too_large_for_datagram"`, `"cluster_route"`, or None when only the sequence numbers
    /// showed it.
    #[getter]
    fn reason(&self) -> Option<&'static str> {
        match self.gap {
            Gap::Missed {
                reason: Some(reason),
                ..
            } => Some(match reason {
                GapReason::Overflow => "overflow",
                GapReason::Undelivered => "undelivered",
                GapReason::TooLargeForDatagram => "too_large_for_datagram",
                GapReason::ClusterRoute => "cluster_route",
            }),
            _ => None,
        }
    }

    /// How many messages were skipped, when known.
    #[getter]
    fn missed(&self) -> Option<u64> {
        self.gap.missed()
    }

    /// `session_lost`: the last sequence yielded in the lost session.
    #[getter]
    fn last_sequence(&self) -> Option<u64> {
        match self.gap {
            Gap::SessionLost { last_sequence } => Some(last_sequence),
            _ => None,
        }
    }

    fn __repr__(&self) -> String {
        match self.gap {
            Gap::Missed { from, to, reason } => {
                format!("<Gap missed {from}..={to} reason={reason:?}>")
            }
            Gap::SessionLost { last_sequence } => {
                format!("<Gap session_lost after {last_sequence}>")
            }
            _ => "<Gap>".to_owned(),
        }
    }
}

/// Where the client stands with the broker.
#[pyclass(frozen, name = "ConnectionState", module = "cassini")]
pub(crate) struct PyConnectionState {
    state: ConnectionState,
}

impl PyConnectionState {
    pub(crate) fn new(state: ConnectionState) -> Self {
        Self { state }
    }
}

#[pymethods]
impl PyConnectionState {
    /// `"connected"`, `"reconnecting"` or `"disconnected"` (for good).
    #[getter]
    fn kind(&self) -> &'static str {
        match self.state {
            ConnectionState::Connected { .. } => "connected",
            ConnectionState::Reconnecting { .. } => "reconnecting",
            _ => "disconnected",
        }
    }

    /// Whether connected now.
    #[getter]
    fn connected(&self) -> bool {
        self.state.is_connected()
    }

    /// The session id (hex) when connected.
    #[getter]
    fn session_id(&self) -> Option<String> {
        match &self.state {
            ConnectionState::Connected { session_id, .. } => Some(session_id.to_string()),
            _ => None,
        }
    }

    /// Connected: whether the previous connection's session was resumed.
    #[getter]
    fn resumed(&self) -> bool {
        matches!(self.state, ConnectionState::Connected { resumed: true, .. })
    }

    /// Reconnecting: the attempt under way, from 1.
    #[getter]
    fn attempt(&self) -> Option<u32> {
        match &self.state {
            ConnectionState::Reconnecting { attempt, .. } => Some(*attempt),
            _ => None,
        }
    }

    /// Reconnecting or disconnected: why.
    #[getter]
    fn reason(&self) -> Option<String> {
        match &self.state {
            ConnectionState::Reconnecting { reason, .. } => Some(reason.clone()),
            ConnectionState::Disconnected { reason } => Some(reason.to_string()),
            _ => None,
        }
    }

    /// Disconnected: `"closed"`, `"session_taken_over"`, `"refused"`, `"connection_lost"`
    /// or `"gave_up"`.
    #[getter]
    fn disconnect_reason(&self) -> Option<&'static str> {
        match &self.state {
            ConnectionState::Disconnected { reason } => Some(match reason {
                DisconnectReason::Closed => "closed",
                DisconnectReason::SessionTakenOver => "session_taken_over",
                DisconnectReason::Refused { .. } => "refused",
                DisconnectReason::ConnectionLost { .. } => "connection_lost",
                DisconnectReason::GaveUp { .. } => "gave_up",
                _ => "other",
            }),
            _ => None,
        }
    }

    fn __str__(&self) -> String {
        self.state.to_string()
    }

    fn __repr__(&self) -> String {
        format!("<ConnectionState {}>", self.state)
    }
}

/// The broker's acknowledgement of a publish made with `ack=True`.
#[pyclass(frozen, name = "PublishReceipt", module = "cassini", get_all)]
pub(crate) struct PyReceipt {
    /// The publish's message id.
    message_id: u64,
    /// The broker had this id already (a re-send after a reconnect): not routed again.
    duplicate: bool,
}

impl PyReceipt {
    pub(crate) fn new(receipt: PublishReceipt) -> Self {
        Self {
            message_id: receipt.message_id,
            duplicate: receipt.duplicate,
        }
    }
}

#[pymethods]
impl PyReceipt {
    fn __repr__(&self) -> String {
        format!(
            "<PublishReceipt message_id={} duplicate={}>",
            self.message_id, self.duplicate
        )
    }
}

/// A list of pyclass values, for a batch crossing to Python.
pub(crate) fn list_of<'py, T: pyo3::PyClass + Into<pyo3::PyClassInitializer<T>>>(
    py: Python<'py>,
    items: Vec<T>,
) -> PyResult<Bound<'py, PyList>> {
    let objects = items
        .into_iter()
        .map(|item| Bound::new(py, item))
        .collect::<PyResult<Vec<_>>>()?;
    PyList::new(py, objects)
}

/// Headers from Python: a dict, or a sequence of `(key, value)` pairs.
pub(crate) fn headers_arg(headers: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, String)>> {
    let Some(headers) = headers else {
        return Ok(Vec::new());
    };
    if let Ok(dict) = headers.cast::<PyDict>() {
        return dict
            .iter()
            .map(|(key, value)| Ok((key.extract()?, value.extract()?)))
            .collect();
    }
    headers.extract()
}
