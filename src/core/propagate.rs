//! What transitions share: `_propagate_*`, `_add_to_processing`, `_add_to_memory`,
//! `_exit_processing_common`, `_remove_key`, `_task_to_msg`.

use crate::core::messages::*;
use crate::core::state::*;
use crate::core::transitions::TransitionArgs;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;

impl<P: Clone> SchedulerState<P> {
    /// `_propagate_erred`
    pub(super) fn propagate_erred(
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
            let ts = self.ts_mut(t).rare_mut();
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
                self.ts_mut(t).rare_mut().exception_blame = Some(c);
                c
            }
            None => required!(
                self.ts(t).exception_blame(),
                "ts.exception_blame is not None"
            ),
        };
        if self.config.erred_tasks_maxlen > 0 {
            let ts = self.ts(t);
            let rec = ErredTaskRecord {
                key: ts.key.clone(),
                timestamp: now(),
                erred_on: ts.erred_on().map(<[_]>::to_vec).unwrap_or_default(),
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
            self.ts_mut(d).rare_mut().exception_blame = Some(failing);
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

    /// `_remove_key`
    pub(super) fn remove_key(&mut self, t: TaskId) {
        self.unrunnable.remove(&t);
        let th = self.thash(t);
        let wanters = self.wanters(t);
        for c in wanters {
            self.clients[c.idx()].wants_what.remove(t, th);
        }
        let ts = self.ts_mut(t);
        if let Some(r) = ts.rare.as_deref_mut() {
            r.who_wants = None;
        }
        ts.set_processing_on(None);
        ts.clear_error();
        self.n_live_tasks -= 1;
        self.pending_free.push(t);
    }

    /// `_propagate_released`
    pub(super) fn propagate_released(&mut self, t: TaskId, recs: &mut Recs) {
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
    pub(super) fn propagate_forgotten(
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
                        key: self.ts(t).key.clone(),
                        stimulus_id: stimulus_id.clone(),
                    },
                );
            }
        }
        self.remove_all_replicas(t);
    }

    /// `_add_to_processing`
    pub(super) fn add_to_processing(
        &mut self,
        t: TaskId,
        w: WorkerId,
        stimulus_id: &P,
        recs: &mut Recs,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        self.ws_add_to_processing(w, t);
        self.ts_mut(t).set_processing_on(Some(w));
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
    pub(super) fn task_to_msg(&mut self, t: TaskId) -> CoreResult<WorkerMsg<P>> {
        let run_id = self.run_id_counter;
        self.run_id_counter += 1;
        self.ts_mut(t).set_run_id(run_id);
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
    pub(super) fn exit_processing_common(&mut self, t: TaskId) -> CoreResult<Option<WorkerId>> {
        let w = required!(self.ts_mut(t).take_processing_on(), "ws");
        self.ws_remove_from_processing(w, t);
        if !self.is_current_worker(w) {
            return Ok(None);
        }
        self.check_idle_saturated(w);
        self.release_resources(t, w);
        Ok(Some(w))
    }

    /// `_add_to_memory`
    pub(super) fn add_to_memory(
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
        let name = self.strings.intern(typename);
        self.ts_mut(t).type_ = OptId::new(Some(name));
        let g = self.ts(t).group;
        self.add_type(g, typename);
        let ff = self.fire_and_forget;
        if self.clients[ff.idx()].wants_what.contains(t, th) {
            self.client_releases_keys_inner(&[t], ff, recs);
        }
    }

    // ----- small helpers ------------------------------------------------------------

    /// `{"op": "task-erred", "key": key, "exception": ..., "traceback": ...}` with the
    /// blamed task's exception, to every client wanting `t`.
    pub(super) fn report_erred(&self, t: TaskId, failing: TaskId, out: &mut Outbox<P>) {
        let f = self.ts(failing);
        for c in self.wanters(t) {
            out.to_client(
                c,
                ClientMsg::TaskErred {
                    key: t,
                    exception: f.exception().cloned(),
                    traceback: f.traceback().cloned(),
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
}
