//! Worker choice: `is_rootish`, the three `decide_worker_*` policies, `valid_workers`,
//! `worker_objective` and the module-level `decide_worker` of distributed.

use crate::core::entities::WorkerSet;
use crate::core::pyset::PySet;
use crate::core::state::SchedulerState;
use crate::core::types::*;
use std::cmp::Ordering;

/// `worker_objective`'s tuple: `(start_time, nbytes)` or `(len(actors), start_time, nbytes)`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Objective {
    pub actors: Option<usize>,
    pub start_time: f64,
    pub nbytes: ByteTotal,
}

impl Objective {
    fn cmp_obj(&self, other: &Objective) -> Ordering {
        if let (Some(a), Some(b)) = (self.actors, other.actors) {
            match a.cmp(&b) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        self.start_time
            .partial_cmp(&other.start_time)
            .unwrap_or(Ordering::Equal)
            .then(self.nbytes.cmp(&other.nbytes))
    }
}

/// Python's `min(iterable, key=...)`: the first minimal element.
fn min_by_key<I, K>(
    iter: I,
    mut key: impl FnMut(WorkerId) -> K,
    less: impl Fn(&K, &K) -> bool,
) -> Option<WorkerId>
where
    I: IntoIterator<Item = WorkerId>,
{
    let mut best: Option<(WorkerId, K)> = None;
    for w in iter {
        let k = key(w);
        match &best {
            Some((_, bk)) if !less(&k, bk) => {}
            _ => best = Some((w, k)),
        }
    }
    best.map(|(w, _)| w)
}

impl<P: Clone> SchedulerState<P> {
    /// `SchedulerState.is_rootish`
    pub fn is_rootish(&self, t: TaskId) -> bool {
        let ts = self.ts(t);
        if ts.has_restrictions() {
            return false;
        }
        if ts.run_spec.is_some() && ts.data_producer {
            return true;
        }
        let tg = &self.groups[ts.group.idx()];
        let dep_sizes: i64 = tg
            .dependencies
            .iter()
            .map(|g| self.groups[g.idx()].size)
            .sum();
        tg.size > self.total_nthreads * 2
            && (tg.dependencies.len() as i64) < self.config.rootish_tg_threshold
            && dep_sizes < self.config.rootish_tg_dependencies_threshold
    }

    /// `SchedulerState.get_comm_cost`
    pub fn get_comm_cost(&self, t: TaskId, w: WorkerId) -> f64 {
        let ws = self.ws(w);
        let nbytes: ByteTotal = self
            .ts(t)
            .dependencies
            .iter()
            .filter(|d| !ws.has_what.contains_key(d))
            .map(|d| ByteTotal::from(self.ts(d).get_nbytes()))
            .sum();
        nbytes as f64 / self.config.bandwidth
    }

    /// `SchedulerState.worker_objective`
    pub fn worker_objective(&self, t: TaskId, w: WorkerId) -> Objective {
        let ws = self.ws(w);
        let stack_time = self.occupancy(w) / ws.nthreads as f64;
        let start_time = stack_time + self.get_comm_cost(t, w);
        Objective {
            actors: self.ts(t).actor.then(|| ws.actors.len()),
            start_time,
            nbytes: ws.nbytes,
        }
    }

    fn min_objective(
        &self,
        t: TaskId,
        pool: impl IntoIterator<Item = WorkerId>,
    ) -> Option<WorkerId> {
        min_by_key(
            pool,
            |w| self.worker_objective(t, w),
            |a, b| a.cmp_obj(b) == Ordering::Less,
        )
    }

    /// `decide_worker_rootish_queuing_disabled`
    pub fn decide_worker_rootish_queuing_disabled(&mut self, t: TaskId) -> Option<WorkerId> {
        let pool: Vec<WorkerId> = if !self.idle.is_empty() {
            self.idle.clone()
        } else {
            self.running.iter().collect()
        };
        if pool.is_empty() {
            return None;
        }
        let g = self.ts(t).group;
        let lws = self.groups[g.idx()].last_worker;
        let ws = match lws {
            Some(l)
                if self.groups[g.idx()].last_worker_tasks_left != 0
                    && self.ws(l).status == WorkerStatus::Running
                    && self.is_current_worker(l) =>
            {
                l
            }
            _ => {
                let ws = self.min_objective(t, pool).expect("non-empty pool");
                let tg_len = self.groups[g.idx()].size as f64;
                self.groups[g.idx()].last_worker_tasks_left =
                    ((tg_len / self.total_nthreads as f64) * self.ws(ws).nthreads as f64).floor()
                        as i64;
                ws
            }
        };
        let tg = &mut self.groups[g.idx()];
        tg.last_worker = if tg.states[TaskStateState::Released.index()]
            + tg.states[TaskStateState::Waiting.index()]
            > 1
        {
            Some(ws)
        } else {
            None
        };
        tg.last_worker_tasks_left -= 1;
        Some(ws)
    }

    /// `decide_worker_rootish_queuing_enabled`
    pub fn decide_worker_rootish_queuing_enabled(&self) -> Option<WorkerId> {
        if self.idle_task_count.is_empty() {
            return None;
        }
        min_by_key(
            self.idle_task_count.iter(),
            |w| {
                let ws = self.ws(w);
                ws.processing.len() as f64 / ws.nthreads as f64
            },
            |a, b| a < b,
        )
    }

    /// `decide_worker_non_rootish`
    pub fn decide_worker_non_rootish(&mut self, t: TaskId) -> Option<WorkerId> {
        if self.running.is_empty() {
            return None;
        }
        let valid = self.valid_workers(t);
        // `valid_workers = self.running`: the set itself, not a copy (a copy of a table
        // with dummies iterates in another order).
        let running_is_valid = valid.is_none() && self.running.len() < self.workers_sorted.len();
        if !self.ts(t).dependencies.is_empty() || valid.is_some() || running_is_valid {
            let v = if running_is_valid {
                Some(&self.running)
            } else {
                valid.as_ref()
            };
            self.decide_worker(t, &self.running, v)
        } else {
            let pool: &[WorkerId] = if !self.idle.is_empty() {
                &self.idle
            } else {
                &self.workers_sorted
            };
            let n = pool.len();
            if n < 20 {
                let mut ws = min_by_key(pool.iter().copied(), |w| self.occupancy(w), |a, b| a < b)?;
                if self.occupancy(ws) == 0.0 {
                    let start = (self.n_tasks as usize) % n;
                    for i in 0..n {
                        let wp = pool[(i + start) % n];
                        if self.occupancy(wp) == 0.0 {
                            ws = wp;
                            break;
                        }
                    }
                }
                Some(ws)
            } else {
                Some(pool[(self.n_tasks as usize) % n])
            }
        }
    }

    /// Module-level `decide_worker`
    pub fn decide_worker(
        &self,
        t: TaskId,
        all_workers: &WorkerSet,
        valid_workers: Option<&WorkerSet>,
    ) -> Option<WorkerId> {
        let ts = self.ts(t);
        let mut candidates: WorkerSet = if ts.actor {
            all_workers.copy()
        } else {
            let mut c = PySet::from_iter_hashed(ts.dependencies.iter().flat_map(|d| {
                self.ts(d)
                    .who_has
                    .as_ref()
                    .map(|s| s.iter_hashed().collect::<Vec<_>>())
                    .unwrap_or_default()
            }));
            c.intersection_update(all_workers);
            c
        };
        match valid_workers {
            None => {
                if candidates.is_empty() {
                    candidates = all_workers.copy();
                }
            }
            Some(valid) => {
                candidates.intersection_update(valid);
                if candidates.is_empty() {
                    candidates = valid.clone();
                    if candidates.is_empty() && ts.loose_restrictions() {
                        return self.decide_worker(t, all_workers, None);
                    }
                }
            }
        }
        match candidates.len() {
            0 => None,
            1 => candidates.iter().next(),
            _ => self.min_objective(t, candidates.iter()),
        }
    }

    /// `SchedulerState.valid_workers`: `None` when every running worker is valid.
    pub fn valid_workers(&mut self, t: TaskId) -> Option<WorkerSet> {
        // Sets of addresses are emulated as sets of worker ids hashed like their address.
        let ts = self.ts(t);
        let mut s: Option<WorkerSet> = None;
        if let Some(wr) = ts.worker_restrictions().filter(|r| !r.is_empty()) {
            let items: Vec<(WorkerId, i64)> = wr
                .iter()
                .filter_map(|addr| self.worker_id(addr))
                .map(|w| (w, self.ws(w).addr_hash))
                .collect();
            s = Some(PySet::from_iter_hashed(items));
        }
        if let Some(hr) = ts.host_restrictions().filter(|r| !r.is_empty()) {
            // set.union(*sl): a copy of the first set, updated with the others, skipping
            // arguments that are the first set itself
            let mut ss: Option<(String, WorkerSet)> = None;
            for h in hr {
                let host = self.coerce_hostname(h);
                if let Some(dh) = self.host_info.get(&host) {
                    match ss.as_mut() {
                        None => ss = Some((host, dh.addresses.copy())),
                        Some((first, acc)) => {
                            if *first != host {
                                acc.update(&dh.addresses)
                            }
                        }
                    }
                }
            }
            let ss = ss.map(|(_, s)| s);
            let ss = ss.unwrap_or_default();
            s = Some(match s {
                None => ss,
                Some(mut s) => {
                    s.update(&ss);
                    s
                }
            });
        }
        if let Some(rr) = ts
            .resource_restrictions()
            .filter(|r| !r.is_empty())
            .map(<[_]>::to_vec)
        {
            let mut ww: Option<WorkerSet> = None;
            for (resource, required) in rr {
                let rid = self.strings.intern(&resource);
                if self.resources.get(&rid).is_none() {
                    self.resources.insert(rid, Default::default());
                }
                let dr = self.resources.get(&rid).expect("inserted");
                let sw = PySet::from_iter_hashed(
                    dr.iter()
                        .filter(|(_, supplied)| **supplied >= required)
                        .map(|(w, _)| (*w, self.ws(*w).addr_hash)),
                );
                // set.intersection(*dw.values()): a copy of the first, then intersections
                ww = Some(match ww {
                    None => sw.copy(),
                    Some(acc) => acc.intersection(&sw),
                });
            }
            let ww = ww.unwrap_or_default();
            s = Some(match s {
                None => ww,
                Some(mut s) => {
                    s.intersection_update(&ww);
                    s
                }
            });
        }
        let s = s?;
        if s.is_empty() {
            return Some(PySet::new());
        }
        let mut s_ws: WorkerSet = PySet::from_iter_hashed(s.iter().map(|w| (w, self.whash(w))));
        if self.running.len() < self.workers_sorted.len() {
            s_ws.intersection_update(&self.running);
        }
        Some(s_ws)
    }

    /// `SchedulerState.coerce_hostname`
    pub fn coerce_hostname(&self, host: &str) -> String {
        match self.aliases.get(host) {
            Some(addr) => match self.worker_id(addr) {
                Some(w) => self.ws(w).host.clone(),
                None => host.to_owned(),
            },
            None => host.to_owned(),
        }
    }
}
