//! The PyO3 layer: converts Python stimuli into core calls and core messages into the
//! dicts distributed sends. Python payloads travel through the core as `Py<PyAny>`.

mod cell;
mod engine;
mod handles;
mod messages;
mod stealing;

use pyo3::prelude::*;

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::Engine>()?;
    m.add_class::<engine::TaskItemsIter>()?;
    m.add_class::<handles::TaskStateHandle>()?;
    m.add_class::<handles::WorkerStateHandle>()?;
    m.add_class::<handles::ClientStateHandle>()?;
    m.add_class::<handles::TaskGroupHandle>()?;
    m.add_class::<handles::TaskPrefixHandle>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
