//! The scheduler's records: tasks, workers, clients, task groups and prefixes.
//! Python payloads (keys, run_specs, exceptions, ...) are the opaque `P`.

use crate::core::ordered::OrderedMap;
use crate::core::pyset::PySet;
use crate::core::types::*;
use std::sync::atomic::{AtomicI64, Ordering};

pub type TaskSet = PySet<TaskId>;
pub type WorkerSet = PySet<WorkerId>;
pub type ClientSet = PySet<ClientId>;

#[derive(Clone, Debug)]
pub struct Task<P> {
    pub key: P,
    /// `hash(key)`: drives the iteration order of every set holding this task.
    pub hash: i64,
    pub run_spec: Option<P>,
    /// `run_spec.data_producer`
    pub data_producer: bool,
    pub priority: Option<Priority>,
    pub state: TaskStateState,
    pub dependencies: TaskSet,
    pub dependents: TaskSet,
    pub has_lost_dependencies: bool,
    pub waiting_on: Option<TaskSet>,
    pub waiters: Option<TaskSet>,
    pub who_has: Option<WorkerSet>,
    /// Read with `processing_on()`.
    pub(crate) processing_on: OptId<WorkerId>,
    pub nbytes: i64,
    /// `ts.type`, interned (`SchedulerState::strings`): few distinct names.
    pub type_: OptId<u32>,
    /// Errors, restrictions, retries: few tasks have any, so they live out of line.
    pub rare: Option<Box<TaskRare<P>>>,
    pub actor: bool,
    pub group: GroupId,
    pub prefix: PrefixId,
    pub annotations: Option<P>,
    /// `ts.annotations` is a dict of its own holding only the group's
    /// `span_annotation` (or nothing), not made until something reads it: the spans
    /// extension gives every submitted task one.
    pub span_annotation_pending: bool,
    /// `ts.run_id` + 1 (run ids count up from 0): 8 bytes for an optional id.
    pub(crate) run_id: Option<std::num::NonZeroU64>,
    pub queueable: bool,
    /// Creation counter: tells apart tasks that reuse an arena slot.
    pub serial: u64,
}

/// The fields of a task that few tasks set.
#[derive(Clone, Debug)]
pub struct TaskRare<P> {
    /// Only the keys clients asked for have wanters.
    pub who_wants: Option<ClientSet>,
    pub retries: i64,
    pub exception: Option<P>,
    pub traceback: Option<P>,
    pub exception_text: Option<P>,
    pub traceback_text: Option<P>,
    pub exception_blame: Option<TaskId>,
    pub erred_on: Option<Vec<String>>,
    pub suspicious: i64,
    pub host_restrictions: Option<Vec<String>>,
    pub worker_restrictions: Option<Vec<String>>,
    pub resource_restrictions: Option<Vec<(String, f64)>>,
    pub loose_restrictions: bool,
    /// `ts.metadata`
    pub metadata: Option<P>,
}

impl<P> Default for TaskRare<P> {
    fn default() -> Self {
        TaskRare {
            who_wants: None,
            retries: 0,
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
            metadata: None,
        }
    }
}

/// `distributed.scheduler.DEFAULT_DATA_SIZE`: a module constant read from
/// `distributed.scheduler.default-data-size` at import; the binding sets it the same way.
pub static DEFAULT_DATA_SIZE: AtomicI64 = AtomicI64::new(1024);

pub fn default_data_size() -> i64 {
    DEFAULT_DATA_SIZE.load(Ordering::Relaxed)
}

impl<P> Task<P> {
    /// The rare fields, created on first write.
    pub fn rare_mut(&mut self) -> &mut TaskRare<P> {
        self.rare.get_or_insert_with(Box::default)
    }

    /// `ts.metadata`
    pub fn metadata(&self) -> Option<&P> {
        self.rare.as_ref().and_then(|r| r.metadata.as_ref())
    }

    /// `ts.metadata = value`; the rare fields are made only for a value.
    pub fn set_metadata(&mut self, value: Option<P>) {
        if value.is_some() || self.rare.is_some() {
            self.rare_mut().metadata = value;
        }
    }

    pub fn take_metadata(&mut self) -> Option<P> {
        self.rare.as_mut().and_then(|r| r.metadata.take())
    }

    /// `ts.processing_on`
    #[inline]
    pub fn processing_on(&self) -> Option<WorkerId> {
        self.processing_on.get()
    }

    #[inline]
    pub fn set_processing_on(&mut self, w: Option<WorkerId>) {
        self.processing_on = OptId::new(w);
    }

    #[inline]
    pub fn take_processing_on(&mut self) -> Option<WorkerId> {
        std::mem::replace(&mut self.processing_on, OptId::NONE).get()
    }

    pub fn who_wants(&self) -> Option<&ClientSet> {
        self.rare.as_ref().and_then(|r| r.who_wants.as_ref())
    }

    /// `ts.run_id`
    #[inline]
    pub fn run_id(&self) -> Option<i64> {
        self.run_id.map(|r| (r.get() - 1) as i64)
    }

    pub fn set_run_id(&mut self, run_id: i64) {
        self.run_id = std::num::NonZeroU64::new(run_id as u64 + 1);
    }

    pub fn exception_blame(&self) -> Option<TaskId> {
        self.rare.as_ref().and_then(|r| r.exception_blame)
    }

    pub fn exception(&self) -> Option<&P> {
        self.rare.as_ref().and_then(|r| r.exception.as_ref())
    }

    pub fn traceback(&self) -> Option<&P> {
        self.rare.as_ref().and_then(|r| r.traceback.as_ref())
    }

    pub fn exception_text(&self) -> Option<&P> {
        self.rare.as_ref().and_then(|r| r.exception_text.as_ref())
    }

    pub fn traceback_text(&self) -> Option<&P> {
        self.rare.as_ref().and_then(|r| r.traceback_text.as_ref())
    }

    pub fn erred_on(&self) -> Option<&[String]> {
        self.rare.as_ref().and_then(|r| r.erred_on.as_deref())
    }

    pub fn retries(&self) -> i64 {
        self.rare.as_ref().map_or(0, |r| r.retries)
    }

    pub fn suspicious(&self) -> i64 {
        self.rare.as_ref().map_or(0, |r| r.suspicious)
    }

    pub fn loose_restrictions(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.loose_restrictions)
    }

    pub fn host_restrictions(&self) -> Option<&[String]> {
        self.rare
            .as_ref()
            .and_then(|r| r.host_restrictions.as_deref())
    }

    pub fn worker_restrictions(&self) -> Option<&[String]> {
        self.rare
            .as_ref()
            .and_then(|r| r.worker_restrictions.as_deref())
    }

    pub fn resource_restrictions(&self) -> Option<&[(String, f64)]> {
        self.rare
            .as_ref()
            .and_then(|r| r.resource_restrictions.as_deref())
    }

    /// `ts.exception_blame = ts.exception = ts.traceback = None`
    pub fn clear_error(&mut self) {
        if let Some(r) = self.rare.as_deref_mut() {
            r.exception_blame = None;
            r.exception = None;
            r.traceback = None;
        }
    }

    #[inline]
    pub fn get_nbytes(&self) -> i64 {
        if self.nbytes >= 0 {
            self.nbytes
        } else {
            default_data_size()
        }
    }

    pub fn has_who_has(&self) -> bool {
        self.who_has.as_ref().is_some_and(|s| !s.is_empty())
    }

    pub fn has_waiters(&self) -> bool {
        self.waiters.as_ref().is_some_and(|s| !s.is_empty())
    }

    pub fn has_who_wants(&self) -> bool {
        self.who_wants().is_some_and(|s| !s.is_empty())
    }

    pub fn has_waiting_on(&self) -> bool {
        self.waiting_on.as_ref().is_some_and(|s| !s.is_empty())
    }

    pub fn has_restrictions(&self) -> bool {
        self.resource_restrictions().is_some_and(|r| !r.is_empty())
            || self.worker_restrictions().is_some_and(|r| !r.is_empty())
            || self.host_restrictions().is_some_and(|r| !r.is_empty())
    }
}

#[derive(Clone, Debug)]
pub struct Worker {
    pub address: String,
    /// `hash(server_id)`
    pub hash: i64,
    /// `hash(address)`: orders the sets of addresses in `valid_workers`.
    pub addr_hash: i64,
    pub host: String,
    pub nthreads: i64,
    pub memory_limit: i64,
    pub status: WorkerStatus,
    pub nbytes: ByteTotal,
    pub actors: TaskSet,
    pub has_what: OrderedMap<TaskId, ()>,
    pub processing: TaskSet,
    pub long_running: TaskSet,
    pub resources: OrderedMap<u32, f64>,
    pub used_resources: OrderedMap<u32, f64>,
    pub task_prefix_count: OrderedMap<PrefixId, i64>,
    pub needs_what: OrderedMap<TaskId, i64>,
    pub network_occ: ByteTotal,
    /// False once removed from the scheduler (the record stays for stale references).
    pub alive: bool,
}

#[derive(Clone, Debug)]
pub struct Client<P> {
    pub client_key: P,
    pub hash: i64,
    pub wants_what: TaskSet,
    pub alive: bool,
}

#[derive(Clone, Debug, Default)]
pub struct Durations {
    pub all_durations_us: OrderedMap<u32, i64>,
    pub duration_us: i64,
}

#[derive(Clone, Debug)]
pub struct TaskGroup<P> {
    pub name: String,
    pub prefix: PrefixId,
    pub states: [i64; 8],
    pub size: i64,
    pub nbytes_total: ByteTotal,
    pub durations: Durations,
    pub types: OrderedMap<u32, i64>,
    /// `tg.dependencies`: groups this group's tasks depend on (identity-hashed in Python,
    /// only counted here).
    pub dependencies: hashbrown::HashSet<GroupId>,
    pub start: f64,
    pub stop: f64,
    pub last_worker: Option<WorkerId>,
    pub last_worker_tasks_left: i64,
    pub span_id: Option<P>,
    /// The `span` annotation the spans extension gives this group's tasks, if any.
    pub span_annotation: Option<P>,
    pub alive: bool,
    /// How many other groups list this one in their `dependencies`: a dead group's slot
    /// is reused only when none does (they still show it, as distributed's do).
    pub dep_refs: u32,
    /// The slot waits in `free_groups` for a new group.
    pub freed: bool,
}

impl<P> TaskGroup<P> {
    pub fn new(name: String, prefix: PrefixId) -> Self {
        Self {
            name,
            prefix,
            states: [0; 8],
            size: 0,
            nbytes_total: 0,
            durations: Durations::default(),
            types: OrderedMap::new(),
            dependencies: hashbrown::HashSet::new(),
            start: 0.0,
            stop: 0.0,
            last_worker: None,
            last_worker_tasks_left: 0,
            span_id: None,
            span_annotation: None,
            alive: true,
            dep_refs: 0,
            freed: false,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TaskPrefix {
    pub name: String,
    pub states: [i64; 8],
    pub state_counts: [i64; 8],
    pub size: i64,
    pub nbytes_total: ByteTotal,
    pub durations: Durations,
    pub types: OrderedMap<u32, i64>,
    pub duration_average: f64,
    pub max_exec_time: f64,
    pub suspicious: i64,
    pub groups: OrderedMap<GroupId, ()>,
}
