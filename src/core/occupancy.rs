//! Processing bookkeeping, occupancy, idle/saturated classification and resources.

use crate::core::entities::Worker;
use crate::core::ordered::OrderedMap;
use crate::core::state::SchedulerState;
use crate::core::types::*;
use smallvec::SmallVec;

impl<P: Clone> SchedulerState<P> {
    // ----- processing ---------------------------------------------------------------

    pub(super) fn inc_task_prefix_count(&mut self, w: WorkerId, p: PrefixId) {
        let ws = self.ws_mut(w);
        match ws.task_prefix_count.get_mut(&p) {
            Some(c) => *c += 1,
            None => {
                ws.task_prefix_count.insert(p, 1);
            }
        }
        match self.task_prefix_count_global.get_mut(&p) {
            Some(c) => *c += 1,
            None => {
                self.task_prefix_count_global.insert(p, 1);
            }
        }
    }

    pub(super) fn remove_from_task_prefix_count(&mut self, w: WorkerId, p: PrefixId) {
        let ws = self.ws_mut(w);
        let count = ws.task_prefix_count.get(&p).copied().unwrap_or(0) - 1;
        if count != 0 {
            ws.task_prefix_count.insert(p, count);
        } else {
            ws.task_prefix_count.remove(&p);
        }
        let count = self.task_prefix_count_global.get(&p).copied().unwrap_or(0) - 1;
        if count != 0 {
            self.task_prefix_count_global.insert(p, count);
        } else {
            self.task_prefix_count_global.remove(&p);
        }
    }

    /// `WorkerState.add_to_processing`
    pub fn ws_add_to_processing(&mut self, w: WorkerId, t: TaskId) {
        let p = self.ts(t).prefix;
        self.inc_task_prefix_count(w, p);
        let th = self.thash(t);
        self.ws_mut(w).processing.insert(t, th);
        self.slots_changed(w, -1);
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            if !self.has_replica(d, w) {
                self.inc_needs_replica(w, d);
            }
        }
    }

    pub(super) fn inc_needs_replica(&mut self, w: WorkerId, d: TaskId) {
        let nbytes = ByteTotal::from(self.ts(d).get_nbytes());
        let ws = self.ws_mut(w);
        match ws.needs_what.get_mut(&d) {
            Some(c) => *c += 1,
            None => {
                ws.needs_what.insert(d, 1);
                ws.network_occ += nbytes;
                self.network_occ_global += nbytes;
            }
        }
    }

    pub(super) fn dec_needs_replica(&mut self, w: WorkerId, d: TaskId) {
        let nbytes = ByteTotal::from(self.ts(d).get_nbytes());
        let ws = self.ws_mut(w);
        let c = ws.needs_what.get_mut(&d).expect("needs_what entry");
        *c -= 1;
        if *c == 0 {
            ws.needs_what.remove(&d);
            ws.network_occ -= nbytes.min(ws.network_occ);
            self.network_occ_global -= nbytes.min(self.network_occ_global);
        }
    }

    /// `WorkerState.remove_from_processing`
    pub fn ws_remove_from_processing(&mut self, w: WorkerId, t: TaskId) {
        let th = self.thash(t);
        let was_long_running = self.ws_mut(w).long_running.remove(t, th);
        if !was_long_running {
            let p = self.ts(t).prefix;
            self.remove_from_task_prefix_count(w, p);
        }
        self.ws_mut(w).processing.remove(t, th);
        if !was_long_running {
            self.slots_changed(w, 1);
        }
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            if self.ws(w).needs_what.contains_key(&d) {
                self.dec_needs_replica(w, d);
            }
        }
    }

    /// `WorkerState.add_to_long_running`
    pub fn ws_add_to_long_running(&mut self, w: WorkerId, t: TaskId) {
        let p = self.ts(t).prefix;
        self.remove_from_task_prefix_count(w, p);
        let th = self.thash(t);
        if self.ws_mut(w).long_running.insert(t, th) {
            self.slots_changed(w, 1);
        }
    }

    // ----- occupancy ----------------------------------------------------------------

    /// `SchedulerState._get_prefix_duration`
    pub fn prefix_duration(&self, p: PrefixId) -> f64 {
        let tp = &self.prefixes[p.idx()];
        let mut duration = tp.duration_average;
        if duration < 0.0 {
            if tp.max_exec_time > 0.0 {
                duration = 2.0 * tp.max_exec_time;
            } else {
                duration = self.config.unknown_task_duration;
            }
        }
        duration
    }

    /// `SchedulerState._calc_occupancy`
    pub fn calc_occupancy(
        &self,
        counts: &OrderedMap<PrefixId, i64>,
        network_occ: ByteTotal,
    ) -> f64 {
        let mut res = 0.0;
        for (&p, &count) in counts.iter() {
            res += self.prefix_duration(p) * count as f64;
        }
        let occ = res + network_occ as f64 / self.config.bandwidth;
        occ.max(0.0)
    }

    /// `WorkerState.occupancy`
    pub fn occupancy(&self, w: WorkerId) -> f64 {
        let ws = self.ws(w);
        self.calc_occupancy(&ws.task_prefix_count, ws.network_occ)
    }

    pub fn total_occupancy(&self) -> f64 {
        self.calc_occupancy(&self.task_prefix_count_global, self.network_occ_global)
    }

    // ----- idle / saturated ---------------------------------------------------------

    pub(super) fn sorted_insert(list: &mut Vec<WorkerId>, workers: &[Worker], w: WorkerId) {
        let addr = &workers[w.idx()].address;
        match list.binary_search_by(|x| workers[x.idx()].address.as_str().cmp(addr)) {
            Ok(_) => {}
            Err(pos) => list.insert(pos, w),
        }
    }

    pub(super) fn sorted_remove(list: &mut Vec<WorkerId>, workers: &[Worker], w: WorkerId) {
        let addr = &workers[w.idx()].address;
        if let Ok(pos) = list.binary_search_by(|x| workers[x.idx()].address.as_str().cmp(addr)) {
            if list[pos] == w {
                list.remove(pos);
            }
        }
    }

    pub fn idle_insert(&mut self, w: WorkerId) {
        Self::sorted_insert(&mut self.idle, &self.workers, w);
    }

    pub fn idle_remove(&mut self, w: WorkerId) {
        Self::sorted_remove(&mut self.idle, &self.workers, w);
    }

    pub fn workers_sorted_insert(&mut self, w: WorkerId) {
        Self::sorted_insert(&mut self.workers_sorted, &self.workers, w);
    }

    pub fn workers_sorted_remove(&mut self, w: WorkerId) {
        Self::sorted_remove(&mut self.workers_sorted, &self.workers, w);
    }

    pub fn is_idle_worker(&self, w: WorkerId) -> bool {
        let addr = &self.ws(w).address;
        self.idle
            .binary_search_by(|x| self.ws(*x).address.as_str().cmp(addr))
            .is_ok()
    }

    /// `_task_slots_available`
    pub fn task_slots_available(&self, w: WorkerId) -> i64 {
        let ws = self.ws(w);
        let cap = ((self.config.worker_saturation * ws.nthreads as f64).ceil() as i64).max(1);
        cap - (ws.processing.len() as i64 - ws.long_running.len() as i64)
    }

    /// `_worker_full`
    pub fn worker_full(&self, w: WorkerId) -> bool {
        if self.config.worker_saturation.is_infinite() {
            return false;
        }
        self.task_slots_available(w) <= 0
    }

    /// `SchedulerState.check_idle_saturated`
    pub fn check_idle_saturated(&mut self, w: WorkerId) {
        self.check_idle_saturated_occ(w, None);
    }

    /// `check_idle_saturated(ws, occ=...)`: stealing passes the occupancy it counts
    /// (a negative one means "use ws.occupancy", as in distributed).
    pub fn check_idle_saturated_occ(&mut self, w: WorkerId, occ: Option<f64>) {
        if self.total_nthreads == 0 || self.ws(w).status == WorkerStatus::Closed {
            return;
        }
        let occ = match occ {
            Some(o) if o >= 0.0 => o,
            _ => self.occupancy(w),
        };
        let p = self.ws(w).processing.len() as i64;
        let wh = self.whash(w);
        self.saturated.remove(w, wh);
        let status = self.ws(w).status;
        if status != WorkerStatus::Running {
            self.idle_remove(w);
        } else if self.is_unoccupied(w, occ, p) {
            self.idle_insert(w);
        } else {
            self.idle_remove(w);
            let nc = self.ws(w).nthreads;
            if p > nc {
                let pending = occ * (p - nc) as f64 / (p * nc) as f64;
                if 0.4 < pending
                    && pending > 1.9 * (self.total_occupancy() / self.total_nthreads as f64)
                {
                    self.saturated.insert(w, wh);
                }
            }
        }
        if !self.worker_full(w) && status == WorkerStatus::Running {
            self.idle_task_count_insert(w);
        } else {
            self.idle_task_count_remove(w);
        }
    }

    /// `WORKER_SATURATION = value` on a running scheduler. As in distributed, who is in
    /// `idle_task_count` changes only at each worker's next check; `idle_slots` is
    /// summed again for the new value.
    pub fn set_worker_saturation(&mut self, value: f64) {
        self.config.worker_saturation = value;
        self.idle_slots = if value.is_infinite() {
            0
        } else {
            self.idle_task_count
                .iter()
                .map(|w| self.task_slots_available(w))
                .sum()
        };
    }

    /// `idle_task_count.add(ws)`, keeping `idle_slots` (the sum of
    /// `_task_slots_available` over `idle_task_count`) current.
    pub fn idle_task_count_insert(&mut self, w: WorkerId) {
        let wh = self.whash(w);
        if self.idle_task_count.insert(w, wh) && !self.config.worker_saturation.is_infinite() {
            self.idle_slots += self.task_slots_available(w);
        }
    }

    /// `idle_task_count.discard(ws)`
    pub fn idle_task_count_remove(&mut self, w: WorkerId) {
        let wh = self.whash(w);
        if self.idle_task_count.remove(w, wh) && !self.config.worker_saturation.is_infinite() {
            self.idle_slots -= self.task_slots_available(w);
        }
    }

    /// A worker's free slots changed by `delta`; mirrored in `idle_slots` if it counts.
    pub(super) fn slots_changed(&mut self, w: WorkerId, delta: i64) {
        if !self.config.worker_saturation.is_infinite()
            && self.idle_task_count.contains(w, self.whash(w))
        {
            self.idle_slots += delta;
        }
    }

    pub fn is_unoccupied(&self, w: WorkerId, occupancy: f64, nprocessing: i64) -> bool {
        let nthreads = self.ws(w).nthreads;
        nprocessing < nthreads
            || occupancy
                < nthreads as f64 * (self.total_occupancy() / self.total_nthreads as f64) / 2.0
    }

    // ----- resources ----------------------------------------------------------------

    pub fn acquire_resources(&mut self, t: TaskId, w: WorkerId) {
        self.adjust_used_resources(t, w, 1.0);
    }

    pub fn release_resources(&mut self, t: TaskId, w: WorkerId) {
        self.adjust_used_resources(t, w, -1.0);
    }

    /// `ws.used_resources[r] += sign * required` for each of the task's restrictions.
    /// `Scheduler.add_resources` (the `set_resources` handler): the worker's resources
    /// are updated and, as in distributed, every `used_resources` entry is reset to 0.
    pub fn add_resources(&mut self, w: WorkerId, resources: &[(String, f64)]) {
        for (r, v) in resources {
            let rid = self.strings.intern(r);
            self.ws_mut(w).resources.insert(rid, *v);
        }
        let all: Vec<(u32, f64)> = self.ws(w).resources.iter().map(|(r, v)| (*r, *v)).collect();
        self.ws_mut(w).used_resources = OrderedMap::new();
        for (rid, quantity) in all {
            self.ws_mut(w).used_resources.insert(rid, 0.0);
            if self.resources.get(&rid).is_none() {
                self.resources.insert(rid, OrderedMap::new());
            }
            self.resources
                .get_mut(&rid)
                .expect("inserted")
                .insert(w, quantity);
        }
    }

    pub(super) fn adjust_used_resources(&mut self, t: TaskId, w: WorkerId, sign: f64) {
        let Some(rr) = self.ts(t).resource_restrictions().map(<[_]>::to_vec) else {
            return;
        };
        for (r, required) in rr {
            let rid = self.strings.intern(&r);
            let ws = self.ws_mut(w);
            let cur = ws.used_resources.get(&rid).copied().unwrap_or(0.0);
            ws.used_resources.insert(rid, cur + sign * required);
        }
    }
}
