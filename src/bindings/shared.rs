//! `Engine`'s data: the core state behind its borrow flag and what Python needs around it
//! (the key index, clients, canonical handles). Its methods live in `engine/`; the
//! handles (`handles/`) read the state through a `View`.

use crate::bindings::key_index::dict_key_eq;
use crate::cell::{Busy, StateCell, StateMut, StateRef};
use crate::core::state::SchedulerState;
use crate::core::types::*;
use hashbrown::HashMap;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

pub(crate) type State = SchedulerState<Py<PyAny>>;

#[pyclass(module = "dask_rsched._core")]
pub struct Engine {
    /// Every stimulus borrows it exclusively; a plugin hook between two transitions
    /// reads (and writes) it through the lend (see `cell`).
    pub(crate) state: StateCell<State>,
    /// client key -> client id (`Scheduler.clients`' keys)
    pub(crate) clients: Py<PyDict>,
    pub(crate) task_handles: HandleCache<TaskId>,
    pub(crate) worker_handles: HandleCache<WorkerId>,
    pub(crate) client_handles: HandleCache<ClientId>,
    pub(crate) group_handles: HandleCache<GroupId>,
    pub(crate) prefix_handles: HandleCache<PrefixId>,
    /// (server_id, name) of every worker ever added, by id
    pub(crate) worker_meta: Mutex<Vec<(Py<PyAny>, Py<PyAny>)>>,
    /// `Scheduler.aliases` (the scheduler's own dict when it runs on the engine): worker
    /// name (any hashable) -> address, for restrictions naming workers.
    pub(crate) aliases: Py<PyDict>,
    /// `Scheduler.task_metadata`: forgotten keys leave it, as `_remove_key` does.
    pub(crate) task_metadata: Py<PyDict>,
    /// For the groups `key_split_group` names with another object than a str (the core
    /// names groups with strings): name -> encoded name and encoded name -> name.
    pub(crate) other_group_names: Py<PyDict>,
    /// `key_split` of tuple keys' first elements (`naming`).
    pub(crate) prefix_of_first: Py<PyDict>,
    /// Top-level stimuli run, and the nanoseconds they took (plugin hooks included).
    pub(crate) stimuli: AtomicU64,
    pub(crate) stimulus_ns: AtomicU64,
}

/// A lock whose holder never runs Python (poisoning cannot leave it half-updated).
pub(crate) fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The canonical handle per live entity. Only touched with the GIL held (a Mutex makes
/// the engine `Sync`, so Python threads may read the scheduler as they do distributed's).
pub(crate) struct HandleCache<K>(Mutex<HashMap<K, Py<PyAny>>>);

impl<K> Default for HandleCache<K> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<K: Eq + std::hash::Hash> HandleCache<K> {
    /// The cached handle of `k`, or the one `make` creates (outside the lock: creating
    /// a Python object may run arbitrary code).
    pub(crate) fn get_or_create(
        &self,
        py: Python<'_>,
        k: K,
        make: impl FnOnce() -> PyResult<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        if let Some(h) = self.lock().get(&k) {
            return Ok(h.clone_ref(py));
        }
        let h = make()?;
        self.lock().insert(k, h.clone_ref(py));
        Ok(h)
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Py<PyAny>>> {
        locked(&self.0)
    }

    /// Visits the cached handles for the garbage collector; skipped while another holder
    /// has the cache (a collection triggered then must not deadlock).
    pub(crate) fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        let cache = match self.0.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        for h in cache.values() {
            visit.call(h)?;
        }
        Ok(())
    }
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
}

/// How long a stimulus or read waits for another thread's borrow of the state to end
/// (readers hold it only while they copy out of it) before it gives up as busy.
const WAIT_FOR_OTHER_THREADS: std::time::Duration = std::time::Duration::from_secs(10);

/// A waiter that lets other threads run (the GIL released) between attempts.
fn waiter() -> impl FnMut() -> bool {
    let deadline = std::time::Instant::now() + WAIT_FOR_OTHER_THREADS;
    move || {
        Python::attach(|py| py.detach(|| std::thread::sleep(std::time::Duration::from_micros(50))));
        std::time::Instant::now() < deadline
    }
}

impl Engine {
    /// The state, shared; waits while another thread has it exclusively.
    pub(crate) fn read(&self) -> Result<StateRef<'_, State>, Busy> {
        self.state.borrow_waiting(waiter())
    }

    /// The state, exclusively (a stimulus); waits while another thread reads it. The
    /// scheduler's own stimuli so never fail because a thread reads the scheduler.
    pub(crate) fn write(&self) -> Result<StateMut<'_, State>, Busy> {
        self.state.borrow_mut_waiting(waiter())
    }

    /// The live task of `key` (`SchedulerState.tasks.get(key)`), keys compared as a
    /// dict compares them: equal hash, then identity or `==`.
    pub(crate) fn tid(&self, st: &State, key: &Bound<'_, PyAny>) -> PyResult<Option<TaskId>> {
        self.tid_hashed(st, key, key.hash()? as i64)
    }

    /// `tid` of a key whose hash is known.
    pub(crate) fn tid_hashed(
        &self,
        st: &State,
        key: &Bound<'_, PyAny>,
        h: i64,
    ) -> PyResult<Option<TaskId>> {
        let mut err = None;
        let found = st.find_task(h, |k| dict_key_eq(k.bind(key.py()), key, &mut err));
        match err {
            Some(e) => Err(e),
            None => Ok(found),
        }
    }

    /// The task of `key`; a `KeyError` if there is none.
    pub(crate) fn tid_required(&self, st: &State, key: &Bound<'_, PyAny>) -> PyResult<TaskId> {
        self.tid(st, key)?
            .ok_or_else(|| PyKeyError::new_err(key.clone().unbind()))
    }

    /// The known client `client`, if any.
    pub(crate) fn known_client(
        &self,
        py: Python<'_>,
        client: &Bound<'_, PyAny>,
    ) -> PyResult<Option<ClientId>> {
        Ok(match self.clients.bind(py).get_item(client)? {
            Some(v) => Some(ClientId(v.extract()?)),
            None => None,
        })
    }

    /// The id of `client`, registering it on first sight (as distributed creates a
    /// `ClientState` on first use).
    pub(crate) fn client_id(
        &self,
        py: Python<'_>,
        st: &mut State,
        client: &Bound<'_, PyAny>,
    ) -> PyResult<ClientId> {
        if let Some(c) = self.known_client(py, client)? {
            return Ok(c);
        }
        let c = st.add_client(client.clone().unbind(), client.hash()? as i64);
        self.clients.bind(py).set_item(client, c.0)?;
        Ok(c)
    }
}

/// `ts.annotations`, making the dict of a task whose annotations are pending
/// (`Task::span_annotation_pending`).
pub(crate) fn task_annotations(
    py: Python<'_>,
    st: &mut State,
    t: TaskId,
) -> PyResult<Option<Py<PyAny>>> {
    let ts = st.ts(t);
    if ts.span_annotation_pending {
        let d = PyDict::new(py);
        if let Some(ann) = &st.group(ts.group).span_annotation {
            d.set_item(pyo3::intern!(py, "span"), ann.bind(py))?;
        }
        st.set_annotations(t, Some(d.into_any().unbind()));
    }
    Ok(st.ts(t).annotations.as_ref().map(|a| a.clone_ref(py)))
}

/// The worker at `address`; a `KeyError` if there is none (`self.workers[address]`).
pub(crate) fn worker_of(st: &State, address: &str) -> PyResult<WorkerId> {
    st.worker_id(address)
        .ok_or_else(|| PyKeyError::new_err(address.to_owned()))
}

/// The address a worker's message names. Workers are keyed by their address (a str):
/// anything else names no worker, as `workers.get(5)` finds none; "" is no address.
pub(crate) fn address_of(worker: &Bound<'_, PyAny>) -> String {
    worker.extract::<String>().unwrap_or_default()
}

/// The run id a worker's message carries, compared with `ts.run_id` as distributed
/// compares them: `None` equals a task's unset run id; anything that is not an int of
/// 64 bits matches no run (run ids are counted from 1).
pub(crate) fn run_id_of(run_id: &Bound<'_, PyAny>) -> Option<i64> {
    if run_id.is_none() {
        return None;
    }
    Some(run_id.extract::<i64>().unwrap_or(i64::MIN))
}

/// A task state by distributed's name.
pub(crate) fn parse_state(name: &str) -> PyResult<TaskStateState> {
    TaskStateState::parse(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown task state {name:?}")))
}

/// A worker status by `distributed.core.Status`'s name.
pub(crate) fn parse_status(name: &str) -> PyResult<WorkerStatus> {
    WorkerStatus::parse(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown worker status {name:?}")))
}

/// A byte count as workers and clients report it (`sizeof` may give a float).
pub(crate) fn byte_count(v: &Bound<'_, PyAny>) -> PyResult<i64> {
    match v.extract::<i64>() {
        Ok(n) => Ok(n),
        Err(_) => Ok(v.extract::<f64>()? as i64),
    }
}
