//! `distributed.collections.HeapSet` keyed by task priority: a set plus a lazily cleaned
//! min-heap of `(priority, insertion counter, task)`. As in Python, a task discarded and
//! added again keeps its older heap entry, which still counts while the task is a member,
//! so ties and re-queued tasks order exactly as distributed orders them.

use crate::core::types::{CoreError, CoreResult, Priority, TaskId};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

#[derive(Clone, Debug)]
struct Entry {
    /// `None` for a task without priority (scattered data that is recomputed).
    priority: Option<Priority>,
    inc: u64,
    task: TaskId,
    /// Distinguishes tasks that reuse an arena slot (Python holds weak references).
    serial: u64,
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
        crate::core::types::cmp_opt_prio(&other.priority, &self.priority)
            .then(other.inc.cmp(&self.inc))
    }
}

#[derive(Clone, Debug, Default)]
pub struct HeapSet {
    heap: BinaryHeap<Entry>,
    /// By task index: the member's serial + 1, 0 for a task that is not a member (a
    /// dense table: no hashing, 8 bytes per task slot).
    data: Vec<u64>,
    /// Members.
    len: usize,
    inc: u64,
    /// Heap entries without priority (kept so `add` need not scan the heap).
    unprioritised: usize,
}

impl HeapSet {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn contains(&self, t: TaskId) -> bool {
        self.data.get(t.idx()).is_some_and(|&s| s != 0)
    }

    fn live(&self, e: &Entry) -> bool {
        self.data.get(e.task.idx()) == Some(&(e.serial + 1))
    }

    /// Python compares `None` with a tuple only when the heap holds another entry, and
    /// then raises `TypeError`; that case is an error here too.
    pub fn add(&mut self, t: TaskId, serial: u64, priority: Option<Priority>) -> CoreResult<()> {
        if self.contains(t) {
            return Ok(());
        }
        if !self.heap.is_empty() && (priority.is_none() || self.unprioritised > 0) {
            return Err(CoreError::Invalid(
                "'<' not supported between a task without priority and a queued task".into(),
            ));
        }
        self.unprioritised += usize::from(priority.is_none());
        self.heap.push(Entry {
            priority,
            inc: self.inc,
            task: t,
            serial,
        });
        if t.idx() >= self.data.len() {
            // a third more room than asked: tasks are added in roughly index order
            let len = (t.idx() + 1).max(self.data.len() + self.data.len() / 3);
            self.data.resize(len, 0);
        }
        self.data[t.idx()] = serial + 1;
        self.len += 1;
        self.inc += 1;
        Ok(())
    }

    pub fn discard(&mut self, t: TaskId) {
        if let Some(s) = self.data.get_mut(t.idx()).filter(|s| **s != 0) {
            *s = 0;
            self.len -= 1;
        }
        if self.len == 0 {
            self.clear();
        }
    }

    pub fn peek(&mut self) -> Option<TaskId> {
        if self.len == 0 {
            return None;
        }
        while let Some(top) = self.heap.peek() {
            if self.live(top) {
                return Some(top.task);
            }
            if let Some(e) = self.heap.pop() {
                self.unprioritised -= usize::from(e.priority.is_none());
            }
        }
        None
    }

    /// Members from smallest to largest by (priority, first live insertion), as
    /// `HeapSet.sorted()`.
    pub fn sorted(&self) -> Vec<TaskId> {
        let mut v: Vec<&Entry> = self.heap.iter().filter(|e| self.live(e)).collect();
        v.sort_by(|a, b| b.cmp(a));
        let mut seen = hashbrown::HashSet::new();
        v.into_iter()
            .filter(|e| seen.insert(e.task))
            .map(|e| e.task)
            .collect()
    }

    /// `clear()` empties the heap but keeps the insertion counter, as distributed does.
    pub fn clear(&mut self) {
        // every member has a heap entry
        for e in self.heap.drain() {
            if let Some(s) = self.data.get_mut(e.task.idx()) {
                *s = 0;
            }
        }
        self.len = 0;
        self.unprioritised = 0;
    }
}
