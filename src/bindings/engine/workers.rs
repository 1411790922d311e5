//! Workers: joining, leaving, pausing, their containers (`running`, `idle`, ...), their
//! resources and the replicas they hold.

use super::batch::recs_py;
use crate::bindings::handles::{TaskStateHandle, WorkerStateHandle};
use crate::bindings::shared::{address_of, locked, parse_status, worker_of, Engine, State};
use crate::core::types::*;
use crate::core::workers::NewWorker;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString, PyTuple};

/// A worker's `{resource: quantity}` in the dict's order.
fn resource_pairs(resources: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, f64)>> {
    let mut out = Vec::new();
    if let Some(d) = resources {
        for (k, v) in d.iter() {
            out.push((k.extract::<String>()?, v.extract::<f64>()?));
        }
    }
    Ok(out)
}

/// A worker named by its address or by its handle (a removed worker included).
fn worker_ref(st: &State, worker: &Bound<'_, PyAny>) -> PyResult<WorkerId> {
    match worker.cast::<WorkerStateHandle>() {
        Ok(h) => Ok(h.get().id),
        Err(_) => worker_of(st, &worker.extract::<String>()?),
    }
}

#[pymethods]
impl Engine {
    /// `workers[address] = ws` in `Scheduler.add_worker`: the worker joins, with the
    /// bookkeeping distributed keeps around it (running, host info, totals, aliases,
    /// resources, idle/saturated); the unrunnable tasks it can run are rescheduled by the
    /// `transitions` that follow in `add_worker`.
    #[pyo3(signature = (address, *, server_id, nthreads, memory_limit = 0, name = None,
                        status = "running", resources = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_worker<'py>(
        &self,
        py: Python<'py>,
        address: &Bound<'py, PyAny>,
        server_id: &Bound<'py, PyAny>,
        nthreads: i64,
        memory_limit: i64,
        name: Option<&Bound<'py, PyAny>>,
        status: &str,
        resources: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<()> {
        let mut st = self.write()?;
        let host = py
            .import("distributed.comm.addressing")?
            .getattr("get_address_host")?
            .call1((address,))?
            .extract()?;
        let status = parse_status(status)?;
        let name_obj = name.unwrap_or(address);
        let w = st.add_worker(NewWorker {
            address: address.extract()?,
            hash: server_id.hash()? as i64,
            addr_hash: address.hash()? as i64,
            host,
            // host restrictions resolve through aliases, which only str names match
            name: name_obj.extract::<String>().ok(),
            nthreads,
            memory_limit,
            status,
            resources: resource_pairs(resources)?,
        })?;
        debug_assert_eq!(w.idx(), locked(&self.worker_meta).len());
        self.aliases.bind(py).set_item(name_obj, address)?;
        locked(&self.worker_meta).push((server_id.clone().unbind(), name_obj.clone().unbind()));
        Ok(())
    }

    /// `SchedulerState.bulk_schedule_unrunnable_after_adding_worker(ws)`: `{key:
    /// "processing"}` for the unrunnable tasks the worker can run, in the order
    /// distributed gives them.
    fn bulk_schedule_unrunnable_after_adding_worker<'py>(
        &self,
        py: Python<'py>,
        worker: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let mut st = self.write()?;
        let w = worker_ref(&st, worker)?;
        let recs = st.bulk_schedule_unrunnable_after_adding_worker(w);
        recs_py(py, &st, &recs)
    }

    /// `del Scheduler.workers[address]`: the worker leaves the scheduler's maps (its
    /// record stays for the steps of `remove_worker` that follow).
    fn detach_worker(&self, py: Python<'_>, address: &str) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_of(&st, address)?;
        st.detach_worker(w);
        let name = locked(&self.worker_meta)[w.idx()].1.clone_ref(py);
        let aliases = self.aliases.bind(py);
        if aliases
            .get_item(&name)?
            .is_some_and(|a| a.eq(address).unwrap_or(false))
        {
            aliases.del_item(&name)?;
        }
        Ok(())
    }

    /// A change distributed makes to a worker container: `running.add/discard(ws)`,
    /// `idle.pop(address)`, `idle_task_count.discard(ws)`, `saturated.discard(ws)`.
    fn update_worker_container(
        &self,
        container: &str,
        worker: &Bound<'_, PyAny>,
        add: bool,
    ) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_ref(&st, worker)?;
        match (container, add) {
            ("running", _) => st.set_running(w, add),
            ("idle", false) => st.idle_remove(w),
            ("idle_task_count", false) => st.idle_task_count_remove(w),
            ("saturated", false) => st.saturated_remove(w),
            _ => {
                return Err(PyValueError::new_err(format!(
                    "the engine keeps {container} itself"
                )))
            }
        }
        Ok(())
    }

    /// `Scheduler.add_resources` (`set_resources` handler): a KeyError for an unknown
    /// worker, as distributed's `self.workers[worker]`.
    #[pyo3(signature = (worker, resources = None))]
    fn add_resources(&self, worker: &str, resources: Option<&Bound<'_, PyDict>>) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_of(&st, worker)?;
        st.add_resources(w, &resource_pairs(resources)?);
        Ok(())
    }

    /// `SchedulerState.check_idle_saturated(ws, occ)` called from outside (tests and
    /// extensions re-classify workers; the order of `idle` and `saturated` follows).
    #[pyo3(signature = (worker, occ = -1.0))]
    fn check_idle_saturated(&self, worker: &str, occ: f64) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_of(&st, worker)?;
        st.check_idle_saturated_occ(w, Some(occ));
        Ok(())
    }

    /// `SchedulerState.add_replica(ts, ws)` (replicate and rebalance copy data).
    fn add_replica(&self, ts: &Bound<'_, TaskStateHandle>, ws: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_ref(&st, ws)?;
        if let Some(t) = ts.get().live_id(&st) {
            if !st.has_replica(t, w) {
                st.add_replica(t, w);
            }
        }
        Ok(())
    }

    /// `SchedulerState.remove_replica(ts, ws)` (the Active Memory Manager drops extra
    /// copies; `remove_worker` drops every replica of the worker it removes).
    fn remove_replica(
        &self,
        ts: &Bound<'_, TaskStateHandle>,
        ws: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let mut st = self.write()?;
        let w = worker_ref(&st, ws)?;
        if let Some(t) = ts.get().live_id(&st) {
            if st.has_replica(t, w) {
                st.remove_replica(t, w);
            }
        }
        Ok(())
    }

    /// `Scheduler.add_keys`: `(status, client_msgs, worker_msgs)`; keys the scheduler
    /// does not hold in memory are answered with `remove-replicas`.
    #[pyo3(signature = (worker, keys, stimulus_id = None))]
    fn add_keys<'py>(
        &self,
        py: Python<'py>,
        worker: &Bound<'py, PyAny>,
        keys: &Bound<'py, PyAny>,
        stimulus_id: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let sid = stimulus_id
            .cloned()
            .unwrap_or_else(|| py.None().into_bound(py));
        let mut b = self.batch(&sid)?;
        let Some(w) = b.st.worker_id(&address_of(worker)) else {
            return b.finish_with(py, "not found");
        };
        let keys = keys
            .try_iter()?
            .map(|k| {
                let k = k?;
                Ok((self.tid(&b.st, &k)?, k.unbind()))
            })
            .collect::<PyResult<Vec<_>>>()?
            .into_iter()
            .map(|(t, k)| (k, t))
            .collect();
        let stimulus_id = || match stimulus_id.filter(|s| s.is_truthy().unwrap_or(false)) {
            Some(s) => s.clone().unbind(),
            None => {
                let now = crate::core::state::now();
                PyString::new(py, &format!("redundant-replicas-{now}"))
                    .into_any()
                    .unbind()
            }
        };
        b.st.add_keys(w, keys, stimulus_id, &mut b.out);
        b.finish_with(py, "OK")
    }

    /// `Scheduler.release_worker_data`
    fn release_worker_data<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        worker: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let t = self.tid(&b.st, key)?;
        let r =
            b.st.release_worker_data(t, &address_of(worker), &mut b.out, &b.sid);
        b.finish(py, r)
    }
}
