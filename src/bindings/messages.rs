//! Core messages -> distributed's message dicts.

use super::outgoing::{ComputeTask, Messages, Outgoing};
use crate::core::messages::{ClientMsg, Outbox, WorkerMsg};
use crate::core::state::SchedulerState;
use crate::core::types::{Num, Priority, TaskStateState};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};
use pyo3::{intern, IntoPyObjectExt};

type State = SchedulerState<Py<PyAny>>;

static TO_PICKLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

pub(crate) fn to_pickle(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    Ok(TO_PICKLE
        .get_or_try_init(py, || -> PyResult<_> {
            Ok(py
                .import("distributed.protocol.serialize")?
                .getattr("ToPickle")?
                .unbind())
        })?
        .bind(py))
}

pub fn num_to_py(py: Python<'_>, n: Num) -> PyResult<Bound<'_, PyAny>> {
    match n {
        Num::Int(i) => i.into_bound_py_any(py),
        Num::Float(f) => f.into_bound_py_any(py),
    }
}

pub fn priority_to_py<'py>(py: Python<'py>, p: &Priority) -> PyResult<Bound<'py, PyTuple>> {
    PyTuple::new(
        py,
        [
            num_to_py(py, p.get(0))?,
            num_to_py(py, p.get(1))?,
            num_to_py(py, p.get(2))?,
        ],
    )
}

fn opt<'py>(py: Python<'py>, v: &Option<Py<PyAny>>) -> Bound<'py, PyAny> {
    match v {
        Some(o) => o.bind(py).clone(),
        None => py.None().into_bound(py),
    }
}

pub fn worker_msg<'py>(
    py: Python<'py>,
    s: &State,
    m: &WorkerMsg<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match m {
        WorkerMsg::ComputeTask { .. } => return ComputeTask::new(py, s, m)?.to_dict(py),
        WorkerMsg::FreeKeys { .. } => return Outgoing::to_worker(py, s, m)?.to_dict(py),
        WorkerMsg::RemoveReplicas { keys, stimulus_id } => {
            d.set_item(intern!(py, "op"), intern!(py, "remove-replicas"))?;
            d.set_item(
                intern!(py, "keys"),
                PyList::new(py, keys.iter().map(|k| k.bind(py)))?,
            )?;
            d.set_item(intern!(py, "stimulus_id"), stimulus_id.bind(py))?;
        }
        WorkerMsg::StealRequest { task, stimulus_id } => {
            d.set_item(intern!(py, "op"), intern!(py, "steal-request"))?;
            d.set_item(intern!(py, "key"), s.ts(*task).key.bind(py))?;
            d.set_item(intern!(py, "stimulus_id"), stimulus_id)?;
        }
    }
    Ok(d)
}

pub fn client_msg<'py>(
    py: Python<'py>,
    s: &State,
    m: &ClientMsg<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match m {
        ClientMsg::KeyInMemory { .. } => return Outgoing::to_client(py, s, m)?.to_dict(py),
        ClientMsg::KeyInMemoryWorkers { key, workers } => {
            d.set_item(intern!(py, "op"), intern!(py, "key-in-memory"))?;
            d.set_item(intern!(py, "key"), s.ts(*key).key.bind(py))?;
            d.set_item(intern!(py, "workers"), PyList::new(py, workers)?)?;
        }
        ClientMsg::LostData { key } => {
            d.set_item(intern!(py, "op"), intern!(py, "lost-data"))?;
            d.set_item(intern!(py, "key"), s.ts(*key).key.bind(py))?;
        }
        ClientMsg::TaskErred {
            key,
            exception,
            traceback,
        } => {
            d.set_item(intern!(py, "op"), intern!(py, "task-erred"))?;
            d.set_item(intern!(py, "key"), s.ts(*key).key.bind(py))?;
            d.set_item(intern!(py, "exception"), opt(py, exception))?;
            d.set_item(intern!(py, "traceback"), opt(py, traceback))?;
        }
        ClientMsg::TaskRetried { key } => {
            d.set_item(intern!(py, "op"), intern!(py, "task-retried"))?;
            d.set_item(intern!(py, "key"), s.ts(*key).key.bind(py))?;
        }
        ClientMsg::AlreadyForgotten { key } => {
            d.set_item(intern!(py, "op"), intern!(py, "cancelled-keys"))?;
            d.set_item(
                intern!(py, "keys"),
                PyList::new(py, [s.ts(*key).key.bind(py)])?,
            )?;
            d.set_item(intern!(py, "reason"), intern!(py, "already forgotten"))?;
        }
        ClientMsg::Cancelled { keys, reason, msg } => {
            d.set_item(intern!(py, "op"), intern!(py, "cancelled-keys"))?;
            d.set_item(
                intern!(py, "keys"),
                PyList::new(py, keys.iter().map(|k| k.bind(py)))?,
            )?;
            d.set_item(intern!(py, "reason"), reason.bind(py))?;
            d.set_item(intern!(py, "msg"), msg.bind(py))?;
        }
    }
    Ok(d)
}

/// `(client_msgs, worker_msgs)` as distributed's `Msgs` dicts.
pub fn outbox_to_py<'py>(
    py: Python<'py>,
    s: &State,
    out: &Outbox<Py<PyAny>>,
) -> PyResult<Bound<'py, PyTuple>> {
    let mut run = RunOut::new(py, false);
    run.add(s, out)?;
    let (cm, wm) = run.into_py()?;
    PyTuple::new(py, [cm.into_any(), wm.into_any()])
}

/// The messages of one or more stimuli on their way to the streams, per destination
/// in the order first met: distributed's dicts, or, when the scheduler hands them to
/// streams the engine writes (`direct`), one `Messages` per destination.
pub(crate) struct RunOut<'py> {
    py: Python<'py>,
    direct: bool,
    clients: Vec<(Py<PyAny>, Vec<Outgoing>)>,
    client_index: hashbrown::HashMap<crate::core::types::ClientId, usize>,
    workers: Vec<(String, Vec<Outgoing>)>,
    worker_index: hashbrown::HashMap<String, usize>,
}

impl<'py> RunOut<'py> {
    pub(crate) fn new(py: Python<'py>, direct: bool) -> Self {
        Self {
            py,
            direct,
            clients: Vec::new(),
            client_index: hashbrown::HashMap::new(),
            workers: Vec::new(),
            worker_index: hashbrown::HashMap::new(),
        }
    }

    /// A stimulus's messages, after those of the stimuli before it.
    pub(crate) fn add(&mut self, s: &State, out: &Outbox<Py<PyAny>>) -> PyResult<()> {
        let py = self.py;
        for (c, msgs) in out.client_msgs.iter() {
            // the fire-and-forget client has no comm: send_all drops these
            if *c == s.fire_and_forget() {
                continue;
            }
            let clients = &mut self.clients;
            let i = *self.client_index.entry(*c).or_insert_with(|| {
                clients.push((s.client(*c).client_key.clone_ref(py), Vec::new()));
                clients.len() - 1
            });
            for m in msgs {
                self.clients[i].1.push(Outgoing::to_client(py, s, m)?);
            }
        }
        for (w, msgs) in out.worker_msgs.iter() {
            let address = &s.ws(*w).address;
            let i = match self.worker_index.get(address) {
                Some(i) => *i,
                None => {
                    self.workers.push((address.clone(), Vec::new()));
                    self.worker_index
                        .insert(address.clone(), self.workers.len() - 1);
                    self.workers.len() - 1
                }
            };
            for m in msgs {
                self.workers[i].1.push(Outgoing::to_worker(py, s, m)?);
            }
        }
        Ok(())
    }

    /// `(client_msgs, worker_msgs)`: `{destination: [msg, ...]}`, or `{destination:
    /// [Messages]}` when direct.
    pub(crate) fn into_py(self) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let py = self.py;
        let direct = self.direct;
        let msgs = |items: Vec<Outgoing>| -> PyResult<Bound<'py, PyList>> {
            if direct {
                PyList::new(py, [Bound::new(py, Messages { items })?])
            } else {
                dict_list(py, &items)
            }
        };
        let client_msgs = PyDict::new(py);
        for (client, items) in self.clients {
            client_msgs.set_item(client, msgs(items)?)?;
        }
        let worker_msgs = PyDict::new(py);
        for (address, items) in self.workers {
            worker_msgs.set_item(address, msgs(items)?)?;
        }
        Ok((client_msgs, worker_msgs))
    }
}

/// A message kept in another form than its dict (`Outgoing`, `Finished`).
pub(crate) trait AsDict {
    /// distributed's dict of the message.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>>;
}

/// The messages' dicts, in a new list.
pub(crate) fn dict_list<'py, T: AsDict>(
    py: Python<'py>,
    items: &[T],
) -> PyResult<Bound<'py, PyList>> {
    let l = PyList::empty(py);
    for m in items {
        l.append(m.to_dict(py)?)?;
    }
    Ok(l)
}

/// A task state as an interned Python string (handles and the transition replay read
/// states per task; interning saves building a new string each time).
pub fn py_state<'py>(py: Python<'py>, state: TaskStateState) -> &'py Bound<'py, PyString> {
    match state {
        TaskStateState::Released => intern!(py, "released"),
        TaskStateState::Waiting => intern!(py, "waiting"),
        TaskStateState::NoWorker => intern!(py, "no-worker"),
        TaskStateState::Queued => intern!(py, "queued"),
        TaskStateState::Processing => intern!(py, "processing"),
        TaskStateState::Memory => intern!(py, "memory"),
        TaskStateState::Erred => intern!(py, "erred"),
        TaskStateState::Forgotten => intern!(py, "forgotten"),
    }
}
