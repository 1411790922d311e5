//! `Batch`: the one way a stimulus runs. It holds the state borrowed exclusively, the
//! outbox and the stimulus id; it ends in one place (`Drop`), which clears what failed
//! transitions left, frees the tasks the stimulus forgot and lets dead groups go.

use crate::bindings::messages::{outbox_to_py, py_state, RunOut};
use crate::bindings::shared::{Engine, State};
use crate::cell::StateMut;
use crate::core::messages::Outbox;
use crate::core::state::Recs;
use crate::core::types::{CoreError, CoreResult};
use pyo3::exceptions::PyAssertionError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::{intern, IntoPyObjectExt};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub(crate) struct Batch<'e> {
    engine: &'e Engine,
    pub(crate) st: StateMut<'e, State>,
    pub(crate) out: Outbox<Py<PyAny>>,
    pub(crate) sid: Py<PyAny>,
    started: Instant,
}

impl Engine {
    /// Opens a stimulus.
    pub(crate) fn batch(&self, stimulus_id: &Bound<'_, PyAny>) -> PyResult<Batch<'_>> {
        Ok(Batch {
            engine: self,
            st: self.write()?,
            out: Outbox::default(),
            sid: stimulus_id.clone().unbind(),
            started: Instant::now(),
        })
    }
}

impl Batch<'_> {
    /// The core's result as Python sees it. An error carries the transitions it failed
    /// in, innermost first (`failed_transitions`: `(key, start, finish)`), which the
    /// scheduler logs as `_transition` does on the way up.
    pub(crate) fn check<R>(&mut self, py: Python<'_>, r: CoreResult<R>) -> PyResult<R> {
        r.map_err(|e| {
            let err = match e {
                CoreError::Unreachable(t) => {
                    let ts = self.st.ts(t);
                    let key = ts
                        .key
                        .bind(py)
                        .repr()
                        .map_or_else(|_| "?".into(), |r| r.to_string());
                    let shown = format!("<TaskState {key} {}>", ts.state.as_str());
                    PyAssertionError::new_err(("Unreachable", shown))
                }
                e => PyErr::from(e),
            };
            let failed = self.st.take_failed_transitions();
            let failed = PyList::new(
                py,
                failed.into_iter().map(|(t, start, finish)| {
                    (
                        self.st.ts(t).key.clone_ref(py),
                        start.as_str(),
                        finish.as_str(),
                    )
                }),
            );
            if let Ok(failed) = failed {
                let _ = err
                    .value(py)
                    .setattr(intern!(py, "failed_transitions"), failed);
            }
            err
        })
    }

    /// Ends the stimulus with `(client_msgs, worker_msgs)`.
    pub(crate) fn finish<'py>(
        mut self,
        py: Python<'py>,
        r: CoreResult<()>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        self.check(py, r)?;
        outbox_to_py(py, &self.st, &self.out)
    }

    /// Ends the stimulus, its messages added to those of a run of stimuli sent
    /// together.
    pub(crate) fn finish_into(
        mut self,
        py: Python<'_>,
        r: CoreResult<()>,
        run: &mut RunOut<'_>,
    ) -> PyResult<()> {
        self.check(py, r)?;
        run.add(&self.st, &self.out)
    }

    /// Ends the stimulus with `(result, client_msgs, worker_msgs)`.
    pub(crate) fn finish_with<'py>(
        self,
        py: Python<'py>,
        result: impl IntoPyObject<'py>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let result = result.into_bound_py_any(py)?;
        let msgs = self.finish(py, Ok(()))?;
        PyTuple::new(py, [result, msgs.get_item(0)?, msgs.get_item(1)?])
    }

    /// Recommendations as distributed returns them, `{key: state}` (read while the
    /// tasks they name are still readable).
    pub(crate) fn recs_py<'py>(
        &self,
        py: Python<'py>,
        recs: &Recs,
    ) -> PyResult<Bound<'py, PyDict>> {
        recs_py(py, &self.st, recs)
    }
}

/// `{key: state}`
pub(crate) fn recs_py<'py>(
    py: Python<'py>,
    st: &State,
    recs: &Recs,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (t, finish) in recs.iter() {
        d.set_item(st.ts(*t).key.bind(py), py_state(py, *finish))?;
    }
    Ok(d)
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        // a stimulus started by a plugin hook: the batch it interrupted ends all this
        if self.st.is_lent() {
            return;
        }
        self.st.end_stimulus();
        if self.st.batch_left_garbage() {
            Python::attach(|py| {
                if let Err(e) = self.engine.free_forgotten(py, &mut self.st) {
                    e.write_unraisable(py, None);
                }
            });
        }
        let took = self.started.elapsed().as_nanos() as u64;
        self.engine.stimuli.fetch_add(1, Ordering::Relaxed);
        self.engine.stimulus_ns.fetch_add(took, Ordering::Relaxed);
    }
}

/// Whether something besides the handle cache holds `handle`.
fn held_elsewhere(handle: &Py<PyAny>) -> bool {
    // SAFETY: the object is alive (the cache holds a reference) and the GIL is held
    unsafe { pyo3::ffi::Py_REFCNT(handle.as_ptr()) > 1 }
}

impl Engine {
    /// Drops the tasks forgotten in the batch from `task_metadata`, the handle cache and
    /// the arena (their keys left the key table at their transition), and the handles
    /// of the groups that died and nothing holds.
    fn free_forgotten(&self, py: Python<'_>, st: &mut State) -> PyResult<()> {
        let forgotten = st.forgotten_in_batch().to_vec();
        let dropped: Vec<_> = {
            let mut handles = self.task_handles.lock();
            forgotten.iter().filter_map(|t| handles.remove(t)).collect()
        };
        // released outside the lock, and before the groups are settled: a task handle
        // holds its group's
        drop(dropped);
        let dropped_groups: Vec<_> = {
            let mut handles = self.group_handles.lock();
            let held = &mut |g| handles.get(&g).is_some_and(held_elsewhere);
            let released = st.settle_dead_groups(held);
            released.iter().filter_map(|g| handles.remove(g)).collect()
        };
        drop(dropped_groups);
        let metadata = self.task_metadata.bind(py);
        if !metadata.is_empty() {
            for t in &forgotten {
                let key = st.ts(*t).key.bind(py);
                if metadata.contains(key)? {
                    metadata.del_item(key)?;
                }
            }
        }
        st.free_forgotten();
        Ok(())
    }
}

/// A run of stimuli sent together (a stream's run of messages): `stimulus(item, run)`
/// for each item, each adding its messages, until one raises. `(client_msgs,
/// worker_msgs, error)`: the messages of those handled (as `Messages` when `direct`:
/// the scheduler hands them to streams the engine writes), and the exception that
/// stopped the run (or None).
pub(crate) fn stimuli_run<'py, T>(
    py: Python<'py>,
    items: impl IntoIterator<Item = T>,
    direct: bool,
    mut stimulus: impl FnMut(T, &mut RunOut<'py>) -> PyResult<()>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut run = RunOut::new(py, direct);
    let mut error = py.None().into_bound(py);
    for item in items {
        if let Err(e) = stimulus(item, &mut run) {
            error = e.into_value(py).into_bound(py).into_any();
            break;
        }
    }
    let (client_msgs, worker_msgs) = run.into_py()?;
    PyTuple::new(py, [client_msgs.into_any(), worker_msgs.into_any(), error])
}
