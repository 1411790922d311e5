//! Stimuli: graph submission, workers joining/leaving/pausing, task finished/erred,
//! clients desiring/releasing keys, retries. Each mirrors the `Scheduler`/`SchedulerState`
//! method of the same name and ends with the same transitions.

use crate::core::entities::*;
use crate::core::ordered::OrderedMap;
use crate::core::pyset::PySet;
use crate::core::state::*;
use crate::core::transitions::TransitionArgs;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;

/// A reference from a submitted graph to a key.
#[derive(Copy, Clone, Debug, PartialEq)]
pub enum KeyRef {
    /// Index into the submitted graph's tasks.
    Graph(usize),
    /// A key the scheduler already knows that is not in the submitted graph.
    Existing(TaskId),
}

/// One entry of the submitted graph, resolved by the binding.
#[derive(Clone, Debug)]
pub struct GraphTask<P> {
    pub key: P,
    pub hash: i64,
    pub group: String,
    pub prefix: String,
    pub run_spec: Option<P>,
    pub data_producer: bool,
    /// `tspec.dependencies`, in its iteration order.
    pub dependencies: Vec<KeyRef>,
    /// The scheduler's task for this key, if it already exists.
    pub existing: Option<TaskId>,
    /// False for a key only named as a dependency (not a key of the submitted dict).
    pub in_dsk: bool,
}

#[derive(Clone, Debug, Default)]
pub struct GeneratedTasks {
    pub touched: Vec<TaskId>,
    pub new: Vec<TaskId>,
    pub colliding_task_count: usize,
    /// Existing tasks whose submitted run_spec has other dependencies, in the order
    /// found (distributed warns once per group, in this order).
    pub collisions: Vec<TaskId>,
    /// TaskId of each graph entry (after creation).
    pub graph_ids: Vec<Option<TaskId>>,
}

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
    /// `Scheduler._generate_taskstates`. `keys` in `set(keys)` iteration order;
    /// `deps_equal(ts, entry)` answers the run_spec collision check for existing tasks.
    pub fn generate_taskstates(
        &mut self,
        keys: &[KeyRef],
        dsk: &[GraphTask<P>],
    ) -> CoreResult<GeneratedTasks> {
        let mut out = GeneratedTasks {
            graph_ids: dsk
                .iter()
                .map(|g| g.existing.filter(|t| self.task(*t).is_some()))
                .collect(),
            ..Default::default()
        };
        let mut touched_graph = vec![false; dsk.len()];
        let mut touched_existing: hashbrown::HashSet<TaskId> = hashbrown::HashSet::new();
        let mut collisions = vec![false; dsk.len()];
        let mut stack: Vec<KeyRef> = keys.to_vec();
        while let Some(k) = stack.pop() {
            match k {
                KeyRef::Existing(t) => {
                    if !touched_existing.insert(t) {
                        continue;
                    }
                    out.touched.push(t);
                }
                KeyRef::Graph(i) => {
                    if touched_graph[i] {
                        continue;
                    }
                    let g = &dsk[i];
                    let t = match out.graph_ids[i] {
                        None => {
                            let t = self.new_task(
                                g.key.clone(),
                                g.hash,
                                &g.group,
                                &g.prefix,
                                g.run_spec.clone(),
                                g.data_producer,
                                S::Released,
                            );
                            out.graph_ids[i] = Some(t);
                            out.new.push(t);
                            t
                        }
                        Some(t) => {
                            if self.ts(t).run_spec.is_none() {
                                let ts = self.ts_mut(t);
                                ts.run_spec = g.run_spec.clone();
                                ts.data_producer = g.data_producer;
                            } else {
                                let lhs: hashbrown::HashSet<TaskId> =
                                    self.ts(t).dependencies.iter().collect();
                                let rhs: Option<hashbrown::HashSet<TaskId>> = g
                                    .dependencies
                                    .iter()
                                    .map(|d| match d {
                                        KeyRef::Existing(x) => Some(*x),
                                        KeyRef::Graph(j) => out.graph_ids[*j],
                                    })
                                    .collect();
                                if rhs.as_ref() != Some(&lhs) {
                                    collisions[i] = true;
                                    out.colliding_task_count += 1;
                                    out.collisions.push(t);
                                }
                            }
                            t
                        }
                    };
                    touched_graph[i] = true;
                    out.touched.push(t);
                    if g.run_spec.is_some() {
                        stack.extend(g.dependencies.iter().copied());
                    }
                }
            }
        }
        for (i, g) in dsk.iter().enumerate() {
            let Some(t) = out.graph_ids[i] else { continue };
            if collisions[i] || !g.in_dsk {
                continue;
            }
            for d in &g.dependencies {
                let dt = match d {
                    KeyRef::Existing(x) => Some(*x),
                    KeyRef::Graph(j) => out.graph_ids[*j],
                };
                // `self.tasks[dep]` raises KeyError for a dependency never created
                let dt = dt.ok_or_else(|| CoreError::UnknownKey(format!("dependency {d:?}")))?;
                self.add_dependency(t, dt);
            }
        }
        Ok(out)
    }

    /// `Scheduler._set_priorities`. `prios[i]` is `(annotated user priority,
    /// internal priority)` for `tasks[i]`; generation bookkeeping as distributed's.
    pub fn set_priorities(
        &mut self,
        tasks: &[TaskId],
        prios: &[(Num, Option<i64>)],
        submitting_task: Option<TaskId>,
        submitting_known: bool,
        fifo_timeout: f64,
        start: f64,
    ) {
        let generation: Num = if submitting_known || submitting_task.is_some() {
            match submitting_task
                .and_then(|t| self.task(t))
                .and_then(|ts| ts.priority)
            {
                Some(p) => Num::Float(p.0[0].as_f64() - 0.01),
                None => Num::Int(self.generation),
            }
        } else if self.last_time + fifo_timeout < start {
            self.generation += 1;
            self.last_time = start;
            Num::Int(self.generation)
        } else {
            Num::Int(self.generation)
        };
        for (&t, &(user, internal)) in tasks.iter().zip(prios) {
            if self.ts(t).priority.is_none() {
                if let Some(internal) = internal {
                    let neg = match user {
                        Num::Int(i) => Num::Int(-i),
                        Num::Float(f) => Num::Float(-f),
                    };
                    self.ts_mut(t).priority = Some(Priority([neg, generation, Num::Int(internal)]));
                }
            }
        }
    }

    /// `Scheduler.client_desires_keys`, with its reports on keys already done.
    pub fn client_desires_keys(&mut self, keys: &[TaskId], c: ClientId, out: &mut Outbox<P>) {
        let ch = self.chash(c);
        for &t in keys {
            if self.task(t).is_none() {
                continue;
            }
            let th = self.thash(t);
            self.ts_mut(t)
                .who_wants
                .get_or_insert_with(PySet::new)
                .insert(c, ch);
            self.clients[c.idx()].wants_what.insert(t, th);
            if matches!(self.ts(t).state, S::Memory | S::Erred) {
                self.report_on_key(t, Some(c), out);
            }
        }
    }

    /// `Scheduler.report_on_key(ts=ts, client=client)`: `_task_to_report_msg` to the
    /// clients wanting the key, then to `client`. The fire-and-forget client has no comm.
    pub fn report_on_key(&mut self, t: TaskId, client: Option<ClientId>, out: &mut Outbox<P>) {
        let ts = self.ts(t);
        let msg = match ts.state {
            S::Memory => ClientMsg::KeyInMemory {
                key: t,
                type_: None,
                with_type: false,
            },
            S::Erred => {
                let f = self.ts(ts.exception_blame.expect("erred task has a blame"));
                ClientMsg::TaskErred {
                    key: t,
                    exception: f.exception.clone(),
                    traceback: f.traceback.clone(),
                }
            }
            S::Forgotten => ClientMsg::CancelledKeys {
                keys: vec![t],
                reason: Some("already forgotten"),
            },
            _ => return,
        };
        let mut targets: Vec<ClientId> = self
            .wanters(t)
            .into_iter()
            .filter(|c| Some(*c) != client)
            .collect();
        targets.extend(client);
        for c in targets {
            if c != self.fire_and_forget {
                out.to_client(c, msg.clone());
            }
        }
    }

    /// The recommendations of `_create_taskstate_from_graph` after state creation.
    pub fn graph_recommendations(&mut self, keys: &[TaskId], touched: &[TaskId]) -> Recs {
        let mut recs = Recs::new();
        let mut released: Vec<TaskId> = keys
            .iter()
            .copied()
            .filter(|t| self.ts(*t).state == S::Released)
            .collect();
        released.sort_by(|a, b| {
            crate::core::transitions::cmp_opt_prio(&self.ts(*b).priority, &self.ts(*a).priority)
        });
        for t in released {
            recs.insert(t, S::Waiting);
        }
        for &t in touched {
            let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
            for d in deps {
                if let Some(blame) = self.ts(d).exception_blame {
                    self.ts_mut(t).exception_blame = Some(blame);
                    recs.insert(t, S::Erred);
                    break;
                }
            }
        }
        recs
    }

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
            crate::core::transitions::cmp_opt_prio(&self.ts(*b).priority, &self.ts(*a).priority)
        });
        let mut recs = Recs::new();
        for t in runnable {
            recs.insert(t, S::Processing);
        }
        recs
    }

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

    /// State part of `Scheduler.remove_worker`; returns the recommendations it made
    /// before the transitions (already run here).
    pub fn remove_worker(
        &mut self,
        w: WorkerId,
        expected: bool,
        killed_worker_exception: &dyn Fn(&P, i64) -> P,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        let wh = self.whash(w);
        let (address, host, nthreads, memory_limit) = {
            let ws = self.ws(w);
            (
                ws.address.clone(),
                ws.host.clone(),
                ws.nthreads,
                ws.memory_limit,
            )
        };
        // remove_resources
        let res: Vec<u32> = self.ws(w).resources.keys().collect();
        for rid in res {
            if let Some(dr) = self.resources.get_mut(&rid) {
                dr.remove(&w);
            }
        }
        let addr_hash = self.ws(w).addr_hash;
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
        self.idle_remove(w);
        self.idle_task_count_remove(w);
        self.saturated.remove(w, wh);
        self.workers_sorted_remove(w);
        self.worker_by_address.remove(&address);
        self.ws_mut(w).alive = false;
        self.ws_mut(w).status = WorkerStatus::Closed;
        self.running.remove(w, wh);

        let mut recs = Recs::new();
        let processing: Vec<TaskId> = self.ws(w).processing.iter().collect();
        for t in processing {
            recs.insert(t, S::Released);
            if !expected {
                self.ts_mut(t).suspicious += 1;
                let p = self.ts(t).prefix;
                self.prefixes[p.idx()].suspicious += 1;
                if self.ts(t).suspicious > self.config.allowed_failures {
                    recs.remove(&t);
                    let exc =
                        killed_worker_exception(&self.ts(t).key, self.config.allowed_failures);
                    let r = self.transition(
                        t,
                        S::Erred,
                        stimulus_id,
                        TransitionArgs::Erred {
                            worker: Some(address.clone()),
                            cause: Some(t),
                            exception: Some(exc),
                            traceback: None,
                            exception_text: None,
                            traceback_text: None,
                        },
                        out,
                    )?;
                    for (k, v) in r.iter() {
                        recs.insert(*k, *v);
                    }
                }
            }
        }
        let has_what: Vec<TaskId> = self.ws(w).has_what.keys().collect();
        for t in has_what {
            self.remove_replica(t, w);
            let th = self.thash(t);
            if self.ws(w).actors.contains(t, th) {
                recs.insert(t, S::Erred);
            } else if !self.ts(t).has_who_has() {
                if self.ts(t).run_spec.is_some() {
                    recs.insert(t, S::Released);
                } else {
                    recs.insert(t, S::Forgotten);
                }
            }
        }
        self.transitions_loop(recs, out, stimulus_id)?;
        self.steal_remove_worker(w);
        Ok(())
    }

    /// `Scheduler.stimulus_task_finished`
    #[allow(clippy::too_many_arguments)]
    pub fn stimulus_task_finished(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        run_id: i64,
        args: TransitionArgs<P>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
        key_for_unknown: Option<P>,
    ) -> CoreResult<(Recs, StaleReply<P>)> {
        let mut recs = Recs::new();
        let free = StaleReply::FreeKeys(key_for_unknown);
        let Some(t) = t.filter(|t| self.task(*t).is_some()) else {
            return Ok((recs, free));
        };
        let ts = self.ts(t);
        match ts.state {
            S::Released | S::Queued | S::NoWorker | S::Erred => return Ok((recs, free)),
            _ => {}
        }
        if ts.run_id != Some(run_id) {
            let on_worker = ts
                .processing_on
                .is_some_and(|w| self.ws(w).address == worker);
            if !on_worker {
                return Ok((recs, free));
            }
            recs.insert(t, S::Released);
            return Ok((recs, StaleReply::None));
        }
        if ts.state == S::Memory {
            return Ok((recs, StaleReply::AddKeys));
        }
        let r = self.transition(t, S::Memory, stimulus_id, args, out)?;
        Ok((r, StaleReply::None))
    }

    /// `Scheduler.stimulus_task_erred`
    pub fn stimulus_task_erred(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        run_id: i64,
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
        if self.ts(t).run_id != Some(run_id) {
            let on_worker = self
                .ts(t)
                .processing_on
                .is_some_and(|w| self.ws(w).address == worker);
            if on_worker {
                return self.transition(t, S::Released, stimulus_id, TransitionArgs::None, out);
            }
            return Ok(Recs::new());
        }
        if self.ts(t).retries > 0 {
            self.ts_mut(t).retries -= 1;
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

    /// `SchedulerState.add_keys` (state part): the keys that were redundant.
    pub fn add_keys(&mut self, w: WorkerId, keys: &[Option<TaskId>]) -> Vec<usize> {
        let mut redundant = Vec::new();
        for (i, t) in keys.iter().enumerate() {
            match t.filter(|t| self.task(*t).is_some_and(|ts| ts.state == S::Memory)) {
                Some(t) => self.add_replica(t, w),
                None => redundant.push(i),
            }
        }
        redundant
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

    /// `handle_worker_status_change` (state part) for running <-> paused.
    pub fn worker_status_change(
        &mut self,
        w: WorkerId,
        status: WorkerStatus,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        let prev = self.ws(w).status;
        if prev == status {
            return Ok(());
        }
        self.ws_mut(w).status = status;
        let wh = self.whash(w);
        if status == WorkerStatus::Running {
            self.running.insert(w, wh);
            self.check_idle_saturated(w);
            let recs = self.bulk_schedule_unrunnable_after_adding_worker(w);
            self.transitions_then_fill_queue(recs, out, stimulus_id)?;
        } else {
            self.running.remove(w, wh);
            self.idle_remove(w);
            self.idle_task_count_remove(w);
            self.saturated.remove(w, wh);
        }
        Ok(())
    }
}

/// What `stimulus_task_finished` answers besides transitions.
#[derive(Clone, Debug)]
pub enum StaleReply<P> {
    None,
    /// free-keys to the reporting worker (the key, if the scheduler doesn't know it)
    FreeKeys(Option<P>),
    /// the task is already in memory: `add_keys(worker, [key])`
    AddKeys,
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.handle_long_running`
    pub fn handle_long_running(
        &mut self,
        t: Option<TaskId>,
        worker: &str,
        run_id: i64,
        compute_duration: Option<f64>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        if self.worker_id(worker).is_none() {
            return Ok(());
        }
        let Some(t) = t.filter(|t| self.task(*t).is_some()) else {
            return Ok(());
        };
        let Some(w) = self.ts(t).processing_on else {
            return Ok(());
        };
        if self.ws(w).address != worker || self.ts(t).run_id != Some(run_id) {
            return Ok(());
        }
        if let Some(d) = compute_duration {
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
    /// Returns the ids of the keys, in order.
    pub fn update_data(
        &mut self,
        items: Vec<ScatteredKey<P>>,
        client: Option<ClientId>,
        out: &mut Outbox<P>,
    ) -> Vec<TaskId> {
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
        ids
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
