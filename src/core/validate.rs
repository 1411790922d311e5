//! `validate_state`: distributed's invariants, checked natively.

use crate::core::state::SchedulerState;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;

macro_rules! check {
    ($cond:expr, $($msg:tt)*) => {
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let ok = $cond;
        if !ok {
            return Err(CoreError::Validation(format!($($msg)*)));
        }
    };
}

impl<P: Clone> SchedulerState<P> {
    pub fn validate_state(&self) -> CoreResult<()> {
        for t in self.live_task_ids() {
            self.validate_task(t)?;
            let g = self.ts(t).group;
            check!(
                self.groups[g.idx()].alive,
                "task {t:?} in a dead group {g:?}"
            );
        }
        let mut listed: hashbrown::HashMap<GroupId, usize> = hashbrown::HashMap::new();
        for (i, tg) in self.groups.iter().enumerate() {
            for &d in &tg.dependencies {
                if d.idx() != i && !tg.freed {
                    *listed.entry(d).or_default() += 1;
                }
            }
        }
        for (i, tg) in self.groups.iter().enumerate() {
            let g = GroupId(i as u32);
            check!(
                tg.alive == self.alive_groups.contains_key(&g),
                "alive_groups out of sync for {g:?}"
            );
            check!(!(tg.alive && tg.freed), "live group {g:?} in free_groups");
            let refs = listed.get(&g).copied().unwrap_or(0);
            check!(
                tg.freed || refs == tg.dep_refs as usize,
                "dep_refs of {g:?}: {} counted, {refs} listed",
                tg.dep_refs
            );
        }
        let mut prev = f64::NEG_INFINITY;
        for (t, since) in self.unrunnable.iter() {
            check!(
                self.ts(*t).state == S::NoWorker,
                "unrunnable task {t:?} not no-worker"
            );
            check!(prev <= *since, "unrunnable not monotonic");
            prev = *since;
        }
        for &w in &self.workers_sorted {
            let ws = self.ws(w);
            let wh = ws.hash;
            check!(ws.alive, "dead worker listed");
            check!(
                (ws.status == WorkerStatus::Running) == self.running.contains(w, wh),
                "running set out of sync for {}",
                ws.address
            );
            if ws.processing.is_empty() && ws.status == WorkerStatus::Running {
                check!(
                    self.is_idle_worker(w),
                    "idle worker {} not in idle",
                    ws.address
                );
            }
            for t in ws.long_running.iter() {
                check!(
                    ws.processing.contains(t, self.thash(t)),
                    "long_running not processing"
                );
            }
            for (t, _) in ws.has_what.iter() {
                let ts = self.ts(*t);
                check!(
                    ts.who_has.as_ref().is_some_and(|s| s.contains(w, wh)),
                    "has_what/who_has mismatch"
                );
            }
            let nbytes: ByteTotal = ws
                .has_what
                .keys()
                .map(|t| ByteTotal::from(self.ts(t).get_nbytes()))
                .sum();
            check!(
                nbytes == ws.nbytes,
                "worker nbytes {} != {}",
                ws.nbytes,
                nbytes
            );
        }
        for w in self
            .idle
            .iter()
            .chain(self.saturated.iter().collect::<Vec<_>>().iter())
        {
            check!(
                self.running.contains(*w, self.whash(*w)),
                "idle/saturated worker not running"
            );
        }
        if !self.config.worker_saturation.is_infinite() {
            let slots: i64 = self
                .idle_task_count
                .iter()
                .map(|w| self.task_slots_available(w))
                .sum();
            check!(
                slots == self.idle_slots,
                "idle_slots {} != {}",
                self.idle_slots,
                slots
            );
        }
        for t in self.replicated_tasks.iter() {
            check!(
                self.ts(t).state == S::Memory,
                "replicated task not in memory"
            );
        }
        Ok(())
    }

    /// `validate_key`: one task's invariants.
    pub fn validate_task(&self, t: TaskId) -> CoreResult<()> {
        let ts = self.ts(t);
        let th = ts.hash;
        if let Some(w) = &ts.waiting_on {
            for d in w.iter() {
                check!(
                    ts.dependencies.contains(d, self.thash(d)),
                    "waiting_on not subset of dependencies"
                );
                check!(!self.ts(d).has_who_has(), "waiting on in-memory dep");
            }
        }
        if let Some(w) = &ts.waiters {
            for d in w.iter() {
                check!(
                    ts.dependents.contains(d, self.thash(d)),
                    "waiters not subset of dependents"
                );
                check!(
                    matches!(
                        self.ts(d).state,
                        S::Waiting | S::Queued | S::Processing | S::NoWorker
                    ),
                    "waiter not in play"
                );
            }
        }
        for d in ts.dependencies.iter() {
            let dts = self.ts(d);
            check!(
                dts.dependents.contains(t, th),
                "not in dependency's dependents"
            );
            check!(dts.state != S::Forgotten, "forgotten dependency");
            if matches!(
                ts.state,
                S::Waiting | S::Queued | S::Processing | S::NoWorker
            ) {
                let waiting = ts
                    .waiting_on
                    .as_ref()
                    .is_some_and(|s| s.contains(d, dts.hash));
                check!(waiting || dts.has_who_has(), "dep missing");
            }
        }
        for d in ts.dependents.iter() {
            check!(
                self.ts(d).dependencies.contains(t, th),
                "not in dependent's dependencies"
            );
        }
        check!(
            ts.processing_on().is_some() == (ts.state == S::Processing),
            "processing_on vs state"
        );
        check!(
            ts.has_who_has() == (ts.state == S::Memory),
            "who_has vs state for {t:?}"
        );
        if ts.state == S::Queued {
            check!(self.queued.contains(t), "queued task not in queued");
        }
        if ts.state == S::NoWorker {
            check!(
                self.unrunnable.contains_key(&t),
                "no-worker task not in unrunnable"
            );
        }
        if ts.state == S::Erred {
            check!(ts.exception_blame().is_some(), "erred without blame");
        }
        if ts.has_who_has() {
            check!(
                ts.has_waiters() || ts.has_who_wants(),
                "unneeded task in memory"
            );
        }
        for c in ts.who_wants().into_iter().flat_map(|s| s.iter()) {
            check!(
                self.clients[c.idx()].wants_what.contains(t, th),
                "who_wants/wants_what mismatch"
            );
        }
        Ok(())
    }
}
