//! `distributed.collections.HeapSet` keyed by task priority: a set with O(1) membership
//! and a lazily-cleaned min-heap; ties are broken by insertion order, as in Python.

use crate::core::types::{Priority, TaskId};
use hashbrown::HashMap;
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Debug)]
struct Entry {
    priority: Priority,
    inc: u64,
    task: TaskId,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    // Reversed: BinaryHeap is a max-heap and we want the smallest (priority, inc).
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .priority
            .cmp_prio(&self.priority)
            .then(other.inc.cmp(&self.inc))
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeapSet {
    heap: BinaryHeap<Entry>,
    /// task -> the `inc` of its live heap entry
    data: HashMap<TaskId, u64>,
    inc: u64,
}

impl HeapSet {
    pub fn len(&self) -> usize {
        self.data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn contains(&self, t: TaskId) -> bool {
        self.data.contains_key(&t)
    }

    pub fn add(&mut self, t: TaskId, priority: Priority) {
        if self.data.contains_key(&t) {
            return;
        }
        let inc = self.inc;
        self.inc += 1;
        self.data.insert(t, inc);
        self.heap.push(Entry {
            priority,
            inc,
            task: t,
        });
        if self.heap.len() > 64 && self.heap.len() > 4 * self.data.len() {
            let data = &self.data;
            self.heap.retain(|e| data.get(&e.task) == Some(&e.inc));
        }
    }

    pub fn discard(&mut self, t: TaskId) -> bool {
        let removed = self.data.remove(&t).is_some();
        if self.data.is_empty() {
            self.heap.clear();
        }
        removed
    }

    pub fn peek(&mut self) -> Option<TaskId> {
        while let Some(top) = self.heap.peek() {
            if self.data.get(&top.task) == Some(&top.inc) {
                return Some(top.task);
            }
            self.heap.pop();
        }
        None
    }

    /// Members sorted by (priority, insertion), as `HeapSet.sorted()`.
    pub fn sorted(&self) -> Vec<TaskId> {
        let mut v: Vec<&Entry> = self
            .heap
            .iter()
            .filter(|e| self.data.get(&e.task) == Some(&e.inc))
            .collect();
        v.sort_by(|a, b| b.cmp(a));
        v.into_iter().map(|e| e.task).collect()
    }

    pub fn clear(&mut self) {
        self.heap.clear();
        self.data.clear();
    }
}
