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
    stored.eq(key).unwrap_or_else(|e| {
        *err = Some(e);
        false
    })
}
