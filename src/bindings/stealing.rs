//! Python face of the engine's work stealing: the stealing state as Python values and
//! the stealing log events as the tuples `WorkStealing.log` records.

use super::engine::{Engine, State};
use crate::core::stealing::{StealEvent, LEVELS};
use crate::core::types::*;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use pyo3::IntoPyObjectExt;

fn opt_str(py: Python<'_>, s: &Option<String>) -> PyResult<Py<PyAny>> {
    match s {
        Some(s) => s.into_py_any(py),
        None => Ok(py.None()),
    }
}

impl Engine {
    /// The pending `scheduler.log_event("stealing", msg)` messages.
    pub(crate) fn steal_events_py<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
    ) -> PyResult<Bound<'py, PyList>> {
        let out = PyList::empty(py);
        for ev in st.stealing.events.drain(..) {
            let msg = match ev {
                StealEvent::Request(entries) => {
                    let log = PyList::empty(py);
                    for e in entries {
                        log.append(PyTuple::new(
                            py,
                            [
                                e.start.into_py_any(py)?,
                                e.level.into_py_any(py)?,
                                e.key.clone_ref(py),
                                e.cost.into_py_any(py)?,
                                e.victim.into_py_any(py)?,
                                e.occ_victim.into_py_any(py)?,
                                e.thief.into_py_any(py)?,
                                e.occ_thief.into_py_any(py)?,
                            ],
                        )?)?;
                    }
                    PyTuple::new(py, ["request".into_py_any(py)?, log.into_any().unbind()])?
                }
                StealEvent::Dropped {
                    kind,
                    key,
                    state,
                    worker,
                    stimulus_id,
                } => PyTuple::new(
                    py,
                    [
                        kind.into_py_any(py)?,
                        key,
                        opt_str(py, &state)?,
                        opt_str(py, &worker)?,
                        stimulus_id.into_py_any(py)?,
                    ],
                )?,
                StealEvent::Move {
                    kind,
                    thief_gone,
                    key,
                    state,
                    victim,
                    thief,
                    stimulus_id,
                } => {
                    let mut items = vec![kind.into_py_any(py)?];
                    if let Some(gone) = thief_gone {
                        items.push(gone.into_py_any(py)?);
                    }
                    items.extend([
                        key,
                        opt_str(py, &state)?,
                        victim.into_py_any(py)?,
                        thief.into_py_any(py)?,
                        stimulus_id.into_py_any(py)?,
                    ]);
                    PyTuple::new(py, items)?
                }
            };
            out.append(msg)?;
        }
        Ok(out)
    }

    /// `WorkStealing`'s containers with keys for tasks and addresses for workers; `only`
    /// builds just that one (the face reads one at a time).
    pub(crate) fn stealing_state_py<'py>(
        &self,
        py: Python<'py>,
        only: Option<&str>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let st = self.state.borrow()?;
        let s = &st;
        let st = &s.stealing;
        let key = |t: TaskId| s.ts(t).key.clone_ref(py);
        let addr = |w: WorkerId| s.ws(w).address.clone();
        let want = |k: &str| only.is_none_or(|o| o == k);
        let d = PyDict::new(py);
        if want("stealable") {
            let stealable = PyDict::new(py);
            for &w in &s.workers_sorted {
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
            let ks = PyDict::new(py);
            for (&t, &(w, level)) in st.key_stealable.iter() {
                ks.set_item(key(t), (addr(w), level))?;
            }
            d.set_item("key_stealable", ks)?;
        }
        if want("in_flight") {
            let inf = PyDict::new(py);
            for (t, info) in st.in_flight.iter() {
                let i = PyDict::new(py);
                i.set_item("victim", addr(info.victim))?;
                i.set_item("thief", addr(info.thief))?;
                i.set_item("victim_duration", info.victim_duration)?;
                i.set_item("thief_duration", info.thief_duration)?;
                i.set_item("stimulus_id", &info.stimulus_id)?;
                inf.set_item(key(*t), i)?;
            }
            d.set_item("in_flight", inf)?;
        }
        if want("in_flight_occupancy") {
            let occ = PyDict::new(py);
            for (w, v) in st.in_flight_occupancy.iter() {
                occ.set_item(addr(*w), *v)?;
            }
            d.set_item("in_flight_occupancy", occ)?;
        }
        if want("in_flight_tasks") {
            let tasks = PyDict::new(py);
            for (w, v) in st.in_flight_tasks.iter() {
                tasks.set_item(addr(*w), *v)?;
            }
            d.set_item("in_flight_tasks", tasks)?;
        }
        if want("unknown_durations") {
            let unknown = PyDict::new(py);
            for (p, ts) in st.unknown_durations.iter() {
                // forgotten tasks included, as distributed keeps them in these sets
                unknown.set_item(
                    &s.prefixes[p.idx()].name,
                    PyList::new(py, ts.iter().map(key))?,
                )?;
            }
            d.set_item("unknown_durations", unknown)?;
        }
        if want("metrics") {
            let counts = PyDict::new(py);
            for (l, v) in st.request_count_total.iter() {
                counts.set_item(*l, *v)?;
            }
            let costs = PyDict::new(py);
            for (l, v) in st.request_cost_total.iter() {
                costs.set_item(*l, *v)?;
            }
            let metrics = PyDict::new(py);
            metrics.set_item("request_count_total", counts)?;
            metrics.set_item("request_cost_total", costs)?;
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
