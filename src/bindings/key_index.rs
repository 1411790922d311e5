//! Python keys -> dense ids, told apart as a dict tells them apart (equal hash, then
//! identity or `==`), without a Python object per entry.

use crate::core::keys::mix;
use pyo3::prelude::*;

/// Ids are positions in the caller's key and hash lists. An open-addressing table of
/// one word per slot (a tag from the hash beside the id), at most half full: a lookup
/// in a large graph costs one cache miss, which [`KeyIndex::prefetch`] can start early.
pub(crate) struct KeyIndex {
    /// 0: empty; else the tag (high half) and id + 1 (low half).
    slots: Vec<u64>,
    len: usize,
}

/// A slot's tag bits (from the hash); the low half is the id + 1.
const TAG: u64 = 0xFFFF_FFFF_0000_0000;

/// The id an occupied slot holds.
#[inline]
fn slot_id(slot: u64) -> usize {
    ((slot & !TAG) - 1) as usize
}

impl KeyIndex {
    pub(crate) fn with_capacity(n: usize) -> Self {
        KeyIndex {
            slots: vec![0; (2 * n).next_power_of_two().max(8)],
            len: 0,
        }
    }

    /// Bytes of its table.
    pub(crate) fn allocation_size(&self) -> usize {
        self.slots.capacity() * 8
    }

    #[inline]
    fn mask(&self) -> usize {
        self.slots.len() - 1
    }

    /// The slot a hash's probe starts at, and its tag.
    #[inline]
    fn place(&self, h: i64) -> (usize, u64) {
        let m = mix(h);
        (m as usize & self.mask(), m & TAG)
    }

    /// The first empty slot from `pos` on.
    #[inline]
    fn free_slot(&self, mut pos: usize) -> usize {
        while self.slots[pos] != 0 {
            pos = (pos + 1) & self.mask();
        }
        pos
    }

    /// Starts fetching the slot where a lookup or insertion of hash `h` begins.
    #[inline]
    pub(crate) fn prefetch(&self, h: i64) {
        #[cfg(target_arch = "x86_64")]
        {
            let (pos, _) = self.place(h);
            // SAFETY: `pos` is within `slots`; a prefetch reads nothing and cannot fault.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
                _mm_prefetch::<_MM_HINT_T0>(self.slots.as_ptr().add(pos) as *const i8);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = h;
    }

    /// Adds a key known to be absent.
    pub(crate) fn insert_new(&mut self, h: i64, id: u32, hashes: &[i64]) {
        if 2 * (self.len + 1) > self.slots.len() {
            self.grow(hashes);
        }
        let (pos, tag) = self.place(h);
        let pos = self.free_slot(pos);
        self.slots[pos] = tag | (u64::from(id) + 1);
        self.len += 1;
    }

    fn grow(&mut self, hashes: &[i64]) {
        let size = 2 * self.slots.len();
        let old = std::mem::replace(&mut self.slots, vec![0; size]);
        for slot in old.into_iter().filter(|&s| s != 0) {
            let (pos, _) = self.place(hashes[slot_id(slot)]);
            let pos = self.free_slot(pos);
            self.slots[pos] = slot;
        }
    }

    /// The id of `key` (hash `h`).
    pub(crate) fn find(
        &self,
        h: i64,
        key: &Bound<'_, PyAny>,
        keys: &[Bound<'_, PyAny>],
        hashes: &[i64],
    ) -> PyResult<Option<u32>> {
        let (mut pos, tag) = self.place(h);
        let mut err = None;
        loop {
            let slot = self.slots[pos];
            if slot == 0 {
                return Ok(None);
            }
            if slot & TAG == tag {
                let id = slot_id(slot);
                if hashes[id] == h && dict_key_eq(&keys[id], key, &mut err) {
                    return Ok(Some(id as u32));
                }
                if let Some(e) = err {
                    return Err(e);
                }
            }
            pos = (pos + 1) & self.mask();
        }
    }
}

/// Whether `stored` is `key` as a dict tells keys with equal hashes apart: identity, then
/// `stored == key`. An exception from `==` goes to `err` (the first one; the keys count
/// as different).
pub(crate) fn dict_key_eq(
    stored: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    err: &mut Option<PyErr>,
) -> bool {
    if stored.as_ptr() == key.as_ptr() {
        return true;
    }
    if err.is_some() {
        return false;
    }
    if let Some(eq) = plain_tuple_eq(stored, key) {
        return eq;
    }
    stored.eq(key).unwrap_or_else(|e| {
        *err = Some(e);
        false
    })
}

/// `a == b` for two exact tuples whose items are pairwise the same object, or exact
/// ints, exact strs or such tuples (dask's tuple keys): Python's answer without calling
/// into it (none of these `==` runs code of its own). `None` for anything else.
fn plain_tuple_eq(a: &Bound<'_, PyAny>, b: &Bound<'_, PyAny>) -> Option<bool> {
    use pyo3::types::{PyInt, PyString, PyTuple};
    let (a, b) = (
        a.cast_exact::<PyTuple>().ok()?,
        b.cast_exact::<PyTuple>().ok()?,
    );
    if a.len() != b.len() {
        return Some(false);
    }
    for (x, y) in a.iter().zip(b.iter()) {
        if x.is(&y) {
            continue;
        }
        let same = if x.is_exact_instance_of::<PyInt>() && y.is_exact_instance_of::<PyInt>() {
            x.extract::<i64>().ok()? == y.extract::<i64>().ok()?
        } else if x.is_exact_instance_of::<PyString>() && y.is_exact_instance_of::<PyString>() {
            x.cast::<PyString>().ok()?.to_str().ok()? == y.cast::<PyString>().ok()?.to_str().ok()?
        } else {
            plain_tuple_eq(&x, &y)?
        };
        if !same {
            return Some(false);
        }
    }
    Some(true)
}
