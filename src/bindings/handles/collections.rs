//! `TaskGroup` and `TaskPrefix` (distributed's `TaskCollection`s)

use super::{
    distributed_fallback, getters, group_handle, handle_access, named, opt_obj, prefix_handle,
    worker_handle,
};
use crate::bindings::shared::{Engine, View};
use crate::core::entities::{Durations, TaskGroup, TaskPrefix};
use crate::core::ordered::OrderedMap;
use crate::core::types::*;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PySet};

fn states_dict<'py>(py: Python<'py>, states: &[i64; 8]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for s in ALL_TASK_STATES {
        d.set_item(s.as_str(), states[s.index()])?;
    }
    Ok(d)
}

/// `collections.defaultdict(factory, d)`
fn defaultdict(py: Python<'_>, factory: &str, d: Bound<'_, PyDict>) -> PyResult<Py<PyAny>> {
    let factory = py.import("builtins")?.getattr(factory)?;
    let dd = py.import("collections")?.getattr("defaultdict")?;
    Ok(dd.call1((factory, d))?.unbind())
}

/// `TaskCollection.all_durations`: `defaultdict(float, {action: seconds})`.
fn all_durations(py: Python<'_>, v: &View<'_>, d: &Durations) -> PyResult<Py<PyAny>> {
    let seconds = d
        .all_durations_us
        .iter()
        .map(|(a, us)| (*a, *us as f64 / 1e6));
    defaultdict(py, "float", named(py, v, seconds)?)
}

/// `TaskCollection.types`: the result type names, as dict keys.
fn type_names(py: Python<'_>, v: &View<'_>, types: &OrderedMap<u32, i64>) -> PyResult<Py<PyAny>> {
    let d = named(py, v, types.iter().map(|(t, _)| (*t, ())))?;
    Ok(d.call_method0("keys")?.unbind())
}

/// `<name: state: count, ...>` with the non-zero counts, sorted by state name.
fn collection_repr(name: &str, states: &[i64; 8]) -> String {
    let mut items: Vec<(&str, i64)> = ALL_TASK_STATES
        .iter()
        .map(|s| (s.as_str(), states[s.index()]))
        .filter(|(_, n)| *n != 0)
        .collect();
    items.sort();
    let counts: Vec<String> = items.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    format!("<{name}: {}>", counts.join(", "))
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskGroup")]
pub struct TaskGroupHandle {
    pub engine: Py<Engine>,
    pub id: GroupId,
}

// a dead group's record stays while anything refers to it
handle_access!(TaskGroupHandle, TaskGroup<Py<PyAny>>, |st, h| Some(
    st.group(h.id)
));

getters!(TaskGroupHandle {
    name(py, _, v, tg) -> Py<PyAny> = v.group_name(py, &tg.name)?.unbind(), or py.None();
    states(py, _, _, tg) -> Py<PyAny> = states_dict(py, &tg.states)?.into_any().unbind(), or py.None();
    all_durations(py, _, v, tg) -> Py<PyAny> = all_durations(py, v, &tg.durations)?, or py.None();
    duration(py, _, _, tg) -> f64 = tg.durations.duration_us as f64 / 1e6, or 0.0;
    types(py, _, v, tg) -> Py<PyAny> = type_names(py, v, &tg.types)?, or py.None();
    /// The groups this group's tasks depend on.
    dependencies(py, e, v, tg) -> Py<PyAny> = {
        let out = PySet::empty(py)?;
        for g in &tg.dependencies {
            out.add(group_handle(py, e, v, *g)?)?;
        }
        out.into_any().unbind()
    }, or py.None();
    last_worker(py, e, v, tg) -> Py<PyAny> = match tg.last_worker {
        Some(w) if v.state.is_current_worker(w) => worker_handle(py, e, v, w)?,
        _ => py.None(),
    }, or py.None();
    last_worker_tasks_left(py, _, _, tg) -> i64 = tg.last_worker_tasks_left, or 0;
    /// The span the group belongs to (set by the spans extension on submission; sent to
    /// workers with `compute-task`).
    span_id(py, _, _, tg) -> Py<PyAny> = opt_obj(py, &tg.span_id), or py.None();
    nbytes_total(py, _, _, tg) -> i128 = tg.nbytes_total, or 0;
    start(py, _, _, tg) -> f64 = tg.start, or 0.0;
    stop(py, _, _, tg) -> f64 = tg.stop, or 0.0;
    prefix(py, e, v, tg) -> Py<PyAny> = prefix_handle(py, e, v, tg.prefix)?, or py.None();
});

#[pymethods]
impl TaskGroupHandle {
    #[setter]
    fn set_span_id(&self, py: Python<'_>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        let value = value.filter(|v| !v.is_none(py));
        e.write()?.set_span_id(self.id, value);
        Ok(())
    }

    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "TaskGroup", name)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, || Ok(0), |_, _, tg| Ok(tg.size as usize))
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
        let name = self.name(py)?.bind(py).str()?.to_string();
        self.with(
            py,
            || Ok(String::new()),
            |_, _, tg| Ok(collection_repr(&name, &tg.states)),
        )
    }
}

#[pyclass(frozen, dict, module = "dask_rsched._core", name = "TaskPrefix")]
pub struct TaskPrefixHandle {
    pub engine: Py<Engine>,
    pub id: PrefixId,
}

handle_access!(TaskPrefixHandle, TaskPrefix, |st, h| Some(st.prefix(h.id)));

getters!(TaskPrefixHandle {
    name(py, _, _, tp) -> String = tp.name.clone(), or String::new();
    states(py, _, _, tp) -> Py<PyAny> = states_dict(py, &tp.states)?.into_any().unbind(), or py.None();
    all_durations(py, _, v, tp) -> Py<PyAny> = all_durations(py, v, &tp.durations)?, or py.None();
    duration(py, _, _, tp) -> f64 = tp.durations.duration_us as f64 / 1e6, or 0.0;
    types(py, _, v, tp) -> Py<PyAny> = type_names(py, v, &tp.types)?, or py.None();
    /// Transitions into each state so far: `defaultdict(int)` with the states seen.
    state_counts(py, _, _, tp) -> Py<PyAny> = {
        let d = PyDict::new(py);
        for s in ALL_TASK_STATES.iter().filter(|s| tp.state_counts[s.index()] != 0) {
            d.set_item(s.as_str(), tp.state_counts[s.index()])?;
        }
        defaultdict(py, "int", d)?
    }, or py.None();
    /// The prefix's groups, in creation order.
    groups(py, e, v, tp) -> Py<PyAny> = {
        let d = PyDict::new(py);
        for (g, _) in tp.groups.iter() {
            d.set_item(group_handle(py, e, v, *g)?, py.None())?;
        }
        d.call_method0("keys")?.unbind()
    }, or py.None();
    duration_average(py, _, _, tp) -> f64 = tp.duration_average, or -1.0;
    max_exec_time(py, _, _, tp) -> f64 = tp.max_exec_time, or -1.0;
    suspicious(py, _, _, tp) -> i64 = tp.suspicious, or 0;
    nbytes_total(py, _, _, tp) -> i128 = tp.nbytes_total, or 0;
});

#[pymethods]
impl TaskPrefixHandle {
    /// `TaskPrefix.add_exec_time` (heartbeats report tasks still executing) sets it.
    #[setter]
    fn set_duration_average(&self, py: Python<'_>, value: f64) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        e.write()?.set_duration_average(self.id, value);
        Ok(())
    }

    #[setter]
    fn set_max_exec_time(&self, py: Python<'_>, value: f64) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        e.write()?.set_max_exec_time(self.id, value);
        Ok(())
    }

    /// `remove_worker` counts the workers that died running the prefix's tasks.
    #[setter]
    fn set_suspicious(&self, py: Python<'_>, value: i64) -> PyResult<()> {
        let e = self.engine.bind(py).borrow();
        e.write()?.set_prefix_suspicious(self.id, value);
        Ok(())
    }

    fn __getattr__(slf: &Bound<'_, Self>, name: &str) -> PyResult<Py<PyAny>> {
        distributed_fallback(slf.as_any(), "TaskPrefix", name)
    }

    fn __len__(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, || Ok(0), |_, _, tp| Ok(tp.size as usize))
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
        self.with(
            py,
            || Ok(String::new()),
            |_, _, tp| Ok(collection_repr(&tp.name, &tp.states)),
        )
    }
}
