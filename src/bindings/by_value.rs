//! A client's function pickled by value once, not once per task.
//!
//! A run_spec holding a function the scheduler cannot pickle by reference (a client's
//! `__main__` function, a lambda, a local function) goes to `cloudpickle.dumps`, which
//! writes the function by value: its code, the globals its code names, its closure.
//! For `client.map(f, ...)` that is the same function again for every task, about
//! 50 µs each. The pickler (`pickler::dumps_by_value`) instead writes such a function
//! as `pickle.loads(<cloudpickle.dumps(function)>)`, and those bytes are kept here: the
//! worker gets the function from the very bytes cloudpickle writes for it.
//!
//! A function's bytes are kept while nothing cloudpickle would write for it changed:
//! its attributes, the globals its code names and its closure's values are the same
//! objects as when it was pickled, each of them immutable or pickled by reference (a
//! function capturing anything else is not kept), and `sys.modules` has the same size
//! (cloudpickle lists the submodules a function uses that are imported).

use std::sync::Mutex;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyComplex, PyDict, PyFloat, PyInt, PyString, PyTuple, PyType};

use super::pickler::{look_up_global, modules, Lookup};

/// What the pickler and this module read from cloudpickle and the interpreter.
pub(crate) struct Cloud {
    /// `cloudpickle.dumps`
    dumps: Py<PyAny>,
    /// `cloudpickle.cloudpickle._extract_code_globals`: the global names a code uses
    extract_code_globals: Py<PyAny>,
    /// `cloudpickle.Pickler._dispatch_table`: types cloudpickle reduces its own way
    pub(crate) dispatch_table: Py<PyDict>,
    /// `cloudpickle.cloudpickle._BUILTIN_TYPE_NAMES`: classes cloudpickle names its way
    pub(crate) builtin_type_names: Py<PyDict>,
    /// `pickle.loads`, what the run_spec's pickle calls on the kept bytes
    pub(crate) loads: Py<PyAny>,
    /// Stands for a global or cell that has no value.
    missing: Py<PyAny>,
    module_type: Py<PyType>,
    builtin_function_type: Py<PyType>,
}

static CLOUD: PyOnceLock<Option<Cloud>> = PyOnceLock::new();

/// cloudpickle's parts, or `None` (nothing is kept) when this cloudpickle lacks one.
pub(crate) fn cloud(py: Python<'_>) -> Option<&Cloud> {
    CLOUD
        .get_or_init(py, || {
            let read = || -> PyResult<Cloud> {
                let module = py.import("cloudpickle.cloudpickle")?;
                let types = py.import("types")?;
                let ty = |name: &str| -> PyResult<Py<PyType>> {
                    Ok(types.getattr(name)?.cast_into::<PyType>()?.unbind())
                };
                Ok(Cloud {
                    dumps: py.import("cloudpickle")?.getattr("dumps")?.unbind(),
                    extract_code_globals: module.getattr("_extract_code_globals")?.unbind(),
                    dispatch_table: module
                        .getattr("Pickler")?
                        .getattr("_dispatch_table")?
                        .cast_into::<PyDict>()?
                        .unbind(),
                    builtin_type_names: module
                        .getattr("_BUILTIN_TYPE_NAMES")?
                        .cast_into::<PyDict>()?
                        .unbind(),
                    loads: py.import("pickle")?.getattr("loads")?.unbind(),
                    missing: py.get_type::<PyAny>().call0()?.unbind(),
                    module_type: ty("ModuleType")?,
                    builtin_function_type: ty("BuiltinFunctionType")?,
                })
            };
            read().ok()
        })
        .as_ref()
}

/// A function's bytes and what they were written from.
struct Kept {
    function: Py<PyAny>,
    /// The global names its code uses (valid while `state` holds the same code).
    names: Vec<Py<PyString>>,
    state: Vec<Py<PyAny>>,
    modules: usize,
    /// `None`: a pickle too long to keep.
    pickled: Option<Py<PyBytes>>,
}

/// Functions kept at most; the oldest goes first. (Each is held, with what it
/// captured, until then.)
const KEPT_MAX: usize = 32;
/// Longer pickles are not kept.
const KEPT_BYTES_MAX: usize = 64 * 1024;

static KEPT: PyOnceLock<Mutex<Vec<Kept>>> = PyOnceLock::new();

/// `cloudpickle.dumps(function)`'s bytes, kept from an earlier call while they still
/// hold; `None` when the function is not one to keep (or cloudpickle fails on it).
pub(crate) fn pickled<'py>(function: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, PyBytes>>> {
    let py = function.py();
    let Some(cloud) = cloud(py) else {
        return Ok(None);
    };
    let kept = KEPT.get_or_init(py, || Mutex::new(Vec::new()));
    // (the lock is not held while Python runs)
    let earlier = {
        let kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .find(|k| k.function.bind(py).is(function))
            .map(|k| {
                (
                    k.names.iter().map(|n| n.clone_ref(py)).collect::<Vec<_>>(),
                    k.state
                        .iter()
                        .map(|s| s.bind(py).clone())
                        .collect::<Vec<_>>(),
                    k.modules,
                    k.pickled.as_ref().map(|p| p.clone_ref(py)),
                )
            })
    };
    let modules = modules(py)?.sys_modules.bind(py).len();
    if let Some((names, state, kept_modules, pickled)) = earlier {
        // the same objects, each still immutable or resolving by reference
        let unchanged = kept_modules == modules
            && capture(cloud, function, &names).is_ok_and(|now| {
                now.is_some_and(|now| same(&now, &state) && keepable(cloud, &now).unwrap_or(false))
            });
        if unchanged {
            return Ok(pickled.map(|p| p.into_bound(py)));
        }
    }
    // (re)pickle, and keep the bytes if the function is one to keep; anything raising
    // on the way makes it not one to keep
    let Ok(Some((names, state))) = examine(cloud, function) else {
        return Ok(None);
    };
    let kwargs = PyDict::new(py);
    kwargs.set_item(intern!(py, "protocol"), 5)?;
    let Ok(pickled) = cloud.dumps.bind(py).call((function,), Some(&kwargs)) else {
        return Ok(None);
    };
    let Ok(pickled) = pickled.cast_into_exact::<PyBytes>() else {
        return Ok(None);
    };
    // the capture must still hold after cloudpickle ran (Python code: another thread
    // may have changed a global meanwhile)
    let now = capture(cloud, function, &names).ok().flatten();
    if !now.is_some_and(|now| same(&now, &state)) {
        return Ok(None);
    }
    // A pickle this long is left to cloudpickle whole (the trace writes no such bytes);
    // that is kept too, so that it is not pickled twice for every task.
    let pickled = (pickled.as_bytes().len() < KEPT_BYTES_MAX).then_some(pickled);
    let entry = Kept {
        function: function.clone().unbind(),
        names,
        state: state.into_iter().map(Bound::unbind).collect(),
        modules,
        pickled: pickled.as_ref().map(|p| p.clone().unbind()),
    };
    // what leaves the cache is dropped after the lock is released (dropping a function
    // may run Python code)
    let mut dropped = Vec::new();
    {
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = kept.iter().position(|k| k.function.bind(py).is(function)) {
            dropped.push(kept.remove(i));
        }
        if kept.len() >= KEPT_MAX {
            dropped.push(kept.remove(0));
        }
        kept.push(entry);
    }
    drop(dropped);
    Ok(pickled)
}

/// The same objects, and the annotations and `__dict__` still empty.
fn same(now: &[Bound<'_, PyAny>], kept: &[Bound<'_, PyAny>]) -> bool {
    now.len() == kept.len() && now.iter().zip(kept).all(|(a, b)| a.is(b)) && empty_dicts(now)
}

/// The global names `function`'s code uses and its capture, if it is one to keep.
#[allow(clippy::type_complexity)]
fn examine<'py>(
    cloud: &Cloud,
    function: &Bound<'py, PyAny>,
) -> PyResult<Option<(Vec<Py<PyString>>, Vec<Bound<'py, PyAny>>)>> {
    let py = function.py();
    if !function.get_type().is(modules(py)?.function_type.bind(py)) {
        return Ok(None);
    }
    let code = function.getattr(intern!(py, "__code__"))?;
    let mut names = Vec::new();
    for name in cloud
        .extract_code_globals
        .bind(py)
        .call1((code,))?
        .try_iter()?
    {
        match name?.cast_into_exact::<PyString>() {
            Ok(n) => names.push(n.unbind()),
            Err(_) => return Ok(None),
        }
    }
    let Some(state) = capture(cloud, function, &names)? else {
        return Ok(None);
    };
    Ok(keepable(cloud, &state)?.then_some((names, state)))
}

/// Positions in a capture (the closure's and the globals' values follow).
const CODE: usize = 0;
const GLOBALS: usize = 1;
const KWDEFAULTS: usize = 7;
const CLOSURE: usize = 8;
const ANNOTATIONS: usize = 9;
const DICT: usize = 10;
/// The module attributes cloudpickle gives the function's new globals.
const BASE_GLOBALS: [&str; 4] = ["__package__", "__name__", "__path__", "__file__"];

/// What cloudpickle writes for `function`, as objects: its attributes, its closure's
/// values, then the values of the globals `names` and of `BASE_GLOBALS` (`missing`
/// where there is none). `None` for a function that is not a plain one.
fn capture<'py>(
    cloud: &Cloud,
    function: &Bound<'py, PyAny>,
    names: &[Py<PyString>],
) -> PyResult<Option<Vec<Bound<'py, PyAny>>>> {
    let py = function.py();
    if !function.get_type().is(modules(py)?.function_type.bind(py)) {
        return Ok(None);
    }
    let attrs = [
        intern!(py, "__code__"),
        intern!(py, "__globals__"),
        intern!(py, "__name__"),
        intern!(py, "__qualname__"),
        intern!(py, "__module__"),
        intern!(py, "__doc__"),
        intern!(py, "__defaults__"),
        intern!(py, "__kwdefaults__"),
        intern!(py, "__closure__"),
        intern!(py, "__annotations__"),
        intern!(py, "__dict__"),
    ];
    let mut state = Vec::with_capacity(attrs.len() + names.len() + BASE_GLOBALS.len() + 2);
    for a in attrs {
        state.push(function.getattr(a)?);
    }
    let missing = cloud.missing.bind(py);
    let closure = state[CLOSURE].clone();
    if let Ok(cells) = closure.cast::<PyTuple>() {
        for cell in cells.iter() {
            let value = cell.getattr(intern!(py, "cell_contents"));
            state.push(value.unwrap_or_else(|_| missing.clone()));
        }
    }
    let Ok(globals) = state[GLOBALS].clone().cast_into_exact::<PyDict>() else {
        return Ok(None);
    };
    for name in names {
        state.push(
            globals
                .get_item(name.bind(py))?
                .unwrap_or_else(|| missing.clone()),
        );
    }
    for name in BASE_GLOBALS {
        state.push(globals.get_item(name)?.unwrap_or_else(|| missing.clone()));
    }
    Ok(Some(state))
}

/// The annotations and `__dict__` are still empty dicts (they are mutable).
fn empty_dicts(state: &[Bound<'_, PyAny>]) -> bool {
    [ANNOTATIONS, DICT]
        .iter()
        .all(|&i| state[i].cast_exact::<PyDict>().is_ok_and(|d| d.is_empty()))
}

/// Whether a capture is one whose bytes can be kept: everything in it immutable or
/// pickled by reference, no keyword defaults, empty annotations and `__dict__`.
fn keepable(cloud: &Cloud, state: &[Bound<'_, PyAny>]) -> PyResult<bool> {
    if !state[KWDEFAULTS].is_none() || !empty_dicts(state) {
        return Ok(false);
    }
    for (i, value) in state.iter().enumerate() {
        if matches!(i, CODE | GLOBALS | CLOSURE | ANNOTATIONS | DICT) {
            continue;
        }
        if !immutable(cloud, value, 0)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Immutable (an atom, or a tuple of them), or what cloudpickle pickles by reference
/// (a module in `sys.modules`, a class or function its module gives back).
fn immutable(cloud: &Cloud, value: &Bound<'_, PyAny>, depth: usize) -> PyResult<bool> {
    let py = value.py();
    if value.is_none()
        || value.is(cloud.missing.bind(py))
        || value.is_exact_instance_of::<PyBool>()
        || value.is_exact_instance_of::<PyInt>()
        || value.is_exact_instance_of::<PyFloat>()
        || value.is_exact_instance_of::<PyComplex>()
        || value.is_exact_instance_of::<PyString>()
        || value.is_exact_instance_of::<PyBytes>()
    {
        return Ok(true);
    }
    if let Ok(t) = value.cast_exact::<PyTuple>() {
        if depth >= 8 {
            return Ok(false);
        }
        for item in t.iter() {
            if !immutable(cloud, &item, depth + 1)? {
                return Ok(false);
            }
        }
        return Ok(true);
    }
    let ty = value.get_type();
    if ty.is(cloud.module_type.bind(py)) {
        let name = value.getattr(intern!(py, "__name__"))?;
        return modules(py)?.sys_modules.bind(py).contains(name);
    }
    if ty.is(modules(py)?.function_type.bind(py))
        || ty.is(cloud.builtin_function_type.bind(py))
        || (value.is_instance_of::<PyType>()
            && !cloud.builtin_type_names.bind(py).contains(value)?)
    {
        return by_reference(value);
    }
    Ok(false)
}

/// `module.qualname` outside `__main__` gives back `value` (as cloudpickle and pickle
/// look it up).
fn by_reference(value: &Bound<'_, PyAny>) -> PyResult<bool> {
    let py = value.py();
    let (Some(module), Some(qualname)) = (
        value.getattr_opt(intern!(py, "__module__"))?,
        value.getattr_opt(intern!(py, "__qualname__"))?,
    ) else {
        return Ok(false);
    };
    let (Ok(module_str), Ok(qualname)) = (module.cast::<PyString>(), qualname.cast::<PyString>())
    else {
        return Ok(false);
    };
    if module_str.to_str()? == "__main__" {
        return Ok(false);
    }
    let path = qualname.to_str()?;
    Ok(matches!(
        look_up_global(modules(py)?, value, &module, qualname, path)?,
        Lookup::Found
    ))
}
