//! Clients wanting and releasing keys, and what they are told about them.

use crate::core::messages::*;
use crate::core::pyset::PySet;
use crate::core::state::*;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use smallvec::SmallVec;

impl<P: Clone> SchedulerState<P> {
    /// `Scheduler.client_desires_keys`, with its reports on keys already done.
    pub fn client_desires_keys(&mut self, keys: &[TaskId], c: ClientId, out: &mut Outbox<P>) {
        let ch = self.chash(c);
        for &t in keys {
            if self.task(t).is_none() {
                continue;
            }
            let th = self.thash(t);
            self.ts_mut(t)
                .rare_mut()
                .who_wants
                .get_or_insert_with(PySet::new)
                .insert(c, ch);
            self.clients[c.idx()].wants_what.insert(t, th);
            if matches!(self.ts(t).state, S::Memory | S::Erred) {
                self.report_on_key(t, Some(c), out);
            }
        }
    }

    /// `Scheduler.report_on_key(ts=ts, client=client)`: `_task_to_report_msg` to the
    /// clients wanting the key, then to `client`. The fire-and-forget client has no comm.
    pub fn report_on_key(&mut self, t: TaskId, client: Option<ClientId>, out: &mut Outbox<P>) {
        let ts = self.ts(t);
        let msg = match ts.state {
            S::Memory => ClientMsg::KeyInMemory {
                key: t,
                type_: None,
                with_type: false,
            },
            S::Erred => {
                let f = self.ts(ts.exception_blame().expect("erred task has a blame"));
                ClientMsg::TaskErred {
                    key: t,
                    exception: f.exception().cloned(),
                    traceback: f.traceback().cloned(),
                }
            }
            S::Forgotten => ClientMsg::AlreadyForgotten { key: t },
            _ => return,
        };
        let mut targets: Vec<ClientId> = self
            .wanters(t)
            .into_iter()
            .filter(|c| Some(*c) != client)
            .collect();
        targets.extend(client);
        for c in targets {
            if c != self.fire_and_forget {
                out.to_client(c, msg.clone());
            }
        }
    }

    /// The end of `_create_taskstate_from_graph`: a touched task already in memory or
    /// erred is reported to the submitting client.
    pub fn report_if_done(&mut self, t: TaskId, c: ClientId, out: &mut Outbox<P>) {
        if self
            .task(t)
            .is_some_and(|ts| matches!(ts.state, S::Memory | S::Erred))
        {
            self.report_on_key(t, Some(c), out);
        }
    }

    /// `_client_releases_keys`
    pub fn client_releases_keys_inner(&mut self, keys: &[TaskId], c: ClientId, recs: &mut Recs) {
        let ch = self.chash(c);
        for &t in keys {
            if self.task(t).is_none() {
                continue;
            }
            let th = self.thash(t);
            if !self.clients[c.idx()].wants_what.contains(t, th) {
                continue;
            }
            self.clients[c.idx()].wants_what.remove(t, th);
            let ts = self.ts_mut(t);
            if let Some(s) = ts.rare.as_mut().and_then(|r| r.who_wants.as_mut()) {
                if !s.is_empty() {
                    s.remove(c, ch);
                }
            }
            if !ts.has_who_wants() {
                if ts.dependents.is_empty() {
                    recs.insert(t, S::Forgotten);
                } else if ts.state != S::Erred && !ts.has_waiters() {
                    recs.insert(t, S::Released);
                }
            }
        }
    }

    /// `ts.who_wants or ()` in iteration order.
    pub fn wanters(&self, t: TaskId) -> SmallVec<[ClientId; 2]> {
        self.ts(t)
            .who_wants()
            .map(|s| s.iter().collect())
            .unwrap_or_default()
    }

    /// `Scheduler.stimulus_cancel` for a known client: cancels the keys nobody else wants
    /// (all of them with `force`) and, first, their dependents, recursively; each level
    /// releases what it cancelled for the clients concerned and reports `cancelled-keys`
    /// to every client. `log` gets what distributed logs, in its order.
    #[allow(clippy::too_many_arguments)]
    pub fn stimulus_cancel(
        &mut self,
        keys: &[TaskId],
        c: ClientId,
        force: bool,
        reason: &P,
        msg: &P,
        out: &mut Outbox<P>,
        stimulus_id: &P,
        log: &mut Vec<CancelEvent<P>>,
    ) -> CoreResult<()> {
        let mut cancelled = Vec::new();
        let mut clients: Vec<ClientId> = Vec::new();
        for &t in keys {
            if self.task(t).is_none() {
                continue;
            }
            let wanters = self.wanters(t);
            if force || wanters.as_slice() == [c] {
                let dependents: Vec<TaskId> = self.ts(t).dependents.iter().collect();
                if !dependents.is_empty() {
                    log.push(CancelEvent::Request(dependents.len()));
                    self.stimulus_cancel(
                        &dependents,
                        c,
                        force,
                        reason,
                        msg,
                        out,
                        stimulus_id,
                        log,
                    )?;
                }
                log.push(CancelEvent::Cancel(self.ts(t).key.clone()));
                cancelled.push(t);
            }
            // `assert ts.who_wants`, read after the recursion
            let wanters = self.wanters(t);
            if wanters.is_empty() {
                return Err(CoreError::Validation(
                    "assertion failed: ts.who_wants".into(),
                ));
            }
            if force {
                clients.extend(wanters);
            } else {
                clients.push(c);
            }
        }
        let keys: Vec<P> = cancelled.iter().map(|t| self.ts(*t).key.clone()).collect();
        // distributed calls client_releases_keys once per entry; every call after a
        // client's first finds nothing left to release, so one call per client gives the
        // same state and messages in O(keys) instead of O(keys * clients).
        let mut seen = hashbrown::HashSet::new();
        clients.retain(|c| seen.insert(*c));
        for cs in clients {
            let live: Vec<TaskId> = cancelled
                .iter()
                .copied()
                .filter(|t| self.task(*t).is_some())
                .collect();
            let mut recs = Recs::new();
            self.client_releases_keys_inner(&live, cs, &mut recs);
            self.transitions_then_fill_queue(recs, out, stimulus_id)?;
        }
        let report = ClientMsg::Cancelled {
            keys,
            reason: reason.clone(),
            msg: msg.clone(),
        };
        let broadcast: Vec<ClientId> = self.live_clients().collect();
        for c in broadcast {
            if c != self.fire_and_forget {
                out.to_client(c, report.clone());
            }
        }
        Ok(())
    }

    /// The clients not yet removed, in the order they were added.
    pub fn live_clients(&self) -> impl Iterator<Item = ClientId> + '_ {
        self.clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.alive)
            .map(|(i, _)| ClientId(i as u32))
    }
}
