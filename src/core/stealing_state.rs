//! The containers of `distributed.stealing.WorkStealing` (`stealable`, `in_flight`, ...),
//! owned by `SchedulerState`; `stealing` holds the decisions that update them.

use super::entities::TaskSet;
use super::ordered::OrderedMap;
use super::types::*;
use hashbrown::HashMap;

/// `len(WorkStealing.cost_multipliers)`
pub const LEVELS: usize = 15;

/// One entry of `WorkStealing.in_flight`.
#[derive(Clone, Debug)]
pub struct InFlight {
    pub victim: WorkerId,
    pub thief: WorkerId,
    pub victim_duration: f64,
    pub thief_duration: f64,
    pub stimulus_id: String,
}

/// One `(start, level, key, cost, victim, occ_victim, thief, occ_thief)` of a balance.
#[derive(Clone, Debug)]
pub struct StealRequestLog<P> {
    pub start: f64,
    pub level: usize,
    pub key: P,
    pub cost: f64,
    pub victim: String,
    pub occ_victim: f64,
    pub thief: String,
    pub occ_thief: f64,
}

/// What `WorkStealing.log` records (`scheduler.log_event("stealing", ...)`).
#[derive(Clone, Debug)]
pub enum StealEvent<P> {
    /// `("request", [...])`, one per balance that requested moves.
    Request(Vec<StealRequestLog<P>>),
    /// `(kind, key, state, worker, stimulus_id)`: stale-response, already-aborted.
    Dropped {
        kind: &'static str,
        key: P,
        state: Option<String>,
        worker: Option<String>,
        stimulus_id: String,
    },
    /// `(kind, key, state, victim, thief, stimulus_id)` (reschedule adds whether the
    /// thief is gone after `kind`): reschedule, already-computing, confirm.
    Move {
        kind: &'static str,
        thief_gone: Option<bool>,
        key: P,
        state: Option<String>,
        victim: String,
        thief: String,
        stimulus_id: String,
    },
}

/// The state of `WorkStealing`.
#[derive(Clone, Debug)]
pub struct Stealing<P> {
    pub enabled: bool,
    /// `stealable[worker][level]`, by worker index (`None`: not a current worker).
    pub stealable: Vec<Option<Box<[TaskSet; LEVELS]>>>,
    pub key_stealable: HashMap<TaskId, (WorkerId, usize)>,
    pub in_flight: OrderedMap<TaskId, InFlight>,
    /// `in_flight_occupancy` (a defaultdict: workers appear once touched).
    pub in_flight_occupancy: OrderedMap<WorkerId, f64>,
    pub in_flight_tasks: OrderedMap<WorkerId, i64>,
    /// `unknown_durations`: by prefix.
    pub unknown_durations: OrderedMap<PrefixId, TaskSet>,
    pub request_counter: u64,
    pub count: u64,
    /// `metrics["request_count_total"]` / `["request_cost_total"]` by level.
    pub request_count_total: OrderedMap<usize, i64>,
    pub request_cost_total: OrderedMap<usize, f64>,
    /// Events for `scheduler.log_event("stealing", ...)`, drained by the binding.
    pub events: Vec<StealEvent<P>>,
    /// Forgotten tasks kept alive by `unknown_durations` (see `steal_keeps_record`).
    pub zombies: hashbrown::HashSet<TaskId>,
}

impl<P> Default for Stealing<P> {
    fn default() -> Self {
        Self {
            enabled: false,
            stealable: Vec::new(),
            key_stealable: HashMap::new(),
            in_flight: OrderedMap::new(),
            in_flight_occupancy: OrderedMap::new(),
            in_flight_tasks: OrderedMap::new(),
            unknown_durations: OrderedMap::new(),
            request_counter: 0,
            count: 0,
            request_count_total: OrderedMap::new(),
            request_cost_total: OrderedMap::new(),
            events: Vec::new(),
            zombies: hashbrown::HashSet::new(),
        }
    }
}
