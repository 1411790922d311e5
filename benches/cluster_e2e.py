"""End to end on a real cluster: wall time and the scheduler process's CPU seconds per
task, pure Python vs the engine, in one run.

    python benches/cluster_e2e.py [--tasks 10000] [--workers 2] [--workload map tree]

Each run starts a `LocalCluster(processes=True)` in this process (the scheduler runs here,
the workers in their own processes) and drives it from a client in a subprocess, so the
CPU time this process spends during the workload is the scheduler's (plus the cluster's
small bookkeeping of its worker processes), not the client's graph building.

Workloads: `map` (`client.map` of tiny tasks, then `client.gather`) and `tree`
(delayed tasks reduced by a tree of sums).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORKLOADS = ("map", "tree")

CLIENT = r"""
import json, sys, time
import dask
from distributed import Client

def inc(x):
    return x + 1

def add(*xs):
    return sum(xs)

address, workload, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with Client(address) as client:
    client.wait_for_workers(int(sys.argv[4]))
    client.submit(inc, -1).result()  # warm the workers up
    t0 = time.perf_counter()
    if workload == "map":
        futures = client.map(inc, range(n))
        result = sum(client.gather(futures))
        expected = n * (n + 1) // 2
        tasks = n
    else:
        values = [dask.delayed(inc)(i) for i in range(n)]
        tasks = n
        while len(values) > 1:
            values = [dask.delayed(add)(*values[i : i + 8]) for i in range(0, len(values), 8)]
            tasks += len(values)
        result = values[0].compute()
        expected = n * (n + 1) // 2
    wall = time.perf_counter() - t0
    assert result == expected, (result, expected)
print(json.dumps({"wall": wall, "tasks": tasks}))
"""


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(engine: str, workload: str, n: int, n_workers: int, threads: int = 1) -> dict:
    import dask_rsched
    from distributed import LocalCluster

    if engine == "rust":
        dask_rsched.install()
    try:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            silence_logs=50,
        )
    finally:
        dask_rsched.uninstall()
    with cluster:
        used = dask_rsched.scheduler_engine(cluster.scheduler) or "distributed (Python)"
        cpu0 = cpu_seconds()
        out = subprocess.run(
            [
                sys.executable,
                "-c",
                CLIENT,
                cluster.scheduler_address,
                workload,
                str(n),
                str(n_workers),
            ],
            capture_output=True,
            text=True,
        )
        cpu1 = cpu_seconds()
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # The client's warm-up task and connection are in the CPU window; negligible at
    # thousands of tasks.
    r.update(engine_name=used, scheduler_cpu=cpu1 - cpu0)
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workload", nargs="+", choices=WORKLOADS, default=list(WORKLOADS))
    ap.add_argument("--engines", nargs="+", default=["python", "rust"])
    args = ap.parse_args()
    print(
        f"{'workload':<8} {'tasks':>7} {'engine':<26} {'wall s':>7} {'sched CPU s':>11} "
        f"{'CPU us/task':>11}"
    )
    for workload in args.workload:
        for engine in args.engines:
            t = time.perf_counter()
            r = run(engine, workload, args.tasks, args.workers)
            print(
                f"{workload:<8} {r['tasks']:>7} {r['engine_name']:<26} {r['wall']:>7.2f} "
                f"{r['scheduler_cpu']:>11.2f} {r['scheduler_cpu'] / r['tasks'] * 1e6:>11.1f}"
                f"  ({time.perf_counter() - t:.0f} s with start-up)",
                flush=True,
            )


if __name__ == "__main__":
    main()
