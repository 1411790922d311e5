//! `pickle.dumps(obj, protocol=5)` traced in Rust as CPython 3.11's `_pickle` runs it,
//! for what run_specs hold: the same opcodes, memo (by object identity, every memoized
//! object kept alive until the end as the C pickler keeps it) and framing; objects are
//! reduced as `_pickle` reduces them (`__reduce_ex__(5)`, globals checked against
//! their modules), so dask's `Task.__getstate__` and `TaskRef.__reduce__` decide what
//! is written. `dumps_py` (tests) checks the trace byte for byte against `pickle`.
//!
//! The wire encoder uses it to tell, after `pickle.dumps` failed, that the failure is a
//! global that does not resolve (a client's `__main__` function, say) and which objects
//! `_pickle` asked a `reducer_override` about before it: if distributed's `_DaskPickler`
//! would pass all of them on, it fails the same way, and distributed's `dumps` ends in
//! `cloudpickle.dumps`, which the encoder then calls at once.
//!
//! dask's own graph nodes (`Task`, `TaskRef`, `DataNode`, `Alias`) are reduced without
//! calling their Python reduce methods: `Known` builds the tuple those methods return,
//! from the same slots, once a first object of the type showed that it is the same
//! tuple. That makes the trace quicker than `_pickle` on run_specs, and the wire
//! encoder pickles run_specs with it (`dumps`), `pickle` itself for anything else.
//!
//! Anything outside what is traced (a `copyreg` dispatch entry or extension code, list
//! or dict items from a reduce, `__newobj_ex__`, out-of-band buffers, a module not yet
//! imported, a pickle of 64 KiB or more, deep nesting) stops the trace undecided.

use std::sync::{Arc, Mutex};

use super::by_value;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyFrozenSet, PyInt, PyList, PySet, PyString,
    PyTuple, PyType,
};

const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const POP: u8 = b'0';
const POP_MARK: u8 = b'1';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const BININT: u8 = b'J';
const LONG1: u8 = 0x8a;
const BINFLOAT: u8 = b'G';
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const SHORT_BINUNICODE: u8 = 0x8c;
const BINUNICODE: u8 = b'X';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const EMPTY_LIST: u8 = b']';
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const EMPTY_DICT: u8 = b'}';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const EMPTY_SET: u8 = 0x8f;
const ADDITEMS: u8 = 0x90;
const FROZENSET: u8 = 0x91;
const STACK_GLOBAL: u8 = 0x93;
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const REDUCE: u8 = b'R';
const NEWOBJ: u8 = 0x81;
const BUILD: u8 = b'b';

/// `_pickle`'s batch size for list, dict and set items.
const BATCHSIZE: usize = 1000;
/// A frame this long would be split by `_pickle`; such pickles are left to it.
const FRAME_SIZE_TARGET: usize = 64 * 1024;
/// `_pickle` writes no frame header for fewer bytes.
const FRAME_SIZE_MIN: usize = 4;
/// Deeper values are left to `_pickle` (which raises `RecursionError` far deeper).
const MAX_DEPTH: usize = 200;

/// Why a trace stopped.
#[derive(Debug, PartialEq)]
enum Stop {
    /// Outside what is traced: `pickle` may succeed or fail.
    Unsupported,
    /// A global that does not resolve to itself: `pickle` raises `PicklingError`.
    GlobalFails,
}

use Stop::Unsupported;

type Out = Result<(), Stop>;

/// A trace: `pickle.dumps`'s bytes or why it stopped, and the types `_pickle` would
/// have offered a `reducer_override` on the way.
type Trace<'py> = (Result<Vec<u8>, Stop>, Vec<Bound<'py, PyType>>);

pub(crate) struct Modules {
    /// `copyreg.dispatch_table`
    dispatch_table: Py<PyDict>,
    /// `copyreg._extension_registry`
    extension_registry: Py<PyDict>,
    pub(crate) sys_modules: Py<PyDict>,
    /// `types.FunctionType`
    pub(crate) function_type: Py<PyType>,
    /// `pickle.PickleBuffer`
    pickle_buffer_type: Py<PyType>,
}

static MODULES: PyOnceLock<Modules> = PyOnceLock::new();

pub(crate) fn modules(py: Python<'_>) -> PyResult<&Modules> {
    MODULES.get_or_try_init(py, || -> PyResult<_> {
        let copyreg = py.import("copyreg")?;
        Ok(Modules {
            dispatch_table: copyreg
                .getattr("dispatch_table")?
                .cast_into::<PyDict>()?
                .unbind(),
            extension_registry: copyreg
                .getattr("_extension_registry")?
                .cast_into::<PyDict>()?
                .unbind(),
            sys_modules: py
                .import("sys")?
                .getattr("modules")?
                .cast_into::<PyDict>()?
                .unbind(),
            function_type: py
                .import("types")?
                .getattr("FunctionType")?
                .cast_into::<PyType>()?
                .unbind(),
            pickle_buffer_type: py
                .import("pickle")?
                .getattr("PickleBuffer")?
                .cast_into::<PyType>()?
                .unbind(),
        })
    })
}

/// How `object.__reduce_ex__(5)` reduces one of dask's graph node types, read from the
/// method it would call.
enum NodeReduction {
    /// Not one of them, or a first object showed a different result: `__reduce_ex__`.
    Call,
    /// `Task.__getstate__`: `(copyreg.__newobj__, (cls,), (slots' values...), None,
    /// None)`, the slots as `cls.get_all_slots()` lists them.
    State(Vec<Py<PyString>>),
    /// A `__reduce__` returning `(callable, (attrs' values...))`: the index in
    /// `Known::reducers`.
    Reduce(usize),
}

/// A `__reduce__` of dask's: the function, what it returns as callable, and the
/// attributes whose values are its arguments.
struct Reducer {
    function: Py<PyAny>,
    callable: Py<PyAny>,
    attrs: Vec<Py<PyString>>,
}

/// Each type's verdict by its address, with the type (held so that its address is not
/// reused).
type Verdicts = hashbrown::HashMap<usize, (Py<PyType>, Arc<NodeReduction>)>;

/// dask's graph node reductions (none if `dask._task_spec` does not import or does not
/// look as expected), and each type's verdict.
struct Known {
    newobj: Py<PyAny>,
    object_reduce_ex: Py<PyAny>,
    object_reduce: Py<PyAny>,
    task_getstate: Option<Py<PyAny>>,
    reducers: Vec<Reducer>,
    types: Mutex<Verdicts>,
}

static KNOWN: PyOnceLock<Known> = PyOnceLock::new();

fn known(py: Python<'_>) -> PyResult<&Known> {
    KNOWN.get_or_try_init(py, || -> PyResult<_> {
        let object = py.get_type::<pyo3::types::PyAny>();
        let mut known = Known {
            newobj: py.import("copyreg")?.getattr("__newobj__")?.unbind(),
            object_reduce_ex: object.getattr("__reduce_ex__")?.unbind(),
            object_reduce: object.getattr("__reduce__")?.unbind(),
            task_getstate: None,
            reducers: Vec::new(),
            types: Mutex::new(hashbrown::HashMap::new()),
        };
        let Ok(spec) = py.import("dask._task_spec") else {
            return Ok(known);
        };
        let own = |class: &str, method: &str| -> Option<Bound<'_, PyAny>> {
            let cls = spec.getattr(class).ok()?;
            cls.getattr("__dict__").ok()?.get_item(method).ok()
        };
        known.task_getstate = own("Task", "__getstate__").map(Bound::unbind);
        for (class, attrs) in [
            ("TaskRef", &["key"][..]),
            ("DataNode", &["key", "value"][..]),
            ("Alias", &["key", "target"][..]),
        ] {
            if let (Some(function), Ok(callable)) = (own(class, "__reduce__"), spec.getattr(class))
            {
                known.reducers.push(Reducer {
                    function: function.unbind(),
                    callable: callable.unbind(),
                    attrs: attrs
                        .iter()
                        .map(|a| PyString::intern(py, a).unbind())
                        .collect(),
                });
            }
        }
        Ok(known)
    })
}

/// How `Known::reduce` says a graph node reduces.
enum Reduced<'py> {
    /// A first object of its type: the reduce value, checked against the method's.
    Tuple(Bound<'py, PyTuple>),
    /// As its type's first object showed: written without making the value
    /// (`Pickler::save_known`).
    Known(Arc<NodeReduction>),
}

impl Known {
    /// How `obj.__reduce_ex__(5)` reduces `obj`, from its slots, when `obj` is one of
    /// dask's graph nodes whose type's first object gave the same; `None` to call
    /// `__reduce_ex__`.
    fn reduce<'py>(
        &self,
        obj: &Bound<'py, PyAny>,
        ty: &Bound<'py, PyType>,
    ) -> PyResult<Option<Reduced<'py>>> {
        let py = obj.py();
        if self.task_getstate.is_none() && self.reducers.is_empty() {
            return Ok(None);
        }
        // what `__reduce_ex__` would call, looked up on the type each time
        if !ty
            .getattr(intern!(py, "__reduce_ex__"))?
            .is(&self.object_reduce_ex)
        {
            return Ok(None);
        }
        let reduce = ty.getattr(intern!(py, "__reduce__"))?;
        let kind = if reduce.is(&self.object_reduce) {
            let getstate = ty.getattr(intern!(py, "__getstate__"))?;
            match &self.task_getstate {
                Some(f) if getstate.is(f) => None,
                _ => return Ok(None),
            }
        } else {
            match self.reducers.iter().position(|r| reduce.is(&r.function)) {
                Some(i) => Some(i),
                None => return Ok(None),
            }
        };
        let key = ty.as_ptr() as usize;
        // (the lock is not held while Python runs: a slot's getter may pickle)
        let verdict = {
            let types = self.types.lock().unwrap_or_else(|e| e.into_inner());
            types.get(&key).map(|(_, v)| Arc::clone(v))
        };
        if let Some(verdict) = verdict {
            // the verdict holds while the type still reduces by the method it was for
            return Ok(match (&*verdict, kind) {
                (NodeReduction::State(_), None) => Some(Reduced::Known(verdict)),
                (NodeReduction::Reduce(i), Some(j)) if *i == j => Some(Reduced::Known(verdict)),
                _ => None,
            });
        }
        // a first object of the type: our tuple must be the one the method returns
        let verdict = match kind {
            None => {
                let slots = ty.call_method0(intern!(py, "get_all_slots"))?;
                let mut names = Vec::new();
                for slot in slots.try_iter()? {
                    match slot?.cast_into_exact::<PyString>() {
                        Ok(s) => names.push(s.unbind()),
                        Err(_) => return self.settle(ty, NodeReduction::Call),
                    }
                }
                NodeReduction::State(names)
            }
            Some(i) => NodeReduction::Reduce(i),
        };
        let Some(ours) = self.build(obj, ty, &verdict)? else {
            // a slot unset: this object tells nothing of the type
            return Ok(None);
        };
        let theirs = obj.call_method1(intern!(py, "__reduce_ex__"), (5,));
        if !theirs.is_ok_and(|b| same_objects(ours.as_any(), &b).unwrap_or(false)) {
            return self.settle(ty, NodeReduction::Call);
        }
        self.settle(ty, verdict)?;
        Ok(Some(Reduced::Tuple(ours)))
    }

    fn settle<'py>(
        &self,
        ty: &Bound<'py, PyType>,
        verdict: NodeReduction,
    ) -> PyResult<Option<Reduced<'py>>> {
        let mut types = self.types.lock().unwrap_or_else(|e| e.into_inner());
        types.insert(
            ty.as_ptr() as usize,
            (ty.clone().unbind(), Arc::new(verdict)),
        );
        Ok(None)
    }

    /// The reduce tuple of `verdict` for `obj`; `None` when a slot or attribute is
    /// missing (the method raises: `_pickle` is left to say how).
    fn build<'py>(
        &self,
        obj: &Bound<'py, PyAny>,
        ty: &Bound<'py, PyType>,
        verdict: &NodeReduction,
    ) -> PyResult<Option<Bound<'py, PyTuple>>> {
        let py = obj.py();
        let values = |names: &[Py<PyString>]| -> Option<Bound<'py, PyTuple>> {
            let mut values = Vec::with_capacity(names.len());
            for name in names {
                values.push(obj.getattr(name.bind(py)).ok()?);
            }
            PyTuple::new(py, values).ok()
        };
        Ok(match verdict {
            NodeReduction::Call => None,
            NodeReduction::State(slots) => match values(slots) {
                Some(state) => Some(PyTuple::new(
                    py,
                    [
                        self.newobj.bind(py).clone(),
                        PyTuple::new(py, [ty.as_any()])?.into_any(),
                        state.into_any(),
                        py.None().into_bound(py),
                        py.None().into_bound(py),
                    ],
                )?),
                None => None,
            },
            NodeReduction::Reduce(i) => {
                let r = &self.reducers[*i];
                match values(&r.attrs) {
                    Some(args) => Some(PyTuple::new(
                        py,
                        [r.callable.bind(py).clone(), args.into_any()],
                    )?),
                    None => None,
                }
            }
        })
    }
}

/// A qualified name's parts as interned strings, remembered by the name's object (the
/// name held, so that its address is not reused): globals are looked up by the same
/// names pickle after pickle.
type Paths = hashbrown::HashMap<usize, (Py<PyString>, Arc<[Py<PyString>]>)>;

static PATHS: PyOnceLock<Mutex<Paths>> = PyOnceLock::new();

/// More qualified names than any program's globals: the cache starts over.
const MAX_PATHS: usize = 4096;

fn dotted_path(qualname: &Bound<'_, PyString>, path: &str) -> Arc<[Py<PyString>]> {
    let py = qualname.py();
    let paths = PATHS.get_or_init(py, || Mutex::new(Paths::new()));
    let key = qualname.as_ptr() as usize;
    let mut paths = paths.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, parts)) = paths.get(&key) {
        return Arc::clone(parts);
    }
    if paths.len() >= MAX_PATHS {
        paths.clear();
    }
    let parts: Arc<[Py<PyString>]> = path
        .split('.')
        .map(|p| PyString::intern(py, p).unbind())
        .collect();
    paths.insert(key, (qualname.clone().unbind(), Arc::clone(&parts)));
    parts
}

/// Where `save_global`'s lookup of a global leads.
pub(crate) enum Lookup {
    /// The module is not in `sys.modules` (`_pickle` would import it).
    NoModule,
    /// `_pickle` raises `PicklingError`: a name missing, `<locals>`, another object.
    Fails,
    /// `module.qualname` is the object.
    Found,
}

/// `_pickle`'s `save_global` lookup of `obj` as `module_name.qualname` (`path` its
/// text): `sys.modules`, `get_dotted_path`, `get_deep_attribute` and the identity check.
pub(crate) fn look_up_global(
    modules: &Modules,
    obj: &Bound<'_, PyAny>,
    module_name: &Bound<'_, PyAny>,
    qualname: &Bound<'_, PyString>,
    path: &str,
) -> PyResult<Lookup> {
    let py = obj.py();
    let Some(mut found) = modules.sys_modules.bind(py).get_item(module_name)? else {
        return Ok(Lookup::NoModule);
    };
    for part in dotted_path(qualname, path).iter() {
        let part = part.bind(py);
        if part.to_str()? == "<locals>" {
            return Ok(Lookup::Fails);
        }
        match found.getattr_opt(part)? {
            Some(next) => found = next,
            None => return Ok(Lookup::Fails),
        }
    }
    Ok(if found.is(obj) {
        Lookup::Found
    } else {
        Lookup::Fails
    })
}

/// Tuples of the same length whose items are the same objects (tuples compared the
/// same way): what the checks of `Known::reduce` accept as the same reduce value.
fn same_objects(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> PyResult<bool> {
    if a.is(b) {
        return Ok(true);
    }
    let (Ok(a), Ok(b)) = (a.cast_exact::<PyTuple>(), b.cast_exact::<PyTuple>()) else {
        return Ok(false);
    };
    if a.len() != b.len() {
        return Ok(false);
    }
    for (x, y) in a.iter().zip(b.iter()) {
        if !same_objects(&x, &y)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `self.save(obj)`, returning the stop of a trace that stopped inside it.
macro_rules! save {
    ($p:expr, $obj:expr) => {
        if let Err(stop) = $p.save($obj)? {
            return Ok(Err(stop));
        }
    };
}

struct Pickler<'py> {
    py: Python<'py>,
    out: Vec<u8>,
    /// Object address -> memo index.
    memo: hashbrown::HashMap<usize, u32>,
    /// The next memo index (`_pickle` memoizes tuples `Known` never makes, too).
    memo_next: u32,
    /// What the memo names, alive until the end (as `_pickle`'s memo holds them), so
    /// that no address is reused by another object meanwhile.
    alive: Vec<Bound<'py, PyAny>>,
    modules: &'py Modules,
    known: &'py Known,
    depth: usize,
    /// The type of each object `_pickle` asks a `reducer_override` about, in order.
    overridable: Vec<Bound<'py, PyType>>,
    /// Set when functions are written by value (`dumps_by_value`).
    by_value: Option<ByValue<'py>>,
}

/// `dumps_by_value`'s part of a trace: cloudpickle's parts, and the one function
/// written by value so far.
struct ByValue<'py> {
    cloud: &'py by_value::Cloud,
    function: Option<Bound<'py, PyAny>>,
}

/// The trace of `pickle.dumps(obj, protocol=5)`.
fn trace<'py>(
    obj: &Bound<'py, PyAny>,
    by_value: Option<&'py by_value::Cloud>,
) -> PyResult<Trace<'py>> {
    let py = obj.py();
    let m = modules(py)?;
    if !m.extension_registry.bind(py).is_empty() {
        return Ok((Err(Unsupported), Vec::new()));
    }
    let mut p = Pickler {
        py,
        out: Vec::with_capacity(192),
        memo: hashbrown::HashMap::with_capacity(32),
        memo_next: 0,
        alive: Vec::new(),
        modules: m,
        known: known(py)?,
        depth: 0,
        overridable: Vec::new(),
        by_value: by_value.map(|cloud| ByValue {
            cloud,
            function: None,
        }),
    };
    // PROTO 5, then one frame (its header written once its length is known)
    p.out.extend([PROTO, 5, FRAME, 0, 0, 0, 0, 0, 0, 0, 0]);
    if let Err(stop) = p.save(obj)? {
        return Ok((Err(stop), p.overridable));
    }
    p.out.push(STOP);
    let frame_len = p.out.len() - 11;
    if frame_len >= FRAME_SIZE_TARGET {
        return Ok((Err(Unsupported), p.overridable));
    }
    if frame_len >= FRAME_SIZE_MIN {
        p.out[3..11].copy_from_slice(&(frame_len as u64).to_le_bytes());
    } else {
        p.out.drain(2..11);
    }
    Ok((Ok(p.out), p.overridable))
}

impl<'py> Pickler<'py> {
    fn memo_get(&mut self, idx: u32) {
        if let Ok(i) = u8::try_from(idx) {
            self.out.extend([BINGET, i]);
        } else {
            self.out.push(LONG_BINGET);
            self.out.extend(idx.to_le_bytes());
        }
    }

    fn memoized(&self, obj: &Bound<'py, PyAny>) -> Option<u32> {
        self.memo.get(&(obj.as_ptr() as usize)).copied()
    }

    fn memo_put(&mut self, obj: &Bound<'py, PyAny>) {
        self.memo.insert(obj.as_ptr() as usize, self.memo_next);
        self.memo_next += 1;
        self.alive.push(obj.clone());
        self.out.push(MEMOIZE);
    }

    /// `save_tuple` of a tuple made only for the reduction (no other object is it, so
    /// its memo entry is never read): the items, TUPLE1-3 or MARK ... TUPLE, MEMOIZE.
    fn save_fresh_tuple(&mut self, items: &[Bound<'py, PyAny>]) -> PyResult<Out> {
        if self.depth >= MAX_DEPTH {
            return Ok(Err(Unsupported));
        }
        let n = items.len();
        if n == 0 {
            self.out.push(EMPTY_TUPLE);
            return Ok(Ok(()));
        }
        self.depth += 1;
        if n > 3 {
            self.out.push(MARK);
        }
        for item in items {
            if let Err(stop) = self.save(item)? {
                self.depth -= 1;
                return Ok(Err(stop));
            }
        }
        self.depth -= 1;
        self.out
            .push(if n > 3 { TUPLE } else { TUPLE1 + (n as u8 - 1) });
        self.memo_next += 1;
        self.out.push(MEMOIZE);
        Ok(Ok(()))
    }

    /// What `save_reduce` writes for the reduce value `verdict` gives `obj` (one of
    /// dask's graph nodes), without making its tuples; `None` when a slot or attribute
    /// is missing (the method raises: `_pickle` is left to say how).
    fn save_known(
        &mut self,
        obj: &Bound<'py, PyAny>,
        ty: &Bound<'py, PyType>,
        verdict: &NodeReduction,
    ) -> PyResult<Option<Out>> {
        let py = self.py;
        let values = |names: &[Py<PyString>]| -> Option<Vec<Bound<'py, PyAny>>> {
            names.iter().map(|n| obj.getattr(n.bind(py)).ok()).collect()
        };
        Ok(Some(match verdict {
            NodeReduction::Call => return Ok(None),
            NodeReduction::State(slots) => {
                // (copyreg.__newobj__, (cls,), (slots' values...), None, None)
                let Some(state) = values(slots) else {
                    return Ok(None);
                };
                if !obj.getattr(intern!(py, "__class__"))?.is(ty) {
                    return Ok(Some(Err(Unsupported)));
                }
                if let Err(stop) = self.save(ty.as_any())? {
                    return Ok(Some(Err(stop)));
                }
                self.out.extend([EMPTY_TUPLE, NEWOBJ]);
                if let Some(idx) = self.memoized(obj) {
                    self.out.push(POP);
                    self.memo_get(idx);
                    return Ok(Some(Ok(())));
                }
                self.memo_put(obj);
                if let Err(stop) = self.save_fresh_tuple(&state)? {
                    return Ok(Some(Err(stop)));
                }
                self.out.push(BUILD);
                Ok(())
            }
            NodeReduction::Reduce(i) => {
                // (cls, (attrs' values...))
                let r = &self.known.reducers[*i];
                let Some(args) = values(&r.attrs) else {
                    return Ok(None);
                };
                if let Err(stop) = self.save(r.callable.bind(py))? {
                    return Ok(Some(Err(stop)));
                }
                if let Err(stop) = self.save_fresh_tuple(&args)? {
                    return Ok(Some(Err(stop)));
                }
                self.out.push(REDUCE);
                if let Some(idx) = self.memoized(obj) {
                    self.out.push(POP);
                    self.memo_get(idx);
                    return Ok(Some(Ok(())));
                }
                self.memo_put(obj);
                Ok(())
            }
        }))
    }

    /// `save`: atoms, then the memo, then str and bytes, containers, globals and
    /// reductions, in `_pickle`'s order.
    fn save(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Out> {
        if self.depth >= MAX_DEPTH {
            return Ok(Err(Unsupported));
        }
        self.depth += 1;
        let r = self.save_at_depth(obj);
        self.depth -= 1;
        r
    }

    fn save_at_depth(&mut self, obj: &Bound<'py, PyAny>) -> PyResult<Out> {
        let py = self.py;
        if obj.is_none() {
            self.out.push(NONE);
            return Ok(Ok(()));
        }
        if let Ok(b) = obj.cast_exact::<PyBool>() {
            self.out.push(if b.is_true() { NEWTRUE } else { NEWFALSE });
            return Ok(Ok(()));
        }
        if obj.cast_exact::<PyInt>().is_ok() {
            return Ok(self.save_long(obj));
        }
        if let Ok(f) = obj.cast_exact::<PyFloat>() {
            self.out.push(BINFLOAT);
            self.out.extend(f.value().to_be_bytes());
            return Ok(Ok(()));
        }
        if let Some(idx) = self.memoized(obj) {
            self.memo_get(idx);
            return Ok(Ok(()));
        }
        if let Ok(b) = obj.cast_exact::<PyBytes>() {
            let data = b.as_bytes();
            return Ok(self.save_data(obj, data, SHORT_BINBYTES, BINBYTES));
        }
        if let Ok(s) = obj.cast_exact::<PyString>() {
            // `surrogatepass` strings are left to pickle
            let Ok(text) = s.to_str() else {
                return Ok(Err(Unsupported));
            };
            return Ok(self.save_data(obj, text.as_bytes(), SHORT_BINUNICODE, BINUNICODE));
        }
        if let Ok(d) = obj.cast_exact::<PyDict>() {
            return self.save_dict(d);
        }
        if let Ok(s) = obj.cast_exact::<PySet>() {
            return self.save_set(s);
        }
        if let Ok(s) = obj.cast_exact::<PyFrozenSet>() {
            return self.save_frozenset(s);
        }
        if let Ok(l) = obj.cast_exact::<PyList>() {
            return self.save_list(l);
        }
        if let Ok(t) = obj.cast_exact::<PyTuple>() {
            return self.save_tuple(t);
        }
        let ty = obj.get_type();
        // `_pickle` writes these with opcodes of their own (out-of-band buffers too)
        if ty.is(py.get_type::<PyByteArray>()) || ty.is(self.modules.pickle_buffer_type.bind(py)) {
            return Ok(Err(Unsupported));
        }
        // here `_pickle` would ask a `reducer_override`
        self.overridable.push(ty.clone());
        if let Some(bv) = &self.by_value {
            // what cloudpickle's pickler reduces its own way is left to it
            let cloud = bv.cloud;
            if cloud.dispatch_table.bind(py).contains(&ty)?
                || (obj.is_instance_of::<PyType>()
                    && cloud.builtin_type_names.bind(py).contains(obj)?)
            {
                return Ok(Err(Unsupported));
            }
        }
        if ty.is(py.get_type::<PyType>()) {
            // `save_type`: the three singleton types are reduced specially
            let t = obj.cast::<PyType>()?;
            if t.is(py.None().bind(py).get_type())
                || t.is(py.NotImplemented().bind(py).get_type())
                || t.is(py.Ellipsis().bind(py).get_type())
            {
                return Ok(Err(Unsupported));
            }
            return self.save_global(obj, None);
        }
        if ty.is(self.modules.function_type.bind(py)) {
            let saved = self.save_global(obj, None)?;
            if saved == Err(Stop::GlobalFails) && self.by_value.is_some() {
                return self.save_by_value(obj);
            }
            return Ok(saved);
        }
        if self.modules.dispatch_table.bind(py).contains(&ty)? {
            return Ok(Err(Unsupported));
        }
        if obj.is_instance_of::<PyType>() {
            return self.save_global(obj, None);
        }
        match self.known.reduce(obj, &ty)? {
            Some(Reduced::Tuple(rv)) => return self.save_reduce(&rv, obj),
            Some(Reduced::Known(verdict)) => {
                if let Some(out) = self.save_known(obj, &ty, &verdict)? {
                    return Ok(out);
                }
            }
            None => {}
        }
        let Ok(reduced) = obj
            .getattr(intern!(py, "__reduce_ex__"))
            .and_then(|f| f.call1((5,)))
        else {
            return Ok(Err(Unsupported));
        };
        if let Ok(name) = reduced.cast_exact::<PyString>() {
            return self.save_global(obj, Some(name));
        }
        let Ok(rv) = reduced.cast_exact::<PyTuple>() else {
            return Ok(Err(Unsupported));
        };
        self.save_reduce(rv, obj)
    }

    /// bytes or str data: a 1-byte length under 256 bytes, else 4 bytes; memoized.
    fn save_data(&mut self, obj: &Bound<'py, PyAny>, data: &[u8], short: u8, long: u8) -> Out {
        if data.len() >= FRAME_SIZE_TARGET {
            return Err(Unsupported);
        }
        if let Ok(n) = u8::try_from(data.len()) {
            self.out.extend([short, n]);
        } else {
            self.out.push(long);
            self.out.extend((data.len() as u32).to_le_bytes());
        }
        self.out.extend_from_slice(data);
        self.memo_put(obj);
        Ok(())
    }

    /// `save_long`: BININT1/2/4 in a signed 32-bit range, else LONG1.
    fn save_long(&mut self, obj: &Bound<'py, PyAny>) -> Out {
        let Ok(v) = obj.extract::<i64>() else {
            return Err(Unsupported);
        };
        if let Ok(v32) = i32::try_from(v) {
            let b = v32.to_le_bytes();
            if b[2] != 0 || b[3] != 0 {
                self.out.push(BININT);
                self.out.extend(b);
            } else if b[1] != 0 {
                self.out.extend([BININT2, b[0], b[1]]);
            } else {
                self.out.extend([BININT1, b[0]]);
            }
            return Ok(());
        }
        // (bits of |v|) / 8 + 1 bytes of little-endian two's complement, one fewer for
        // a negative value whose top byte is only sign
        let nbits = 64 - v.unsigned_abs().leading_zeros() as usize;
        let mut nbytes = nbits / 8 + 1;
        let bytes = i128::from(v).to_le_bytes();
        if v < 0 && nbytes > 1 && bytes[nbytes - 1] == 0xff && bytes[nbytes - 2] & 0x80 != 0 {
            nbytes -= 1;
        }
        self.out.extend([LONG1, nbytes as u8]);
        self.out.extend_from_slice(&bytes[..nbytes]);
        Ok(())
    }

    /// `save_tuple`: TUPLE1-3 up to three elements, else MARK ... TUPLE; a tuple the
    /// elements memoized (a cycle) is fetched from the memo instead.
    fn save_tuple(&mut self, t: &Bound<'py, PyTuple>) -> PyResult<Out> {
        let n = t.len();
        if n == 0 {
            self.out.push(EMPTY_TUPLE);
            return Ok(Ok(()));
        }
        let obj = t.as_any();
        if n > 3 {
            self.out.push(MARK);
        }
        for item in t.iter() {
            save!(self, &item);
        }
        if let Some(idx) = self.memoized(obj) {
            if n > 3 {
                self.out.push(POP_MARK);
            } else {
                self.out.extend(std::iter::repeat_n(POP, n));
            }
            self.memo_get(idx);
            return Ok(Ok(()));
        }
        self.out
            .push(if n > 3 { TUPLE } else { TUPLE1 + (n as u8 - 1) });
        self.memo_put(obj);
        Ok(Ok(()))
    }

    /// `save_list`: EMPTY_LIST, then one APPEND or batches of APPENDS.
    fn save_list(&mut self, l: &Bound<'py, PyList>) -> PyResult<Out> {
        self.out.push(EMPTY_LIST);
        self.memo_put(l.as_any());
        let n = l.len();
        if n == 1 {
            save!(self, &l.get_item(0)?);
            self.out.push(APPEND);
            return Ok(Ok(()));
        }
        let mut total = 0;
        while total < l.len() {
            self.out.push(MARK);
            let mut batch = 0;
            while total < l.len() {
                save!(self, &l.get_item(total)?);
                total += 1;
                batch += 1;
                if batch == BATCHSIZE {
                    break;
                }
            }
            self.out.push(APPENDS);
        }
        Ok(Ok(()))
    }

    /// `save_dict`: EMPTY_DICT, then one SETITEM or batches of SETITEMS (an empty
    /// batch after a full last one, as `_pickle` writes it).
    fn save_dict(&mut self, d: &Bound<'py, PyDict>) -> PyResult<Out> {
        self.out.push(EMPTY_DICT);
        self.memo_put(d.as_any());
        let size = d.len();
        if size == 0 {
            return Ok(Ok(()));
        }
        let items: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)> = d.iter().collect();
        if size == 1 {
            let (k, v) = &items[0];
            save!(self, k);
            save!(self, v);
            self.out.push(SETITEM);
            return Ok(Ok(()));
        }
        let flat: Vec<Bound<'py, PyAny>> = items.into_iter().flat_map(|(k, v)| [k, v]).collect();
        self.batches(&flat, 2, SETITEMS, || d.len() == size)
    }

    /// `save_set`: EMPTY_SET, then batches of ADDITEMS.
    fn save_set(&mut self, s: &Bound<'py, PySet>) -> PyResult<Out> {
        self.out.push(EMPTY_SET);
        self.memo_put(s.as_any());
        let size = s.len();
        if size == 0 {
            return Ok(Ok(()));
        }
        let items: Vec<Bound<'py, PyAny>> = s.iter().collect();
        self.batches(&items, 1, ADDITEMS, || s.len() == size)
    }

    /// `objs` (`per` to an entry) in batches of BATCHSIZE entries between MARK and
    /// `op`, with an empty batch after a full last one, as `_pickle` batches dict and
    /// set items; the container must keep its size (`unchanged`).
    fn batches(
        &mut self,
        objs: &[Bound<'py, PyAny>],
        per: usize,
        op: u8,
        unchanged: impl Fn() -> bool,
    ) -> PyResult<Out> {
        let mut chunks = objs.chunks(per * BATCHSIZE);
        loop {
            self.out.push(MARK);
            let chunk = chunks.next().unwrap_or(&[]);
            for o in chunk {
                save!(self, o);
            }
            self.out.push(op);
            if !unchanged() {
                return Ok(Err(Unsupported));
            }
            if chunk.len() != per * BATCHSIZE {
                return Ok(Ok(()));
            }
        }
    }

    /// `save_frozenset`: MARK, the items, FROZENSET (or the memo's copy of a cycle).
    fn save_frozenset(&mut self, s: &Bound<'py, PyFrozenSet>) -> PyResult<Out> {
        self.out.push(MARK);
        for item in s.iter() {
            save!(self, &item);
        }
        if let Some(idx) = self.memoized(s.as_any()) {
            self.out.push(POP_MARK);
            self.memo_get(idx);
            return Ok(Ok(()));
        }
        self.out.push(FROZENSET);
        self.memo_put(s.as_any());
        Ok(Ok(()))
    }

    /// `save_global`: module and qualified name, checked to give back `obj`, as
    /// STACK_GLOBAL.
    fn save_global(
        &mut self,
        obj: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyString>>,
    ) -> PyResult<Out> {
        let py = self.py;
        let global_name = match name {
            Some(n) => n.clone().into_any(),
            None => match obj.getattr_opt(intern!(py, "__qualname__"))? {
                Some(n) => n,
                None => match obj.getattr_opt(intern!(py, "__name__"))? {
                    Some(n) => n,
                    None => return Ok(Err(Unsupported)),
                },
            },
        };
        let Ok(qualname) = global_name.cast_exact::<PyString>() else {
            return Ok(Err(Unsupported));
        };
        let Ok(path) = qualname.to_str() else {
            return Ok(Err(Unsupported));
        };
        // `whichmodule`: `__module__`, unless missing or None (then sys.modules is searched)
        let Some(module_name) = obj.getattr_opt(intern!(py, "__module__"))? else {
            return Ok(Err(Unsupported));
        };
        let Ok(module_str) = module_name.cast_exact::<PyString>() else {
            return Ok(Err(Unsupported));
        };
        // cloudpickle writes what `__main__` names by value, whether or not it resolves
        if self.by_value.is_some() && module_str.to_str().is_ok_and(|m| m == "__main__") {
            return Ok(Err(Stop::GlobalFails));
        }
        match look_up_global(self.modules, obj, &module_name, qualname, path)? {
            Lookup::NoModule => return Ok(Err(Unsupported)),
            Lookup::Fails => return Ok(Err(Stop::GlobalFails)),
            Lookup::Found => {}
        }
        save!(self, &module_name);
        save!(self, &global_name);
        self.out.push(STACK_GLOBAL);
        self.memo_put(obj);
        Ok(Ok(()))
    }

    /// A function cloudpickle writes by value, as `pickle.loads(<its bytes>)`; only
    /// one per pickle (cloudpickle gives the functions of one pickle that share their
    /// globals one globals dict: that is left to it).
    fn save_by_value(&mut self, function: &Bound<'py, PyAny>) -> PyResult<Out> {
        let py = self.py;
        let Some(bv) = &self.by_value else {
            return Ok(Err(Stop::GlobalFails));
        };
        let cloud = bv.cloud;
        if bv.function.is_some() {
            return Ok(Err(Stop::GlobalFails));
        }
        let Some(pickled) = by_value::pickled(function)? else {
            return Ok(Err(Stop::GlobalFails));
        };
        if let Some(bv) = &mut self.by_value {
            bv.function = Some(function.clone());
        }
        save!(self, cloud.loads.bind(py));
        save!(self, pickled.as_any());
        self.out.extend([TUPLE1, REDUCE]);
        self.memo_put(function);
        Ok(Ok(()))
    }

    /// `save_reduce` for `(callable, args[, state[, None, None[, None]]])`, with
    /// `copyreg.__newobj__` as NEWOBJ.
    fn save_reduce(&mut self, rv: &Bound<'py, PyTuple>, obj: &Bound<'py, PyAny>) -> PyResult<Out> {
        let py = self.py;
        let n = rv.len();
        if !(2..=6).contains(&n) {
            return Ok(Err(Unsupported));
        }
        let callable = rv.get_item(0)?;
        let Ok(args) = rv.get_item(1)?.cast_into_exact::<PyTuple>() else {
            return Ok(Err(Unsupported));
        };
        let state = if n > 2 { Some(rv.get_item(2)?) } else { None };
        for i in 3..n {
            if !rv.get_item(i)?.is_none() {
                return Ok(Err(Unsupported));
            }
        }
        if !callable.is_callable() {
            return Ok(Err(Unsupported));
        }
        let name = callable.getattr_opt(intern!(py, "__name__"))?;
        let name = name.as_ref().and_then(|n| n.cast_exact::<PyString>().ok());
        let name = name.and_then(|n| n.to_str().ok());
        if name == Some("__newobj_ex__") {
            return Ok(Err(Unsupported));
        }
        if name == Some("__newobj__") {
            let Ok(cls) = args.get_item(0) else {
                return Ok(Err(Unsupported));
            };
            if !cls.is_instance_of::<PyType>() || !obj.getattr(intern!(py, "__class__"))?.is(&cls) {
                return Ok(Err(Unsupported));
            }
            let rest = args.get_slice(1, args.len());
            save!(self, &cls);
            save!(self, rest.as_any());
            self.out.push(NEWOBJ);
        } else {
            save!(self, &callable);
            save!(self, args.as_any());
            self.out.push(REDUCE);
        }
        if let Some(idx) = self.memoized(obj) {
            self.out.push(POP);
            self.memo_get(idx);
            return Ok(Ok(()));
        }
        self.memo_put(obj);
        if let Some(state) = state.filter(|s| !s.is_none()) {
            save!(self, &state);
            self.out.push(BUILD);
        }
        Ok(Ok(()))
    }
}

/// What the trace says of `pickle.dumps(obj, protocol=5)`.
pub(crate) enum Dumped<'py> {
    /// Its bytes.
    Bytes(Vec<u8>),
    /// It raises `PicklingError` on a global that does not resolve; the types before it
    /// that `_pickle` would offer to a `reducer_override`.
    GlobalFails(Vec<Bound<'py, PyType>>),
    /// The trace cannot tell: ask `pickle`.
    Unknown,
}

/// `pickle.dumps(obj, protocol=5)` as far as the trace goes.
pub(crate) fn dumps<'py>(obj: &Bound<'py, PyAny>) -> Dumped<'py> {
    match trace(obj, None) {
        Ok((Ok(bytes), _)) => Dumped::Bytes(bytes),
        Ok((Err(Stop::GlobalFails), types)) => Dumped::GlobalFails(types),
        _ => Dumped::Unknown,
    }
}

/// What `cloudpickle.dumps(obj, protocol=5)` would write, with the one function it
/// writes by value loaded from that function's own kept pickle (`by_value`), when
/// everything else in `obj` is what pickle writes the same way; else `None`.
pub(crate) fn dumps_by_value(obj: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    let Some(cloud) = by_value::cloud(obj.py()) else {
        return Ok(None);
    };
    Ok(match trace(obj, Some(cloud))? {
        (Ok(bytes), _) => Some(bytes),
        (Err(_), _) => None,
    })
}

/// The trace for tests: `(bytes or None, global fails, names of the types offered to
/// a reducer_override)`.
#[pyfunction]
#[pyo3(name = "pickle_trace")]
#[allow(clippy::type_complexity)]
pub(crate) fn trace_py<'py>(
    obj: &Bound<'py, PyAny>,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool, Vec<Bound<'py, PyType>>)> {
    let (out, types) = trace(obj, None)?;
    Ok(match out {
        Ok(b) => (Some(PyBytes::new(obj.py(), &b)), false, types),
        Err(stop) => (None, stop == Stop::GlobalFails, types),
    })
}
