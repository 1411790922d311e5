//! Graph submission (`_create_taskstate_from_graph`'s state part, annotations included),
//! `new_task`, and scattered data (`update_data`).

use crate::bindings::handles;
use crate::bindings::held::Entries;
use crate::bindings::key_index::KeyIndex;
use crate::bindings::naming::{data_producer, escaped_group_name, Namer};
use crate::bindings::order::{GraphRead, ReadGraph};
use crate::bindings::shared::{byte_count, worker_of, Engine, State, View};
use crate::cell::StateCell;
use crate::core::graph::{
    first_lost_dependency, prefetch_slot, GeneratedTasks, GraphTask, KeyRef, AHEAD,
};
use crate::core::replicas::ScatteredKey;
use crate::core::types::*;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use std::borrow::Cow;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// A submitted graph's entries, as the core takes them (the run_specs no task takes are
/// released with them).
type Graph = Entries;

/// The entries, the wanted keys, the entries' priorities and what the order's thread
/// prepared for the state creation.
type ResolvedGraph<'py> = (Graph, Vec<KeyRef>, EntryPriorities<'py>, FromOrderThread);

/// From the order's thread (empty without it): the order in which the state creation
/// will reach the entries, and room for the touched tasks' priorities.
#[derive(Default)]
struct FromOrderThread {
    visit: Vec<u32>,
    priority_room: Vec<(Num, Option<i64>)>,
}

/// Each graph entry's internal priority: `ordered`'s value, or the Rust order's own
/// (a `ReadGraph`), by entry.
enum EntryPriorities<'py> {
    Dict(Vec<Option<Bound<'py, PyAny>>>),
    Read(Vec<i64>),
}

fn py_num(v: &Bound<'_, PyAny>) -> PyResult<Num> {
    if let Ok(i) = v.extract::<i64>() {
        Ok(Num::Int(i))
    } else {
        Ok(Num::Float(v.extract::<f64>()?))
    }
}

/// The keys a submitted graph names: its own, then those only named.
struct GraphKeys<'py> {
    names: Vec<Bound<'py, PyAny>>,
    hashes: Vec<i64>,
    index: KeyIndex,
}

impl<'py> GraphKeys<'py> {
    fn new(dsk: &Bound<'py, PyDict>) -> PyResult<Self> {
        let mut known = GraphKeys {
            names: Vec::with_capacity(dsk.len()),
            hashes: Vec::with_capacity(dsk.len()),
            index: KeyIndex::with_capacity(dsk.len()),
        };
        for k in dsk.keys() {
            known.add(k.hash()? as i64, k);
        }
        Ok(known)
    }

    fn add(&mut self, h: i64, k: Bound<'py, PyAny>) -> usize {
        self.hashes.push(h);
        self.index
            .insert_new(h, self.names.len() as u32, &self.hashes);
        self.names.push(k);
        self.names.len() - 1
    }

    /// The values `map` holds for the entries' keys. `dask_rsched.order` returns its
    /// dict in the graph's key order: that is read in step, without a lookup per key.
    fn entry_values(&self, map: &Bound<'py, PyDict>) -> PyResult<Vec<Option<Bound<'py, PyAny>>>> {
        let mut values = vec![None; self.names.len()];
        for (pos, (k, v)) in map.iter().enumerate() {
            let i = match self.names.get(pos) {
                Some(name) if name.is(&k) => Some(pos),
                _ => (self
                    .index
                    .find(k.hash()? as i64, &k, &self.names, &self.hashes)?)
                .map(|i| i as usize),
            };
            if let Some(i) = i {
                values[i] = Some(v);
            }
        }
        Ok(values)
    }

    /// The graph entry of `k`, else the existing task, else a new entry.
    fn resolve(&mut self, engine: &Engine, st: &State, k: &Bound<'py, PyAny>) -> PyResult<KeyRef> {
        let h = k.hash()? as i64;
        if let Some(i) = self.index.find(h, k, &self.names, &self.hashes)? {
            return Ok(KeyRef::Graph(i as usize));
        }
        if let Some(t) = engine.tid(st, k)? {
            return Ok(KeyRef::Existing(t));
        }
        Ok(KeyRef::Graph(self.add(h, k.clone())))
    }
}

impl Engine {
    /// `(user priority, internal priority)` of each touched task, as `_set_priorities`
    /// reads them, in `room` (a vector the order's thread made, or an empty one).
    #[allow(clippy::too_many_arguments)]
    fn priorities<'py>(
        &self,
        py: Python<'py>,
        st: &State,
        generated: &GeneratedTasks,
        user_priority: Option<&Bound<'py, PyAny>>,
        ordered: &Bound<'py, PyDict>,
        entry_priorities: &EntryPriorities<'py>,
        room: Vec<(Num, Option<i64>)>,
    ) -> PyResult<Vec<(Num, Option<i64>)>> {
        let touched = &generated.touched;
        let mut prios = room;
        prios.reserve(touched.len());
        if touched.is_empty() {
            return Ok(prios);
        }
        // a user priority other than a dict is the same for every task
        let by_key = user_priority.filter(|up| up.is_instance_of::<PyDict>());
        let same = match user_priority {
            Some(up) if by_key.is_none() && !up.is_none() => py_num(up)?,
            _ => Num::Int(0),
        };
        let entries = &generated.touched_entries;
        for (n, (t, entry)) in touched.iter().zip(entries).enumerate() {
            // the entries are in the dict's order, the tasks in the walk's
            if let (Some(Some(i)), EntryPriorities::Read(p)) =
                (entries.get(n + AHEAD), entry_priorities)
            {
                prefetch_slot(p, *i as usize);
            }
            let key = st.ts(*t).key.bind(py);
            let user = match by_key {
                Some(up) => match up.get_item(key) {
                    Ok(v) => py_num(&v)?,
                    Err(_) => Num::Int(0),
                },
                None => same,
            };
            let user = match &st.ts(*t).annotations {
                Some(a) => match a.bind(py).get_item(intern!(py, "priority")) {
                    Ok(v) => py_num(&v).map_err(|_| {
                        PyTypeError::new_err(format!(
                            "task {}: annotation \"priority\" must be a number, got {}",
                            key.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                            v.repr().map_or_else(|_| "?".into(), |r| r.to_string()),
                        ))
                    })?,
                    Err(_) => user,
                },
                None => user,
            };
            let internal = match (entry, entry_priorities) {
                (Some(i), EntryPriorities::Read(p)) => p.get(*i as usize).copied(),
                (Some(i), EntryPriorities::Dict(p)) => match &p[*i as usize] {
                    Some(v) => Some(v.extract::<i64>()?),
                    None => None,
                },
                (None, _) => match ordered.get_item(key)? {
                    Some(v) => Some(v.extract::<i64>()?),
                    None => None,
                },
            };
            prios.push((user, internal));
        }
        Ok(prios)
    }

    /// The submitted graph as the core takes it: its entries, then one for each key
    /// only named (neither in `dsk` nor known: distributed creates a task without
    /// run_spec for it when the walk reaches it), and the wanted keys.
    fn resolve_graph<'py>(
        &self,
        py: Python<'py>,
        st: &State,
        dsk: &Bound<'py, PyDict>,
        keys: &Bound<'py, PyAny>,
        ordered: &Bound<'py, PyDict>,
    ) -> PyResult<ResolvedGraph<'py>> {
        let mut known = GraphKeys::new(dsk)?;
        let mut namer = Namer::default();
        let mut graph = Entries(Vec::with_capacity(dsk.len()));
        for (i, (k, spec)) in dsk.iter().enumerate() {
            let existing = self.tid(st, &k)?;
            // only a new task is named
            let (group, prefix) = match existing {
                Some(_) => Default::default(),
                None => namer.group_and_prefix(self, &k)?,
            };
            let (run_spec, producer, dependencies) = if spec.is_none() {
                (None, false, Vec::new())
            } else {
                let mut deps = Vec::new();
                for d in spec.getattr(intern!(py, "dependencies"))?.try_iter()? {
                    deps.push(known.resolve(self, st, &d?)?);
                }
                let producer = data_producer(&spec);
                (Some(spec.unbind()), producer, deps)
            };
            graph.push(GraphTask {
                hash: known.hashes[i],
                group,
                prefix,
                run_spec,
                data_producer: producer,
                dependencies,
                existing,
                in_dsk: true,
                key: Some(k.unbind()),
            });
        }
        let wanted = py.import("builtins")?.getattr("set")?.call1((keys,))?;
        let key_refs = wanted
            .try_iter()?
            .map(|k| known.resolve(self, st, &k?))
            .collect::<PyResult<Vec<_>>>()?;
        for i in dsk.len()..known.names.len() {
            let (group, prefix) = namer.group_and_prefix(self, &known.names[i])?;
            graph.push(GraphTask {
                hash: known.hashes[i],
                group,
                prefix,
                run_spec: None,
                data_producer: false,
                dependencies: Vec::new(),
                existing: None,
                in_dsk: false,
                key: Some(known.names[i].clone().unbind()),
            });
        }
        let entry_priorities = EntryPriorities::Dict(known.entry_values(ordered)?);
        Ok((
            graph,
            key_refs,
            entry_priorities,
            FromOrderThread::default(),
        ))
    }

    /// `resolve_graph` of a graph the Rust order read (`ReadGraph`): its keys, hashes,
    /// dependencies, values and priorities as read there; only what depends on the
    /// state (which keys are tasks already) and the new tasks' names are looked up here.
    fn resolve_read_graph<'py>(
        &self,
        py: Python<'py>,
        st: &mut State,
        read: GraphRead,
        keys: &Bound<'py, PyAny>,
    ) -> PyResult<ResolvedGraph<'py>> {
        let GraphRead {
            n_real,
            keys: key_objects,
            hashes,
            index,
            dep_offsets,
            dep_ids,
            specs,
            data_producer,
            priorities,
            str_names,
            name_table,
            arena,
            visit,
            entries,
            priority_room,
            ..
        } = read;
        let mut known = GraphKeys {
            names: key_objects.into_iter().map(|k| k.into_bound(py)).collect(),
            hashes,
            index,
        };
        let n_named = known.names.len();
        // a key only named is an existing task's, or an entry of its own
        let mut named = Vec::with_capacity(n_named - n_real);
        for j in n_real..n_named {
            named.push(self.tid_hashed(st, &known.names[j], known.hashes[j])?);
        }
        let refer = |j: usize| match named.get(j.wrapping_sub(n_real)) {
            Some(Some(t)) if j >= n_real => KeyRef::Existing(*t),
            _ => KeyRef::Graph(j),
        };
        st.offer_task_arena(arena, n_named);
        // the wanted keys first: then each key object moves into its entry (no reference
        // count touched per key: in a large graph each key is a cache miss)
        let wanted = py.import("builtins")?.getattr("set")?.call1((keys,))?;
        let mut key_refs = Vec::new();
        for k in wanted.try_iter()? {
            key_refs.push(match known.resolve(self, st, &k?)? {
                KeyRef::Graph(j) => refer(j),
                existing => existing,
            });
        }
        let mut namer = Namer::default();
        // the names the order gave plain str keys, shared by the keys of one name
        let mut shared: Vec<Option<(Rc<str>, Rc<str>)>> = vec![None; name_table.len()];
        let mut graph = Entries(entries.take());
        graph.reserve(known.names.len());
        let mut names = std::mem::take(&mut known.names).into_iter();
        for (i, spec) in specs.into_iter().enumerate() {
            let k = names.next().expect("a key for each entry");
            let existing = self.tid_hashed(st, &k, known.hashes[i])?;
            let (group, prefix) = match (existing, str_names.get(i).copied()) {
                (Some(_), _) => Default::default(),
                (None, Some(n)) if n != u32::MAX => {
                    let names = shared[n as usize].get_or_insert_with(|| {
                        let prefix: Rc<str> = name_table[n as usize].as_str().into();
                        let group = match escaped_group_name(&prefix) {
                            Cow::Borrowed(_) => prefix.clone(),
                            Cow::Owned(escaped) => escaped.into(),
                        };
                        (group, prefix)
                    });
                    names.clone()
                }
                (None, _) => namer.group_and_prefix(self, &k)?,
            };
            let deps = &dep_ids[dep_offsets[i] as usize..dep_offsets[i + 1] as usize];
            graph.push(GraphTask {
                hash: known.hashes[i],
                group,
                prefix,
                run_spec: Some(spec.into_inner()),
                data_producer: data_producer[i],
                dependencies: deps.iter().map(|&j| refer(j as usize)).collect(),
                existing,
                in_dsk: true,
                key: Some(k.unbind()),
            });
        }
        for (j, k) in (graph.len()..).zip(names) {
            // an existing task's entry stays unused: every reference names the task
            let existing = named.get(j - n_real).copied().flatten();
            let (group, prefix) = match existing {
                Some(_) => Default::default(),
                None => namer.group_and_prefix(self, &k)?,
            };
            graph.push(GraphTask {
                hash: known.hashes[j],
                group,
                prefix,
                run_spec: None,
                data_producer: false,
                dependencies: Vec::new(),
                existing,
                in_dsk: false,
                key: Some(k.unbind()),
            });
        }
        let from_thread = FromOrderThread {
            visit,
            priority_room: priority_room.take(),
        };
        Ok((
            graph,
            key_refs,
            EntryPriorities::Read(priorities),
            from_thread,
        ))
    }

    /// What the Rust order read of this very graph (`dsk` and its order `ordered`,
    /// unchanged in size), taken from `read`; `None` if it read another.
    fn take_read(
        read: Option<&Bound<'_, PyAny>>,
        dsk: &Bound<'_, PyDict>,
        ordered: &Bound<'_, PyDict>,
    ) -> Option<GraphRead> {
        let read = read?.cast::<ReadGraph>().ok()?;
        let taken = crate::bindings::shared::locked(&read.get().0).take()?;
        (taken.dsk.is(dsk) && taken.ordered.is(ordered) && dsk.len() == taken.n_real)
            .then_some(taken)
    }
}

#[pymethods]
impl Engine {
    /// `_create_taskstate_from_graph`'s state part: `((new_tasks, collisions, pending),
    /// client_msgs, worker_msgs)`. `dsk` maps key -> dask Task (or None), `ordered` is
    /// dask.order's result. Python runs where distributed's own code runs between the
    /// steps, with the state lent to it: `annotate(new_keys)` (`_apply_annotations`)
    /// once the tasks exist, before priorities; `observe(touched_keys, collisions,
    /// first_keys)` before the transitions (the spans extension and `update_graph`
    /// plugins; `touched_keys` is None unless `observe_touched`); `collisions` are the
    /// keys whose submitted run_spec has other dependencies than the existing task's,
    /// `first_keys` the first touched key of each task group. `observe` returning true
    /// says the spans extension saw only those first tasks: the engine then gives the
    /// others their group's span annotation. With a `budget` (seconds), the transitions
    /// stop once the call has taken that long: `pending` is then true and
    /// `continue_graph` runs the rest. A graph still pending from before is finished
    /// first. `read`: what the Rust order read of `dsk` (`ReadGraph`), used instead of
    /// reading the graph again.
    #[pyo3(signature = (*, dsk, keys, ordered, client, stimulus_id, user_priority = None,
                        fifo_timeout = None, start = 0.0, submitting_task = None, actors = None,
                        annotate = None, observe = None, observe_touched = true,
                        budget = None, read = None))]
    #[allow(clippy::too_many_arguments)]
    fn update_graph<'py>(
        &self,
        py: Python<'py>,
        dsk: &Bound<'py, PyDict>,
        keys: &Bound<'py, PyAny>,
        ordered: &Bound<'py, PyDict>,
        client: &Bound<'py, PyAny>,
        stimulus_id: &Bound<'py, PyAny>,
        user_priority: Option<&Bound<'py, PyAny>>,
        fifo_timeout: Option<&Bound<'py, PyAny>>,
        start: f64,
        submitting_task: Option<&Bound<'py, PyAny>>,
        actors: Option<&Bound<'py, PyAny>>,
        annotate: Option<&Bound<'py, PyAny>>,
        observe: Option<&Bound<'py, PyAny>>,
        observe_touched: bool,
        budget: Option<f64>,
        read: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let started = Instant::now();
        let mut b = self.batch(stimulus_id)?;
        // graphs transition in the order they came
        let r = b.st.finish_pending_graph(&mut b.out);
        b.check(py, r)?;
        // fifo_timeout arrives as a number or a string ("100 ms")
        let fifo_timeout: f64 = match fifo_timeout {
            Some(f) if !f.is_none() => py
                .import("dask.utils")?
                .getattr("parse_timedelta")?
                .call1((f,))?
                .extract()?,
            _ => 0.0,
        };
        let (mut graph, key_refs, entry_priorities, mut from_thread) =
            match Self::take_read(read, dsk, ordered) {
                Some(read) => self.resolve_read_graph(py, &mut b.st, read, keys)?,
                None => self.resolve_graph(py, &b.st, dsk, keys, ordered)?,
            };
        // distributed cancels a graph whose keys depend on data it no longer has
        // (`_find_lost_dependencies`); here that is a KeyError before any state changes
        if let Some(i) = first_lost_dependency(&key_refs, &graph) {
            return Err(PyKeyError::new_err(
                graph[i].key.as_ref().map(|k| k.clone_ref(py)),
            ));
        }
        let r =
            b.st.generate_taskstates(&key_refs, &mut graph, &from_thread.visit);
        let generated = b.check(py, r)?;
        let key_of =
            |st: &State, ts: &[TaskId]| PyList::new(py, ts.iter().map(|t| st.ts(*t).key.bind(py)));
        // up to the transitions a failure (a bad annotation) takes the new tasks back
        let prepared = (|| -> PyResult<(ClientId, Vec<TaskId>)> {
            if let Some(annotate) = annotate {
                let new = key_of(&b.st, &generated.new)?;
                StateCell::lend(&mut *b.st, || annotate.call1((new,)))?;
            }
            let prios = self.priorities(
                py,
                &b.st,
                &generated,
                user_priority,
                ordered,
                &entry_priorities,
                std::mem::take(&mut from_thread.priority_room),
            )?;
            let submitting = match submitting_task {
                Some(k) if k.is_truthy()? => Some(self.tid(&b.st, k)?),
                _ => None,
            };
            b.st.set_priorities(
                &generated.touched,
                &prios,
                submitting.flatten(),
                submitting.is_some(),
                fifo_timeout,
                start,
            );
            let key_ids = generated.key_ids(&key_refs);
            let actor_list: Option<Vec<TaskId>> = match actors.filter(|a| !a.is_none()) {
                Some(a) if a.extract::<bool>().is_ok() => Some(if a.is_truthy()? {
                    key_ids.clone()
                } else {
                    Vec::new()
                }),
                Some(a) => Some(
                    a.try_iter()?
                        .map(|k| self.tid_required(&b.st, &k?))
                        .collect::<PyResult<_>>()?,
                ),
                None => None,
            };
            // nothing below fails: the tasks are the client's from here on
            let c = self.client_id(py, &mut b.st, client)?;
            b.st.client_desires_keys(&key_ids, c, &mut b.out);
            if let Some(list) = actor_list {
                b.st.set_actors(&list);
            }
            Ok((c, key_ids))
        })();
        let (c, key_ids) = match prepared {
            Ok(v) => v,
            Err(e) => {
                let r = b.st.discard_new_tasks(&generated.new, &mut b.out, &b.sid);
                b.check(py, r)?;
                return Err(e);
            }
        };
        let recs = b.st.graph_recommendations(&key_ids, &generated);
        let collisions = key_of(&b.st, &generated.collisions)?;
        if let Some(observe) = observe {
            // a list of every key only for those who read it (`update_graph` plugins)
            let touched = match observe_touched {
                true => key_of(&b.st, &generated.touched)?.into_any(),
                false => py.None().into_bound(py),
            };
            let mut seen = hashbrown::HashSet::new();
            let firsts: Vec<TaskId> = (generated.touched.iter().copied())
                .filter(|t| seen.insert(b.st.ts(*t).group))
                .collect();
            let first_keys = key_of(&b.st, &firsts)?;
            let spans_saw_firsts = StateCell::lend(&mut *b.st, || {
                observe.call1((touched, &collisions, first_keys))
            })?;
            if spans_saw_firsts.is_truthy()? {
                spread_span_annotations(py, &mut b.st, &generated.touched, &firsts)?;
            }
        }
        let deadline = budget.map(|b| started + Duration::from_secs_f64(b.max(0.0)));
        let r =
            b.st.graph_transitions(recs, generated.touched, c, deadline, &mut b.out, &b.sid);
        let done = b.check(py, r)?;
        b.finish_with(py, (generated.new.len(), collisions, !done))
    }

    /// Runs the pending graph's transitions for up to `budget` seconds (all of them
    /// without): `(pending, client_msgs, worker_msgs)`, under the graph's stimulus id.
    #[pyo3(signature = (budget = None))]
    fn continue_graph<'py>(
        &self,
        py: Python<'py>,
        budget: Option<f64>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let deadline = budget.map(|b| Instant::now() + Duration::from_secs_f64(b.max(0.0)));
        let sid = match self.read()?.pending_graph_stimulus() {
            Some(sid) => sid.clone_ref(py),
            None => py.None(),
        };
        let mut b = self.batch(sid.bind(py))?;
        let r = b.st.continue_graph(deadline, &mut b.out);
        let done = b.check(py, r)?;
        b.finish_with(py, !done)
    }

    /// Whether a submitted graph's transitions are still to run (`continue_graph`).
    #[getter]
    fn graph_pending(&self) -> PyResult<bool> {
        Ok(self.read()?.pending_graph_stimulus().is_some())
    }

    /// `SchedulerState.new_task`: a task without dependencies in its group and prefix
    /// (created when new). Only `released`: a task put straight into another state
    /// would lack what that state implies (replicas, a worker, a queue place).
    fn new_task(
        slf: &Bound<'_, Self>,
        key: &Bound<'_, PyAny>,
        spec: &Bound<'_, PyAny>,
        state: &str,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if state != "released" {
            return Err(PyValueError::new_err(format!(
                "dask-rsched creates new tasks in state 'released' only, not {state:?}"
            )));
        }
        let e = slf.borrow();
        let (group, prefix) = e.group_and_prefix(key)?;
        let mut st = e.write()?;
        if e.tid(&st, key)?.is_some() {
            return Err(PyValueError::new_err(format!(
                "task {} already exists",
                key.repr()?
            )));
        }
        let (run_spec, producer) = match spec.is_none() {
            true => (None, false),
            false => (Some(spec.clone().unbind()), data_producer(spec)),
        };
        let t = st.new_task(
            key.clone().unbind(),
            key.hash()? as i64,
            &group,
            &prefix,
            run_spec,
            producer,
            TaskStateState::Released,
        );
        handles::task_handle(py, &slf.clone().unbind(), &View::new(&e, &st), t)
    }

    /// `Scheduler.update_data` (scatter): `who_has` maps key -> worker addresses.
    #[pyo3(signature = (*, who_has, nbytes, client = None))]
    fn update_data<'py>(
        &self,
        py: Python<'py>,
        who_has: &Bound<'py, PyDict>,
        nbytes: &Bound<'py, PyDict>,
        client: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyTuple>> {
        let mut b = self.batch(&py.None().into_bound(py))?;
        let mut items = Vec::with_capacity(who_has.len());
        // resolve everything first: an unknown worker leaves the state untouched
        for (k, workers) in who_has.iter() {
            let workers = workers
                .try_iter()?
                .map(|w| worker_of(&b.st, &w?.extract::<String>()?))
                .collect::<PyResult<Vec<_>>>()?;
            let (group, prefix) = self.group_and_prefix(&k)?;
            items.push(ScatteredKey {
                existing: self.tid(&b.st, &k)?,
                hash: k.hash()? as i64,
                group,
                prefix,
                workers,
                nbytes: match nbytes.get_item(&k)? {
                    Some(n) => byte_count(&n)?,
                    None => -1,
                },
                key: k.unbind(),
            });
        }
        let c = match client.filter(|c| !c.is_none()) {
            Some(c) => Some(self.client_id(py, &mut b.st, c)?),
            None => None,
        };
        b.st.update_data(items, c, &mut b.out);
        b.finish(py, Ok(()))
    }
}

/// After the spans extension observed only the first touched task of each group
/// (`firsts`), every other touched task gets what `observe_tasks` gives each task of that
/// group: an annotations dict, holding the group's `span` annotation (the one its first
/// task got) or none. (`observe_tasks` puts all of a group's tasks in the span its first
/// task chose.) A task without annotations gets its dict when something reads it
/// (`Task::span_annotation_pending`).
fn spread_span_annotations(
    py: Python<'_>,
    st: &mut State,
    touched: &[TaskId],
    firsts: &[TaskId],
) -> PyResult<()> {
    let span = intern!(py, "span");
    let mut of_group: hashbrown::HashMap<GroupId, Option<Bound<'_, PyAny>>> =
        hashbrown::HashMap::with_capacity(firsts.len());
    for &t in firsts {
        let ts = st.ts(t);
        let ann = match &ts.annotations {
            Some(a) => Some(a.bind(py).call_method1(intern!(py, "get"), (span,))?),
            None => None,
        };
        let (g, ann) = (ts.group, ann.filter(|a| !a.is_none()));
        st.set_group_span_annotation(g, ann.as_ref().map(|a| a.clone().unbind()));
        of_group.insert(g, ann);
    }
    let mut pending = Vec::new();
    // a group's tasks come in runs: its entry is looked up once per run
    let mut last = None;
    for &t in touched {
        let ts = st.ts(t);
        let ann = match last {
            Some((g, ann)) if g == ts.group => ann,
            _ => {
                let ann = of_group.get(&ts.group);
                last = Some((ts.group, ann));
                ann
            }
        };
        let Some(ann) = ann else {
            continue;
        };
        let Some(a) = &ts.annotations else {
            pending.push(t);
            continue;
        };
        let a = a.bind(py);
        match (ann, a.cast::<PyDict>()) {
            (Some(ann), _) => a.set_item(span, ann)?,
            (None, Ok(d)) => {
                if d.contains(span)? {
                    d.del_item(span)?;
                }
            }
            (None, Err(_)) => {
                a.call_method1(intern!(py, "pop"), (span, py.None()))?;
            }
        }
    }
    st.set_span_annotations_pending(&pending);
    Ok(())
}
