//! The run_specs the engine holds, kept out of Python's cyclic garbage collector.
//!
//! A full collection visits every object the collector tracks. With a large graph held,
//! most of them are the graph's own run_specs: a dask `Task` and the `TaskRef`s, tuples,
//! frozensets and nested tasks in it, two or more objects per task, and the pause grows
//! with them.
//!
//! The engine holds each run_spec the order read for as long as its task lives, so no
//! cycle through it, or through the parts it holds, can become garbage meanwhile. So
//! `hold` takes it and its parts (the tuples, frozensets and dask task-spec nodes below
//! it, which dask never changes once made) out of the collector's lists when the order
//! reads it for the engine, and `release` puts them back when the engine lets go of it,
//! before dropping its reference: a cycle through one, if one was ever made, is then
//! collected as before. Every holder of a held run_spec releases it: the order's reading
//! (`Held`), the state creation's entries (`Entries`) and the task records
//! (`SchedulerState::run_spec_released`). A part someone took out of a held run_spec
//! (dask does not) stays untracked, which only matters if it ends up in a cycle.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use std::os::raw::{c_int, c_void};

/// How deep below a run_spec its parts are walked (`Task` → args tuple → nested `Task`
/// → dependencies frozenset → tuple key), and how many references at most per walk: a
/// run_spec holding a large structure leaves the rest of it tracked.
const DEPTH: u8 = 6;
const PARTS: u32 = 256;

/// `dask._task_spec`'s node types without an instance `__dict__` (as addresses: types
/// live as long as the module), or none if it cannot be imported (nothing is held).
static NODE_TYPES: PyOnceLock<Vec<usize>> = PyOnceLock::new();

fn node_types(py: Python<'_>) -> &[usize] {
    NODE_TYPES.get_or_init(py, || read_node_types(py).unwrap_or_default())
}

fn read_node_types(py: Python<'_>) -> PyResult<Vec<usize>> {
    let spec = py.import("dask._task_spec")?;
    let graph_node = spec.getattr("GraphNode")?;
    let task_ref = spec.getattr("TaskRef")?;
    let module = spec.getattr("__name__")?;
    let mut types = Vec::new();
    for (_, value) in spec.dict().iter() {
        let Ok(ty) = value.cast::<pyo3::types::PyType>() else {
            continue;
        };
        let dask_node = ty.is_subclass(&graph_node)? || ty.is(&task_ref);
        let own = ty.getattr("__module__")?.eq(&module)?;
        let dict_offset: isize = ty.getattr("__dictoffset__")?.extract()?;
        if dask_node && own && dict_offset == 0 {
            types.push(ty.as_ptr() as usize);
        }
    }
    Ok(types)
}

/// # Safety
/// `obj` is a live object and the GIL is held.
unsafe fn is_node(obj: *mut ffi::PyObject, types: &[usize]) -> bool {
    types.contains(&(ffi::Py_TYPE(obj) as usize))
}

/// Calls `f` on each object `obj` refers to (its type's `tp_traverse`, as
/// `gc.get_referents`) until it returns false, its own type left out: a type lives on,
/// in no cycle that makes the instance garbage.
///
/// # Safety
/// `obj` is a live object and the GIL is held.
unsafe fn for_each_referent(
    obj: *mut ffi::PyObject,
    f: &mut dyn FnMut(*mut ffi::PyObject) -> bool,
) {
    struct Visit<'a> {
        f: &'a mut dyn FnMut(*mut ffi::PyObject) -> bool,
        own_type: *mut ffi::PyObject,
    }
    unsafe extern "C" fn visit(o: *mut ffi::PyObject, arg: *mut c_void) -> c_int {
        // SAFETY: `arg` is the `Visit` below, alive for the traversal.
        let v = unsafe { &mut *(arg as *mut Visit<'_>) };
        if o.is_null() || o == v.own_type || (v.f)(o) {
            0
        } else {
            // stops the traversal
            1
        }
    }
    let ty = ffi::Py_TYPE(obj);
    let slot = ffi::PyType_GetSlot(ty, ffi::Py_tp_traverse);
    if slot.is_null() {
        return;
    }
    // SAFETY: the slot of `Py_tp_traverse` is a `traverseproc`.
    let traverse: ffi::traverseproc = std::mem::transmute(slot);
    let mut v = Visit {
        f,
        own_type: ty.cast(),
    };
    traverse(obj, visit, &mut v as *mut Visit<'_> as *mut c_void);
}

/// A kind of object the walk goes through: a tuple, a frozenset or one of dask's nodes,
/// not a static or immortal one (the empty tuple, constants of frozen modules: never
/// tracked, whatever refers to them).
///
/// # Safety
/// `obj` is a live object and the GIL is held.
unsafe fn walked(obj: *mut ffi::PyObject, types: &[usize]) -> bool {
    let kind = (ffi::PyTuple_CheckExact(obj) != 0 && ffi::PyTuple_Size(obj) > 0)
        || ffi::PyFrozenSet_CheckExact(obj) != 0
        || is_node(obj, types);
    kind && ffi::Py_REFCNT(obj) < IMMORTAL_REFCNT
}

/// At least this reference count marks a static or immortal object (CPython 3.11 gives
/// them 999,999,999, 3.12 on about 2**32).
const IMMORTAL_REFCNT: ffi::Py_ssize_t = 1 << 29;

/// Untracks (`track` false) or tracks again (`track` true) `obj`, then the walked kinds
/// below it in the other state, within the depth and the budget of `parts`.
///
/// # Safety
/// `obj` is a live object of a walked kind (or a run_spec), in the other state than
/// `track` asks for, and the GIL is held.
unsafe fn set_tree(
    obj: *mut ffi::PyObject,
    track: bool,
    types: &[usize],
    depth: u8,
    parts: &mut u32,
) {
    if track {
        ffi::PyObject_GC_Track(obj.cast());
    } else {
        ffi::PyObject_GC_UnTrack(obj.cast());
    }
    if depth == 0 {
        return;
    }
    for_each_referent(obj, &mut |r| {
        if *parts == 0 {
            return false;
        }
        *parts -= 1;
        // a part in the state asked for already was done by another walk (a part
        // shared by two run_specs) or needs nothing
        if (ffi::PyObject_GC_IsTracked(r) != 0) != track && walked(r, types) {
            set_tree(r, track, types, depth - 1, parts);
        }
        true
    });
}

/// Takes a run_spec the engine is going to hold, and its parts, out of the collector's
/// lists (a dask task-spec node only; anything else stays as it is).
pub(crate) fn hold(spec: &Bound<'_, PyAny>) {
    let types = node_types(spec.py());
    let p = spec.as_ptr();
    // SAFETY: `spec` is alive and the GIL is held (the `Bound`).
    unsafe {
        if ffi::PyObject_GC_IsTracked(p) != 0 && is_node(p, types) {
            let mut parts = PARTS;
            set_tree(p, false, types, DEPTH, &mut parts);
        }
    }
}

/// Puts a run_spec the engine lets go of, and its parts, back in the collector's lists
/// if `hold` took them out (call it before dropping the reference).
pub(crate) fn release(spec: &Py<PyAny>) {
    // never from a collection's traversal nor at shutdown: the objects then stay
    // untracked, which only matters if they are in a cycle
    Python::try_attach(|py| {
        let p = spec.as_ptr();
        // nothing was held if the types were never read
        let Some(types) = NODE_TYPES.get(py) else {
            return;
        };
        // SAFETY: `spec` is alive and the GIL is held.
        unsafe {
            if ffi::PyObject_GC_IsTracked(p) == 0 && is_node(p, types) {
                let mut parts = PARTS;
                set_tree(p, true, types, DEPTH, &mut parts);
            }
        }
    });
}

/// A run_spec `hold` took out of the collector's lists, released when dropped unless
/// handed on (`into_inner`) to another holder that releases it.
pub(crate) struct Held(Option<Py<PyAny>>);

impl Held {
    pub(crate) fn new(spec: Bound<'_, PyAny>) -> Self {
        hold(&spec);
        Held(Some(spec.unbind()))
    }

    pub(crate) fn into_inner(mut self) -> Py<PyAny> {
        self.0.take().expect("a held run_spec")
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(spec) = &self.0 {
            release(spec);
        }
    }
}

/// The state creation's entries: the run_specs no task took are released with them.
pub(crate) struct Entries(pub(crate) Vec<crate::core::graph::GraphTask<Py<PyAny>>>);

impl Drop for Entries {
    fn drop(&mut self) {
        for spec in self.0.iter().filter_map(|g| g.run_spec.as_ref()) {
            release(spec);
        }
    }
}

impl std::ops::Deref for Entries {
    type Target = Vec<crate::core::graph::GraphTask<Py<PyAny>>>;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Entries {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}
