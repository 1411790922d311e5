//! `task-finished` reports read from a worker's stream without becoming Python dicts:
//! the fields the engine reads, parsed from the msgpack (`wire::Decoder::finished`),
//! and the message's bytes, which give distributed's dict when something asks for it
//! (a plugin watching transitions to memory, a handler someone replaced, validation).

use super::messages::{dict_list, AsDict};
use crate::core::messages::StartStop;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

/// A `task-finished` message as distributed 2026 workers send it (`TaskFinishedMsg`:
/// each of its eleven fields once, of the type it declares).
pub(crate) struct Finished {
    /// the message's msgpack map
    pub raw: Box<[u8]>,
    pub key: Py<PyAny>,
    pub stimulus_id: Py<PyAny>,
    pub run_id: i64,
    pub nbytes: i64,
    /// the pickled type, or None
    pub type_: Option<Py<PyAny>>,
    pub typename: String,
    /// None when empty
    pub metadata: Option<Py<PyAny>>,
    pub startstops: Vec<StartStop>,
}

impl AsDict for Finished {
    /// The message as distributed's decoding gives it.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let msg = super::wire::decode_message(py, &self.raw)?;
        Ok(msg.cast_into::<PyDict>()?)
    }
}

/// Consecutive `task-finished` messages of a batch from a worker, as one item of it.
#[pyclass(frozen, module = "dask_rsched._core")]
pub(crate) struct FinishedRun {
    pub(crate) items: Vec<Finished>,
}

#[pymethods]
impl FinishedRun {
    /// The messages as distributed's dicts, a new list each time.
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        dict_list(py, &self.items)
    }

    fn __len__(&self) -> usize {
        self.items.len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("FinishedRun({})", self.messages(py)?.repr()?))
    }
}
