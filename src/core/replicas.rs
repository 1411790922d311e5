//! Where data lives: `nbytes`, replicas (`who_has` / `has_what`).

use crate::core::messages::*;
use crate::core::pyset::PySet;
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;

impl<P: Clone> SchedulerState<P> {
    // ----- nbytes -------------------------------------------------------------------

    /// `ts.set_nbytes(nbytes)`
    pub fn set_nbytes(&mut self, t: TaskId, nbytes: i64) {
        let ts = self.ts(t);
        let old = ts.nbytes;
        let diff = ByteTotal::from(nbytes) - ByteTotal::from(old.max(0));
        let (g, p) = (ts.group, ts.prefix);
        let holders: SmallVec<[WorkerId; 4]> = ts
            .who_has
            .as_ref()
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        self.groups[g.idx()].nbytes_total += diff;
        self.prefixes[p.idx()].nbytes_total += diff;
        for w in holders {
            self.ws_mut(w).nbytes += diff;
        }
        self.ts_mut(t).nbytes = nbytes;
    }

    // ----- replicas -----------------------------------------------------------------

    /// `ws in ts.who_has`
    pub fn has_replica(&self, t: TaskId, w: WorkerId) -> bool {
        self.ts(t)
            .who_has
            .as_ref()
            .is_some_and(|s| s.contains(w, self.whash(w)))
    }

    /// `SchedulerState.add_replica` (with `WorkerState.add_replica`).
    pub fn add_replica(&mut self, t: TaskId, w: WorkerId) {
        let (th, wh) = (self.thash(t), self.whash(w));
        if self.ts(t).who_has.is_none() {
            self.ts_mut(t).who_has = Some(PySet::new());
        }
        if !self.ws(w).has_what.contains_key(&t) {
            let nbytes = ByteTotal::from(self.ts(t).get_nbytes());
            if self.ws(w).needs_what.contains_key(&t) {
                let ws = self.ws_mut(w);
                ws.needs_what.remove(&t);
                ws.network_occ -= nbytes.min(ws.network_occ);
                self.network_occ_global -= nbytes.min(self.network_occ_global);
            }
            self.ts_mut(t)
                .who_has
                .as_mut()
                .expect("who_has")
                .insert(w, wh);
            let ws = self.ws_mut(w);
            ws.nbytes += nbytes;
            ws.has_what.insert(t, ());
        }
        if self.ts(t).who_has.as_ref().map_or(0, |s| s.len()) == 2 {
            self.replicated_tasks.insert(t, th);
        }
    }

    /// `SchedulerState.remove_replica`
    pub fn remove_replica(&mut self, t: TaskId, w: WorkerId) {
        let (th, wh) = (self.thash(t), self.whash(w));
        let nbytes = ByteTotal::from(self.ts(t).get_nbytes());
        let ws = self.ws_mut(w);
        ws.nbytes -= nbytes;
        ws.has_what.remove(&t);
        let ts = self.ts_mut(t);
        if let Some(s) = ts.who_has.as_mut() {
            s.remove(w, wh);
            if s.is_empty() {
                ts.who_has = None;
            }
        }
        if self.ts(t).who_has.as_ref().map_or(0, |s| s.len()) == 1 {
            self.replicated_tasks.remove(t, th);
        }
    }

    /// `SchedulerState.remove_all_replicas`
    pub fn remove_all_replicas(&mut self, t: TaskId) {
        let nbytes = ByteTotal::from(self.ts(t).get_nbytes());
        let th = self.thash(t);
        let Some(who_has) = self.ts_mut(t).who_has.take() else {
            return;
        };
        for w in who_has.iter() {
            let ws = self.ws_mut(w);
            ws.nbytes -= nbytes;
            ws.has_what.remove(&t);
        }
        if who_has.len() > 1 {
            self.replicated_tasks.remove(t, th);
        }
    }
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.add_keys`: a worker holds these keys; replicas of keys not in memory
    /// are answered with `remove-replicas` (`stimulus_id` is called only then, as
    /// distributed makes one only then).
    pub fn add_keys(
        &mut self,
        w: WorkerId,
        keys: Vec<(P, Option<TaskId>)>,
        stimulus_id: impl FnOnce() -> P,
        out: &mut Outbox<P>,
    ) {
        let mut redundant = Vec::new();
        for (key, t) in keys {
            match t.filter(|t| self.task(*t).is_some_and(|ts| ts.state == S::Memory)) {
                Some(t) => self.add_replica(t, w),
                None => redundant.push(key),
            }
        }
        if !redundant.is_empty() {
            out.to_worker(
                w,
                WorkerMsg::RemoveReplicas {
                    keys: redundant,
                    stimulus_id: stimulus_id(),
                },
            );
        }
    }
}

/// One key of `Scheduler.update_data` (scattered data), resolved by the binding.
pub struct ScatteredKey<P> {
    pub existing: Option<TaskId>,
    pub key: P,
    pub hash: i64,
    pub group: String,
    pub prefix: String,
    pub workers: Vec<WorkerId>,
    pub nbytes: i64,
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.update_data`: data entered the cluster from outside (scatter).
    pub fn update_data(
        &mut self,
        items: Vec<ScatteredKey<P>>,
        client: Option<ClientId>,
        out: &mut Outbox<P>,
    ) {
        let mut ids = Vec::with_capacity(items.len());
        for item in items {
            let t = match item.existing.filter(|t| self.task(*t).is_some()) {
                Some(t) => t,
                None => self.new_task(
                    item.key,
                    item.hash,
                    &item.group,
                    &item.prefix,
                    None,
                    false,
                    S::Memory,
                ),
            };
            self.set_state(t, S::Memory);
            if item.nbytes >= 0 {
                self.set_nbytes(t, item.nbytes);
            }
            for &w in &item.workers {
                self.add_replica(t, w);
            }
            // report({"op": "key-in-memory", "key": key, "workers": [...]})
            let addrs: Vec<String> = item
                .workers
                .iter()
                .map(|w| self.ws(*w).address.clone())
                .collect();
            for c in self.wanters(t) {
                if c != self.fire_and_forget {
                    out.to_client(
                        c,
                        ClientMsg::KeyInMemoryWorkers {
                            key: t,
                            workers: addrs.clone(),
                        },
                    );
                }
            }
            ids.push(t);
        }
        if let Some(c) = client {
            self.client_desires_keys(&ids, c, out);
        }
    }
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.release_worker_data`: a worker dropped its replica of a key.
    pub fn release_worker_data(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        let (Some(t), Some(w)) = (
            t.filter(|t| self.task(*t).is_some()),
            self.worker_id(worker),
        ) else {
            return Ok(());
        };
        if !self.has_replica(t, w) {
            return Ok(());
        }
        self.remove_replica(t, w);
        if !self.ts(t).has_who_has() {
            let mut recs = Recs::new();
            recs.insert(t, S::Released);
            self.transitions_loop(recs, out, stimulus_id)?;
        }
        Ok(())
    }
}
