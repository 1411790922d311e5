//! Task groups and prefixes: creation, counters, durations, types, death and slot reuse.

use crate::core::entities::*;
use crate::core::ordered::OrderedMap;
use crate::core::state::SchedulerState;
use crate::core::types::*;
use smallvec::SmallVec;

impl<P: Clone> SchedulerState<P> {
    pub fn prefix_id(&mut self, name: &str) -> PrefixId {
        if let Some(&p) = self.prefix_by_name.get(name) {
            return p;
        }
        let id = PrefixId(self.prefixes.len() as u32);
        let duration_average = self
            .config
            .default_task_durations
            .get(name)
            .copied()
            .unwrap_or(-1.0);
        self.prefixes.push(TaskPrefix {
            name: name.to_owned(),
            states: [0; 8],
            state_counts: [0; 8],
            size: 0,
            nbytes_total: 0,
            durations: Durations::default(),
            types: OrderedMap::new(),
            duration_average,
            max_exec_time: -1.0,
            suspicious: 0,
            groups: OrderedMap::new(),
        });
        self.prefix_by_name.insert(name.to_owned(), id);
        id
    }

    pub fn group_id(&mut self, group_name: &str, prefix_name: &str) -> GroupId {
        if let Some(&g) = self.group_by_name.get(group_name) {
            return g;
        }
        let prefix = self.prefix_id(prefix_name);
        let group = TaskGroup::new(group_name.to_owned(), prefix);
        let id = match self.free_groups.pop() {
            Some(id) => {
                self.groups[id.idx()] = group;
                id
            }
            None => {
                self.groups.push(group);
                GroupId(self.groups.len() as u32 - 1)
            }
        };
        self.alive_groups.insert(id, ());
        self.prefixes[prefix.idx()].groups.insert(id, ());
        self.group_by_name.insert(group_name.to_owned(), id);
        id
    }

    // ----- groups -------------------------------------------------------------------

    /// TaskGroup.add_duration (and the prefix's)
    pub fn add_duration(&mut self, g: GroupId, action: &str, start: f64, stop: f64) {
        // Python's round(): halves to even
        let duration_us = ((stop - start) * 1e6).round_ties_even().max(0.0) as i64;
        let aid = self.strings.intern(action);
        let tg = &mut self.groups[g.idx()];
        tg.durations.duration_us += duration_us;
        *entry(&mut tg.durations.all_durations_us, aid) += duration_us;
        if action == "compute" {
            if tg.stop < stop {
                tg.stop = stop;
            }
            if tg.start == 0.0 || tg.start > start {
                tg.start = start;
            }
        }
        let p = tg.prefix;
        let tp = &mut self.prefixes[p.idx()];
        tp.durations.duration_us += duration_us;
        *entry(&mut tp.durations.all_durations_us, aid) += duration_us;
        let duration_s = duration_us as f64 / 1e6;
        if action == "compute" {
            let old = tp.duration_average;
            if old < 0.0 {
                tp.duration_average = duration_s;
            } else {
                tp.duration_average = 0.5 * duration_s + 0.5 * old;
            }
        }
    }

    pub fn add_type(&mut self, g: GroupId, typename: &str) {
        let tid = self.strings.intern(typename);
        let tg = &mut self.groups[g.idx()];
        *entry(&mut tg.types, tid) += 1;
        let p = tg.prefix;
        *entry(&mut self.prefixes[p.idx()].types, tid) += 1;
    }

    /// `TaskPrefix.remove_group` + `del task_groups[name]`
    pub fn remove_group(&mut self, g: GroupId) {
        let tg = self.groups[g.idx()].clone();
        let tp = &mut self.prefixes[tg.prefix.idx()];
        tp.groups.remove(&g);
        for (i, count) in tg.states.iter().enumerate() {
            tp.states[i] -= count;
            tp.size -= count;
        }
        tp.durations.duration_us -= tg.durations.duration_us;
        tp.nbytes_total -= tg.nbytes_total;
        for (&tid, &count) in tg.types.iter() {
            let c = entry(&mut tp.types, tid);
            *c -= count;
            if *c == 0 {
                tp.types.remove(&tid);
            }
        }
        self.group_by_name.remove(&tg.name);
        self.groups[g.idx()].alive = false;
        self.alive_groups.remove(&g);
        self.dead_groups.push(g);
    }

    /// After a batch: each group that died is let go of, or pinned while `held(g)`
    /// (a Python object holds its handle: a Computation, a span); pinned groups are
    /// looked at again, amortised, as more die. A group let go of gives its slot to new
    /// groups once no group lists it in `dependencies` (which may free others in turn).
    /// Returns the groups let go of (their handles are dropped).
    pub fn settle_dead_groups(&mut self, held: &mut dyn FnMut(GroupId) -> bool) -> Vec<GroupId> {
        let mut released = Vec::new();
        for g in std::mem::take(&mut self.dead_groups) {
            if held(g) {
                self.pinned_groups.push(g);
            } else {
                released.push(g);
            }
        }
        if self.pinned_groups.len() >= self.pinned_recheck_at {
            let mut pinned = std::mem::take(&mut self.pinned_groups);
            pinned.retain(|g| {
                let keep = held(*g);
                if !keep {
                    released.push(*g);
                }
                keep
            });
            self.pinned_recheck_at = (2 * pinned.len()).max(64);
            self.pinned_groups = pinned;
        }
        let mut candidates = released.clone();
        while let Some(g) = candidates.pop() {
            if !self.group_reclaimable(g) {
                continue;
            }
            if held(g) {
                self.pinned_groups.push(g);
                continue;
            }
            released.push(g);
            candidates.extend(self.reclaim_group(g));
        }
        released
    }

    /// Whether the slot of group `g` may be reused: it is dead and no group lists it in
    /// its `dependencies` (the bindings also check that no Python object holds it).
    pub fn group_reclaimable(&self, g: GroupId) -> bool {
        let tg = &self.groups[g.idx()];
        !tg.alive && !tg.freed && tg.dep_refs == 0
    }

    /// Frees the slot of a reclaimable group for a new group; returns the dead groups
    /// that no group lists any more because of it.
    pub fn reclaim_group(&mut self, g: GroupId) -> SmallVec<[GroupId; 4]> {
        debug_assert!(self.group_reclaimable(g));
        let prefix = self.groups[g.idx()].prefix;
        let dead = std::mem::replace(
            &mut self.groups[g.idx()],
            TaskGroup {
                alive: false,
                freed: true,
                ..TaskGroup::new(String::new(), prefix)
            },
        );
        let mut freed = SmallVec::new();
        for dg in dead.dependencies {
            if dg == g {
                continue;
            }
            let d = &mut self.groups[dg.idx()];
            d.dep_refs -= 1;
            if d.dep_refs == 0 && !d.alive {
                freed.push(dg);
            }
        }
        self.free_groups.push(g);
        freed
    }
}

fn entry<K: Copy + Eq + std::hash::Hash>(m: &mut OrderedMap<K, i64>, k: K) -> &mut i64 {
    if !m.contains_key(&k) {
        m.insert(k, 0);
    }
    m.get_mut(&k).expect("just inserted")
}
