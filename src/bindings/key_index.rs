//! Python keys -> dense ids, told apart as a dict tells them apart (equal hash, then
//! identity or `==`), without a Python object per entry.

use pyo3::prelude::*;
use pyo3::Borrowed;

/// Ids are positions in the caller's key and hash lists.
pub(crate) struct KeyIndex(hashbrown::HashTable<u32>);

fn mix(h: i64) -> u64 {
    // Python's hashes of small ints are the ints: spread them over the table's tag bits
    let x = (h as u64 as u128) * 0x9E37_79B9_7F4A_7C15u128;
    (x as u64) ^ ((x >> 64) as u64)
}

impl KeyIndex {
    pub(crate) fn with_capacity(n: usize) -> Self {
        KeyIndex(hashbrown::HashTable::with_capacity(n))
    }

    /// Adds a key known to be absent.
    pub(crate) fn insert_new(&mut self, h: i64, id: u32, hashes: &[i64]) {
        self.0
            .insert_unique(mix(h), id, |&other| mix(hashes[other as usize]));
    }

    /// `key` is a borrowed reference held alive by the caller.
    pub(crate) fn find(
        &self,
        h: i64,
        key: *mut pyo3::ffi::PyObject,
        keys: &[Bound<'_, PyAny>],
        hashes: &[i64],
    ) -> PyResult<Option<u32>> {
        let mut err = None;
        let found = self.0.find(mix(h), |&id| {
            if hashes[id as usize] != h || err.is_some() {
                return false;
            }
            let other = &keys[id as usize];
            if other.as_ptr() == key {
                return true;
            }
            // SAFETY: the caller keeps `key` alive (a set holds it) and holds the GIL.
            let key = unsafe { Borrowed::from_ptr(other.py(), key) };
            other.eq(&*key).unwrap_or_else(|e| {
                err = Some(e);
                false
            })
        });
        match err {
            Some(e) => Err(e),
            None => Ok(found.copied()),
        }
    }
}
