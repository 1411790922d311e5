"""Demo: the same real computation on a local cluster, scheduled by the pure-Python
scheduler and by dask-rsched's engine, timed side by side.

    python benches/demo.py [--tasks 10000] [--workers 2] [--threads 2]

Each run starts a LocalCluster with worker processes, submits a graph of many small
tasks (a map over `--tasks` inputs, reduced by a tree of sums, plus a dask.array
reduction), checks the results and prints the engine in use and the wall time.
"""

from __future__ import annotations

import argparse
import time

import dask
import dask.array as da
import dask_rsched
from distributed import Client, LocalCluster


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def tree_sum(values: list, fanout: int = 8) -> object:
    while len(values) > 1:
        values = [dask.delayed(add)(*values[i : i + fanout]) for i in range(0, len(values), fanout)]
    return values[0]


def run(engine: str, n_tasks: int, n_workers: int, threads: int) -> tuple[str, float]:
    if engine == "rust":
        dask_rsched.install()
    try:
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
        )
    finally:
        dask_rsched.uninstall()
    with cluster, Client(cluster) as client:
        in_use = client.run_on_scheduler(
            lambda dask_scheduler: (
                dask_rsched.scheduler_engine(dask_scheduler) or "distributed (pure Python)"
            )
        )
        client.submit(inc, 0).result()  # warm up the workers
        start = time.perf_counter()
        total = tree_sum([dask.delayed(inc)(i) for i in range(n_tasks)]).compute()
        x = da.ones((2_000, 2_000), chunks=(50, 50))
        array_total = int((x + 1).sum().compute())
        elapsed = time.perf_counter() - start
    assert total == n_tasks * (n_tasks + 1) // 2, total
    assert array_total == 2 * 2_000 * 2_000, array_total
    return in_use, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {}
    for engine in ("python", "rust"):
        in_use, elapsed = run(engine, args.tasks, args.workers, args.threads)
        results[engine] = elapsed
        print(f"scheduler engine: {in_use:32s} {elapsed:7.2f} s", flush=True)
    print(
        f"{args.tasks} delayed tasks + a 1,600-chunk array reduction on "
        f"{args.workers} worker processes: pure Python / engine = "
        f"{results['python'] / results['rust']:.2f}x"
    )


if __name__ == "__main__":
    main()
