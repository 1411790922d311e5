//! `Engine`'s methods, one file per concept; each stimulus runs in a `Batch` and returns
//! `(client_msgs, worker_msgs)` (or `(result, client_msgs, worker_msgs)`).

mod batch;
mod clients;
mod graph;
mod hooks;
mod inspect;
mod stealing;
mod tasks;
mod workers;

pub use inspect::TaskIter;

use crate::bindings::shared::{Engine, HandleCache, State};
use crate::cell::StateCell;
use crate::core::state::Config;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyModule};
use pyo3::{PyTraverseError, PyVisit};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;

static PAYLOADS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

/// `dask_rsched._payloads`: the exceptions the scheduler makes itself.
pub(crate) fn payloads(py: Python<'_>) -> PyResult<&Bound<'_, PyModule>> {
    Ok(PAYLOADS
        .get_or_try_init(py, || {
            Ok::<_, PyErr>(py.import("dask_rsched._payloads")?.unbind())
        })?
        .bind(py))
}

/// The pickled `MemoryError` of `_add_to_processing`'s safety check.
fn memory_error_payload(
    key: &Py<PyAny>,
    ndep_bytes: i64,
    addr: &str,
    memory_limit: i64,
    has_dependents: bool,
) -> Py<PyAny> {
    Python::attach(|py| {
        let args = (key, ndep_bytes, addr, memory_limit, has_dependents);
        payloads(py)
            .and_then(|m| m.call_method1("memory_error", args))
            .map_or_else(|_| py.None(), Bound::unbind)
    })
}

/// A setting that must be a float > 0.
pub(crate) fn positive(what: &str, value: f64) -> PyResult<f64> {
    if value.is_nan() || value <= 0.0 {
        return Err(PyValueError::new_err(format!("{what} must be a float > 0")));
    }
    Ok(value)
}

/// The scheduler settings of the Dask config, as `SchedulerState` reads them.
fn config_from_dask(py: Python<'_>, validate: bool) -> PyResult<Config> {
    let dask_config = py.import("dask.config")?;
    let get = |k: &str| dask_config.call_method1(intern!(py, "get"), (k,));
    let utils = py.import("dask.utils")?;
    let parse_bytes = utils.getattr("parse_bytes")?;
    let parse_timedelta = utils.getattr("parse_timedelta")?;
    let sat = get("distributed.scheduler.worker-saturation")?;
    let worker_saturation = if sat.extract::<String>().is_ok_and(|s| s == "inf") {
        f64::INFINITY
    } else {
        positive("`distributed.scheduler.worker-saturation`", sat.extract()?)?
    };
    let mut default_task_durations = hashbrown::HashMap::new();
    let durations = get("distributed.scheduler.default-task-durations")?;
    for (k, v) in durations.cast::<PyDict>()?.iter() {
        default_task_durations.insert(k.extract()?, parse_timedelta.call1((v,))?.extract()?);
    }
    Ok(Config {
        bandwidth: parse_bytes
            .call1((get("distributed.scheduler.bandwidth")?,))?
            .extract::<f64>()?,
        worker_saturation,
        unknown_task_duration: parse_timedelta
            .call1((get("distributed.scheduler.unknown-task-duration")?,))?
            .extract()?,
        rootish_tg_threshold: get("distributed.scheduler.rootish-taskgroup")?.extract()?,
        rootish_tg_dependencies_threshold: get(
            "distributed.scheduler.rootish-taskgroup-dependencies",
        )?
        .extract()?,
        allowed_failures: get("distributed.scheduler.allowed-failures")?.extract()?,
        validate,
        // deque(maxlen=None) is unbounded (distributed's test config uses it)
        transition_log_maxlen: get("distributed.admin.low-level-log-length")?
            .extract::<Option<usize>>()?
            .unwrap_or(usize::MAX),
        erred_tasks_maxlen: get("distributed.diagnostics.erred-tasks.max-history")?
            .extract::<Option<usize>>()?
            .unwrap_or(usize::MAX),
        default_task_durations,
        memory_terminate: get("distributed.worker.memory.terminate")?.is_truthy()?,
        transition_counter_max: 0,
    })
}

#[pymethods]
impl Engine {
    /// Settings come from the Dask config, as `SchedulerState` reads them; a Scheduler's
    /// own arguments (`allowed_failures`, `worker_saturation`) override them. `aliases`
    /// and `task_metadata` are the Scheduler's own dicts (fresh ones by default).
    #[new]
    #[pyo3(signature = (*, validate = false, allowed_failures = None, worker_saturation = None,
                        work_stealing = false, aliases = None, task_metadata = None))]
    fn new(
        py: Python<'_>,
        validate: bool,
        allowed_failures: Option<i64>,
        worker_saturation: Option<f64>,
        work_stealing: bool,
        aliases: Option<Bound<'_, PyDict>>,
        task_metadata: Option<Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        // distributed's defaults are registered with dask.config on import
        let scheduler_module = py.import("distributed.scheduler")?;
        crate::core::entities::DEFAULT_DATA_SIZE.store(
            scheduler_module.getattr("DEFAULT_DATA_SIZE")?.extract()?,
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut config = config_from_dask(py, validate)?;
        if let Some(a) = allowed_failures {
            config.allowed_failures = a;
        }
        if let Some(w) = worker_saturation {
            config.worker_saturation = positive("worker_saturation", w)?;
        }
        let ff = intern!(py, "fire-and-forget");
        let mut state = State::new(config, ff.clone().into_any().unbind(), ff.hash()? as i64);
        let actor_lost = payloads(py)?.call_method0("actor_lost")?.unbind();
        state.set_payload_factories(actor_lost, Box::new(memory_error_payload));
        state.enable_stealing(work_stealing);
        state.run_spec_released = Some(crate::bindings::held::release);
        let clients = PyDict::new(py);
        clients.set_item(ff, 0u32)?;
        let new_dict = |d: Option<Bound<'_, PyDict>>| d.unwrap_or_else(|| PyDict::new(py)).unbind();
        Ok(Self {
            state: StateCell::new(state),
            clients: clients.unbind(),
            task_handles: HandleCache::default(),
            worker_handles: HandleCache::default(),
            client_handles: HandleCache::default(),
            group_handles: HandleCache::default(),
            prefix_handles: HandleCache::default(),
            worker_meta: Mutex::new(Vec::new()),
            aliases: new_dict(aliases),
            task_metadata: new_dict(task_metadata),
            other_group_names: PyDict::new(py).unbind(),
            prefix_of_first: PyDict::new(py).unbind(),
            stimuli: AtomicU64::new(0),
            stimulus_ns: AtomicU64::new(0),
        })
    }

    /// `SchedulerState.WORKER_SATURATION`
    #[getter]
    fn worker_saturation(&self) -> PyResult<f64> {
        Ok(self.read()?.config().worker_saturation)
    }

    #[setter]
    fn set_worker_saturation(&self, value: f64) -> PyResult<()> {
        let value = positive("worker_saturation", value)?;
        self.write()?.set_worker_saturation(value);
        Ok(())
    }

    /// `SchedulerState.transition_counter_max` (0 or False: off).
    #[getter]
    fn transition_counter_max(&self) -> PyResult<i64> {
        Ok(self.read()?.config().transition_counter_max)
    }

    #[setter]
    fn set_transition_counter_max(&self, value: i64) -> PyResult<()> {
        if value < 0 {
            return Err(PyValueError::new_err(format!(
                "transition_counter_max must be >= 0, got {value}"
            )));
        }
        self.write()?.set_transition_counter_max(value);
        Ok(())
    }

    /// `SchedulerState.bandwidth`: heartbeats update it (an exponential average).
    #[getter]
    fn bandwidth(&self) -> PyResult<f64> {
        Ok(self.read()?.config().bandwidth)
    }

    #[setter]
    fn set_bandwidth(&self, value: f64) -> PyResult<()> {
        let value = positive("bandwidth", value)?;
        self.write()?.set_bandwidth(value);
        Ok(())
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        // the transition hook (a bound method of the Scheduler that owns the engine);
        // while a stimulus has the state, it is not visited (the cycle survives this
        // collection)
        // a plain borrow: garbage collection must not wait (nor release the GIL)
        if let Ok(st) = self.state.borrow() {
            if let Some(data) = st.observer_data() {
                visit.call(data)?;
            }
        }
        self.task_handles.traverse(&visit)?;
        self.worker_handles.traverse(&visit)?;
        self.client_handles.traverse(&visit)?;
        self.group_handles.traverse(&visit)?;
        self.prefix_handles.traverse(&visit)?;
        Ok(())
    }

    fn __clear__(&mut self) {
        self.state.get_mut().set_observer(None);
        self.task_handles.lock().clear();
        self.worker_handles.lock().clear();
        self.client_handles.lock().clear();
        self.group_handles.lock().clear();
        self.prefix_handles.lock().clear();
    }
}
