//! Clients: joining and leaving, wanting, releasing and cancelling keys.

use super::batch::stimuli_run;
use crate::bindings::shared::{Engine, State};
use crate::core::messages::CancelEvent;
use crate::core::state::Recs;
use crate::core::types::*;
use pyo3::exceptions::{PyKeyError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyTuple};

impl Engine {
    /// The tasks of the known keys among `keys`, in order.
    fn known_tasks(&self, st: &State, keys: &Bound<'_, PyAny>) -> PyResult<Vec<TaskId>> {
        let mut ids = Vec::new();
        for k in keys.try_iter()? {
            if let Some(t) = self.tid(st, &k?)? {
                ids.push(t);
            }
        }
        Ok(ids)
    }
}

#[pymethods]
impl Engine {
    /// Registers a client (as `Scheduler.add_client` does for the state).
    fn add_client(&self, py: Python<'_>, client: &Bound<'_, PyAny>) -> PyResult<()> {
        self.client_id(py, &mut *self.write()?, client)?;
        Ok(())
    }

    /// Forgets a client (`del Scheduler.clients[client]`, after `remove_client` released
    /// its keys): broadcasts no longer reach it and a client reconnecting under the same
    /// id starts afresh. Raises `ValueError` while it still wants keys.
    fn remove_client(&self, py: Python<'_>, client: &Bound<'_, PyAny>) -> PyResult<()> {
        let mut st = self.write()?;
        let Some(c) = self.known_client(py, client)? else {
            return Ok(());
        };
        if !st.remove_client(c) {
            return Err(PyValueError::new_err(format!(
                "client {client} still wants keys; release them first"
            )));
        }
        self.clients.bind(py).del_item(client)
    }

    /// `Scheduler.client_desires_keys` (unknown keys are skipped); reports keys already in
    /// memory or erred.
    fn client_desires_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(&py.None().into_bound(py))?;
        let c = self.client_id(py, &mut b.st, client)?;
        let ids = self.known_tasks(&b.st, keys)?;
        b.st.client_desires_keys(&ids, c, &mut b.out);
        b.finish(py, Ok(()))
    }

    /// `Scheduler.client_releases_keys`: a `KeyError` for an unknown client.
    fn client_releases_keys<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let c = self
            .known_client(py, client)?
            .ok_or_else(|| PyKeyError::new_err(client.clone().unbind()))?;
        let ids = self.known_tasks(&b.st, keys)?;
        let mut recs = Recs::new();
        b.st.client_releases_keys_inner(&ids, c, &mut recs);
        let r = b.st.transitions_then_fill_queue(recs, &mut b.out, &b.sid);
        b.finish(py, r)
    }

    /// `client_releases_keys(keys, client, stimulus_id)` for each `(keys, client,
    /// stimulus_id)` of a client stream's run of `client-releases-keys` messages, each
    /// its own stimulus, in one call: `(client_msgs, worker_msgs, error)`, the messages
    /// of those handled before an error that stopped the run (as `Messages` when
    /// `direct`).
    fn client_releases_keys_batch<'py>(
        &self,
        py: Python<'py>,
        runs: Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>)>,
        direct: bool,
    ) -> PyResult<Bound<'py, PyTuple>> {
        stimuli_run(py, runs, direct, |(keys, client, stimulus_id), run| {
            let mut b = self.batch(&stimulus_id)?;
            // as distributed: the keys listed, then the client looked up
            let keys = PyList::new(py, keys.try_iter()?.collect::<PyResult<Vec<_>>>()?)?;
            let c = self
                .known_client(py, &client)?
                .ok_or_else(|| PyKeyError::new_err(client.clone().unbind()))?;
            let ids = self.known_tasks(&b.st, keys.as_any())?;
            let mut recs = Recs::new();
            b.st.client_releases_keys_inner(&ids, c, &mut recs);
            let r = b.st.transitions_then_fill_queue(recs, &mut b.out, &b.sid);
            b.finish_into(py, r, run)
        })
    }

    /// `Scheduler.stimulus_cancel` for a known client (an unknown one changes nothing):
    /// `(log, client_msgs, worker_msgs)`, the `cancelled-keys` report to every client
    /// included. `log` is what distributed logs, in its order: `("request", n)` for each
    /// recursive request on dependents, `("cancel", key)` for each key cancelled.
    #[pyo3(signature = (keys, client, force, reason, msg, stimulus_id))]
    #[allow(clippy::too_many_arguments)]
    fn stimulus_cancel<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyAny>,
        client: &Bound<'py, PyAny>,
        force: bool,
        reason: &Bound<'py, PyAny>,
        msg: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(stimulus_id)?;
        let mut log = Vec::new();
        if let Some(c) = self.known_client(py, client)? {
            let ids = self.known_tasks(&b.st, keys)?;
            let (reason, msg) = (reason.clone().unbind(), msg.clone().unbind());
            let r =
                b.st.stimulus_cancel(&ids, c, force, &reason, &msg, &mut b.out, &b.sid, &mut log);
            b.check(py, r)?;
        }
        let entries = PyList::empty(py);
        for e in log {
            match e {
                CancelEvent::Request(n) => entries.append(("request", n))?,
                CancelEvent::Cancel(k) => entries.append(("cancel", k))?,
            }
        }
        b.finish_with(py, entries)
    }
}
