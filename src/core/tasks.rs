//! Task events from workers: finished, erred, long-running; retries; filling queue slots.

use crate::core::messages::*;
use crate::core::state::*;
use crate::core::transitions::TransitionArgs;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;

impl<P: Clone> SchedulerState<P> {
    /// `_transitions(recommendations)` then `stimulus_queue_slots_maybe_opened`: how the
    /// task-finished/erred, client-releases and worker-joins handlers end.
    pub fn transitions_then_fill_queue(
        &mut self,
        recs: Recs,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        self.transitions_loop(recs, out, stimulus_id)?;
        self.stimulus_queue_slots_maybe_opened(out, stimulus_id)
    }

    /// `stimulus_queue_slots_maybe_opened`
    pub fn stimulus_queue_slots_maybe_opened(
        &mut self,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        // sum(_task_slots_available(ws) for ws in idle_task_count), read once up front
        let slots = self.idle_slots;
        for _ in 0..slots.max(0) {
            let Some(qts) = self.queued.peek() else {
                return Ok(());
            };
            let mut recs = Recs::new();
            recs.insert(qts, S::Processing);
            self.transitions_loop(recs, out, stimulus_id)?;
        }
        Ok(())
    }

    /// `Scheduler.stimulus_task_finished`: a stale report gets `free-keys` to the worker
    /// (or, from the worker the task now runs on, a release); a task already in memory
    /// gains the replica; otherwise `prepare` (the binding) merges the report's
    /// metadata into the task's and reads the report's fields, and the task transitions
    /// to memory. Fields are read only then, as distributed reads them in the
    /// transition: a malformed field of a stale report is never an error. Returns the recommendations, not carried out.
    #[allow(clippy::too_many_arguments)]
    pub fn stimulus_task_finished(
        &mut self,
        key: &P,
        t: Option<TaskId>,
        worker: &str,
        run_id: Option<i64>,
        prepare: impl FnOnce(&mut Option<P>) -> Option<TransitionArgs<P>>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<Recs> {
        let mut recs = Recs::new();
        let live = t.filter(|t| self.task(*t).is_some());
        if let Some(t) = live {
            let ts = self.ts(t);
            let stale = matches!(ts.state, S::Released | S::Queued | S::NoWorker | S::Erred);
            if !stale && ts.run_id() != run_id {
                if ts
                    .processing_on()
                    .is_some_and(|w| self.ws(w).address == worker)
                {
                    recs.insert(t, S::Released);
                    return Ok(recs);
                }
            } else if !stale && ts.state == S::Memory {
                // add_keys(worker=worker, keys=[key])
                if let Some(w) = self.worker_id(worker) {
                    self.add_replica(t, w);
                }
                return Ok(recs);
            } else if !stale {
                let ts = self.ts_mut(t);
                let mut metadata = ts.take_metadata();
                let args = prepare(&mut metadata);
                ts.set_metadata(metadata);
                let Some(args) = args else {
                    return Err(CoreError::Invalid("malformed task-finished message".into()));
                };
                return self.transition(t, S::Memory, stimulus_id, args, out);
            }
        }
        if let Some(w) = self.worker_id(worker) {
            out.to_worker(
                w,
                WorkerMsg::FreeKeys {
                    key: key.clone(),
                    stimulus_id: stimulus_id.clone(),
                },
            );
        }
        Ok(recs)
    }

    /// `Scheduler.stimulus_task_erred`
    pub fn stimulus_task_erred(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        run_id: Option<i64>,
        args: TransitionArgs<P>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<Recs> {
        let Some(t) = t.filter(|t| self.task(*t).is_some()) else {
            return Ok(Recs::new());
        };
        if self.ts(t).state != S::Processing {
            return Ok(Recs::new());
        }
        if self.ts(t).run_id() != run_id {
            let on_worker = self
                .ts(t)
                .processing_on()
                .is_some_and(|w| self.ws(w).address == worker);
            if on_worker {
                return self.transition(t, S::Released, stimulus_id, TransitionArgs::None, out);
            }
            return Ok(Recs::new());
        }
        if self.ts(t).retries() > 0 {
            self.ts_mut(t).rare_mut().retries -= 1;
            return self.transition(t, S::Waiting, stimulus_id, TransitionArgs::None, out);
        }
        let args = match args {
            TransitionArgs::Erred {
                exception,
                traceback,
                exception_text,
                traceback_text,
                ..
            } => TransitionArgs::Erred {
                worker: Some(worker.to_owned()),
                cause: Some(t),
                exception,
                traceback,
                exception_text,
                traceback_text,
            },
            other => other,
        };
        self.transition(t, S::Erred, stimulus_id, args, out)
    }

    /// `Scheduler.stimulus_retry`: returns the keys seen.
    pub fn stimulus_retry(
        &mut self,
        keys: &[TaskId],
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<Vec<TaskId>> {
        let mut stack: Vec<TaskId> = keys.to_vec();
        let mut seen = Vec::new();
        let mut roots = Vec::new();
        while let Some(t) = stack.pop() {
            seen.push(t);
            let erred: Vec<TaskId> = self
                .ts(t)
                .dependencies
                .iter()
                .filter(|d| self.ts(*d).state == S::Erred)
                .collect();
            if !erred.is_empty() {
                stack.extend(erred);
            } else {
                roots.push(t);
            }
        }
        let mut recs = Recs::new();
        for t in roots {
            recs.insert(t, S::Waiting);
        }
        self.transitions_loop(recs, out, stimulus_id)?;
        Ok(seen)
    }
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.handle_long_running`. A malformed `compute_duration` is an error only
    /// where distributed reads it (a current report).
    pub fn handle_long_running(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        run_id: Option<i64>,
        compute_duration: CoreResult<Option<f64>>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        if self.worker_id(worker).is_none() {
            return Ok(());
        }
        let Some(t) = t.filter(|t| self.task(*t).is_some()) else {
            return Ok(());
        };
        let Some(w) = self.ts(t).processing_on() else {
            return Ok(());
        };
        if self.ws(w).address != worker || self.ts(t).run_id() != run_id {
            return Ok(());
        }
        if let Some(d) = compute_duration? {
            let p = self.ts(t).prefix;
            let tp = &mut self.prefixes[p.idx()];
            tp.duration_average = if tp.duration_average < 0.0 {
                d
            } else {
                (tp.duration_average + d) / 2.0
            };
        }
        self.remove_key_from_stealable(t);
        self.ws_add_to_long_running(w, t);
        self.check_idle_saturated(w);
        self.stimulus_queue_slots_maybe_opened(out, stimulus_id)
    }
}
