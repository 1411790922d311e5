//! The transition engine: `SchedulerState._transition`, `_transitions` and every entry
//! of `_TRANSITIONS_TABLE`, in distributed's order of effects.

use crate::core::messages::*;
use crate::core::pyset::{fresh_if_empty, PySet};
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;
use std::time::Instant;

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

impl<P: Clone> SchedulerState<P> {
    /// `SchedulerState._transitions`: process recommendations until none are left.
    pub fn transitions_loop(
        &mut self,
        recommendations: Recs,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        self.transitions_until(recommendations, out, stimulus_id, None)
            .map(|_| ())
    }

    /// `transitions_loop` that stops once `deadline` has passed (checked every few
    /// hundred transitions), returning the recommendations still to process.
    pub fn transitions_until(
        &mut self,
        recommendations: Recs,
        out: &mut Outbox<P>,
        stimulus_id: &P,
        deadline: Option<Instant>,
    ) -> CoreResult<Option<Recs>> {
        const DEADLINE_EVERY: u32 = 512;
        let mut recs = recommendations;
        self.log_clock = Some((0.0, 0));
        let mut until_check = DEADLINE_EVERY;
        let result = (|| {
            while let Some((t, finish)) = recs.pop_last() {
                let new = self.transition(t, finish, stimulus_id, TransitionArgs::None, out)?;
                for (k, v) in new.iter() {
                    recs.insert(*k, *v);
                }
                until_check -= 1;
                if until_check == 0 {
                    until_check = DEADLINE_EVERY;
                    if deadline.is_some_and(|d| Instant::now() >= d) && !recs.is_empty() {
                        return Ok(Some(std::mem::take(&mut recs)));
                    }
                }
            }
            Ok(None)
        })();
        self.log_clock = None;
        result
    }

    /// The time a transition log entry gets. Inside `transitions_loop` the clock is
    /// read once per `LOG_CLOCK_REUSE` transitions (a clock read per transition was
    /// a tenth of a large graph's transitions), so entries are at most a few hundred
    /// transitions (well under a millisecond) early.
    fn log_time(&mut self) -> f64 {
        const LOG_CLOCK_REUSE: u32 = 256;
        match &mut self.log_clock {
            None => now(),
            Some((time, left)) => {
                if *left == 0 {
                    *time = now();
                    *left = LOG_CLOCK_REUSE;
                }
                *left -= 1;
                *time
            }
        }
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
        let edges = (finish == S::Forgotten && self.observes(S::Forgotten))
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

        let actual_finish = self.ts(t).state;
        if self.config.transition_log_maxlen > 0 {
            let timestamp = self.log_time();
            let ts = self.ts(t);
            let entry = TransitionLogEntry {
                key: ts.key.clone(),
                start,
                finish: actual_finish,
                recommendations: recs
                    .iter()
                    .map(|(k, v)| (self.ts(*k).key.clone(), *v))
                    .collect(),
                stimulus_id: stimulus_id.clone(),
                timestamp,
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
                let own = self
                    .own_transition
                    .take_if(|o| o.task == t && o.finish == actual_finish);
                let observed = ObservedTransition {
                    task: t,
                    key: &key,
                    start,
                    finish: actual_finish,
                    stimulus_id,
                    fields: own.map(|o| o.fields),
                };
                let started = std::time::Instant::now();
                notify(self, &observed);
                self.observer_ns += started.elapsed().as_nanos() as u64;
            }
        }
        if actual_finish == S::Forgotten {
            // out of `tasks` once the observer (plugins) saw it forgotten
            let h = self.ts(t).hash;
            self.keys.remove(t, h);
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

    /// Whether an observer is told of transitions into `finish`.
    pub fn observes(&self, finish: S) -> bool {
        self.observer
            .as_ref()
            .is_some_and(|o| o.finishes & (1 << finish.index()) != 0)
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
                            key: self.ts(t).key.clone(),
                            stimulus_id: stimulus_id.clone(),
                        },
                    );
                }
                self.propagate_released(t, recs);
            }
            (S::Processing, S::Memory) => self.t_processing_memory(t, args, recs, out)?,
            (S::Processing, S::Erred) => {
                if self.ts(t).actor {
                    let w = required!(self.ts(t).processing_on(), "ts.processing_on()");
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
                if self.config.validate && !self.may_forget(t) {
                    return Err(CoreError::Unreachable(t));
                }
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
        if Some(w) != self.ts(t).processing_on() {
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
                let rare = ts.rare_mut();
                rare.exception_blame = Some(t);
                rare.exception = exc;
                recs.insert(t, S::Erred);
                return;
            }
        }
        for w in self.holders(t) {
            out.to_worker(
                w,
                WorkerMsg::FreeKeys {
                    key: self.ts(t).key.clone(),
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
        let failing = required!(self.ts(t).exception_blame(), "ts.exception_blame");
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            if !self.ts(d).has_who_has() {
                self.ts_mut(d).rare_mut().exception_blame = Some(failing);
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
        self.ts_mut(t).clear_error();
        let dependents: SmallVec<[TaskId; 8]> = self.ts(t).dependents.iter().collect();
        for d in dependents {
            if self.ts(d).state == S::Erred {
                recs.insert(d, S::Waiting);
            }
        }
        if let Some(erred_on) = self.ts_mut(t).rare.as_mut().and_then(|r| r.erred_on.take()) {
            for addr in erred_on {
                if let Some(&w) = self.any_worker_by_address.get(&addr) {
                    out.to_worker(
                        w,
                        WorkerMsg::FreeKeys {
                            key: self.ts(t).key.clone(),
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
        } else if ts.exception_blame().is_none() && (ts.has_who_wants() || ts.has_waiters()) {
            recs.insert(t, S::Waiting);
        } else {
            self.ts_mut(t).waiters = None;
        }
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
                self.ts_mut(d).rare_mut().exception_blame = Some(t);
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

    /// Whether forgetting `t` loses nothing: a pure data task, a task with lost
    /// dependencies, or one nobody needs.
    fn may_forget(&self, t: TaskId) -> bool {
        let ts = self.ts(t);
        ts.run_spec.is_none()
            || ts.has_lost_dependencies
            || (!ts.has_who_wants() && !ts.has_waiters() && ts.dependents.is_empty())
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
            out.to_client(c, ClientMsg::AlreadyForgotten { key: t });
        }
        self.remove_key(t);
    }
}
