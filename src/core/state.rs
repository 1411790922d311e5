//! `SchedulerState`: the arenas, the scheduler-wide containers, the configuration and the
//! bookkeeping helpers shared by transitions and stimuli (replicas, processing, occupancy,
//! idle/saturated tracking).

use crate::core::entities::*;
use crate::core::heapset::HeapSet;
use crate::core::keys::KeyTable;
use crate::core::ordered::OrderedMap;
use crate::core::pyset::PySet;
use crate::core::types::*;
use hashbrown::HashMap;
use smallvec::SmallVec;
use std::collections::VecDeque;

/// Scheduler configuration read from dask config by the binding.
#[derive(Clone, Debug)]
pub struct Config {
    pub bandwidth: f64,
    pub worker_saturation: f64,
    pub unknown_task_duration: f64,
    pub rootish_tg_threshold: i64,
    pub rootish_tg_dependencies_threshold: i64,
    pub allowed_failures: i64,
    pub validate: bool,
    pub transition_log_maxlen: usize,
    pub erred_tasks_maxlen: usize,
    pub default_task_durations: HashMap<String, f64>,
    pub memory_terminate: bool,
    /// `transition_counter_max` (0: off): a transition beyond it fails, as distributed's
    /// assertion does in tests.
    pub transition_counter_max: i64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bandwidth: 100_000_000.0,
            worker_saturation: 1.1,
            unknown_task_duration: 0.5,
            rootish_tg_threshold: 5,
            rootish_tg_dependencies_threshold: 5,
            allowed_failures: 3,
            validate: false,
            transition_log_maxlen: 100_000,
            erred_tasks_maxlen: 100,
            default_task_durations: HashMap::new(),
            memory_terminate: true,
            transition_counter_max: 0,
        }
    }
}

pub type Recs = OrderedMap<TaskId, TaskStateState>;

/// A transition as `SchedulerPlugin.transition` is told of it.
pub struct ObservedTransition<'a, P> {
    pub task: TaskId,
    pub key: &'a P,
    pub start: TaskStateState,
    pub finish: TaskStateState,
    pub stimulus_id: &'a P,
    /// The stimulus' own fields (`**kwargs` of `_transition`) for the transition the
    /// stimulus asked for; `None` for the transitions it led to.
    pub fields: Option<P>,
}

/// The transition a stimulus asks for, and the fields plugins get with it.
pub struct OwnTransition<P> {
    pub task: TaskId,
    pub finish: TaskStateState,
    pub fields: P,
}

/// Who `_transition` tells of each transition, right after it (before the next).
pub struct TransitionObserver<P> {
    /// Gets the state itself: the observer may read and change it, as plugins do.
    pub notify: fn(&mut SchedulerState<P>, &ObservedTransition<'_, P>),
    /// Only transitions into these states (bits by `TaskStateState::index`).
    pub finishes: u32,
    /// The observer's own data.
    pub data: P,
}

#[derive(Clone, Debug)]
pub struct TransitionLogEntry<P> {
    pub key: P,
    pub start: TaskStateState,
    pub finish: TaskStateState,
    pub recommendations: SmallVec<[(P, TaskStateState); 2]>,
    pub stimulus_id: P,
    pub timestamp: f64,
}

#[derive(Clone, Debug)]
pub struct ErredTaskRecord<P> {
    pub key: P,
    pub timestamp: f64,
    pub erred_on: Vec<String>,
    pub exception_text: Option<P>,
    pub traceback_text: Option<P>,
}

#[derive(Clone, Debug, Default)]
pub struct HostInfo {
    /// A set of addresses in Python: worker ids hashed like their address.
    pub addresses: PySet<WorkerId>,
    pub nthreads: i64,
}

/// String interner for the small vocabularies (type names, actions, resource names).
#[derive(Clone, Debug, Default)]
pub struct Interner {
    ids: HashMap<String, u32>,
    pub names: Vec<String>,
}

impl Interner {
    pub fn intern(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.ids.get(s) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(s.to_owned());
        self.ids.insert(s.to_owned(), i);
        i
    }

    pub fn get(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    pub fn name(&self, i: u32) -> &str {
        &self.names[i as usize]
    }
}

pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `time.monotonic()`: CLOCK_MONOTONIC, the clock `unrunnable` timestamps are read against.
pub fn monotonic() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the provided timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The key hash of task `t`, by which the key table places it (only live tasks are in
/// it, so the record is there).
fn key_hash<P>(tasks: &[Option<Task<P>>], t: TaskId) -> i64 {
    tasks[t.idx()].as_ref().map_or(0, |ts| ts.hash)
}

pub struct SchedulerState<P> {
    pub(super) config: Config,
    pub(super) tasks: Vec<Option<Task<P>>>,
    pub(super) n_live_tasks: usize,
    /// The live tasks by key, in creation order.
    pub(super) keys: KeyTable,
    free_tasks: Vec<TaskId>,
    /// Tasks forgotten during the current batch: freed at `flush`, so messages of the
    /// batch can still name them.
    pub(super) pending_free: Vec<TaskId>,
    /// A large submission whose transitions continue in later calls (`graph.rs`).
    pub(super) pending_graph: Option<crate::core::graph::PendingGraph<P>>,
    /// Groups that died since the bindings last looked (their handles are dropped).
    pub(super) dead_groups: Vec<GroupId>,
    /// The live groups in creation order (`task_groups`' order).
    pub(super) alive_groups: OrderedMap<GroupId, ()>,
    /// Dead groups something outside the core still held when they died (see
    /// `settle_dead_groups`), and how many make it look at them again.
    pub(super) pinned_groups: Vec<GroupId>,
    pub(super) pinned_recheck_at: usize,
    /// Slots of dead groups nothing refers to any more, for new groups.
    pub(super) free_groups: Vec<GroupId>,
    pub(super) workers: Vec<Worker>,
    pub(super) worker_by_address: HashMap<String, WorkerId>,
    /// `workers` is a SortedDict by address.
    pub(super) workers_sorted: Vec<WorkerId>,
    pub(super) running: PySet<WorkerId>,
    /// `idle` is a SortedDict by address.
    pub(super) idle: Vec<WorkerId>,
    pub(super) idle_task_count: PySet<WorkerId>,
    pub(super) saturated: PySet<WorkerId>,
    pub(super) clients: Vec<Client<P>>,
    pub(super) fire_and_forget: ClientId,
    pub(super) groups: Vec<TaskGroup<P>>,
    pub(super) group_by_name: HashMap<String, GroupId>,
    pub(super) prefixes: Vec<TaskPrefix>,
    pub(super) prefix_by_name: HashMap<String, PrefixId>,
    pub(super) queued: HeapSet,
    pub(super) unrunnable: OrderedMap<TaskId, f64>,
    pub(super) replicated_tasks: PySet<TaskId>,
    pub(super) host_info: HashMap<String, HostInfo>,
    /// resource name -> {worker address: supplied}
    pub resources: OrderedMap<u32, OrderedMap<WorkerId, f64>>,
    pub strings: Interner,
    pub total_nthreads: i64,
    pub total_memory: i64,
    pub n_tasks: i64,
    pub transition_counter: i64,
    /// (task, start, finish) of every `transition` that failed, innermost first, for
    /// distributed's "Error transitioning" log and `scheduler-transition-failed` event.
    pub failed_transitions: Vec<(TaskId, TaskStateState, TaskStateState)>,
    /// Forgotten tasks whose edges were put back for plugins (cleared before their
    /// slots are freed).
    pub restored_edges: Vec<TaskId>,
    pub generation: i64,
    pub last_time: f64,
    pub task_prefix_count_global: OrderedMap<PrefixId, i64>,
    pub network_occ_global: ByteTotal,
    pub transition_log: VecDeque<TransitionLogEntry<P>>,
    /// The running stimulus' own transition, until the observer is told of it.
    pub own_transition: Option<OwnTransition<P>>,
    /// Told of transitions as they happen, as `_transition` tells plugins.
    pub observer: Option<TransitionObserver<P>>,
    /// Nanoseconds spent in the observer (the bindings' plugin hooks).
    pub(super) observer_ns: u64,
    /// The transition log's clock inside `transitions_loop`: `(time, uses left)`.
    pub(super) log_clock: Option<(f64, u32)>,
    /// `WorkStealing` (off unless the binding enables it).
    pub stealing: super::stealing_state::Stealing<P>,
    pub erred_tasks: VecDeque<ErredTaskRecord<P>>,
    pub run_id_counter: i64,
    task_serial: u64,
    /// Sum of `_task_slots_available(ws)` over `idle_task_count`, kept incrementally.
    pub idle_slots: i64,
    /// Latest worker id for every address ever seen (messages may name removed workers).
    pub any_worker_by_address: HashMap<String, WorkerId>,
    /// `aliases`: worker name (as str) -> address
    pub aliases: HashMap<String, String>,
    /// `Serialized(RuntimeError("Worker holding Actor was lost"))`, built by the binding.
    pub actor_lost_exception: Option<P>,
    /// Builds the MemoryError payload of `_add_to_processing`'s safety check:
    /// (key, ndep_bytes, worker address, memory_limit, has_dependents).
    pub memory_error: Option<MemoryErrorFactory<P>>,
    /// Told of the run_spec of each task record the state lets go of, before it is
    /// dropped (the binding puts it back in Python's cyclic GC).
    pub run_spec_released: Option<fn(&P)>,
}

impl<P> Drop for SchedulerState<P> {
    fn drop(&mut self) {
        if let Some(released) = self.run_spec_released {
            for spec in self
                .tasks
                .iter()
                .flatten()
                .filter_map(|ts| ts.run_spec.as_ref())
            {
                released(spec);
            }
        }
    }
}

pub type MemoryErrorFactory<P> = Box<dyn Fn(&P, i64, &str, i64, bool) -> P + Send + Sync>;

impl<P: Clone> SchedulerState<P> {
    pub fn new(config: Config, fire_and_forget_key: P, fire_and_forget_hash: i64) -> Self {
        let mut s = Self {
            config,
            tasks: Vec::new(),
            n_live_tasks: 0,
            keys: KeyTable::default(),
            free_tasks: Vec::new(),
            pending_free: Vec::new(),
            pending_graph: None,
            dead_groups: Vec::new(),
            alive_groups: OrderedMap::new(),
            pinned_groups: Vec::new(),
            pinned_recheck_at: 64,
            free_groups: Vec::new(),
            workers: Vec::new(),
            worker_by_address: HashMap::new(),
            workers_sorted: Vec::new(),
            running: PySet::new(),
            idle: Vec::new(),
            idle_task_count: PySet::new(),
            saturated: PySet::new(),
            clients: Vec::new(),
            fire_and_forget: ClientId(0),
            groups: Vec::new(),
            group_by_name: HashMap::new(),
            prefixes: Vec::new(),
            prefix_by_name: HashMap::new(),
            queued: HeapSet::default(),
            unrunnable: OrderedMap::new(),
            replicated_tasks: PySet::new(),
            host_info: HashMap::new(),
            resources: OrderedMap::new(),
            strings: Interner::default(),
            total_nthreads: 0,
            total_memory: 0,
            n_tasks: 0,
            transition_counter: 0,
            failed_transitions: Vec::new(),
            restored_edges: Vec::new(),
            generation: 0,
            last_time: 0.0,
            task_prefix_count_global: OrderedMap::new(),
            network_occ_global: 0,
            transition_log: VecDeque::new(),
            own_transition: None,
            stealing: Default::default(),
            observer: None,
            observer_ns: 0,
            log_clock: None,
            erred_tasks: VecDeque::new(),
            run_id_counter: 0,
            task_serial: 0,
            idle_slots: 0,
            any_worker_by_address: HashMap::new(),
            aliases: HashMap::new(),
            actor_lost_exception: None,
            memory_error: None,
            run_spec_released: None,
        };
        s.fire_and_forget = s.add_client(fire_and_forget_key, fire_and_forget_hash);
        s
    }

    // ----- arena access -------------------------------------------------------------

    #[inline]
    pub fn ts(&self, t: TaskId) -> &Task<P> {
        self.tasks[t.idx()].as_ref().expect("live task id")
    }

    #[inline]
    pub(super) fn ts_mut(&mut self, t: TaskId) -> &mut Task<P> {
        self.tasks[t.idx()].as_mut().expect("live task id")
    }

    /// The task if it is known (not forgotten).
    pub fn task(&self, t: TaskId) -> Option<&Task<P>> {
        self.tasks
            .get(t.idx())
            .and_then(|o| o.as_ref())
            .filter(|ts| ts.state != TaskStateState::Forgotten)
    }

    #[inline]
    pub fn thash(&self, t: TaskId) -> i64 {
        self.ts(t).hash
    }

    #[inline]
    pub fn ws(&self, w: WorkerId) -> &Worker {
        &self.workers[w.idx()]
    }

    #[inline]
    pub(super) fn ws_mut(&mut self, w: WorkerId) -> &mut Worker {
        &mut self.workers[w.idx()]
    }

    #[inline]
    pub fn whash(&self, w: WorkerId) -> i64 {
        self.workers[w.idx()].hash
    }

    #[inline]
    pub fn chash(&self, c: ClientId) -> i64 {
        self.clients[c.idx()].hash
    }

    pub fn worker_id(&self, address: &str) -> Option<WorkerId> {
        self.worker_by_address.get(address).copied()
    }

    /// `self.workers.get(ws.address) is ws`
    pub fn is_current_worker(&self, w: WorkerId) -> bool {
        self.ws(w).alive
    }

    pub fn live_task_ids(&self) -> impl Iterator<Item = TaskId> + '_ {
        self.tasks.iter().enumerate().filter_map(|(i, t)| {
            t.as_ref()
                .filter(|t| t.state != TaskStateState::Forgotten)
                .map(|_| TaskId(i as u32))
        })
    }

    // ----- creation -----------------------------------------------------------------

    pub fn add_client(&mut self, key: P, hash: i64) -> ClientId {
        let id = ClientId(self.clients.len() as u32);
        self.clients.push(Client {
            client_key: key,
            hash,
            wants_what: PySet::new(),
            alive: true,
        });
        id
    }

    /// `del Scheduler.clients[client]`, after `remove_client` released its keys. The
    /// id is not reused (tasks' `who_wants` may not name it any more); the record keeps
    /// only its key. Returns false, changing nothing, while the client still wants keys.
    pub fn remove_client(&mut self, c: ClientId) -> bool {
        let cs = &mut self.clients[c.idx()];
        if !cs.wants_what.is_empty() {
            return false;
        }
        cs.wants_what = PySet::new();
        cs.alive = false;
        true
    }

    /// `SchedulerState.new_task`: a task in `state`, added to its group.
    #[allow(clippy::too_many_arguments)]
    pub fn new_task(
        &mut self,
        key: P,
        hash: i64,
        group_name: &str,
        prefix_name: &str,
        run_spec: Option<P>,
        data_producer: bool,
        state: TaskStateState,
    ) -> TaskId {
        let group = self.group_id(group_name, prefix_name);
        self.new_task_in(key, hash, group, run_spec, data_producer, state)
    }

    /// `new_task` in a known group.
    pub(crate) fn new_task_in(
        &mut self,
        key: P,
        hash: i64,
        group: GroupId,
        run_spec: Option<P>,
        data_producer: bool,
        state: TaskStateState,
    ) -> TaskId {
        let prefix = self.groups[group.idx()].prefix;
        let ts = Task {
            key,
            hash,
            run_spec,
            data_producer,
            priority: None,
            state,
            dependencies: PySet::new(),
            dependents: PySet::new(),
            has_lost_dependencies: false,
            waiting_on: None,
            waiters: None,
            who_has: None,
            processing_on: OptId::NONE,
            nbytes: -1,
            type_: OptId::NONE,
            actor: false,
            group,
            prefix,
            rare: None,
            annotations: None,
            span_annotation_pending: false,
            run_id: None,
            queueable: true,
            serial: self.task_serial,
        };
        self.task_serial += 1;
        let id = match self.free_tasks.pop() {
            Some(id) => {
                self.tasks[id.idx()] = Some(ts);
                id
            }
            None => {
                self.tasks.push(Some(ts));
                TaskId((self.tasks.len() - 1) as u32)
            }
        };
        self.n_live_tasks += 1;
        let tasks = &self.tasks;
        (self.keys).insert(id, hash, |t| key_hash(tasks, t));
        // TaskGroup.add
        let si = state.index();
        let g = &mut self.groups[group.idx()];
        g.states[si] += 1;
        g.size += 1;
        let p = &mut self.prefixes[prefix.idx()];
        p.states[si] += 1;
        p.size += 1;
        id
    }

    /// `ts.state = value`, with the group/prefix counters.
    pub fn set_state(&mut self, t: TaskId, value: TaskStateState) {
        let ts = self.ts_mut(t);
        let old = ts.state;
        ts.state = value;
        let (g, p) = (ts.group, ts.prefix);
        let gr = &mut self.groups[g.idx()];
        gr.states[old.index()] -= 1;
        gr.states[value.index()] += 1;
        let pf = &mut self.prefixes[p.idx()];
        pf.states[old.index()] -= 1;
        pf.states[value.index()] += 1;
        pf.state_counts[value.index()] += 1;
    }

    /// `ts.add_dependency(dts)`
    pub fn add_dependency(&mut self, t: TaskId, d: TaskId) {
        let (th, dh) = (self.thash(t), self.thash(d));
        self.ts_mut(t).dependencies.insert(d, dh);
        let (tg, dg) = (self.ts(t).group, self.ts(d).group);
        if self.groups[tg.idx()].dependencies.insert(dg) && tg != dg {
            self.groups[dg.idx()].dep_refs += 1;
        }
        self.ts_mut(d).dependents.insert(t, th);
    }

    /// Frees the slots of tasks forgotten in the batch that just ended.
    /// Drops the edges put back on forgotten tasks for plugins: no live task points
    /// at them, and a record kept for stealing must not name freed slots.
    pub fn forget_restored_edges(&mut self) {
        for t in std::mem::take(&mut self.restored_edges) {
            if let Some(ts) = self.tasks[t.idx()].as_mut() {
                if ts.state == TaskStateState::Forgotten {
                    ts.dependents = Default::default();
                    ts.dependencies = Default::default();
                }
            }
        }
    }

    pub fn flush(&mut self) {
        let freed = std::mem::take(&mut self.pending_free);
        for t in freed {
            if self.steal_keeps_record(t) {
                continue;
            }
            match &mut self.pending_graph {
                // the pending recommendations may name it: no other task gets the slot
                // (and the recommendation) before the graph's transitions are done
                Some(pending) => pending.held.push(t),
                None => self.free_task_slot(t),
            }
        }
    }

    /// Room for `n` more tasks. A large graph gets exactly the room it needs: doubling
    /// the task arena would leave up to half of it (hundreds of bytes per task) unused.
    pub(crate) fn reserve_tasks(&mut self, n: usize) {
        let need = n.saturating_sub(self.free_tasks.len());
        if need < self.tasks.len() / 2 {
            return;
        }
        // the arena may have its room already (`offer_task_arena`); the key table not
        self.tasks.reserve_exact(need);
        let tasks = &self.tasks;
        (self.keys).reserve(n, self.tasks.len() + need, |t| key_hash(tasks, t));
    }

    /// A task arena with room made elsewhere (`fresh`: empty, its pages already
    /// touched): taken, with the tasks moved into it, if this one lacks the room for
    /// `n` more tasks and `fresh` has it. Task ids stay the same (positions).
    pub fn offer_task_arena(&mut self, mut fresh: Vec<Option<Task<P>>>, n: usize) {
        let need = n.saturating_sub(self.free_tasks.len());
        let lacks = self.tasks.capacity() - self.tasks.len() < need;
        if lacks && fresh.is_empty() && fresh.capacity() >= self.tasks.len() + need {
            fresh.append(&mut self.tasks);
            self.tasks = fresh;
        }
    }

    pub(crate) fn free_task_slot(&mut self, t: TaskId) {
        if let Some(ts) = self.tasks[t.idx()].take() {
            // normally gone since its transition to forgotten
            self.keys.remove(t, ts.hash);
            if let (Some(released), Some(spec)) = (self.run_spec_released, &ts.run_spec) {
                released(spec);
            }
        }
        self.free_tasks.push(t);
    }

    // ----- what the binding reads -------------------------------------------------

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// A task's record, one forgotten in the current batch included (its slot is freed
    /// when the batch ends).
    pub fn task_slot(&self, t: TaskId) -> Option<&Task<P>> {
        self.tasks.get(t.idx()).and_then(|o| o.as_ref())
    }

    pub fn client(&self, c: ClientId) -> &Client<P> {
        &self.clients[c.idx()]
    }

    pub fn fire_and_forget(&self) -> ClientId {
        self.fire_and_forget
    }

    pub fn group(&self, g: GroupId) -> &TaskGroup<P> {
        &self.groups[g.idx()]
    }

    /// Slots in the group arena (live groups, dead ones still referred to, free ones).
    pub fn group_slots(&self) -> usize {
        self.groups.len()
    }

    /// The live groups in creation order (`task_groups`' order).
    pub fn alive_groups(&self) -> impl Iterator<Item = GroupId> + '_ {
        self.alive_groups.keys()
    }

    pub fn prefix(&self, p: PrefixId) -> &TaskPrefix {
        &self.prefixes[p.idx()]
    }

    pub fn prefixes(&self) -> &[TaskPrefix] {
        &self.prefixes
    }

    /// An interned name (resource, action, type name).
    pub fn string(&self, i: u32) -> &str {
        self.strings.name(i)
    }

    /// `workers`, in address order.
    pub fn workers_sorted(&self) -> &[WorkerId] {
        &self.workers_sorted
    }

    /// The latest worker with this address, removed or not.
    pub fn any_worker_id(&self, address: &str) -> Option<WorkerId> {
        self.any_worker_by_address.get(address).copied()
    }

    /// `idle`, in address order.
    pub fn idle(&self) -> &[WorkerId] {
        &self.idle
    }

    pub fn running(&self) -> &PySet<WorkerId> {
        &self.running
    }

    pub fn saturated(&self) -> &PySet<WorkerId> {
        &self.saturated
    }

    pub fn idle_task_count(&self) -> &PySet<WorkerId> {
        &self.idle_task_count
    }

    pub fn queued(&self) -> &HeapSet {
        &self.queued
    }

    /// `unrunnable`: task -> `monotonic()` when it became unrunnable.
    pub fn unrunnable(&self) -> &OrderedMap<TaskId, f64> {
        &self.unrunnable
    }

    pub fn replicated_tasks(&self) -> &PySet<TaskId> {
        &self.replicated_tasks
    }

    pub fn total_nthreads(&self) -> i64 {
        self.total_nthreads
    }

    pub fn n_tasks(&self) -> i64 {
        self.n_tasks
    }

    /// The live task whose key has hash `hash` and satisfies `is_key`.
    #[inline]
    pub fn find_task(&self, hash: i64, mut is_key: impl FnMut(&P) -> bool) -> Option<TaskId> {
        self.keys.find(hash, |t| {
            (self.tasks[t.idx()].as_ref()).is_some_and(|ts| ts.hash == hash && is_key(&ts.key))
        })
    }

    /// The live tasks by key, in creation order.
    pub fn key_table(&self) -> &KeyTable {
        &self.keys
    }

    pub fn n_live_tasks(&self) -> usize {
        self.n_live_tasks
    }

    pub fn transition_counter(&self) -> i64 {
        self.transition_counter
    }

    pub fn transition_log(&self) -> &VecDeque<TransitionLogEntry<P>> {
        &self.transition_log
    }

    pub fn clear_transition_log(&mut self) {
        self.transition_log.clear();
    }

    /// `erred_tasks`, newest first.
    pub fn erred_tasks(&self) -> &VecDeque<ErredTaskRecord<P>> {
        &self.erred_tasks
    }

    pub fn stealing(&self) -> &super::stealing_state::Stealing<P> {
        &self.stealing
    }

    /// `is_idle`: every group done. A prefix counts the states of its live groups, so
    /// this is "every prefix done": O(prefixes), where groups grow with every submission.
    pub fn is_idle(&self) -> bool {
        use TaskStateState as S;
        self.prefixes.iter().all(|p| {
            [S::Waiting, S::Queued, S::Processing, S::NoWorker]
                .iter()
                .all(|s| p.states[s.index()] == 0)
        })
    }

    // ----- settings -----------------------------------------------------------------

    pub fn set_bandwidth(&mut self, value: f64) {
        self.config.bandwidth = value;
    }

    pub fn set_transition_counter_max(&mut self, value: i64) {
        self.config.transition_counter_max = value;
    }

    pub fn enable_stealing(&mut self, enabled: bool) {
        self.stealing.enabled = enabled;
    }

    /// The payloads the core cannot make itself: the "Worker holding Actor was lost"
    /// exception and the memory-limit `MemoryError` factory.
    pub fn set_payload_factories(&mut self, actor_lost: P, memory_error: MemoryErrorFactory<P>) {
        self.actor_lost_exception = Some(actor_lost);
        self.memory_error = Some(memory_error);
    }

    // ----- observer and batch end ---------------------------------------------------

    pub fn set_observer(&mut self, observer: Option<TransitionObserver<P>>) {
        self.observer = observer;
    }

    /// Nanoseconds spent in the observer so far.
    pub fn observer_ns(&self) -> u64 {
        self.observer_ns
    }

    pub fn observer_data(&self) -> Option<&P> {
        self.observer.as_ref().map(|o| &o.data)
    }

    /// The running stimulus asks for `t` to go to `finish`: the observer gets `fields`
    /// with that transition (distributed passes a stimulus' `**kwargs` to plugins).
    pub fn set_own_transition(&mut self, t: TaskId, finish: TaskStateState, fields: P) {
        self.own_transition = Some(OwnTransition {
            task: t,
            finish,
            fields,
        });
    }

    /// `(task, start, finish)` of the transitions that failed, innermost first.
    pub fn take_failed_transitions(&mut self) -> Vec<(TaskId, TaskStateState, TaskStateState)> {
        std::mem::take(&mut self.failed_transitions)
    }

    /// The tasks forgotten in this batch (their records stay readable until it ends).
    pub fn forgotten_in_batch(&self) -> &[TaskId] {
        &self.pending_free
    }

    /// A stimulus ended: nothing of its failures or own transition outlives it.
    pub fn end_stimulus(&mut self) {
        self.failed_transitions.clear();
        self.own_transition = None;
    }

    /// Whether the batch forgot tasks or killed groups (what `free_forgotten` and
    /// `settle_dead_groups` clear up).
    pub fn batch_left_garbage(&self) -> bool {
        !self.pending_free.is_empty() || !self.dead_groups.is_empty()
    }

    /// Frees the slots of the tasks forgotten in the batch that just ended.
    pub fn free_forgotten(&mut self) {
        self.forget_restored_edges();
        self.flush();
    }
}
