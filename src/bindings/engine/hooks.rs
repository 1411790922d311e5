//! Plugins' `transition` between transitions: the core tells its observer right after
//! each transition, and the observer lends the core's state to the handles while
//! Python's hook runs (see `cell`).

use crate::bindings::messages::py_state;
use crate::bindings::shared::{parse_state, Engine, State};
use crate::cell::StateCell;
use crate::core::state::{ObservedTransition, TransitionObserver};

use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};

/// The core's `TransitionObserver::notify`: calls the Python hook (with the state lent
/// to the handles); the core drops a forgotten task's key after it, as `_transition`
/// does.
fn notify_transition(st: &mut State, tr: &ObservedTransition<'_, Py<PyAny>>) {
    Python::attach(|py| {
        let Some(data) = st.observer_data().map(|d| d.bind(py).clone()) else {
            return;
        };
        let result = (|| -> PyResult<()> {
            let data = data.cast::<PyTuple>()?;
            let hook = data.get_item(0)?;
            let key = tr.key.bind(py);
            let prefix = data.get_item(1)?;
            let wanted = prefix.is_none()
                || key.cast::<PyString>().is_ok_and(|k| {
                    k.to_str()
                        .is_ok_and(|k| prefix.extract::<&str>().is_ok_and(|p| k.starts_with(p)))
                });
            if wanted {
                let fields = match &tr.fields {
                    Some(f) => f.bind(py).clone(),
                    None => py.None().into_bound(py),
                };
                let args = (
                    key,
                    py_state(py, tr.start),
                    py_state(py, tr.finish),
                    tr.stimulus_id.bind(py),
                    fields,
                );
                StateCell::lend(st, || hook.call1(args))?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            e.write_unraisable(py, Some(&data));
        }
    })
}

#[pymethods]
impl Engine {
    /// Calls `hook(key, start, finish, stimulus_id, fields)` right after every
    /// transition, before the next, as `_transition` calls `SchedulerPlugin.transition`;
    /// `fields` are the stimulus' own (a dict) for the transition it asked for, `None`
    /// for the others. The hook can read and change the scheduler. `finishes` keeps only
    /// transitions into those states, `key_prefix` only those of str keys starting with
    /// it. `None` removes the hook.
    #[pyo3(signature = (hook, finishes = None, key_prefix = None))]
    fn set_transition_hook(
        &self,
        py: Python<'_>,
        hook: Option<Bound<'_, PyAny>>,
        finishes: Option<Vec<String>>,
        key_prefix: Option<String>,
    ) -> PyResult<()> {
        let observer = match hook {
            None => None,
            Some(hook) => {
                let finishes = match finishes {
                    None => u32::MAX,
                    Some(names) => names.iter().try_fold(0u32, |mask, name| {
                        Ok::<_, PyErr>(mask | (1 << parse_state(name)?.index()))
                    })?,
                };
                let data = (hook, key_prefix);
                Some(TransitionObserver {
                    notify: notify_transition,
                    finishes,
                    data: data.into_pyobject(py)?.into_any().unbind(),
                })
            }
        };
        self.write()?.set_observer(observer);
        Ok(())
    }
}
