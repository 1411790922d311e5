//! `TaskState`

use super::{
    client_set, distributed_fallback, getters, handle_access, opt_obj, opt_ref, str_set,
    task_handle, task_set, worker_handle, worker_set, WorkerStateHandle,
};
use crate::bindings::messages::{priority_to_py, py_state};
use crate::bindings::shared::{task_annotations, Engine, State, View};
use crate::core::entities::{default_data_size, Task};
use crate::core::types::*;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyCFunction, PyDict, PyInt, PySet};

/// A collection of str as distributed keeps it (a set), in that set's order.
fn str_vec(py: Python<'_>, value: Option<Bound<'_, PyAny>>) -> PyResult<Option<Vec<String>>> {
    let Some(v) = value.filter(|v| !v.is_none()) else {
        return Ok(None);
    };
    // The set's own iteration order, which `valid_workers` iterates: a set built again
    // from it may iterate in another order (two addresses in one slot).
    if let Ok(set) = v.cast_exact::<PySet>() {
        return Ok(Some(
            set.iter().map(|a| a.extract()).collect::<PyResult<_>>()?,
        ));
    }
    let set = PySet::new(py, v.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
    Ok(Some(
        set.iter().map(|a| a.extract()).collect::<PyResult<_>>()?,
    ))
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskState")]
pub struct TaskStateHandle {
    pub engine: Py<Engine>,
    pub id: TaskId,
    /// `Task::serial`: tells this task from a later one reusing its slot.
    pub serial: u64,
    pub key: Py<PyAny>,
    pub hash: isize,
    /// The task's `TaskGroup` (a task never changes group, and distributed's forgotten
    /// `TaskState` still names its group; holding it keeps the group's slot).
    pub group: Py<PyAny>,
}

// until the end of the batch that forgot it, a task reads as distributed's TaskState
// does for plugins told of its `forgotten` transition
handle_access!(TaskStateHandle, Task<Py<PyAny>>, |st, h| st
    .task_slot(h.id)
    .filter(|ts| ts.serial == h.serial));

impl TaskStateHandle {
    /// The task this handle names, unless it was forgotten.
    pub(crate) fn live_id(&self, st: &State) -> Option<TaskId> {
        st.task(self.id)
            .filter(|ts| ts.serial == self.serial)
            .map(|_| self.id)
    }

    /// Writes through to the live task (a forgotten one ignores writes).
    /// A value distributed's annotations may carry but no task can hold, named with its
    /// task and annotation.
    fn bad_annotation(
        &self,
        py: Python<'_>,
        annotation: &str,
        value: &Bound<'_, PyAny>,
        expected: &str,
    ) -> String {
        let show = |o: &Bound<'_, PyAny>| {
            o.repr()
                .map_or_else(|_| "<unprintable>".to_owned(), |r| r.to_string())
        };
        format!(
            "task {}: annotation {annotation:?} must be {expected}, got {}",
            show(self.key.bind(py)),
            show(value)
        )
    }

    fn update(&self, py: Python<'_>, f: impl FnOnce(&mut State, TaskId)) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        let mut st = e.write()?;
        if let Some(t) = self.live_id(&st) {
            f(&mut st, t);
        }
        Ok(())
    }
}

getters!(TaskStateHandle {
    state(py, _, _, ts) -> Py<PyAny> = py_state(py, ts.state).clone().into_any().unbind(),
        or py_state(py, TaskStateState::Forgotten).clone().into_any().unbind();
    priority(py, _, _, ts) -> Py<PyAny> = match &ts.priority {
        Some(p) => priority_to_py(py, p)?.into_any().unbind(),
        None => py.None(),
    }, or py.None();
    dependencies(py, e, v, ts) -> Py<PyAny> = task_set(py, e, v, Some(&ts.dependencies))?,
        or PySet::empty(py)?.into_any().unbind();
    dependents(py, e, v, ts) -> Py<PyAny> = task_set(py, e, v, Some(&ts.dependents))?,
        or PySet::empty(py)?.into_any().unbind();
    waiting_on(py, e, v, ts) -> Py<PyAny> = task_set(py, e, v, ts.waiting_on.as_ref())?, or py.None();
    waiters(py, e, v, ts) -> Py<PyAny> = task_set(py, e, v, ts.waiters.as_ref())?, or py.None();
    who_has(py, e, v, ts) -> Py<PyAny> = worker_set(py, e, v, ts.who_has.as_ref())?, or py.None();
    who_wants(py, e, v, ts) -> Py<PyAny> = client_set(py, e, v, ts.who_wants())?, or py.None();
    processing_on(py, e, v, ts) -> Py<PyAny> = match ts.processing_on() {
        Some(w) => worker_handle(py, e, v, w)?,
        None => py.None(),
    }, or py.None();
    exception_blame(py, e, v, ts) -> Py<PyAny> = match ts.exception_blame() {
        Some(t) => task_handle(py, e, v, t)?,
        None => py.None(),
    }, or py.None();
    run_spec(py, _, _, ts) -> Py<PyAny> = opt_obj(py, &ts.run_spec), or py.None();
    exception(py, _, _, ts) -> Py<PyAny> = opt_ref(py, ts.exception()), or py.None();
    traceback(py, _, _, ts) -> Py<PyAny> = opt_ref(py, ts.traceback()), or py.None();
    exception_text(py, _, _, ts) -> Py<PyAny> = opt_ref(py, ts.exception_text()), or py.None();
    traceback_text(py, _, _, ts) -> Py<PyAny> = opt_ref(py, ts.traceback_text()), or py.None();
    metadata(py, _, _, ts) -> Py<PyAny> = opt_ref(py, ts.metadata()), or py.None();
    /// False keeps a root-ish task out of `queued` (P2P shuffle sets it on output tasks).
    _queueable(py, _, _, ts) -> bool = ts.queueable, or true;
    retries(py, _, _, ts) -> i64 = ts.retries(), or 0;
    nbytes(py, _, _, ts) -> i64 = ts.nbytes, or -1;
    suspicious(py, _, _, ts) -> i64 = ts.suspicious(), or 0;
    run_id(py, _, _, ts) -> Option<i64> = ts.run_id(), or None;
    actor(py, _, _, ts) -> bool = ts.actor, or false;
    loose_restrictions(py, _, _, ts) -> bool = ts.loose_restrictions(), or false;
    has_lost_dependencies(py, _, _, ts) -> bool = ts.has_lost_dependencies, or false;
    r#type(py, _, v, ts) -> Option<String> =
        ts.type_.get().map(|i| v.state.strings.name(i).to_owned()), or None;
    host_restrictions(py, _, _, ts) -> Py<PyAny> = str_set(py, ts.host_restrictions())?,
        or py.None();
    worker_restrictions(py, _, _, ts) -> Py<PyAny> =
        str_set(py, ts.worker_restrictions())?, or py.None();
    erred_on(py, _, _, ts) -> Py<PyAny> = str_set(py, ts.erred_on())?, or py.None();
    resource_restrictions(py, _, _, ts) -> Py<PyAny> = match ts.resource_restrictions() {
        None => py.None(),
        Some(rr) => rr.iter().cloned().into_py_dict(py)?.into_any().unbind(),
    }, or py.None();
});

#[pymethods]
impl TaskStateHandle {
    #[getter]
    fn group(&self, py: Python<'_>) -> Py<PyAny> {
        self.group.clone_ref(py)
    }

    #[getter]
    fn group_key(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.group
            .bind(py)
            .getattr(pyo3::intern!(py, "name"))
            .map(Bound::unbind)
    }

    #[getter]
    fn prefix(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.group
            .bind(py)
            .getattr(pyo3::intern!(py, "prefix"))
            .map(Bound::unbind)
    }
}

#[pymethods]
impl TaskStateHandle {
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.key.clone_ref(py)
    }

    /// Written only by tests that corrupt the state on purpose (as distributed allows):
    /// the next transition of the task then fails as distributed's does.
    #[setter]
    fn set_processing_on(&self, py: Python<'_>, value: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let worker = match value.filter(|v| !v.is_none()) {
            Some(v) => Some(v.cast::<WorkerStateHandle>()?.get().id),
            None => None,
        };
        self.update(py, |st, t| st.set_processing_on(t, worker))
    }

    #[setter(_queueable)]
    fn set_queueable(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        self.update(py, |st, t| st.set_queueable(t, value))
    }

    /// `ts.annotations`. The dict the spans extension gave the task is made on first
    /// read (`Task::span_annotation_pending`).
    #[getter]
    fn annotations(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let mut st = e.write()?;
        match self.live_id(&st) {
            Some(t) => Ok(opt_obj(py, &task_annotations(py, &mut st, t)?)),
            None => Ok(py.None()),
        }
    }

    /// Extensions (spans) replace a task's annotations dict; the engine reads it only
    /// when the task is submitted.
    #[setter]
    fn set_annotations(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        self.update(py, |st, t| st.set_annotations(t, value))
    }

    /// Plugins and extensions may attach their own metadata (`ts.metadata = {...}`);
    /// the engine keeps the object and merges finished tasks' metadata into it.
    #[setter]
    fn set_metadata(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(py));
        self.update(py, |st, t| st.set_metadata(t, value))
    }

    /// `remove_worker` counts the workers that died running the task.
    #[setter]
    fn set_suspicious(&self, py: Python<'_>, value: i64) -> PyResult<()> {
        self.update(py, |st, t| st.set_suspicious(t, value))
    }

    /// `Scheduler.set_restrictions` (P2P shuffle pins output tasks to workers) and
    /// `_apply_annotations` (`workers`).
    #[setter]
    fn set_worker_restrictions(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let restrictions = str_vec(py, value)?;
        self.update(py, |st, t| st.set_worker_restrictions(t, restrictions))
    }

    /// `_apply_annotations` (`workers` naming hosts)
    #[setter]
    fn set_host_restrictions(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let restrictions = str_vec(py, value)?;
        self.update(py, |st, t| st.set_host_restrictions(t, restrictions))
    }

    /// `_apply_annotations` (`allow_other_workers`)
    #[setter]
    fn set_loose_restrictions(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let loose = value.is_truthy()?;
        self.update(py, |st, t| st.set_loose_restrictions(t, loose))
    }

    /// `_apply_annotations` (`resources`)
    #[setter]
    fn set_resource_restrictions(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let resources = match value.filter(|v| !v.is_none()) {
            Some(v) => {
                let parsed = v.cast::<PyDict>().ok().and_then(|d| {
                    d.iter()
                        .map(|(r, q)| Some((r.extract().ok()?, q.extract().ok()?)))
                        .collect::<Option<_>>()
                });
                match parsed {
                    Some(r) => Some(r),
                    None => {
                        let msg =
                            self.bad_annotation(py, "resources", &v, "a dict of str to numbers");
                        return Err(PyTypeError::new_err(msg));
                    }
                }
            }
            None => None,
        };
        self.update(py, |st, t| st.set_resource_restrictions(t, resources))
    }

    /// `_apply_annotations` (`retries`)
    #[setter]
    fn set_retries(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let Ok(retries) = value.extract::<i64>() else {
            let msg = self.bad_annotation(py, "retries", value, "an int in the range of int64");
            return Err(match value.is_instance_of::<PyInt>() {
                true => PyValueError::new_err(msg),
                false => PyTypeError::new_err(msg),
            });
        };
        self.update(py, |st, t| st.set_retries(t, retries))
    }

    /// `get_nbytes()`: a getter named `nbytes` and a method named `get_nbytes` would clash
    /// in PyO3's generated names, so the method is served here.
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        if name == "get_nbytes" {
            let handle = slf.clone().unbind();
            let f =
                PyCFunction::new_closure(slf.py(), Some(c"get_nbytes"), None, move |args, _| {
                    let get = |_: &_, _: &View<'_>, ts: &Task<Py<PyAny>>| Ok(ts.get_nbytes());
                    handle
                        .get()
                        .with(args.py(), || Ok(default_data_size()), get)
                })?;
            return Ok(f.into_any().unbind());
        }
        distributed_fallback(slf.as_any(), "TaskState", name)
    }

    fn __hash__(&self) -> isize {
        self.hash
    }

    fn __eq__(&self, py: Python<'_>, other: &Bound<'_, PyAny>) -> PyResult<bool> {
        match other.cast::<TaskStateHandle>() {
            Ok(o) => self.key.bind(py).eq(o.get().key.bind(py)),
            Err(_) => Ok(false),
        }
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let state = self.state(py)?;
        Ok(format!(
            "<TaskState {} {}>",
            self.key.bind(py).repr()?,
            state.bind(py).str()?
        ))
    }
}
