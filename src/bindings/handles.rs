//! Python handles with distributed's class names and attributes: `TaskState`,
//! `WorkerState`, `ClientState`, `TaskGroup`, `TaskPrefix`. A handle is (engine, id); the
//! engine caches one handle per live task/worker/client so `is`, hashing and sets behave
//! as with distributed's objects. A handle of a forgotten task reads as `forgotten`.

use super::engine::{group_name, Engine, View};
use super::messages::{priority_to_py, py_state};
use crate::core::entities::Task;
use crate::core::types::*;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet, PyString};

/// Methods and properties of distributed's own class (`WorkerState.memory`, `clean()`,
/// `TaskPrefix.add_exec_time`, ...) bound to the handle: they only read attributes the
/// handle serves, so distributed's code is the implementation. Slot members and dunders
/// are not borrowed.
fn distributed_fallback(
    obj: &Bound<'_, PyAny>,
    class: &'static str,
    name: &str,
) -> PyResult<Py<PyAny>> {
    let py = obj.py();
    let missing = || {
        pyo3::exceptions::PyAttributeError::new_err(format!(
            "'{class}' object has no attribute '{name}'"
        ))
    };
    if name.starts_with("__") {
        return Err(missing());
    }
    let cls = py.import("distributed.scheduler")?.getattr(class)?;
    let Ok(attr) = cls.getattr(name) else {
        return Err(missing());
    };
    if attr.is_instance(&py.import("functools")?.getattr("cached_property")?)? {
        return Ok(attr.getattr("func")?.call1((obj,))?.unbind());
    }
    let borrowable = attr.is_instance(&py.import("builtins")?.getattr("property")?)?
        || attr.is_instance(&py.import("types")?.getattr("FunctionType")?)?;
    if !borrowable {
        return Err(missing());
    }
    Ok(attr
        .call_method1(intern!(py, "__get__"), (obj, &cls))?
        .unbind())
}

fn none(py: Python<'_>) -> Py<PyAny> {
    py.None()
}

fn opt_obj(py: Python<'_>, o: &Option<Py<PyAny>>) -> Py<PyAny> {
    o.as_ref().map_or_else(|| none(py), |o| o.clone_ref(py))
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskState")]
pub struct TaskStateHandle {
    pub engine: Py<Engine>,
    pub id: TaskId,
    /// `Task::serial`: tells this task from a later one reusing its slot.
    pub serial: u64,
    pub key: Py<PyAny>,
    pub hash: isize,
}

impl TaskStateHandle {
    /// Runs `f` on the task (until the end of the batch that forgot it), or returns
    /// `dead` once its record is gone.
    fn with<R>(
        &self,
        py: Python<'_>,
        dead: impl FnOnce() -> R,
        f: impl FnOnce(&View<'_>, &Task<Py<PyAny>>) -> PyResult<R>,
    ) -> PyResult<R> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        match e.task_record(self.id, self.serial) {
            Some(ts) => f(&e, ts),
            None => Ok(dead()),
        }
    }
}

#[pymethods]
impl TaskStateHandle {
    #[getter]
    fn key(&self, py: Python<'_>) -> Py<PyAny> {
        self.key.clone_ref(py)
    }

    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyString>> {
        let state = self.with(py, || TaskStateState::Forgotten, |_, ts| Ok(ts.state))?;
        Ok(py_state(py, state).clone())
    }

    #[getter]
    fn priority(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |_, ts| match &ts.priority {
                Some(p) => Ok(priority_to_py(py, p)?.into_any().unbind()),
                None => Ok(none(py)),
            },
        )
    }

    #[getter]
    fn dependencies(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || {
                PySet::empty(py)
                    .map(|s| s.into_any().unbind())
                    .unwrap_or(none(py))
            },
            |e, ts| task_set(py, &self.engine, e, Some(&ts.dependencies)),
        )
    }

    #[getter]
    fn dependents(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || {
                PySet::empty(py)
                    .map(|s| s.into_any().unbind())
                    .unwrap_or(none(py))
            },
            |e, ts| task_set(py, &self.engine, e, Some(&ts.dependents)),
        )
    }

    #[getter]
    fn waiting_on(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| task_set(py, &self.engine, e, ts.waiting_on.as_ref()),
        )
    }

    #[getter]
    fn waiters(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| task_set(py, &self.engine, e, ts.waiters.as_ref()),
        )
    }

    #[getter]
    fn who_has(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| worker_set(py, &self.engine, e, ts.who_has.as_ref()),
        )
    }

    #[getter]
    fn who_wants(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| client_set(py, &self.engine, e, ts.who_wants.as_ref()),
        )
    }

    #[getter]
    fn processing_on(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| match ts.processing_on {
                Some(w) => worker_handle(py, &self.engine, e, w),
                None => Ok(none(py)),
            },
        )
    }

    /// Written only by tests that corrupt the state on purpose (as distributed allows):
    /// the next transition of the task then fails as distributed's does.
    #[setter]
    fn set_processing_on(&self, py: Python<'_>, value: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        let worker = match value.filter(|v| !v.is_none()) {
            Some(v) => Some(v.cast::<WorkerStateHandle>()?.get().id),
            None => None,
        };
        let e = self.engine.bind(py).borrow();
        let mut st = e.state.borrow_mut()?;
        if View::new(&e, &st).live_task(self.id, self.serial).is_some() {
            st.ts_mut(self.id).processing_on = worker;
        }
        Ok(())
    }

    #[getter]
    fn exception_blame(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| match ts.exception_blame {
                Some(t) => task_handle(py, &self.engine, e, t),
                None => Ok(none(py)),
            },
        )
    }

    #[getter]
    fn run_spec(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.run_spec)))
    }

    #[getter]
    fn exception(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.exception)))
    }

    #[getter]
    fn traceback(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.traceback)))
    }

    #[getter]
    fn exception_text(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.exception_text)))
    }

    #[getter]
    fn traceback_text(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.traceback_text)))
    }

    #[getter]
    fn annotations(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.annotations)))
    }

    /// False keeps a root-ish task out of `queued` (P2P shuffle sets it on output tasks).
    #[getter]
    fn _queueable(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, || true, |_, ts| Ok(ts.queueable))
    }

    #[setter(_queueable)]
    fn set_queueable(&self, py: Python<'_>, value: bool) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        let mut st = e.state.borrow_mut()?;
        if View::new(&e, &st).live_task(self.id, self.serial).is_some() {
            st.ts_mut(self.id).queueable = value;
        }
        Ok(())
    }

    /// Extensions (spans) replace a task's annotations dict; the engine reads it only
    /// when the task is submitted.
    #[setter]
    fn set_annotations(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        let mut st = e.state.borrow_mut()?;
        if View::new(&e, &st).live_task(self.id, self.serial).is_some() {
            st.ts_mut(self.id).annotations = value.filter(|v| !v.is_none(py));
        }
        Ok(())
    }

    #[getter]
    fn metadata(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| Ok(opt_obj(py, &ts.metadata)))
    }

    /// Plugins and extensions may attach their own metadata (`ts.metadata = {...}`);
    /// the engine keeps the object and merges finished tasks' metadata into it.
    #[setter]
    fn set_metadata(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        let mut st = e.state.borrow_mut()?;
        if View::new(&e, &st).live_task(self.id, self.serial).is_some() {
            st.ts_mut(self.id).metadata = value.filter(|v| !v.is_none(py));
        }
        Ok(())
    }

    #[getter]
    fn retries(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, || 0, |_, ts| Ok(ts.retries))
    }

    #[getter]
    fn nbytes(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, || -1, |_, ts| Ok(ts.nbytes))
    }

    /// `get_nbytes()`: a getter named `nbytes` and a method named `get_nbytes` would clash
    /// in PyO3's generated names, so the method is served here.
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        if name == "get_nbytes" {
            let handle = slf.clone().unbind();
            let f = pyo3::types::PyCFunction::new_closure(
                slf.py(),
                Some(c"get_nbytes"),
                None,
                move |args, _kwargs| -> PyResult<i64> {
                    let py = args.py();
                    let h = handle.get();
                    h.with(py, crate::core::entities::default_data_size, |_, ts| {
                        Ok(ts.get_nbytes())
                    })
                },
            )?;
            return Ok(f.into_any().unbind());
        }
        distributed_fallback(slf.as_any(), "TaskState", name)
    }

    #[getter]
    fn suspicious(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, || 0, |_, ts| Ok(ts.suspicious))
    }

    #[getter]
    fn run_id(&self, py: Python<'_>) -> PyResult<Option<i64>> {
        self.with(py, || None, |_, ts| Ok(ts.run_id))
    }

    #[getter]
    fn actor(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, || false, |_, ts| Ok(ts.actor))
    }

    #[getter]
    fn loose_restrictions(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, || false, |_, ts| Ok(ts.loose_restrictions))
    }

    #[getter]
    fn has_lost_dependencies(&self, py: Python<'_>) -> PyResult<bool> {
        self.with(py, || false, |_, ts| Ok(ts.has_lost_dependencies))
    }

    #[getter(r#type)]
    fn type_(&self, py: Python<'_>) -> PyResult<Option<String>> {
        self.with(py, || None, |_, ts| Ok(ts.type_.clone()))
    }

    #[getter]
    fn host_restrictions(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |_, ts| str_set(py, ts.host_restrictions.as_deref()),
        )
    }

    #[getter]
    fn worker_restrictions(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |_, ts| str_set(py, ts.worker_restrictions.as_deref()),
        )
    }

    /// `Scheduler.set_restrictions` (P2P shuffle pins output tasks to workers).
    #[setter]
    fn set_worker_restrictions(
        &self,
        py: Python<'_>,
        value: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let restrictions = match value.filter(|v| !v.is_none()) {
            Some(v) => {
                let set = PySet::new(py, v.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
                Some(
                    set.iter()
                        .map(|a| a.extract::<String>())
                        .collect::<PyResult<Vec<_>>>()?,
                )
            }
            None => None,
        };
        let e = self.engine.bind(py).borrow();
        let mut st = e.state.borrow_mut()?;
        if View::new(&e, &st).live_task(self.id, self.serial).is_some() {
            st.ts_mut(self.id).worker_restrictions = restrictions;
        }
        Ok(())
    }

    #[getter]
    fn erred_on(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, || none(py), |_, ts| str_set(py, ts.erred_on.as_deref()))
    }

    #[getter]
    fn resource_restrictions(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |_, ts| match &ts.resource_restrictions {
                None => Ok(none(py)),
                Some(rr) => {
                    let d = PyDict::new(py);
                    for (k, v) in rr {
                        d.set_item(k, *v)?;
                    }
                    Ok(d.into_any().unbind())
                }
            },
        )
    }

    #[getter]
    fn group_key(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| Ok(group_name(py, &e.state.groups[ts.group.idx()].name)?.unbind()),
        )
    }

    #[getter]
    fn group(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| Ok(group_handle(py, &self.engine, e, ts.group)?.into_any()),
        )
    }

    #[getter]
    fn prefix(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(
            py,
            || none(py),
            |e, ts| Ok(prefix_handle(py, &self.engine, e, ts.prefix)?.into_any()),
        )
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
        Ok(format!(
            "<TaskState {} {}>",
            self.key.bind(py).repr()?,
            self.state(py)?
        ))
    }
}

fn str_set(py: Python<'_>, v: Option<&[String]>) -> PyResult<Py<PyAny>> {
    match v {
        None => Ok(none(py)),
        Some(v) => Ok(PySet::new(py, v.iter().map(|s| PyString::new(py, s)))?
            .into_any()
            .unbind()),
    }
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "WorkerState")]
pub struct WorkerStateHandle {
    pub engine: Py<Engine>,
    pub id: WorkerId,
    pub hash: isize,
}

impl WorkerStateHandle {
    fn with<R>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&View<'_>, &crate::core::entities::Worker) -> PyResult<R>,
    ) -> PyResult<R> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        f(&e, e.state.ws(self.id))
    }
}

#[pymethods]
impl WorkerStateHandle {
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "WorkerState", name)
    }

    #[getter]
    fn address(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |_, ws| Ok(ws.address.clone()))
    }

    #[getter]
    fn host(&self, py: Python<'_>) -> PyResult<String> {
        self.with(py, |_, ws| Ok(ws.host.clone()))
    }

    #[getter]
    fn nthreads(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, |_, ws| Ok(ws.nthreads))
    }

    #[getter]
    fn memory_limit(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, |_, ws| Ok(ws.memory_limit))
    }

    #[getter]
    fn nbytes(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, |_, ws| Ok(ws.nbytes))
    }

    #[getter]
    fn status(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let name = self.with(py, |_, ws| Ok(ws.status.as_str()))?;
        Ok(py
            .import("distributed.core")?
            .getattr("Status")?
            .get_item(name)?
            .unbind())
    }

    /// `ws.status = Status.x` set directly (tests do) changes the field alone, as on
    /// distributed's WorkerState; the scheduler's own status changes are stimuli.
    #[setter]
    fn set_status(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let name: String = value.getattr(intern!(py, "name"))?.extract()?;
        let status = WorkerStatus::parse(&name).ok_or_else(|| {
            pyo3::exceptions::PyValueError::new_err(format!("unknown worker status {name:?}"))
        })?;
        self.engine
            .bind(py)
            .borrow()
            .state
            .borrow_mut()?
            .ws_mut(self.id)
            .status = status;
        Ok(())
    }

    #[getter]
    fn occupancy(&self, py: Python<'_>) -> PyResult<f64> {
        self.with(py, |e, _| Ok(e.state.occupancy(self.id)))
    }

    #[getter]
    fn processing(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            task_set(py, &self.engine, e, Some(&ws.processing))
        })
    }

    #[getter]
    fn long_running(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            task_set(py, &self.engine, e, Some(&ws.long_running))
        })
    }

    #[getter]
    fn actors(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| task_set(py, &self.engine, e, Some(&ws.actors)))
    }

    /// `ws.has_what`: insertion-ordered, like the dict keys view distributed returns.
    #[getter]
    fn has_what(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        Ok(self._has_what(py)?.bind(py).call_method0("keys")?.unbind())
    }

    /// The dict behind `has_what` (rebalance reads it directly).
    #[getter]
    fn _has_what(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            let d = PyDict::new(py);
            for t in ws.has_what.keys() {
                d.set_item(task_handle(py, &self.engine, e, t)?, py.None())?;
            }
            Ok(d.into_any().unbind())
        })
    }

    /// `ws.needs_what`: dependencies this worker must fetch -> processing tasks waiting.
    #[getter]
    fn needs_what(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            let d = PyDict::new(py);
            for (t, n) in ws.needs_what.iter() {
                d.set_item(task_handle(py, &self.engine, e, *t)?, *n)?;
            }
            Ok(d.into_any().unbind())
        })
    }

    /// `ws.task_prefix_count`: prefix name -> tasks of that prefix processing here.
    #[getter]
    fn task_prefix_count(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            let d = PyDict::new(py);
            for (p, n) in ws.task_prefix_count.iter() {
                d.set_item(&e.state.prefixes[p.idx()].name, *n)?;
            }
            Ok(d.into_any().unbind())
        })
    }

    #[getter]
    fn _network_occ(&self, py: Python<'_>) -> PyResult<i64> {
        self.with(py, |_, ws| Ok(ws.network_occ))
    }

    #[getter]
    fn resources(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            let d = PyDict::new(py);
            for (r, v) in ws.resources.iter() {
                d.set_item(e.state.strings.name(*r), *v)?;
            }
            Ok(d.into_any().unbind())
        })
    }

    #[getter]
    fn used_resources(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.with(py, |e, ws| {
            let d = PyDict::new(py);
            for (r, v) in ws.used_resources.iter() {
                d.set_item(e.state.strings.name(*r), *v)?;
            }
            Ok(d.into_any().unbind())
        })
    }

    fn __hash__(&self) -> isize {
        self.hash
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        let py = slf.py();
        let (address, status, memory, processing) = slf.get().with(py, |_, ws| {
            Ok((
                ws.address.clone(),
                ws.status.as_str(),
                ws.has_what.len(),
                ws.processing.len(),
            ))
        })?;
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

#[pymethods]
impl ClientStateHandle {
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "ClientState", name)
    }

    #[getter]
    fn client_key(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        Ok(e.state.clients[self.id.idx()].client_key.clone_ref(py))
    }

    #[getter]
    fn wants_what(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        task_set(
            py,
            &self.engine,
            &e,
            Some(&e.state.clients[self.id.idx()].wants_what),
        )
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

fn states_dict<'py>(py: Python<'py>, states: &[i64; 8]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for s in ALL_TASK_STATES {
        d.set_item(s.as_str(), states[s.index()])?;
    }
    Ok(d)
}

/// `TaskCollection.all_durations`: `defaultdict(float, {action: seconds})`.
fn all_durations<'py>(
    py: Python<'py>,
    e: &View<'_>,
    d: &crate::core::entities::Durations,
) -> PyResult<Bound<'py, PyAny>> {
    let out = PyDict::new(py);
    for (action, us) in d.all_durations_us.iter() {
        out.set_item(e.state.strings.name(*action), *us as f64 / 1e6)?;
    }
    let float = py.import("builtins")?.getattr("float")?;
    py.import("collections")?
        .getattr("defaultdict")?
        .call1((float, out))
}

/// `TaskCollection.types`: the result type names, as dict keys.
fn type_names<'py>(
    py: Python<'py>,
    e: &View<'_>,
    types: &crate::core::ordered::OrderedMap<u32, i64>,
) -> PyResult<Bound<'py, PyAny>> {
    let out = PyDict::new(py);
    for (t, _) in types.iter() {
        out.set_item(e.state.strings.name(*t), py.None())?;
    }
    out.call_method0("keys")
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskGroup")]
pub struct TaskGroupHandle {
    pub engine: Py<Engine>,
    pub id: GroupId,
}

#[pymethods]
impl TaskGroupHandle {
    /// The span the group belongs to (set by the spans extension on submission; sent to
    /// workers with `compute-task`).
    #[getter]
    fn all_durations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        all_durations(py, &e, &e.state.groups[self.id.idx()].durations)
    }

    #[getter]
    fn types<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        type_names(py, &e, &e.state.groups[self.id.idx()].types)
    }

    /// The groups this group's tasks depend on.
    #[getter]
    fn dependencies<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PySet>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        let out = PySet::empty(py)?;
        for g in &e.state.groups[self.id.idx()].dependencies {
            out.add(group_handle(py, &self.engine, &e, *g)?)?;
        }
        Ok(out)
    }

    #[getter]
    fn last_worker(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        match e.state.groups[self.id.idx()].last_worker {
            Some(w) if e.state.is_current_worker(w) => worker_handle(py, &self.engine, &e, w),
            _ => Ok(py.None()),
        }
    }

    #[getter]
    fn last_worker_tasks_left(&self, py: Python<'_>) -> PyResult<i64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].last_worker_tasks_left)
    }

    #[getter]
    fn span_id(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        Ok(opt_obj(py, &e.state.groups[self.id.idx()].span_id))
    }

    #[setter]
    fn set_span_id(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        e.state.borrow_mut()?.groups[self.id.idx()].span_id = value.filter(|v| !v.is_none(py));
        Ok(())
    }

    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "TaskGroup", name)
    }

    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        Ok(group_name(py, &e.state.groups[self.id.idx()].name)?.unbind())
    }

    #[getter]
    fn states<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        states_dict(
            py,
            &self.engine.bind(py).borrow().state.borrow()?.groups[self.id.idx()].states,
        )
    }

    #[getter]
    fn nbytes_total(&self, py: Python<'_>) -> PyResult<i64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].nbytes_total)
    }

    #[getter]
    fn duration(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].durations.duration_us as f64 / 1e6)
    }

    #[getter]
    fn start(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].start)
    }

    #[getter]
    fn stop(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].stop)
    }

    #[getter]
    fn prefix(&self, py: Python<'_>) -> PyResult<Py<TaskPrefixHandle>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        prefix_handle(py, &self.engine, &e, e.state.groups[self.id.idx()].prefix)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.groups[self.id.idx()].size as usize)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<TaskGroupHandle>()
            .is_ok_and(|o| o.get().id == self.id && o.get().engine.is(&self.engine))
    }

    fn __hash__(&self) -> isize {
        self.id.0 as isize
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<{}: {}>",
            self.name(py)?.bind(py).str()?,
            counts(&self.states(py)?)?
        ))
    }
}

fn counts(d: &Bound<'_, PyDict>) -> PyResult<String> {
    let mut items: Vec<(String, i64)> = d
        .iter()
        .map(|(k, v)| Ok((k.extract::<String>()?, v.extract::<i64>()?)))
        .collect::<PyResult<_>>()?;
    items.sort();
    Ok(items
        .into_iter()
        .filter(|(_, v)| *v != 0)
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join(", "))
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskPrefix")]
pub struct TaskPrefixHandle {
    pub engine: Py<Engine>,
    pub id: PrefixId,
}

#[pymethods]
impl TaskPrefixHandle {
    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "TaskPrefix", name)
    }

    #[getter]
    fn name(&self, py: Python<'_>) -> PyResult<String> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].name.clone())
    }

    #[getter]
    fn states<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        states_dict(
            py,
            &self.engine.bind(py).borrow().state.borrow()?.prefixes[self.id.idx()].states,
        )
    }

    #[getter]
    fn all_durations<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        all_durations(py, &e, &e.state.prefixes[self.id.idx()].durations)
    }

    #[getter]
    fn duration(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        Ok(e.state.prefixes[self.id.idx()].durations.duration_us as f64 / 1e6)
    }

    #[getter]
    fn types<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        type_names(py, &e, &e.state.prefixes[self.id.idx()].types)
    }

    /// Transitions into each state so far: `defaultdict(int)` with the states seen.
    #[getter]
    fn state_counts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        let counts = &e.state.prefixes[self.id.idx()].state_counts;
        let d = PyDict::new(py);
        for s in ALL_TASK_STATES {
            if counts[s.index()] != 0 {
                d.set_item(s.as_str(), counts[s.index()])?;
            }
        }
        let int = py.import("builtins")?.getattr("int")?;
        py.import("collections")?
            .getattr("defaultdict")?
            .call1((int, d))
    }

    /// The prefix's groups, in creation order.
    #[getter]
    fn groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        let d = PyDict::new(py);
        for (g, _) in e.state.prefixes[self.id.idx()].groups.iter() {
            let h = Py::new(
                py,
                TaskGroupHandle {
                    engine: self.engine.clone_ref(py),
                    id: *g,
                },
            )?;
            d.set_item(h, py.None())?;
        }
        d.call_method0("keys")
    }

    #[getter]
    fn duration_average(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].duration_average)
    }

    #[getter]
    fn max_exec_time(&self, py: Python<'_>) -> PyResult<f64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].max_exec_time)
    }

    #[getter]
    fn suspicious(&self, py: Python<'_>) -> PyResult<i64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].suspicious)
    }

    #[getter]
    fn nbytes_total(&self, py: Python<'_>) -> PyResult<i64> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].nbytes_total)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        Ok(st.prefixes[self.id.idx()].size as usize)
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other
            .cast::<TaskPrefixHandle>()
            .is_ok_and(|o| o.get().id == self.id && o.get().engine.is(&self.engine))
    }

    fn __hash__(&self) -> isize {
        self.id.0 as isize
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "<{}: {}>",
            self.name(py)?,
            counts(&self.states(py)?)?
        ))
    }
}

// ----- canonical handles ---------------------------------------------------------------

/// The canonical `TaskGroup` of `g` (one object per group, as distributed's, so
/// attributes set on it from Python stay and `is` holds).
pub fn group_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    g: GroupId,
) -> PyResult<Py<TaskGroupHandle>> {
    e.group_handles.get_or_create(py, g, || {
        Py::new(
            py,
            TaskGroupHandle {
                engine: engine.clone_ref(py),
                id: g,
            },
        )
    })
}

/// The canonical `TaskPrefix` of `p`.
pub fn prefix_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    p: PrefixId,
) -> PyResult<Py<TaskPrefixHandle>> {
    e.prefix_handles.get_or_create(py, p, || {
        Py::new(
            py,
            TaskPrefixHandle {
                engine: engine.clone_ref(py),
                id: p,
            },
        )
    })
}

/// The engine's handle for task `t` (created once, cached while the task lives).
pub fn task_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    t: TaskId,
) -> PyResult<Py<PyAny>> {
    let h = e.task_handles.get_or_create(py, t, || {
        let ts = e.state.ts(t);
        Py::new(
            py,
            TaskStateHandle {
                engine: engine.clone_ref(py),
                id: t,
                serial: ts.serial,
                key: ts.key.clone_ref(py),
                hash: ts.hash as isize,
            },
        )
    })?;
    Ok(h.into_any())
}

pub fn worker_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    w: WorkerId,
) -> PyResult<Py<PyAny>> {
    let h = e.worker_handles.get_or_create(py, w, || {
        Py::new(
            py,
            WorkerStateHandle {
                engine: engine.clone_ref(py),
                id: w,
                hash: e.state.ws(w).hash as isize,
            },
        )
    })?;
    Ok(h.into_any())
}

pub fn client_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    c: ClientId,
) -> PyResult<Py<PyAny>> {
    let h = e.client_handles.get_or_create(py, c, || {
        Py::new(
            py,
            ClientStateHandle {
                engine: engine.clone_ref(py),
                id: c,
                hash: e.state.clients[c.idx()].hash as isize,
            },
        )
    })?;
    Ok(h.into_any())
}

/// A Python `set` of task handles, filled in the engine's iteration order; `None` stays `None`.
pub fn task_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    s: Option<&crate::core::entities::TaskSet>,
) -> PyResult<Py<PyAny>> {
    let Some(s) = s else { return Ok(none(py)) };
    let out = PySet::empty(py)?;
    for t in s.iter() {
        out.add(task_handle(py, engine, e, t)?)?;
    }
    Ok(out.into_any().unbind())
}

pub fn worker_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    s: Option<&crate::core::entities::WorkerSet>,
) -> PyResult<Py<PyAny>> {
    let Some(s) = s else { return Ok(none(py)) };
    let out = PySet::empty(py)?;
    for w in s.iter() {
        out.add(worker_handle(py, engine, e, w)?)?;
    }
    Ok(out.into_any().unbind())
}

pub fn client_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    e: &View<'_>,
    s: Option<&crate::core::entities::ClientSet>,
) -> PyResult<Py<PyAny>> {
    let Some(s) = s else { return Ok(none(py)) };
    let out = PySet::empty(py)?;
    for c in s.iter() {
        out.add(client_handle(py, engine, e, c)?)?;
    }
    Ok(out.into_any().unbind())
}
