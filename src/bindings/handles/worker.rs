//! `WorkerState` and `ClientState`

use super::{distributed_fallback, getters, handle_access, named, task_handle, task_set};
use crate::bindings::shared::{parse_status, Engine, View};
use crate::core::entities::{Client, Worker};
use crate::core::types::*;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "WorkerState")]
pub struct WorkerStateHandle {
    pub engine: Py<Engine>,
    pub id: WorkerId,
    pub hash: isize,
}

// a worker's record stays after it is removed (messages and handles still name it)
handle_access!(WorkerStateHandle, Worker, |st, h| Some(st.ws(h.id)));

getters!(WorkerStateHandle {
    address(py, _, _, ws) -> String = ws.address.clone(), or String::new();
    host(py, _, _, ws) -> String = ws.host.clone(), or String::new();
    nthreads(py, _, _, ws) -> i64 = ws.nthreads, or 0;
    memory_limit(py, _, _, ws) -> i64 = ws.memory_limit, or 0;
    nbytes(py, _, _, ws) -> i128 = ws.nbytes, or 0;
    processing(py, e, v, ws) -> Py<PyAny> = task_set(py, e, v, Some(&ws.processing))?, or py.None();
    long_running(py, e, v, ws) -> Py<PyAny> = task_set(py, e, v, Some(&ws.long_running))?,
        or py.None();
    actors(py, e, v, ws) -> Py<PyAny> = task_set(py, e, v, Some(&ws.actors))?, or py.None();
    /// The dict behind `has_what` (rebalance reads it directly).
    _has_what(py, e, v, ws) -> Py<PyAny> = {
        let d = PyDict::new(py);
        for t in ws.has_what.keys() {
            d.set_item(task_handle(py, e, v, t)?, py.None())?;
        }
        d.into_any().unbind()
    }, or py.None();
    /// `ws.needs_what`: dependencies this worker must fetch -> processing tasks waiting.
    needs_what(py, e, v, ws) -> Py<PyAny> = {
        let d = PyDict::new(py);
        for (t, n) in ws.needs_what.iter() {
            d.set_item(task_handle(py, e, v, *t)?, *n)?;
        }
        d.into_any().unbind()
    }, or py.None();
    /// `ws.task_prefix_count`: prefix name -> tasks of that prefix processing here.
    task_prefix_count(py, _, v, ws) -> Py<PyAny> = {
        let d = PyDict::new(py);
        for (p, n) in ws.task_prefix_count.iter() {
            d.set_item(&v.state.prefix(*p).name, *n)?;
        }
        d.into_any().unbind()
    }, or py.None();
    _network_occ(py, _, _, ws) -> i128 = ws.network_occ, or 0;
    resources(py, _, v, ws) -> Py<PyAny> =
        named(py, v, ws.resources.iter().map(|(r, q)| (*r, *q)))?.into_any().unbind(), or py.None();
    used_resources(py, _, v, ws) -> Py<PyAny> =
        named(py, v, ws.used_resources.iter().map(|(r, q)| (*r, *q)))?.into_any().unbind(),
        or py.None();
});

#[pymethods]
impl WorkerStateHandle {
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "WorkerState", name)
    }

    #[getter]
    fn occupancy(&self, py: Python<'_>) -> PyResult<f64> {
        self.with(py, || Ok(0.0), |_, v, _| Ok(v.state.occupancy(self.id)))
    }

    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let name = self.with(py, || Ok("closed"), |_, _, ws| Ok(ws.status.as_str()))?;
        let status = py.import("distributed.core")?.getattr("Status")?;
        Ok(status.get_item(name)?.unbind())
    }

    /// `ws.status = Status.x` set directly (tests, and `remove_worker`, do) changes the
    /// field alone, as on distributed's WorkerState; the scheduler's own status changes
    /// are stimuli.
    #[setter]
    fn set_status(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let name: String = value.getattr(intern!(py, "name"))?.extract()?;
        let status = parse_status(&name)?;
        let e = self.engine.bind(py).borrow();
        e.write()?.set_worker_status(self.id, status);
        Ok(())
    }

    /// `ws.has_what`: insertion-ordered, like the dict keys view distributed returns.
    #[getter]
    fn has_what(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self._has_what(py)?.bind(py).call_method0("keys")?.unbind())
    }

    fn __hash__(&self) -> isize {
        self.hash
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let (address, status, memory, processing) = slf.get().with(
            py,
            || Ok((String::new(), "closed", 0, 0)),
            |_, _, ws| {
                Ok((
                    ws.address.clone(),
                    ws.status.as_str(),
                    ws.has_what.len(),
                    ws.processing.len(),
                ))
            },
        )?;
        // distributed leaves the name out when it is the address
        let name = slf.getattr(intern!(py, "name"))?;
        let name = if name.ne(address.as_str())? {
            format!(", name: {}", name.str()?)
        } else {
            String::new()
        };
        Ok(format!(
            "<WorkerState {}{name}, status: {status}, memory: {memory}, processing: \
             {processing}>",
            PyString::new(py, &address).repr()?
        ))
    }
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "ClientState")]
pub struct ClientStateHandle {
    pub engine: Py<Engine>,
    pub id: ClientId,
    pub hash: isize,
}

handle_access!(ClientStateHandle, Client<Py<PyAny>>, |st, h| Some(
    st.client(h.id)
));

getters!(ClientStateHandle {
    client_key(py, _, _, cs) -> Py<PyAny> = cs.client_key.clone_ref(py), or py.None();
    wants_what(py, e, v, cs) -> Py<PyAny> = task_set(py, e, v, Some(&cs.wants_what))?, or py.None();
});

#[pymethods]
impl ClientStateHandle {
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "ClientState", name)
    }

    fn __hash__(&self) -> isize {
        self.hash
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<Client {}>",
            self.client_key(py)?.bind(py).repr()?
        ))
    }
}
