//! Graph submission: `_generate_taskstates`, `_set_priorities` and the recommendations
//! of `_create_taskstate_from_graph`.

use crate::core::messages::Outbox;
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;
use std::rc::Rc;
use std::time::Instant;

/// The transitions of a large submission that continue in later calls, so that the
/// event loop runs between them (`Engine.update_graph`'s `budget`). Other stimuli may
/// run in between, as they may after a submission: each recommendation is a state to
/// reach from whatever state the task is in by then, and one whose task was forgotten
/// meanwhile is dropped, as distributed drops a recommendation for a key it no longer
/// has.
#[derive(Debug)]
pub struct PendingGraph<P> {
    recs: Recs,
    touched: Vec<TaskId>,
    client: ClientId,
    pub stimulus_id: P,
    /// Slots of tasks forgotten meanwhile, not reused while `recs` may name them.
    pub(super) held: Vec<TaskId>,
}

/// How many entries ahead of the walk their memory is fetched.
pub(crate) const AHEAD: usize = 16;

/// Asks the CPU to bring `p`'s cache line in; never faults, whatever `p` is.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing and faults on no address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `prefetch` of `items[i]`, both cache lines of a large one.
#[inline(always)]
pub(crate) fn prefetch_slot<T>(items: &[T], i: usize) {
    let p = items.as_ptr().wrapping_add(i).cast::<u8>();
    prefetch(p);
    if std::mem::size_of::<T>() > 64 {
        prefetch(p.wrapping_add(64));
    }
}

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
    /// Taken by the task created for it.
    pub key: Option<P>,
    pub hash: i64,
    /// Shared by the entries of one group.
    pub group: Rc<str>,
    pub prefix: Rc<str>,
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
    /// The graph entry of each touched task (`None`: an existing task not in it).
    pub touched_entries: Vec<Option<u32>>,
    pub new: Vec<TaskId>,
    pub colliding_task_count: usize,
    /// Existing tasks whose submitted run_spec has other dependencies, in the order
    /// found (distributed warns once per group, in this order).
    pub collisions: Vec<TaskId>,
    /// TaskId of each graph entry (after creation).
    pub graph_ids: Vec<Option<TaskId>>,
}

/// `_find_lost_dependencies`: the first entry reachable from `keys` that is neither in
/// the submitted graph nor a known task (an entry only named, with no task), walked as
/// distributed walks it.
pub fn first_lost_dependency<P>(keys: &[KeyRef], graph: &[GraphTask<P>]) -> Option<usize> {
    // only an entry named, with no task, can be lost: without one, no walk (a read in
    // memory order, where the walk would miss the cache at each entry)
    if graph.iter().all(|g| g.in_dsk || g.existing.is_some()) {
        return None;
    }
    let mut seen = vec![false; graph.len()];
    let mut work: Vec<KeyRef> = keys.to_vec();
    while let Some(k) = work.pop() {
        let KeyRef::Graph(i) = k else { continue };
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        let g = &graph[i];
        if !g.in_dsk {
            return Some(i);
        }
        if g.run_spec.is_some() {
            work.extend(g.dependencies.iter().copied());
        }
    }
    None
}

impl GeneratedTasks {
    /// The tasks of the wanted keys, in their order.
    pub fn key_ids(&self, keys: &[KeyRef]) -> Vec<TaskId> {
        keys.iter()
            .map(|r| match r {
                KeyRef::Graph(i) => self.graph_ids[*i].expect("created"),
                KeyRef::Existing(t) => *t,
            })
            .collect()
    }
}

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler._generate_taskstates`. `keys` in `set(keys)` iteration order. The
    /// tasks take their keys and run_specs from `dsk` (moved, not copied: that is a
    /// reference count on a cold object each). `visit`: the entries in the order this
    /// walk will reach them, if known (`creation_walk` in the order's thread), only to
    /// fetch the entries ahead from memory: a large graph's dict order (a culled graph's
    /// is a set's) is not the walk's, and each entry would be a cache miss.
    pub fn generate_taskstates(
        &mut self,
        keys: &[KeyRef],
        dsk: &mut [GraphTask<P>],
        visit: &[u32],
    ) -> CoreResult<GeneratedTasks> {
        self.reserve_tasks(dsk.len());
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
        // a group's entries share their name: its id is looked up once per run of them
        let mut last_group: Option<(Rc<str>, GroupId)> = None;
        let mut reached = 0;
        while let Some(k) = stack.pop() {
            match k {
                KeyRef::Existing(t) => {
                    if !touched_existing.insert(t) {
                        continue;
                    }
                    out.touched.push(t);
                    out.touched_entries.push(None);
                }
                KeyRef::Graph(i) => {
                    if touched_graph[i] {
                        continue;
                    }
                    if let Some(&j) = visit.get(reached + AHEAD) {
                        prefetch_slot(dsk, j as usize);
                        prefetch_slot(&out.graph_ids, j as usize);
                        prefetch_slot(&touched_graph, j as usize);
                    }
                    if let Some(g) = visit
                        .get(reached + AHEAD / 2)
                        .and_then(|&j| dsk.get(j as usize))
                    {
                        prefetch(g.dependencies.as_ptr());
                    }
                    reached += 1;
                    let g = &mut dsk[i];
                    let submitted_spec = g.run_spec.is_some();
                    let t = match out.graph_ids[i] {
                        None => {
                            let group = match &last_group {
                                Some((name, id)) if Rc::ptr_eq(name, &g.group) => *id,
                                _ => {
                                    let id = self.group_id(&g.group, &g.prefix);
                                    last_group = Some((g.group.clone(), id));
                                    id
                                }
                            };
                            let t = self.new_task_in(
                                g.key.take().ok_or_else(|| {
                                    CoreError::Invalid("graph entry without its key".into())
                                })?,
                                g.hash,
                                group,
                                g.run_spec.take(),
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
                                ts.run_spec = g.run_spec.take();
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
                    out.touched_entries.push(Some(i as u32));
                    if submitted_spec {
                        stack.extend(g.dependencies.iter().copied());
                    }
                }
            }
        }
        let graph_id = |ids: &[Option<TaskId>], d: &KeyRef| match d {
            KeyRef::Existing(x) => Some(*x),
            KeyRef::Graph(j) => ids[*j],
        };
        for (i, g) in dsk.iter().enumerate() {
            // the tasks are in the walk's order, the entries in the dict's: the records
            // of the entries ahead are fetched from memory now
            if let Some(ahead) = dsk.get(i + AHEAD) {
                for d in &ahead.dependencies {
                    if let KeyRef::Graph(j) = d {
                        prefetch_slot(&out.graph_ids, *j);
                    }
                }
            }
            if let Some(near) = dsk.get(i + AHEAD / 2) {
                let ids = &out.graph_ids;
                if let Some(t) = ids[i + AHEAD / 2] {
                    self.prefetch_edges(t);
                }
                for d in &near.dependencies {
                    if let Some(dt) = graph_id(ids, d) {
                        self.prefetch_edges(dt);
                    }
                }
            }
            let Some(t) = out.graph_ids[i] else { continue };
            if collisions[i] || !g.in_dsk {
                continue;
            }
            for d in &g.dependencies {
                let dt = graph_id(&out.graph_ids, d);
                // `self.tasks[dep]` raises KeyError for a dependency never created
                let dt = dt.ok_or_else(|| CoreError::UnknownKey(format!("dependency {d:?}")))?;
                self.add_dependency(t, dt);
            }
        }
        Ok(out)
    }

    /// Fetches into the cache what `add_dependency` reads and writes of task `t`.
    /// Computed from the slot's address, without reading it (a read would wait for
    /// the memory); a niche-optimised `Option` holds the record at its start.
    fn prefetch_edges(&self, t: TaskId) {
        use crate::core::entities::Task;
        let slot = self.tasks.as_ptr().wrapping_add(t.idx()).cast::<u8>();
        prefetch(slot.wrapping_add(std::mem::offset_of!(Task<P>, dependencies)));
        prefetch(slot.wrapping_add(std::mem::offset_of!(Task<P>, dependents)));
        // and whatever line tells `Some` from `None`
        prefetch(slot.wrapping_add(std::mem::size_of::<Option<Task<P>>>() - 1));
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
                Some(p) => Num::Float(p.get(0).as_f64() - 0.01),
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
                        // -(-2**63) does not fit: Python's unbounded int, as a float
                        Num::Int(i) => i.checked_neg().map_or(Num::Float(-(i as f64)), Num::Int),
                        Num::Float(f) => Num::Float(-f),
                    };
                    self.ts_mut(t).priority =
                        Some(Priority::new([neg, generation, Num::Int(internal)]));
                }
            }
        }
    }

    /// The recommendations of `_create_taskstate_from_graph` after state creation.
    pub fn graph_recommendations(&mut self, keys: &[TaskId], generated: &GeneratedTasks) -> Recs {
        let touched = &generated.touched;
        let mut recs = Recs::new();
        let mut released: Vec<TaskId> = keys
            .iter()
            .copied()
            .filter(|t| self.ts(*t).state == S::Released)
            .collect();
        released.sort_by(|a, b| {
            crate::core::types::cmp_opt_prio(&self.ts(*b).priority, &self.ts(*a).priority)
        });
        for t in released {
            recs.insert(t, S::Waiting);
        }
        if generated.new.len() == touched.len() {
            // every touched task is new, and so is each of their dependencies (touched
            // too): none has an exception to blame
            return recs;
        }
        for &t in touched {
            let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
            for d in deps {
                if let Some(blame) = self.ts(d).exception_blame() {
                    self.ts_mut(t).rare_mut().exception_blame = Some(blame);
                    recs.insert(t, S::Erred);
                    break;
                }
            }
        }
        recs
    }

    /// `_create_taskstate_from_graph`'s last steps: the transitions of `recs`, then a
    /// report to `client` of each touched task already done. With a `deadline`, what is
    /// left once it has passed becomes the pending graph (`continue_graph` goes on with
    /// it); true when the graph's transitions are all done. A graph still pending
    /// from before is finished first: graphs transition in the order they came.
    #[allow(clippy::too_many_arguments)]
    pub fn graph_transitions(
        &mut self,
        recs: Recs,
        touched: Vec<TaskId>,
        client: ClientId,
        deadline: Option<Instant>,
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<bool> {
        self.finish_pending_graph(out)?;
        self.pending_graph = Some(PendingGraph {
            recs,
            touched,
            client,
            stimulus_id: stimulus_id.clone(),
            held: Vec::new(),
        });
        self.continue_graph(deadline, out)
    }

    /// The pending graph's stimulus id, if a graph is pending.
    pub fn pending_graph_stimulus(&self) -> Option<&P> {
        self.pending_graph.as_ref().map(|p| &p.stimulus_id)
    }

    /// Runs the pending graph's transitions until `deadline`; true when they are all
    /// done (or none was pending).
    pub fn continue_graph(
        &mut self,
        deadline: Option<Instant>,
        out: &mut Outbox<P>,
    ) -> CoreResult<bool> {
        let Some(pending) = self.pending_graph.as_mut() else {
            return Ok(true);
        };
        let recs = std::mem::take(&mut pending.recs);
        let sid = pending.stimulus_id.clone();
        let left = self.transitions_until(recs, out, &sid, deadline);
        let pending = self.pending_graph.as_mut().expect("still pending");
        match left {
            Ok(Some(recs)) => {
                pending.recs = recs;
                return Ok(false);
            }
            Ok(None) => {}
            // a failing transition ends the graph's transitions, as it ends distributed's
            Err(e) => {
                self.drop_pending_graph();
                return Err(e);
            }
        }
        let PendingGraph {
            touched,
            client,
            held,
            ..
        } = self.pending_graph.take().expect("still pending");
        // a client gone meanwhile is left out, as distributed's `report` finds no comm
        let client = self.clients[client.idx()].alive.then_some(client);
        for t in touched {
            if self
                .task(t)
                .is_some_and(|ts| matches!(ts.state, S::Memory | S::Erred))
            {
                self.report_on_key(t, client, out);
            }
        }
        self.free_held(held);
        Ok(true)
    }

    /// Runs whatever is pending to its end.
    pub fn finish_pending_graph(&mut self, out: &mut Outbox<P>) -> CoreResult<()> {
        self.continue_graph(None, out).map(|_| ())
    }

    /// Ends the pending graph; the slots it held are free again.
    fn drop_pending_graph(&mut self) {
        if let Some(pending) = self.pending_graph.take() {
            self.free_held(pending.held);
        }
    }

    fn free_held(&mut self, held: Vec<TaskId>) {
        for t in held {
            self.free_task_slot(t);
        }
    }

    /// Takes back a submission that failed before its transitions (a bad annotation):
    /// the tasks it created are forgotten, so nothing of it is left behind.
    pub fn discard_new_tasks(
        &mut self,
        new: &[TaskId],
        out: &mut Outbox<P>,
        stimulus_id: &P,
    ) -> CoreResult<()> {
        let mut recs = Recs::new();
        for &t in new {
            let ts = self.ts(t);
            if ts.dependents.is_empty() && !ts.has_who_wants() && ts.state == S::Released {
                recs.insert(t, S::Forgotten);
            }
        }
        self.transitions_loop(recs, out, stimulus_id)
    }
}
