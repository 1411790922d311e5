//! `order_graph`: reads a materialized graph (`Task`/`DataNode`/`Alias` values) into the
//! core's `OrderGraph`, runs `core::order` without the GIL, and builds the dict
//! `dask.order.order` returns. `None` tells the caller to use dask's own.

use crate::bindings::held::Held;
use crate::bindings::key_index::KeyIndex;
use crate::bindings::naming::{data_producer, plain_str_name};
use crate::core::graph::GraphTask;
use crate::core::order::{order, OrderGraph};
use crate::core::pyset::PySet;
use crate::core::types::Num;
use hashbrown::HashMap;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyFrozenSet, PyInt, PyList, PyString, PyTuple, PyType};
use std::sync::Mutex;

/// Reads a frozenset's hash table in place (CPython's `PySetObject` and `setentry`
/// layout of the default build, 3.10 to 3.13): iteration order, element hashes, mask
/// and fill, without an iterator object per set. Checked against real frozensets
/// before first use; if the layout differs, sets are iterated instead.
mod raw_set {
    use pyo3::ffi;

    const FILL: usize = 16;
    const USED: usize = 24;
    const MASK: usize = 32;
    const TABLE: usize = 40;

    /// One set's table: (mask, fill, used, entries).
    pub struct Table {
        pub mask: usize,
        pub fill: usize,
        pub used: usize,
        entries: *const [usize; 2],
    }

    impl Table {
        /// # Safety
        /// `set` is a live exact frozenset, the layout was verified, and the GIL is held
        /// while the table is read.
        pub unsafe fn of(set: *mut ffi::PyObject) -> Table {
            let base = set as *const u8;
            let word = |off: usize| *(base.add(off) as *const usize);
            Table {
                fill: word(FILL),
                used: word(USED),
                mask: word(MASK),
                entries: word(TABLE) as *const [usize; 2],
            }
        }

        /// Whether the table is the one `offset` bytes into the object.
        pub fn entries_at(&self, set: *mut ffi::PyObject, offset: usize) -> bool {
            self.entries as usize == set as usize + offset
        }

        /// Active entries in table order: (borrowed key, hash).
        ///
        /// # Safety
        /// As for [`Table::of`]; the set outlives the iteration.
        pub unsafe fn active(&self) -> impl Iterator<Item = (*mut ffi::PyObject, i64)> + '_ {
            (0..=self.mask).filter_map(move |i| {
                let [key, hash] = *self.entries.add(i);
                (key != 0 && hash as i64 != -1).then_some((key as *mut ffi::PyObject, hash as i64))
            })
        }
    }
}

struct DaskTypes {
    graph_node: Py<PyType>,
    data_node: Py<PyType>,
    /// The `data_producer` properties of `GraphNode` (False), `DataNode` (True) and
    /// `Task` (its `_data_producer`).
    producer_properties: [Py<PyAny>; 3],
    order_tuple: Py<PyAny>,
    /// `frozenset().__sizeof__()`: a frozenset's size beyond it is its table.
    frozenset_base_size: usize,
    /// The frozenset layout `raw_set` reads is this interpreter's.
    raw_sets: bool,
}

static DASK_TYPES: PyOnceLock<DaskTypes> = PyOnceLock::new();

fn dask_types(py: Python<'_>) -> PyResult<&DaskTypes> {
    DASK_TYPES.get_or_try_init(py, || {
        let spec = py.import("dask._task_spec")?;
        let base: usize = PyFrozenSet::empty(py)?
            .call_method0(intern!(py, "__sizeof__"))?
            .extract()?;
        let producer = |name: &str| -> PyResult<Py<PyAny>> {
            Ok(spec.getattr(name)?.getattr("data_producer")?.unbind())
        };
        Ok(DaskTypes {
            graph_node: spec.getattr("GraphNode")?.cast_into::<PyType>()?.unbind(),
            data_node: spec.getattr("DataNode")?.cast_into::<PyType>()?.unbind(),
            producer_properties: [
                producer("GraphNode")?,
                producer("DataNode")?,
                producer("Task")?,
            ],
            order_tuple: py.import("dask.order")?.getattr("Order")?.unbind(),
            frozenset_base_size: base,
            raw_sets: raw_layout_matches(py)?,
        })
    })
}

/// Whether `raw_set` reads real frozensets right: the same elements, hashes and order
/// as iterating them, for a small and a large table and one with dummies.
fn raw_layout_matches(py: Python<'_>) -> PyResult<bool> {
    let v = py.version_info();
    if cfg!(not(target_pointer_width = "64")) || !(10..15).contains(&v.minor) || v.major != 3 {
        return Ok(false);
    }
    let builtins = py.import("builtins")?;
    let frozenset = builtins.getattr("frozenset")?;
    let samples = [
        frozenset.call1((PyTuple::new(py, [3, 1, 2])?,))?,
        frozenset.call1((builtins.getattr("range")?.call1((1000,))?,))?,
        py.eval(
            c"frozenset(f'k{i}' for i in range(50)) - frozenset(f'k{i}' for i in range(7))",
            None,
            None,
        )?,
    ];
    for set in samples {
        let expected: Vec<(Bound<'_, PyAny>, i64)> = set
            .try_iter()?
            .map(|k| {
                let k = k?;
                let h = k.hash()? as i64;
                Ok((k, h))
            })
            .collect::<PyResult<_>>()?;
        // SAFETY: `set` is a live exact frozenset and the GIL is held; the words read
        // are within the object (its header and table pointer) and the table.
        let ok = unsafe {
            let t = raw_set::Table::of(set.as_ptr());
            // the header words must be right before the table pointer is followed: a set
            // of three sits in the 8-slot table inside the object
            let header_ok = t.used == expected.len()
                && t.fill >= t.used
                && t.mask >= 7
                && (t.mask + 1).is_power_of_two()
                && (expected.len() != 3 || (t.mask == 7 && t.entries_at(set.as_ptr(), 64)));
            header_ok && {
                let got: Vec<(*mut pyo3::ffi::PyObject, i64)> = t.active().collect();
                got.len() == expected.len()
                    && got
                        .iter()
                        .zip(&expected)
                        .all(|(&(p, h), (k, kh))| p == k.as_ptr() && h == *kh)
            }
        };
        if !ok {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a value's type says about it.
#[derive(Clone, Copy)]
struct Kind {
    /// `istask(value)`: a `GraphNode` but not a `DataNode`.
    task: bool,
    /// Its `dependencies` is `GraphNode`'s property, which returns `_dependencies`.
    plain_dependencies: bool,
    producer: Producer,
}

/// How a value's `data_producer` is read: dask's own properties answer without a call.
#[derive(Clone, Copy)]
enum Producer {
    Always(bool),
    /// `Task`'s property: the `_data_producer` attribute.
    Slot,
    Property,
}

impl Producer {
    fn of(self, value: &Bound<'_, PyAny>) -> bool {
        match self {
            Producer::Always(v) => v,
            Producer::Slot => value
                .getattr(intern!(value.py(), "_data_producer"))
                .and_then(|v| v.is_truthy())
                .unwrap_or(false),
            Producer::Property => data_producer(value),
        }
    }
}

/// `None` for a value that is not a `GraphNode`.
fn classify(
    value: &Bound<'_, PyAny>,
    types: &DaskTypes,
    seen: &mut HashMap<usize, Option<Kind>>,
) -> PyResult<Option<Kind>> {
    let ty = value.get_type();
    let ptr = ty.as_ptr() as usize;
    if let Some(&c) = seen.get(&ptr) {
        return Ok(c);
    }
    let py = value.py();
    let graph_node = types.graph_node.bind(py);
    let c = if ty.is_subclass(graph_node)? {
        let name = intern!(py, "dependencies");
        let property = ty.getattr(intern!(py, "data_producer"))?;
        let [node, data, task] = &types.producer_properties;
        let producer = if property.is(node.bind(py)) {
            Producer::Always(false)
        } else if property.is(data.bind(py)) {
            Producer::Always(true)
        } else if property.is(task.bind(py)) {
            Producer::Slot
        } else {
            Producer::Property
        };
        Some(Kind {
            task: !ty.is_subclass(types.data_node.bind(py))?,
            plain_dependencies: ty.getattr(name)?.is(&graph_node.getattr(name)?),
            producer,
        })
    } else {
        None
    };
    seen.insert(ptr, c);
    Ok(c)
}

/// Holds the cyclic GC off while the graph is read and the result built: the set
/// iterators it creates would otherwise start collections over the whole heap.
struct GcPause(bool);

impl GcPause {
    fn new(_py: Python<'_>) -> Self {
        // SAFETY: the GIL is held (the `Python` token); this only flips the GC's flag.
        GcPause(unsafe { pyo3::ffi::PyGC_Disable() } == 1)
    }
}

impl Drop for GcPause {
    fn drop(&mut self) {
        if self.0 {
            // SAFETY: dropped in the call that made it, with the GIL held.
            unsafe { pyo3::ffi::PyGC_Enable() };
        }
    }
}

/// `str(key)` for a tuple of plain ASCII strs (no quote or backslash), ints and such
/// tuples, written as Python writes it; `None` for anything else.
fn tuple_str(t: &Bound<'_, PyTuple>, out: &mut String) -> Option<()> {
    out.push('(');
    let n = t.len();
    for (i, item) in t.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        if item.is_exact_instance_of::<PyString>() {
            let s = item.cast::<PyString>().ok()?.to_str().ok()?;
            if !s
                .bytes()
                .all(|b| (0x20..0x7f).contains(&b) && b != b'\'' && b != b'\\')
            {
                return None;
            }
            out.push('\'');
            out.push_str(s);
            out.push('\'');
        } else if item.is_exact_instance_of::<PyInt>() {
            push_int(out, item.extract().ok()?);
        } else if item.is_exact_instance_of::<PyTuple>() {
            tuple_str(item.cast::<PyTuple>().ok()?, out)?;
        } else {
            return None;
        }
    }
    if n == 1 {
        out.push(',');
    }
    out.push(')');
    Some(())
}

/// `v` in decimal, as `str(int)` writes it.
fn push_int(out: &mut String, v: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = v.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if v < 0 {
        out.push('-');
    }
    // ASCII digits
    out.push_str(std::str::from_utf8(&digits[at..]).unwrap_or_default());
}

/// Where `str(key)` of a key is: a str key's own text, or a span of the arena.
#[derive(Clone, Copy)]
enum NameAt {
    Key,
    Arena(usize, usize),
}

/// Writes `str(key)` into `arena` unless the key is a str (its own text is its name);
/// `None` if it is not valid UTF-8 (lone surrogates), which the Rust order cannot
/// compare. Names are written one after the other, without an allocation per key.
fn write_name(key: &Bound<'_, PyAny>, arena: &mut String) -> PyResult<Option<NameAt>> {
    if key.is_exact_instance_of::<PyString>() {
        return Ok(Some(NameAt::Key));
    }
    let start = arena.len();
    if key.is_exact_instance_of::<PyTuple>() {
        if tuple_str(key.cast::<PyTuple>()?, arena).is_some() {
            return Ok(Some(NameAt::Arena(start, arena.len())));
        }
        arena.truncate(start);
    }
    match key.str()?.to_str() {
        Ok(s) => arena.push_str(s),
        Err(_) => return Ok(None),
    }
    Ok(Some(NameAt::Arena(start, arena.len())))
}

/// Every key's name from where [`write_name`] put it; `None` if a str key is not valid
/// UTF-8.
fn key_names<'a>(
    keys: &'a [Bound<'_, PyAny>],
    at: &[NameAt],
    arena: &'a str,
) -> PyResult<Option<Vec<&'a str>>> {
    let mut names = Vec::with_capacity(keys.len());
    for (key, &at) in keys.iter().zip(at) {
        names.push(match at {
            NameAt::Arena(a, b) => &arena[a..b],
            NameAt::Key => match key.cast::<PyString>()?.to_str() {
                Ok(s) => s,
                Err(_) => return Ok(None),
            },
        });
    }
    Ok(Some(names))
}

/// The graph's keys, each key's `istask`, its `dependencies` frozenset, and (when kept
/// for `update_graph`) its value and `data_producer`.
type ReadKeys<'py> = (
    Vec<Bound<'py, PyAny>>,
    Vec<bool>,
    Vec<Bound<'py, PyFrozenSet>>,
    Option<(Vec<Held>, Vec<bool>)>,
);

/// What `order_graph` read from a graph, kept for the engine's `update_graph` of the
/// same graph: the graph is read once, in the offload thread where distributed runs the
/// order, and not again on the event loop. Taken (once) by `update_graph`.
#[pyclass(frozen, module = "dask_rsched._core")]
pub struct ReadGraph(pub(crate) Mutex<Option<GraphRead>>);

pub(crate) struct GraphRead {
    /// The dict read, and the order's result for it (`update_graph` checks both).
    pub dsk: Py<PyDict>,
    pub ordered: Py<PyDict>,
    /// `dsk`'s keys, then the keys its tasks name without holding them.
    pub n_real: usize,
    pub keys: Vec<Py<PyAny>>,
    pub hashes: Vec<i64>,
    pub index: KeyIndex,
    /// Each of `dsk`'s tasks' dependencies (indices into `keys`), in iteration order.
    pub dep_offsets: Vec<u32>,
    pub dep_ids: Vec<u32>,
    pub specs: Vec<Held>,
    pub data_producer: Vec<bool>,
    /// The order's priority of each of `dsk`'s keys.
    pub priorities: Vec<i64>,
    /// A plain str key's prefix name (`name_table[str_names[i]]`, `plain_str_name`; its
    /// group is the same name), `u32::MAX` for a key the engine names itself.
    pub str_names: Vec<u32>,
    pub name_table: Vec<String>,
    /// An empty task arena of the graph's size, its memory touched here (with the GIL
    /// released) so that the page faults of a large graph's records do not happen on
    /// the event loop (`SchedulerState::offer_task_arena`).
    pub arena: TaskArena,
    /// The entries in the order `generate_taskstates` will reach them from the wanted
    /// keys (empty if they were not given): its walk fetches the entries ahead from
    /// memory, which the dict's order (a culled graph's is a set's) does not follow.
    pub visit: Vec<u32>,
    /// Room for the graph's entries and their priorities (`Engine.update_graph`).
    pub entries: Room<GraphTask<Py<PyAny>>>,
    pub priority_room: Room<(Num, Option<i64>)>,
}

#[pymethods]
impl ReadGraph {
    /// The bytes it holds (its vectors, index and arena), 0 once taken: what a memory
    /// measurement of the state creation that takes it must not count as the state's
    /// (`benches/submission.py`).
    #[getter]
    fn nbytes(&self) -> usize {
        use std::mem::size_of;
        let Some(g) = &*crate::bindings::shared::locked(&self.0) else {
            return 0;
        };
        g.keys.capacity() * size_of::<Py<PyAny>>()
            + g.hashes.capacity() * 8
            + g.index.allocation_size()
            + (g.dep_offsets.capacity() + g.dep_ids.capacity() + g.str_names.capacity()) * 4
            + g.specs.capacity() * size_of::<Held>()
            + g.data_producer.capacity()
            + g.priorities.capacity() * 8
            + g.name_table
                .iter()
                .map(|n| n.capacity() + size_of::<String>())
                .sum::<usize>()
            + g.arena.capacity() * size_of::<Option<crate::core::entities::Task<Py<PyAny>>>>()
            + g.visit.capacity() * 4
            + g.entries.capacity() * size_of::<GraphTask<Py<PyAny>>>()
            + g.priority_room.capacity() * size_of::<(Num, Option<i64>)>()
    }
}

pub(crate) type TaskArena = Vec<Option<crate::core::entities::Task<Py<PyAny>>>>;

/// `plain_str_name` of the exact str keys among `keys[..n_real]` (`names`: `str(key)`
/// of each): a name id per key, and the names.
fn str_key_names(
    py: Python<'_>,
    keys: &[Bound<'_, PyAny>],
    names: &[&str],
    n_real: usize,
) -> (Vec<u32>, Vec<String>) {
    let mut ids = Vec::with_capacity(n_real);
    let mut table: Vec<String> = Vec::new();
    let mut seen: HashMap<String, u32> = HashMap::new();
    for (i, (key, name)) in keys.iter().zip(names).take(n_real).enumerate() {
        let_others_run(py, i);
        let split = match key.is_exact_instance_of::<PyString>() {
            true => plain_str_name(name),
            false => None,
        };
        let id = match split {
            // consecutive keys mostly share their names
            Some(n) if table.last() == Some(&n) => table.len() as u32 - 1,
            Some(n) => *seen.entry(n).or_insert_with_key(|n| {
                table.push(n.clone());
                table.len() as u32 - 1
            }),
            None => u32::MAX,
        };
        ids.push(id);
    }
    (ids, table)
}

/// An empty vector whose capacity's pages were touched (on the order's thread, with the
/// GIL released), for a large vector the state creation fills on the event loop.
pub(crate) struct Room<T>(Vec<T>);

// SAFETY: a `Room` holds no `T` (it is empty, and gives its vector out only by value):
// only memory crosses threads, never a value of `T` (an `Rc`, say).
unsafe impl<T> Send for Room<T> {}
// SAFETY: as above; `&Room` gives access to nothing.
unsafe impl<T> Sync for Room<T> {}

impl<T> Room<T> {
    pub(crate) fn touched(n: usize) -> Self {
        let mut v: Vec<T> = Vec::with_capacity(n);
        // SAFETY: zero bytes written into the vector's own unused capacity; its length
        // stays 0, so nothing reads them as values.
        unsafe { std::ptr::write_bytes(v.as_mut_ptr(), 0, v.capacity()) };
        Room(v)
    }

    pub(crate) fn take(self) -> Vec<T> {
        self.0
    }

    fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

/// The entries of the keys of `set(wanted)` the graph holds, in that set's order.
fn wanted_entries(
    wanted: &Bound<'_, PyAny>,
    index: &KeyIndex,
    keys: &[Bound<'_, PyAny>],
    hashes: &[i64],
) -> PyResult<Vec<u32>> {
    let wanted = wanted
        .py()
        .import("builtins")?
        .getattr("set")?
        .call1((wanted,))?;
    let mut roots = Vec::new();
    for k in wanted.try_iter()? {
        let k = k?;
        if let Some(i) = index.find(k.hash()? as i64, &k, keys, hashes)? {
            roots.push(i);
        }
    }
    Ok(roots)
}

/// The entries a walk from `roots` reaches, in `generate_taskstates`'s order (a stack:
/// the last root first, then each entry's dependencies, the last first). Only the
/// graph's own entries (below `n_real`) have dependencies.
fn creation_walk(
    roots: &[u32],
    dep_offsets: &[u32],
    dep_ids: &[u32],
    n_real: usize,
    n: usize,
) -> Vec<u32> {
    let mut seen = vec![false; n];
    let mut stack = roots.to_vec();
    let mut visit = Vec::with_capacity(n);
    while let Some(i) = stack.pop() {
        let iu = i as usize;
        if std::mem::replace(&mut seen[iu], true) {
            continue;
        }
        visit.push(i);
        if iu < n_real {
            stack.extend_from_slice(
                &dep_ids[dep_offsets[iu] as usize..dep_offsets[iu + 1] as usize],
            );
        }
    }
    visit
}

/// Every `YIELD_EVERY` entries the reading and the result building let go of the GIL
/// for a moment: `order` runs in distributed's offload thread, and the event loop's
/// thread, waiting for the GIL, takes its turn (a few ms) instead of waiting for the
/// whole graph.
const YIELD_EVERY: usize = 1 << 15;

/// How many lookups ahead a key index's slot is fetched: enough to cover a miss to
/// memory, few enough that the fetched lines are still in cache when used.
const PREFETCH_AHEAD: usize = 16;

fn let_others_run(py: Python<'_>, i: usize) {
    if i % YIELD_EVERY == YIELD_EVERY - 1 {
        py.detach(|| ());
    }
}

/// `None` if a value is not a `GraphNode` with a frozenset of dependencies.
fn read_keys<'py>(
    dsk: &Bound<'py, PyDict>,
    types: &DaskTypes,
    keep: bool,
) -> PyResult<Option<ReadKeys<'py>>> {
    let py = dsk.py();
    let n = dsk.len();
    let mut keys = Vec::with_capacity(n);
    let mut is_task = Vec::with_capacity(n);
    let mut dep_sets = Vec::with_capacity(n);
    let mut kept = keep.then(|| (Vec::with_capacity(n), Vec::with_capacity(n)));
    let mut seen_types = HashMap::new();
    for (i, (key, value)) in dsk.iter().enumerate() {
        let_others_run(py, i);
        let Some(kind) = classify(&value, types, &mut seen_types)? else {
            return Ok(None);
        };
        let deps = if kind.plain_dependencies {
            value.getattr(intern!(py, "_dependencies"))?
        } else {
            value.getattr(intern!(py, "dependencies"))?
        };
        if !deps.is_exact_instance_of::<PyFrozenSet>() {
            return Ok(None);
        }
        is_task.push(kind.task);
        dep_sets.push(deps.cast_into::<PyFrozenSet>()?);
        keys.push(key);
        if let Some((specs, producers)) = &mut kept {
            producers.push(kind.producer.of(&value));
            // the engine holds it from here on
            specs.push(Held::new(value));
        }
    }
    Ok(Some((keys, is_task, dep_sets, kept)))
}

/// `dask.order.order(dsk, return_stats=...)` for a dict of `GraphNode`s, or `None` when
/// the graph has something the Rust order does not reproduce (dask's then runs, and
/// raises its own error for a cyclic graph). `external`, if given, receives the keys the
/// graph names as dependencies but does not hold. `read`, if given, receives a
/// `ReadGraph` of what was read (without `return_stats`), for `Engine.update_graph`,
/// with a task arena for `tasks` existing tasks and the graph's, and (given the keys
/// the graph is `wanted` for) the order in which the state creation will reach its
/// entries.
#[pyfunction]
#[pyo3(signature = (dsk, return_stats = false, external = None, read = None, tasks = 0,
                    wanted = None))]
pub fn order_graph<'py>(
    dsk: &Bound<'py, PyDict>,
    return_stats: bool,
    external: Option<&Bound<'py, PyList>>,
    read: Option<&Bound<'py, PyList>>,
    tasks: usize,
    wanted: Option<&Bound<'py, PyAny>>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let py = dsk.py();
    let types = dask_types(py)?;
    let gc = GcPause::new(py);
    let keep = read.is_some() && !return_stats;
    let Some((mut keys, mut is_task, dep_sets, kept)) = read_keys(dsk, types, keep)? else {
        return Ok(None);
    };
    let n_real = keys.len();
    // each key's hash and name in one pass over the keys (a tuple key's items are
    // read once)
    let mut hashes = Vec::with_capacity(n_real);
    let mut arena = String::with_capacity(n_real * 24);
    let mut name_at = Vec::with_capacity(n_real);
    for key in &keys {
        hashes.push(key.hash()? as i64);
        let Some(at) = write_name(key, &mut arena)? else {
            return Ok(None);
        };
        name_at.push(at);
    }
    // each insertion's slot is fetched a few insertions ahead (a large graph's index
    // is far larger than the cache)
    let mut index = KeyIndex::with_capacity(n_real);
    for i in 0..n_real {
        if let Some(&ahead) = hashes.get(i + PREFETCH_AHEAD) {
            index.prefetch(ahead);
        }
        index.insert_new(hashes[i], i as u32, &hashes);
    }
    let mut dep_offsets = Vec::with_capacity(n_real + 1);
    let mut dep_ids: Vec<u32> = Vec::with_capacity(n_real);
    let mut dep_masks = HashMap::new();
    let mut dep_fills = HashMap::new();
    dep_offsets.push(0u32);
    // every set's (borrowed key, hash), then their lookups, each slot fetched a few
    // lookups ahead: the frozensets (or `held`) keep the keys alive
    let mut elements: Vec<(*mut pyo3::ffi::PyObject, i64)> = Vec::with_capacity(n_real * 2);
    let mut held: Vec<Bound<'py, PyAny>> = Vec::new();
    for (i, deps) in dep_sets.iter().enumerate() {
        let_others_run(py, i);
        if types.raw_sets {
            // SAFETY: `deps` is a live exact frozenset (checked in `read_keys`), the
            // layout was verified at start-up, and the GIL is held throughout.
            let table = unsafe { raw_set::Table::of(deps.as_ptr()) };
            elements.extend(unsafe { table.active() });
            if table.mask != 7 {
                dep_masks.insert(i as u32, table.mask as u32);
            }
            if table.fill != table.used {
                dep_fills.insert(i as u32, table.fill as u32);
            }
        } else {
            for dep in deps.iter() {
                let h = dep.hash()? as i64;
                elements.push((dep.as_ptr(), h));
                held.push(dep);
            }
            if deps.len() >= 5 {
                // the table may be larger than the 8-slot smalltable: its size says how much
                let size: usize = deps.call_method0(intern!(py, "__sizeof__"))?.extract()?;
                let slots = size.saturating_sub(types.frozenset_base_size) / 16;
                if slots > 8 {
                    dep_masks.insert(i as u32, (slots - 1) as u32);
                }
            }
        }
        dep_offsets.push(elements.len() as u32);
    }
    dep_ids.reserve(elements.len());
    for (j, &(dep, h)) in elements.iter().enumerate() {
        let_others_run(py, j);
        if let Some(&(_, ahead)) = elements.get(j + PREFETCH_AHEAD) {
            index.prefetch(ahead);
        }
        // SAFETY: the dependency set (or `held`) holds `dep` and the GIL is held.
        let dep = unsafe { Borrowed::from_ptr(py, dep) };
        let id = match index.find(h, &dep, &keys, &hashes)? {
            Some(id) => id,
            None => {
                // a key only named as a dependency: dask adds a DataNode for it
                let id = keys.len() as u32;
                hashes.push(h);
                index.insert_new(h, id, &hashes);
                is_task.push(false);
                // a reference of our own
                keys.push(dep.to_owned());
                id
            }
        };
        dep_ids.push(id);
    }
    drop(elements);
    drop(held);
    drop(dep_sets);
    // external keys have no dependencies
    for _ in n_real..keys.len() {
        dep_offsets.push(dep_ids.len() as u32);
    }
    if let Some(external) = external {
        for key in &keys[n_real..] {
            external.append(key)?;
        }
    }
    for key in &keys[n_real..] {
        let Some(at) = write_name(key, &mut arena)? else {
            return Ok(None);
        };
        name_at.push(at);
    }
    let Some(names) = key_names(&keys, &name_at, &arena)? else {
        return Ok(None);
    };
    drop(name_at);
    let graph = OrderGraph {
        hashes,
        is_task,
        dep_offsets,
        dep_ids,
        dep_masks,
        dep_fills,
        n_real,
        names,
    };
    // a panic (a graph the core does not expect) sends the graph to dask's order
    let outcome = py.detach(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| order(&graph, return_stats)))
    });
    // every `OrderError` (a cycle included) also leaves the graph to dask's order
    let Ok(Ok(assigned)) = outcome else {
        return Ok(None);
    };
    // The same priorities as dask; the dict lists keys in the graph's order (dask's
    // lists them as it assigns them), which fills it in the order the keys sit in memory.
    let mut by_key = vec![None; n_real];
    for a in assigned {
        by_key[a.key as usize] = Some(a);
    }
    let priorities: Option<Vec<i64>> = match kept {
        Some(_) => by_key
            .iter()
            .map(|a| a.as_ref().map(|a| a.priority))
            .collect(),
        None => None,
    };
    let result = PyDict::new(py);
    let order_tuple = types.order_tuple.bind(py);
    for (i, a) in by_key.into_iter().flatten().enumerate() {
        let_others_run(py, i);
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
    drop(gc);
    if let (Some(read), Some((specs, data_producer)), Some(priorities)) = (read, kept, priorities) {
        let OrderGraph {
            hashes,
            dep_offsets,
            dep_ids,
            names,
            ..
        } = graph;
        let (str_names, name_table) = str_key_names(py, &keys, &names, n_real);
        // the names borrow the keys
        drop(names);
        let room = tasks + keys.len();
        // the wanted keys' entries, in the order `update_graph` walks from them (only a
        // hint: keys it cannot read give no walk, and `update_graph` reports them)
        let roots = match wanted.filter(|w| !w.is_none()) {
            Some(wanted) => wanted_entries(wanted, &index, &keys, &hashes).unwrap_or_default(),
            None => Vec::new(),
        };
        let n_keys = keys.len();
        let (arena, visit, entries, priority_room) = py.detach(|| {
            let visit = creation_walk(&roots, &dep_offsets, &dep_ids, n_real, n_keys);
            // the entries' and the priorities' vectors too: a large graph's page faults
            // would otherwise be a sizeable part of the event loop's step
            (
                Room::touched(room).take(),
                visit,
                Room::touched(n_keys),
                Room::touched(n_keys),
            )
        });
        let graph_read = GraphRead {
            dsk: dsk.clone().unbind(),
            ordered: result.clone().unbind(),
            n_real,
            keys: keys.into_iter().map(Bound::unbind).collect(),
            hashes,
            index,
            dep_offsets,
            dep_ids,
            specs,
            data_producer,
            priorities,
            str_names,
            name_table,
            arena,
            visit,
            entries,
            priority_room,
        };
        read.append(ReadGraph(Mutex::new(Some(graph_read))))?;
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
        if v == i64::MIN {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "pyset_order: values must be above -2**63",
            ));
        }
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
