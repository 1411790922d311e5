//! The transition engine: `SchedulerState._transition`, `_transitions` and every entry
//! of `_TRANSITIONS_TABLE`, in distributed's order of effects.

use crate::core::pyset::PySet;
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;

/// The keyword arguments some transitions take (the fields of the worker's message).
#[derive(Clone, Debug, Default)]
pub enum TransitionArgs<P> {
    #[default]
    None,
    Finished {
        worker: String,
        nbytes: i64,
        type_: Option<P>,
        typename: String,
        startstops: Vec<StartStop>,
    },
    Erred {
        worker: Option<String>,
        cause: Option<TaskId>,
        exception: Option<P>,
        traceback: Option<P>,
        exception_text: Option<P>,
        traceback_text: Option<P>,
    },
}

/// distributed's `assert x` on a value the transition needs: an error (AssertionError in
/// Python), never a panic.
macro_rules! required {
    ($opt:expr, $what:expr) => {
        $opt.ok_or_else(|| CoreError::Validation(format!("assertion failed: {}", $what)))?
    };
}

impl<P: Clone> SchedulerState<P> {
    /// `SchedulerState._transitions`: process recommendations until none are left.
    pub fn transitions_loop(
        &mut self,
        recommendations: Recs,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        let mut recs = recommendations;
        while let Some((t, finish)) = recs.pop_last() {
            let new = self.transition(t, finish, stimulus_id, TransitionArgs::None, out)?;
            for (k, v) in new.iter() {
                recs.insert(*k, *v);
            }
        }
        Ok(())
    }

    /// `SchedulerState._transition`
    pub fn transition(
        &mut self,
        t: TaskId,
        finish: TaskStateState,
        stimulus_id: &P,
        args: TransitionArgs<P>,
        out: &mut Outbox<P>,
    ) -> CoreResult<Recs> {
        let Some(ts) = self.task(t) else {
            return Ok(Recs::new());
        };
        let start = ts.state;
        if start == finish {
            return Ok(Recs::new());
        }
        let result = self.transition_from(t, start, finish, stimulus_id, args, out);
        if result.is_err() {
            // distributed logs every failing `_transition` on the way up
            self.failed_transitions.push((t, start, finish));
        }
        result
    }

    /// The body of `_transition` for a live task leaving `start` (`!= finish`).
    fn transition_from(
        &mut self,
        t: TaskId,
        mut start: TaskStateState,
        finish: TaskStateState,
        stimulus_id: &P,
        args: TransitionArgs<P>,
        out: &mut Outbox<P>,
    ) -> CoreResult<Recs> {
        let ts = self.ts(t);
        // distributed shows plugins a forgotten task with the edges it had before
        let edges = (self.observe && finish == S::Forgotten)
            .then(|| (ts.dependents.clone(), ts.dependencies.clone()));
        self.transition_counter += 1;
        if self.config.transition_counter_max > 0
            && self.transition_counter >= self.config.transition_counter_max
        {
            return Err(CoreError::Validation(format!(
                "assertion failed: transition_counter < transition_counter_max ({} >= {})",
                self.transition_counter, self.config.transition_counter_max
            )));
        }
        let mut recs = Recs::new();
        if self.has_transition(start, finish) {
            self.dispatch(t, start, finish, stimulus_id, args, &mut recs, out)?;
        } else if start != S::Released && finish != S::Released {
            let a_recs = self.transition(t, S::Released, stimulus_id, TransitionArgs::None, out)?;
            let v = a_recs.get(&t).copied().unwrap_or(finish);
            if !self.has_transition(S::Released, v) {
                return Err(CoreError::ImpossibleTransition {
                    key: format!("{t:?}"),
                    start: "released",
                    finish: v.as_str(),
                });
            }
            let mut b_recs = Recs::new();
            self.dispatch(
                t,
                S::Released,
                v,
                stimulus_id,
                TransitionArgs::None,
                &mut b_recs,
                out,
            )?;
            for (k, v) in a_recs.iter().chain(b_recs.iter()) {
                recs.insert(*k, *v);
            }
            start = S::Released;
        } else {
            return Err(CoreError::ImpossibleTransition {
                key: format!("{t:?}"),
                start: start.as_str(),
                finish: finish.as_str(),
            });
        }

        let ts = self.ts(t);
        let actual_finish = ts.state;
        if self.config.transition_log_maxlen > 0 {
            let entry = TransitionLogEntry {
                key: ts.key.clone(),
                start,
                finish: actual_finish,
                recommendations: recs
                    .iter()
                    .map(|(k, v)| (self.ts(*k).key.clone(), *v))
                    .collect(),
                stimulus_id: stimulus_id.clone(),
                timestamp: now(),
            };
            if self.transition_log.len() >= self.config.transition_log_maxlen {
                self.transition_log.pop_front();
            }
            self.transition_log.push_back(entry);
        }
        if let (Some((dependents, dependencies)), S::Forgotten) = (edges, actual_finish) {
            let ts = self.ts_mut(t);
            ts.dependents = dependents;
            ts.dependencies = dependencies;
            self.restored_edges.push(t);
        }
        self.steal_transition(t, start, actual_finish);
        if let Some(obs) = &self.observer {
            if obs.finishes & (1 << actual_finish.index()) != 0 {
                let notify = obs.notify;
                let key = self.ts(t).key.clone();
                let observed = ObservedTransition {
                    task: t,
                    key: &key,
                    start,
                    finish: actual_finish,
                    stimulus_id,
                };
                notify(self, &observed);
            }
        }
        if actual_finish == S::Forgotten {
            let g = self.ts(t).group;
            let tg = &self.groups[g.idx()];
            if tg.alive
                && ALL_TASK_STATES
                    .iter()
                    .all(|s| *s == S::Forgotten || tg.states[s.index()] == 0)
            {
                self.remove_group(g);
            }
        }
        Ok(recs)
    }

    fn has_transition(&self, start: S, finish: S) -> bool {
        matches!(
            (start, finish),
            (S::Released, S::Waiting)
                | (S::Waiting, S::Released)
                | (S::Waiting, S::Processing)
                | (S::Waiting, S::NoWorker)
                | (S::Waiting, S::Queued)
                | (S::Waiting, S::Memory)
                | (S::Queued, S::Released)
                | (S::Queued, S::Processing)
                | (S::Queued, S::Erred)
                | (S::Processing, S::Released)
                | (S::Processing, S::Memory)
                | (S::Processing, S::Erred)
                | (S::NoWorker, S::Released)
                | (S::NoWorker, S::Processing)
                | (S::NoWorker, S::Erred)
                | (S::Released, S::Forgotten)
                | (S::Memory, S::Erred)
                | (S::Memory, S::Forgotten)
                | (S::Erred, S::Released)
                | (S::Memory, S::Released)
                | (S::Released, S::Erred)
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn dispatch(
        &mut self,
        t: TaskId,
        start: S,
        finish: S,
        stimulus_id: &P,
        args: TransitionArgs<P>,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        match (start, finish) {
            (S::Released, S::Waiting) => self.t_released_waiting(t, recs),
            (S::Waiting, S::Released) => self.t_waiting_released(t, recs),
            (S::Waiting, S::Processing) => self.t_waiting_processing(t, stimulus_id, recs, out)?,
            (S::Waiting, S::NoWorker) => self.t_waiting_no_worker(t),
            (S::Waiting, S::Queued) => self.t_waiting_queued(t)?,
            (S::Waiting, S::Memory) => {}
            (S::Queued, S::Released) => {
                self.queued.discard(t);
                self.propagate_released(t, recs);
            }
            (S::Queued, S::Processing) => {
                if let Some(w) = self.decide_worker_rootish_queuing_enabled() {
                    self.queued.discard(t);
                    self.add_to_processing(t, w, stimulus_id, recs, out)?;
                }
            }
            (S::Queued, S::Erred) => {
                self.queued.discard(t);
                self.propagate_erred(t, args, recs, out)?;
            }
            (S::Processing, S::Released) => {
                if let Some(w) = self.exit_processing_common(t)? {
                    out.to_worker(
                        w,
                        WorkerMsg::FreeKeys {
                            key: t,
                            stimulus_id: stimulus_id.clone(),
                        },
                    );
                }
                self.propagate_released(t, recs);
            }
            (S::Processing, S::Memory) => self.t_processing_memory(t, args, recs, out)?,
            (S::Processing, S::Erred) => {
                if self.ts(t).actor {
                    let w = required!(self.ts(t).processing_on, "ts.processing_on");
                    let th = self.thash(t);
                    self.ws_mut(w).actors.remove(t, th);
                }
                self.exit_processing_common(t)?;
                self.propagate_erred(t, args, recs, out)?;
            }
            (S::NoWorker, S::Released) => {
                self.unrunnable.remove(&t);
                self.propagate_released(t, recs);
            }
            (S::NoWorker, S::Processing) => {
                if let Some(w) = self.decide_worker_non_rootish(t) {
                    self.unrunnable.remove(&t);
                    self.add_to_processing(t, w, stimulus_id, recs, out)?;
                }
            }
            (S::NoWorker, S::Erred) => {
                self.unrunnable.remove(&t);
                self.propagate_erred(t, args, recs, out)?;
            }
            (S::Released, S::Forgotten) | (S::Memory, S::Forgotten) => {
                self.t_to_forgotten(t, stimulus_id, recs, out)
            }
            (S::Memory, S::Erred) => self.t_memory_erred(t, args, recs, out)?,
            (S::Erred, S::Released) => self.t_erred_released(t, stimulus_id, recs, out),
            (S::Memory, S::Released) => self.t_memory_released(t, stimulus_id, recs, out),
            (S::Released, S::Erred) => self.t_released_erred(t, recs, out)?,
            _ => unreachable!("checked by has_transition"),
        }
        Ok(())
    }

    fn t_released_waiting(&mut self, t: TaskId, recs: &mut Recs) {
        if self.ts(t).has_lost_dependencies {
            recs.insert(t, S::Forgotten);
            return;
        }
        self.set_state(t, S::Waiting);
        let th = self.thash(t);
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            let dh = self.thash(d);
            if !self.ts(d).has_who_has() {
                let ts = self.ts_mut(t);
                fresh_if_empty(&mut ts.waiting_on).insert(d, dh);
            }
            if self.ts(d).state == S::Released {
                recs.insert(d, S::Waiting);
            } else {
                let dts = self.ts_mut(d);
                fresh_if_empty(&mut dts.waiters).insert(t, th);
            }
        }
        let waiters: Vec<(TaskId, i64)> = self
            .ts(t)
            .dependents
            .iter()
            .filter(|d| self.ts(*d).state == S::Waiting)
            .map(|d| (d, self.thash(d)))
            .collect();
        self.ts_mut(t).waiters = Some(PySet::from_iter_hashed(waiters));
        if !self.ts(t).has_waiting_on() {
            recs.insert(t, S::Processing);
        }
    }

    fn t_waiting_processing(
        &mut self,
        t: TaskId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let w = if self.is_rootish(t) {
            if self.config.worker_saturation.is_infinite() || !self.ts(t).queueable {
                match self.decide_worker_rootish_queuing_disabled(t) {
                    Some(w) => w,
                    None => {
                        recs.insert(t, S::NoWorker);
                        return Ok(());
                    }
                }
            } else {
                match self.decide_worker_rootish_queuing_enabled() {
                    Some(w) => w,
                    None => {
                        recs.insert(t, S::Queued);
                        return Ok(());
                    }
                }
            }
        } else {
            match self.decide_worker_non_rootish(t) {
                Some(w) => w,
                None => {
                    recs.insert(t, S::NoWorker);
                    return Ok(());
                }
            }
        };
        self.add_to_processing(t, w, stimulus_id, recs, out)
    }

    fn t_waiting_no_worker(&mut self, t: TaskId) {
        self.set_state(t, S::NoWorker);
        self.unrunnable.insert(t, monotonic());
    }

    fn t_waiting_queued(&mut self, t: TaskId) -> CoreResult<()> {
        self.set_state(t, S::Queued);
        let ts = self.ts(t);
        self.queued.add(t, ts.serial, ts.priority)
    }

    fn t_processing_memory(
        &mut self,
        t: TaskId,
        args: TransitionArgs<P>,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let TransitionArgs::Finished {
            worker,
            nbytes,
            type_,
            typename,
            startstops,
        } = args
        else {
            return Err(CoreError::Invalid(
                "processing->memory needs the task-finished fields".into(),
            ));
        };
        let Some(w) = self.worker_id(&worker) else {
            recs.insert(t, S::Released);
            return Ok(());
        };
        if Some(w) != self.ts(t).processing_on {
            return Err(CoreError::Invalid(format!(
                "Task transitioned from processing to memory on worker {worker}, while it \
                 was expected from another worker. This should be impossible."
            )));
        }
        let g = self.ts(t).group;
        for ss in &startstops {
            self.add_duration(g, &ss.action, ss.start, ss.stop);
        }
        self.set_nbytes(t, nbytes);
        self.exit_processing_common(t)?;
        self.add_to_memory(t, w, recs, out, type_, &typename);
        Ok(())
    }

    fn t_memory_released(
        &mut self,
        t: TaskId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) {
        let th = self.thash(t);
        if self.ts(t).actor {
            let holders: SmallVec<[WorkerId; 2]> = self.holders(t);
            for w in holders {
                self.ws_mut(w).actors.remove(t, th);
            }
            if self.ts(t).has_who_wants() {
                let exc = self.actor_lost_exception.clone();
                let ts = self.ts_mut(t);
                ts.exception_blame = Some(t);
                ts.exception = exc;
                recs.insert(t, S::Erred);
                return;
            }
        }
        for w in self.holders(t) {
            out.to_worker(
                w,
                WorkerMsg::FreeKeys {
                    key: t,
                    stimulus_id: stimulus_id.clone(),
                },
            );
        }
        self.remove_all_replicas(t);
        self.set_state(t, S::Released);
        for c in self.wanters(t) {
            out.to_client(c, ClientMsg::LostData { key: t });
        }
        let ts = self.ts(t);
        if ts.run_spec.is_none() || ts.has_lost_dependencies {
            recs.insert(t, S::Forgotten);
        } else if (ts.has_who_wants() || ts.has_waiters())
            && !ts.dependencies.iter().any(|d| self.ts(d).state == S::Erred)
        {
            recs.insert(t, S::Waiting);
        }
        let waiters: SmallVec<[TaskId; 8]> = self
            .ts(t)
            .waiters
            .as_ref()
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        for d in waiters {
            match self.ts(d).state {
                S::NoWorker | S::Processing | S::Queued => {
                    recs.insert(d, S::Waiting);
                }
                S::Waiting => {
                    fresh_if_empty(&mut self.ts_mut(d).waiting_on).insert(t, th);
                }
                _ => {}
            }
        }
    }

    fn t_released_erred(
        &mut self,
        t: TaskId,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let failing = required!(self.ts(t).exception_blame, "ts.exception_blame");
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            if !self.ts(d).has_who_has() {
                self.ts_mut(d).exception_blame = Some(failing);
                recs.insert(d, S::Erred);
            }
        }
        self.report_erred(t, failing, out);
        self.set_state(t, S::Erred);
        Ok(())
    }

    fn t_erred_released(
        &mut self,
        t: TaskId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) {
        {
            let ts = self.ts_mut(t);
            ts.exception = None;
            ts.exception_blame = None;
            ts.traceback = None;
        }
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            if self.ts(d).state == S::Erred {
                recs.insert(d, S::Waiting);
            }
        }
        if let Some(erred_on) = self.ts_mut(t).erred_on.take() {
            for addr in erred_on {
                if let Some(&w) = self.any_worker_by_address.get(&addr) {
                    out.to_worker(
                        w,
                        WorkerMsg::FreeKeys {
                            key: t,
                            stimulus_id: stimulus_id.clone(),
                        },
                    );
                }
            }
        }
        for c in self.wanters(t) {
            out.to_client(c, ClientMsg::TaskRetried { key: t });
        }
        self.set_state(t, S::Released);
    }

    fn t_waiting_released(&mut self, t: TaskId, recs: &mut Recs) {
        let th = self.thash(t);
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            let dts = self.ts_mut(d);
            if dts.waiters.as_ref().is_some_and(|s| s.contains(t, th)) {
                if let Some(s) = dts.waiters.as_mut() {
                    s.remove(t, th);
                }
                if !dts.has_waiters() && !dts.has_who_wants() {
                    recs.insert(d, S::Released);
                }
            }
        }
        self.ts_mut(t).waiting_on = None;
        self.set_state(t, S::Released);
        let ts = self.ts(t);
        if ts.has_lost_dependencies {
            recs.insert(t, S::Forgotten);
        } else if ts.exception_blame.is_none() && (ts.has_who_wants() || ts.has_waiters()) {
            recs.insert(t, S::Waiting);
        } else {
            self.ts_mut(t).waiters = None;
        }
    }

    /// `_propagate_erred`
    pub(crate) fn propagate_erred(
        &mut self,
        t: TaskId,
        args: TransitionArgs<P>,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let (worker, cause, exception, traceback, exception_text, traceback_text) = match args {
            TransitionArgs::Erred {
                worker,
                cause,
                exception,
                traceback,
                exception_text,
                traceback_text,
            } => (
                worker,
                cause,
                exception,
                traceback,
                exception_text,
                traceback_text,
            ),
            _ => (None, None, None, None, None, None),
        };
        self.set_state(t, S::Erred);
        {
            let ts = self.ts_mut(t);
            let erred_on = ts.erred_on.get_or_insert_with(Vec::new);
            if let Some(w) = worker {
                if !erred_on.contains(&w) {
                    erred_on.push(w);
                }
            }
            if exception.is_some() {
                ts.exception = exception;
                ts.exception_text = exception_text.clone();
            }
            if traceback.is_some() {
                ts.traceback = traceback;
                ts.traceback_text = traceback_text.clone();
            }
        }
        let failing = match cause {
            Some(c) => {
                self.ts_mut(t).exception_blame = Some(c);
                c
            }
            None => required!(self.ts(t).exception_blame, "ts.exception_blame is not None"),
        };
        if self.config.erred_tasks_maxlen > 0 {
            let ts = self.ts(t);
            let rec = ErredTaskRecord {
                key: ts.key.clone(),
                timestamp: now(),
                erred_on: ts.erred_on.clone().unwrap_or_default(),
                exception_text,
                traceback_text,
            };
            if self.erred_tasks.len() >= self.config.erred_tasks_maxlen {
                self.erred_tasks.pop_back();
            }
            self.erred_tasks.push_front(rec);
        }
        let waiters: SmallVec<[TaskId; 8]> = self
            .ts(t)
            .waiters
            .as_ref()
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        for d in waiters {
            self.ts_mut(d).exception_blame = Some(failing);
            recs.insert(d, S::Erred);
        }
        let th = self.thash(t);
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            let dts = self.ts_mut(d);
            if let Some(s) = dts.waiters.as_mut() {
                if !s.is_empty() {
                    s.remove(t, th);
                }
            }
            if !dts.has_waiters() && !dts.has_who_wants() {
                recs.insert(d, S::Released);
            }
        }
        self.ts_mut(t).waiters = None;
        self.report_erred(t, failing, out);
        let ff = self.fire_and_forget;
        if self.clients[ff.idx()].wants_what.contains(t, th) {
            self.client_releases_keys_inner(&[t], ff, recs);
        }
        Ok(())
    }

    fn t_memory_erred(
        &mut self,
        t: TaskId,
        args: TransitionArgs<P>,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        // distributed builds free-keys and task-erred messages here and then returns only
        // `_propagate_erred`'s result, so those first messages are never sent; same here.
        let _ = args;
        self.remove_all_replicas(t);
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            if !self.ts(d).has_who_has() {
                // distributed recommends `erred` here into a dict it then discards
                self.ts_mut(d).exception_blame = Some(t);
            }
        }
        self.set_state(t, S::Erred);
        let exception = self.actor_lost_exception.clone();
        self.propagate_erred(
            t,
            TransitionArgs::Erred {
                worker: None,
                cause: Some(t),
                exception,
                traceback: None,
                exception_text: None,
                traceback_text: None,
            },
            recs,
            out,
        )
    }

    fn t_to_forgotten(&mut self, t: TaskId, stimulus_id: &P, recs: &mut Recs, out: &mut Outbox<P>) {
        if self.ts(t).actor && self.ts(t).state == S::Memory {
            let th = self.thash(t);
            for w in self.holders(t) {
                self.ws_mut(w).actors.remove(t, th);
            }
        }
        self.propagate_forgotten(t, stimulus_id, recs, out);
        // _task_to_client_msgs(ts): state is "forgotten" now.
        for c in self.wanters(t) {
            out.to_client(
                c,
                ClientMsg::CancelledKeys {
                    keys: vec![t],
                    reason: Some("already forgotten"),
                },
            );
        }
        self.remove_key(t);
    }

    /// `_remove_key`
    fn remove_key(&mut self, t: TaskId) {
        self.unrunnable.remove(&t);
        let th = self.thash(t);
        let wanters = self.wanters(t);
        for c in wanters {
            self.clients[c.idx()].wants_what.remove(t, th);
        }
        let ts = self.ts_mut(t);
        ts.who_wants = None;
        ts.processing_on = None;
        ts.exception_blame = None;
        ts.exception = None;
        ts.traceback = None;
        self.n_live_tasks -= 1;
        self.pending_free.push(t);
    }

    /// `_propagate_released`
    pub(crate) fn propagate_released(&mut self, t: TaskId, recs: &mut Recs) {
        self.set_state(t, S::Released);
        let ts = self.ts(t);
        if ts.has_lost_dependencies {
            recs.insert(t, S::Forgotten);
        } else if ts.has_waiters() || ts.has_who_wants() {
            recs.insert(t, S::Waiting);
        }
        if recs.get(&t) != Some(&S::Waiting) {
            let th = self.thash(t);
            let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
            for d in deps {
                let dts = self.ts_mut(d);
                if dts.state != S::Released {
                    if let Some(s) = dts.waiters.as_mut() {
                        if !s.is_empty() {
                            s.remove(t, th);
                        }
                    }
                    if !dts.has_waiters() && !dts.has_who_wants() {
                        recs.insert(d, S::Released);
                    }
                }
            }
            self.ts_mut(t).waiters = None;
        }
    }

    /// `_propagate_forgotten`
    fn propagate_forgotten(
        &mut self,
        t: TaskId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) {
        self.set_state(t, S::Forgotten);
        let th = self.thash(t);
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            let dts = self.ts_mut(d);
            dts.has_lost_dependencies = true;
            dts.dependencies.remove(t, th);
            if let Some(s) = dts.waiting_on.as_mut() {
                if !s.is_empty() {
                    s.remove(t, th);
                }
            }
            if dts.state != S::Memory && dts.state != S::Erred {
                recs.insert(d, S::Forgotten);
            }
        }
        self.ts_mut(t).dependents.clear();
        self.ts_mut(t).waiters = None;
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            let dts = self.ts_mut(d);
            dts.dependents.remove(t, th);
            if let Some(s) = dts.waiters.as_mut() {
                if !s.is_empty() {
                    s.remove(t, th);
                }
            }
            if dts.dependents.is_empty() && !dts.has_who_wants() {
                recs.insert(d, S::Forgotten);
            }
        }
        self.ts_mut(t).dependencies.clear();
        self.ts_mut(t).waiting_on = None;
        for w in self.holders(t) {
            if self.is_current_worker(w) {
                out.to_worker(
                    w,
                    WorkerMsg::FreeKeys {
                        key: t,
                        stimulus_id: stimulus_id.clone(),
                    },
                );
            }
        }
        self.remove_all_replicas(t);
    }

    /// `_add_to_processing`
    pub(crate) fn add_to_processing(
        &mut self,
        t: TaskId,
        w: WorkerId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        self.ws_add_to_processing(w, t);
        self.ts_mut(t).processing_on = Some(w);
        self.set_state(t, S::Processing);
        self.acquire_resources(t, w);
        self.check_idle_saturated(w);
        self.n_tasks += 1;
        if self.ts(t).actor {
            let th = self.thash(t);
            self.ws_mut(w).actors.insert(t, th);
        }
        let ndep_bytes: i64 = self
            .ts(t)
            .dependencies
            .iter()
            .map(|d| self.ts(d).nbytes)
            .sum();
        let memory_limit = self.ws(w).memory_limit;
        if memory_limit != 0 && ndep_bytes > memory_limit && self.config.memory_terminate {
            let exception = self.memory_error.as_ref().map(|f| {
                f(
                    &self.ts(t).key,
                    ndep_bytes,
                    &self.ws(w).address,
                    memory_limit,
                    !self.ts(t).dependents.is_empty(),
                )
            });
            let new = self.transition(
                t,
                S::Erred,
                stimulus_id,
                TransitionArgs::Erred {
                    worker: Some(self.ws(w).address.clone()),
                    cause: Some(t),
                    exception,
                    traceback: None,
                    exception_text: None,
                    traceback_text: None,
                },
                out,
            )?;
            for (k, v) in new.iter() {
                recs.insert(*k, *v);
            }
            return Ok(());
        }
        let msg = self.task_to_msg(t)?;
        out.to_worker(w, msg);
        Ok(())
    }

    /// `_task_to_msg` (the payload fields are read by the binding when it builds the dict)
    pub(crate) fn task_to_msg(&mut self, t: TaskId) -> CoreResult<WorkerMsg<P>> {
        let run_id = self.run_id_counter;
        self.run_id_counter += 1;
        self.ts_mut(t).run_id = Some(run_id);
        let ts = self.ts(t);
        let who_has = ts
            .dependencies
            .iter()
            .map(|d| (d, self.holders(d)))
            .collect();
        let nbytes = ts
            .dependencies
            .iter()
            .map(|d| (d, self.ts(d).nbytes))
            .collect();
        Ok(WorkerMsg::ComputeTask {
            task: t,
            run_id,
            priority: required!(ts.priority, "ts.priority"),
            stimulus_time: now(),
            who_has,
            nbytes,
        })
    }

    /// `_exit_processing_common`
    pub(crate) fn exit_processing_common(&mut self, t: TaskId) -> CoreResult<Option<WorkerId>> {
        let w = required!(self.ts_mut(t).processing_on.take(), "ws");
        self.ws_remove_from_processing(w, t);
        if !self.is_current_worker(w) {
            return Ok(None);
        }
        self.check_idle_saturated(w);
        self.release_resources(t, w);
        Ok(Some(w))
    }

    /// `_add_to_memory`
    pub(crate) fn add_to_memory(
        &mut self,
        t: TaskId,
        w: WorkerId,
        recs: &mut Recs,
        out: &mut Outbox<P>,
        type_: Option<P>,
        typename: &str,
    ) {
        self.add_replica(t, w);
        let th = self.thash(t);
        let mut deps: Vec<TaskId> = self.ts(t).dependents.iter().collect();
        if deps.len() > 1 {
            // list.sort is stable: equal priorities keep set order, reversed as a whole
            // by `reverse=True` which Python implements as a stable descending sort.
            deps.sort_by(|a, b| {
                let pa = self.ts(*a).priority;
                let pb = self.ts(*b).priority;
                cmp_opt_prio(&pb, &pa)
            });
        }
        for d in deps {
            let dts = self.ts_mut(d);
            if let Some(s) = dts.waiting_on.as_mut() {
                if !s.is_empty() && s.contains(t, th) {
                    s.remove(t, th);
                    if s.is_empty() {
                        recs.insert(d, S::Processing);
                    }
                }
            }
        }
        let own_deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in own_deps {
            let dts = self.ts_mut(d);
            if let Some(s) = dts.waiters.as_mut() {
                if !s.is_empty() {
                    s.remove(t, th);
                }
            }
            if !dts.has_waiters() && !dts.has_who_wants() {
                recs.insert(d, S::Released);
            }
        }
        let ts = self.ts(t);
        if !ts.has_waiters() && !ts.has_who_wants() {
            recs.insert(t, S::Released);
        } else {
            for c in self.wanters(t) {
                out.to_client(
                    c,
                    ClientMsg::KeyInMemory {
                        key: t,
                        type_: type_.clone(),
                        with_type: true,
                    },
                );
            }
        }
        self.set_state(t, S::Memory);
        self.ts_mut(t).type_ = Some(typename.to_owned());
        let g = self.ts(t).group;
        self.add_type(g, typename);
        let ff = self.fire_and_forget;
        if self.clients[ff.idx()].wants_what.contains(t, th) {
            self.client_releases_keys_inner(&[t], ff, recs);
        }
    }

    /// `_client_releases_keys`
    pub fn client_releases_keys_inner(&mut self, keys: &[TaskId], c: ClientId, recs: &mut Recs) {
        let ch = self.chash(c);
        for &t in keys {
            if self.task(t).is_none() {
                continue;
            }
            let th = self.thash(t);
            if !self.clients[c.idx()].wants_what.contains(t, th) {
                continue;
            }
            self.clients[c.idx()].wants_what.remove(t, th);
            let ts = self.ts_mut(t);
            if let Some(s) = ts.who_wants.as_mut() {
                if !s.is_empty() {
                    s.remove(c, ch);
                }
            }
            if !ts.has_who_wants() {
                if ts.dependents.is_empty() {
                    recs.insert(t, S::Forgotten);
                } else if ts.state != S::Erred && !ts.has_waiters() {
                    recs.insert(t, S::Released);
                }
            }
        }
    }

    // ----- small helpers ------------------------------------------------------------

    /// `{"op": "task-erred", "key": key, "exception": ..., "traceback": ...}` with the
    /// blamed task's exception, to every client wanting `t`.
    fn report_erred(&self, t: TaskId, failing: TaskId, out: &mut Outbox<P>) {
        let f = self.ts(failing);
        for c in self.wanters(t) {
            out.to_client(
                c,
                ClientMsg::TaskErred {
                    key: t,
                    exception: f.exception.clone(),
                    traceback: f.traceback.clone(),
                },
            );
        }
    }

    /// `ts.who_has or ()` in iteration order.
    pub fn holders(&self, t: TaskId) -> SmallVec<[WorkerId; 2]> {
        self.ts(t)
            .who_has
            .as_ref()
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// `ts.who_wants or ()` in iteration order.
    pub fn wanters(&self, t: TaskId) -> SmallVec<[ClientId; 2]> {
        self.ts(t)
            .who_wants
            .as_ref()
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }
}

/// `if not s: s = set()`: an empty set (even an emptied one, whose table has grown) is
/// replaced by a fresh one, which iterates differently.
fn fresh_if_empty<T: Copy + Eq>(s: &mut Option<PySet<T>>) -> &mut PySet<T> {
    if s.as_ref().is_none_or(|x| x.is_empty()) {
        *s = Some(PySet::new());
    }
    s.as_mut().expect("just set")
}

pub fn cmp_opt_prio(a: &Option<Priority>, b: &Option<Priority>) -> std::cmp::Ordering {
    match (a, b) {
        (Some(a), Some(b)) => a.cmp_prio(b),
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
    }
}
