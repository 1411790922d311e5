//! Work stealing (`scheduler.extensions["stealing"]`'s decisions, in the core): its
//! stimuli, its containers as Python values and its log events as the tuples
//! `WorkStealing.log` records.

use crate::bindings::shared::{worker_of, Engine, State};
use crate::core::stealing_state::{StealEvent, LEVELS};
use crate::core::types::*;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

impl Engine {
    /// The pending `scheduler.log_event("stealing", msg)` messages, as the tuples
    /// `WorkStealing.log` records.
    fn steal_events_py<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for ev in st.take_steal_events() {
            let msg = match ev {
                StealEvent::Request(entries) => {
                    let log = entries.into_iter().map(|e| {
                        let (victim, thief) = ((e.victim, e.occ_victim), (e.thief, e.occ_thief));
                        (
                            e.start, e.level, e.key, e.cost, victim.0, victim.1, thief.0, thief.1,
                        )
                    });
                    ("request", PyList::new(py, log)?).into_bound_py_any(py)?
                }
                StealEvent::Dropped {
                    kind,
                    key,
                    state,
                    worker,
                    stimulus_id,
                } => (kind, key, state, worker, stimulus_id).into_bound_py_any(py)?,
                StealEvent::Move {
                    kind,
                    thief_gone: Some(gone),
                    key,
                    state,
                    victim,
                    thief,
                    stimulus_id,
                } => (kind, gone, key, state, victim, thief, stimulus_id).into_bound_py_any(py)?,
                StealEvent::Move {
                    kind,
                    thief_gone: None,
                    key,
                    state,
                    victim,
                    thief,
                    stimulus_id,
                } => (kind, key, state, victim, thief, stimulus_id).into_bound_py_any(py)?,
            };
            out.append(msg)?;
        }
        Ok(out)
    }

    /// `WorkStealing`'s containers with keys for tasks and addresses for workers; `only`
    /// builds just that one (the face reads one at a time).
    fn stealing_state_py<'py>(
        &self,
        py: Python<'py>,
        only: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let st = self.read()?;
        let s = &*st;
        let st = s.stealing();
        let key = |t: TaskId| s.ts(t).key.clone_ref(py);
        let addr = |w: WorkerId| s.ws(w).address.clone();
        let want = |k: &str| only.is_none_or(|o| o == k);
        let d = PyDict::new(py);
        if want("stealable") {
            let stealable = PyDict::new(py);
            for &w in s.workers_sorted() {
                if let Some(Some(levels)) = st.stealable.get(w.idx()) {
                    let sets = PyList::empty(py);
                    for level in levels.iter().take(LEVELS) {
                        sets.append(PyList::new(py, level.iter().map(key))?)?;
                    }
                    stealable.set_item(addr(w), sets)?;
                }
            }
            d.set_item("stealable", stealable)?;
        }
        if want("key_stealable") {
            let ks = st
                .key_stealable
                .iter()
                .map(|(&t, &(w, l))| (key(t), (addr(w), l)));
            d.set_item("key_stealable", ks.into_py_dict(py)?)?;
        }
        if want("in_flight") {
            let inf = PyDict::new(py);
            for (t, i) in st.in_flight.iter() {
                let info = [
                    ("victim", addr(i.victim).into_py_any(py)?),
                    ("thief", addr(i.thief).into_py_any(py)?),
                    ("victim_duration", i.victim_duration.into_py_any(py)?),
                    ("thief_duration", i.thief_duration.into_py_any(py)?),
                    ("stimulus_id", i.stimulus_id.clone().into_py_any(py)?),
                ];
                inf.set_item(key(*t), info.into_py_dict(py)?)?;
            }
            d.set_item("in_flight", inf)?;
        }
        if want("in_flight_occupancy") {
            let occ = st.in_flight_occupancy.iter().map(|(w, v)| (addr(*w), *v));
            d.set_item("in_flight_occupancy", occ.into_py_dict(py)?)?;
        }
        if want("in_flight_tasks") {
            let tasks = st.in_flight_tasks.iter().map(|(w, v)| (addr(*w), *v));
            d.set_item("in_flight_tasks", tasks.into_py_dict(py)?)?;
        }
        if want("unknown_durations") {
            // forgotten tasks included, as distributed keeps them in these sets
            let unknown = st.unknown_durations.iter().map(|(p, ts)| {
                PyList::new(py, ts.iter().map(key)).map(|ks| (&s.prefix(*p).name, ks))
            });
            let unknown = unknown.collect::<PyResult<Vec<_>>>()?;
            d.set_item("unknown_durations", unknown.into_py_dict(py)?)?;
        }
        if want("metrics") {
            let counts = st.request_count_total.iter().map(|(l, v)| (*l, *v));
            let costs = st.request_cost_total.iter().map(|(l, v)| (*l, *v));
            let metrics = PyDict::new(py);
            metrics.set_item("request_count_total", counts.into_py_dict(py)?)?;
            metrics.set_item("request_cost_total", costs.into_py_dict(py)?)?;
            d.set_item("metrics", metrics)?;
        }
        if want("count") {
            d.set_item("count", st.count)?;
        }
        if want("request_counter") {
            d.set_item("request_counter", st.request_counter)?;
        }
        Ok(d)
    }
}

#[pymethods]
impl Engine {
    #[getter]
    fn work_stealing(&self) -> PyResult<bool> {
        Ok(self.read()?.stealing().enabled)
    }

    /// `WorkStealing.balance`: the steal requests to send.
    fn steal_balance<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(&py.None().into_bound(py))?;
        b.st.steal_balance(&mut b.out);
        b.finish(py, Ok(()))
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
        let mut b = self.batch(stimulus_id)?;
        let t = self.tid(&b.st, key)?;
        let request_id: String = stimulus_id.extract()?;
        let r =
            b.st.move_task_confirm(t, state, &request_id, worker, &b.sid, &mut b.out);
        b.finish(py, r)
    }

    /// `WorkStealing.move_task_request`: `(stimulus_id or "in-flight", client_msgs,
    /// worker_msgs)`.
    fn steal_request<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        victim: &str,
        thief: &str,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(&py.None().into_bound(py))?;
        let t = self.tid_required(&b.st, key)?;
        let (v, th) = (worker_of(&b.st, victim)?, worker_of(&b.st, thief)?);
        let sid = b.st.move_task_request(t, v, th, &mut b.out);
        b.finish_with(py, sid)
    }

    /// `WorkStealing.put_key_in_stealable`
    fn steal_put_key(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.write()?;
        let t = self.tid_required(&st, key)?;
        Ok(st.put_key_in_stealable(t).map_err(CoreError::from)?)
    }

    /// `WorkStealing.remove_key_from_stealable`
    fn steal_remove_key(&self, key: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.write()?;
        let t = self.tid_required(&st, key)?;
        st.remove_key_from_stealable(t);
        Ok(())
    }

    /// `WorkStealing.remove_worker` (its `remove_worker` plugin hook).
    fn steal_remove_worker(&self, address: &str) -> PyResult<()> {
        let mut st = self.write()?;
        if let Some(w) = st.any_worker_id(address) {
            st.steal_remove_worker(w);
        }
        Ok(())
    }

    /// `WorkStealing.steal_time_ratio`: `(cost_multiplier, level)` or `(None, None)`.
    fn steal_time_ratio(&self, key: &Bound<'_, PyAny>) -> PyResult<(Option<f64>, Option<usize>)> {
        let st = self.read()?;
        let t = self.tid_required(&st, key)?;
        Ok(match st.steal_time_ratio(t).map_err(CoreError::from)? {
            Some((m, l)) => (Some(m), Some(l)),
            None => (None, None),
        })
    }

    /// `WorkStealing.restart`
    fn steal_restart(&self) -> PyResult<()> {
        self.write()?.steal_restart();
        Ok(())
    }

    /// Drains the stealing log: the messages for `log_event("stealing", ...)`.
    fn take_steal_events<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        self.steal_events_py(py, &mut *self.write()?)
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
}
