//! Task events: a worker's `task-finished`, `task-erred`, `long-running`; transitions
//! asked for by name; retries; filling queue slots.

use super::batch::{stimuli_run, Batch};
use crate::bindings::incoming::{Finished, FinishedRun};
use crate::bindings::messages::{AsDict, RunOut};
use crate::bindings::shared::{address_of, byte_count, parse_state, run_id_of, Engine};
use crate::core::messages::StartStop;
use crate::core::state::Recs;
use crate::core::transitions::TransitionArgs;
use crate::core::types::*;
use pyo3::exceptions::PyKeyError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

/// `msg[name]`, a `KeyError` naming the field when it is missing.
fn field<'py>(
    msg: &Bound<'py, PyDict>,
    name: &Bound<'py, PyString>,
) -> PyResult<Bound<'py, PyAny>> {
    msg.get_item(name)?
        .ok_or_else(|| PyKeyError::new_err(name.clone().unbind()))
}

/// `msg[name]` unless missing or `None`.
fn opt_field<'py>(
    msg: &Bound<'py, PyDict>,
    name: &Bound<'py, PyString>,
) -> PyResult<Option<Py<PyAny>>> {
    Ok(msg
        .get_item(name)?
        .filter(|v| !v.is_none())
        .map(Bound::unbind))
}

/// The transition fields of a `task-erred` message (or of `_transition(..., "erred")`).
fn erred_args(
    msg: &Bound<'_, PyDict>,
    worker: Option<String>,
    cause: Option<TaskId>,
) -> PyResult<TransitionArgs<Py<PyAny>>> {
    Ok(TransitionArgs::Erred {
        worker,
        cause,
        exception: opt_field(msg, intern!(msg.py(), "exception"))?,
        traceback: opt_field(msg, intern!(msg.py(), "traceback"))?,
        exception_text: opt_field(msg, intern!(msg.py(), "exception_text"))?,
        traceback_text: opt_field(msg, intern!(msg.py(), "traceback_text"))?,
    })
}

/// `msg` without `run_id`, with `extra`: what plugins get with the stimulus' own
/// transition (distributed's `stimulus_task_*` pass the message on to `_transition`).
fn plugin_fields<'py>(
    msg: &Bound<'py, PyDict>,
    extra: &[(&str, &Bound<'py, PyAny>)],
) -> PyResult<Py<PyAny>> {
    let fields = msg.copy()?;
    if fields.contains("run_id")? {
        fields.del_item("run_id")?;
    }
    for (k, v) in extra {
        fields.set_item(k, v)?;
    }
    Ok(fields.into_any().unbind())
}

fn msg_dict<'py>(py: Python<'py>, msg: Option<&Bound<'py, PyDict>>) -> Bound<'py, PyDict> {
    msg.cloned().unwrap_or_else(|| PyDict::new(py))
}

/// `ts.metadata.update(metadata)` when the report has metadata (non-empty).
fn merge_metadata(
    py: Python<'_>,
    md: &mut Option<Py<PyAny>>,
    metadata: Option<&Py<PyAny>>,
) -> PyResult<()> {
    let Some(m) = metadata.filter(|m| m.bind(py).is_truthy().unwrap_or(false)) else {
        return Ok(());
    };
    let md = md.get_or_insert_with(|| PyDict::new(py).into_any().unbind());
    md.bind(py).call_method1(intern!(py, "update"), (m,))?;
    Ok(())
}

/// The fields of a `task-finished` report the transition to memory reads.
fn finished_args(
    py: Python<'_>,
    worker_addr: &str,
    msg: &Bound<'_, PyDict>,
) -> PyResult<TransitionArgs<Py<PyAny>>> {
    let mut startstops = Vec::new();
    if let Some(s) = opt_field(msg, intern!(py, "startstops"))? {
        for item in s.bind(py).try_iter()? {
            let item = item?;
            startstops.push(StartStop {
                action: item.get_item(intern!(py, "action"))?.extract()?,
                start: item.get_item(intern!(py, "start"))?.extract()?,
                stop: item.get_item(intern!(py, "stop"))?.extract()?,
            });
        }
    }
    Ok(TransitionArgs::Finished {
        worker: worker_addr.to_owned(),
        nbytes: match opt_field(msg, intern!(py, "nbytes"))? {
            Some(n) => byte_count(n.bind(py))?,
            None => -1,
        },
        type_: opt_field(msg, intern!(py, "type"))?,
        typename: match opt_field(msg, intern!(py, "typename"))? {
            Some(t) => t.bind(py).str()?.to_string(),
            None => String::new(),
        },
        startstops,
    })
}

/// A `task-finished` report: its dict (without `op`, `key` and `stimulus_id`), or
/// the fields the engine parsed from the stream.
#[derive(Clone, Copy)]
enum Report<'a, 'py> {
    Dict(&'a Bound<'py, PyDict>),
    Parsed(&'a Finished),
}

impl<'py> Report<'_, 'py> {
    fn run_id(self) -> PyResult<Option<i64>> {
        match self {
            Self::Dict(msg) => Ok(run_id_of(&field(msg, intern!(msg.py(), "run_id"))?)),
            Self::Parsed(f) => Ok(Some(f.run_id)),
        }
    }

    /// What a plugin's `transition` gets, as from the dict.
    fn plugin_fields(self, py: Python<'py>, worker: &Bound<'py, PyAny>) -> PyResult<Py<PyAny>> {
        match self {
            Self::Dict(msg) => plugin_fields(msg, &[("worker", worker)]),
            Self::Parsed(f) => {
                let msg = f.to_dict(py)?;
                for name in [
                    intern!(py, "op"),
                    intern!(py, "key"),
                    intern!(py, "stimulus_id"),
                ] {
                    msg.del_item(name)?;
                }
                plugin_fields(&msg, &[("worker", worker)])
            }
        }
    }

    fn merge_metadata(self, py: Python<'py>, md: &mut Option<Py<PyAny>>) -> PyResult<()> {
        match self {
            Self::Dict(msg) => {
                let metadata = opt_field(msg, intern!(py, "metadata"))?;
                merge_metadata(py, md, metadata.as_ref())
            }
            Self::Parsed(f) => merge_metadata(py, md, f.metadata.as_ref()),
        }
    }

    fn finished_args(
        self,
        py: Python<'py>,
        worker_addr: &str,
    ) -> PyResult<TransitionArgs<Py<PyAny>>> {
        match self {
            Self::Dict(msg) => finished_args(py, worker_addr, msg),
            Self::Parsed(f) => Ok(TransitionArgs::Finished {
                worker: worker_addr.to_owned(),
                nbytes: f.nbytes,
                type_: f.type_.as_ref().map(|t| t.clone_ref(py)),
                typename: f.typename.clone(),
                startstops: f.startstops.clone(),
            }),
        }
    }
}

impl Engine {
    /// `stimulus_task_finished` in `b`: the recommendations it leaves.
    fn task_finished<'py>(
        &self,
        py: Python<'py>,
        b: &mut Batch<'_>,
        key: &Bound<'py, PyAny>,
        worker: &Bound<'py, PyAny>,
        worker_addr: &str,
        report: Report<'_, 'py>,
    ) -> PyResult<Recs> {
        let t = self.tid(&b.st, key)?;
        let run_id = report.run_id()?;
        if let Some(t) = t.filter(|_| b.st.observes(TaskStateState::Memory)) {
            let fields = report.plugin_fields(py, worker)?;
            b.st.set_own_transition(t, TaskStateState::Memory, fields);
        }
        let mut prepare_err = None;
        let prepare = |md: &mut Option<Py<PyAny>>| {
            let r = report
                .merge_metadata(py, md)
                .and_then(|()| report.finished_args(py, worker_addr));
            r.map_err(|e| prepare_err = Some(e)).ok()
        };
        let key_p = key.clone().unbind();
        let r = b.st.stimulus_task_finished(
            &key_p,
            t,
            worker_addr,
            run_id,
            prepare,
            &mut b.out,
            &b.sid,
        );
        if let Some(e) = prepare_err {
            return Err(e);
        }
        b.check(py, r)
    }

    /// `stimulus_task_erred` in `b`: the recommendations it leaves.
    fn task_erred(
        &self,
        py: Python<'_>,
        b: &mut Batch<'_>,
        key: &Bound<'_, PyAny>,
        msg: &Bound<'_, PyDict>,
    ) -> PyResult<Recs> {
        let t = self.tid(&b.st, key)?;
        let worker = field(msg, intern!(msg.py(), "worker"))?;
        let worker_addr = address_of(&worker);
        let run_id = run_id_of(&field(msg, intern!(msg.py(), "run_id"))?);
        if let Some(t) = t.filter(|_| b.st.observes(TaskStateState::Erred)) {
            let fields = plugin_fields(msg, &[("cause", key), ("worker", &worker)])?;
            b.st.set_own_transition(t, TaskStateState::Erred, fields);
        }
        let args = erred_args(msg, None, None)?;
        let r =
            b.st.stimulus_task_erred(t, &worker_addr, run_id, args, &mut b.out, &b.sid);
        b.check(py, r)
    }
}

#[pymethods]
impl Engine {
    /// `Scheduler.handle_task_finished`: the stimulus, its recommendations carried out,
    /// then `stimulus_queue_slots_maybe_opened`. A worker the scheduler does not know
    /// is ignored.
    #[pyo3(signature = (key, worker, stimulus_id, **msg))]
    fn handle_task_finished<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        msg: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let addr = address_of(worker);
        if b.st.worker_id(&addr).is_none() {
            return b.finish(py, Ok(()));
        }
        let msg = msg_dict(py, msg);
        let recs = self.task_finished(py, &mut b, key, worker, &addr, Report::Dict(&msg))?;
        let r = b.st.transitions_then_fill_queue(recs, &mut b.out, &b.sid);
        b.finish(py, r)
    }

    /// A run of `task-finished` messages from one worker's stream, each handled as
    /// `handle_task_finished(key, worker, stimulus_id, **rest)` in its own stimulus, in
    /// order. Returns `(client_msgs, worker_msgs, error)`: the messages of every
    /// message handled, and the exception that stopped the run (the messages after it
    /// are not handled, as distributed's stream loop stops at a handler's exception).
    /// `msgs` is a list of dicts the caller owns (their `key` and `stimulus_id` are
    /// taken out of them) or a `FinishedRun`. With `direct`, each destination's
    /// messages are one `Messages`.
    fn handle_task_finished_batch<'py>(
        &self,
        py: Python<'py>,
        worker: &Bound<'py, PyAny>,
        msgs: &Bound<'py, PyAny>,
        direct: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let addr = address_of(worker);
        let one = |key: &Bound<'py, PyAny>,
                   sid: &Bound<'py, PyAny>,
                   report: Report<'_, 'py>,
                   run: &mut RunOut<'py>| {
            let mut b = self.batch(sid)?;
            if b.st.worker_id(&addr).is_none() {
                return b.finish_into(py, Ok(()), run);
            }
            let recs = self.task_finished(py, &mut b, key, worker, &addr, report)?;
            let r = b.st.transitions_then_fill_queue(recs, &mut b.out, &b.sid);
            b.finish_into(py, r, run)
        };
        if let Ok(finished) = msgs.cast::<FinishedRun>() {
            return stimuli_run(py, &finished.get().items, direct, |f, run| {
                let report = Report::Parsed(f);
                one(f.key.bind(py), f.stimulus_id.bind(py), report, run)
            });
        }
        let msgs: Vec<Bound<'py, PyDict>> = msgs.extract()?;
        stimuli_run(py, msgs, direct, |msg, run| {
            let key = field(&msg, intern!(py, "key"))?;
            let sid = field(&msg, intern!(py, "stimulus_id"))?;
            msg.del_item(intern!(py, "key"))?;
            msg.del_item(intern!(py, "stimulus_id"))?;
            one(&key, &sid, Report::Dict(&msg), run)
        })
    }

    /// `SchedulerState.stimulus_task_finished`: `(recommendations, client_msgs,
    /// worker_msgs)`, the recommendations not yet carried out.
    #[pyo3(signature = (key, worker, stimulus_id, **msg))]
    fn stimulus_task_finished<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        msg: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let addr = address_of(worker);
        let msg = msg_dict(py, msg);
        let recs = self.task_finished(py, &mut b, key, worker, &addr, Report::Dict(&msg))?;
        let recs = b.recs_py(py, &recs)?;
        b.finish_with(py, recs)
    }

    /// `Scheduler.handle_task_erred`: the stimulus, its recommendations carried out,
    /// then `stimulus_queue_slots_maybe_opened`.
    #[pyo3(signature = (key, stimulus_id, **msg))]
    fn handle_task_erred<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        msg: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let recs = self.task_erred(py, &mut b, key, &msg_dict(py, msg))?;
        let r = b.st.transitions_then_fill_queue(recs, &mut b.out, &b.sid);
        b.finish(py, r)
    }

    /// `SchedulerState.stimulus_task_erred`: `(recommendations, client_msgs,
    /// worker_msgs)`, the recommendations not yet carried out.
    #[pyo3(signature = (key, stimulus_id, **msg))]
    fn stimulus_task_erred<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        msg: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let recs = self.task_erred(py, &mut b, key, &msg_dict(py, msg))?;
        let recs = b.recs_py(py, &recs)?;
        b.finish_with(py, recs)
    }

    /// `SchedulerState._transition(key, finish, stimulus_id, **kwargs)`: one transition
    /// (an `erred` one with the exception and cause the kwargs give, as the no-worker
    /// timeouts and `remove_worker` pass them); plugins get the kwargs with it.
    /// `(recommendations, client_msgs, worker_msgs)`, the recommendations not carried
    /// out. Unknown keys are ignored.
    #[pyo3(signature = (key, finish, stimulus_id, **kwargs))]
    fn transition<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        finish: &str,
        stimulus_id: &Bound<'py, PyAny>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let finish = parse_state(finish)?;
        let mut b = self.batch(stimulus_id)?;
        let Some(t) = self.tid(&b.st, key)? else {
            return b.finish_with(py, PyDict::new(py));
        };
        let kwargs = msg_dict(py, kwargs);
        let cause = kwargs.get_item("cause")?.filter(|c| !c.is_none());
        let args = if finish == TaskStateState::Erred
            && (cause.is_some() || opt_field(&kwargs, intern!(kwargs.py(), "exception"))?.is_some())
        {
            let cause = match cause {
                Some(c) => self.tid(&b.st, &c)?,
                None => Some(t),
            };
            let worker = match kwargs.get_item("worker")?.filter(|w| !w.is_none()) {
                Some(w) => Some(w.extract()?),
                None => None,
            };
            erred_args(&kwargs, worker, cause)?
        } else {
            TransitionArgs::None
        };
        if b.st.observes(finish) {
            b.st.set_own_transition(t, finish, kwargs.copy()?.into_any().unbind());
        }
        let r = b.st.transition(t, finish, &b.sid, args, &mut b.out);
        let recs = b.check(py, r)?;
        let recs = b.recs_py(py, &recs)?;
        b.finish_with(py, recs)
    }

    /// `SchedulerState.transitions`: runs `recommendations` (key -> state name) to
    /// completion. Unknown keys are ignored as distributed ignores them.
    fn transitions<'py>(
        &self,
        py: Python<'py>,
        recommendations: &Bound<'py, PyDict>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let mut recs = Recs::new();
        for (k, v) in recommendations.iter() {
            let finish = parse_state(&v.extract::<String>()?)?;
            if let Some(t) = self.tid(&b.st, &k)? {
                recs.insert(t, finish);
            }
        }
        let r = b.st.transitions_loop(recs, &mut b.out, &b.sid);
        b.finish(py, r)
    }

    /// `Scheduler.stimulus_queue_slots_maybe_opened`
    fn stimulus_queue_slots_maybe_opened<'py>(
        &self,
        py: Python<'py>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let r = b.st.stimulus_queue_slots_maybe_opened(&mut b.out, &b.sid);
        b.finish(py, r)
    }

    /// `Scheduler.handle_long_running`
    #[pyo3(signature = (key, worker, run_id, compute_duration, stimulus_id))]
    fn handle_long_running<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &Bound<'py, PyAny>,
        run_id: &Bound<'py, PyAny>,
        compute_duration: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let worker = address_of(worker);
        // distributed ignores an unknown worker's report before it looks at the key
        if b.st.worker_id(&worker).is_none() {
            return b.finish(py, Ok(()));
        }
        let t = self.tid(&b.st, key)?;
        let compute_duration = match compute_duration.extract::<Option<f64>>() {
            Ok(d) => Ok(d),
            Err(_) => Err(CoreError::Invalid(format!(
                "long-running: compute_duration must be a number or None, got {}",
                compute_duration.repr()?
            ))),
        };
        let r = b.st.handle_long_running(
            t,
            &worker,
            run_id_of(run_id),
            compute_duration,
            &mut b.out,
            &b.sid,
        );
        b.finish(py, r)
    }

    /// `Scheduler.stimulus_retry`: `(seen keys, client_msgs, worker_msgs)`.
    fn stimulus_retry<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let ids = keys
            .try_iter()?
            .map(|k| self.tid_required(&b.st, &k?))
            .collect::<PyResult<Vec<_>>>()?;
        let r = b.st.stimulus_retry(&ids, &mut b.out, &b.sid);
        let seen = b.check(py, r)?;
        let seen = PyTuple::new(py, seen.iter().map(|t| b.st.ts(*t).key.bind(py)))?;
        b.finish_with(py, seen)
    }
}
