//! What Python may change directly on a record, as on distributed's objects: plugins,
//! extensions and tests set these attributes, and distributed's own code running on the
//! engine (`remove_worker`, heartbeats) does too. Each is a plain field write.

use crate::core::state::SchedulerState;
use crate::core::types::*;

impl<P: Clone> SchedulerState<P> {
    /// `ts.set_processing_on(ws` (tests corrupt the state on purpose); the next
    /// transition of the task then fails as distributed's does).
    pub fn set_processing_on(&mut self, t: TaskId, w: Option<WorkerId>) {
        self.ts_mut(t).set_processing_on(w);
    }

    /// `ts._queueable = False` keeps a root-ish task out of `queued` (P2P outputs).
    pub fn set_queueable(&mut self, t: TaskId, value: bool) {
        self.ts_mut(t).queueable = value;
    }

    /// `ts.annotations = {...}` (the spans extension replaces them).
    pub fn set_annotations(&mut self, t: TaskId, value: Option<P>) {
        let ts = self.ts_mut(t);
        ts.annotations = value;
        ts.span_annotation_pending = false;
    }

    /// `span_annotation` of group `g`.
    pub fn set_group_span_annotation(&mut self, g: GroupId, value: Option<P>) {
        self.groups[g.idx()].span_annotation = value;
    }

    /// Every task of `touched` without annotations gets a dict of its own holding
    /// `span_annotation` of its group (see `Task::span_annotation_pending`).
    pub fn set_span_annotations_pending(&mut self, touched: &[TaskId]) {
        for &t in touched {
            let ts = self.ts_mut(t);
            if ts.annotations.is_none() {
                ts.span_annotation_pending = true;
            }
        }
    }

    /// `ts.metadata = {...}`
    pub fn set_metadata(&mut self, t: TaskId, value: Option<P>) {
        self.ts_mut(t).set_metadata(value);
    }

    /// `ts.suspicious += 1` (`remove_worker`)
    pub fn set_suspicious(&mut self, t: TaskId, value: i64) {
        self.ts_mut(t).rare_mut().suspicious = value;
    }

    /// `ts.worker_restrictions = {...}` (`Scheduler.set_restrictions`, P2P shuffle).
    pub fn set_worker_restrictions(&mut self, t: TaskId, value: Option<Vec<String>>) {
        self.ts_mut(t).rare_mut().worker_restrictions = value;
    }

    /// `ts.host_restrictions = {...}` (`_apply_annotations`)
    pub fn set_host_restrictions(&mut self, t: TaskId, value: Option<Vec<String>>) {
        self.ts_mut(t).rare_mut().host_restrictions = value;
    }

    /// `ts.loose_restrictions = ...` (`_apply_annotations`: `allow_other_workers`)
    pub fn set_loose_restrictions(&mut self, t: TaskId, value: bool) {
        self.ts_mut(t).rare_mut().loose_restrictions = value;
    }

    /// `ts.resource_restrictions = {...}` (`_apply_annotations`: `resources`)
    pub fn set_resource_restrictions(&mut self, t: TaskId, value: Option<Vec<(String, f64)>>) {
        self.ts_mut(t).rare_mut().resource_restrictions = value;
    }

    /// `ts.retries = n` (`_apply_annotations`)
    pub fn set_retries(&mut self, t: TaskId, value: i64) {
        self.ts_mut(t).rare_mut().retries = value;
    }

    /// `ts.actor = True` for the actors of a submission.
    pub fn set_actors(&mut self, tasks: &[TaskId]) {
        for &t in tasks {
            self.ts_mut(t).actor = true;
        }
    }

    /// `ws.status = status`: the field alone (the scheduler's own status changes are
    /// stimuli).
    pub fn set_worker_status(&mut self, w: WorkerId, status: WorkerStatus) {
        self.ws_mut(w).status = status;
    }

    /// `tg.span_id = ...` (the spans extension, at submission).
    pub fn set_span_id(&mut self, g: GroupId, value: Option<P>) {
        self.groups[g.idx()].span_id = value;
    }

    /// `tp.duration_average = ...` (`TaskPrefix.add_exec_time`)
    pub fn set_duration_average(&mut self, p: PrefixId, value: f64) {
        self.prefixes[p.idx()].duration_average = value;
    }

    /// `tp.max_exec_time = ...` (`TaskPrefix.add_exec_time`)
    pub fn set_max_exec_time(&mut self, p: PrefixId, value: f64) {
        self.prefixes[p.idx()].max_exec_time = value;
    }

    /// `tp.suspicious += 1` (`remove_worker`)
    pub fn set_prefix_suspicious(&mut self, p: PrefixId, value: i64) {
        self.prefixes[p.idx()].suspicious = value;
    }
}
