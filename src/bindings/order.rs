//! `order_graph`: reads a materialized graph (`Task`/`DataNode`/`Alias` values) into the
//! core's `OrderGraph`, runs `core::order` without the GIL, and builds the dict
//! `dask.order.order` returns. `None` tells the caller to use dask's own.

use crate::core::order::{order, OrderError, OrderGraph};
use crate::core::pyset::PySet;
use hashbrown::HashMap;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFrozenSet, PyList, PyString, PyTuple, PyType};

struct DaskTypes {
    graph_node: Py<PyType>,
    data_node: Py<PyType>,
    order_tuple: Py<PyAny>,
    /// `frozenset().__sizeof__()`: a frozenset's size beyond it is its table.
    frozenset_base_size: usize,
}

static DASK_TYPES: PyOnceLock<DaskTypes> = PyOnceLock::new();

fn dask_types(py: Python<'_>) -> PyResult<&DaskTypes> {
    DASK_TYPES.get_or_try_init(py, || {
        let spec = py.import("dask._task_spec")?;
        let base: usize = PyFrozenSet::empty(py)?
            .call_method0(intern!(py, "__sizeof__"))?
            .extract()?;
        Ok(DaskTypes {
            graph_node: spec.getattr("GraphNode")?.cast_into::<PyType>()?.unbind(),
            data_node: spec.getattr("DataNode")?.cast_into::<PyType>()?.unbind(),
            order_tuple: py.import("dask.order")?.getattr("Order")?.unbind(),
            frozenset_base_size: base,
        })
    })
}

/// What a value's type says: `Some(is_task)` for a `GraphNode`, `None` otherwise.
fn classify(
    value: &Bound<'_, PyAny>,
    types: &DaskTypes,
    seen: &mut HashMap<usize, Option<bool>>,
) -> PyResult<Option<bool>> {
    let ty = value.get_type();
    let ptr = ty.as_ptr() as usize;
    if let Some(&c) = seen.get(&ptr) {
        return Ok(c);
    }
    let py = value.py();
    let c = if ty.is_subclass(types.graph_node.bind(py))? {
        Some(!ty.is_subclass(types.data_node.bind(py))?)
    } else {
        None
    };
    seen.insert(ptr, c);
    Ok(c)
}

fn key_name(key: &Bound<'_, PyAny>) -> PyResult<Option<Box<str>>> {
    let s = match key.cast::<PyString>() {
        Ok(s) if key.is_exact_instance_of::<PyString>() => s.clone(),
        _ => key.str()?,
    };
    // a str that is not valid UTF-8 (lone surrogates) cannot be compared here
    Ok(s.to_str().ok().map(Box::from))
}

/// Reads `dsk`; `None` if a value is not a `GraphNode` with a frozenset of dependencies.
fn read_graph<'py>(
    dsk: &Bound<'py, PyDict>,
    types: &DaskTypes,
) -> PyResult<Option<(OrderGraph, Vec<Bound<'py, PyAny>>)>> {
    let py = dsk.py();
    let n_real = dsk.len();
    let ids = PyDict::new(py);
    let mut keys = Vec::with_capacity(n_real);
    let mut hashes = Vec::with_capacity(n_real);
    let mut is_task = Vec::with_capacity(n_real);
    let mut names = Vec::with_capacity(n_real);
    let mut dep_sets = Vec::with_capacity(n_real);
    let mut seen_types = HashMap::new();
    for (i, (key, value)) in dsk.iter().enumerate() {
        let Some(task) = classify(&value, types, &mut seen_types)? else {
            return Ok(None);
        };
        let deps = value.getattr(intern!(py, "dependencies"))?;
        if !deps.is_exact_instance_of::<PyFrozenSet>() {
            return Ok(None);
        }
        let Some(name) = key_name(&key)? else {
            return Ok(None);
        };
        hashes.push(key.hash()? as i64);
        ids.set_item(&key, i)?;
        is_task.push(task);
        names.push(name);
        dep_sets.push(deps.cast_into::<PyFrozenSet>()?);
        keys.push(key);
    }
    let mut dep_offsets = Vec::with_capacity(n_real + 1);
    let mut dep_ids: Vec<u32> = Vec::new();
    let mut dep_masks = HashMap::new();
    dep_offsets.push(0u32);
    for (i, deps) in dep_sets.iter().enumerate() {
        for dep in deps.iter() {
            let id = match ids.get_item(&dep)? {
                Some(id) => id.extract::<u32>()?,
                None => {
                    // a key only named as a dependency: dask adds a DataNode for it
                    let id = keys.len() as u32;
                    let Some(name) = key_name(&dep)? else {
                        return Ok(None);
                    };
                    hashes.push(dep.hash()? as i64);
                    ids.set_item(&dep, id)?;
                    is_task.push(false);
                    names.push(name);
                    keys.push(dep);
                    id
                }
            };
            dep_ids.push(id);
        }
        if deps.len() >= 5 {
            // the table may be larger than the 8-slot smalltable: its size says by how much
            let size: usize = deps.call_method0(intern!(py, "__sizeof__"))?.extract()?;
            let slots = size.saturating_sub(types.frozenset_base_size) / 16;
            if slots > 0 {
                dep_masks.insert(i as u32, (slots - 1) as u32);
            }
        }
        dep_offsets.push(dep_ids.len() as u32);
    }
    // external keys have no dependencies
    for _ in n_real..keys.len() {
        dep_offsets.push(dep_ids.len() as u32);
    }
    Ok(Some((
        OrderGraph {
            hashes,
            is_task,
            dep_offsets,
            dep_ids,
            dep_masks,
            n_real,
            names,
        },
        keys,
    )))
}

/// `dask.order.order(dsk, return_stats=...)` for a dict of `GraphNode`s, or `None` when
/// the graph has something the Rust order does not reproduce (dask's then runs, and
/// raises its own error for a cyclic graph).
#[pyfunction]
#[pyo3(signature = (dsk, return_stats = false))]
pub fn order_graph<'py>(
    dsk: &Bound<'py, PyDict>,
    return_stats: bool,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let py = dsk.py();
    let types = dask_types(py)?;
    let t0 = std::time::Instant::now();
    let Some((graph, keys)) = read_graph(dsk, types)? else {
        return Ok(None);
    };
    let t1 = std::time::Instant::now();
    let outcome = py.detach(|| order(&graph, return_stats));
    let t2 = std::time::Instant::now();
    if std::env::var_os("RSCHED_ORDER_TIMING").is_some() {
        eprintln!("read {:?} order {:?}", t1 - t0, t2 - t1);
    }
    let assigned = match outcome {
        Ok(a) => a,
        Err(
            OrderError::Cycle
            | OrderError::AmbiguousTie
            | OrderError::Overflow
            | OrderError::Inconsistent(_),
        ) => return Ok(None),
    };
    let result = PyDict::new(py);
    let order_tuple = types.order_tuple.bind(py);
    for a in assigned {
        let key = &keys[a.key as usize];
        if return_stats {
            let cp: Bound<'_, PyAny> = if a.critical_path2 % 2 == 0 {
                (a.critical_path2 / 2).into_pyobject(py)?.into_any()
            } else {
                (a.critical_path2 as f64 / 2.0)
                    .into_pyobject(py)?
                    .into_any()
            };
            result.set_item(key, order_tuple.call1((a.priority, cp))?)?;
        } else {
            result.set_item(key, a.priority)?;
        }
    }
    Ok(Some(result))
}

/// The iteration order of a set after `ops` ((op, int) pairs: 0 add, 1 discard, 2 pop),
/// as the engine's CPython set layout gives it: checked against a real set at first use.
#[pyfunction]
pub fn pyset_order<'py>(py: Python<'py>, ops: Vec<(u8, i64)>) -> PyResult<Bound<'py, PyList>> {
    let mut s: PySet<i64> = PySet::new();
    let mut popped = Vec::new();
    for (op, v) in ops {
        // an int hashes to itself (except -1)
        let h = if v == -1 { -2 } else { v };
        match op {
            0 => {
                s.insert(v, h);
            }
            1 => {
                s.remove(v, h);
            }
            _ => popped.extend(s.pop()),
        }
    }
    let order: Vec<i64> = s.iter().collect();
    PyList::new(py, [PyTuple::new(py, order)?, PyTuple::new(py, popped)?])
}
