//! Subscriptions and responders, read in batches: one crossing into Rust hands Python every
//! message that is ready (up to a maximum), and the Python side yields them from a buffer.
//!
//! Each has two ways in: `poll_batch`, synchronous, which takes what is ready now without
//! waiting (no asyncio future, no task: the fast path while messages stream in), and
//! `next_batch`, an awaitable that waits for the first item and takes whatever else is ready.
//! Cancelling the awaitable drops the Rust future: the subscription's lock is released and
//! nothing is lost (reading a subscription is cancel-safe).

use std::sync::Arc;

use cassini_client::{Request, Responder, Subscription, SubscriptionEvent};
use futures_util::FutureExt;
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};
use tokio::sync::Mutex;

use crate::bridge::{future_into_py, runtime};
use crate::interrupt::Interrupt;
use crate::types::{headers_arg, list_of, PyGap, PyMessage};

/// A subscription, shared by the Python object and the messages that can acknowledge it.
pub(crate) struct SubscriptionShared {
    /// None once closed.
    subscription: Mutex<Option<Subscription>>,
    /// Items a `wait` took that Python has not yet: `poll_batch` hands them over first. A
    /// wait whose asyncio future was cancelled just as it finished leaves its items here, so
    /// none is lost.
    ready: std::sync::Mutex<Ready>,
    /// The subscription's counters as of the last read, readable while a read waits.
    stats: std::sync::Mutex<Stats>,
    /// At least once: one message per crossing, so none is acknowledged before Python saw it.
    at_least_once: bool,
    /// Lets `unsubscribe` and `close` past a read that waits with the lock.
    interrupt: Interrupt,
    /// How many messages it has yielded: the last one is the one the subscription holds
    /// unacknowledged (at least once: one message per crossing).
    yielded: std::sync::atomic::AtomicU64,
}

impl SubscriptionShared {
    /// Acknowledges the `yielded`th message yielded, if it is the one the subscription holds
    /// (an earlier one was acknowledged when the next was asked for).
    pub(crate) fn acknowledge_yielded(&self, yielded: u64) {
        if self.yielded.load(std::sync::atomic::Ordering::Acquire) == yielded {
            self.acknowledge();
        }
    }

    /// Acknowledges the last message yielded. When a read is under way (it holds the lock),
    /// asking for the next message has acknowledged it already.
    pub(crate) fn acknowledge(&self) {
        let _entered = runtime().enter();
        if let Ok(mut guard) = self.subscription.try_lock() {
            if let Some(subscription) = guard.as_mut() {
                subscription.acknowledge();
            }
        }
    }
}

impl Drop for SubscriptionShared {
    fn drop(&mut self) {
        // Dropping a Subscription unsubscribes in the background: within the runtime.
        let _entered = runtime().enter();
        drop(self.subscription.get_mut().take());
    }
}

/// A message or a gap, on its way to Python.
enum Item {
    Message(PyMessage),
    Gap(PyGap),
}

/// A subscription's counters and gaps, copied whenever a read holds it.
#[derive(Default)]
struct Stats {
    id: u64,
    dropped: u64,
    gaps: u64,
    lost: u64,
    end_reason: Option<String>,
    /// Gaps not yet taken by `take_gaps` (the latest 1,024).
    recorded: std::collections::VecDeque<cassini_client::Gap>,
}

/// Most gaps kept for `take_gaps`, as the Rust subscription does.
const MAX_RECORDED_GAPS: usize = 1024;

impl Stats {
    fn update(&mut self, subscription: &mut Subscription) {
        self.id = subscription.id();
        self.dropped = subscription.dropped();
        self.gaps = subscription.gaps();
        self.lost = subscription.lost();
        self.end_reason = subscription.end_reason().map(|end| end.to_string());
        self.recorded.extend(subscription.take_gaps());
        while self.recorded.len() > MAX_RECORDED_GAPS {
            self.recorded.pop_front();
        }
    }
}

/// Items taken from the subscription, not yet handed to Python.
#[derive(Default)]
struct Ready {
    items: std::collections::VecDeque<Item>,
    /// The subscription has ended after these items.
    ended: bool,
}

/// What one crossing hands Python: the items, and whether the subscription has ended (after
/// them).
struct Batch {
    items: Vec<Item>,
    ended: bool,
}

impl<'py> IntoPyObject<'py> for Batch {
    type Target = PyTuple;
    type Output = Bound<'py, PyTuple>;
    type Error = PyErr;

    fn into_pyobject(self, py: Python<'py>) -> PyResult<Self::Output> {
        let list = PyList::empty(py);
        for item in self.items {
            match item {
                Item::Message(message) => list.append(Bound::new(py, message)?)?,
                Item::Gap(gap) => list.append(Bound::new(py, gap)?)?,
            }
        }
        (list, self.ended).into_pyobject(py)
    }
}

impl SubscriptionShared {
    fn item(self: &Arc<Self>, event: SubscriptionEvent) -> Option<Item> {
        match event {
            SubscriptionEvent::Message(message) => {
                let yielded = self
                    .yielded
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
                    .wrapping_add(1);
                Some(Item::Message(PyMessage {
                    message,
                    subscription: self.at_least_once.then(|| (Arc::clone(self), yielded)),
                }))
            }
            SubscriptionEvent::Gap(gap) => Some(Item::Gap(PyGap::new(gap))),
            _ => None,
        }
    }

    /// Takes what the subscription has ready now, until `ready` holds `max` items.
    fn take_ready(
        self: &Arc<Self>,
        subscription: &mut Subscription,
        ready: &mut Ready,
        max: usize,
    ) {
        while ready.items.len() < max && !ready.ended {
            match subscription.next_event().now_or_never() {
                Some(Some(event)) => ready.items.extend(self.item(event)),
                Some(None) => ready.ended = true,
                None => break,
            }
        }
        self.stats().update(subscription);
    }

    fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn ready(&self) -> std::sync::MutexGuard<'_, Ready> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn max(&self, max: usize) -> usize {
        if self.at_least_once {
            1
        } else {
            max.max(1)
        }
    }
}

/// A subscription (the Python class `cassini.Subscription` wraps it).
#[pyclass(frozen, module = "cassini._native")]
pub(crate) struct NativeSubscription {
    shared: Arc<SubscriptionShared>,
    filter: String,
}

impl NativeSubscription {
    pub(crate) fn new(subscription: Subscription) -> Self {
        let at_least_once = subscription.options().acks.is_some();
        let filter = Subscription::filter(&subscription).to_owned();
        Self {
            shared: Arc::new(SubscriptionShared {
                subscription: Mutex::new(Some(subscription)),
                ready: std::sync::Mutex::default(),
                stats: std::sync::Mutex::default(),
                at_least_once,
                interrupt: Interrupt::default(),
                yielded: std::sync::atomic::AtomicU64::new(0),
            }),
            filter,
        }
    }
}

#[pymethods]
impl NativeSubscription {
    /// What is ready now, without waiting: `(items, ended)`, at most `max` items. Takes
    /// from the subscription itself unless a `wait` holds it.
    fn poll_batch<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyTuple>> {
        let _entered = runtime().enter();
        let max = self.shared.max(max);
        let mut ready = self.shared.ready();
        if ready.items.len() < max {
            if let Ok(mut guard) = self.shared.subscription.try_lock() {
                match guard.as_mut() {
                    Some(subscription) => {
                        self.shared.take_ready(subscription, &mut ready, max);
                    }
                    None => ready.ended = true,
                }
            }
        }
        let count = ready.items.len().min(max);
        let batch = Batch {
            items: ready.items.drain(..count).collect(),
            ended: ready.ended && ready.items.is_empty(),
        };
        drop(ready);
        batch.into_pyobject(py)
    }

    /// Waits until the subscription has an item (or has ended) and takes what is ready (up
    /// to `max`) for the next `poll_batch`.
    fn wait<'py>(&self, py: Python<'py>, max: usize) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            let mut guard = shared.subscription.lock().await;
            let max = shared.max(max);
            if shared.interrupt.is_closed() {
                drop(guard.take());
            }
            {
                let ready = shared.ready();
                if !ready.items.is_empty() || ready.ended {
                    return Ok(());
                }
            }
            let Some(subscription) = guard.as_mut() else {
                shared.ready().ended = true;
                return Ok(());
            };
            loop {
                let event = tokio::select! {
                    event = subscription.next_event() => event,
                    () = shared.interrupt.interrupted() => {
                        if shared.interrupt.is_closed() {
                            drop(guard.take());
                            shared.ready().ended = true;
                        }
                        return Ok(());
                    }
                };
                match event {
                    Some(event) => {
                        if let Some(item) = shared.item(event) {
                            let mut ready = shared.ready();
                            ready.items.push_back(item);
                            shared.take_ready(subscription, &mut ready, max);
                            return Ok(());
                        }
                    }
                    None => {
                        shared.ready().ended = true;
                        shared.stats().update(subscription);
                        return Ok(());
                    }
                }
            }
        })
    }

    /// Asks the broker to end the subscription and waits for its answer.
    fn unsubscribe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            shared.interrupt.interrupt();
            let mut guard = shared.subscription.lock().await;
            if let Some(subscription) = guard.as_mut() {
                subscription.unsubscribe().await?;
            }
            Ok(())
        })
    }

    /// Ends the subscription at once (unsubscribing in the background), as dropping it does;
    /// a read waiting meanwhile ends it as it gives the lock back.
    fn close(&self) {
        let _entered = runtime().enter();
        self.shared.interrupt.close();
        if let Ok(mut guard) = self.shared.subscription.try_lock() {
            drop(guard.take());
        }
    }

    /// Acknowledges the last message yielded (at least once).
    fn acknowledge(&self) {
        self.shared.acknowledge();
    }

    /// The filter subscribed to.
    #[getter]
    fn filter(&self) -> &str {
        &self.filter
    }

    /// Whether this subscription is at least once.
    #[getter]
    fn at_least_once(&self) -> bool {
        self.shared.at_least_once
    }

    /// The broker's subscription id.
    #[getter]
    fn id(&self) -> u64 {
        self.refresh();
        self.shared.stats().id
    }

    /// Messages the broker dropped so far (its overflow policy, or a full cluster route).
    #[getter]
    fn dropped(&self) -> u64 {
        self.refresh();
        self.shared.stats().dropped
    }

    /// Messages skipped so far, as seen in the sequence numbers.
    #[getter]
    fn gaps(&self) -> u64 {
        self.refresh();
        self.shared.stats().gaps
    }

    /// Messages missing so far (datagram subscriptions count what has not arrived).
    #[getter]
    fn lost(&self) -> u64 {
        self.refresh();
        self.shared.stats().lost
    }

    /// The gaps found since the last call, oldest first.
    fn take_gaps<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.refresh();
        let gaps: Vec<PyGap> = self
            .shared
            .stats()
            .recorded
            .drain(..)
            .map(PyGap::new)
            .collect();
        list_of(py, gaps)
    }

    /// Why the subscription ended, once it has.
    #[getter]
    fn end_reason(&self) -> Option<String> {
        self.refresh();
        self.shared.stats().end_reason.clone()
    }

    /// Whether a read (`wait`) holds the subscription in Rust now.
    #[getter]
    fn reading(&self) -> bool {
        self.shared.subscription.try_lock().is_err()
    }
}

impl NativeSubscription {
    /// Copies the counters now if no read holds the subscription (else the read does).
    fn refresh(&self) {
        if let Ok(mut guard) = self.shared.subscription.try_lock() {
            if let Some(subscription) = guard.as_mut() {
                self.shared.stats().update(subscription);
            }
        }
    }
}

/// A request received by a responder.
#[pyclass(frozen, name = "Request", module = "cassini")]
pub(crate) struct PyRequest {
    request: Request,
}

#[pymethods]
impl PyRequest {
    /// The request as a message (topic, payload, headers, reply_to).
    #[getter]
    fn message(&self) -> PyMessage {
        PyMessage {
            message: self.request.message().clone(),
            subscription: None,
        }
    }

    /// The request's topic.
    #[getter]
    fn topic(&self) -> &str {
        self.request.message().topic()
    }

    /// The request's payload.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, pyo3::types::PyBytes> {
        pyo3::types::PyBytes::new(py, self.request.payload())
    }

    /// The request's headers as a dict.
    #[getter]
    fn headers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let dict = pyo3::types::PyDict::new(py);
        for (key, value) in self.request.message().headers() {
            dict.set_item(key, value)?;
        }
        Ok(dict)
    }

    /// Publishes the reply to the request's `reply_to`.
    #[pyo3(signature = (payload, headers=None))]
    fn respond<'py>(
        &self,
        py: Python<'py>,
        payload: Vec<u8>,
        headers: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let request = self.request.clone();
        let options = cassini_client::PublishOptions::new().headers(headers_arg(headers)?);
        future_into_py(py, async move {
            Ok(request.respond_with(payload, options).await?)
        })
    }

    fn __repr__(&self) -> String {
        format!("<Request topic={:?}>", self.request.message().topic())
    }
}

/// A responder's state: the responder, and requests taken but not yet handed to Python.
struct ResponderShared {
    responder: Mutex<Option<Responder>>,
    /// As [`SubscriptionShared::interrupt`].
    interrupt: Interrupt,
    /// As [`SubscriptionShared::ready`]: what a cancelled `wait` took stays here.
    ready: std::sync::Mutex<(std::collections::VecDeque<Request>, bool)>,
}

impl ResponderShared {
    fn ready(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<Request>, bool)> {
        self.ready
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Drop for ResponderShared {
    fn drop(&mut self) {
        let _entered = runtime().enter();
        drop(self.responder.get_mut().take());
    }
}

/// A responder: requests in batches, as a subscription's messages.
#[pyclass(frozen, module = "cassini._native")]
pub(crate) struct NativeResponder {
    shared: Arc<ResponderShared>,
}

impl NativeResponder {
    pub(crate) fn new(responder: Responder) -> Self {
        Self {
            shared: Arc::new(ResponderShared {
                responder: Mutex::new(Some(responder)),
                interrupt: Interrupt::default(),
                ready: std::sync::Mutex::default(),
            }),
        }
    }
}

#[pymethods]
impl NativeResponder {
    /// The requests taken so far: `(requests, ended)`.
    fn poll_batch(&self) -> (Vec<PyRequest>, bool) {
        let mut ready = self.shared.ready();
        let requests = ready
            .0
            .drain(..)
            .map(|request| PyRequest { request })
            .collect();
        (requests, ready.1)
    }

    /// Waits for a request (or the end) and takes every ready one for `poll_batch`.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            let mut guard = shared.responder.lock().await;
            if shared.interrupt.is_closed() {
                drop(guard.take());
            }
            {
                let ready = shared.ready();
                if !ready.0.is_empty() || ready.1 {
                    return Ok(());
                }
            }
            let Some(responder) = guard.as_mut() else {
                shared.ready().1 = true;
                return Ok(());
            };
            let first = tokio::select! {
                first = responder.recv() => first,
                () = shared.interrupt.interrupted() => {
                    if shared.interrupt.is_closed() {
                        drop(guard.take());
                        shared.ready().1 = true;
                    }
                    return Ok(());
                }
            };
            let mut ready = shared.ready();
            let Some(first) = first else {
                ready.1 = true;
                return Ok(());
            };
            ready.0.push_back(first);
            loop {
                match responder.recv().now_or_never() {
                    Some(Some(request)) => ready.0.push_back(request),
                    Some(None) => {
                        ready.1 = true;
                        break;
                    }
                    None => break,
                }
            }
            Ok(())
        })
    }

    /// Asks the broker to end the responder's subscription and waits for its answer.
    fn unsubscribe<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shared = Arc::clone(&self.shared);
        future_into_py(py, async move {
            shared.interrupt.interrupt();
            let mut guard = shared.responder.lock().await;
            if let Some(responder) = guard.as_mut() {
                responder.unsubscribe().await?;
            }
            Ok(())
        })
    }

    /// Ends the responder at once (unsubscribing in the background); a read waiting meanwhile
    /// ends it as it gives the lock back.
    fn close(&self) {
        let _entered = runtime().enter();
        self.shared.interrupt.close();
        if let Ok(mut guard) = self.shared.responder.try_lock() {
            drop(guard.take());
        }
    }
}
