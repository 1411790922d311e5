//! A batch of messages to a worker as the bytes distributed's TCP comm would write:
//! `protocol.dumps` (msgpack as `msgpack.dumps(use_bin_type=True)` packs it, each
//! `ToPickle` as a `{"__Pickled__": index}` map and a sub-header frame) framed by
//! `_add_frames_header`. Only what the scheduler's own messages hold is encoded here:
//! exact dicts, lists, tuples, str, bytes, int, float, bool, None and `ToPickle`
//! without out-of-band buffers. Anything else makes `encode_batch` return `None`, and
//! distributed's `dumps` serializes the batch.

use super::messages::to_pickle;
use super::outgoing::{Annotations, ComputeTask, Messages, Outgoing};
use super::pickler;
use crate::core::types::Num;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// What distributed's `protocol.pickle.dumps` calls, read from that module.
struct Pickling {
    /// `distributed.protocol.pickle.dumps`: pickle, or cloudpickle where it must.
    dumps: Py<PyAny>,
    /// `pickle.dumps`, as that module names it
    pickle_dumps: Py<PyAny>,
    /// `HIGHEST_PROTOCOL`, its default protocol
    protocol: Py<PyAny>,
    /// `cloudpickle.list_registry_pickle_by_value`
    registry: Py<PyAny>,
    /// `cloudpickle.dumps`
    cloudpickle_dumps: Py<PyAny>,
    /// `_always_use_pickle_for`
    always_use_pickle_for: Py<PyAny>,
    /// `dask_serialize`: what `_DaskPickler.reducer_override` looks types up in
    dask_serialize: Py<PyAny>,
    /// Types `dask_serialize.dispatch` found nothing for, while its registry keeps
    /// its size (registering, or a lazy registration running, changes it).
    unregistered: std::sync::Mutex<Unregistered>,
}

#[derive(Default)]
struct Unregistered {
    /// `(len(_lookup), len(_lazy))` when the types were looked up
    registry: (usize, usize),
    /// held, so that no other type takes one's address
    types: Vec<Py<pyo3::types::PyType>>,
}

/// At most this many types are remembered.
const UNREGISTERED_MAX: usize = 256;

impl Pickling {
    /// Whether `dask_serialize.dispatch` raises for each of `types`, as
    /// `_DaskPickler.reducer_override` would find (a raise that is not `TypeError`
    /// fails that pickler too, which is what matters here).
    fn none_registered(&self, py: Python<'_>, types: &[Bound<'_, pyo3::types::PyType>]) -> bool {
        let ds = self.dask_serialize.bind(py);
        let size = |name: &str| ds.getattr(name).and_then(|d| d.len()).ok();
        let registry = size("_lookup").zip(size("_lazy"));
        let Ok(mut cache) = self.unregistered.lock() else {
            return false;
        };
        if let Some(r) = registry.filter(|r| *r != cache.registry) {
            cache.types.clear();
            cache.registry = r;
        }
        for t in types {
            if registry.is_some() && cache.types.iter().any(|c| c.bind(py).is(t)) {
                continue;
            }
            if ds.call_method1(intern!(py, "dispatch"), (t,)).is_ok() {
                return false;
            }
            if registry.is_some() && cache.types.len() < UNREGISTERED_MAX {
                cache.types.push(t.clone().unbind());
            }
        }
        true
    }
}

static PICKLING: PyOnceLock<Pickling> = PyOnceLock::new();

fn pickling(py: Python<'_>) -> PyResult<&Pickling> {
    PICKLING.get_or_try_init(py, || -> PyResult<_> {
        let m = py.import("distributed.protocol.pickle")?;
        Ok(Pickling {
            dumps: m.getattr("dumps")?.unbind(),
            pickle_dumps: m.getattr("pickle")?.getattr("dumps")?.unbind(),
            protocol: m.getattr("HIGHEST_PROTOCOL")?.unbind(),
            registry: m
                .getattr("cloudpickle")?
                .getattr("list_registry_pickle_by_value")?
                .unbind(),
            cloudpickle_dumps: m.getattr("cloudpickle")?.getattr("dumps")?.unbind(),
            always_use_pickle_for: m.getattr("_always_use_pickle_for")?.unbind(),
            dask_serialize: m.getattr("dask_serialize")?.unbind(),
            unregistered: std::sync::Mutex::new(Unregistered::default()),
        })
    })
}

/// msgpack's largest str, bin, array or map; longer ones are distributed's to refuse.
const MAX_LEN: usize = u32::MAX as usize;

struct Encoder<'py> {
    py: Python<'py>,
    out: Vec<u8>,
    /// The sub-header frames of the `ToPickle`s met so far (frame 0 is `out`).
    frames: Vec<Vec<u8>>,
    to_pickle: Bound<'py, PyAny>,
    /// Nesting so far: msgpack-python refuses deeper than its limit (cycles too).
    depth: usize,
}

/// What the encoder cannot pack the way distributed would.
struct Unsupported;

type Enc = Result<(), Unsupported>;

fn head(out: &mut Vec<u8>, n: usize, fix: u8, fix_max: usize, t8: Option<u8>, t16: u8, t32: u8) {
    if n <= fix_max {
        out.push(fix | n as u8);
    } else if let (Some(t8), true) = (t8, n <= 0xff) {
        out.extend([t8, n as u8]);
    } else if n <= 0xffff {
        out.push(t16);
        out.extend((n as u16).to_be_bytes());
    } else {
        out.push(t32);
        out.extend((n as u32).to_be_bytes());
    }
}

fn pack_str(out: &mut Vec<u8>, s: &str) {
    head(out, s.len(), 0xa0, 31, Some(0xd9), 0xda, 0xdb);
    out.extend_from_slice(s.as_bytes());
}

fn pack_bin(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() <= 0xff {
        out.extend([0xc4, b.len() as u8]);
    } else if b.len() <= 0xffff {
        out.push(0xc5);
        out.extend((b.len() as u16).to_be_bytes());
    } else {
        out.push(0xc6);
        out.extend((b.len() as u32).to_be_bytes());
    }
    out.extend_from_slice(b);
}

/// A float as msgpack-python packs Python's (float64).
fn pack_f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend(v.to_be_bytes());
}

fn pack_uint(out: &mut Vec<u8>, v: u64) {
    if v <= 0x7f {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend([0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend((v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend((v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend(v.to_be_bytes());
    }
}

fn pack_int(out: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        pack_uint(out, v as u64);
    } else if v >= -32 {
        out.push(v as i8 as u8);
    } else if v >= i64::from(i8::MIN) {
        out.extend([0xd0, v as i8 as u8]);
    } else if v >= i64::from(i16::MIN) {
        out.push(0xd1);
        out.extend((v as i16).to_be_bytes());
    } else if v >= i64::from(i32::MIN) {
        out.push(0xd2);
        out.extend((v as i32).to_be_bytes());
    } else {
        out.push(0xd3);
        out.extend(v.to_be_bytes());
    }
}

impl<'py> Encoder<'py> {
    /// `encode` one nesting level deeper: msgpack-python refuses deeper than its
    /// limit (cycles too).
    fn deeper(&mut self, encode: impl FnOnce(&mut Self) -> PyResult<Enc>) -> PyResult<Enc> {
        if self.depth >= super::wire::MAX_DEPTH {
            return Ok(Err(Unsupported));
        }
        self.depth += 1;
        let r = encode(self);
        self.depth -= 1;
        r
    }

    fn value(&mut self, o: &Bound<'py, PyAny>) -> PyResult<Enc> {
        self.deeper(|e| e.value_at_depth(o))
    }

    fn value_at_depth(&mut self, o: &Bound<'py, PyAny>) -> PyResult<Enc> {
        if o.is_none() {
            self.out.push(0xc0);
        } else if let Ok(s) = o.cast_exact::<PyString>() {
            let Ok(s) = s.to_str() else {
                return Ok(Err(Unsupported));
            };
            if s.len() > MAX_LEN {
                return Ok(Err(Unsupported));
            }
            pack_str(&mut self.out, s);
        } else if let Ok(d) = o.cast_exact::<PyDict>() {
            if d.len() > MAX_LEN {
                return Ok(Err(Unsupported));
            }
            head(&mut self.out, d.len(), 0x80, 15, None, 0xde, 0xdf);
            for (k, v) in d.iter() {
                if self.value(&k)?.is_err() || self.value(&v)?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
        } else if let Ok(t) = o.cast_exact::<PyTuple>() {
            if t.len() > MAX_LEN {
                return Ok(Err(Unsupported));
            }
            head(&mut self.out, t.len(), 0x90, 15, None, 0xdc, 0xdd);
            for v in t.iter() {
                if self.value(&v)?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
        } else if let Ok(l) = o.cast_exact::<PyList>() {
            if l.len() > MAX_LEN {
                return Ok(Err(Unsupported));
            }
            head(&mut self.out, l.len(), 0x90, 15, None, 0xdc, 0xdd);
            for v in l.iter() {
                if self.value(&v)?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
        } else if let Ok(b) = o.cast_exact::<PyBool>() {
            self.out.push(if b.is_true() { 0xc3 } else { 0xc2 });
        } else if o.cast_exact::<PyInt>().is_ok() {
            if let Ok(v) = o.extract::<i64>() {
                pack_int(&mut self.out, v);
            } else if let Ok(v) = o.extract::<u64>() {
                pack_uint(&mut self.out, v);
            } else {
                return Ok(Err(Unsupported));
            }
        } else if let Ok(f) = o.cast_exact::<PyFloat>() {
            pack_f64(&mut self.out, f.value());
        } else if let Ok(b) = o.cast_exact::<PyBytes>() {
            if b.as_bytes().len() > MAX_LEN {
                return Ok(Err(Unsupported));
            }
            pack_bin(&mut self.out, b.as_bytes());
        } else if o.get_type().is(&self.to_pickle) {
            return self.pickled(o);
        } else {
            return Ok(Err(Unsupported));
        }
        Ok(Ok(()))
    }

    /// `create_pickled_sub_frames` of a `ToPickle`: the pickle in a sub-header, no
    /// buffers.
    fn pickled(&mut self, o: &Bound<'py, PyAny>) -> PyResult<Enc> {
        let data = o.getattr(intern!(self.py, "data"))?;
        self.pickled_data(&data)
    }

    /// `pickled` of `ToPickle(data)`.
    fn pickled_data(&mut self, data: &Bound<'py, PyAny>) -> PyResult<Enc> {
        let py = self.py;
        let p = pickling(py)?;
        let data = data.clone();
        // distributed's `dumps`, step by step: `pickle.dumps` (the trace's bytes when it
        // has them: the same bytes); cloudpickle instead if the bytes name `__main__`
        // (unless they are long and `_always_use_pickle_for` says so). If pickle fails
        // on a global that does not resolve (a `__main__` function) and `_DaskPickler`
        // would meet nothing its `reducer_override` takes, that fails too and `dumps`
        // ends in cloudpickle: called at once. Any other failure, or a module
        // registered for pickling by value, is left to `dumps` itself, which logs and
        // raises as it does.
        let names_main = |b: &[u8]| -> PyResult<bool> {
            Ok(b.windows(8).any(|w| w == b"__main__")
                && (b.len() < 1000
                    || !p
                        .always_use_pickle_for
                        .bind(py)
                        .call1((&data,))?
                        .is_truthy()?))
        };
        // a pickler of Python's: its bytes, and whether it gave out-of-band buffers
        let from_python =
            |f: &Bound<'py, PyAny>, protocol: bool| -> PyResult<Option<(Vec<u8>, bool)>> {
                let buffers = PyList::empty(py);
                let kwargs = PyDict::new(py);
                kwargs.set_item(
                    intern!(py, "buffer_callback"),
                    buffers.getattr(intern!(py, "append"))?,
                )?;
                if protocol {
                    kwargs.set_item(intern!(py, "protocol"), p.protocol.bind(py))?;
                }
                Ok(f.call((&data,), Some(&kwargs)).ok().and_then(|r| {
                    let b = r.cast_exact::<PyBytes>().ok()?;
                    Some((b.as_bytes().to_vec(), !buffers.is_empty()))
                }))
            };
        let mut pickled: Option<(Vec<u8>, bool)> = None;
        let mut use_cloudpickle = false;
        if p.registry.bind(py).call0()?.len()? == 0 {
            match pickler::dumps(&data) {
                pickler::Dumped::Bytes(b) => {
                    use_cloudpickle = names_main(&b)?;
                    pickled = Some((b, false));
                }
                pickler::Dumped::GlobalFails(types) => {
                    use_cloudpickle = p.none_registered(py, &types);
                }
                pickler::Dumped::Unknown => {
                    pickled = from_python(p.pickle_dumps.bind(py), true)?;
                    if let Some((b, _)) = &pickled {
                        use_cloudpickle = names_main(b)?;
                    }
                }
            }
        }
        if use_cloudpickle {
            // cloudpickle's bytes, but with the function it writes by value pickled
            // once, not for every task; else cloudpickle itself
            pickled = match pickler::dumps_by_value(&data)? {
                Some(b) => Some((b, false)),
                None => from_python(p.cloudpickle_dumps.bind(py), true)?,
            };
        }
        if pickled.is_none() {
            pickled = from_python(p.dumps.bind(py), false)?;
        }
        let Some((pickled, out_of_band)) = pickled else {
            return Ok(Err(Unsupported));
        };
        if out_of_band || pickled.len() > MAX_LEN {
            return Ok(Err(Unsupported));
        }
        let index = self.frames.len() + 1;
        self.out.push(0x81);
        pack_str(&mut self.out, "__Pickled__");
        pack_uint(&mut self.out, index as u64);
        // {"pickled-obj": ..., "compression": (), "num-sub-frames": 0}
        let mut sub = Vec::with_capacity(pickled.len() + 48);
        sub.push(0x83);
        pack_str(&mut sub, "pickled-obj");
        pack_bin(&mut sub, &pickled);
        pack_str(&mut sub, "compression");
        sub.push(0x90);
        pack_str(&mut sub, "num-sub-frames");
        sub.push(0x00);
        self.frames.push(sub);
        Ok(Ok(()))
    }
}

impl<'py> Encoder<'py> {
    /// A list of messages, each `Messages` in it as the messages it holds.
    fn batch(&mut self, msgs: &Bound<'py, PyList>) -> PyResult<Enc> {
        let mut count = 0;
        for m in msgs.iter() {
            count += m.cast::<Messages>().map_or(1, |m| m.get().items.len());
        }
        if count > MAX_LEN {
            return Ok(Err(Unsupported));
        }
        head(&mut self.out, count, 0x90, 15, None, 0xdc, 0xdd);
        // (an error ends the encoder: the depth need not come back down)
        self.depth += 1;
        for m in msgs.iter() {
            let Ok(m) = m.cast::<Messages>() else {
                if self.value(&m)?.is_err() {
                    return Ok(Err(Unsupported));
                }
                continue;
            };
            for o in &m.get().items {
                if self.outgoing(o)?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
        }
        self.depth -= 1;
        Ok(Ok(()))
    }

    /// What `value` writes for the message's dict.
    fn outgoing(&mut self, m: &Outgoing) -> PyResult<Enc> {
        if let Outgoing::Dict(d) = m {
            return self.value(d.bind(self.py).as_any());
        }
        // the dict's own level, as `value` counts it
        self.deeper(|e| e.outgoing_at_depth(m))
    }

    fn outgoing_at_depth(&mut self, m: &Outgoing) -> PyResult<Enc> {
        let py = self.py;
        match m {
            Outgoing::Dict(d) => self.value(d.bind(py).as_any()),
            Outgoing::KeyInMemory {
                key,
                type_,
                with_type,
            } => {
                self.out.push(if *with_type { 0x83 } else { 0x82 });
                pack_str(&mut self.out, "op");
                pack_str(&mut self.out, "key-in-memory");
                pack_str(&mut self.out, "key");
                if self.value(key.bind(py))?.is_err() {
                    return Ok(Err(Unsupported));
                }
                if *with_type {
                    pack_str(&mut self.out, "type");
                    return self.optional(type_.as_ref());
                }
                Ok(Ok(()))
            }
            Outgoing::FreeKeys { key, stimulus_id } => {
                self.out.push(0x83);
                pack_str(&mut self.out, "op");
                pack_str(&mut self.out, "free-keys");
                pack_str(&mut self.out, "keys");
                self.out.push(0x91);
                if self.nested(key.bind(py))?.is_err() {
                    return Ok(Err(Unsupported));
                }
                pack_str(&mut self.out, "stimulus_id");
                self.value(stimulus_id.bind(py))
            }
            Outgoing::ComputeTask(c) => self.compute_task(c),
        }
    }

    /// `value` of something inside one more container level than the message's.
    fn nested(&mut self, o: &Bound<'py, PyAny>) -> PyResult<Enc> {
        self.deeper(|e| e.value(o))
    }

    fn optional(&mut self, o: Option<&Py<PyAny>>) -> PyResult<Enc> {
        match o {
            Some(o) => self.value(o.bind(self.py)),
            None => {
                self.out.push(0xc0);
                Ok(Ok(()))
            }
        }
    }

    /// `ComputeTask::to_dict`'s dict, key by key.
    fn compute_task(&mut self, c: &ComputeTask) -> PyResult<Enc> {
        let py = self.py;
        let out = &mut self.out;
        out.push(0x8c);
        pack_str(out, "op");
        pack_str(out, "compute-task");
        pack_str(out, "key");
        if self.value(c.key.bind(py))?.is_err() {
            return Ok(Err(Unsupported));
        }
        let out = &mut self.out;
        pack_str(out, "run_id");
        pack_int(out, c.run_id);
        pack_str(out, "priority");
        out.push(0x93);
        for i in 0..3 {
            match c.priority.get(i) {
                Num::Int(v) => pack_int(out, v),
                Num::Float(f) => pack_f64(out, f),
            }
        }
        pack_str(out, "stimulus_id");
        pack_str(out, &c.stimulus_id);
        pack_str(out, "who_has");
        head(out, c.who_has.len(), 0x80, 15, None, 0xde, 0xdf);
        for (dep, addrs) in &c.who_has {
            if self.nested(dep.bind(py))?.is_err() {
                return Ok(Err(Unsupported));
            }
            head(&mut self.out, addrs.len(), 0x90, 15, None, 0xdc, 0xdd);
            for a in addrs {
                pack_str(&mut self.out, a);
            }
        }
        pack_str(&mut self.out, "nbytes");
        head(&mut self.out, c.nbytes.len(), 0x80, 15, None, 0xde, 0xdf);
        for (dep, n) in &c.nbytes {
            if self.nested(dep.bind(py))?.is_err() {
                return Ok(Err(Unsupported));
            }
            pack_int(&mut self.out, *n);
        }
        pack_str(&mut self.out, "run_spec");
        let run_spec = match &c.run_spec {
            Some(r) => r.bind(py).clone(),
            None => py.None().into_bound(py),
        };
        if self.pickled_data(&run_spec)?.is_err() {
            return Ok(Err(Unsupported));
        }
        let out = &mut self.out;
        pack_str(out, "resource_restrictions");
        match &c.resource_restrictions {
            Some(rr) => {
                head(out, rr.len(), 0x80, 15, None, 0xde, 0xdf);
                for (k, v) in rr {
                    pack_str(out, k);
                    pack_f64(out, *v);
                }
            }
            None => out.push(0xc0),
        }
        pack_str(out, "actor");
        out.push(if c.actor { 0xc3 } else { 0xc2 });
        pack_str(out, "annotations");
        match &c.annotations {
            Annotations::Task(a) => {
                if self.value(a.bind(py))?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
            Annotations::Span(ann) => {
                out.push(0x81);
                pack_str(out, "span");
                if self.nested(ann.bind(py))?.is_err() {
                    return Ok(Err(Unsupported));
                }
            }
            Annotations::Empty => out.push(0x80),
        }
        pack_str(&mut self.out, "span_id");
        self.optional(c.span_id.as_ref())
    }
}

/// The wire bytes of `msg` (header, prelude, frames), or `None` when distributed's
/// `dumps` must serialize it. In a list of messages, a `Messages` stands for the
/// messages it holds.
pub(crate) fn encode_batch(py: Python<'_>, msg: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
    let mut enc = Encoder {
        py,
        out: Vec::with_capacity(256),
        frames: Vec::new(),
        to_pickle: to_pickle(py)?.clone(),
        depth: 0,
    };
    let r = match msg.cast_exact::<PyList>() {
        Ok(msgs) => enc.batch(msgs)?,
        Err(_) => enc.value(msg)?,
    };
    if r.is_err() {
        return Ok(None);
    }
    let nframes = 1 + enc.frames.len();
    let body: usize = enc.out.len() + enc.frames.iter().map(Vec::len).sum::<usize>();
    let prelude = 8 * (1 + nframes);
    let mut wire = Vec::with_capacity(8 + prelude + body);
    wire.extend(((prelude + body) as u64).to_le_bytes());
    wire.extend((nframes as u64).to_le_bytes());
    wire.extend((enc.out.len() as u64).to_le_bytes());
    for f in &enc.frames {
        wire.extend((f.len() as u64).to_le_bytes());
    }
    wire.extend_from_slice(&enc.out);
    for f in &enc.frames {
        wire.extend_from_slice(f);
    }
    Ok(Some(wire))
}

/// `encode_batch` for tests: the bytes, or `None`.
#[pyfunction]
#[pyo3(name = "encode_batch")]
pub(crate) fn encode_batch_py<'py>(
    py: Python<'py>,
    msg: &Bound<'py, PyAny>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    Ok(encode_batch(py, msg)?.map(|w| PyBytes::new(py, &w)))
}
