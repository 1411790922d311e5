//! `Engine`: the scheduler state owned by Rust, driven by stimuli named like distributed's
//! `SchedulerState`/`Scheduler` methods. Every stimulus returns `(client_msgs, worker_msgs)`.

use super::cell::StateCell;
use super::handles::{self, ClientStateHandle, TaskStateHandle, WorkerStateHandle};
use super::messages::{outbox_to_py, priority_to_py, py_state};
use crate::core::state::{
    Config, ObservedTransition, Outbox, Recs, SchedulerState, StartStop, TransitionObserver,
};
use crate::core::stimuli::{GraphTask, KeyRef, NewWorker, StaleReply};
use crate::core::transitions::TransitionArgs;
use crate::core::types::*;
use hashbrown::HashMap;
use pyo3::exceptions::{PyAssertionError, PyKeyError, PyRuntimeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyIterator, PyList, PySet, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

pub(crate) type State = SchedulerState<Py<PyAny>>;

fn to_pyerr(e: CoreError) -> PyErr {
    match e {
        CoreError::UnknownKey(k) => PyKeyError::new_err(k),
        CoreError::UnknownWorker(w) => PyKeyError::new_err(w),
        CoreError::UnknownClient(c) => PyKeyError::new_err(c),
        CoreError::WorkerExists(_) | CoreError::Invalid(_) => PyValueError::new_err(e.to_string()),
        CoreError::ImpossibleTransition { .. } => PyRuntimeError::new_err(e.to_string()),
        CoreError::Validation(m) => PyAssertionError::new_err(m),
    }
}

/// A worker's `{resource: quantity}` in the dict's order.
fn resource_pairs(resources: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, f64)>> {
    let mut out = Vec::new();
    if let Some(d) = resources {
        for (k, v) in d.iter() {
            out.push((k.extract::<String>()?, v.extract::<f64>()?));
        }
    }
    Ok(out)
}

/// The pickled `MemoryError` of `_add_to_processing`'s safety check, worded as
/// distributed words it.
fn memory_error_payload(
    key: &Py<PyAny>,
    ndep_bytes: i64,
    addr: &str,
    memory_limit: i64,
    has_dependents: bool,
) -> Py<PyAny> {
    Python::attach(|py| {
        (|| -> PyResult<Py<PyAny>> {
            let format_bytes = py.import("dask.utils")?.getattr("format_bytes")?;
            let mut msg = format!(
                "Task {} has {} worth of input dependencies, but worker {addr} has \
                 memory_limit set to {}.",
                key.bind(py).repr()?,
                format_bytes.call1((ndep_bytes,))?,
                format_bytes.call1((memory_limit,))?,
            );
            if !has_dependents {
                msg.push_str(
                    " It seems like you called client.compute() on a huge collection. \
                     Consider writing to distributed storage or slicing/reducing first.",
                );
            }
            // distributed logs the message before erring the task
            py.import("logging")?
                .call_method1("getLogger", ("distributed.scheduler",))?
                .call_method1("error", (&msg,))?;
            let err = pyo3::exceptions::PyMemoryError::new_err(msg);
            Ok(py
                .import("pickle")?
                .getattr("dumps")?
                .call1((err.value(py),))?
                .unbind())
        })()
        .unwrap_or_else(|_| py.None())
    })
}

static KEY_SPLIT: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();

/// The (group, prefix) names of a key: `key_split_group(key)`, `key_split(key)`.
fn group_and_prefix(key: &Bound<'_, PyAny>) -> PyResult<(String, String)> {
    let py = key.py();
    let (key_split, key_split_group) = key_splitters(py)?;
    let group = key_split_group.bind(py).call1((key,))?;
    let group = match group.extract::<String>() {
        Ok(name) => name,
        Err(_) => encode_group_name(&group)?,
    };
    Ok((group, key_split.bind(py).call1((key,))?.extract()?))
}

/// Encoded names of groups that `key_split_group` names with something else than a str
/// (a key such as `((1, 2), "x")` is grouped under the tuple `(1, 2)`) -> that object.
static OTHER_GROUP_NAMES: PyOnceLock<Py<PyDict>> = PyOnceLock::new();

/// The core names groups with strings: another name is kept as "\0" + its repr.
fn encode_group_name(name: &Bound<'_, PyAny>) -> PyResult<String> {
    let py = name.py();
    let encoded = format!("\0{}", name.repr()?);
    OTHER_GROUP_NAMES
        .get_or_init(py, || PyDict::new(py).unbind())
        .bind(py)
        .set_item(&encoded, name)?;
    Ok(encoded)
}

/// A group's name as distributed has it (`TaskGroup.name`, the keys of `task_groups`).
pub(crate) fn group_name<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    if name.starts_with('\0') {
        if let Some(names) = OTHER_GROUP_NAMES.get(py) {
            if let Some(obj) = names.bind(py).get_item(name)? {
                return Ok(obj);
            }
        }
    }
    Ok(PyString::new(py, name).into_any())
}

/// `run_spec.data_producer` of a task spec (false where it has none).
fn data_producer(spec: &Bound<'_, PyAny>) -> bool {
    spec.getattr(intern!(spec.py(), "data_producer"))
        .and_then(|v| v.is_truthy())
        .unwrap_or(false)
}

/// A setting that must be a float > 0.
fn positive(what: &str, value: f64) -> PyResult<f64> {
    if value.is_nan() || value <= 0.0 {
        return Err(PyValueError::new_err(format!("{what} must be a float > 0")));
    }
    Ok(value)
}

fn key_splitters(py: Python<'_>) -> PyResult<&(Py<PyAny>, Py<PyAny>)> {
    KEY_SPLIT.get_or_try_init(py, || -> PyResult<_> {
        let ks = py.import("dask.utils")?.getattr("key_split")?.unbind();
        let ksg = py
            .import("distributed.utils")?
            .getattr("key_split_group")?
            .unbind();
        Ok((ks, ksg))
    })
}

fn worker_of(st: &State, address: &str) -> PyResult<WorkerId> {
    st.worker_id(address)
        .ok_or_else(|| PyKeyError::new_err(address.to_owned()))
}

fn py_num(v: &Bound<'_, PyAny>) -> PyResult<Num> {
    if let Ok(i) = v.extract::<i64>() {
        Ok(Num::Int(i))
    } else {
        Ok(Num::Float(v.extract::<f64>()?))
    }
}

#[pyclass(module = "dask_rsched._core")]
pub struct Engine {
    /// Every stimulus borrows it exclusively; a plugin hook between two transitions
    /// reads (and writes) it through the lend (see `cell`).
    pub(crate) state: StateCell<State>,
    /// key -> task id (the live tasks, like `SchedulerState.tasks`)
    keys: Py<PyDict>,
    clients: Py<PyDict>,
    pub(crate) task_handles: HandleCache<TaskId, Py<TaskStateHandle>>,
    pub(crate) worker_handles: HandleCache<WorkerId, Py<WorkerStateHandle>>,
    pub(crate) client_handles: HandleCache<ClientId, Py<ClientStateHandle>>,
    pub(crate) group_handles: HandleCache<GroupId, Py<handles::TaskGroupHandle>>,
    pub(crate) prefix_handles: HandleCache<PrefixId, Py<handles::TaskPrefixHandle>>,
    /// (server_id, name) of every worker ever added, by id
    worker_meta: Mutex<Vec<(Py<PyAny>, Py<PyAny>)>>,
    /// `Scheduler.aliases`: worker name (any hashable) -> address
    aliases: Py<PyDict>,
    /// A graph submission whose transitions wait for `update_graph_commit`
    pending_graph: Mutex<Option<PendingGraph>>,
    /// Keep forgotten tasks readable until `release_forgotten()` (plugins are told about
    /// a task's `forgotten` transition while it can still be looked up, as distributed
    /// does).
    hold_forgotten: AtomicBool,
    /// Keys of the last submission whose run_spec collided with an existing task's.
    graph_collisions: Mutex<Vec<Py<PyAny>>>,
    /// Dead groups a Python object still held when they died, and when to look again.
    pinned_groups: Mutex<PinnedGroups>,
}

struct PinnedGroups {
    groups: Vec<GroupId>,
    /// Checked again once there are this many (amortised O(1) per dead group).
    recheck_at: usize,
}

/// The engine with its state borrowed: what handles read.
pub(crate) struct View<'a> {
    pub(crate) engine: &'a Engine,
    pub(crate) state: &'a State,
}

impl std::ops::Deref for View<'_> {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        self.engine
    }
}

impl<'a> View<'a> {
    pub(crate) fn new(engine: &'a Engine, state: &'a State) -> Self {
        Self { engine, state }
    }

    /// The task a handle points at, unless it was forgotten (its slot may since hold
    /// another task: the serial tells them apart without hashing the key).
    pub(crate) fn live_task(
        &self,
        id: TaskId,
        serial: u64,
    ) -> Option<&'a crate::core::entities::Task<Py<PyAny>>> {
        self.state.task(id).filter(|ts| ts.serial == serial)
    }

    /// The record a handle points at, a task forgotten in the current batch included:
    /// plugins told of its `forgotten` transition read it as distributed's TaskState.
    pub(crate) fn task_record(
        &self,
        id: TaskId,
        serial: u64,
    ) -> Option<&'a crate::core::entities::Task<Py<PyAny>>> {
        self.state
            .tasks
            .get(id.idx())
            .and_then(|o| o.as_ref())
            .filter(|ts| ts.serial == serial)
    }
}

/// Drops `key` from the key dict if it still names task `t` (a hook may have dropped
/// it already, as distributed drops it right after telling plugins).
fn forget_key(keys: &Bound<'_, PyDict>, key: &Bound<'_, PyAny>, t: TaskId) -> PyResult<()> {
    if let Some(v) = keys.get_item(key)? {
        if v.extract::<u32>()? == t.0 {
            keys.del_item(key)?;
        }
    }
    Ok(())
}

/// The core's `TransitionObserver::notify`: calls the Python hook (with the state lent
/// to the handles), then drops a forgotten task's key as `_transition` does.
fn notify_transition(st: &mut State, tr: &ObservedTransition<'_, Py<PyAny>>) {
    Python::attach(|py| {
        let Some(observer) = &st.observer else {
            return;
        };
        let data = observer.data.bind(py).clone();
        let result = (|| -> PyResult<()> {
            let data = data.cast::<PyTuple>()?;
            let hook = data.get_item(0)?;
            let key = tr.key.bind(py);
            let prefix = data.get_item(2)?;
            let wanted = prefix.is_none()
                || key.cast::<PyString>().is_ok_and(|k| {
                    k.to_str()
                        .is_ok_and(|k| prefix.extract::<&str>().is_ok_and(|p| k.starts_with(p)))
                });
            if wanted {
                let args = (
                    key,
                    py_state(py, tr.start),
                    py_state(py, tr.finish),
                    tr.stimulus_id.bind(py),
                );
                StateCell::lend(st, || hook.call1(args))?;
            }
            if tr.finish == TaskStateState::Forgotten {
                forget_key(data.get_item(1)?.cast::<PyDict>()?, key, tr.task)?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            e.write_unraisable(py, Some(&data));
        }
    })
}

/// One `transition_log` entry as distributed's `Transition` tuple.
fn transition_py<'py>(
    transition: &Bound<'py, PyAny>,
    entry: &crate::core::state::TransitionLogEntry<Py<PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let py = transition.py();
    let recs = PyDict::new(py);
    for (k, v) in &entry.recommendations {
        recs.set_item(k.bind(py), v.as_str())?;
    }
    transition.call1((
        entry.key.bind(py),
        entry.start.as_str(),
        entry.finish.as_str(),
        recs,
        entry.stimulus_id.bind(py),
        entry.timestamp,
    ))
}

/// Whether something besides the handle cache holds `handle`.
fn held_elsewhere<T>(_py: Python<'_>, handle: &Py<T>) -> bool {
    // SAFETY: the object is alive (we hold a reference) and the GIL is held
    unsafe { pyo3::ffi::Py_REFCNT(handle.as_ptr()) > 1 }
}

/// The recommendations a stimulus left to carry out (`None`: it carried them out) and
/// its `(client_msgs, worker_msgs)`.
type RecsAndMsgs<'py> = (Option<Bound<'py, PyDict>>, Bound<'py, PyTuple>);

/// `(recommendations, client_msgs, worker_msgs)`, as distributed's stimuli return them.
fn recs_and_msgs_py<'py>(
    py: Python<'py>,
    (recs, msgs): RecsAndMsgs<'py>,
) -> PyResult<Bound<'py, PyTuple>> {
    let recs = recs.unwrap_or_else(|| PyDict::new(py));
    PyTuple::new(py, [recs.into_any(), msgs.get_item(0)?, msgs.get_item(1)?])
}

/// A lock whose holder never runs Python (poisoning cannot leave it half-updated).
fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The canonical handle per live entity. Only touched with the GIL held (a Mutex makes
/// the engine `Sync`, so Python threads may read the scheduler as they do distributed's).
pub(crate) struct HandleCache<K, V>(std::sync::Mutex<HashMap<K, V>>);

impl<K, V> Default for HandleCache<K, V> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + std::hash::Hash, T> HandleCache<K, Py<T>> {
    /// The cached handle of `k`, or the one `make` creates (outside the lock: creating
    /// a Python object may run arbitrary code).
    pub(crate) fn get_or_create(
        &self,
        py: Python<'_>,
        k: K,
        make: impl FnOnce() -> PyResult<Py<T>>,
    ) -> PyResult<Py<T>> {
        if let Some(h) = self.lock().get(&k) {
            return Ok(h.clone_ref(py));
        }
        let h = make()?;
        self.lock().insert(k, h.clone_ref(py));
        Ok(h)
    }
}

impl<K, V> HandleCache<K, V> {
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn try_lock(&self) -> Option<std::sync::MutexGuard<'_, HashMap<K, V>>> {
        match self.0.try_lock() {
            Ok(g) => Some(g),
            Err(std::sync::TryLockError::Poisoned(e)) => Some(e.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }
}

struct PendingGraph {
    recs: crate::core::state::Recs,
    out: Outbox<Py<PyAny>>,
    stimulus_id: Py<PyAny>,
    touched: Vec<TaskId>,
    client: ClientId,
}

impl Engine {
    fn tid(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<TaskId>> {
        Ok(match self.keys.bind(py).get_item(key)? {
            Some(v) => Some(TaskId(v.extract()?)),
            None => None,
        })
    }

    fn tid_required(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<TaskId> {
        self.tid(py, key)?
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    fn client_id(
        &self,
        py: Python<'_>,
        st: &mut State,
        client: &Bound<'_, PyAny>,
    ) -> PyResult<ClientId> {
        if let Some(v) = self.clients.bind(py).get_item(client)? {
            return Ok(ClientId(v.extract()?));
        }
        let c = st.add_client(client.clone().unbind(), client.hash()? as i64);
        self.clients.bind(py).set_item(client, c.0)?;
        Ok(c)
    }

    /// Ends a batch: registers new tasks, drops forgotten ones, converts the messages.
    fn finish<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
        out: Outbox<Py<PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let msgs = outbox_to_py(py, st, &out)?;
        // a failure's record is taken right after it; none outlives a finished batch
        st.failed_transitions.clear();
        if self.hold_forgotten.load(Ordering::Relaxed) {
            return Ok(msgs);
        }
        self.free_forgotten(py, st)?;
        Ok(msgs)
    }

    /// Drops the tasks forgotten since the last call from the key dict and the arena.
    fn free_forgotten(&self, py: Python<'_>, st: &mut State) -> PyResult<()> {
        let keys = self.keys.bind(py);
        let mut dropped = Vec::with_capacity(st.pending_free.len());
        {
            let mut handles = self.task_handles.lock();
            for t in &st.pending_free {
                dropped.extend(handles.remove(t));
            }
        }
        let mut dropped_groups = Vec::new();
        let mut candidates = Vec::new();
        if !st.dead_groups.is_empty() {
            let mut handles = self.group_handles.lock();
            let mut pinned = locked(&self.pinned_groups);
            for g in st.dead_groups.drain(..) {
                match handles.remove(&g) {
                    // a Python object (a Computation, a plugin) still holds the group:
                    // it stays readable until that lets go
                    Some(h) if held_elsewhere(py, &h) => {
                        handles.insert(g, h);
                        pinned.groups.push(g);
                    }
                    h => {
                        dropped_groups.extend(h);
                        candidates.push(g);
                    }
                }
            }
            if pinned.groups.len() >= pinned.recheck_at {
                pinned.groups.retain(|g| {
                    let held = handles.get(g).is_some_and(|h| held_elsewhere(py, h));
                    if !held {
                        dropped_groups.extend(handles.remove(g));
                        candidates.push(*g);
                    }
                    held
                });
                pinned.recheck_at = (2 * pinned.groups.len()).max(64);
            }
        }
        // handles (and their attribute dicts) are released outside the lock
        drop(dropped);
        drop(dropped_groups);
        for t in &st.pending_free {
            forget_key(keys, st.ts(*t).key.bind(py), *t)?;
        }
        st.forget_restored_edges();
        st.flush();
        self.reclaim_groups(py, st, candidates);
        Ok(())
    }

    /// Reuses the slots of dead groups that neither another group's `dependencies` nor
    /// a Python object refers to (a handle made since for a group that is still listed
    /// in `dependencies` is let go of here too, or pinned while held).
    fn reclaim_groups(&self, py: Python<'_>, st: &mut State, mut candidates: Vec<GroupId>) {
        while let Some(g) = candidates.pop() {
            if !st.group_reclaimable(g) {
                continue;
            }
            let handle = {
                let mut handles = self.group_handles.lock();
                match handles.remove(&g) {
                    Some(h) if held_elsewhere(py, &h) => {
                        handles.insert(g, h);
                        locked(&self.pinned_groups).groups.push(g);
                        continue;
                    }
                    h => h,
                }
            };
            drop(handle);
            candidates.extend(st.reclaim_group(g));
        }
    }

    fn commit_graph<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
        pending: PendingGraph,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let PendingGraph {
            recs,
            mut out,
            stimulus_id,
            touched,
            client,
        } = pending;
        st.transitions_loop(recs, &mut out, &stimulus_id)
            .map_err(to_pyerr)?;
        for &t in &touched {
            if st.task(t).is_some_and(|ts| {
                matches!(ts.state, TaskStateState::Memory | TaskStateState::Erred)
            }) {
                st.report_on_key(t, Some(client), &mut out);
            }
        }
        self.finish(py, st, out)
    }

    /// The first key reachable from `keys` that is neither in `dsk` nor a known task.
    fn first_lost_dependency<'py>(
        &self,
        py: Python<'py>,
        dsk: &Bound<'py, PyDict>,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let seen = PySet::empty(py)?;
        let mut work: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        while let Some(k) = work.pop() {
            if seen.contains(&k)? {
                continue;
            }
            seen.add(&k)?;
            match dsk.get_item(&k)? {
                Some(spec) if !spec.is_none() => {
                    for d in spec.getattr(intern!(py, "dependencies"))?.try_iter()? {
                        work.push(d?);
                    }
                }
                Some(_) => {}
                None => {
                    if self.tid(py, &k)?.is_none() {
                        return Ok(Some(k));
                    }
                }
            }
        }
        Ok(None)
    }

    /// `Scheduler._apply_annotations`
    fn apply_annotations(
        &self,
        py: Python<'_>,
        st: &mut State,
        tasks: &[TaskId],
        by_type: Option<&Bound<'_, PyDict>>,
        global: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let by_type = by_type.filter(|d| !d.is_empty());
        let global = global.filter(|d| !d.is_empty());
        if by_type.is_none() && global.is_none() {
            return Ok(());
        }
        let addressing = py.import("distributed.comm.addressing")?;
        let resolve = addressing.getattr("resolve_address")?;
        let unparse = addressing.getattr("unparse_host_port")?;
        let set_type = py.import("builtins")?.getattr("set")?;
        for &t in tasks {
            let key = st.ts(t).key.clone_ref(py);
            let key = key.bind(py);
            let ann = PyDict::new(py);
            if let Some(g) = global {
                for (a, v) in g.iter() {
                    let v = if v.is_callable() { v.call1((key,))? } else { v };
                    ann.set_item(a, v)?;
                }
            }
            if let Some(bt) = by_type {
                for (a, kv) in bt.iter() {
                    if let Ok(v) = kv.get_item(key) {
                        if !v.is_none() {
                            ann.set_item(a, v)?;
                        }
                    }
                }
            }
            if ann.is_empty() {
                continue;
            }
            for (a, value) in ann.iter() {
                let a: String = match a.extract() {
                    Ok(a) => a,
                    Err(_) => continue,
                };
                match a.as_str() {
                    "restrictions" | "workers" => {
                        let values = if value.is_instance_of::<PyList>()
                            || value.is_instance_of::<PyTuple>()
                            || value.is_instance_of::<pyo3::types::PySet>()
                        {
                            value.clone()
                        } else {
                            PyList::new(py, [&value])?.into_any()
                        };
                        let hosts = set_type.call0()?;
                        let workers = set_type.call0()?;
                        for w in values.try_iter()? {
                            let w = w?;
                            // Scheduler.coerce_address
                            let mut addr = w.clone();
                            if let Ok(Some(a)) = self.aliases.bind(py).get_item(&w) {
                                addr = a;
                            }
                            if addr.is_instance_of::<PyTuple>() {
                                addr = unparse.call1(addr.cast::<PyTuple>()?)?;
                            }
                            if !addr.is_instance_of::<pyo3::types::PyString>() {
                                return Err(pyo3::exceptions::PyTypeError::new_err(format!(
                                    "addresses should be strings or tuples, got {}",
                                    addr.repr()?
                                )));
                            }
                            match resolve.call1((&addr,)) {
                                Ok(resolved) => {
                                    workers.call_method1(intern!(py, "add"), (resolved,))?
                                }
                                Err(e) if e.is_instance_of::<PyValueError>(py) => {
                                    hosts.call_method1(intern!(py, "add"), (&w,))?
                                }
                                Err(e) => return Err(e),
                            };
                        }
                        let as_vec = |s: &Bound<'_, PyAny>| -> PyResult<Option<Vec<String>>> {
                            if !s.is_truthy()? {
                                return Ok(None);
                            }
                            Ok(Some(
                                s.try_iter()?
                                    .map(|x| x?.extract::<String>())
                                    .collect::<PyResult<_>>()?,
                            ))
                        };
                        let ts = st.ts_mut(t);
                        if let Some(h) = as_vec(&hosts)? {
                            ts.host_restrictions = Some(h);
                        }
                        if let Some(w) = as_vec(&workers)? {
                            ts.worker_restrictions = Some(w);
                        }
                    }
                    "loose_restrictions" | "allow_other_workers" => {
                        st.ts_mut(t).loose_restrictions = value.is_truthy()?;
                    }
                    "resources" => {
                        let d = value.cast::<PyDict>()?;
                        let mut rr = Vec::new();
                        for (r, q) in d.iter() {
                            rr.push((r.extract::<String>()?, q.extract::<f64>()?));
                        }
                        st.ts_mut(t).resource_restrictions = Some(rr);
                    }
                    "retries" => {
                        st.ts_mut(t).retries = value.extract()?;
                    }
                    _ => {}
                }
            }
            st.ts_mut(t).annotations = Some(ann.into_any().unbind());
        }
        Ok(())
    }

    /// Appends `(client_msgs, worker_msgs)` of a batch to accumulating dicts.
    fn merge_into(
        msgs: &Bound<'_, PyTuple>,
        cm: &Bound<'_, PyDict>,
        wm: &Bound<'_, PyDict>,
    ) -> PyResult<()> {
        for (src, dst) in [(msgs.get_item(0)?, cm), (msgs.get_item(1)?, wm)] {
            for (k, v) in src.cast::<PyDict>()?.iter() {
                match dst.get_item(&k)? {
                    Some(l) => {
                        l.call_method1(intern!(k.py(), "extend"), (v,))?;
                    }
                    None => dst.set_item(k, v)?,
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn cancel_inner<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        force: bool,
        reason: &Bound<'py, PyAny>,
        msg: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        cm: &Bound<'py, PyDict>,
        wm: &Bound<'py, PyDict>,
        log: &Bound<'py, PyList>,
    ) -> PyResult<()> {
        let Some(c) = self.clients.bind(py).get_item(client)? else {
            return Ok(());
        };
        let cs = ClientId(c.extract()?);
        let cancelled = PyList::empty(py);
        let mut clients: Vec<ClientId> = Vec::new();
        for key in keys.try_iter()? {
            let key = key?;
            let Some(t) = self.tid(py, &key)? else {
                continue;
            };
            let wanters = st.wanters(t);
            if force || (wanters.len() == 1 && wanters[0] == cs) {
                if !st.ts(t).dependents.is_empty() {
                    let deps = PyList::new(
                        py,
                        st.ts(t)
                            .dependents
                            .iter()
                            .map(|d| st.ts(d).key.clone_ref(py)),
                    )?;
                    // distributed's recursive call logs its request, then its keys
                    log.append(("request", deps.len()))?;
                    self.cancel_inner(
                        py,
                        st,
                        deps.as_any(),
                        client,
                        force,
                        reason,
                        msg,
                        stimulus_id,
                        cm,
                        wm,
                        log,
                    )?;
                }
                log.append(("cancel", &key))?;
                cancelled.append(&key)?;
            }
            if st.task(t).is_none() {
                return Err(PyAssertionError::new_err("cancelled task was forgotten"));
            }
            let wanters = st.wanters(t);
            if wanters.is_empty() {
                return Err(PyAssertionError::new_err("cancelled task has no who_wants"));
            }
            if force {
                clients.extend(wanters);
            } else {
                clients.push(cs);
            }
        }
        let ids: Vec<TaskId> = cancelled
            .iter()
            .filter_map(|k| self.tid(py, &k).ok().flatten())
            .collect();
        // distributed calls client_releases_keys once per key; every call after a
        // client's first finds nothing left to release, so one call per client gives
        // the same state and messages in O(keys) instead of O(keys²).
        let mut seen = hashbrown::HashSet::new();
        clients.retain(|c| seen.insert(*c));
        for c in clients {
            let mut recs = Recs::new();
            let live: Vec<TaskId> = ids
                .iter()
                .copied()
                .filter(|t| st.task(*t).is_some())
                .collect();
            st.client_releases_keys_inner(&live, c, &mut recs);
            let mut out = Outbox::default();
            let sid = stimulus_id.clone().unbind();
            st.transitions_then_fill_queue(recs, &mut out, &sid)
                .map_err(to_pyerr)?;
            let msgs = self.finish(py, st, out)?;
            Self::merge_into(&msgs, cm, wm)?;
        }
        let report = PyDict::new(py);
        report.set_item(intern!(py, "op"), intern!(py, "cancelled-keys"))?;
        report.set_item(intern!(py, "keys"), cancelled)?;
        report.set_item(intern!(py, "reason"), reason)?;
        report.set_item(intern!(py, "msg"), msg)?;
        for (k, _) in self.clients.bind(py).iter() {
            if k.eq(intern!(py, "fire-and-forget"))? {
                continue;
            }
            let one = PyDict::new(py);
            one.set_item(&k, PyList::new(py, [&report])?)?;
            Self::merge_into(
                &PyTuple::new(py, [one.into_any(), PyDict::new(py).into_any()])?,
                cm,
                wm,
            )?;
        }
        Ok(())
    }

    /// `ws.clean()` of a worker being removed (distributed sets `Status.closed` first),
    /// built from what the engine knows of `w`.
    fn clean_worker_state(&self, py: Python<'_>, st: &State, w: WorkerId) -> PyResult<Py<PyAny>> {
        let ws = st.ws(w);
        let (server_id, name) = {
            let meta = locked(&self.worker_meta);
            let (server_id, name) = &meta[w.idx()];
            (server_id.clone_ref(py), name.clone_ref(py))
        };
        let sched = py.import("distributed.scheduler")?;
        let status = py
            .import("distributed.core")?
            .getattr("Status")?
            .get_item("closed")?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("address", ws.address.as_str())?;
        kwargs.set_item("status", status)?;
        kwargs.set_item("pid", 0)?;
        kwargs.set_item("name", name.bind(py))?;
        kwargs.set_item("nthreads", ws.nthreads)?;
        kwargs.set_item("memory_limit", ws.memory_limit)?;
        kwargs.set_item("local_directory", "")?;
        kwargs.set_item("services", PyDict::new(py))?;
        kwargs.set_item("nanny", py.None())?;
        kwargs.set_item("extra", PyDict::new(py))?;
        kwargs.set_item("server_id", server_id.bind(py))?;
        let clean = sched.getattr("WorkerState")?.call((), Some(&kwargs))?;
        clean.setattr("_occupancy_cache", st.occupancy(w))?;
        Ok(clean.unbind())
    }

    fn register(&self, py: Python<'_>, st: &State, t: TaskId) -> PyResult<()> {
        self.keys.bind(py).set_item(st.ts(t).key.bind(py), t.0)
    }

    /// `stimulus_task_finished`, then (`carry_out`) the `_transitions` of its
    /// recommendations and `stimulus_queue_slots_maybe_opened`, as `handle_task_finished`
    /// does: the recommendations left (unless carried out) and the messages.
    #[allow(clippy::too_many_arguments)]
    fn task_finished<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &str,
        stimulus_id: &Bound<'py, PyAny>,
        run_id: i64,
        nbytes: i64,
        r#type: Option<&Bound<'py, PyAny>>,
        typename: Option<String>,
        startstops: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
        carry_out: bool,
    ) -> PyResult<RecsAndMsgs<'py>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        if st.worker_id(worker).is_none() {
            return self.finish_with(py, &mut st, (!carry_out).then(Recs::new), out);
        }
        let t = self.tid(py, key)?;
        let mut ss = Vec::new();
        if let Some(s) = startstops {
            for item in s.try_iter()? {
                let item = item?;
                ss.push(StartStop {
                    action: item.get_item(intern!(py, "action"))?.extract()?,
                    start: item.get_item(intern!(py, "start"))?.extract()?,
                    stop: item.get_item(intern!(py, "stop"))?.extract()?,
                });
            }
        }
        if let (Some(t), Some(m)) = (t, metadata) {
            // stimulus_task_finished merges metadata only on its way to `memory`
            let will_transition = st.task(t).is_some_and(|ts| {
                !matches!(
                    ts.state,
                    TaskStateState::Released
                        | TaskStateState::Queued
                        | TaskStateState::NoWorker
                        | TaskStateState::Erred
                        | TaskStateState::Memory
                ) && ts.run_id == Some(run_id)
            });
            if m.is_truthy()? && will_transition {
                let ts = st.ts_mut(t);
                let md = ts
                    .metadata
                    .get_or_insert_with(|| PyDict::new(py).into_any().unbind());
                md.bind(py).call_method1(intern!(py, "update"), (m,))?;
            }
        }
        let args = TransitionArgs::Finished {
            worker: worker.to_owned(),
            nbytes,
            type_: r#type.map(|t| t.clone().unbind()),
            typename: typename.unwrap_or_default(),
            startstops: ss,
        };
        let sid = stimulus_id.clone().unbind();
        let (recs, reply) = st
            .stimulus_task_finished(t, worker, run_id, args, &mut out, &sid, None)
            .map_err(to_pyerr)?;
        let w = worker_of(&st, worker)?;
        match reply {
            StaleReply::None => {}
            StaleReply::FreeKeys(_) => {
                // free-keys to the worker for a key it computed that we don't need
                let msg = PyDict::new(py);
                msg.set_item(intern!(py, "op"), intern!(py, "free-keys"))?;
                msg.set_item(intern!(py, "keys"), PyList::new(py, [key])?)?;
                msg.set_item(intern!(py, "stimulus_id"), stimulus_id)?;
                let left = self.carry_out(&mut st, recs, carry_out, &mut out, &sid)?;
                let (recs, msgs) = self.finish_with(py, &mut st, left, out)?;
                let wm = msgs.get_item(1)?;
                let wm = wm.cast::<PyDict>()?;
                let first = PyList::new(py, [msg])?;
                // distributed puts this message first in worker_msgs
                let merged = PyDict::new(py);
                merged.set_item(worker, &first)?;
                for (k, v) in wm.iter() {
                    if k.extract::<String>()? == worker {
                        first.call_method1(intern!(py, "extend"), (v,))?;
                    } else {
                        merged.set_item(k, v)?;
                    }
                }
                let msgs = PyTuple::new(py, [msgs.get_item(0)?, merged.into_any()])?;
                return Ok((recs, msgs));
            }
            StaleReply::AddKeys => {
                if let Some(t) = t {
                    st.add_keys(w, &[Some(t)]);
                }
            }
        }
        let left = self.carry_out(&mut st, recs, carry_out, &mut out, &sid)?;
        self.finish_with(py, &mut st, left, out)
    }

    /// `_transitions(recs)` then `stimulus_queue_slots_maybe_opened` if `carry_out`;
    /// otherwise returns the recommendations, left to the caller.
    fn carry_out(
        &self,
        st: &mut State,
        recs: Recs,
        carry_out: bool,
        out: &mut Outbox<Py<PyAny>>,
        stimulus_id: &Py<PyAny>,
    ) -> PyResult<Option<Recs>> {
        if !carry_out {
            return Ok(Some(recs));
        }
        st.transitions_then_fill_queue(recs, out, stimulus_id)
            .map_err(to_pyerr)?;
        Ok(None)
    }

    /// `finish`, with the recommendations left (if any) as `{key: state}`, read before
    /// `finish` may free forgotten tasks.
    fn finish_with<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
        left: Option<Recs>,
        out: Outbox<Py<PyAny>>,
    ) -> PyResult<RecsAndMsgs<'py>> {
        let recs = match left {
            None => None,
            Some(recs) => {
                let d = PyDict::new(py);
                for (t, finish) in recs.iter() {
                    d.set_item(st.ts(*t).key.bind(py), py_state(py, *finish))?;
                }
                Some(d)
            }
        };
        Ok((recs, self.finish(py, st, out)?))
    }

    /// `stimulus_task_erred`, then (`carry_out`) what `handle_task_erred` does after it.
    /// `texts`: exception, traceback, exception_text, traceback_text.
    #[allow(clippy::too_many_arguments)]
    fn task_erred<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        worker: &str,
        run_id: i64,
        texts: [Option<&Bound<'py, PyAny>>; 4],
        carry_out: bool,
    ) -> PyResult<RecsAndMsgs<'py>> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid(py, key)?;
        let [exception, traceback, exception_text, traceback_text] =
            texts.map(|o| o.filter(|o| !o.is_none()).map(|o| o.clone().unbind()));
        let args = TransitionArgs::Erred {
            worker: Some(worker.to_owned()),
            cause: t,
            exception,
            traceback,
            exception_text,
            traceback_text,
        };
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        let recs = st
            .stimulus_task_erred(t, worker, run_id, args, &mut out, &sid)
            .map_err(to_pyerr)?;
        let left = self.carry_out(&mut st, recs, carry_out, &mut out, &sid)?;
        self.finish_with(py, &mut st, left, out)
    }
}

#[pymethods]
impl Engine {
    #[new]
    /// Settings come from the Dask config, as `SchedulerState` reads them; a Scheduler's
    /// own arguments (`allowed_failures`, `worker_saturation`) override them.
    #[pyo3(signature = (*, validate = false, allowed_failures = None, worker_saturation = None,
                        work_stealing = false))]
    fn new(
        py: Python<'_>,
        validate: bool,
        allowed_failures: Option<i64>,
        worker_saturation: Option<f64>,
        work_stealing: bool,
    ) -> PyResult<Self> {
        // distributed's defaults are registered with dask.config on import.
        let scheduler_module = py.import("distributed.scheduler")?;
        crate::core::entities::DEFAULT_DATA_SIZE.store(
            scheduler_module.getattr("DEFAULT_DATA_SIZE")?.extract()?,
            std::sync::atomic::Ordering::Relaxed,
        );
        let dask_config = py.import("dask.config")?;
        let get = |k: &str| dask_config.call_method1(intern!(py, "get"), (k,));
        let utils = py.import("dask.utils")?;
        let parse_bytes = utils.getattr("parse_bytes")?;
        let parse_timedelta = utils.getattr("parse_timedelta")?;
        let mut config = Config {
            bandwidth: parse_bytes
                .call1((get("distributed.scheduler.bandwidth")?,))?
                .extract::<f64>()?,
            unknown_task_duration: parse_timedelta
                .call1((get("distributed.scheduler.unknown-task-duration")?,))?
                .extract()?,
            rootish_tg_threshold: get("distributed.scheduler.rootish-taskgroup")?.extract()?,
            rootish_tg_dependencies_threshold: get(
                "distributed.scheduler.rootish-taskgroup-dependencies",
            )?
            .extract()?,
            allowed_failures: get("distributed.scheduler.allowed-failures")?.extract()?,
            validate,
            // deque(maxlen=None) is unbounded (distributed's test config uses it)
            transition_log_maxlen: get("distributed.admin.low-level-log-length")?
                .extract::<Option<usize>>()?
                .unwrap_or(usize::MAX),
            erred_tasks_maxlen: get("distributed.diagnostics.erred-tasks.max-history")?
                .extract::<Option<usize>>()?
                .unwrap_or(usize::MAX),
            memory_terminate: get("distributed.worker.memory.terminate")?.is_truthy()?,
            ..Config::default()
        };
        let sat = get("distributed.scheduler.worker-saturation")?;
        config.worker_saturation = if sat.extract::<String>().is_ok_and(|s| s == "inf") {
            f64::INFINITY
        } else {
            let v: f64 = sat.extract()?;
            if v <= 0.0 {
                return Err(PyValueError::new_err(
                    "`distributed.scheduler.worker-saturation` must be a float > 0",
                ));
            }
            v
        };
        if let Some(a) = allowed_failures {
            config.allowed_failures = a;
        }
        if let Some(w) = worker_saturation {
            config.worker_saturation = positive("worker_saturation", w)?;
        }
        let durations = get("distributed.scheduler.default-task-durations")?;
        for (k, v) in durations.cast::<PyDict>()?.iter() {
            config
                .default_task_durations
                .insert(k.extract()?, parse_timedelta.call1((v,))?.extract()?);
        }
        let ff = intern!(py, "fire-and-forget");
        let mut state = State::new(config, ff.clone().into_any().unbind(), ff.hash()? as i64);
        let serialize = py.import("distributed.protocol.serialize")?;
        let lost = py
            .import("builtins")?
            .getattr("RuntimeError")?
            .call1(("Worker holding Actor was lost",))?;
        let ser = serialize.getattr("serialize")?.call1((lost,))?;
        state.actor_lost_exception = Some(
            serialize
                .getattr("Serialized")?
                .call1(ser.cast::<PyTuple>()?)?
                .unbind(),
        );
        state.memory_error = Some(Box::new(memory_error_payload));
        state.stealing.enabled = work_stealing;
        let clients = PyDict::new(py);
        clients.set_item(ff, 0u32)?;
        Ok(Self {
            state: StateCell::new(state),
            keys: PyDict::new(py).unbind(),
            clients: clients.unbind(),
            task_handles: HandleCache::default(),
            worker_handles: HandleCache::default(),
            client_handles: HandleCache::default(),
            group_handles: HandleCache::default(),
            prefix_handles: HandleCache::default(),
            worker_meta: Mutex::new(Vec::new()),
            aliases: PyDict::new(py).unbind(),
            pending_graph: Mutex::new(None),
            hold_forgotten: AtomicBool::new(false),
            graph_collisions: Mutex::new(Vec::new()),
            pinned_groups: Mutex::new(PinnedGroups {
                groups: Vec::new(),
                recheck_at: 64,
            }),
        })
    }

    /// `Scheduler.add_worker`'s state changes, then (`schedule`) unrunnable rescheduling
    /// and queue slots.
    #[pyo3(signature = (address, *, server_id, nthreads, memory_limit = 0, name = None,
                        status = "running", resources = None, stimulus_id = "add-worker",
                        schedule = true))]
    #[allow(clippy::too_many_arguments)]
    fn add_worker<'py>(
        &self,
        py: Python<'py>,
        address: &Bound<'py, PyAny>,
        server_id: &Bound<'py, PyAny>,
        nthreads: i64,
        memory_limit: i64,
        name: Option<&Bound<'py, PyAny>>,
        status: &str,
        resources: Option<&Bound<'py, PyDict>>,
        stimulus_id: &str,
        schedule: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let addr: String = address.extract()?;
        let host = py
            .import("distributed.comm.addressing")?
            .getattr("get_address_host")?
            .call1((address,))?
            .extract()?;
        let status = WorkerStatus::parse(status)
            .ok_or_else(|| PyValueError::new_err(format!("unknown worker status {status:?}")))?;
        let res = resource_pairs(resources)?;
        let name_obj = match name {
            Some(n) => n.clone().unbind(),
            None => address.clone().unbind(),
        };
        // the core resolves host restrictions through aliases, which only str names match
        let name = name_obj.bind(py).extract::<String>().ok();
        let w = st
            .add_worker(NewWorker {
                address: addr,
                hash: server_id.hash()? as i64,
                addr_hash: address.hash()? as i64,
                host,
                name,
                nthreads,
                memory_limit,
                status,
                resources: res,
            })
            .map_err(to_pyerr)?;
        debug_assert_eq!(w.idx(), locked(&self.worker_meta).len());
        self.aliases.bind(py).set_item(&name_obj, address)?;
        locked(&self.worker_meta).push((server_id.clone().unbind(), name_obj));
        let mut out = Outbox::default();
        if schedule && status == WorkerStatus::Running {
            let sid = stimulus_id.into_pyobject(py)?.into_any().unbind();
            let recs = st.bulk_schedule_unrunnable_after_adding_worker(w);
            st.transitions_then_fill_queue(recs, &mut out, &sid)
                .map_err(to_pyerr)?;
        }
        self.finish(py, &mut st, out)
    }

    /// What `Scheduler.add_worker` does after its plugins' `add_worker` (`add_worker`
    /// with `schedule=False` left it out): if the worker is still there and running,
    /// the transitions of `bulk_schedule_unrunnable_after_adding_worker`, then
    /// `stimulus_queue_slots_maybe_opened`.
    fn schedule_after_adding_worker<'py>(
        &self,
        py: Python<'py>,
        address: &str,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        if let Some(w) = st.worker_id(address) {
            if st.ws(w).status == WorkerStatus::Running {
                let sid = stimulus_id.clone().unbind();
                let recs = st.bulk_schedule_unrunnable_after_adding_worker(w);
                st.transitions_then_fill_queue(recs, &mut out, &sid)
                    .map_err(to_pyerr)?;
            }
        }
        self.finish(py, &mut st, out)
    }

    /// `_create_taskstate_from_graph`'s state part. `dsk` maps key -> dask Task (or None),
    /// `ordered` is dask.order's result.
    #[pyo3(signature = (*, dsk, keys, ordered, client, stimulus_id, user_priority = None,
                        fifo_timeout = None, start = 0.0, submitting_task = None, actors = None,
                        annotations_by_type = None, global_annotations = None,
                        defer_transitions = false))]
    #[allow(clippy::too_many_arguments)]
    fn update_graph<'py>(
        &self,
        py: Python<'py>,
        dsk: &Bound<'py, PyDict>,
        keys: &Bound<'py, PyAny>,
        ordered: &Bound<'py, PyDict>,
        client: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        user_priority: Option<&Bound<'py, PyAny>>,
        fifo_timeout: Option<&Bound<'py, PyAny>>,
        start: f64,
        submitting_task: Option<&Bound<'py, PyAny>>,
        actors: Option<&Bound<'py, PyAny>>,
        annotations_by_type: Option<&Bound<'py, PyDict>>,
        global_annotations: Option<&Bound<'py, PyDict>>,
        defer_transitions: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let mut st = self.state.borrow_mut()?;
        if locked(&self.pending_graph).is_some() {
            return Err(PyValueError::new_err(
                "a graph submission is pending: call update_graph_commit() first",
            ));
        }
        // distributed cancels a graph whose keys depend on data it no longer has
        // (`_find_lost_dependencies`); here that is a KeyError before any state changes
        if let Some(lost) = self.first_lost_dependency(py, dsk, keys)? {
            return Err(PyKeyError::new_err(lost.unbind()));
        }
        let index = PyDict::new(py);
        for (i, k) in dsk.keys().iter().enumerate() {
            index.set_item(k, i)?;
        }
        // keys neither in the graph nor known get an entry of their own (distributed
        // creates a task without run_spec for them when the walk reaches them)
        let extra = PyList::empty(py);
        let resolve = |k: &Bound<'py, PyAny>| -> PyResult<Option<KeyRef>> {
            if let Some(i) = index.get_item(k)? {
                return Ok(Some(KeyRef::Graph(i.extract()?)));
            }
            if let Some(t) = self.tid(py, k)? {
                return Ok(Some(KeyRef::Existing(t)));
            }
            let i = dsk.len() + extra.len();
            index.set_item(k, i)?;
            extra.append(k)?;
            Ok(Some(KeyRef::Graph(i)))
        };
        let mut graph = Vec::with_capacity(dsk.len());
        for (k, spec) in dsk.iter() {
            let (run_spec, deps, producer) = if spec.is_none() {
                (None, Vec::new(), false)
            } else {
                let mut deps = Vec::new();
                for d in spec.getattr(intern!(py, "dependencies"))?.try_iter()? {
                    let d = d?;
                    deps.push(resolve(&d)?.ok_or_else(|| PyKeyError::new_err(d.unbind()))?);
                }
                (Some(spec.clone().unbind()), deps, data_producer(&spec))
            };
            let (group, prefix) = group_and_prefix(&k)?;
            graph.push(GraphTask {
                hash: k.hash()? as i64,
                group,
                prefix,
                run_spec,
                data_producer: producer,
                dependencies: deps,
                existing: self.tid(py, &k)?,
                in_dsk: true,
                key: k.unbind(),
            });
        }
        let keys_set = py.import("builtins")?.getattr("set")?.call1((keys,))?;
        let mut key_refs = Vec::new();
        for k in keys_set.try_iter()? {
            let k = k?;
            key_refs.push(resolve(&k)?.ok_or_else(|| PyKeyError::new_err(k.unbind()))?);
        }
        for k in extra.iter() {
            let (group, prefix) = group_and_prefix(&k)?;
            graph.push(GraphTask {
                hash: k.hash()? as i64,
                group,
                prefix,
                run_spec: None,
                data_producer: false,
                dependencies: Vec::new(),
                existing: None,
                in_dsk: false,
                key: k.unbind(),
            });
        }
        let generated = st
            .generate_taskstates(&key_refs, &graph)
            .map_err(to_pyerr)?;
        *locked(&self.graph_collisions) = generated
            .collisions
            .iter()
            .map(|t| st.ts(*t).key.clone_ref(py))
            .collect();
        for t in &generated.new {
            self.register(py, &st, *t)?;
        }
        self.apply_annotations(
            py,
            &mut st,
            &generated.new,
            annotations_by_type,
            global_annotations,
        )?;
        // priorities
        let mut prios = Vec::with_capacity(generated.touched.len());
        for t in &generated.touched {
            let key = st.ts(*t).key.bind(py).clone();
            let user = match user_priority {
                Some(up) if up.is_instance_of::<PyDict>() => match up.get_item(&key) {
                    Ok(v) => py_num(&v)?,
                    Err(_) => Num::Int(0),
                },
                Some(up) if !up.is_none() => py_num(up)?,
                _ => Num::Int(0),
            };
            let user = match &st.ts(*t).annotations {
                Some(a) => match a.bind(py).get_item(intern!(py, "priority")) {
                    Ok(v) => py_num(&v)?,
                    Err(_) => user,
                },
                None => user,
            };
            let internal = match ordered.get_item(&key)? {
                Some(v) => Some(v.extract::<i64>()?),
                None => None,
            };
            prios.push((user, internal));
        }
        let submitting = match submitting_task {
            Some(k) if k.is_truthy()? => Some(self.tid(py, k)?),
            _ => None,
        };
        // fifo_timeout arrives as a number or a string ("100 ms")
        let fifo_timeout_s: f64 = match fifo_timeout {
            Some(f) if !f.is_none() => py
                .import("dask.utils")?
                .getattr("parse_timedelta")?
                .call1((f,))?
                .extract()?,
            _ => 0.0,
        };
        st.set_priorities(
            &generated.touched,
            &prios,
            submitting.flatten(),
            submitting.is_some(),
            fifo_timeout_s,
            start,
        );
        let c = self.client_id(py, &mut st, client)?;
        let key_ids: Vec<TaskId> = key_refs
            .iter()
            .map(|r| match r {
                KeyRef::Graph(i) => generated.graph_ids[*i].expect("created"),
                KeyRef::Existing(t) => *t,
            })
            .collect();
        let mut out = Outbox::default();
        st.client_desires_keys(&key_ids, c, &mut out);
        if let Some(a) = actors {
            let list: Vec<TaskId> = if a.is_truthy()? && a.extract::<bool>().is_ok() {
                key_ids.clone()
            } else if a.is_none() || a.extract::<bool>().is_ok() {
                Vec::new()
            } else {
                a.try_iter()?
                    .map(|k| self.tid_required(py, &k?))
                    .collect::<PyResult<_>>()?
            };
            for t in list {
                st.ts_mut(t).actor = true;
            }
        }
        let recs = st.graph_recommendations(&key_ids, &generated.touched);
        let pending = PendingGraph {
            recs,
            out,
            stimulus_id: stimulus_id.clone().unbind(),
            touched: generated.touched,
            client: c,
        };
        if defer_transitions {
            let touched = PyList::new(py, pending.touched.iter().map(|t| st.ts(*t).key.bind(py)))?;
            *locked(&self.pending_graph) = Some(pending);
            return Ok(touched.into_any());
        }
        Ok(self.commit_graph(py, &mut st, pending)?.into_any())
    }

    /// Runs the transitions of a graph submitted with `defer_transitions=True` (after
    /// the spans extension and `update_graph` plugins saw the new tasks, as distributed
    /// orders it). Returns `(client_msgs, worker_msgs)`.
    fn update_graph_commit<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let pending = locked(&self.pending_graph)
            .take()
            .ok_or_else(|| PyValueError::new_err("no graph submission is pending"))?;
        self.commit_graph(py, &mut st, pending)
    }

    /// `Scheduler.handle_task_finished`: `(client_msgs, worker_msgs)`
    #[pyo3(signature = (key, worker, stimulus_id, *, run_id, nbytes = -1, r#type = None,
                        typename = None, startstops = None, metadata = None, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn handle_task_finished<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &str,
        stimulus_id: &Bound<'py, PyAny>,
        run_id: i64,
        nbytes: i64,
        r#type: Option<&Bound<'py, PyAny>>,
        typename: Option<String>,
        startstops: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
        _kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let r = self.task_finished(
            py,
            key,
            worker,
            stimulus_id,
            run_id,
            nbytes,
            r#type,
            typename,
            startstops,
            metadata,
            true,
        )?;
        Ok(r.1)
    }

    /// `SchedulerState.stimulus_task_finished`: `(recommendations, client_msgs,
    /// worker_msgs)`, the recommendations not yet carried out.
    #[pyo3(signature = (key, worker, stimulus_id, *, run_id, nbytes = -1, r#type = None,
                        typename = None, startstops = None, metadata = None, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn stimulus_task_finished<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &str,
        stimulus_id: &Bound<'py, PyAny>,
        run_id: i64,
        nbytes: i64,
        r#type: Option<&Bound<'py, PyAny>>,
        typename: Option<String>,
        startstops: Option<&Bound<'py, PyAny>>,
        metadata: Option<&Bound<'py, PyAny>>,
        _kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let r = self.task_finished(
            py,
            key,
            worker,
            stimulus_id,
            run_id,
            nbytes,
            r#type,
            typename,
            startstops,
            metadata,
            false,
        )?;
        recs_and_msgs_py(py, r)
    }

    /// `Scheduler.handle_task_erred`: `(client_msgs, worker_msgs)`
    #[pyo3(signature = (key, stimulus_id, *, worker, run_id, exception = None, traceback = None,
                        exception_text = None, traceback_text = None, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn handle_task_erred<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        worker: &str,
        run_id: i64,
        exception: Option<&Bound<'py, PyAny>>,
        traceback: Option<&Bound<'py, PyAny>>,
        exception_text: Option<&Bound<'py, PyAny>>,
        traceback_text: Option<&Bound<'py, PyAny>>,
        _kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let r = self.task_erred(
            py,
            key,
            stimulus_id,
            worker,
            run_id,
            [exception, traceback, exception_text, traceback_text],
            true,
        )?;
        Ok(r.1)
    }

    /// `SchedulerState.stimulus_task_erred`: `(recommendations, client_msgs,
    /// worker_msgs)`, the recommendations not yet carried out.
    #[pyo3(signature = (key, stimulus_id, *, worker, run_id, exception = None, traceback = None,
                        exception_text = None, traceback_text = None, **_kwargs))]
    #[allow(clippy::too_many_arguments)]
    fn stimulus_task_erred<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        worker: &str,
        run_id: i64,
        exception: Option<&Bound<'py, PyAny>>,
        traceback: Option<&Bound<'py, PyAny>>,
        exception_text: Option<&Bound<'py, PyAny>>,
        traceback_text: Option<&Bound<'py, PyAny>>,
        _kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let r = self.task_erred(
            py,
            key,
            stimulus_id,
            worker,
            run_id,
            [exception, traceback, exception_text, traceback_text],
            false,
        )?;
        recs_and_msgs_py(py, r)
    }

    /// `Scheduler.remove_worker`'s state changes and transitions.
    #[pyo3(signature = (address, *, stimulus_id, expected = false))]
    fn remove_worker<'py>(
        &self,
        py: Python<'py>,
        address: &str,
        stimulus_id: &Bound<'py, PyAny>,
        expected: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        let Some(w) = st.worker_id(address) else {
            return self.finish(py, &mut st, out);
        };
        let sid = stimulus_id.clone().unbind();
        let addr = address.to_owned();
        // del self.aliases[ws.name]
        let name = locked(&self.worker_meta)[w.idx()].1.clone_ref(py);
        self.aliases.bind(py).del_item(name.bind(py)).ok();
        // KilledWorker(task, last_worker=ws.clean(), allowed_failures), pickled
        let last_worker = self.clean_worker_state(py, &st, w)?;
        let killed = |key: &Py<PyAny>, allowed: i64| -> Py<PyAny> {
            Python::attach(|py| {
                (|| -> PyResult<Py<PyAny>> {
                    let kw = py
                        .import("distributed.scheduler")?
                        .getattr("KilledWorker")?;
                    let e = kw.call1((key.bind(py), last_worker.bind(py), allowed))?;
                    Ok(py.import("pickle")?.getattr("dumps")?.call1((e,))?.unbind())
                })()
                .unwrap_or_else(|_| py.None())
            })
        };
        let _ = &addr;
        st.remove_worker(w, expected, &killed, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.handle_worker_status_change`
    fn handle_worker_status_change<'py>(
        &self,
        py: Python<'py>,
        status: &str,
        worker: &str,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        let Some(w) = st.worker_id(worker) else {
            return self.finish(py, &mut st, out);
        };
        let status = WorkerStatus::parse(status)
            .ok_or_else(|| PyValueError::new_err(format!("unknown worker status {status:?}")))?;
        let sid = stimulus_id.clone().unbind();
        st.worker_status_change(w, status, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.client_releases_keys`
    #[pyo3(signature = (keys, client, stimulus_id))]
    fn client_releases_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let c = match self.clients.bind(py).get_item(client)? {
            Some(v) => ClientId(v.extract()?),
            None => return Err(PyKeyError::new_err(client.clone().unbind())),
        };
        let mut ids = Vec::new();
        for k in keys.try_iter()? {
            if let Some(t) = self.tid(py, &k?)? {
                ids.push(t);
            }
        }
        let mut recs = Recs::new();
        st.client_releases_keys_inner(&ids, c, &mut recs);
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        st.transitions_then_fill_queue(recs, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `SchedulerState.new_task`: a task without dependencies in its group and prefix
    /// (created when new). Only `released`: a task put straight into another state
    /// would lack what that state implies (replicas, a worker, a queue place).
    fn new_task(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        spec: &Bound<'_, PyAny>,
        state: &str,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if state != "released" {
            return Err(PyValueError::new_err(format!(
                "dask-rsched creates new tasks in state 'released' only, not {state:?}"
            )));
        }
        let (group, prefix) = group_and_prefix(key)?;
        let hash = key.hash()? as i64;
        let e = slf.borrow();
        let t = {
            let mut st = e.state.borrow_mut()?;
            if e.tid(py, key)?.is_some() {
                return Err(PyValueError::new_err(format!(
                    "task {} already exists",
                    key.repr()?
                )));
            }
            let (run_spec, producer) = if spec.is_none() {
                (None, false)
            } else {
                (Some(spec.clone().unbind()), data_producer(spec))
            };
            let t = st.new_task(
                key.clone().unbind(),
                hash,
                &group,
                &prefix,
                run_spec,
                producer,
                TaskStateState::Released,
            );
            e.register(py, &st, t)?;
            t
        };
        let st = e.state.borrow()?;
        handles::task_handle(py, &slf.clone().unbind(), &View::new(&e, &st), t)
    }

    /// The `TaskState` of `key`, or `None` (as `SchedulerState.tasks.get(key)`).
    fn get_task(slf: &Bound<'_, Self>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        match e.tid(py, key)? {
            Some(t) => {
                let st = e.state.borrow()?;
                handles::task_handle(py, &slf.clone().unbind(), &View::new(&e, &st), t)
            }
            None => Ok(py.None()),
        }
    }

    /// The `WorkerState` of `address`, or `None`.
    fn get_worker(slf: &Bound<'_, Self>, address: &str) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.state.borrow()?;
        match st.worker_id(address) {
            Some(w) => handles::worker_handle(py, &slf.clone().unbind(), &View::new(&e, &st), w),
            None => Ok(py.None()),
        }
    }

    /// The `ClientState` of `client`, or `None`.
    fn get_client(slf: &Bound<'_, Self>, client: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let e = slf.borrow();
        match e.clients.bind(py).get_item(client)? {
            Some(c) => {
                let st = e.state.borrow()?;
                let v = View::new(&e, &st);
                handles::client_handle(py, &slf.clone().unbind(), &v, ClientId(c.extract()?))
            }
            None => Ok(py.None()),
        }
    }

    /// `SchedulerState.transitions`: runs `recommendations` (key -> state name) to
    /// completion. Unknown keys are ignored as distributed ignores them.
    fn transitions<'py>(
        &self,
        py: Python<'py>,
        recommendations: &Bound<'py, PyDict>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut recs = Recs::new();
        for (k, v) in recommendations.iter() {
            let finish: String = v.extract()?;
            let finish = TaskStateState::parse(&finish)
                .ok_or_else(|| PyValueError::new_err(format!("unknown task state {finish:?}")))?;
            if let Some(t) = self.tid(py, &k)? {
                recs.insert(t, finish);
            }
        }
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        st.transitions_loop(recs, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `SchedulerState._transition(key, finish, stimulus_id, **kwargs)`: one transition
    /// with its arguments (an exception and cause for `erred`, as the no-worker timeouts
    /// pass them): `(recommendations, client_msgs, worker_msgs)`, the recommendations not
    /// carried out. Unknown keys are ignored.
    #[pyo3(signature = (key, finish, stimulus_id, *, exception = None, traceback = None,
                        exception_text = None, traceback_text = None, cause = None,
                        worker = None))]
    #[allow(clippy::too_many_arguments)]
    fn transition<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        finish: &str,
        stimulus_id: &Bound<'py, PyAny>,
        exception: Option<&Bound<'py, PyAny>>,
        traceback: Option<&Bound<'py, PyAny>>,
        exception_text: Option<&Bound<'py, PyAny>>,
        traceback_text: Option<&Bound<'py, PyAny>>,
        cause: Option<&Bound<'py, PyAny>>,
        worker: Option<String>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let finish = TaskStateState::parse(finish)
            .ok_or_else(|| PyValueError::new_err(format!("unknown task state {finish:?}")))?;
        let mut out = Outbox::default();
        let Some(t) = self.tid(py, key)? else {
            let r = self.finish_with(py, &mut st, Some(Recs::new()), out)?;
            return recs_and_msgs_py(py, r);
        };
        let un =
            |o: Option<&Bound<'py, PyAny>>| o.filter(|o| !o.is_none()).map(|o| o.clone().unbind());
        let args = if finish == TaskStateState::Erred && (exception.is_some() || cause.is_some()) {
            let cause = match cause {
                Some(c) if !c.is_none() => self.tid(py, c)?,
                _ => Some(t),
            };
            TransitionArgs::Erred {
                worker,
                cause,
                exception: un(exception),
                traceback: un(traceback),
                exception_text: un(exception_text),
                traceback_text: un(traceback_text),
            }
        } else {
            TransitionArgs::None
        };
        let sid = stimulus_id.clone().unbind();
        let recs = st
            .transition(t, finish, &sid, args, &mut out)
            .map_err(to_pyerr)?;
        let r = self.finish_with(py, &mut st, Some(recs), out)?;
        recs_and_msgs_py(py, r)
    }

    // ----- work stealing (`WorkStealing`, see core::stealing) ------------------------

    /// `Scheduler.add_resources` (`set_resources` handler): a KeyError for an unknown
    /// worker, as distributed's `self.workers[worker]`.
    #[pyo3(signature = (worker, resources = None))]
    fn add_resources(&self, worker: &str, resources: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let w = worker_of(&st, worker)?;
        st.add_resources(w, &resource_pairs(resources)?);
        Ok(())
    }

    /// `SchedulerState.WORKER_SATURATION`
    #[getter]
    fn worker_saturation(&self) -> PyResult<f64> {
        Ok(self.state.borrow()?.config.worker_saturation)
    }

    #[setter]
    fn set_worker_saturation(&self, value: f64) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        st.set_worker_saturation(positive("worker_saturation", value)?);
        Ok(())
    }

    /// `SchedulerState.transition_counter_max` (0 or False: off).
    #[getter]
    fn transition_counter_max(&self) -> PyResult<i64> {
        Ok(self.state.borrow()?.config.transition_counter_max)
    }

    #[setter]
    fn set_transition_counter_max(&self, value: i64) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        if value < 0 {
            return Err(PyValueError::new_err(format!(
                "transition_counter_max must be >= 0, got {value}"
            )));
        }
        st.config.transition_counter_max = value;
        Ok(())
    }

    /// `(key, start, finish)` of the transitions that failed since the last call,
    /// innermost first (distributed logs each `_transition` an error passes through).
    fn take_failed_transitions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let mut st = self.state.borrow_mut()?;
        let failed = std::mem::take(&mut st.failed_transitions);
        PyList::new(
            py,
            failed.into_iter().map(|(t, start, finish)| {
                (st.ts(t).key.clone_ref(py), start.as_str(), finish.as_str())
            }),
        )
    }

    /// Keys of the last `update_graph` whose submitted run_spec has other dependencies
    /// than the existing task's, in the order found (`_generate_taskstates`).
    fn take_graph_collisions<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, std::mem::take(&mut *locked(&self.graph_collisions)))
    }

    /// `SchedulerState.bandwidth`: heartbeats update it (an exponential average).
    #[getter]
    fn bandwidth(&self) -> PyResult<f64> {
        Ok(self.state.borrow()?.config.bandwidth)
    }

    #[setter]
    fn set_bandwidth(&self, value: f64) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        st.config.bandwidth = positive("bandwidth", value)?;
        Ok(())
    }

    #[getter]
    fn work_stealing(&self) -> PyResult<bool> {
        Ok(self.state.borrow()?.stealing.enabled)
    }

    /// `WorkStealing.balance`: the steal requests to send.
    fn steal_balance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        st.steal_balance(&mut out);
        self.finish(py, &mut st, out)
    }

    /// `WorkStealing.move_task_confirm` (the `steal-response` handler).
    #[pyo3(signature = (key, state, stimulus_id, worker = None))]
    fn steal_response<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        state: Option<&str>,
        stimulus_id: &Bound<'py, PyAny>,
        worker: Option<&str>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid(py, key)?;
        let request_id: String = stimulus_id.extract()?;
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        let r = st.move_task_confirm(t, state, &request_id, worker, &sid, &mut out);
        let msgs = self.finish(py, &mut st, out)?;
        r.map_err(to_pyerr)?;
        Ok(msgs)
    }

    /// `WorkStealing.move_task_request`: `(stimulus_id or "in-flight", messages)`.
    fn steal_request<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        victim: &str,
        thief: &str,
    ) -> PyResult<(String, Bound<'py, PyTuple>)> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid_required(py, key)?;
        let (v, th) = (worker_of(&st, victim)?, worker_of(&st, thief)?);
        let mut out = Outbox::default();
        let sid = st.move_task_request(t, v, th, &mut out);
        Ok((sid, self.finish(py, &mut st, out)?))
    }

    /// `WorkStealing.put_key_in_stealable` / `remove_key_from_stealable`.
    fn steal_put_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid_required(py, key)?;
        st.put_key_in_stealable(t)
            .map_err(|_| PyAssertionError::new_err("task is not stealable"))
    }

    fn steal_remove_key(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid_required(py, key)?;
        st.remove_key_from_stealable(t);
        Ok(())
    }

    /// `SchedulerState.check_idle_saturated(ws, occ)` called from outside (tests and
    /// extensions re-classify workers; the order of `idle` and `saturated` follows).
    #[pyo3(signature = (worker, occ = -1.0))]
    fn check_idle_saturated(&self, worker: &str, occ: f64) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let w = worker_of(&st, worker)?;
        st.check_idle_saturated_occ(w, Some(occ));
        Ok(())
    }

    /// `WorkStealing.steal_time_ratio`: `(cost_multiplier, level)` or `(None, None)`.
    fn steal_time_ratio(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<(Option<f64>, Option<usize>)> {
        let st = self.state.borrow()?;
        let t = self.tid_required(py, key)?;
        match st.steal_time_ratio(t) {
            Ok(Some((m, l))) => Ok((Some(m), Some(l))),
            Ok(None) => Ok((None, None)),
            Err(_) => Err(PyAssertionError::new_err(
                "a task without compute time must be long-running",
            )),
        }
    }

    /// `WorkStealing.restart`
    fn steal_restart(&self) -> PyResult<()> {
        self.state.borrow_mut()?.steal_restart();
        Ok(())
    }

    /// Drains the stealing log: the messages for `log_event("stealing", ...)`.
    fn take_steal_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.steal_events_py(py, &mut *self.state.borrow_mut()?)
    }

    /// The stealing containers (keys and addresses), for the Python face.
    #[pyo3(signature = (only = None))]
    fn stealing_state<'py>(
        &self,
        py: Python<'py>,
        only: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        self.stealing_state_py(py, only)
    }

    /// `Scheduler.stimulus_queue_slots_maybe_opened`
    fn stimulus_queue_slots_maybe_opened<'py>(
        &self,
        py: Python<'py>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        st.stimulus_queue_slots_maybe_opened(&mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.client_desires_keys` (unknown keys are skipped); reports keys already in
    /// memory or erred.
    fn client_desires_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let c = self.client_id(py, &mut st, client)?;
        let mut ids = Vec::new();
        for k in keys.try_iter()? {
            if let Some(t) = self.tid(py, &k?)? {
                ids.push(t);
            }
        }
        let mut out = Outbox::default();
        st.client_desires_keys(&ids, c, &mut out);
        self.finish(py, &mut st, out)
    }

    /// Keeps forgotten tasks until `release_forgotten`, with the edges they had (what
    /// the engine-backed Scheduler runs with: plugins read them as distributed's).
    fn observe_transitions(&self, enabled: bool) -> PyResult<()> {
        self.state.borrow_mut()?.observe = enabled;
        self.hold_forgotten.store(enabled, Ordering::Relaxed);
        Ok(())
    }

    /// Calls `hook(key, start, finish, stimulus_id)` right after every transition, before
    /// the next, as `_transition` calls `SchedulerPlugin.transition`; the hook can read
    /// and change the scheduler. `finishes` keeps only transitions into those states,
    /// `key_prefix` only those of str keys starting with it. `None` removes the hook.
    #[pyo3(signature = (hook, finishes = None, key_prefix = None))]
    fn set_transition_hook(
        &self,
        py: Python<'_>,
        hook: Option<Bound<'_, PyAny>>,
        finishes: Option<Vec<String>>,
        key_prefix: Option<String>,
    ) -> PyResult<()> {
        let observer = match hook {
            None => None,
            Some(hook) => {
                let finishes = match finishes {
                    None => u32::MAX,
                    Some(names) => names.iter().try_fold(0u32, |mask, name| {
                        let s = TaskStateState::parse(name).ok_or_else(|| {
                            PyValueError::new_err(format!("unknown task state {name:?}"))
                        })?;
                        Ok::<_, PyErr>(mask | (1 << s.index()))
                    })?,
                };
                let data = (hook, self.keys.clone_ref(py), key_prefix);
                Some(TransitionObserver {
                    notify: notify_transition,
                    finishes,
                    data: data.into_pyobject(py)?.into_any().unbind(),
                })
            }
        };
        self.state.borrow_mut()?.observer = observer;
        Ok(())
    }

    /// `SchedulerState.erred_tasks`: distributed's `ErredTask` records, newest first.
    #[getter]
    fn erred_tasks<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let st = self.state.borrow()?;
        let erred_task = py.import("distributed.scheduler")?.getattr("ErredTask")?;
        let items = PyList::empty(py);
        for r in &st.erred_tasks {
            let text = |o: &Option<Py<PyAny>>| -> Py<PyAny> {
                o.as_ref().map_or_else(
                    || PyString::new(py, "").into_any().unbind(),
                    |o| o.clone_ref(py),
                )
            };
            items.append(erred_task.call1((
                r.key.bind(py),
                r.timestamp,
                PySet::new(py, &r.erred_on)?,
                text(&r.exception_text),
                text(&r.traceback_text),
            ))?)?;
        }
        let maxlen = Some(st.config.erred_tasks_maxlen).filter(|m| *m != usize::MAX);
        py.import("collections")?
            .getattr("deque")?
            .call1((items, maxlen))
    }

    /// Frees the tasks forgotten by the calls since the last release, and drops their
    /// keys from `task_metadata` (`Scheduler.task_metadata`, as `_remove_key` does).
    #[pyo3(signature = (task_metadata = None))]
    fn release_forgotten(
        &self,
        py: Python<'_>,
        task_metadata: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        if st.is_lent() {
            // a stimulus from a plugin hook: the batch it interrupted frees them
            return Ok(());
        }
        if let Some(md) = task_metadata.filter(|md| !md.is_empty()) {
            for t in &st.pending_free {
                let key = st.ts(*t).key.bind(py);
                if md.contains(key)? {
                    md.del_item(key)?;
                }
            }
        }
        self.free_forgotten(py, &mut st)
    }

    /// `len(SchedulerState.transition_log)`
    fn transition_log_len(&self) -> PyResult<usize> {
        Ok(self.state.borrow()?.transition_log.len())
    }

    /// `SchedulerState.transition_log.clear()`
    fn clear_transition_log(&self) -> PyResult<()> {
        self.state.borrow_mut()?.transition_log.clear();
        Ok(())
    }

    /// `SchedulerState.remove_replica` (the Active Memory Manager drops extra copies).
    fn remove_replica(&self, py: Python<'_>, key: &Bound<'_, PyAny>, worker: &str) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid_required(py, key)?;
        let w = worker_of(&st, worker)?;
        if st.has_replica(t, w) {
            st.remove_replica(t, w);
        }
        Ok(())
    }

    /// `SchedulerState.add_replica` (replicate and rebalance copy data between workers).
    fn add_replica(&self, py: Python<'_>, key: &Bound<'_, PyAny>, worker: &str) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid_required(py, key)?;
        let w = worker_of(&st, worker)?;
        if !st.has_replica(t, w) {
            st.add_replica(t, w);
        }
        Ok(())
    }

    /// `SchedulerState.is_idle`: every task group is done (nothing waiting, queued,
    /// processing or without a worker).
    #[getter]
    fn is_idle(&self) -> PyResult<bool> {
        let st = self.state.borrow()?;
        use TaskStateState as S;
        // A prefix counts the states of its live groups, so "every group done" is
        // "every prefix done": O(prefixes), where the groups grow with every submission
        // (distributed's spans keep them all; a futures loop made this O(submissions)).
        Ok(st.prefixes.iter().all(|p| {
            [S::Waiting, S::Queued, S::Processing, S::NoWorker]
                .iter()
                .all(|s| p.states[s.index()] == 0)
        }))
    }

    /// `TaskPrefix.add_exec_time` for every task a worker's heartbeat reports executing
    /// (`{key: seconds so far}`); unknown keys are skipped.
    fn add_exec_times(&self, py: Python<'_>, executing: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        for (k, v) in executing.iter() {
            let Some(t) = self.tid(py, &k)? else {
                continue;
            };
            let duration: f64 = v.extract()?;
            let p = st.ts(t).prefix;
            let tp = &mut st.prefixes[p.idx()];
            tp.max_exec_time = tp.max_exec_time.max(duration);
            if duration > 2.0 * tp.duration_average {
                tp.duration_average = -1.0;
            }
        }
        Ok(())
    }

    /// `SchedulerState.task_prefixes`: name -> TaskPrefix, every prefix seen (distributed
    /// keeps them until restart).
    fn task_prefixes<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        let out = PyDict::new(py);
        let engine = slf.clone().unbind();
        for (i, p) in e.state.prefixes.iter().enumerate() {
            let h = handles::prefix_handle(py, &engine, &e, PrefixId(i as u32))?;
            out.set_item(p.name.as_str(), h)?;
        }
        Ok(out)
    }

    /// `SchedulerState.task_groups`: name -> TaskGroup, the groups still alive.
    fn task_groups<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyDict>> {
        let py = slf.py();
        let e = slf.borrow();
        let st = e.state.borrow()?;
        let e = View::new(&e, &st);
        let out = PyDict::new(py);
        let engine = slf.clone().unbind();
        for g in e.state.alive_groups.keys() {
            let h = handles::group_handle(py, &engine, &e, g)?;
            out.set_item(group_name(py, &e.state.groups[g.idx()].name)?, h)?;
        }
        Ok(out)
    }

    /// Addresses of the workers in `Scheduler.workers` order (sorted).
    fn worker_addresses(&self) -> PyResult<Vec<String>> {
        let st = self.state.borrow()?;
        Ok(st
            .workers_sorted
            .iter()
            .map(|w| st.ws(*w).address.clone())
            .collect())
    }

    /// `iter(SchedulerState.tasks)`: a live iterator over the task keys in creation
    /// order, without copying them; like a dict's, it fails if tasks are added or
    /// forgotten during the iteration.
    fn iter_task_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        self.keys.bind(py).as_any().try_iter()
    }

    /// `iter(SchedulerState.tasks.items())` (`values=False`) or `.values()`
    /// (`values=True`): live, in creation order, nothing copied.
    #[pyo3(signature = (values=false))]
    fn iter_task_items(slf: &Bound<'_, Self>, values: bool) -> PyResult<TaskItemsIter> {
        let py = slf.py();
        let inner = slf
            .borrow()
            .keys
            .bind(py)
            .call_method0(intern!(py, "items"))?
            .try_iter()?;
        Ok(TaskItemsIter {
            engine: slf.clone().unbind(),
            inner: inner.unbind(),
            values,
        })
    }

    fn worker_count(&self) -> PyResult<usize> {
        Ok(self.state.borrow()?.workers_sorted.len())
    }

    /// The keys of the live tasks, in creation order (like `SchedulerState.tasks`).
    fn task_keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.keys
            .bind(py)
            .keys()
            .into_any()
            .cast_into::<PyList>()
            .map_err(Into::into)
    }

    /// `transition_log` as distributed's `Transition` tuples.
    #[getter]
    fn transition_log<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let st = self.state.borrow()?;
        let transition = py.import("distributed.scheduler")?.getattr("Transition")?;
        let out = PyList::empty(py);
        for entry in &st.transition_log {
            out.append(transition_py(&transition, entry)?)?;
        }
        Ok(out)
    }

    /// `transition_log[index]` (negative counts from the end) without building the
    /// rest of the log.
    fn transition_log_entry<'py>(
        &self,
        py: Python<'py>,
        index: isize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let st = self.state.borrow()?;
        let len = st.transition_log.len() as isize;
        let i = if index < 0 { index + len } else { index };
        let entry = (0..len)
            .contains(&i)
            .then(|| &st.transition_log[i as usize])
            .ok_or_else(|| pyo3::exceptions::PyIndexError::new_err("deque index out of range"))?;
        let transition = py.import("distributed.scheduler")?.getattr("Transition")?;
        transition_py(&transition, entry)
    }

    /// `SchedulerState.story(*keys_or_tasks_or_stimuli)`
    #[pyo3(signature = (*keys_or_tasks_or_stimuli))]
    fn story<'py>(
        &self,
        py: Python<'py>,
        keys_or_tasks_or_stimuli: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let set = pyo3::types::PySet::empty(py)?;
        for k in keys_or_tasks_or_stimuli.iter() {
            match k.cast::<TaskStateHandle>() {
                Ok(h) => set.add(h.get().key.bind(py))?,
                Err(_) => set.add(k)?,
            }
        }
        py.import("distributed._stories")?
            .getattr("scheduler_story")?
            .call1((set, self.transition_log(py)?))
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // the transition hook (a bound method of the Scheduler that owns the engine);
        // while a stimulus has the state, it is not visited (the cycle survives this
        // collection)
        if let Ok(st) = self.state.borrow() {
            if let Some(observer) = &st.observer {
                visit.call(&observer.data)?;
            }
        }
        // try_lock: a collection triggered while a cache is locked must not deadlock
        if let Some(c) = self.task_handles.try_lock() {
            for h in c.values() {
                visit.call(h)?;
            }
        }
        if let Some(c) = self.worker_handles.try_lock() {
            for h in c.values() {
                visit.call(h)?;
            }
        }
        if let Some(c) = self.client_handles.try_lock() {
            for h in c.values() {
                visit.call(h)?;
            }
        }
        Ok(())
    }

    fn __clear__(&mut self) {
        self.state.get_mut().observer = None;
        self.task_handles.lock().clear();
        self.worker_handles.lock().clear();
        self.client_handles.lock().clear();
    }

    /// Registers a client (as `Scheduler.add_client` does for the state).
    fn add_client(&self, py: Python<'_>, client: &Bound<'_, PyAny>) -> PyResult<()> {
        self.client_id(py, &mut *self.state.borrow_mut()?, client)?;
        Ok(())
    }

    /// Forgets a client (`del Scheduler.clients[client]`, after `remove_client` released
    /// its keys): broadcasts no longer reach it and a client reconnecting under the same
    /// id starts afresh. Raises `ValueError` while it still wants keys.
    fn remove_client(&self, py: Python<'_>, client: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.state.borrow_mut()?;
        let Some(v) = self.clients.bind(py).get_item(client)? else {
            return Ok(());
        };
        if !st.remove_client(ClientId(v.extract()?)) {
            return Err(PyValueError::new_err(format!(
                "client {client} still wants keys; release them first"
            )));
        }
        self.clients.bind(py).del_item(client)
    }

    /// `Scheduler.handle_long_running`
    #[pyo3(signature = (key, worker, run_id, compute_duration, stimulus_id))]
    fn handle_long_running<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &str,
        run_id: i64,
        compute_duration: Option<f64>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid(py, key)?;
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        st.handle_long_running(t, worker, run_id, compute_duration, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.stimulus_retry`: returns `(seen keys, client_msgs, worker_msgs)`.
    fn stimulus_retry<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let ids = keys
            .try_iter()?
            .map(|k| self.tid_required(py, &k?))
            .collect::<PyResult<Vec<_>>>()?;
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        let seen = st.stimulus_retry(&ids, &mut out, &sid).map_err(to_pyerr)?;
        let seen = PyTuple::new(py, seen.iter().map(|t| st.ts(*t).key.bind(py)))?;
        let msgs = self.finish(py, &mut st, out)?;
        PyTuple::new(py, [seen.into_any(), msgs.get_item(0)?, msgs.get_item(1)?])
    }

    /// `Scheduler.stimulus_cancel`: returns `(client_msgs, worker_msgs)`, including the
    /// `cancelled-keys` report to every client. Appends to `log`, in distributed's order,
    /// what it logs: `("request", n)` for each recursive request on dependents and
    /// `("cancel", key)` for each key cancelled.
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (keys, client, force, reason, msg, stimulus_id, log = None))]
    fn stimulus_cancel<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        force: bool,
        reason: &Bound<'py, PyAny>,
        msg: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        log: Option<&Bound<'py, PyList>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let cm = PyDict::new(py);
        let wm = PyDict::new(py);
        let scratch = PyList::empty(py);
        let log = log.unwrap_or(&scratch);
        self.cancel_inner(
            py,
            &mut *self.state.borrow_mut()?,
            keys,
            client,
            force,
            reason,
            msg,
            stimulus_id,
            &cm,
            &wm,
            log,
        )?;
        PyTuple::new(py, [cm.into_any(), wm.into_any()])
    }

    /// `Scheduler.update_data` (scatter): `who_has` maps key -> worker addresses.
    #[pyo3(signature = (*, who_has, nbytes, client = None))]
    fn update_data<'py>(
        &self,
        py: Python<'py>,
        who_has: &Bound<'py, PyDict>,
        nbytes: &Bound<'py, PyDict>,
        client: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let mut items = Vec::with_capacity(who_has.len());
        // resolve everything first: an unknown worker leaves the state untouched
        for (k, workers) in who_has.iter() {
            let workers = workers
                .try_iter()?
                .map(|w| worker_of(&st, &w?.extract::<String>()?))
                .collect::<PyResult<Vec<_>>>()?;
            let (group, prefix) = group_and_prefix(&k)?;
            items.push(crate::core::stimuli::ScatteredKey {
                existing: self.tid(py, &k)?,
                hash: k.hash()? as i64,
                group,
                prefix,
                workers,
                nbytes: match nbytes.get_item(&k)? {
                    Some(n) => n.extract()?,
                    None => -1,
                },
                key: k.unbind(),
            });
        }
        let c = match client {
            Some(c) if !c.is_none() => Some(self.client_id(py, &mut st, c)?),
            _ => None,
        };
        let mut out = Outbox::default();
        let ids = st.update_data(items, c, &mut out);
        for t in ids {
            self.register(py, &st, t)?;
        }
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.release_worker_data`
    fn release_worker_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &str,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let t = self.tid(py, key)?;
        let mut out = Outbox::default();
        let sid = stimulus_id.clone().unbind();
        st.release_worker_data(t, worker, &mut out, &sid)
            .map_err(to_pyerr)?;
        self.finish(py, &mut st, out)
    }

    /// `Scheduler.add_keys`: returns `(status, worker_msgs)`; keys the scheduler does not
    /// hold in memory are answered with `remove-replicas`.
    #[pyo3(signature = (worker, keys, stimulus_id = None))]
    fn add_keys<'py>(
        &self,
        py: Python<'py>,
        worker: &str,
        keys: &Bound<'py, PyAny>,
        stimulus_id: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut st = self.state.borrow_mut()?;
        let wm = PyDict::new(py);
        let Some(w) = st.worker_id(worker) else {
            return PyTuple::new(
                py,
                ["not found".into_pyobject(py)?.into_any(), wm.into_any()],
            );
        };
        let keys: Vec<Bound<'py, PyAny>> = keys.try_iter()?.collect::<PyResult<_>>()?;
        let ids = keys
            .iter()
            .map(|k| self.tid(py, k))
            .collect::<PyResult<Vec<_>>>()?;
        let redundant = st.add_keys(w, &ids);
        if !redundant.is_empty() {
            let msg = PyDict::new(py);
            msg.set_item(intern!(py, "op"), intern!(py, "remove-replicas"))?;
            msg.set_item(
                intern!(py, "keys"),
                PyList::new(py, redundant.iter().map(|i| &keys[*i]))?,
            )?;
            match stimulus_id {
                Some(s) if !s.is_none() => msg.set_item(intern!(py, "stimulus_id"), s)?,
                _ => msg.set_item(
                    intern!(py, "stimulus_id"),
                    format!("redundant-replicas-{}", crate::core::state::now()),
                )?,
            }
            wm.set_item(worker, PyList::new(py, [msg])?)?;
        }
        PyTuple::new(py, ["OK".into_pyobject(py)?.into_any(), wm.into_any()])
    }

    /// `SchedulerState.validate_state`, natively.
    fn validate_state(&self) -> PyResult<()> {
        let st = self.state.borrow()?;
        st.validate_state().map_err(to_pyerr)
    }

    #[getter]
    fn transition_counter(&self) -> PyResult<i64> {
        Ok(self.state.borrow()?.transition_counter)
    }

    #[getter]
    fn n_tasks(&self) -> PyResult<usize> {
        Ok(self.state.borrow()?.n_live_tasks)
    }

    /// Slots in the group arena (live groups, dead ones still referred to, free slots):
    /// stays bounded while groups come and go.
    #[getter]
    fn n_group_slots(&self) -> PyResult<usize> {
        Ok(self.state.borrow()?.groups.len())
    }

    fn __len__(&self) -> PyResult<usize> {
        Ok(self.state.borrow()?.n_live_tasks)
    }

    /// The state string of a task, or "forgotten" for unknown keys.
    fn task_state(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<&'static str> {
        let st = self.state.borrow()?;
        Ok(match self.tid(py, key)? {
            Some(t) => st.ts(t).state.as_str(),
            None => "forgotten",
        })
    }

    /// Per-task comparable state: key -> dict of distributed's attribute names.
    fn snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state.borrow()?;
        let s = &st;
        let out = PyDict::new(py);
        let keyset = |set: &Option<crate::core::entities::TaskSet>| -> PyResult<Bound<'py, PyAny>> {
            match set {
                None => Ok(py.None().into_bound(py)),
                Some(set) => {
                    Ok(PyList::new(py, set.iter().map(|d| s.ts(d).key.bind(py)))?.into_any())
                }
            }
        };
        for (k, v) in self.keys.bind(py).iter() {
            let t = TaskId(v.extract()?);
            let ts = s.ts(t);
            let d = PyDict::new(py);
            d.set_item("state", ts.state.as_str())?;
            d.set_item(
                "processing_on",
                ts.processing_on.map(|w| s.ws(w).address.clone()),
            )?;
            d.set_item(
                "who_has",
                ts.who_has.as_ref().map(|h| {
                    h.iter()
                        .map(|w| s.ws(w).address.clone())
                        .collect::<Vec<_>>()
                }),
            )?;
            d.set_item("waiting_on", keyset(&ts.waiting_on)?)?;
            d.set_item("waiters", keyset(&ts.waiters)?)?;
            d.set_item("dependencies", keyset(&Some(ts.dependencies.clone()))?)?;
            d.set_item("dependents", keyset(&Some(ts.dependents.clone()))?)?;
            d.set_item(
                "priority",
                match &ts.priority {
                    Some(p) => priority_to_py(py, p)?.into_any(),
                    None => py.None().into_bound(py),
                },
            )?;
            d.set_item("retries", ts.retries)?;
            d.set_item("host_restrictions", ts.host_restrictions.clone())?;
            d.set_item("worker_restrictions", ts.worker_restrictions.clone())?;
            d.set_item(
                "resource_restrictions",
                ts.resource_restrictions.as_ref().map(|r| r.to_vec()),
            )?;
            d.set_item("loose_restrictions", ts.loose_restrictions)?;
            d.set_item("nbytes", ts.nbytes)?;
            d.set_item("suspicious", ts.suspicious)?;
            d.set_item(
                "exception_blame",
                ts.exception_blame.map(|b| s.ts(b).key.clone_ref(py)),
            )?;
            d.set_item(
                "who_wants",
                ts.who_wants.as_ref().map(|c| {
                    c.iter()
                        .map(|c| s.clients[c.idx()].client_key.clone_ref(py))
                        .collect::<Vec<_>>()
                }),
            )?;
            out.set_item(k, d)?;
        }
        Ok(out)
    }

    /// Per-worker comparable state.
    fn worker_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state.borrow()?;
        let s = &st;
        let out = PyDict::new(py);
        for &w in &s.workers_sorted {
            let ws = s.ws(w);
            let d = PyDict::new(py);
            d.set_item(
                "processing",
                PyList::new(py, ws.processing.iter().map(|t| s.ts(t).key.bind(py)))?,
            )?;
            d.set_item(
                "has_what",
                PyList::new(py, ws.has_what.keys().map(|t| s.ts(t).key.bind(py)))?,
            )?;
            d.set_item("nbytes", ws.nbytes)?;
            d.set_item("occupancy", s.occupancy(w))?;
            d.set_item("status", ws.status.as_str())?;
            out.set_item(ws.address.as_str(), d)?;
        }
        Ok(out)
    }

    /// Scheduler-wide containers, as lists of keys / addresses in iteration order.
    #[pyo3(signature = (only = None))]
    fn containers<'py>(&self, py: Python<'py>, only: Option<&str>) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state.borrow()?;
        let s = &st;
        let d = PyDict::new(py);
        let addr = |w: WorkerId| s.ws(w).address.clone();
        // `only`: build just that container (sorting `queued` is O(n log n))
        let want =
            |k: &str| only.is_none_or(|o| o == k || (o == "unrunnable" && k == "unrunnable_since"));
        if want("idle") {
            d.set_item("idle", s.idle.iter().map(|w| addr(*w)).collect::<Vec<_>>())?;
        }
        if want("running") {
            d.set_item("running", s.running.iter().map(addr).collect::<Vec<_>>())?;
        }
        if want("saturated") {
            d.set_item(
                "saturated",
                s.saturated.iter().map(addr).collect::<Vec<_>>(),
            )?;
        }
        if want("idle_task_count") {
            d.set_item(
                "idle_task_count",
                s.idle_task_count.iter().map(addr).collect::<Vec<_>>(),
            )?;
        }
        if want("queued") {
            d.set_item(
                "queued",
                PyList::new(
                    py,
                    s.queued.sorted().into_iter().map(|t| s.ts(t).key.bind(py)),
                )?,
            )?;
        }
        if want("unrunnable") {
            d.set_item(
                "unrunnable",
                PyList::new(py, s.unrunnable.keys().map(|t| s.ts(t).key.bind(py)))?,
            )?;
        }
        if want("unrunnable_since") {
            // monotonic() when each task became unrunnable (the no-workers timeout reads it)
            d.set_item(
                "unrunnable_since",
                s.unrunnable.iter().map(|(_, v)| *v).collect::<Vec<f64>>(),
            )?;
        }
        if want("replicated_tasks") {
            d.set_item(
                "replicated_tasks",
                PyList::new(py, s.replicated_tasks.iter().map(|t| s.ts(t).key.bind(py)))?,
            )?;
        }
        if want("total_nthreads") {
            d.set_item("total_nthreads", s.total_nthreads)?;
        }
        if want("n_tasks") {
            d.set_item("n_tasks", s.n_tasks)?;
        }
        if want("total_occupancy") {
            d.set_item("total_occupancy", s.total_occupancy())?;
        }
        Ok(d)
    }
}

/// Iterator behind `TasksView.items()`/`.values()`: walks the engine's key index and
/// turns each task id into its canonical `TaskState` handle.
#[pyclass(frozen, module = "dask_rsched._core")]
pub struct TaskItemsIter {
    engine: Py<Engine>,
    inner: Py<PyIterator>,
    values: bool,
}

#[pymethods]
impl TaskItemsIter {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        let Some(item) = self.inner.bind(py).clone().next() else {
            return Ok(None);
        };
        let item = item?;
        let (key, tid): (Bound<'_, PyAny>, u32) = item.extract()?;
        let e = self.engine.bind(py).borrow();
        let st = e.state.borrow()?;
        let ts = handles::task_handle(py, &self.engine, &View::new(&e, &st), TaskId(tid))?;
        if self.values {
            Ok(Some(ts))
        } else {
            Ok(Some(
                PyTuple::new(py, [key.unbind(), ts])?.into_any().unbind(),
            ))
        }
    }
}
