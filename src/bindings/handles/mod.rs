//! Python handles with distributed's class names and attributes: `TaskState`,
//! `WorkerState`, `ClientState`, `TaskGroup`, `TaskPrefix`. A handle is (engine, id); the
//! engine caches one handle per live task/worker/client/group/prefix so `is`, hashing and
//! sets behave as with distributed's objects. A handle of a forgotten task reads as
//! `forgotten`.

mod collections;
mod task;
mod worker;

pub use collections::{TaskGroupHandle, TaskPrefixHandle};
pub use task::TaskStateHandle;
pub use worker::{ClientStateHandle, WorkerStateHandle};

use crate::bindings::shared::{Engine, View};
use crate::core::entities::{ClientSet, TaskSet, WorkerSet};
use crate::core::types::*;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PySet, PyString, PyTuple};

/// Read-only attributes of a handle class, one line each: `name(py, engine, view,
/// record) -> type = value, or value_once_gone;`. Every handle has `with(py, gone, f)`,
/// which runs `f` on its record, or `gone` once the record is gone (a forgotten task).
macro_rules! getters {
    ($handle:ty { $(
        $(#[$m:meta])*
        $name:ident($py:ident, $eng:pat_param, $v:pat_param, $rec:pat_param) -> $ty:ty
            = $body:expr, or $gone:expr;
    )* }) => {
        #[pymethods]
        impl $handle {
            $(
                $(#[$m])*
                #[getter]
                fn $name(&self, $py: Python<'_>) -> PyResult<$ty> {
                    self.with($py, || Ok($gone), |$eng, $v, $rec| Ok($body))
                }
            )*
        }
    };
}

/// What every handle does to reach its record: `with(py, gone, f)` runs `f(engine,
/// view, record)`, or `gone()` once the record is gone.
macro_rules! handle_access {
    ($handle:ty, $rec:ty, |$st:ident, $h:ident| $lookup:expr) => {
        impl $handle {
            pub(crate) fn with<R>(
                &self,
                py: Python<'_>,
                gone: impl FnOnce() -> PyResult<R>,
                f: impl FnOnce(&Py<Engine>, &View<'_>, &$rec) -> PyResult<R>,
            ) -> PyResult<R> {
                let e = self.engine.bind(py).borrow();
                let $st = e.read()?;
                let v = View::new(&e, &$st);
                let $h = self;
                match $lookup {
                    Some(rec) => f(&self.engine, &v, rec),
                    None => gone(),
                }
            }
        }
    };
}
pub(crate) use {getters, handle_access};

/// Methods and properties of distributed's own class (`WorkerState.memory`, `clean()`,
/// `TaskPrefix.add_exec_time`, ...) bound to the handle: they only read (or set) the
/// attributes the handle serves, so distributed's code is the implementation. Slot
/// members and dunders are not borrowed.
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

fn opt_obj(py: Python<'_>, o: &Option<Py<PyAny>>) -> Py<PyAny> {
    opt_ref(py, o.as_ref())
}

fn opt_ref(py: Python<'_>, o: Option<&Py<PyAny>>) -> Py<PyAny> {
    o.map_or_else(|| py.None(), |o| o.clone_ref(py))
}

/// A set of str (`None` stays `None`).
fn str_set(py: Python<'_>, v: Option<&[String]>) -> PyResult<Py<PyAny>> {
    match v {
        None => Ok(py.None()),
        Some(v) => Ok(PySet::new(py, v.iter().map(|s| PyString::new(py, s)))?
            .into_any()
            .unbind()),
    }
}

/// `{name: value}` of interned names (resources, durations, type names).
fn named<'py, V: IntoPyObject<'py> + Copy>(
    py: Python<'py>,
    v: &View<'_>,
    items: impl Iterator<Item = (u32, V)>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (id, value) in items {
        d.set_item(v.state.string(id), value)?;
    }
    Ok(d)
}

/// The canonical `TaskGroup` of `g` (one object per group, as distributed's, so
/// attributes set on it from Python stay and `is` holds).
pub fn group_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    g: GroupId,
) -> PyResult<Py<PyAny>> {
    v.group_handles.get_or_create(py, g, || {
        Ok(Py::new(
            py,
            TaskGroupHandle {
                engine: engine.clone_ref(py),
                id: g,
            },
        )?
        .into_any())
    })
}

/// The canonical `TaskPrefix` of `p`.
pub fn prefix_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    p: PrefixId,
) -> PyResult<Py<PyAny>> {
    v.prefix_handles.get_or_create(py, p, || {
        Ok(Py::new(
            py,
            TaskPrefixHandle {
                engine: engine.clone_ref(py),
                id: p,
            },
        )?
        .into_any())
    })
}

/// The engine's handle for task `t` (created once, cached while the task lives).
pub fn task_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    t: TaskId,
) -> PyResult<Py<PyAny>> {
    v.task_handles.get_or_create(py, t, || {
        let ts = v.state.ts(t);
        let h = TaskStateHandle {
            engine: engine.clone_ref(py),
            id: t,
            serial: ts.serial,
            key: ts.key.clone_ref(py),
            hash: ts.hash as isize,
            group: group_handle(py, engine, v, ts.group)?,
        };
        Ok(Py::new(py, h)?.into_any())
    })
}

pub fn worker_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    w: WorkerId,
) -> PyResult<Py<PyAny>> {
    v.worker_handles.get_or_create(py, w, || {
        let h = WorkerStateHandle {
            engine: engine.clone_ref(py),
            id: w,
            hash: v.state.ws(w).hash as isize,
        };
        Ok(Py::new(py, h)?.into_any())
    })
}

pub fn client_handle(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    c: ClientId,
) -> PyResult<Py<PyAny>> {
    v.client_handles.get_or_create(py, c, || {
        let h = ClientStateHandle {
            engine: engine.clone_ref(py),
            id: c,
            hash: v.state.client(c).hash as isize,
        };
        Ok(Py::new(py, h)?.into_any())
    })
}

/// `task_handle`, `worker_handle` or `client_handle`.
type MakeHandle<I> = fn(Python<'_>, &Py<Engine>, &View<'_>, I) -> PyResult<Py<PyAny>>;

static HANDLE_SET: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A set of handles that iterates in the engine's order (`dask_rsched._views.HandleSet`:
/// a new Python set of the same handles may iterate in another order); `None` stays
/// `None`.
fn handle_set<I: Copy>(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    items: Option<impl Iterator<Item = I>>,
    handle: MakeHandle<I>,
) -> PyResult<Py<PyAny>> {
    let Some(items) = items else {
        return Ok(py.None());
    };
    let handles = items
        .map(|i| handle(py, engine, v, i))
        .collect::<PyResult<Vec<_>>>()?;
    let class = HANDLE_SET.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("dask_rsched._views")?
                .getattr("HandleSet")?
                .unbind(),
        )
    })?;
    Ok(class
        .bind(py)
        .call1((PyTuple::new(py, handles)?,))?
        .unbind())
}

pub fn task_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    s: Option<&TaskSet>,
) -> PyResult<Py<PyAny>> {
    handle_set(py, engine, v, s.map(|s| s.iter()), task_handle)
}

pub fn worker_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    s: Option<&WorkerSet>,
) -> PyResult<Py<PyAny>> {
    handle_set(py, engine, v, s.map(|s| s.iter()), worker_handle)
}

pub fn client_set(
    py: Python<'_>,
    engine: &Py<Engine>,
    v: &View<'_>,
    s: Option<&ClientSet>,
) -> PyResult<Py<PyAny>> {
    handle_set(py, engine, v, s.map(|s| s.iter()), client_handle)
}
