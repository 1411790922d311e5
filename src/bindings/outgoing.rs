//! Messages on their way to a stream without becoming Python dicts: what a
//! `compute-task`, `free-keys` or `key-in-memory` says, taken from the state when it is sent (as
//! distributed builds its dict then), written by the engine's wire encoder when the
//! batch goes out (`wire_encode`), and made into distributed's dicts only when
//! something else asks for them (a comm the engine does not write, a log, a test).

use super::messages::{dict_list, priority_to_py, to_pickle, AsDict};
use crate::core::messages::{ClientMsg, WorkerMsg};
use crate::core::state::SchedulerState;
use crate::core::types::Priority;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{IntoPyDict, PyDict, PyList, PyTuple};
use smallvec::SmallVec;

type State = SchedulerState<Py<PyAny>>;

/// What distributed's `_task_to_msg` puts in a `compute-task`, in its order.
pub(crate) struct ComputeTask {
    pub key: Py<PyAny>,
    pub run_id: i64,
    pub priority: Priority,
    pub stimulus_id: String,
    pub who_has: Vec<(Py<PyAny>, SmallVec<[String; 2]>)>,
    pub nbytes: Vec<(Py<PyAny>, i64)>,
    pub run_spec: Option<Py<PyAny>>,
    pub resource_restrictions: Option<Vec<(String, f64)>>,
    pub actor: bool,
    pub annotations: Annotations,
    pub span_id: Option<Py<PyAny>>,
}

/// A `compute-task`'s `annotations`.
pub(crate) enum Annotations {
    /// the task's own, non-empty
    Task(Py<PyAny>),
    /// `{"span": <the group's span annotation>}`: what the task's would be
    Span(Py<PyAny>),
    /// `{}`
    Empty,
}

impl ComputeTask {
    /// The message of `m` (a `WorkerMsg::ComputeTask`) as the state says it now.
    pub(crate) fn new(py: Python<'_>, s: &State, m: &WorkerMsg<Py<PyAny>>) -> PyResult<Self> {
        let WorkerMsg::ComputeTask {
            task,
            run_id,
            priority,
            stimulus_time,
            who_has,
            nbytes,
        } = m
        else {
            unreachable!("a compute-task")
        };
        let ts = s.ts(*task);
        let group = s.group(ts.group);
        let span_annotation =
            (group.span_annotation.as_ref()).filter(|_| ts.span_annotation_pending);
        let annotations = match (&ts.annotations, span_annotation) {
            (Some(a), _) if a.bind(py).is_truthy()? => Annotations::Task(a.clone_ref(py)),
            (_, Some(ann)) => Annotations::Span(ann.clone_ref(py)),
            _ => Annotations::Empty,
        };
        Ok(Self {
            key: ts.key.clone_ref(py),
            run_id: *run_id,
            priority: *priority,
            stimulus_id: compute_task_stimulus_id(*stimulus_time),
            who_has: who_has
                .iter()
                .map(|(dep, workers)| {
                    let addrs = workers.iter().map(|w| s.ws(*w).address.clone()).collect();
                    (s.ts(*dep).key.clone_ref(py), addrs)
                })
                .collect(),
            nbytes: nbytes
                .iter()
                .map(|(dep, n)| (s.ts(*dep).key.clone_ref(py), *n))
                .collect(),
            run_spec: ts.run_spec.as_ref().map(|r| r.clone_ref(py)),
            resource_restrictions: ts.resource_restrictions().map(<[_]>::to_vec),
            actor: ts.actor,
            annotations,
            span_id: group.span_id.as_ref().map(|i| i.clone_ref(py)),
        })
    }

    /// distributed's dict.
    pub(crate) fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        d.set_item(intern!(py, "op"), intern!(py, "compute-task"))?;
        d.set_item(intern!(py, "key"), self.key.bind(py))?;
        d.set_item(intern!(py, "run_id"), self.run_id)?;
        d.set_item(intern!(py, "priority"), priority_to_py(py, &self.priority)?)?;
        d.set_item(intern!(py, "stimulus_id"), &self.stimulus_id)?;
        let wh = PyDict::new(py);
        for (dep, addrs) in &self.who_has {
            wh.set_item(
                dep.bind(py),
                PyTuple::new(py, addrs.iter().map(String::as_str))?,
            )?;
        }
        d.set_item(intern!(py, "who_has"), wh)?;
        let nb = PyDict::new(py);
        for (dep, n) in &self.nbytes {
            nb.set_item(dep.bind(py), *n)?;
        }
        d.set_item(intern!(py, "nbytes"), nb)?;
        let run_spec = self.run_spec.as_ref().map(|r| r.bind(py));
        d.set_item(intern!(py, "run_spec"), to_pickle(py)?.call1((run_spec,))?)?;
        match &self.resource_restrictions {
            Some(rr) => {
                let r = PyDict::new(py);
                for (k, v) in rr {
                    r.set_item(k, *v)?;
                }
                d.set_item(intern!(py, "resource_restrictions"), r)?;
            }
            None => d.set_item(intern!(py, "resource_restrictions"), py.None())?,
        }
        d.set_item(intern!(py, "actor"), self.actor)?;
        match &self.annotations {
            Annotations::Task(a) => d.set_item(intern!(py, "annotations"), a.bind(py))?,
            Annotations::Span(ann) => d.set_item(
                intern!(py, "annotations"),
                [(intern!(py, "span"), ann.bind(py))].into_py_dict(py)?,
            )?,
            Annotations::Empty => d.set_item(intern!(py, "annotations"), PyDict::new(py))?,
        }
        d.set_item(
            intern!(py, "span_id"),
            self.span_id.as_ref().map(|i| i.bind(py)),
        )?;
        Ok(d)
    }
}

/// `f"compute-task-{time}"`: a whole float as Python writes it (`1.0`, not `1`).
fn compute_task_stimulus_id(time: f64) -> String {
    if time.is_finite() && time.fract() == 0.0 && time.abs() < 1e16 {
        format!("compute-task-{time:.1}")
    } else {
        format!("compute-task-{time}")
    }
}

/// One message on its way.
pub(crate) enum Outgoing {
    ComputeTask(Box<ComputeTask>),
    /// `{"op": "key-in-memory", "key": key}`, with `"type": type_` when `with_type`
    KeyInMemory {
        key: Py<PyAny>,
        type_: Option<Py<PyAny>>,
        with_type: bool,
    },
    /// `{"op": "free-keys", "keys": [key], "stimulus_id": stimulus_id}`
    FreeKeys {
        key: Py<PyAny>,
        stimulus_id: Py<PyAny>,
    },
    /// any other message, as distributed's dict
    Dict(Py<PyDict>),
}

impl Outgoing {
    pub(crate) fn to_worker(py: Python<'_>, s: &State, m: &WorkerMsg<Py<PyAny>>) -> PyResult<Self> {
        Ok(match m {
            WorkerMsg::ComputeTask { .. } => {
                Self::ComputeTask(Box::new(ComputeTask::new(py, s, m)?))
            }
            WorkerMsg::FreeKeys { key, stimulus_id } => Self::FreeKeys {
                key: key.clone_ref(py),
                stimulus_id: stimulus_id.clone_ref(py),
            },
            _ => Self::Dict(super::messages::worker_msg(py, s, m)?.unbind()),
        })
    }

    pub(crate) fn to_client(py: Python<'_>, s: &State, m: &ClientMsg<Py<PyAny>>) -> PyResult<Self> {
        Ok(match m {
            ClientMsg::KeyInMemory {
                key,
                type_,
                with_type,
            } => Self::KeyInMemory {
                key: s.ts(*key).key.clone_ref(py),
                type_: type_.as_ref().map(|t| t.clone_ref(py)),
                with_type: *with_type,
            },
            _ => Self::Dict(super::messages::client_msg(py, s, m)?.unbind()),
        })
    }
}

impl AsDict for Outgoing {
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        match self {
            Self::ComputeTask(c) => c.to_dict(py),
            Self::KeyInMemory {
                key,
                type_,
                with_type,
            } => {
                let d = PyDict::new(py);
                d.set_item(intern!(py, "op"), intern!(py, "key-in-memory"))?;
                d.set_item(intern!(py, "key"), key.bind(py))?;
                if *with_type {
                    d.set_item(intern!(py, "type"), type_.as_ref().map(|t| t.bind(py)))?;
                }
                Ok(d)
            }
            Self::FreeKeys { key, stimulus_id } => {
                let d = PyDict::new(py);
                d.set_item(intern!(py, "op"), intern!(py, "free-keys"))?;
                d.set_item(intern!(py, "keys"), PyList::new(py, [key.bind(py)])?)?;
                d.set_item(intern!(py, "stimulus_id"), stimulus_id.bind(py))?;
                Ok(d)
            }
            Self::Dict(d) => Ok(d.bind(py).clone()),
        }
    }
}

/// A run of messages to one stream, in order, as one item of its `BatchedSend`'s
/// buffer: the engine's wire encoder writes them as the messages they stand for;
/// `messages()` gives distributed's dicts to anything else.
#[pyclass(frozen, module = "dask_rsched._core")]
pub(crate) struct Messages {
    pub(crate) items: Vec<Outgoing>,
}

#[pymethods]
impl Messages {
    /// The messages as distributed's dicts, a new list each time.
    fn messages<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        dict_list(py, &self.items)
    }

    fn __len__(&self) -> usize {
        self.items.len()
    }

    /// What `sizeof` of the dicts would say, roughly: the offload threshold of a
    /// batch compares against it (a run_spec counts as distributed counts its
    /// `ToPickle`: a small object).
    fn __sizeof__(&self) -> usize {
        64 + 1024 * self.items.len()
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!("Messages({})", self.messages(py)?.repr()?))
    }
}

#[cfg(test)]
mod tests {
    use super::compute_task_stimulus_id;

    #[test]
    fn stimulus_ids_write_floats_as_python_does() {
        assert_eq!(compute_task_stimulus_id(1733.0), "compute-task-1733.0");
        assert_eq!(compute_task_stimulus_id(1733.25), "compute-task-1733.25");
        assert_eq!(
            compute_task_stimulus_id(1764927000.123456),
            "compute-task-1764927000.123456"
        );
    }
}
