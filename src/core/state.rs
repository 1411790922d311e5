//! `SchedulerState`: the arenas, the scheduler-wide containers, the configuration and the
//! bookkeeping helpers shared by transitions and stimuli (replicas, processing, occupancy,
//! idle/saturated tracking).

use crate::core::entities::*;
use crate::core::heapset::HeapSet;
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

#[derive(Clone, Debug)]
pub struct StartStop {
    pub action: String,
    pub start: f64,
    pub stop: f64,
}

/// A message to a worker's stream.
#[derive(Clone, Debug)]
pub enum WorkerMsg<P> {
    ComputeTask {
        task: TaskId,
        run_id: i64,
        priority: Priority,
        stimulus_time: f64,
        who_has: Vec<(TaskId, SmallVec<[WorkerId; 2]>)>,
        nbytes: Vec<(TaskId, i64)>,
    },
    FreeKeys {
        key: TaskId,
        stimulus_id: P,
    },
    RemoveReplicas {
        keys: Vec<P>,
        stimulus_id: P,
    },
    /// `{"op": "steal-request", "key": ..., "stimulus_id": "steal-<n>"}`
    StealRequest {
        task: TaskId,
        stimulus_id: String,
    },
}

/// A message to a client.
#[derive(Clone, Debug)]
pub enum ClientMsg<P> {
    KeyInMemory {
        key: TaskId,
        type_: Option<P>,
        /// `_add_to_memory` sends the type; `report_on_key` does not.
        with_type: bool,
    },
    LostData {
        key: TaskId,
    },
    /// `update_data`'s report: `{"op": "key-in-memory", "key": ..., "workers": [...]}`
    KeyInMemoryWorkers {
        key: TaskId,
        workers: Vec<String>,
    },
    TaskErred {
        key: TaskId,
        exception: Option<P>,
        traceback: Option<P>,
    },
    TaskRetried {
        key: TaskId,
    },
    CancelledKeys {
        keys: Vec<TaskId>,
        reason: Option<&'static str>,
    },
}

/// `client_msgs` and `worker_msgs` of a batch of transitions, in distributed's order.
#[derive(Clone, Debug)]
pub struct Outbox<P> {
    pub client_msgs: OrderedMap<ClientId, Vec<ClientMsg<P>>>,
    pub worker_msgs: OrderedMap<WorkerId, Vec<WorkerMsg<P>>>,
}

impl<P> Default for Outbox<P> {
    fn default() -> Self {
        Self {
            client_msgs: OrderedMap::new(),
            worker_msgs: OrderedMap::new(),
        }
    }
}

impl<P> Outbox<P> {
    pub fn to_client(&mut self, c: ClientId, msg: ClientMsg<P>) {
        match self.client_msgs.get_mut(&c) {
            Some(v) => v.push(msg),
            None => {
                self.client_msgs.insert(c, vec![msg]);
            }
        }
    }

    pub fn to_worker(&mut self, w: WorkerId, msg: WorkerMsg<P>) {
        match self.worker_msgs.get_mut(&w) {
            Some(v) => v.push(msg),
            None => {
                self.worker_msgs.insert(w, vec![msg]);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.client_msgs.is_empty() && self.worker_msgs.is_empty()
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

pub struct SchedulerState<P> {
    pub config: Config,
    pub tasks: Vec<Option<Task<P>>>,
    pub n_live_tasks: usize,
    free_tasks: Vec<TaskId>,
    /// Tasks forgotten during the current batch: freed at `flush`, so messages of the
    /// batch can still name them.
    pub pending_free: Vec<TaskId>,
    /// Groups that died since the bindings last looked (their handles are dropped).
    pub dead_groups: Vec<GroupId>,
    /// The live groups in creation order (`task_groups`' order).
    pub alive_groups: OrderedMap<GroupId, ()>,
    /// Slots of dead groups nothing refers to any more, for new groups.
    pub free_groups: Vec<GroupId>,
    pub workers: Vec<Worker>,
    pub worker_by_address: HashMap<String, WorkerId>,
    /// `workers` is a SortedDict by address.
    pub workers_sorted: Vec<WorkerId>,
    pub running: PySet<WorkerId>,
    /// `idle` is a SortedDict by address.
    pub idle: Vec<WorkerId>,
    pub idle_task_count: PySet<WorkerId>,
    pub saturated: PySet<WorkerId>,
    pub clients: Vec<Client<P>>,
    pub fire_and_forget: ClientId,
    pub groups: Vec<TaskGroup<P>>,
    pub group_by_name: HashMap<String, GroupId>,
    pub prefixes: Vec<TaskPrefix>,
    pub prefix_by_name: HashMap<String, PrefixId>,
    pub queued: HeapSet,
    pub unrunnable: OrderedMap<TaskId, f64>,
    pub replicated_tasks: PySet<TaskId>,
    pub host_info: HashMap<String, HostInfo>,
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
    pub network_occ_global: i64,
    pub transition_log: VecDeque<TransitionLogEntry<P>>,
    /// When set, forgotten tasks get their edges back for `transition` observers.
    pub observe: bool,
    /// Told of transitions as they happen, as `_transition` tells plugins.
    pub observer: Option<TransitionObserver<P>>,
    /// `WorkStealing` (off unless the binding enables it).
    pub stealing: super::stealing::Stealing<P>,
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
}

pub type MemoryErrorFactory<P> = Box<dyn Fn(&P, i64, &str, i64, bool) -> P + Send + Sync>;

impl<P: Clone> SchedulerState<P> {
    pub fn new(config: Config, fire_and_forget_key: P, fire_and_forget_hash: i64) -> Self {
        let mut s = Self {
            config,
            tasks: Vec::new(),
            n_live_tasks: 0,
            free_tasks: Vec::new(),
            pending_free: Vec::new(),
            dead_groups: Vec::new(),
            alive_groups: OrderedMap::new(),
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
            observe: false,
            stealing: Default::default(),
            observer: None,
            erred_tasks: VecDeque::new(),
            run_id_counter: 0,
            task_serial: 0,
            idle_slots: 0,
            any_worker_by_address: HashMap::new(),
            aliases: HashMap::new(),
            actor_lost_exception: None,
            memory_error: None,
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
    pub fn ts_mut(&mut self, t: TaskId) -> &mut Task<P> {
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
    pub fn ws_mut(&mut self, w: WorkerId) -> &mut Worker {
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

    pub fn prefix_id(&mut self, name: &str) -> PrefixId {
        if let Some(&p) = self.prefix_by_name.get(name) {
            return p;
        }
        let id = PrefixId(self.prefixes.len() as u32);
        let duration_average = self
            .config
            .default_task_durations
            .get(name)
            .copied()
            .unwrap_or(-1.0);
        self.prefixes.push(TaskPrefix {
            name: name.to_owned(),
            states: [0; 8],
            state_counts: [0; 8],
            size: 0,
            nbytes_total: 0,
            durations: Durations::default(),
            types: OrderedMap::new(),
            duration_average,
            max_exec_time: -1.0,
            suspicious: 0,
            groups: OrderedMap::new(),
        });
        self.prefix_by_name.insert(name.to_owned(), id);
        id
    }

    pub fn group_id(&mut self, group_name: &str, prefix_name: &str) -> GroupId {
        if let Some(&g) = self.group_by_name.get(group_name) {
            return g;
        }
        let prefix = self.prefix_id(prefix_name);
        let group = TaskGroup::new(group_name.to_owned(), prefix);
        let id = match self.free_groups.pop() {
            Some(id) => {
                self.groups[id.idx()] = group;
                id
            }
            None => {
                self.groups.push(group);
                GroupId(self.groups.len() as u32 - 1)
            }
        };
        self.alive_groups.insert(id, ());
        self.prefixes[prefix.idx()].groups.insert(id, ());
        self.group_by_name.insert(group_name.to_owned(), id);
        id
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
            who_wants: None,
            who_has: None,
            processing_on: None,
            retries: 0,
            nbytes: -1,
            type_: None,
            exception: None,
            traceback: None,
            exception_text: None,
            traceback_text: None,
            exception_blame: None,
            erred_on: None,
            suspicious: 0,
            host_restrictions: None,
            worker_restrictions: None,
            resource_restrictions: None,
            loose_restrictions: false,
            actor: false,
            group,
            prefix,
            metadata: None,
            annotations: None,
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
            if !self.steal_keeps_record(t) {
                self.free_task_slot(t);
            }
        }
    }

    pub(crate) fn free_task_slot(&mut self, t: TaskId) {
        self.tasks[t.idx()] = None;
        self.free_tasks.push(t);
    }

    // ----- nbytes -------------------------------------------------------------------

    /// `ts.set_nbytes(nbytes)`
    pub fn set_nbytes(&mut self, t: TaskId, nbytes: i64) {
        let ts = self.ts(t);
        let old = ts.nbytes;
        let diff = if old >= 0 { nbytes - old } else { nbytes };
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
            let nbytes = self.ts(t).get_nbytes();
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
        let nbytes = self.ts(t).get_nbytes();
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
        let nbytes = self.ts(t).get_nbytes();
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

    // ----- processing ---------------------------------------------------------------

    fn inc_task_prefix_count(&mut self, w: WorkerId, p: PrefixId) {
        let ws = self.ws_mut(w);
        match ws.task_prefix_count.get_mut(&p) {
            Some(c) => *c += 1,
            None => {
                ws.task_prefix_count.insert(p, 1);
            }
        }
        match self.task_prefix_count_global.get_mut(&p) {
            Some(c) => *c += 1,
            None => {
                self.task_prefix_count_global.insert(p, 1);
            }
        }
    }

    fn remove_from_task_prefix_count(&mut self, w: WorkerId, p: PrefixId) {
        let ws = self.ws_mut(w);
        let count = ws.task_prefix_count.get(&p).copied().unwrap_or(0) - 1;
        if count != 0 {
            ws.task_prefix_count.insert(p, count);
        } else {
            ws.task_prefix_count.remove(&p);
        }
        let count = self.task_prefix_count_global.get(&p).copied().unwrap_or(0) - 1;
        if count != 0 {
            self.task_prefix_count_global.insert(p, count);
        } else {
            self.task_prefix_count_global.remove(&p);
        }
    }

    /// `WorkerState.add_to_processing`
    pub fn ws_add_to_processing(&mut self, w: WorkerId, t: TaskId) {
        let p = self.ts(t).prefix;
        self.inc_task_prefix_count(w, p);
        let th = self.thash(t);
        self.ws_mut(w).processing.insert(t, th);
        self.slots_changed(w, -1);
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            if !self.has_replica(d, w) {
                self.inc_needs_replica(w, d);
            }
        }
    }

    fn inc_needs_replica(&mut self, w: WorkerId, d: TaskId) {
        let nbytes = self.ts(d).get_nbytes();
        let ws = self.ws_mut(w);
        match ws.needs_what.get_mut(&d) {
            Some(c) => *c += 1,
            None => {
                ws.needs_what.insert(d, 1);
                ws.network_occ += nbytes;
                self.network_occ_global += nbytes;
            }
        }
    }

    fn dec_needs_replica(&mut self, w: WorkerId, d: TaskId) {
        let nbytes = self.ts(d).get_nbytes();
        let ws = self.ws_mut(w);
        let c = ws.needs_what.get_mut(&d).expect("needs_what entry");
        *c -= 1;
        if *c == 0 {
            ws.needs_what.remove(&d);
            ws.network_occ -= nbytes.min(ws.network_occ);
            self.network_occ_global -= nbytes.min(self.network_occ_global);
        }
    }

    /// `WorkerState.remove_from_processing`
    pub fn ws_remove_from_processing(&mut self, w: WorkerId, t: TaskId) {
        let th = self.thash(t);
        let was_long_running = self.ws_mut(w).long_running.remove(t, th);
        if !was_long_running {
            let p = self.ts(t).prefix;
            self.remove_from_task_prefix_count(w, p);
        }
        self.ws_mut(w).processing.remove(t, th);
        if !was_long_running {
            self.slots_changed(w, 1);
        }
        let deps: SmallVec<[TaskId; 8]> = self.ts(t).dependencies.iter().collect();
        for d in deps {
            if self.ws(w).needs_what.contains_key(&d) {
                self.dec_needs_replica(w, d);
            }
        }
    }

    /// `WorkerState.add_to_long_running`
    pub fn ws_add_to_long_running(&mut self, w: WorkerId, t: TaskId) {
        let p = self.ts(t).prefix;
        self.remove_from_task_prefix_count(w, p);
        let th = self.thash(t);
        if self.ws_mut(w).long_running.insert(t, th) {
            self.slots_changed(w, 1);
        }
    }

    // ----- occupancy ----------------------------------------------------------------

    /// `SchedulerState._get_prefix_duration`
    pub fn prefix_duration(&self, p: PrefixId) -> f64 {
        let tp = &self.prefixes[p.idx()];
        let mut duration = tp.duration_average;
        if duration < 0.0 {
            if tp.max_exec_time > 0.0 {
                duration = 2.0 * tp.max_exec_time;
            } else {
                duration = self.config.unknown_task_duration;
            }
        }
        duration
    }

    /// `SchedulerState._calc_occupancy`
    pub fn calc_occupancy(&self, counts: &OrderedMap<PrefixId, i64>, network_occ: i64) -> f64 {
        let mut res = 0.0;
        for (&p, &count) in counts.iter() {
            res += self.prefix_duration(p) * count as f64;
        }
        let occ = res + network_occ as f64 / self.config.bandwidth;
        occ.max(0.0)
    }

    /// `WorkerState.occupancy`
    pub fn occupancy(&self, w: WorkerId) -> f64 {
        let ws = self.ws(w);
        self.calc_occupancy(&ws.task_prefix_count, ws.network_occ)
    }

    pub fn total_occupancy(&self) -> f64 {
        self.calc_occupancy(&self.task_prefix_count_global, self.network_occ_global)
    }

    // ----- idle / saturated ---------------------------------------------------------

    fn sorted_insert(list: &mut Vec<WorkerId>, workers: &[Worker], w: WorkerId) {
        let addr = &workers[w.idx()].address;
        match list.binary_search_by(|x| workers[x.idx()].address.as_str().cmp(addr)) {
            Ok(_) => {}
            Err(pos) => list.insert(pos, w),
        }
    }

    fn sorted_remove(list: &mut Vec<WorkerId>, workers: &[Worker], w: WorkerId) {
        let addr = &workers[w.idx()].address;
        if let Ok(pos) = list.binary_search_by(|x| workers[x.idx()].address.as_str().cmp(addr)) {
            if list[pos] == w {
                list.remove(pos);
            }
        }
    }

    pub fn idle_insert(&mut self, w: WorkerId) {
        Self::sorted_insert(&mut self.idle, &self.workers, w);
    }

    pub fn idle_remove(&mut self, w: WorkerId) {
        Self::sorted_remove(&mut self.idle, &self.workers, w);
    }

    pub fn workers_sorted_insert(&mut self, w: WorkerId) {
        Self::sorted_insert(&mut self.workers_sorted, &self.workers, w);
    }

    pub fn workers_sorted_remove(&mut self, w: WorkerId) {
        Self::sorted_remove(&mut self.workers_sorted, &self.workers, w);
    }

    pub fn is_idle_worker(&self, w: WorkerId) -> bool {
        let addr = &self.ws(w).address;
        self.idle
            .binary_search_by(|x| self.ws(*x).address.as_str().cmp(addr))
            .is_ok()
    }

    /// `_task_slots_available`
    pub fn task_slots_available(&self, w: WorkerId) -> i64 {
        let ws = self.ws(w);
        let cap = ((self.config.worker_saturation * ws.nthreads as f64).ceil() as i64).max(1);
        cap - (ws.processing.len() as i64 - ws.long_running.len() as i64)
    }

    /// `_worker_full`
    pub fn worker_full(&self, w: WorkerId) -> bool {
        if self.config.worker_saturation.is_infinite() {
            return false;
        }
        self.task_slots_available(w) <= 0
    }

    /// `SchedulerState.check_idle_saturated`
    pub fn check_idle_saturated(&mut self, w: WorkerId) {
        self.check_idle_saturated_occ(w, None);
    }

    /// `check_idle_saturated(ws, occ=...)`: stealing passes the occupancy it counts
    /// (a negative one means "use ws.occupancy", as in distributed).
    pub fn check_idle_saturated_occ(&mut self, w: WorkerId, occ: Option<f64>) {
        if self.total_nthreads == 0 || self.ws(w).status == WorkerStatus::Closed {
            return;
        }
        let occ = match occ {
            Some(o) if o >= 0.0 => o,
            _ => self.occupancy(w),
        };
        let p = self.ws(w).processing.len() as i64;
        let wh = self.whash(w);
        self.saturated.remove(w, wh);
        let status = self.ws(w).status;
        if status != WorkerStatus::Running {
            self.idle_remove(w);
        } else if self.is_unoccupied(w, occ, p) {
            self.idle_insert(w);
        } else {
            self.idle_remove(w);
            let nc = self.ws(w).nthreads;
            if p > nc {
                let pending = occ * (p - nc) as f64 / (p * nc) as f64;
                if 0.4 < pending
                    && pending > 1.9 * (self.total_occupancy() / self.total_nthreads as f64)
                {
                    self.saturated.insert(w, wh);
                }
            }
        }
        if !self.worker_full(w) && status == WorkerStatus::Running {
            self.idle_task_count_insert(w);
        } else {
            self.idle_task_count_remove(w);
        }
    }

    /// `WORKER_SATURATION = value` on a running scheduler. As in distributed, who is in
    /// `idle_task_count` changes only at each worker's next check; `idle_slots` is
    /// summed again for the new value.
    pub fn set_worker_saturation(&mut self, value: f64) {
        self.config.worker_saturation = value;
        self.idle_slots = if value.is_infinite() {
            0
        } else {
            self.idle_task_count
                .iter()
                .map(|w| self.task_slots_available(w))
                .sum()
        };
    }

    /// `idle_task_count.add(ws)`, keeping `idle_slots` (the sum of
    /// `_task_slots_available` over `idle_task_count`) current.
    pub fn idle_task_count_insert(&mut self, w: WorkerId) {
        let wh = self.whash(w);
        if self.idle_task_count.insert(w, wh) && !self.config.worker_saturation.is_infinite() {
            self.idle_slots += self.task_slots_available(w);
        }
    }

    /// `idle_task_count.discard(ws)`
    pub fn idle_task_count_remove(&mut self, w: WorkerId) {
        let wh = self.whash(w);
        if self.idle_task_count.remove(w, wh) && !self.config.worker_saturation.is_infinite() {
            self.idle_slots -= self.task_slots_available(w);
        }
    }

    /// A worker's free slots changed by `delta`; mirrored in `idle_slots` if it counts.
    fn slots_changed(&mut self, w: WorkerId, delta: i64) {
        if !self.config.worker_saturation.is_infinite()
            && self.idle_task_count.contains(w, self.whash(w))
        {
            self.idle_slots += delta;
        }
    }

    pub fn is_unoccupied(&self, w: WorkerId, occupancy: f64, nprocessing: i64) -> bool {
        let nthreads = self.ws(w).nthreads;
        nprocessing < nthreads
            || occupancy
                < nthreads as f64 * (self.total_occupancy() / self.total_nthreads as f64) / 2.0
    }

    // ----- resources ----------------------------------------------------------------

    pub fn acquire_resources(&mut self, t: TaskId, w: WorkerId) {
        self.adjust_used_resources(t, w, 1.0);
    }

    pub fn release_resources(&mut self, t: TaskId, w: WorkerId) {
        self.adjust_used_resources(t, w, -1.0);
    }

    /// `ws.used_resources[r] += sign * required` for each of the task's restrictions.
    /// `Scheduler.add_resources` (the `set_resources` handler): the worker's resources
    /// are updated and, as in distributed, every `used_resources` entry is reset to 0.
    pub fn add_resources(&mut self, w: WorkerId, resources: &[(String, f64)]) {
        for (r, v) in resources {
            let rid = self.strings.intern(r);
            self.ws_mut(w).resources.insert(rid, *v);
        }
        let all: Vec<(u32, f64)> = self.ws(w).resources.iter().map(|(r, v)| (*r, *v)).collect();
        self.ws_mut(w).used_resources = OrderedMap::new();
        for (rid, quantity) in all {
            self.ws_mut(w).used_resources.insert(rid, 0.0);
            if self.resources.get(&rid).is_none() {
                self.resources.insert(rid, OrderedMap::new());
            }
            self.resources
                .get_mut(&rid)
                .expect("inserted")
                .insert(w, quantity);
        }
    }

    fn adjust_used_resources(&mut self, t: TaskId, w: WorkerId, sign: f64) {
        let Some(rr) = self.ts(t).resource_restrictions.clone() else {
            return;
        };
        for (r, required) in rr {
            let rid = self.strings.intern(&r);
            let ws = self.ws_mut(w);
            let cur = ws.used_resources.get(&rid).copied().unwrap_or(0.0);
            ws.used_resources.insert(rid, cur + sign * required);
        }
    }

    // ----- groups -------------------------------------------------------------------

    pub fn group_len(&self, g: GroupId) -> i64 {
        self.groups[g.idx()].size
    }

    /// TaskGroup.add_duration (and the prefix's)
    pub fn add_duration(&mut self, g: GroupId, action: &str, start: f64, stop: f64) {
        // Python's round(): halves to even
        let duration_us = ((stop - start) * 1e6).round_ties_even().max(0.0) as i64;
        let aid = self.strings.intern(action);
        let tg = &mut self.groups[g.idx()];
        tg.durations.duration_us += duration_us;
        *entry(&mut tg.durations.all_durations_us, aid) += duration_us;
        if action == "compute" {
            if tg.stop < stop {
                tg.stop = stop;
            }
            if tg.start == 0.0 || tg.start > start {
                tg.start = start;
            }
        }
        let p = tg.prefix;
        let tp = &mut self.prefixes[p.idx()];
        tp.durations.duration_us += duration_us;
        *entry(&mut tp.durations.all_durations_us, aid) += duration_us;
        let duration_s = duration_us as f64 / 1e6;
        if action == "compute" {
            let old = tp.duration_average;
            if old < 0.0 {
                tp.duration_average = duration_s;
            } else {
                tp.duration_average = 0.5 * duration_s + 0.5 * old;
            }
        }
    }

    pub fn add_type(&mut self, g: GroupId, typename: &str) {
        let tid = self.strings.intern(typename);
        let tg = &mut self.groups[g.idx()];
        *entry(&mut tg.types, tid) += 1;
        let p = tg.prefix;
        *entry(&mut self.prefixes[p.idx()].types, tid) += 1;
    }

    /// `TaskPrefix.remove_group` + `del task_groups[name]`
    pub fn remove_group(&mut self, g: GroupId) {
        let tg = self.groups[g.idx()].clone();
        let tp = &mut self.prefixes[tg.prefix.idx()];
        tp.groups.remove(&g);
        for (i, count) in tg.states.iter().enumerate() {
            tp.states[i] -= count;
            tp.size -= count;
        }
        tp.durations.duration_us -= tg.durations.duration_us;
        tp.nbytes_total -= tg.nbytes_total;
        for (&tid, &count) in tg.types.iter() {
            let c = entry(&mut tp.types, tid);
            *c -= count;
            if *c == 0 {
                tp.types.remove(&tid);
            }
        }
        self.group_by_name.remove(&tg.name);
        self.groups[g.idx()].alive = false;
        self.alive_groups.remove(&g);
        self.dead_groups.push(g);
    }

    /// Whether the slot of group `g` may be reused: it is dead and no group lists it in
    /// its `dependencies` (the bindings also check that no Python object holds it).
    pub fn group_reclaimable(&self, g: GroupId) -> bool {
        let tg = &self.groups[g.idx()];
        !tg.alive && !tg.freed && tg.dep_refs == 0
    }

    /// Frees the slot of a reclaimable group for a new group; returns the dead groups
    /// that no group lists any more because of it.
    pub fn reclaim_group(&mut self, g: GroupId) -> SmallVec<[GroupId; 4]> {
        debug_assert!(self.group_reclaimable(g));
        let prefix = self.groups[g.idx()].prefix;
        let dead = std::mem::replace(
            &mut self.groups[g.idx()],
            TaskGroup {
                alive: false,
                freed: true,
                ..TaskGroup::new(String::new(), prefix)
            },
        );
        let mut freed = SmallVec::new();
        for dg in dead.dependencies {
            if dg == g {
                continue;
            }
            let d = &mut self.groups[dg.idx()];
            d.dep_refs -= 1;
            if d.dep_refs == 0 && !d.alive {
                freed.push(dg);
            }
        }
        self.free_groups.push(g);
        freed
    }
}

fn entry<K: Copy + Eq + std::hash::Hash>(m: &mut OrderedMap<K, i64>, k: K) -> &mut i64 {
    if !m.contains_key(&k) {
        m.insert(k, 0);
    }
    m.get_mut(&k).expect("just inserted")
}
