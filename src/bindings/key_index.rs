//! Python keys -> dense ids, told apart as a dict tells them apart (equal hash, then
//! identity or `==`), without a Python object per entry.

use crate::core::keys::mix;
use pyo3::prelude::*;

/// Ids are positions in the caller's key and hash lists.
pub(crate) struct KeyIndex(hashbrown::HashTable<u32>);

impl KeyIndex {
    pub(crate) fn with_capacity(n: usize) -> Self {
        KeyIndex(hashbrown::HashTable::with_capacity(n))
    }

    /// Bytes of its table.
    pub(crate) fn allocation_size(&self) -> usize {
        self.0.allocation_size()
    }

    /// Adds a key known to be absent.
    pub(crate) fn insert_new(&mut self, h: i64, id: u32, hashes: &[i64]) {
        self.0
            .insert_unique(mix(h), id, |&other| mix(hashes[other as usize]));
    }

    /// The id of `key` (hash `h`).
    pub(crate) fn find(
        &self,
        h: i64,
        key: &Bound<'_, PyAny>,
        keys: &[Bound<'_, PyAny>],
        hashes: &[i64],
    ) -> PyResult<Option<u32>> {
        let mut err = None;
        let found = self.0.find(mix(h), |&id| {
            hashes[id as usize] == h && dict_key_eq(&keys[id as usize], key, &mut err)
        });
        match err {
            Some(e) => Err(e),
            None => Ok(found.copied()),
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
