"""Demo: the same real computation scheduled by the pure-Python scheduler and by
dask-rsched's engine, side by side.

    python benches/demo.py [--tasks 10000] [--workers 2] [--threads 2]

Each run starts a real `dask scheduler` process (with `--preload dask_rsched` for the
engine) and `dask worker` processes, submits a graph of many small tasks (a map over
`--tasks` inputs reduced by a tree of sums, plus a dask.array reduction), checks the
results, and prints the engine in use, the wall time and the scheduler process's CPU time
per task (what the engine takes off the scheduler host).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import psutil
from distributed import Client


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


def tree_sum(values: list, fanout: int = 8) -> object:
    while len(values) > 1:
        values = [dask.delayed(add)(*values[i : i + fanout]) for i in range(0, len(values), fanout)]
    return values[0]


def engine_in_use(dask_scheduler: object) -> str:
    import dask_rsched

    return dask_rsched.scheduler_engine(dask_scheduler) or "distributed (pure Python)"


def start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def run(engine: str, n_tasks: int, n_workers: int, threads: int) -> tuple[str, float, float, int]:
    """(engine in use, wall seconds, scheduler CPU seconds, tasks) for one engine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    env["DASK_DISTRIBUTED__LOGGING__DISTRIBUTED"] = "error"
    with tempfile.TemporaryDirectory() as tmp:
        scheduler_file = str(Path(tmp) / "scheduler.json")
        preload = ["--preload", "dask_rsched"] if engine == "rust" else []
        scheduler = start(
            [
                "distributed.cli.dask_scheduler",
                "--scheduler-file",
                scheduler_file,
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                *preload,
            ],
            env,
        )
        workers = start(
            [
                "distributed.cli.dask_worker",
                "--scheduler-file",
                scheduler_file,
                "--nworkers",
                str(n_workers),
                "--nthreads",
                str(threads),
                "--no-dashboard",
            ],
            env,
        )
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(scheduler_file):
                if scheduler.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the scheduler did not start: {scheduler.stderr.read()}")
                time.sleep(0.1)
            with Client(scheduler_file=scheduler_file) as client:
                client.wait_for_workers(n_workers, timeout=60)
                in_use = client.run_on_scheduler(engine_in_use)
                client.submit(inc, 0).result()  # warm up the workers
                delayed_total = tree_sum([dask.delayed(inc)(i) for i in range(n_tasks)])
                x = da.ones((2_000, 2_000), chunks=(50, 50))
                (array_total,) = dask.optimize((x + 1).sum())
                tasks = len(delayed_total.__dask_graph__()) + len(array_total.__dask_graph__())
                proc = psutil.Process(scheduler.pid)
                cpu0 = sum(proc.cpu_times()[:2])
                start_wall = time.perf_counter()
                total = delayed_total.compute()
                array_sum = int(array_total.compute())
                elapsed = time.perf_counter() - start_wall
                cpu = sum(proc.cpu_times()[:2]) - cpu0
                client.shutdown()
        finally:
            for p in (workers, scheduler):
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
    assert total == n_tasks * (n_tasks + 1) // 2, total
    assert array_sum == 2 * 2_000 * 2_000, array_sum
    return in_use, elapsed, cpu, tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    results = {}
    for engine in ("python", "rust"):
        in_use, elapsed, cpu, tasks = run(engine, args.tasks, args.workers, args.threads)
        results[engine] = (elapsed, cpu / tasks * 1e6)
        print(
            f"scheduler engine: {in_use:28s} wall {elapsed:6.2f} s   "
            f"scheduler CPU {cpu / tasks * 1e6:6.1f} µs/task ({tasks:,} tasks)",
            flush=True,
        )
    wall = results["python"][0] / results["rust"][0]
    cpu = results["python"][1] / results["rust"][1]
    print(
        f"pure Python / engine: wall {wall:.2f}x, scheduler CPU per task {cpu:.2f}x "
        f"({args.workers} worker processes x {args.threads} threads, {os.cpu_count()} cores)"
    )
    reading = [
        f"Reading: the engine changes the scheduler process's CPU per task {cpu:.2f}x.",
        "The wall time follows the worker processes, which share this machine's "
        f"{os.cpu_count()} cores with the scheduler, so it moves less than the CPU.",
    ]
    if cpu < 2:
        reading.append(
            "With few threads per worker most of the scheduler's CPU goes to comms, "
            "message serialization and the event loop, which stay in distributed's Python; "
            "the state machine the engine runs is the larger share with many workers and "
            "large graphs (python benches/scheduler_e2e.py; docs/benchmarks.md)."
        )
    print(" ".join(reading))


if __name__ == "__main__":
    main()
