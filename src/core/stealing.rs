//! `distributed.stealing.WorkStealing`, inside the engine.
//!
//! The Python extension is a scheduler plugin: its `transition` hook runs after every
//! single transition, so the buckets are kept here and updated at the same point of
//! `SchedulerState::transition`. Sets whose iteration order decides which task is stolen
//! first (`stealable`, `unknown_durations`, the thieves) are CPython-ordered `PySet`s.

use super::entities::{TaskSet, WorkerSet};
use super::messages::{Outbox, WorkerMsg};
use super::ordered::OrderedMap;
use super::pyset::PySet;
use super::state::{now, Recs, SchedulerState};
use super::stealing_state::*;
use super::types::*;
use std::cmp::Ordering;

/// `stealing.LATENCY`: the conservative cost of a steal's network round trips.
pub const LATENCY: f64 = 0.1;
/// A failed assertion (or lookup) inside the plugin's hook: distributed logs it and
/// skips the rest of that hook, so the engine does too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookFailed;

/// `stealing_objective`: `(len(ws.actors) for actors, start time, ws.nbytes)`.
type StealObjective = (Option<usize>, f64, ByteTotal);

/// `WorkStealing.cost_multipliers`
pub fn cost_multipliers() -> [f64; LEVELS] {
    let mut m = [1.0; LEVELS];
    for (i, v) in m.iter_mut().enumerate().skip(1) {
        *v = 1.0 + 2f64.powi(i as i32 - 6);
    }
    m
}

/// `d[k] += v` on a `defaultdict(int)` (`0 + v`: Python's `0 + -0.0` is `0.0`).
fn add_to<K: Copy + Eq + std::hash::Hash>(map: &mut OrderedMap<K, f64>, k: K, v: f64) {
    match map.get_mut(&k) {
        Some(x) => *x += v,
        None => {
            map.insert(k, 0.0 + v);
        }
    }
}

fn add_count<K: Copy + Eq + std::hash::Hash>(map: &mut OrderedMap<K, i64>, k: K, v: i64) {
    match map.get_mut(&k) {
        Some(x) => *x += v,
        None => {
            map.insert(k, v);
        }
    }
}

/// Python's `round(x)` for a float: halves go to the even integer.
fn py_round(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// A steal response's `state`, as `move_task_confirm` classifies it.
enum Response {
    Confirm,
    Reject,
    Undefined,
}

fn classify(state: Option<&str>) -> Option<Response> {
    Some(match state {
        None | Some("released") => Response::Undefined,
        Some("ready" | "constrained" | "waiting") => Response::Confirm,
        Some("memory" | "executing" | "long-running" | "cancelled" | "resumed") => Response::Reject,
        Some(_) => return None,
    })
}

impl<P: Clone> SchedulerState<P> {
    // ----- workers ------------------------------------------------------------------

    /// The stealing log since the last call, for `log_event("stealing", ...)`.
    pub fn take_steal_events(&mut self) -> Vec<StealEvent<P>> {
        std::mem::take(&mut self.stealing.events)
    }

    /// `WorkStealing.add_worker`
    pub fn steal_add_worker(&mut self, w: WorkerId) {
        if !self.stealing.enabled {
            return;
        }
        let st = &mut self.stealing.stealable;
        if st.len() <= w.idx() {
            st.resize_with(w.idx() + 1, || None);
        }
        st[w.idx()] = Some(Box::new(std::array::from_fn(|_| PySet::new())));
    }

    /// `WorkStealing.remove_worker`
    pub fn steal_remove_worker(&mut self, w: WorkerId) {
        if let Some(slot) = self.stealing.stealable.get_mut(w.idx()) {
            *slot = None;
        }
    }

    /// `WorkStealing.restart`
    pub fn steal_restart(&mut self) {
        for levels in self.stealing.stealable.iter_mut().flatten() {
            for s in levels.iter_mut() {
                s.clear();
            }
        }
        self.stealing.key_stealable.clear();
        self.stealing.unknown_durations.clear();
        let zombies: Vec<TaskId> = self.stealing.zombies.iter().copied().collect();
        self.steal_release_records(zombies);
    }

    // ----- the transition hook ------------------------------------------------------

    /// `WorkStealing.transition`
    pub fn steal_transition(&mut self, t: TaskId, start: TaskStateState, finish: TaskStateState) {
        if !self.stealing.enabled {
            return;
        }
        let _ = self.steal_transition_inner(t, start, finish);
    }

    fn steal_transition_inner(
        &mut self,
        t: TaskId,
        start: TaskStateState,
        finish: TaskStateState,
    ) -> Result<(), HookFailed> {
        if start == TaskStateState::Processing {
            self.remove_key_from_stealable(t);
            self.steal_remove_from_in_flight(t);
            if finish == TaskStateState::Memory {
                let p = self.ts(t).prefix;
                if let Some(s) = self.stealing.unknown_durations.remove(&p) {
                    let mut result = Ok(());
                    for tt in s.iter() {
                        if self.task(tt).is_some_and(|ts| ts.processing_on().is_some()) {
                            result = self.steal_recalculate_cost(tt);
                            if result.is_err() {
                                break;
                            }
                        }
                    }
                    self.steal_release_records(s.iter());
                    result?;
                }
            }
        }
        if finish == TaskStateState::Processing {
            self.put_key_in_stealable(t)?;
        }
        Ok(())
    }

    /// distributed's `unknown_durations` keeps forgotten TaskStates (and skips them
    /// later): a forgotten task still in such a set keeps its record, and its id is not
    /// reused, until the set is dropped.
    pub fn steal_keeps_record(&mut self, t: TaskId) -> bool {
        let Some(ts) = self.tasks[t.idx()].as_ref() else {
            return false;
        };
        let keep = self
            .stealing
            .unknown_durations
            .get(&ts.prefix)
            .is_some_and(|s| s.contains(t, ts.hash));
        if keep {
            self.stealing.zombies.insert(t);
        }
        keep
    }

    fn steal_release_records(&mut self, tasks: impl IntoIterator<Item = TaskId>) {
        for t in tasks {
            if self.stealing.zombies.remove(&t) {
                self.free_task_slot(t);
            }
        }
    }

    fn steal_recalculate_cost(&mut self, t: TaskId) -> Result<(), HookFailed> {
        if !self.stealing.in_flight.contains_key(&t) {
            self.remove_key_from_stealable(t);
            self.put_key_in_stealable(t)?;
        }
        Ok(())
    }

    /// `WorkStealing.put_key_in_stealable`
    pub fn put_key_in_stealable(&mut self, t: TaskId) -> Result<(), HookFailed> {
        let Some((_, level)) = self.steal_time_ratio(t)? else {
            return Ok(());
        };
        let p = self.ts(t).prefix;
        let duration = self.prefix_duration(p);
        let w = self.ts(t).processing_on().ok_or(HookFailed)?;
        let th = self.thash(t);
        if let Some(Some(levels)) = self.stealing.stealable.get_mut(w.idx()) {
            levels[level].insert(t, th);
        } else {
            // `self.stealable[worker]`: KeyError, swallowed with the hook.
            return Err(HookFailed);
        }
        self.stealing.key_stealable.insert(t, (w, level));
        if duration == self.prefixes[p.idx()].duration_average {
            return Ok(());
        }
        match self.stealing.unknown_durations.get_mut(&p) {
            Some(s) => {
                s.insert(t, th);
            }
            None => {
                let mut s = PySet::new();
                s.insert(t, th);
                self.stealing.unknown_durations.insert(p, s);
            }
        }
        Ok(())
    }

    /// `WorkStealing.remove_key_from_stealable`
    pub fn remove_key_from_stealable(&mut self, t: TaskId) {
        if let Some((w, level)) = self.stealing.key_stealable.remove(&t) {
            let th = self.thash(t);
            if let Some(Some(levels)) = self.stealing.stealable.get_mut(w.idx()) {
                levels[level].remove(t, th);
            }
        }
    }

    /// `WorkStealing.steal_time_ratio`: `(cost_multiplier, level)`, or `None` when the
    /// task is not stealable.
    pub fn steal_time_ratio(&self, t: TaskId) -> Result<Option<(f64, usize)>, HookFailed> {
        let ts = self.ts(t);
        let name = &self.prefixes[ts.prefix.idx()].name;
        if self
            .config
            .default_task_durations
            .get(name)
            .is_some_and(|d| *d <= 0.001)
        {
            return Ok(None);
        }
        if ts.dependencies.is_empty() {
            return Ok(Some((0.0, 0)));
        }
        let compute_time = self.prefix_duration(ts.prefix);
        if compute_time == 0.0 {
            // Only long-running tasks may cost nothing; distributed asserts it.
            let w = ts.processing_on().ok_or(HookFailed)?;
            if !self.ws(w).long_running.contains(t, self.thash(t)) {
                return Err(HookFailed);
            }
            return Ok(None);
        }
        let nbytes: ByteTotal = ts
            .dependencies
            .iter()
            .map(|d| ByteTotal::from(self.ts(d).get_nbytes()))
            .sum();
        let transfer_time = nbytes as f64 / self.config.bandwidth + LATENCY;
        let cost_multiplier = transfer_time / compute_time;
        let level = py_round(cost_multiplier.log2() + 6.0);
        if level < 1 {
            Ok(Some((cost_multiplier, 1)))
        } else if level >= LEVELS as i64 {
            Ok(None)
        } else {
            Ok(Some((cost_multiplier, level as usize)))
        }
    }

    // ----- in flight ----------------------------------------------------------------

    fn steal_add_to_in_flight(&mut self, t: TaskId, info: InFlight) {
        let st = &mut self.stealing;
        add_to(
            &mut st.in_flight_occupancy,
            info.victim,
            -info.victim_duration,
        );
        add_to(&mut st.in_flight_occupancy, info.thief, info.thief_duration);
        add_count(&mut st.in_flight_tasks, info.victim, -1);
        add_count(&mut st.in_flight_tasks, info.thief, 1);
        st.in_flight.insert(t, info);
    }

    fn steal_remove_from_in_flight(&mut self, t: TaskId) -> Option<InFlight> {
        let st = &mut self.stealing;
        let info = st.in_flight.remove(&t)?;
        add_to(
            &mut st.in_flight_occupancy,
            info.thief,
            -info.thief_duration,
        );
        add_to(
            &mut st.in_flight_occupancy,
            info.victim,
            info.victim_duration,
        );
        add_count(&mut st.in_flight_tasks, info.victim, 1);
        add_count(&mut st.in_flight_tasks, info.thief, -1);
        if st.in_flight.is_empty() {
            st.in_flight_occupancy.clear();
        }
        Some(info)
    }

    fn combined_occupancy(&self, occupancies: &[f64], w: WorkerId) -> f64 {
        occupancies[w.idx()]
            + self
                .stealing
                .in_flight_occupancy
                .get(&w)
                .copied()
                .unwrap_or(0.0)
    }

    fn combined_nprocessing(&self, w: WorkerId) -> i64 {
        self.ws(w).processing.len() as i64
            + self.stealing.in_flight_tasks.get(&w).copied().unwrap_or(0)
    }

    // ----- requests and responses -----------------------------------------------------

    /// `WorkStealing.move_task_request`: the request's stimulus id, or "in-flight".
    pub fn move_task_request(
        &mut self,
        t: TaskId,
        victim: WorkerId,
        thief: WorkerId,
        out: &mut Outbox<P>,
    ) -> String {
        if self.stealing.in_flight.contains_key(&t) {
            return "in-flight".to_string();
        }
        let stimulus_id = format!("steal-{}", self.stealing.request_counter);
        self.stealing.request_counter += 1;
        self.remove_key_from_stealable(t);
        let compute = self.prefix_duration(self.ts(t).prefix);
        let victim_duration = compute + self.get_comm_cost(t, victim);
        let thief_duration = compute + self.get_comm_cost(t, thief);
        out.to_worker(
            victim,
            WorkerMsg::StealRequest {
                task: t,
                stimulus_id: stimulus_id.clone(),
            },
        );
        self.steal_add_to_in_flight(
            t,
            InFlight {
                victim,
                thief,
                victim_duration,
                thief_duration,
                stimulus_id: stimulus_id.clone(),
            },
        );
        stimulus_id
    }

    /// `WorkStealing.move_task_confirm` (the `steal-response` stream handler).
    pub fn move_task_confirm(
        &mut self,
        t: Option<TaskId>,
        state: Option<&str>,
        stimulus_id: &str,
        worker: Option<&str>,
        sid: &P,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let Some(t) = t.filter(|t| self.task(*t).is_some()) else {
            return Ok(());
        };
        let key = self.ts(t).key.clone();
        let dropped = match self.stealing.in_flight.get(&t) {
            None => Some("already-aborted"),
            Some(info) if info.stimulus_id != stimulus_id => Some("stale-response"),
            Some(_) => None,
        };
        if let Some(kind) = dropped {
            self.stealing.events.push(StealEvent::Dropped {
                kind,
                key,
                state: state.map(str::to_string),
                worker: worker.map(str::to_string),
                stimulus_id: stimulus_id.to_string(),
            });
            return Ok(());
        }
        let info = self
            .steal_remove_from_in_flight(t)
            .expect("in flight: checked above");
        let (thief, victim) = (info.thief, info.victim);
        if self.ts(t).processing_on() != Some(victim) {
            return Err(CoreError::Validation(
                "assertion failed: ts.processing_on() == victim".into(),
            ));
        }
        let result = self.steal_confirm_move(t, key, state, &info, sid, out);
        self.check_idle_saturated(thief);
        self.check_idle_saturated(victim);
        result
    }

    fn steal_confirm_move(
        &mut self,
        t: TaskId,
        key: P,
        state: Option<&str>,
        info: &InFlight,
        sid: &P,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let (thief, victim) = (info.thief, info.victim);
        let Some(kind) = classify(state) else {
            return Err(CoreError::Invalid(format!(
                "Unexpected task state: {}",
                state.unwrap_or("None")
            )));
        };
        let thief_current = self.is_current_worker(thief);
        let event = |kind: &'static str, thief_gone: Option<bool>| StealEvent::Move {
            kind,
            thief_gone,
            key: key.clone(),
            state: state.map(str::to_string),
            victim: self.ws(victim).address.clone(),
            thief: self.ws(thief).address.clone(),
            stimulus_id: info.stimulus_id.clone(),
        };
        match kind {
            Response::Undefined | Response::Confirm
                if matches!(kind, Response::Undefined) || !thief_current =>
            {
                let gone = self.worker_id(&self.ws(thief).address).is_none();
                let ev = event("reschedule", Some(gone));
                self.stealing.events.push(ev);
                // Scheduler._reschedule(key)
                if self.ts(t).state == TaskStateState::Processing {
                    let mut recs = Recs::new();
                    recs.insert(t, TaskStateState::Released);
                    self.transitions_loop(recs, out, sid)?;
                }
            }
            Response::Reject => {
                let ev = event("already-computing", None);
                self.stealing.events.push(ev);
            }
            _ => {
                let ev = event("confirm", None);
                self.remove_key_from_stealable(t);
                self.ts_mut(t).set_processing_on(Some(thief));
                self.ws_remove_from_processing(victim, t);
                self.ws_add_to_processing(thief, t);
                // distributed lets this assertion propagate: no compute-task, no log
                self.put_key_in_stealable(t).map_err(|_| {
                    CoreError::Validation("assertion failed: stealable task".into())
                })?;
                self.send_task_to_worker(thief, t, out)?;
                self.stealing.events.push(ev);
            }
        }
        Ok(())
    }

    // ----- balance --------------------------------------------------------------------

    /// `WorkStealing.balance`, run by the periodic callback.
    pub fn steal_balance(&mut self, out: &mut Outbox<P>) {
        if !self.stealing.enabled {
            return;
        }
        let start = now();
        let mut occupancies = vec![0.0; self.workers.len()];
        for &w in &self.workers_sorted {
            occupancies[w.idx()] = self.occupancy(w);
        }
        // set(s.idle.values()): paused and closing workers never become thieves.
        let mut thieves: WorkerSet = PySet::new();
        for &w in &self.idle {
            thieves.insert(w, self.whash(w));
        }
        if thieves.is_empty() || thieves.len() == self.workers_sorted.len() {
            return;
        }
        // A list, or (20 saturated workers or more) the live `saturated` set.
        let victims: Option<Vec<WorkerId>> = if !self.saturated.is_empty() {
            (self.saturated.len() < 20).then(|| {
                let v: Vec<WorkerId> = self.saturated.iter().collect();
                self.sorted_by_occupancy(v, &occupancies)
            })
        } else {
            let all = self.sorted_by_occupancy(self.workers_sorted.clone(), &occupancies);
            let v: Vec<WorkerId> = all
                .into_iter()
                .take(10)
                .filter(|&w| {
                    self.combined_occupancy(&occupancies, w) > 0.2
                        && self.combined_nprocessing(w) > self.ws(w).nthreads
                        && !thieves.contains(w, self.whash(w))
                })
                .collect();
            if v.is_empty() {
                return;
            }
            Some(self.sorted_by_occupancy(v, &occupancies))
        };
        let mut log = Vec::new();
        for level in 0..LEVELS {
            if thieves.is_empty() {
                break;
            }
            let round: Vec<WorkerId> = match &victims {
                Some(v) => v.clone(),
                None => self.saturated.iter().collect(),
            };
            for victim in round {
                let nonempty = self
                    .stealing
                    .stealable
                    .get(victim.idx())
                    .and_then(|s| s.as_ref())
                    .is_some_and(|s| !s[level].is_empty());
                if !nonempty || thieves.is_empty() {
                    continue;
                }
                let tasks: Vec<TaskId> = self.bucket(victim, level).iter().collect();
                for t in tasks {
                    if thieves.is_empty() {
                        break;
                    }
                    let th = self.thash(t);
                    if !self.stealing.key_stealable.contains_key(&t)
                        || self.ts(t).processing_on() != Some(victim)
                        || !self.ws(victim).processing.contains(t, th)
                    {
                        self.bucket_mut(victim, level).remove(t, th);
                        continue;
                    }
                    let Some(thief) = self.get_thief(t, &thieves, &occupancies) else {
                        continue;
                    };
                    let occ_thief = self.combined_occupancy(&occupancies, thief);
                    let occ_victim = self.combined_occupancy(&occupancies, victim);
                    let comm_cost_thief = self.get_comm_cost(t, thief);
                    let comm_cost_victim = self.get_comm_cost(t, victim);
                    let compute = self.prefix_duration(self.ts(t).prefix);
                    if occ_thief + comm_cost_thief + compute
                        <= occ_victim - (comm_cost_victim + compute) / 2.0
                    {
                        self.move_task_request(t, victim, thief, out);
                        let cost = compute + comm_cost_victim;
                        log.push(StealRequestLog {
                            start,
                            level,
                            key: self.ts(t).key.clone(),
                            cost,
                            victim: self.ws(victim).address.clone(),
                            occ_victim,
                            thief: self.ws(thief).address.clone(),
                            occ_thief,
                        });
                        let st = &mut self.stealing;
                        add_count(&mut st.request_count_total, level, 1);
                        add_to(&mut st.request_cost_total, level, cost);
                        let occ_thief = self.combined_occupancy(&occupancies, thief);
                        let nproc_thief = self.combined_nprocessing(thief);
                        if !self.is_unoccupied(thief, occ_thief, nproc_thief) {
                            thieves.remove(thief, self.whash(thief));
                        }
                        self.bucket_mut(victim, level).remove(t, th);
                    }
                }
                let occ = self.combined_occupancy(&occupancies, victim);
                self.check_idle_saturated_occ(victim, Some(occ));
            }
        }
        if !log.is_empty() {
            self.stealing.events.push(StealEvent::Request(log));
            self.stealing.count += 1;
        }
    }

    fn bucket(&self, w: WorkerId, level: usize) -> &TaskSet {
        &self.stealing.stealable[w.idx()]
            .as_ref()
            .expect("stealable victim")[level]
    }

    fn bucket_mut(&mut self, w: WorkerId, level: usize) -> &mut TaskSet {
        &mut self.stealing.stealable[w.idx()]
            .as_mut()
            .expect("stealable victim")[level]
    }

    /// `sorted(workers, key=combined_occupancy, reverse=True)` (stable; also `topk`).
    fn sorted_by_occupancy(&self, mut v: Vec<WorkerId>, occupancies: &[f64]) -> Vec<WorkerId> {
        // Python's reverse sort keeps equal elements in their original order.
        v.sort_by(|a, b| {
            let (oa, ob) = (
                self.combined_occupancy(occupancies, *a),
                self.combined_occupancy(occupancies, *b),
            );
            ob.partial_cmp(&oa).unwrap_or(Ordering::Equal)
        });
        v
    }

    /// `WorkStealing._get_thief`
    fn get_thief(
        &mut self,
        t: TaskId,
        thieves: &WorkerSet,
        occupancies: &[f64],
    ) -> Option<WorkerId> {
        // `min()` walks the thieves set itself: a copy could iterate differently.
        let valid = self.valid_workers(t);
        let both: WorkerSet;
        let pool: &WorkerSet = match valid {
            Some(valid) => {
                both = thieves.intersection(&valid);
                if !both.is_empty() {
                    &both
                } else if !self.ts(t).loose_restrictions() {
                    return None;
                } else {
                    thieves
                }
            }
            None => thieves,
        };
        let mut best: Option<(WorkerId, StealObjective)> = None;
        for w in pool.iter() {
            let ws = self.ws(w);
            let occ = self.combined_occupancy(occupancies, w) / ws.nthreads as f64
                + self.get_comm_cost(t, w);
            let key = (self.ts(t).actor.then(|| ws.actors.len()), occ, ws.nbytes);
            let less = match &best {
                None => true,
                Some((_, b)) => objective_less(&key, b),
            };
            if less {
                best = Some((w, key));
            }
        }
        best.map(|(w, _)| w)
    }

    /// `Scheduler.send_task_to_worker`
    pub fn send_task_to_worker(
        &mut self,
        w: WorkerId,
        t: TaskId,
        out: &mut Outbox<P>,
    ) -> CoreResult<()> {
        let msg = self.task_to_msg(t)?;
        out.to_worker(w, msg);
        Ok(())
    }
}

/// Tuple comparison of `stealing_objective` values.
fn objective_less(a: &StealObjective, b: &StealObjective) -> bool {
    if let (Some(x), Some(y)) = (a.0, b.0) {
        if x != y {
            return x < y;
        }
    }
    match a.1.partial_cmp(&b.1) {
        Some(Ordering::Less) => true,
        Some(Ordering::Greater) => false,
        _ => a.2 < b.2,
    }
}

/// A failed assertion in a stealing hook, called from outside the hook (the Python face's
/// `put_key_in_stealable`, `steal_time_ratio`): an `AssertionError`, as distributed's.
impl From<HookFailed> for CoreError {
    fn from(_: HookFailed) -> Self {
        CoreError::Validation("assertion failed in WorkStealing (a task without compute time must be long-running, a stealable task must be processing)".into())
    }
}
