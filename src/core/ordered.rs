//! Insertion-ordered map with the semantics of a Python `dict`: updating a key keeps its
//! position, deleting leaves the others in order, `pop_last` is `dict.popitem()`.
//! The scheduler's behaviour depends on these orders (recommendations are processed LIFO,
//! occupancy sums prefixes in insertion order), so they are reproduced exactly.

use hashbrown::HashMap;
use std::hash::Hash;

#[derive(Clone, Debug)]
pub struct OrderedMap<K, V> {
    entries: Vec<Option<(K, V)>>,
    index: HashMap<K, usize>,
}

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<K: Copy + Eq + Hash, V> OrderedMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains_key(&self, k: &K) -> bool {
        self.index.contains_key(k)
    }

    pub fn get(&self, k: &K) -> Option<&V> {
        let &i = self.index.get(k)?;
        self.entries[i].as_ref().map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let &i = self.index.get(k)?;
        self.entries[i].as_mut().map(|(_, v)| v)
    }

    /// `d[k] = v`: a new key goes last, an existing one keeps its place.
    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        if let Some(&i) = self.index.get(&k) {
            let slot = self.entries[i].as_mut().expect("indexed entry");
            return Some(std::mem::replace(&mut slot.1, v));
        }
        self.index.insert(k, self.entries.len());
        self.entries.push(Some((k, v)));
        None
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.index.remove(k)?;
        let (_, v) = self.entries[i].take().expect("indexed entry");
        self.maybe_compact();
        Some(v)
    }

    /// `dict.popitem()`: the most recently inserted entry.
    pub fn pop_last(&mut self) -> Option<(K, V)> {
        while let Some(slot) = self.entries.pop() {
            if let Some((k, v)) = slot {
                self.index.remove(&k);
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
        self.index.clear();
    }

    fn maybe_compact(&mut self) {
        if self.index.is_empty() {
            self.entries.clear();
        } else if self.entries.len() > 32 && self.entries.len() > 2 * self.index.len() {
            self.entries.retain(Option::is_some);
            for (i, slot) in self.entries.iter().enumerate() {
                let (k, _) = slot.as_ref().expect("retained");
                *self.index.get_mut(k).expect("indexed") = i;
            }
        }
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
    }
}
