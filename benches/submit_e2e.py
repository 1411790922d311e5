"""Client to running, side by side: a real `dask scheduler` process (pure Python, or with
`--preload dask_rsched`) receives a graph from a Client in this process; measured are the
time from `client.get` until the scheduler holds every task (deserialise, materialise,
order, state), the scheduler process's CPU over that time, and its longest event-loop
stall (distributed's own `tick-duration` digest, reset just before the submission).

    python benches/submit_e2e.py [--tasks 200000] [--graphs tree array] [--quick]

No workers join, so the tasks stop at `no-worker`/`queued` and nothing else runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def _reset(dask_scheduler) -> None:
    dask_scheduler.digests_max.clear()


def _state(dask_scheduler) -> tuple[int, float]:
    return len(dask_scheduler.tasks), float(dask_scheduler.digests_max.get("tick-duration", 0))


def _phases(dask_scheduler) -> dict:
    """The phases distributed timed in its last `update-graph` event (its
    `state_initialization` is the synchronous part; distributed logs it negated), and the
    longest synchronous stretch of the engine's graph work (`None` on pure Python)."""
    for _, msg in reversed(dask_scheduler.get_events("scheduler")):
        if isinstance(msg, dict) and msg.get("action") == "update-graph" and "metrics" in msg:
            m = msg["metrics"]
            return {
                "materialize_s": m["materialization_duration_seconds"],
                "order_s": -m["ordering_duration_seconds"],
                "sync_s": -m["state_initialization_duration_seconds"],
                "engine_step_s": getattr(dask_scheduler, "_rsched_longest_graph_step", None),
            }
    return {}


@contextlib.contextmanager
def scheduler_process(engine: str):
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        sched_file = os.path.join(tmp, "scheduler.json")
        cmd = [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            ":0",
            "--scheduler-file",
            sched_file,
        ]
        if engine == "rust":
            cmd += ["--preload", "dask_rsched"]
        # the graphs' functions live in this directory's `order` module
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(Path(__file__).parent), *filter(None, [env.get("PYTHONPATH")])]
        )
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            for _ in range(600):
                if os.path.exists(sched_file) and os.path.getsize(sched_file) > 0:
                    break
                time.sleep(0.05)
            time.sleep(0.2)
            yield sched_file, psutil.Process(proc.pid)
        finally:
            proc.terminate()
            proc.wait(30)


def measure(engine: str, graph: str, n: int) -> dict:
    from distributed import Client
    from order import GRAPHS

    dsk = GRAPHS[graph](n)
    # every sink, so that the scheduler's culling keeps the whole graph
    needed = {d for task in dsk.values() for d in task.dependencies}
    keys = [k for k in dsk if k not in needed]
    with scheduler_process(engine) as (sched_file, proc):
        with Client(scheduler_file=sched_file, timeout=60) as client:
            client.run_on_scheduler(_reset)
            cpu0 = sum(proc.cpu_times()[:2])
            t = time.perf_counter()
            futures = client.get(dsk, keys, sync=False)
            while True:
                held, stall = client.run_on_scheduler(_state)
                if held >= len(dsk):
                    break
                time.sleep(0.05)
            wall = time.perf_counter() - t
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            # the tick that measures a stall runs only once the loop is free again
            time.sleep(0.3)
            _, stall = client.run_on_scheduler(_state)
            phases = client.run_on_scheduler(_phases)
            del futures
    return {
        "engine": engine,
        "graph": graph,
        "tasks": len(dsk),
        "wall_s": wall,
        "cpu_s": cpu,
        "stall_s": stall,
        **phases,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--graphs", nargs="+", default=["tree", "array"])
    ap.add_argument("--quick", action="store_true", help="10,000 tasks")
    ap.add_argument("--engines", nargs="+", default=["python", "rust"])
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    n = 10_000 if args.quick else args.tasks
    print(
        "| graph | tasks | engine | client to running s | scheduler CPU s | longest stall s "
        "| update-graph's synchronous part s | engine's longest step s |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|",
        flush=True,
    )
    results = []
    for graph in args.graphs:
        rows = {}
        for engine in args.engines:
            r = rows[engine] = measure(engine, graph, n)
            results.append(r)
            name = "pure Python" if engine == "python" else "dask-rsched"
            step = r.get("engine_step_s")
            print(
                f"| {graph} | {r['tasks']:,} | {name} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} "
                f"| {r['stall_s']:.2f} | {r.get('sync_s', float('nan')):.2f} "
                f"| {'' if step is None else f'{step:.2f}'} |",
                flush=True,
            )
        if len(rows) == 2:
            p, e = rows["python"], rows["rust"]
            print(
                f"| {graph} | | pure Python / engine | {p['wall_s'] / e['wall_s']:.1f}x "
                f"| {p['cpu_s'] / e['cpu_s']:.1f}x "
                f"| {p['stall_s'] / max(e['stall_s'], 1e-3):.1f}x | | |",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
