//! Core invariants without Python: payloads are `String`s.

use crate::core::graph::{GraphTask, KeyRef};
use crate::core::messages::{Outbox, WorkerMsg};
use crate::core::state::{Config, SchedulerState};
use crate::core::transitions::TransitionArgs;
use crate::core::types::TaskStateState as S;
use crate::core::types::*;
use crate::core::workers::NewWorker;

type St = SchedulerState<String>;

fn fnv(s: &str) -> i64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    (h >> 1) as i64
}

fn worker(s: &mut St, i: usize, nthreads: i64) -> WorkerId {
    let addr = format!("tcp://10.0.0.{i}:1234");
    s.add_worker(NewWorker {
        hash: fnv(&format!("id-{i}")),
        addr_hash: fnv(&addr),
        host: format!("10.0.0.{i}"),
        name: Some(addr.clone()),
        address: addr,
        nthreads,
        memory_limit: 0,
        status: WorkerStatus::Running,
        resources: vec![],
    })
    .unwrap()
}

/// A tree reduction: `n` leaves, fan-in 4, submitted as one graph.
fn submit_tree(s: &mut St, n: usize) -> (TaskId, Outbox<String>) {
    let (mut dsk, root) = tree_graph(n);
    let g = s
        .generate_taskstates(&[KeyRef::Graph(root)], &mut dsk, &[])
        .unwrap();
    let prios: Vec<(Num, Option<i64>)> = (0..g.touched.len())
        .map(|i| (Num::Int(0), Some(i as i64)))
        .collect();
    s.set_priorities(&g.touched, &prios, None, false, 0.0, 1.0);
    let root_id = g.graph_ids[root].unwrap();
    let c = s.add_client("client".into(), fnv("client"));
    let mut out = Outbox::default();
    s.client_desires_keys(&[root_id], c, &mut out);
    let recs = s.graph_recommendations(&[root_id], &g);
    s.transitions_loop(recs, &mut out, &"ug".to_string())
        .unwrap();
    s.validate_state().unwrap();
    (root_id, out)
}

/// A graph entry of a key the submitted dict holds, with run_spec `spec`.
fn entry(
    key: String,
    group: &str,
    prefix: &str,
    spec: &str,
    dependencies: Vec<KeyRef>,
) -> GraphTask<String> {
    GraphTask {
        hash: fnv(&key),
        group: group.into(),
        prefix: prefix.into(),
        run_spec: Some(spec.into()),
        data_producer: false,
        dependencies,
        existing: None,
        in_dsk: true,
        key: Some(key),
    }
}

/// The graph entries of a tree reduction (`n` leaves, fan-in 4) and its root's entry.
fn tree_graph(n: usize) -> (Vec<GraphTask<String>>, usize) {
    let mut dsk = Vec::new();
    let mut layer: Vec<usize> = Vec::new();
    for i in 0..n {
        let key = format!("leaf-{i}");
        dsk.push(entry(key, "leaf", "leaf", "spec", vec![]));
        layer.push(dsk.len() - 1);
    }
    let mut lvl = 0;
    while layer.len() > 1 {
        let mut next = Vec::new();
        for (j, chunk) in layer.chunks(4).enumerate() {
            let key = format!("sum-{lvl}-{j}");
            let deps = chunk.iter().map(|i| KeyRef::Graph(*i)).collect();
            dsk.push(entry(key, &format!("sum-{lvl}"), "sum", "spec", deps));
            next.push(dsk.len() - 1);
        }
        layer = next;
        lvl += 1;
    }
    (dsk, layer[0])
}

#[test]
fn the_walk_order_given_only_fetches_ahead() {
    // `visit` is a hint for the memory: right, wrong or out of range, the tasks, their
    // order and their edges are the same
    let created = |visit: &[u32]| {
        let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
        let (mut dsk, root) = tree_graph(300);
        let g = s
            .generate_taskstates(&[KeyRef::Graph(root)], &mut dsk, visit)
            .unwrap();
        let edges: Vec<(Vec<TaskId>, Vec<TaskId>)> = (g.touched.iter())
            .map(|t| {
                let ts = s.ts(*t);
                (
                    ts.dependencies.iter().collect(),
                    ts.dependents.iter().collect(),
                )
            })
            .collect();
        (g.touched, g.new, g.graph_ids, edges)
    };
    let plain = created(&[]);
    let n = plain.2.len() as u32;
    let backwards: Vec<u32> = (0..n).rev().collect();
    let wild: Vec<u32> = (0..n).map(|i| i.wrapping_mul(2_654_435_761)).collect();
    assert_eq!(created(&backwards), plain);
    assert_eq!(created(&wild), plain);
}

fn drain_compute(out: &Outbox<String>) -> Vec<(WorkerId, TaskId, i64)> {
    let mut v = Vec::new();
    for (w, msgs) in out.worker_msgs.iter() {
        for m in msgs {
            if let WorkerMsg::ComputeTask { task, run_id, .. } = m {
                v.push((*w, *task, *run_id));
            }
        }
    }
    v
}

fn finished(s: &St, w: WorkerId) -> TransitionArgs<String> {
    TransitionArgs::Finished {
        worker: s.ws(w).address.clone(),
        nbytes: 8,
        type_: None,
        typename: "int".into(),
        startstops: vec![],
    }
}

fn run_to_completion(s: &mut St, mut pending: Vec<(WorkerId, TaskId, i64)>) {
    let sid = "tf".to_string();
    while let Some((w, t, run_id)) = pending.pop() {
        let mut out = Outbox::default();
        let addr = s.ws(w).address.clone();
        let args = finished(s, w);
        let key = s.ts(t).key.clone();
        let recs = s
            .stimulus_task_finished(
                &key,
                Some(t),
                &addr,
                Some(run_id),
                |_| Some(args),
                &mut out,
                &sid,
            )
            .unwrap();
        s.transitions_then_fill_queue(recs, &mut out, &sid).unwrap();
        s.flush();
        s.validate_state().unwrap();
        pending.extend(drain_compute(&out));
    }
}

#[test]
fn tree_reduction_completes_and_validates() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    worker(&mut s, 1, 2);
    worker(&mut s, 2, 2);
    let (root, out) = submit_tree(&mut s, 64);
    let first = drain_compute(&out);
    // queuing: root-ish leaves fill ceil(1.1 * 2) slots per worker
    assert_eq!(first.len(), 6);
    assert!(!s.queued.is_empty());
    run_to_completion(&mut s, first);
    assert_eq!(s.ts(root).state, S::Memory);
    // everything but the root was released once no longer needed (kept, as distributed
    // does, because they still have dependents)
    let in_memory = s
        .live_task_ids()
        .filter(|t| s.ts(*t).state == S::Memory)
        .count();
    assert_eq!(in_memory, 1);
    assert!(s.transition_counter > 0);
}

#[test]
fn removing_a_worker_recomputes_lost_results() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    let w1 = worker(&mut s, 1, 1);
    worker(&mut s, 2, 1);
    let (root, out) = submit_tree(&mut s, 8);
    let first = drain_compute(&out);
    let mut out = Outbox::default();
    // what distributed's `remove_worker` does, through the engine's seams
    s.idle_remove(w1);
    s.idle_task_count_remove(w1);
    s.saturated_remove(w1);
    s.detach_worker(w1);
    s.set_worker_status(w1, WorkerStatus::Closed);
    s.set_running(w1, false);
    let mut recs = crate::core::state::Recs::new();
    for t in s.ws(w1).processing.iter().collect::<Vec<_>>() {
        recs.insert(t, S::Released);
    }
    for t in s.ws(w1).has_what.keys().collect::<Vec<_>>() {
        s.remove_replica(t, w1);
        if !s.ts(t).has_who_has() {
            recs.insert(t, S::Released);
        }
    }
    s.transitions_loop(recs, &mut out, &"rw".to_string())
        .unwrap();
    s.flush();
    s.validate_state().unwrap();
    assert!(!s.ws(w1).alive);
    let mut pending: Vec<_> = first.into_iter().filter(|(w, _, _)| *w != w1).collect();
    pending.extend(drain_compute(&out));
    run_to_completion(&mut s, pending);
    assert_eq!(s.ts(root).state, S::Memory);
}

#[test]
fn erred_task_blames_dependents() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    let w = worker(&mut s, 1, 4);
    let (root, out) = submit_tree(&mut s, 4);
    let (_, t, run_id) = drain_compute(&out)[0];
    let mut out = Outbox::default();
    let sid = "te".to_string();
    let args = TransitionArgs::Erred {
        worker: None,
        cause: None,
        exception: Some("boom".into()),
        traceback: None,
        exception_text: None,
        traceback_text: None,
    };
    let addr = s.ws(w).address.clone();
    let recs = s
        .stimulus_task_erred(Some(t), &addr, Some(run_id), args, &mut out, &sid)
        .unwrap();
    s.transitions_loop(recs, &mut out, &sid).unwrap();
    s.validate_state().unwrap();
    assert_eq!(s.ts(root).state, S::Erred);
    assert_eq!(s.ts(root).exception_blame(), Some(t));
}

#[test]
fn record_sizes() {
    // keep an eye on the per-task footprint (docs/benchmarks.md)
    let task = std::mem::size_of::<crate::core::entities::Task<String>>();
    let set = std::mem::size_of::<crate::core::entities::TaskSet>();
    // `Py<PyAny>` is one non-null pointer, as `Box<u8>` is
    let as_held = std::mem::size_of::<Option<crate::core::entities::Task<Box<u8>>>>();
    println!("Task<String>: {task} bytes, Option<Task<Py>>: {as_held}, PySet: {set} bytes");
    assert!(task <= 248, "Task grew to {task} bytes");
}

#[test]
fn byte_totals_do_not_wrap() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    let w = worker(&mut s, 1, 4);
    let (root, out) = submit_tree(&mut s, 4);
    let leaves: Vec<TaskId> = drain_compute(&out).iter().map(|(_, t, _)| *t).collect();
    for &t in &leaves {
        s.set_nbytes(t, i64::MAX);
        s.add_replica(t, w);
    }
    let total = ByteTotal::from(i64::MAX) * leaves.len() as ByteTotal;
    assert_eq!(s.ws(w).nbytes, total);
    assert_eq!(s.group(s.ts(root).group).nbytes_total, 0);
    assert_eq!(s.group(s.ts(leaves[0]).group).nbytes_total, total);
}

#[test]
fn a_stale_report_is_never_prepared() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    let w = worker(&mut s, 1, 4);
    let (_, out) = submit_tree(&mut s, 4);
    let (_, t, run_id) = drain_compute(&out)[0];
    let (key, addr, sid) = (
        s.ts(t).key.clone(),
        s.ws(w).address.clone(),
        "tf".to_string(),
    );
    let mut out = Outbox::default();
    let stale = s.stimulus_task_finished(
        &key,
        Some(t),
        &addr,
        Some(run_id + 100),
        |_| unreachable!(),
        &mut out,
        &sid,
    );
    assert!(stale.is_ok());
    // a current report whose fields cannot be read fails before any change
    let before = s.ts(t).state;
    let bad =
        s.stimulus_task_finished(&key, Some(t), &addr, Some(run_id), |_| None, &mut out, &sid);
    assert!(matches!(bad, Err(CoreError::Invalid(_))));
    assert_eq!(s.ts(t).state, before);
    s.validate_state().unwrap();
}

#[test]
fn discarded_submission_leaves_nothing() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    worker(&mut s, 1, 4);
    let mut dsk: Vec<GraphTask<String>> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let deps = if i == 1 {
                vec![KeyRef::Graph(0)]
            } else {
                vec![]
            };
            entry(k.to_string(), k, k, "spec", deps)
        })
        .collect();
    let g = s
        .generate_taskstates(&[KeyRef::Graph(1)], &mut dsk, &[])
        .unwrap();
    assert_eq!(g.new.len(), 2);
    let mut out = Outbox::default();
    s.discard_new_tasks(&g.new, &mut out, &"bad-annotation".to_string())
        .unwrap();
    s.flush();
    assert_eq!(s.n_live_tasks(), 0);
    s.validate_state().unwrap();
}

thread_local! {
    static RELEASED: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[test]
fn freed_records_and_a_dropped_state_let_go_of_their_run_specs() {
    let mut s = St::new(Config::default(), "fire-and-forget".into(), 1);
    s.run_spec_released = Some(|spec| RELEASED.with(|r| r.borrow_mut().push(spec.clone())));
    let mut dsk: Vec<GraphTask<String>> = ["a", "b"]
        .iter()
        .map(|k| entry(k.to_string(), k, k, &format!("spec-{k}"), vec![]))
        .collect();
    let g = s
        .generate_taskstates(&[KeyRef::Graph(0), KeyRef::Graph(1)], &mut dsk, &[])
        .unwrap();
    let (first, second) = (&g.new[0], &g.new[1]);
    let specs = [first, second].map(|t| s.ts(*t).run_spec.clone().unwrap());
    let mut out = Outbox::default();
    s.discard_new_tasks(&[*first], &mut out, &"gone".to_string())
        .unwrap();
    s.flush();
    assert_eq!(RELEASED.with(|r| r.take()), specs[..1]);
    drop(s);
    assert_eq!(RELEASED.with(|r| r.take()), specs[1..]);
}

#[test]
fn validate_refuses_to_forget_a_wanted_task() {
    let config = Config {
        validate: true,
        ..Config::default()
    };
    let mut s = St::new(config, "fire-and-forget".into(), 1);
    worker(&mut s, 1, 4);
    let (root, out) = submit_tree(&mut s, 4);
    run_to_completion(&mut s, drain_compute(&out));
    let mut recs = crate::core::state::Recs::new();
    recs.insert(root, S::Forgotten);
    let mut out = Outbox::default();
    let r = s.transitions_loop(recs, &mut out, &"forget".to_string());
    assert!(matches!(r, Err(CoreError::Unreachable(t)) if t == root));
    assert_eq!(s.ts(root).state, S::Memory);
}
