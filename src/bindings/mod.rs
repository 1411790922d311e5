//! The PyO3 layer: converts Python stimuli into core calls and core messages into the
//! dicts distributed sends. Python payloads travel through the core as `Py<PyAny>`.
//!
//! Layers, each using only those before it: `shared` (`Engine`'s data: the state in a
//! `crate::cell::StateCell`), `naming`, `messages`, `handles`, `engine` (`Engine`'s
//! methods).

mod by_value;
mod engine;
mod handles;
mod held;
mod incoming;
mod key_index;
mod messages;
mod naming;
mod order;
mod outgoing;
mod pickler;
mod shared;
mod wire;
mod wire_encode;

use crate::cell::Busy;
use crate::core::types::CoreError;
use pyo3::exceptions::{PyAssertionError, PyKeyError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

/// A stimulus or read while another holds the state: distributed has no such state,
/// so this is the engine's own error.
impl From<Busy> for PyErr {
    fn from(e: Busy) -> PyErr {
        PyRuntimeError::new_err(e.to_string())
    }
}

/// Core errors as the exceptions distributed raises for the same fault.
impl From<CoreError> for PyErr {
    fn from(e: CoreError) -> PyErr {
        match e {
            CoreError::UnknownKey(k) => PyKeyError::new_err(k),
            CoreError::UnknownWorker(w) => PyKeyError::new_err(w),
            CoreError::UnknownClient(c) => PyKeyError::new_err(c),
            CoreError::WorkerExists(_) | CoreError::Invalid(_) => {
                PyValueError::new_err(e.to_string())
            }
            CoreError::ImpossibleTransition { .. } => PyRuntimeError::new_err(e.to_string()),
            CoreError::Validation(m) => PyAssertionError::new_err(m),
            CoreError::Unreachable(_) => PyAssertionError::new_err(("Unreachable",)),
        }
    }
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<shared::Engine>()?;
    m.add_class::<engine::TaskIter>()?;
    m.add_class::<handles::TaskStateHandle>()?;
    m.add_class::<handles::WorkerStateHandle>()?;
    m.add_class::<handles::ClientStateHandle>()?;
    m.add_class::<handles::TaskGroupHandle>()?;
    m.add_class::<handles::TaskPrefixHandle>()?;
    m.add_class::<wire::WireStream>()?;
    m.add_class::<outgoing::Messages>()?;
    m.add_class::<incoming::FinishedRun>()?;
    m.add_class::<order::ReadGraph>()?;
    m.add_function(wrap_pyfunction!(order::order_graph, m)?)?;
    m.add_function(wrap_pyfunction!(order::pyset_order, m)?)?;
    m.add_function(wrap_pyfunction!(wire_encode::encode_batch_py, m)?)?;
    m.add_function(wrap_pyfunction!(pickler::trace_py, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
