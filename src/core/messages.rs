//! What a batch of transitions sends: messages to workers' and clients' streams, kept
//! per destination in distributed's order (`Msgs` dicts).

use crate::core::ordered::OrderedMap;
use crate::core::types::*;
use smallvec::SmallVec;

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
    /// `{"op": "free-keys", "keys": [key], ...}`: the key itself, since a stale
    /// `task-finished` can name a key the scheduler no longer has.
    FreeKeys { key: P, stimulus_id: P },
    /// `add_keys`' answer for replicas the scheduler does not want.
    RemoveReplicas { keys: Vec<P>, stimulus_id: P },
    /// `{"op": "steal-request", "key": ..., "stimulus_id": "steal-<n>"}`
    StealRequest { task: TaskId, stimulus_id: String },
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
    /// `_task_to_report_msg` of a forgotten task: `{"op": "cancelled-keys", "keys":
    /// [key], "reason": "already forgotten"}`.
    AlreadyForgotten {
        key: TaskId,
    },
    /// `stimulus_cancel`'s report to every client.
    Cancelled {
        keys: Vec<P>,
        reason: P,
        msg: P,
    },
}

/// What `stimulus_cancel` logs, in distributed's order: each recursive request on
/// dependents (`"Client %s requests to cancel %d keys"` and its event), each key cancelled.
#[derive(Clone, Debug)]
pub enum CancelEvent<P> {
    Request(usize),
    Cancel(P),
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
