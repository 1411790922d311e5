//! Workers joining, leaving and pausing: `add_worker`, `remove_worker`,
//! `handle_worker_status_change`, `bulk_schedule_unrunnable_after_adding_worker`.

use crate::core::entities::*;
use crate::core::ordered::OrderedMap;
use crate::core::pyset::PySet;
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;

pub struct NewWorker {
    pub address: String,
    pub hash: i64,
    pub addr_hash: i64,
    pub host: String,
    /// The worker's name if it is a str (aliases of other names never match a host).
    pub name: Option<String>,
    pub nthreads: i64,
    pub memory_limit: i64,
    pub status: WorkerStatus,
    pub resources: Vec<(String, f64)>,
}

impl<P: Clone> SchedulerState<P> {
    /// The state part of `Scheduler.add_worker` up to the plugins; returns the id.
    pub fn add_worker(&mut self, nw: NewWorker) -> CoreResult<WorkerId> {
        if self.worker_by_address.contains_key(&nw.address) {
            return Err(CoreError::WorkerExists(nw.address));
        }
        let w = WorkerId(self.workers.len() as u32);
        let mut resources = OrderedMap::new();
        for (r, v) in &nw.resources {
            resources.insert(self.strings.intern(r), *v);
        }
        self.workers.push(Worker {
            address: nw.address.clone(),
            hash: nw.hash,
            addr_hash: nw.addr_hash,
            host: nw.host.clone(),
            nthreads: nw.nthreads,
            memory_limit: nw.memory_limit,
            status: nw.status,
            nbytes: 0,
            actors: PySet::new(),
            has_what: OrderedMap::new(),
            processing: PySet::new(),
            long_running: PySet::new(),
            resources: OrderedMap::new(),
            used_resources: OrderedMap::new(),
            task_prefix_count: OrderedMap::new(),
            needs_what: OrderedMap::new(),
            network_occ: 0,
            alive: true,
        });
        self.worker_by_address.insert(nw.address.clone(), w);
        self.any_worker_by_address.insert(nw.address.clone(), w);
        self.workers_sorted_insert(w);
        if nw.status == WorkerStatus::Running {
            self.running.insert(w, nw.hash);
        }
        let dh = self.host_info.entry(nw.host.clone()).or_default();
        dh.addresses.insert(w, nw.addr_hash);
        dh.nthreads += nw.nthreads;
        self.total_memory += nw.memory_limit;
        self.total_nthreads += nw.nthreads;
        if let Some(name) = &nw.name {
            self.aliases.insert(name.clone(), nw.address.clone());
        }
        // heartbeat_worker(resources=...) -> set_resources
        for (r, v) in nw.resources {
            let rid = self.strings.intern(&r);
            self.ws_mut(w).resources.insert(rid, v);
            self.ws_mut(w).used_resources.insert(rid, 0.0);
            if self.resources.get(&rid).is_none() {
                self.resources.insert(rid, OrderedMap::new());
            }
            self.resources.get_mut(&rid).expect("inserted").insert(w, v);
        }
        let _ = resources;
        self.check_idle_saturated(w);
        self.steal_add_worker(w);
        Ok(w)
    }

    /// `bulk_schedule_unrunnable_after_adding_worker`
    pub fn bulk_schedule_unrunnable_after_adding_worker(&mut self, w: WorkerId) -> Recs {
        let candidates: Vec<TaskId> = self.unrunnable.keys().collect();
        let mut runnable = Vec::new();
        let wh = self.whash(w);
        for t in candidates {
            match self.valid_workers(t) {
                None => runnable.push(t),
                Some(v) if v.contains(w, wh) => runnable.push(t),
                _ => {}
            }
        }
        runnable.sort_by(|a, b| {
            crate::core::types::cmp_opt_prio(&self.ts(*b).priority, &self.ts(*a).priority)
        });
        let mut recs = Recs::new();
        for t in runnable {
            recs.insert(t, S::Processing);
        }
        recs
    }

    /// `del workers[address]` with the state `remove_worker` keeps outside the
    /// containers: resources, host info, totals, aliases. The record stays, no longer
    /// current (handles, messages and transitions may still name it).
    pub fn detach_worker(&mut self, w: WorkerId) {
        let ws = self.ws(w);
        let (address, host, nthreads, memory_limit, addr_hash) = (
            ws.address.clone(),
            ws.host.clone(),
            ws.nthreads,
            ws.memory_limit,
            ws.addr_hash,
        );
        let res: Vec<u32> = ws.resources.keys().collect();
        for rid in res {
            if let Some(dr) = self.resources.get_mut(&rid) {
                dr.remove(&w);
            }
        }
        if let Some(dh) = self.host_info.get_mut(&host) {
            dh.addresses.remove(w, addr_hash);
            dh.nthreads -= nthreads;
            if dh.addresses.is_empty() {
                self.host_info.remove(&host);
            }
        }
        self.total_memory -= memory_limit;
        self.total_nthreads -= nthreads;
        self.aliases.retain(|_, a| *a != address);
        self.workers_sorted_remove(w);
        self.worker_by_address.remove(&address);
        self.ws_mut(w).alive = false;
    }

    /// `running.add(ws)` / `running.discard(ws)`
    pub fn set_running(&mut self, w: WorkerId, running: bool) {
        let wh = self.whash(w);
        if running {
            self.running.insert(w, wh);
        } else {
            self.running.remove(w, wh);
        }
    }

    /// `saturated.discard(ws)`
    pub fn saturated_remove(&mut self, w: WorkerId) {
        let wh = self.whash(w);
        self.saturated.remove(w, wh);
    }
}
