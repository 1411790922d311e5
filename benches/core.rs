//! Core benchmark (no Python): a tree reduction submitted and run to completion by fake
//! workers that finish every task at once. Reports time per task; criterion's throughput
//! gives transitions per second.
//!
//!     cargo bench --no-default-features --bench core

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use dask_rsched::core::graph::{GraphTask, KeyRef};
use dask_rsched::core::messages::{Outbox, WorkerMsg};
use dask_rsched::core::state::{Config, SchedulerState};
use dask_rsched::core::transitions::TransitionArgs;
use dask_rsched::core::types::*;
use dask_rsched::core::workers::NewWorker;

type St = SchedulerState<u64>;

fn hash(x: u64) -> i64 {
    (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 1) as i64
}

fn graph(n: usize) -> (Vec<GraphTask<u64>>, usize) {
    let mut dsk = Vec::new();
    let mut layer: Vec<usize> = Vec::new();
    for i in 0..n {
        dsk.push(GraphTask {
            key: Some(i as u64),
            hash: hash(i as u64),
            group: "inc".into(),
            prefix: "inc".into(),
            run_spec: Some(0),
            data_producer: false,
            dependencies: vec![],
            existing: None,
            in_dsk: true,
        });
        layer.push(i);
    }
    let mut lvl = 0;
    while layer.len() > 1 {
        let mut next = Vec::new();
        for chunk in layer.chunks(8) {
            let k = dsk.len() as u64;
            dsk.push(GraphTask {
                key: Some(k),
                hash: hash(k),
                group: format!("sum-{lvl}").into(),
                prefix: "sum".into(),
                run_spec: Some(0),
                data_producer: false,
                dependencies: chunk.iter().map(|i| KeyRef::Graph(*i)).collect(),
                existing: None,
                in_dsk: true,
            });
            next.push(dsk.len() - 1);
        }
        layer = next;
        lvl += 1;
    }
    (dsk, layer[0])
}

fn run(n_workers: usize, dsk: &[GraphTask<u64>], root: usize) -> usize {
    let mut s = St::new(Config::default(), u64::MAX, 0);
    for w in 0..n_workers {
        let address = format!("tcp://10.0.{}.{}:1234", w / 250, w % 250);
        s.add_worker(NewWorker {
            hash: hash(1_000_000 + w as u64),
            addr_hash: hash(2_000_000 + w as u64),
            host: address[6..address.len() - 5].to_owned(),
            name: Some(address.clone()),
            address,
            nthreads: 2,
            memory_limit: 0,
            status: WorkerStatus::Running,
            resources: vec![],
        })
        .unwrap();
    }
    let mut dsk = dsk.to_vec();
    let g = s
        .generate_taskstates(&[KeyRef::Graph(root)], &mut dsk, &[])
        .unwrap();
    let prios: Vec<(Num, Option<i64>)> = (0..g.touched.len())
        .map(|i| (Num::Int(0), Some(i as i64)))
        .collect();
    s.set_priorities(&g.touched, &prios, None, false, 0.0, 1.0);
    let root_id = g.graph_ids[root].unwrap();
    let c = s.add_client(u64::MAX - 1, 1);
    let mut out = Outbox::default();
    s.client_desires_keys(&[root_id], c, &mut out);
    let recs = s.graph_recommendations(&[root_id], &g);
    let sid = 0u64;
    s.transitions_loop(recs, &mut out, &sid).unwrap();
    let mut pending = Vec::new();
    let mut finished = 0;
    loop {
        for (w, msgs) in out.worker_msgs.iter() {
            for m in msgs {
                if let WorkerMsg::ComputeTask { task, run_id, .. } = m {
                    pending.push((*w, *task, *run_id));
                }
            }
        }
        s.flush();
        let Some((w, t, run_id)) = pending.pop() else {
            break;
        };
        out = Outbox::default();
        let worker = s.ws(w).address.clone();
        let args = TransitionArgs::Finished {
            worker: worker.clone(),
            nbytes: 28,
            type_: None,
            typename: "int".into(),
            startstops: vec![],
        };
        let key = s.ts(t).key;
        let recs = s
            .stimulus_task_finished(
                &key,
                Some(t),
                &worker,
                Some(run_id),
                |_| Some(args),
                &mut out,
                &sid,
            )
            .unwrap();
        s.transitions_then_fill_queue(recs, &mut out, &sid).unwrap();
        finished += 1;
    }
    assert_eq!(s.ts(root_id).state, TaskStateState::Memory);
    finished
}

fn tree_reduction(c: &mut Criterion) {
    let mut group = c.benchmark_group("tree_reduction");
    group.sample_size(10);
    for &n in &[10_000usize, 100_000] {
        let (dsk, root) = graph(n);
        for &workers in &[10usize, 100, 1000] {
            group.throughput(Throughput::Elements(dsk.len() as u64));
            group.bench_with_input(
                BenchmarkId::new(format!("{}_tasks", dsk.len()), workers),
                &workers,
                |b, &w| b.iter(|| run(w, &dsk, root)),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, tree_reduction);
criterion_main!(benches);
