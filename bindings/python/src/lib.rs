//! The native part of the `cassini` Python package (`cassini._native`): PyO3 classes over
//! `cassini-client`, every async operation an asyncio awaitable driven by one tokio runtime
//! for the whole module (`bridge`). The Python API itself (`cassini.connect`,
//! `Client`, `Subscription`, the exceptions, `cassini.sync`) is in `python/cassini`.

mod bridge;
mod client;
mod errors;
mod interrupt;
mod subscription;
mod types;

use pyo3::prelude::*;

#[pymodule]
fn _native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_function(wrap_pyfunction!(client::connect, module)?)?;
    module.add_function(wrap_pyfunction!(bridge::shutdown, module)?)?;
    module.add_class::<client::NativeClient>()?;
    module.add_class::<client::NativeStates>()?;
    module.add_class::<subscription::NativeSubscription>()?;
    module.add_class::<subscription::NativeResponder>()?;
    module.add_class::<subscription::PyRequest>()?;
    module.add_class::<types::PyMessage>()?;
    module.add_class::<types::PyGap>()?;
    module.add_class::<types::PyConnectionState>()?;
    module.add_class::<types::PyReceipt>()?;
    Ok(())
}
