//! The tasks by key (`SchedulerState.tasks` as a mapping): lookup by the key's Python
//! hash and creation order, with no Python object per task. Whether two keys are equal
//! is the caller's to say (the binding compares them as a dict does).

use crate::core::types::TaskId;

/// A removed task's place in `order`.
const GONE: TaskId = TaskId(u32::MAX);

#[derive(Default)]
pub struct KeyTable {
    table: hashbrown::HashTable<TaskId>,
    /// Tasks in creation order, `GONE` where one was removed.
    order: Vec<TaskId>,
    /// Each task's index in `order`, by task slot.
    position: Vec<u32>,
    live: usize,
}

/// A Python hash spread for a hash table.
pub fn mix(h: i64) -> u64 {
    // Python's hashes of small ints are the ints: spread them over the table's tag bits
    let x = (h as u64 as u128) * 0x9E37_79B9_7F4A_7C15u128;
    (x as u64) ^ ((x >> 64) as u64)
}

impl KeyTable {
    /// The task whose key has hash `hash` and satisfies `is_key`.
    #[inline]
    pub fn find(&self, hash: i64, is_key: impl FnMut(&TaskId) -> bool) -> Option<TaskId> {
        self.table.find(mix(hash), is_key).copied()
    }

    /// Adds task `t` (whose key no task has); `hash_of` gives the hash of any task held.
    pub fn insert(&mut self, t: TaskId, hash: i64, hash_of: impl Fn(TaskId) -> i64) {
        self.table
            .insert_unique(mix(hash), t, |&other| mix(hash_of(other)));
        if self.position.len() <= t.idx() {
            self.position.resize(t.idx() + 1, 0);
        }
        self.position[t.idx()] = self.order.len() as u32;
        self.order.push(t);
        self.live += 1;
    }

    /// Removes task `t` (key hash `hash`); false if it is not held.
    pub fn remove(&mut self, t: TaskId, hash: i64) -> bool {
        let Ok(entry) = self.table.find_entry(mix(hash), |&other| other == t) else {
            return false;
        };
        entry.remove();
        self.order[self.position[t.idx()] as usize] = GONE;
        self.live -= 1;
        // like a dict, the order is compacted once it is mostly holes
        if self.order.len() > 64 && self.live < self.order.len() / 4 {
            self.order.retain(|&x| x != GONE);
            for (i, x) in self.order.iter().enumerate() {
                self.position[x.idx()] = i as u32;
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.live
    }

    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    /// The first task at or after place `from` in creation order, and its place; an
    /// iterator goes on from the place after it.
    pub fn next_from(&self, from: usize) -> Option<(usize, TaskId)> {
        (self.order.get(from..)?.iter().enumerate())
            .find(|(_, t)| **t != GONE)
            .map(|(i, t)| (from + i, *t))
    }

    /// The tasks in creation order.
    pub fn iter(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.order.iter().copied().filter(|t| *t != GONE)
    }

    /// Room for `additional` more tasks, in slots below `slots`.
    pub fn reserve(&mut self, additional: usize, slots: usize, hash_of: impl Fn(TaskId) -> i64) {
        self.table.reserve(additional, |&t| mix(hash_of(t)));
        self.order.reserve(additional);
        self.position
            .reserve(slots.saturating_sub(self.position.len()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_lookup_and_removal() {
        let hash_of = |t: TaskId| (t.0 as i64) % 7;
        let mut k = KeyTable::default();
        for i in 0..200 {
            k.insert(TaskId(i), hash_of(TaskId(i)), hash_of);
        }
        assert_eq!(k.len(), 200);
        assert_eq!(k.find(3, |t| *t == TaskId(10)), Some(TaskId(10)));
        for i in (0..200).filter(|i| i % 5 != 0) {
            assert!(k.remove(TaskId(i), hash_of(TaskId(i))));
        }
        assert!(!k.remove(TaskId(1), hash_of(TaskId(1))));
        let left: Vec<u32> = k.iter().map(|t| t.0).collect();
        assert_eq!(left, (0..200).step_by(5).collect::<Vec<_>>());
        assert_eq!(k.next_from(0), Some((0, TaskId(0))));
        let (p, t) = k.next_from(1).unwrap();
        assert_eq!(t, TaskId(5));
        assert_eq!(k.next_from(p + 1).unwrap().1, TaskId(10));
        assert_eq!(k.find(3, |t| *t == TaskId(3)), None);
        k.insert(TaskId(3), 3, hash_of);
        assert_eq!(k.iter().last(), Some(TaskId(3)));
    }
}
