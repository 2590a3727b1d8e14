//! Rust futures as asyncio futures, on the module's one tokio runtime.
//!
//! [`future_into_py`] creates an asyncio future on the running loop and spawns the Rust future
//! on the runtime. When the Rust future finishes, a blocking-pool thread (waiting for the GIL
//! must not hold a runtime worker) converts its output and hands it to the loop with
//! `call_soon_threadsafe`; a future cancelled meanwhile is left alone. Cancelling the asyncio
//! future aborts the tokio task: the Rust future is dropped at once, releasing whatever it
//! held (a subscription's lock, a pending request).
//!
//! This is an own bridge rather than pyo3-async-runtimes because of interpreter shutdown: a
//! thread that attaches to Python while the interpreter finalizes is torn down under Rust's
//! feet (a crash at exit, seen with pyo3-async-runtimes when a task was cancelled just
//! before). Here every attach from a runtime thread goes through [`with_python`], and the
//! `atexit` hook [`shutdown`] stops new ones and waits for those under way.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use cassini_client::ClientError;
use pyo3::prelude::*;
use pyo3::IntoPyObjectExt;
use tokio::runtime::Runtime;
use tokio::task::AbortHandle;

use crate::errors;

/// Set by the `atexit` hook: no thread may attach to Python any more.
static FINALIZING: AtomicBool = AtomicBool::new(false);
/// Runtime threads attached to Python (or about to) now.
static ATTACHED: AtomicUsize = AtomicUsize::new(0);

/// The module's one tokio runtime.
pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .thread_name("cassini")
            .enable_all()
            .build()
            .unwrap_or_else(|error| {
                // Without a runtime nothing can work; there is no caller to return to.
                #[allow(clippy::panic)]
                {
                    panic!("cannot start the tokio runtime: {error}")
                }
            })
    })
}

/// Runs `f` attached to Python, unless the interpreter is shutting down.
pub(crate) fn with_python<R>(f: impl FnOnce(Python<'_>) -> R) -> Option<R> {
    ATTACHED.fetch_add(1, Ordering::SeqCst);
    let result = if FINALIZING.load(Ordering::SeqCst) {
        None
    } else {
        Some(Python::attach(f))
    };
    ATTACHED.fetch_sub(1, Ordering::SeqCst);
    result
}

/// The `atexit` hook: from now on no runtime thread attaches to Python; waits (at most 2 s)
/// for those attached now to finish.
#[pyfunction]
pub(crate) fn shutdown(py: Python<'_>) {
    FINALIZING.store(true, Ordering::SeqCst);
    py.detach(|| {
        let deadline = Instant::now() + Duration::from_secs(2);
        while ATTACHED.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    });
}

/// Why a bridged future failed: a client error, turned into its exception under the GIL.
pub(crate) struct Failure(ClientError);

/// Any client error: `ClientError`, or an error of one operation that converts into it.
impl<E: Into<ClientError>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure(error.into())
    }
}

/// Aborts the tokio task when its asyncio future is cancelled (an `add_done_callback`).
#[pyclass(frozen)]
struct AbortOnCancel {
    handle: AbortHandle,
}

#[pymethods]
impl AbortOnCancel {
    fn __call__(&self, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0("cancelled")?.is_truthy()? {
            self.handle.abort();
        }
        Ok(())
    }
}

/// Sets an asyncio future's result or exception, on its loop, unless it is already done
/// (cancelled).
#[pyfunction]
fn complete(future: &Bound<'_, PyAny>, ok: bool, value: &Bound<'_, PyAny>) -> PyResult<()> {
    if future.call_method0("done")?.is_truthy()? {
        return Ok(());
    }
    if ok {
        future.call_method1("set_result", (value,))?;
    } else {
        future.call_method1("set_exception", (value,))?;
    }
    Ok(())
}

/// `fut` as an asyncio future of the running loop.
pub(crate) fn future_into_py<'py, F, T>(py: Python<'py>, fut: F) -> PyResult<Bound<'py, PyAny>>
where
    F: Future<Output = Result<T, Failure>> + Send + 'static,
    T: for<'a> IntoPyObject<'a> + Send + 'static,
{
    let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
    let py_future = event_loop.call_method0("create_future")?;
    let complete = wrap_pyfunction!(complete, py)?.unbind();
    let target = py_future.clone().unbind();
    let event_loop = event_loop.unbind();
    let task = runtime().spawn(async move {
        let result = fut.await;
        // A detached blocking task: when it runs, the asyncio future may have been cancelled,
        // and `complete` leaves it alone.
        drop(tokio::task::spawn_blocking(move || {
            with_python(|py| {
                let (ok, value) = match result.map(|value| value.into_py_any(py)) {
                    Ok(Ok(value)) => (true, value),
                    Ok(Err(error)) => (false, error.into_value(py).into_any()),
                    Err(Failure(error)) => (
                        false,
                        errors::to_py_with(py, error).into_value(py).into_any(),
                    ),
                };
                // Fails only when the loop is closed: nobody is waiting any more.
                let _ = event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (complete, target, ok, value));
            });
        }));
    });
    py_future.call_method1(
        "add_done_callback",
        (AbortOnCancel {
            handle: task.abort_handle(),
        },),
    )?;
    Ok(py_future)
}
