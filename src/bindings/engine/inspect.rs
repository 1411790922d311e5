//! Reading the state: handles by key or address, the scheduler-wide containers, groups
//! and prefixes, the transition log, `story`, erred tasks, validation.

use crate::bindings::handles;
use crate::bindings::shared::{Engine, State, View};
use crate::core::entities::TaskSet;
use crate::core::state::TransitionLogEntry;
use crate::core::types::*;
use pyo3::exceptions::{PyIndexError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PySet, PyTuple};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One `transition_log` entry: the fields of distributed's `Transition`.
fn transition_fields<'py>(
    py: Python<'py>,
    entry: &TransitionLogEntry<Py<PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let recs = PyDict::new(py);
    for (k, v) in &entry.recommendations {
        recs.set_item(k.bind(py), v.as_str())?;
    }
    (
        entry.key.bind(py),
        entry.start.as_str(),
        entry.finish.as_str(),
        recs,
        entry.stimulus_id.bind(py),
        entry.timestamp,
    )
        .into_pyobject(py)
}

fn addresses(st: &State, ws: impl IntoIterator<Item = WorkerId>) -> Vec<String> {
    ws.into_iter().map(|w| st.ws(w).address.clone()).collect()
}

#[pymethods]
impl Engine {
    /// The `TaskState` of `key`, or `None` (as `SchedulerState.tasks.get(key)`).
    fn get_task(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.read()?;
        match e.tid(&st, key)? {
            Some(t) => handles::task_handle(py, &slf.clone().unbind(), &View::new(&e, &st), t),
            None => Ok(py.None()),
        }
    }

    /// The `WorkerState` of `address`, or `None`.
    fn get_worker(slf: &Bound<'_, Self>, address: &str) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.read()?;
        match st.worker_id(address) {
            Some(w) => handles::worker_handle(py, &slf.clone().unbind(), &View::new(&e, &st), w),
            None => Ok(py.None()),
        }
    }

    /// The `ClientState` of `client`, or `None`.
    fn get_client(slf: &Bound<'_, Self>, client: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        match e.known_client(py, client)? {
            Some(c) => {
                let st = e.read()?;
                handles::client_handle(py, &slf.clone().unbind(), &View::new(&e, &st), c)
            }
            None => Ok(py.None()),
        }
    }

    /// `SchedulerState.task_prefixes`: name -> TaskPrefix, every prefix seen (distributed
    /// keeps them until restart).
    fn task_prefixes<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.read()?;
        let v = View::new(&e, &st);
        let out = PyDict::new(py);
        let engine = slf.clone().unbind();
        for (i, p) in st.prefixes().iter().enumerate() {
            let h = handles::prefix_handle(py, &engine, &v, PrefixId(i as u32))?;
            out.set_item(p.name.as_str(), h)?;
        }
        Ok(out)
    }

    /// `SchedulerState.task_groups`: name -> TaskGroup, the groups still alive.
    fn task_groups<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.read()?;
        let v = View::new(&e, &st);
        let out = PyDict::new(py);
        let engine = slf.clone().unbind();
        for g in st.alive_groups() {
            let h = handles::group_handle(py, &engine, &v, g)?;
            out.set_item(e.group_name(py, &st.group(g).name)?, h)?;
        }
        Ok(out)
    }

    /// `SchedulerState.is_idle`: every task group is done (nothing waiting, queued,
    /// processing or without a worker).
    #[getter]
    fn is_idle(&self) -> PyResult<bool> {
        Ok(self.read()?.is_idle())
    }

    /// Addresses of the workers in `Scheduler.workers` order (sorted).
    fn worker_addresses(&self) -> PyResult<Vec<String>> {
        let st = self.read()?;
        Ok(addresses(&st, st.workers_sorted().iter().copied()))
    }

    fn worker_count(&self) -> PyResult<usize> {
        Ok(self.read()?.workers_sorted().len())
    }

    /// `iter(SchedulerState.tasks)`: a live iterator over the task keys in creation
    /// order, without copying them; like a dict's, it fails if tasks are added or
    /// forgotten during the iteration.
    fn iter_task_keys(slf: &Bound<'_, Self>) -> PyResult<TaskIter> {
        TaskIter::new(slf, TaskIterKind::Keys)
    }

    /// `iter(SchedulerState.tasks.items())` (`values=False`) or `.values()`
    /// (`values=True`): live, in creation order, nothing copied.
    #[pyo3(signature = (values=false))]
    fn iter_task_items(slf: &Bound<'_, Self>, values: bool) -> PyResult<TaskIter> {
        let kind = match values {
            true => TaskIterKind::Values,
            false => TaskIterKind::Items,
        };
        TaskIter::new(slf, kind)
    }

    /// The keys of the live tasks, in creation order (like `SchedulerState.tasks`).
    fn task_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let st = self.read()?;
        PyList::new(py, st.key_table().iter().map(|t| st.ts(t).key.bind(py)))
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.read()?.n_live_tasks())
    }

    /// `SchedulerState.n_tasks`: how many times a task was sent to a worker.
    #[getter]
    fn n_tasks(&self) -> PyResult<i64> {
        Ok(self.read()?.n_tasks())
    }

    #[getter]
    fn transition_counter(&self) -> PyResult<i64> {
        Ok(self.read()?.transition_counter())
    }

    /// The engine's counters for monitoring (the Prometheus `/metrics` endpoint):
    /// `stimuli` run and the seconds they took (`stimulus_seconds`, of which
    /// `plugin_hook_seconds` went to Python plugin hooks called between transitions),
    /// `transitions`, and the `tasks` and `workers` held.
    fn metrics(&self, py: Python<'_>) -> PyResult<Py<PyDict>> {
        let st = self.read()?;
        let d = PyDict::new(py);
        d.set_item("stimuli", self.stimuli.load(Ordering::Relaxed))?;
        d.set_item(
            "stimulus_seconds",
            self.stimulus_ns.load(Ordering::Relaxed) as f64 / 1e9,
        )?;
        d.set_item("plugin_hook_seconds", st.observer_ns() as f64 / 1e9)?;
        d.set_item("transitions", st.transition_counter())?;
        d.set_item("tasks", st.n_live_tasks())?;
        d.set_item("workers", st.workers_sorted().len())?;
        Ok(d.unbind())
    }

    /// Slots in the group arena (live groups, dead ones still referred to, free slots):
    /// stays bounded while groups come and go.
    #[getter]
    fn n_group_slots(&self) -> PyResult<usize> {
        Ok(self.read()?.group_slots())
    }

    /// How many handles each cache holds (tasks, workers, clients, groups, prefixes):
    /// with nothing held by Python, they follow the live entities.
    fn handle_counts(&self) -> std::collections::HashMap<&'static str, usize> {
        std::collections::HashMap::from([
            ("tasks", self.task_handles.lock().len()),
            ("workers", self.worker_handles.lock().len()),
            ("clients", self.client_handles.lock().len()),
            ("groups", self.group_handles.lock().len()),
            ("prefixes", self.prefix_handles.lock().len()),
        ])
    }

    /// Drops every cached handle and the transition hook (`Scheduler.close`). A handle
    /// refers to its engine and the engine's caches to the handles; the garbage
    /// collector cannot follow a handle's references (its `__dict__` is made after the
    /// object is tracked, so it may not traverse), so the Scheduler that owns the
    /// engine is only freed once this breaks the cycle. Handles Python still holds stay
    /// readable; later lookups make new ones.
    fn release_handles(&self) -> PyResult<()> {
        self.write()?.set_observer(None);
        let dropped = (
            std::mem::take(&mut *self.task_handles.lock()),
            std::mem::take(&mut *self.worker_handles.lock()),
            std::mem::take(&mut *self.client_handles.lock()),
            std::mem::take(&mut *self.group_handles.lock()),
            std::mem::take(&mut *self.prefix_handles.lock()),
        );
        // released outside the locks: a handle's dict may run Python when it goes
        drop(dropped);
        Ok(())
    }

    /// The state string of a task, or "forgotten" for unknown keys.
    fn task_state(&self, key: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let st = self.read()?;
        Ok(match self.tid(&st, key)? {
            Some(t) => st.ts(t).state.as_str(),
            None => "forgotten",
        })
    }

    /// `transition_log`: each entry's fields, for distributed's `Transition`.
    fn transition_log_entries<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let st = self.read()?;
        let entries = st.transition_log().iter().map(|e| transition_fields(py, e));
        PyList::new(py, entries.collect::<PyResult<Vec<_>>>()?)
    }

    /// `transition_log[index]`'s fields (negative counts from the end), without
    /// building the rest of the log.
    fn transition_log_entry<'py>(
        &self,
        py: Python<'py>,
        index: isize,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let st = self.read()?;
        let log = st.transition_log();
        let i = if index < 0 {
            index + log.len() as isize
        } else {
            index
        };
        let entry = usize::try_from(i)
            .ok()
            .and_then(|i| log.get(i))
            .ok_or_else(|| PyIndexError::new_err("deque index out of range"))?;
        transition_fields(py, entry)
    }

    /// `len(SchedulerState.transition_log)`
    fn transition_log_len(&self) -> PyResult<usize> {
        Ok(self.read()?.transition_log().len())
    }

    /// `SchedulerState.transition_log.clear()`
    fn clear_transition_log(&self) -> PyResult<()> {
        self.write()?.clear_transition_log();
        Ok(())
    }

    /// `SchedulerState.erred_tasks`, newest first: each record's fields, for
    /// distributed's `ErredTask`, and the deque's `maxlen`.
    fn erred_task_records<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyList>, Option<usize>)> {
        let st = self.read()?;
        let records = PyList::empty(py);
        for r in st.erred_tasks() {
            let text = |t: &Option<Py<PyAny>>| t.as_ref().map(|t| t.clone_ref(py));
            let erred_on = PySet::new(py, &r.erred_on)?;
            records.append((
                &r.key,
                r.timestamp,
                erred_on,
                text(&r.exception_text),
                text(&r.traceback_text),
            ))?;
        }
        let maxlen = Some(st.config().erred_tasks_maxlen).filter(|m| *m != usize::MAX);
        Ok((records, maxlen))
    }

    /// `Scheduler.validate_key`: one task's invariants, natively (unknown keys pass).
    fn validate_key(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let st = self.read()?;
        match self.tid(&st, key)? {
            Some(t) => Ok(st.validate_task(t)?),
            None => Ok(()),
        }
    }

    /// `SchedulerState.validate_state`, natively.
    fn validate_state(&self) -> PyResult<()> {
        Ok(self.read()?.validate_state()?)
    }

    /// The engine's iteration order of each task's sets (`dependencies`, `dependents`,
    /// `waiting_on`, `waiters` as keys, `who_has` as addresses, `who_wants` as clients;
    /// `None` for no set) and of each worker's `processing`. Handles give these as new
    /// Python sets, which need not iterate in the order the scheduler's did.
    fn set_orders<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let st = self.read()?;
        let s = &*st;
        let keys = |set: Option<&TaskSet>| {
            set.map(|set| {
                set.iter()
                    .map(|t| s.ts(t).key.clone_ref(py))
                    .collect::<Vec<_>>()
            })
        };
        let tasks = PyDict::new(py);
        for t in s.key_table().iter() {
            let ts = s.ts(t);
            let k = ts.key.bind(py);
            let who_has = ts.who_has.as_ref().map(|h| addresses(s, h.iter()));
            let who_wants = ts.who_wants().map(|c| {
                c.iter()
                    .map(|c| s.client(c).client_key.clone_ref(py))
                    .collect::<Vec<_>>()
            });
            let entry = (
                keys(Some(&ts.dependencies)),
                keys(Some(&ts.dependents)),
                keys(ts.waiting_on.as_ref()),
                keys(ts.waiters.as_ref()),
                who_has,
                who_wants,
            );
            tasks.set_item(k, entry)?;
        }
        let workers = PyDict::new(py);
        for &w in s.workers_sorted() {
            workers.set_item(&s.ws(w).address, keys(Some(&s.ws(w).processing)))?;
        }
        Ok((tasks, workers))
    }

    /// `(len(queued), len(unrunnable))`, without building either: distributed asks
    /// whether they are empty every 250 ms (`check_idle`).
    fn waiting_counts(&self) -> PyResult<(usize, usize)> {
        let st = self.read()?;
        Ok((st.queued().len(), st.unrunnable().len()))
    }

    /// Scheduler-wide containers, as lists of keys / addresses in iteration order.
    #[pyo3(signature = (only = None))]
    fn containers<'py>(&self, py: Python<'py>, only: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.read()?;
        let s = &*st;
        let d = PyDict::new(py);
        let key_list = |ts: &mut dyn Iterator<Item = TaskId>| {
            PyList::new(py, ts.map(|t| s.ts(t).key.bind(py)))
        };
        // `only`: build just that container (sorting `queued` is O(n log n))
        let want =
            |k: &str| only.is_none_or(|o| o == k || (o == "unrunnable" && k == "unrunnable_since"));
        if want("idle") {
            d.set_item("idle", addresses(s, s.idle().iter().copied()))?;
        }
        if want("running") {
            d.set_item("running", addresses(s, s.running().iter()))?;
        }
        if want("saturated") {
            d.set_item("saturated", addresses(s, s.saturated().iter()))?;
        }
        if want("idle_task_count") {
            d.set_item("idle_task_count", addresses(s, s.idle_task_count().iter()))?;
        }
        if want("queued") {
            d.set_item("queued", key_list(&mut s.queued().sorted().into_iter())?)?;
        }
        if want("unrunnable") {
            d.set_item("unrunnable", key_list(&mut s.unrunnable().keys())?)?;
        }
        if want("unrunnable_since") {
            // monotonic() when each task became unrunnable (the no-workers timeout reads it)
            let since: Vec<f64> = s.unrunnable().iter().map(|(_, v)| *v).collect();
            d.set_item("unrunnable_since", since)?;
        }
        if want("replicated_tasks") {
            d.set_item(
                "replicated_tasks",
                key_list(&mut s.replicated_tasks().iter())?,
            )?;
        }
        if want("total_nthreads") {
            d.set_item("total_nthreads", s.total_nthreads())?;
        }
        if want("n_tasks") {
            d.set_item("n_tasks", s.n_tasks())?;
        }
        if want("total_occupancy") {
            d.set_item("total_occupancy", s.total_occupancy())?;
        }
        Ok(d)
    }
}

/// What a `TaskIter` yields.
#[derive(Clone, Copy, PartialEq)]
enum TaskIterKind {
    Keys,
    Items,
    Values,
}

/// Iterator behind `iter(TasksView)`, `.items()` and `.values()`: walks the live tasks
/// in creation order and, for items and values, turns each into its canonical
/// `TaskState` handle. Like a dict's iterators it fails (for good) once tasks are added
/// or forgotten during the iteration.
#[pyclass(frozen, module = "dask_rsched._core")]
pub struct TaskIter {
    engine: Py<Engine>,
    kind: TaskIterKind,
    /// The next place in creation order.
    next: AtomicUsize,
    /// The number of tasks when the iteration began; `usize::MAX` once it failed.
    len: AtomicUsize,
}

impl TaskIter {
    fn new(engine: &Bound<'_, Engine>, kind: TaskIterKind) -> PyResult<Self> {
        let len = engine.borrow().read()?.key_table().len();
        Ok(TaskIter {
            engine: engine.clone().unbind(),
            kind,
            next: AtomicUsize::new(0),
            len: AtomicUsize::new(len),
        })
    }
}

#[pymethods]
impl TaskIter {
    fn __traverse__(&self, visit: pyo3::PyVisit<'_>) -> Result<(), pyo3::PyTraverseError> {
        visit.call(&self.engine)
    }

    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let e = self.engine.bind(py).borrow();
        let st = e.read()?;
        let table = st.key_table();
        if table.len() != self.len.load(Ordering::Relaxed) {
            self.len.store(usize::MAX, Ordering::Relaxed);
            return Err(PyRuntimeError::new_err(
                "dictionary changed size during iteration",
            ));
        }
        let Some((place, t)) = table.next_from(self.next.load(Ordering::Relaxed)) else {
            self.next.store(usize::MAX, Ordering::Relaxed);
            return Ok(None);
        };
        self.next.store(place + 1, Ordering::Relaxed);
        let key = st.ts(t).key.clone_ref(py);
        if self.kind == TaskIterKind::Keys {
            return Ok(Some(key));
        }
        let ts = handles::task_handle(py, &self.engine, &View::new(&e, &st), t)?;
        if self.kind == TaskIterKind::Values {
            return Ok(Some(ts));
        }
        Ok(Some(PyTuple::new(py, [key, ts])?.into_any().unbind()))
    }
}
