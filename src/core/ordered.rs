//! Insertion-ordered map with the semantics of a Python `dict`: updating a key keeps its
//! position, deleting leaves the others in order, `pop_last` is `dict.popitem()`.
//! The scheduler's behaviour depends on these orders (recommendations are processed LIFO,
//! occupancy sums prefixes in insertion order), so they are reproduced exactly.
//!
//! Most of these maps hold a handful of entries (a transition's recommendations, a
//! worker's prefix counts), so small maps are scanned linearly and only large ones get a
//! hash index; deleted slots are compacted away so iteration stays proportional to `len`.

use hashbrown::HashMap;
use smallvec::SmallVec;
use std::hash::Hash;

const INDEX_THRESHOLD: usize = 16;

#[derive(Clone, Debug)]
pub struct OrderedMap<K, V> {
    /// Inline for the common tiny maps (a transition's recommendations).
    entries: SmallVec<[Option<(K, V)>; 4]>,
    len: usize,
    index: Option<HashMap<K, usize>>,
}

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        Self {
            entries: SmallVec::new(),
            len: 0,
            index: None,
        }
    }
}

impl<K: Copy + Eq + Hash, V> OrderedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn position(&self, k: &K) -> Option<usize> {
        match &self.index {
            Some(index) => index.get(k).copied(),
            None => self
                .entries
                .iter()
                .position(|e| matches!(e, Some((ek, _)) if ek == k)),
        }
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.position(k).is_some()
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let i = self.position(k)?;
        self.entries[i].as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.position(k)?;
        self.entries[i].as_mut().map(|(_, v)| v)
    }

    /// `d[k] = v`: a new key goes last, an existing one keeps its place.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if let Some(i) = self.position(&k) {
            let slot = self.entries[i].as_mut().expect("indexed entry");
            return Some(std::mem::replace(&mut slot.1, v));
        }
        if let Some(index) = self.index.as_mut() {
            index.insert(k, self.entries.len());
        }
        self.entries.push(Some((k, v)));
        self.len += 1;
        if self.index.is_none() && self.entries.len() > INDEX_THRESHOLD {
            self.rebuild();
        }
        None
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.position(k)?;
        if let Some(index) = self.index.as_mut() {
            index.remove(k);
        }
        let (_, v) = self.entries[i].take().expect("indexed entry");
        self.len -= 1;
        if i + 1 == self.entries.len() {
            self.entries.pop();
        }
        self.maybe_compact();
        Some(v)
    }

    /// `dict.popitem()`: the most recently inserted entry.
    pub fn pop_last(&mut self) -> Option<(K, V)> {
        while let Some(slot) = self.entries.pop() {
            if let Some((k, v)) = slot {
                if let Some(index) = self.index.as_mut() {
                    index.remove(&k);
                }
                self.len -= 1;
                return Some((k, v));
            }
        }
        None
    }

    pub fn first(&self) -> Option<(&K, &V)> {
        self.entries.iter().flatten().next().map(|(k, v)| (k, v))
    }

    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&K, &V)> + '_ {
        self.entries.iter().flatten().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = K> + '_ {
        self.entries.iter().flatten().map(|(k, _)| *k)
    }

    pub fn clear(&mut self) {
        self.entries.clear();
        self.len = 0;
        self.index = None;
    }

    fn maybe_compact(&mut self) {
        if self.len == 0 {
            self.clear();
        } else if self.entries.len() >= 8 && self.entries.len() > 2 * self.len {
            self.entries.retain(|e| e.is_some());
            if self.entries.len() <= INDEX_THRESHOLD {
                self.index = None;
            } else {
                self.rebuild();
            }
        }
    }

    fn rebuild(&mut self) {
        let mut index = HashMap::with_capacity(self.entries.len());
        for (i, slot) in self.entries.iter().enumerate() {
            if let Some((k, _)) = slot {
                index.insert(*k, i);
            }
        }
        self.index = Some(index);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dict_semantics() {
        let mut m = OrderedMap::new();
        m.insert(1, "a");
        m.insert(2, "b");
        m.insert(3, "c");
        m.insert(1, "z");
        assert_eq!(m.keys().collect::<Vec<_>>(), vec![1, 2, 3]);
        m.remove(&2);
        m.insert(2, "b");
        assert_eq!(m.keys().collect::<Vec<_>>(), vec![1, 3, 2]);
        assert_eq!(m.pop_last(), Some((2, "b")));
        assert_eq!(m.pop_last(), Some((3, "c")));
        assert_eq!(m.get(&1), Some(&"z"));
        for i in 0..100 {
            m.insert(i + 10, "x");
        }
        for i in 0..90 {
            m.remove(&(i + 10));
        }
        assert_eq!(m.len(), 11);
        assert_eq!(m.keys().next(), Some(1));
        assert_eq!(m.keys().last(), Some(109));
        assert_eq!(m.get(&105), Some(&"x"));
        assert!(!m.contains_key(&50));
    }

    #[test]
    fn matches_a_reference_under_churn() {
        // a Vec-of-pairs reference with Python dict semantics
        let mut m = OrderedMap::new();
        let mut r: Vec<(u32, u32)> = Vec::new();
        let mut x: u64 = 12345;
        for step in 0..20_000u32 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = ((x >> 33) % 40) as u32;
            match (x >> 20) % 4 {
                0 | 1 => {
                    m.insert(k, step);
                    match r.iter_mut().find(|e| e.0 == k) {
                        Some(e) => e.1 = step,
                        None => r.push((k, step)),
                    }
                }
                2 => {
                    let a = m.remove(&k);
                    let b = r.iter().position(|e| e.0 == k).map(|i| r.remove(i).1);
                    assert_eq!(a, b);
                }
                _ => assert_eq!(m.pop_last(), r.pop()),
            }
            assert_eq!(m.len(), r.len());
            assert!(m.iter().map(|(k, v)| (*k, *v)).eq(r.iter().copied()));
        }
    }
}
