//! A worker's stream read and written by the engine: distributed's TCP framing on a
//! socket the engine took from tornado, and the plain part of its msgpack decoding.
//!
//! Framing (`distributed.comm.tcp`): a u64 (little-endian) length of what follows that
//! is read in one piece, then the frames' prelude (`pack_frames_prelude`: u64 count, one
//! u64 length per frame), then the frames back to back. A batch of messages is the
//! msgpack of its first frame; further frames carry serialized or pickled payloads.
//!
//! A batch whose only frame is plain msgpack (no ext types, no `__Serialized__`,
//! `__Pickled__`, `__Set__` or `__Enum__` maps) is decoded here into what
//! `msgpack.loads(use_list=False, raw=False, strict_map_key=False)` gives; any other
//! batch goes back to Python as its frames, for distributed's own `from_frames`.

use super::incoming::{Finished, FinishedRun};
use crate::core::messages::StartStop;
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::mem::ManuallyDrop;
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::sync::Mutex;

/// The read buffer's first size (it grows for larger batches).
const READ_CHUNK: usize = 64 * 1024;
/// Map keys that make distributed's `object_hook` return something other than the dict.
const HOOK_KEYS: [&str; 4] = ["__Serialized__", "__Pickled__", "__Set__", "__Enum__"];

struct Buffers {
    /// Bytes read and not yet parsed: `rbuf[rpos..rend]`. `rbuf` past `rend` is room
    /// for the next read (zeroed once, when allocated, not before every read).
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Bytes to write, from `wpos`.
    wbuf: Vec<u8>,
    wpos: usize,
    eof: bool,
    /// The socket is no longer this stream's (closed, or about to be): no more I/O.
    detached: bool,
    /// Map keys decoded so far (field names): one str object each, hash cached.
    keys: HashMap<Box<[u8]>, Py<PyString>>,
}

/// msgpack-python's nesting limit; deeper goes to distributed's decoding (which raises).
pub(crate) const MAX_DEPTH: usize = 1024;
/// Map keys up to this long are kept in `Buffers::keys`, up to `MAX_KEYS` of them.
const MAX_KEY_LEN: usize = 32;
const MAX_KEYS: usize = 1024;

/// One socket's reading and writing. The file descriptor stays owned by the Python
/// socket object (the caller keeps it alive and closes it after `close`).
#[pyclass(frozen, module = "dask_rsched._core")]
pub struct WireStream {
    fd: i32,
    bufs: Mutex<Buffers>,
}

impl WireStream {
    /// The socket as a std stream that never closes the descriptor.
    fn socket(&self) -> ManuallyDrop<TcpStream> {
        // SAFETY: the descriptor is an open socket while the stream is in use (the
        // Python side closes it only after this stream is done); ManuallyDrop keeps
        // std from closing it.
        ManuallyDrop::new(unsafe { TcpStream::from_raw_fd(self.fd) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffers> {
        self.bufs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[pymethods]
impl WireStream {
    #[new]
    #[pyo3(signature = (fd, pending=None))]
    fn new(fd: i32, pending: Option<&[u8]>) -> Self {
        WireStream {
            fd,
            bufs: Mutex::new(Buffers {
                rbuf: pending.map(<[u8]>::to_vec).unwrap_or_default(),
                rpos: 0,
                rend: pending.map_or(0, <[u8]>::len),
                wbuf: Vec::new(),
                wpos: 0,
                eof: false,
                detached: false,
                keys: HashMap::new(),
            }),
        }
    }

    /// Reads what the socket has, and returns the complete batches in it: each one
    /// decoded (a tuple of messages, or the single message) or, when it needs
    /// distributed's decoding, as its list of frames. `None` once the peer closed the
    /// connection (or it failed) and every complete batch was returned. With
    /// `finished_runs`, a batch's consecutive `task-finished` messages (those of
    /// distributed's workers) are one `FinishedRun` item of its tuple.
    #[pyo3(signature = (finished_runs=false))]
    fn read_batches<'py>(
        &self,
        py: Python<'py>,
        finished_runs: bool,
    ) -> PyResult<Option<Bound<'py, PyList>>> {
        let mut guard = self.lock();
        let b = &mut *guard;
        if b.detached {
            return Ok(None);
        }
        if !b.eof {
            let mut sock = self.socket();
            loop {
                if b.rend == b.rbuf.len() {
                    b.make_room();
                }
                let room = b.rbuf.len() - b.rend;
                let rend = b.rend;
                match sock.read(&mut b.rbuf[rend..]) {
                    Ok(0) => {
                        b.eof = true;
                        break;
                    }
                    Ok(n) => {
                        b.rend += n;
                        if n < room {
                            break;
                        }
                    }
                    Err(e) => match e.kind() {
                        ErrorKind::WouldBlock => break,
                        ErrorKind::Interrupted => continue,
                        _ => {
                            b.eof = true;
                            break;
                        }
                    },
                }
            }
        }
        let out = PyList::empty(py);
        loop {
            let end = match batch_end(&b.rbuf[b.rpos..b.rend]) {
                Ok(Some(end)) => end,
                Ok(None) => break,
                // the batches before it are handled first; the next call raises
                Err(_) if !out.is_empty() => break,
                Err(e) => {
                    b.eof = true;
                    let msg = format!("malformed message from the peer: {e}");
                    return Err(PyValueError::new_err(msg));
                }
            };
            let batch = &b.rbuf[b.rpos..b.rpos + end];
            out.append(decode_batch(py, batch, &mut b.keys, finished_runs)?)?;
            b.rpos += end;
        }
        if b.rpos == b.rend {
            b.rpos = 0;
            b.rend = 0;
            if b.rbuf.len() > 16 * READ_CHUNK {
                // a large message passed: give its room back
                b.rbuf = vec![0; READ_CHUNK];
            }
        }
        if b.eof && out.is_empty() {
            return Ok(None);
        }
        Ok(Some(out))
    }

    /// Queues `data` for writing and writes what the socket takes. Returns whether
    /// bytes remain (then call `flush` when the socket is writable).
    fn write(&self, data: &[u8]) -> PyResult<bool> {
        let mut b = self.lock();
        b.wbuf.extend_from_slice(data);
        self.flush_locked(&mut b)
    }

    /// Encodes `payload` as distributed's `dumps` and TCP framing would, queues it and
    /// writes what the socket takes: `(nbytes, bytes remain)`, or `None` (nothing
    /// queued) when the payload holds what only distributed's `dumps` serializes, or
    /// its bytes would be more than `max_size`.
    #[pyo3(signature = (payload, max_size=None))]
    fn write_batch(
        &self,
        payload: &Bound<'_, PyAny>,
        max_size: Option<usize>,
    ) -> PyResult<Option<(usize, bool)>> {
        let Some(wire) = super::wire_encode::encode_batch(payload.py(), payload)? else {
            return Ok(None);
        };
        if max_size.is_some_and(|m| wire.len() > m) {
            return Ok(None);
        }
        let mut b = self.lock();
        b.wbuf.extend_from_slice(&wire);
        Ok(Some((wire.len(), self.flush_locked(&mut b)?)))
    }

    /// Writes what the socket takes of the queued bytes; whether bytes remain.
    fn flush(&self) -> PyResult<bool> {
        let mut b = self.lock();
        self.flush_locked(&mut b)
    }

    /// The socket is about to be closed: no read or write touches its descriptor again
    /// (the number may be reused by another file).
    fn detach(&self) {
        self.lock().detached = true;
    }

    /// Bytes queued and not yet written.
    #[getter]
    fn pending_write(&self) -> usize {
        let b = self.lock();
        b.wbuf.len() - b.wpos
    }
}

impl Buffers {
    /// Room after `rend`: unparsed bytes moved to the front, or a larger buffer.
    fn make_room(&mut self) {
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        if self.rend == self.rbuf.len() {
            // calloc'd: pages are touched only as reads fill them
            let mut bigger = vec![0; (2 * self.rbuf.len()).max(READ_CHUNK)];
            bigger[..self.rend].copy_from_slice(&self.rbuf[..self.rend]);
            self.rbuf = bigger;
        }
    }
}

impl WireStream {
    fn flush_locked(&self, b: &mut Buffers) -> PyResult<bool> {
        if b.detached {
            return Err(PyOSError::new_err("the stream's socket is closed"));
        }
        let mut sock = self.socket();
        while b.wpos < b.wbuf.len() {
            match sock.write(&b.wbuf[b.wpos..]) {
                Ok(n) => b.wpos += n,
                Err(e) => match e.kind() {
                    ErrorKind::WouldBlock => break,
                    ErrorKind::Interrupted => continue,
                    _ => return Err(PyOSError::new_err(e.to_string())),
                },
            }
        }
        if b.wpos == b.wbuf.len() {
            b.wbuf.clear();
            b.wpos = 0;
            Ok(false)
        } else {
            if b.wpos >= READ_CHUNK {
                // a congested peer: do not keep what it already took
                b.wbuf.drain(..b.wpos);
                b.wpos = 0;
            }
            Ok(true)
        }
    }
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    b.get(at..at + 8)
        .map(|s| u64::from_le_bytes(s.try_into().unwrap()))
}

/// The length of the first complete batch in `b`, if `b` holds one; an error when its
/// header cannot be distributed's (`_add_frames_header`: the length read in one piece
/// covers the prelude and is covered by the frames).
fn batch_end(b: &[u8]) -> Result<Option<usize>, &'static str> {
    let (Some(nosplit), Some(nframes)) = (read_u64(b, 0), read_u64(b, 8)) else {
        return Ok(None);
    };
    // The prelude (count and lengths) is part of what the header's length covers.
    let prelude_in_nosplit = nframes
        .checked_mul(8)
        .and_then(|x| x.checked_add(8))
        .filter(|&x| x <= nosplit)
        .ok_or("frame count beyond the header's length")?;
    let prelude = prelude_in_nosplit
        .checked_add(8)
        .and_then(|x| usize::try_from(x).ok())
        .ok_or("header too large")?;
    if b.len() < prelude {
        return Ok(None);
    }
    let mut end = prelude as u64;
    for i in 0..(prelude - 16) / 8 {
        let len = read_u64(b, 16 + 8 * i).unwrap_or(0);
        end = end.checked_add(len).ok_or("frame lengths overflow")?;
    }
    if nosplit.checked_add(8).is_none_or(|n| n > end) {
        return Err("header length beyond its frames");
    }
    let end = usize::try_from(end).map_err(|_| "batch too large")?;
    Ok((b.len() >= end).then_some(end))
}

/// A complete batch: decoded when it is one plain msgpack frame, else its frames.
fn decode_batch<'py>(
    py: Python<'py>,
    batch: &[u8],
    keys: &mut HashMap<Box<[u8]>, Py<PyString>>,
    finished_runs: bool,
) -> PyResult<Bound<'py, PyAny>> {
    let nframes = read_u64(batch, 8).unwrap_or(0) as usize;
    let mut start = 16 + 8 * nframes;
    if nframes == 1 {
        let frame = &batch[start..];
        let mut d = Decoder {
            b: frame,
            pos: 0,
            depth: 0,
            keys,
        };
        let v = if finished_runs {
            d.batch_with_runs(py)?
        } else {
            d.value(py)?
        };
        if let Some(v) = v {
            if d.pos == frame.len() {
                return Ok(v);
            }
        }
    }
    let frames = PyList::empty(py);
    for i in 0..nframes {
        let len = read_u64(batch, 16 + 8 * i).unwrap_or(0) as usize;
        frames.append(PyBytes::new(py, &batch[start..start + len]))?;
        start += len;
    }
    Ok(frames.into_any())
}

/// One message's msgpack (a `Finished`'s bytes) as distributed's decoding gives it.
pub(crate) fn decode_message<'py>(py: Python<'py>, raw: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let mut keys = HashMap::new();
    let mut d = Decoder {
        b: raw,
        pos: 0,
        // inside its batch's array
        depth: 1,
        keys: &mut keys,
    };
    match d.value(py)? {
        Some(v) if d.pos == raw.len() => Ok(v),
        _ => Err(PyValueError::new_err("a message that does not decode")),
    }
}

/// msgpack to Python objects; `None` for anything distributed decodes differently.
struct Decoder<'a> {
    b: &'a [u8],
    pos: usize,
    /// Nesting so far; msgpack-python refuses deeper than `MAX_DEPTH`.
    depth: usize,
    keys: &'a mut HashMap<Box<[u8]>, Py<PyString>>,
}

impl<'a> Decoder<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.b.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }

    fn uint(&mut self, n: usize) -> Option<u64> {
        let s = self.take(n)?;
        Some(s.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    }

    /// A big-endian int of `n` bytes, sign-extended.
    fn signed(&mut self, n: usize) -> Option<i64> {
        let x = self.uint(n)?;
        let shift = 64 - 8 * n as u32;
        Some(((x << shift) as i64) >> shift)
    }

    /// The float32 (`0xca`) or float64 (`0xcb`) after tag `t`.
    fn float(&mut self, t: u8) -> Option<f64> {
        if t == 0xca {
            Some(f64::from(f32::from_bits(self.uint(4)? as u32)))
        } else {
            Some(f64::from_bits(self.uint(8)?))
        }
    }

    fn value<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(t) = self.take(1).map(|s| s[0]) else {
            return Ok(None);
        };
        let v = match t {
            0x00..=0x7f => u64::from(t).into_pyobject(py)?.into_any(),
            0xe0..=0xff => i64::from(t as i8).into_pyobject(py)?.into_any(),
            0x80..=0x8f => return self.map(py, usize::from(t & 0x0f)),
            0x90..=0x9f => return self.array(py, usize::from(t & 0x0f)),
            0xa0..=0xbf => return self.str(py, usize::from(t & 0x1f)),
            0xc0 => py.None().into_bound(py),
            0xc2 => false.into_pyobject(py)?.to_owned().into_any(),
            0xc3 => true.into_pyobject(py)?.to_owned().into_any(),
            0xc4..=0xc6 => {
                let Some(n) = self.uint(1 << (t - 0xc4)) else {
                    return Ok(None);
                };
                let Some(s) = self.take(n as usize) else {
                    return Ok(None);
                };
                PyBytes::new(py, s).into_any()
            }
            0xca | 0xcb => match self.float(t) {
                Some(x) => x.into_pyobject(py)?.into_any(),
                None => return Ok(None),
            },
            0xcc..=0xcf => match self.uint(1 << (t - 0xcc)) {
                Some(x) => x.into_pyobject(py)?.into_any(),
                None => return Ok(None),
            },
            0xd0..=0xd3 => match self.signed(1 << (t - 0xd0)) {
                Some(x) => x.into_pyobject(py)?.into_any(),
                None => return Ok(None),
            },
            0xd9..=0xdb => match self.uint(1 << (t - 0xd9)) {
                Some(n) => return self.str(py, n as usize),
                None => return Ok(None),
            },
            0xdc | 0xdd => match self.uint(2 << (t - 0xdc)) {
                Some(n) => return self.array(py, n as usize),
                None => return Ok(None),
            },
            0xde | 0xdf => match self.uint(2 << (t - 0xde)) {
                Some(n) => return self.map(py, n as usize),
                None => return Ok(None),
            },
            // ext types (msgpack-python returns ExtType), 0xc1 (never used).
            _ => return Ok(None),
        };
        Ok(Some(v))
    }

    /// A map key: a short str comes from the stream's cache.
    fn key<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let t = self.b.get(self.pos).copied();
        let n = match t {
            Some(t @ 0xa0..=0xbf) => usize::from(t & 0x1f),
            Some(0xd9) => match self.b.get(self.pos + 1) {
                Some(&n) => usize::from(n),
                None => return Ok(None),
            },
            _ => return self.value(py),
        };
        let start = self.pos + if t == Some(0xd9) { 2 } else { 1 };
        let Some(bytes) = self.b.get(start..start + n) else {
            return Ok(None);
        };
        if n > MAX_KEY_LEN {
            return self.value(py);
        }
        if let Some(k) = self.keys.get(bytes) {
            self.pos = start + n;
            return Ok(Some(k.bind(py).clone().into_any()));
        }
        let Some(k) = self.value(py)? else {
            return Ok(None);
        };
        if self.keys.len() < MAX_KEYS {
            let s = k.cast::<PyString>()?.clone();
            self.keys.insert(bytes.into(), s.unbind());
        }
        Ok(Some(k))
    }

    fn str<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        let Some(s) = self.take(n) else {
            return Ok(None);
        };
        Ok(std::str::from_utf8(s)
            .ok()
            .map(|s| PyString::new(py, s).into_any()))
    }

    fn array<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        if n > self.b.len() - self.pos || self.depth >= MAX_DEPTH {
            return Ok(None);
        }
        self.depth += 1;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            match self.value(py)? {
                Some(v) => items.push(v),
                None => return Ok(None),
            }
        }
        self.depth -= 1;
        Ok(Some(PyTuple::new(py, items)?.into_any()))
    }

    fn map<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Option<Bound<'py, PyAny>>> {
        if self.depth >= MAX_DEPTH {
            return Ok(None);
        }
        self.depth += 1;
        let d = PyDict::new(py);
        for _ in 0..n {
            let Some(k) = self.key(py)? else {
                return Ok(None);
            };
            if let Ok(s) = k.cast::<PyString>() {
                if HOOK_KEYS.iter().any(|h| s.to_str().is_ok_and(|s| s == *h)) {
                    return Ok(None);
                }
            }
            let Some(v) = self.value(py)? else {
                return Ok(None);
            };
            if d.set_item(k, v).is_err() {
                // An unhashable key: let distributed's decoding raise what it raises.
                return Ok(None);
            }
        }
        self.depth -= 1;
        Ok(Some(d.into_any()))
    }
}

impl<'a> Decoder<'a> {
    /// A batch (an array of messages) with each run of `task-finished` messages as a
    /// `FinishedRun`; anything else as `value` gives it.
    fn batch_with_runs<'py>(&mut self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let n = match self.b.first() {
            Some(&t @ 0x90..=0x9f) => {
                self.pos = 1;
                usize::from(t & 0x0f)
            }
            Some(0xdc | 0xdd) => {
                let t = self.b[0];
                self.pos = 1;
                match self.uint(2 << (t - 0xdc)) {
                    Some(n) => n as usize,
                    None => return Ok(None),
                }
            }
            _ => return self.value(py),
        };
        if n > self.b.len() - self.pos {
            return Ok(None);
        }
        self.depth = 1;
        let mut items: Vec<Bound<'py, PyAny>> = Vec::new();
        let mut run: Vec<Finished> = Vec::new();
        for _ in 0..n {
            if let Some(f) = self.finished(py)? {
                run.push(f);
                continue;
            }
            if !run.is_empty() {
                let r = FinishedRun {
                    items: std::mem::take(&mut run),
                };
                items.push(Bound::new(py, r)?.into_any());
            }
            match self.value(py)? {
                Some(v) => items.push(v),
                None => return Ok(None),
            }
        }
        if !run.is_empty() {
            items.push(Bound::new(py, FinishedRun { items: run })?.into_any());
        }
        self.depth = 0;
        Ok(Some(PyTuple::new(py, items)?.into_any()))
    }

    /// A `task-finished` message with `TaskFinishedMsg`'s eleven fields, each once and
    /// of its declared type, parsed; else None, the position unchanged.
    fn finished(&mut self, py: Python<'_>) -> PyResult<Option<Finished>> {
        let (start, depth) = (self.pos, self.depth);
        let r = self.finished_fields(py, start)?;
        if r.is_none() {
            self.pos = start;
        }
        self.depth = depth;
        Ok(r)
    }

    fn finished_fields(&mut self, py: Python<'_>, start: usize) -> PyResult<Option<Finished>> {
        if self.take(1) != Some(&[0x8b][..]) {
            return Ok(None);
        }
        let (mut key, mut sid, mut run_id, mut nbytes) = (None, None, None, None);
        let (mut type_, mut typename, mut metadata, mut startstops) = (None, None, None, None);
        let mut seen = 0u16;
        // the fields' values sit in the batch's array and the message's map
        self.depth = 2;
        for _ in 0..11 {
            let Some(name) = self.short_str() else {
                return Ok(None);
            };
            let bit = match name {
                b"op" => {
                    if self.short_str() != Some(b"task-finished") {
                        return Ok(None);
                    }
                    0
                }
                b"key" => {
                    key = self.value(py)?.map(Bound::unbind);
                    1
                }
                b"run_id" => {
                    run_id = self.int();
                    2
                }
                b"nbytes" => {
                    nbytes = self.int();
                    3
                }
                b"type" => {
                    type_ = match self.b.get(self.pos) {
                        Some(0xc0) => {
                            self.pos += 1;
                            Some(None)
                        }
                        Some(0xc4..=0xc6) => self.value(py)?.map(|v| Some(v.unbind())),
                        _ => None,
                    };
                    4
                }
                b"typename" => {
                    typename = self.short_str().and_then(|s| std::str::from_utf8(s).ok());
                    5
                }
                b"metadata" => {
                    metadata = match self.b.get(self.pos) {
                        Some(0x80) => {
                            self.pos += 1;
                            Some(None)
                        }
                        Some(0x81..=0x8f | 0xde | 0xdf) => {
                            self.value(py)?.map(|v| Some(v.unbind()))
                        }
                        _ => None,
                    };
                    6
                }
                b"thread" => {
                    if self.b.get(self.pos) == Some(&0xc0) {
                        self.pos += 1;
                    } else if self.int().is_none() {
                        return Ok(None);
                    }
                    7
                }
                b"startstops" => {
                    startstops = self.startstops();
                    8
                }
                b"status" => {
                    if self
                        .short_str()
                        .and_then(|s| std::str::from_utf8(s).ok())
                        .is_none()
                    {
                        return Ok(None);
                    }
                    9
                }
                b"stimulus_id" => {
                    if !matches!(self.b.get(self.pos), Some(0xa0..=0xbf | 0xd9..=0xdb)) {
                        return Ok(None);
                    }
                    sid = self.value(py)?.map(Bound::unbind);
                    10
                }
                _ => return Ok(None),
            };
            if seen & (1 << bit) != 0 {
                return Ok(None);
            }
            seen |= 1 << bit;
        }
        let (Some(key), Some(stimulus_id), Some(run_id), Some(nbytes)) = (key, sid, run_id, nbytes)
        else {
            return Ok(None);
        };
        let (Some(type_), Some(typename), Some(metadata), Some(startstops)) =
            (type_, typename, metadata, startstops)
        else {
            return Ok(None);
        };
        Ok(Some(Finished {
            raw: self.b[start..self.pos].into(),
            key,
            stimulus_id,
            run_id,
            nbytes,
            type_,
            typename: typename.to_owned(),
            metadata,
            startstops,
        }))
    }

    /// A str's bytes (up to 2^16 long).
    fn short_str(&mut self) -> Option<&'a [u8]> {
        let n = match *self.b.get(self.pos)? {
            t @ 0xa0..=0xbf => {
                self.pos += 1;
                usize::from(t & 0x1f)
            }
            0xd9 => {
                self.pos += 1;
                self.uint(1)? as usize
            }
            0xda => {
                self.pos += 1;
                self.uint(2)? as usize
            }
            _ => return None,
        };
        self.take(n)
    }

    /// An int that fits an i64.
    fn int(&mut self) -> Option<i64> {
        let t = *self.b.get(self.pos)?;
        self.pos += 1;
        match t {
            0x00..=0x7f => Some(i64::from(t)),
            0xe0..=0xff => Some(i64::from(t as i8)),
            0xcc..=0xcf => i64::try_from(self.uint(1 << (t - 0xcc))?).ok(),
            0xd0..=0xd3 => self.signed(1 << (t - 0xd0)),
            _ => None,
        }
    }

    /// A number as `float()` reads it: an int or a float.
    fn number(&mut self) -> Option<f64> {
        match *self.b.get(self.pos)? {
            t @ (0xca | 0xcb) => {
                self.pos += 1;
                self.float(t)
            }
            _ => self.int().map(|i| i as f64),
        }
    }

    /// `[{"action": str, "start": number, "stop": number[, "source": str]}, ...]`
    fn startstops(&mut self) -> Option<Vec<StartStop>> {
        let n = match *self.b.get(self.pos)? {
            t @ 0x90..=0x9f => {
                self.pos += 1;
                usize::from(t & 0x0f)
            }
            _ => return None,
        };
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let fields = match *self.b.get(self.pos)? {
                0x83 => 3,
                0x84 => 4,
                _ => return None,
            };
            self.pos += 1;
            let (mut action, mut start, mut stop, mut source) = (None, None, None, false);
            for _ in 0..fields {
                match self.short_str()? {
                    b"action" if action.is_none() => {
                        action = Some(std::str::from_utf8(self.short_str()?).ok()?.to_owned());
                    }
                    b"start" if start.is_none() => start = Some(self.number()?),
                    b"stop" if stop.is_none() => stop = Some(self.number()?),
                    b"source" if !source => {
                        std::str::from_utf8(self.short_str()?).ok()?;
                        source = true;
                    }
                    _ => return None,
                }
            }
            out.push(StartStop {
                action: action?,
                start: start?,
                stop: stop?,
            });
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::batch_end;

    fn batch(frames: &[&[u8]]) -> Vec<u8> {
        let mut prelude = (frames.len() as u64).to_le_bytes().to_vec();
        for f in frames {
            prelude.extend((f.len() as u64).to_le_bytes());
        }
        let nosplit = (prelude.len() + frames.iter().map(|f| f.len()).sum::<usize>()) as u64;
        let mut b = nosplit.to_le_bytes().to_vec();
        b.extend(prelude);
        for f in frames {
            b.extend_from_slice(f);
        }
        b
    }

    #[test]
    fn batches_are_found_whole_and_bad_headers_refused() {
        let b = batch(&[b"\x90", b"abc"]);
        assert_eq!(batch_end(&b), Ok(Some(b.len())));
        for cut in 0..b.len() {
            assert_eq!(batch_end(&b[..cut]), Ok(None), "cut at {cut}");
        }
        let mut two = b.clone();
        two.extend(batch(&[b"x"]));
        assert_eq!(batch_end(&two), Ok(Some(b.len())));
        // a frame count the length cannot hold
        let mut bad = b.clone();
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(batch_end(&bad).is_err());
        // a frame count whose prelude length wraps around
        let mut bad = u64::MAX.to_le_bytes().to_vec();
        bad.extend(((1u64 << 61) - 1).to_le_bytes());
        assert!(batch_end(&bad).is_err());
        let mut bad = u64::MAX.to_le_bytes().to_vec();
        bad.extend(((1u64 << 61) - 2).to_le_bytes());
        assert!(batch_end(&bad).is_err());
        // a length beyond the frames
        let mut bad = b.clone();
        bad[0..8].copy_from_slice(&1000u64.to_le_bytes());
        assert!(batch_end(&bad).is_err());
    }
}
