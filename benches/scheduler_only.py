"""Scheduler-only benchmark: the scheduler's own cost per task, pure Python vs the engine,
side by side in one run.

Both sides get the same stimuli: N workers join, a graph is submitted, and every
`compute-task` is answered at once with a `task-finished` (fake in-process workers) until
the graph is done. The pure-Python side is a real `distributed.Scheduler` driven through
`_create_taskstate_from_graph` and `handle_task_finished`; the engine side is the same
Scheduler moved onto the engine (`dask_rsched.activate`), driven the same way.

    python benches/scheduler_only.py            # the default matrix
    python benches/scheduler_only.py --quick    # CI: checks that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import time
from pathlib import Path

import dask
from dask._task_spec import Task, TaskRef

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from differential import EngineSide, PythonSide


def inc(x: int) -> int:
    return x + 1


def add(*a: int) -> int:
    return sum(a)


def tree(n: int, fanin: int = 8) -> tuple[dict, object]:
    dsk: dict = {}
    layer = []
    for i in range(n):
        k = ("inc", i)
        dsk[k] = Task(k, inc, i)
        layer.append(k)
    lvl = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), fanin):
            k = (f"sum-{lvl}", j)
            dsk[k] = Task(k, add, *[TaskRef(d) for d in layer[j : j + fanin]])
            nxt.append(k)
        layer = nxt
        lvl += 1
    return dsk, layer[0]


def run(side, dsk: dict, root: object, ordered: dict, nworkers: int) -> tuple[float, int]:
    side.add_client("c1")
    for w in range(nworkers):
        addr = f"tcp://10.0.{w // 250}.{w % 250}:1234"
        side.add_worker(addr, f"worker-{w}", 2, f"add-{w}")
    gc.collect()
    gc.disable()
    t0 = time.perf_counter()
    _, wm = side.update_graph(dsk, {root}, ordered, "c1", "ug")
    n = 0
    while wm:
        pending = [(w, m) for w, ms in wm.items() for m in ms if m["op"] == "compute-task"]
        wm = {}
        for w, m in pending:
            _, new = side.task_finished(m["key"], w, side.real_run_id(m["run_id"]), f"tf-{n}")
            n += 1
            for k, v in new.items():
                wm.setdefault(k, []).extend(v)
    elapsed = time.perf_counter() - t0
    gc.enable()
    return elapsed, n


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", type=int, nargs="*")
    ap.add_argument("--workers", type=int, nargs="*")
    ap.add_argument("--out", default="bench-results/scheduler_only.md")
    args = ap.parse_args()
    tasks = args.tasks or ([1_000] if args.quick else [10_000, 100_000])
    workers = args.workers or ([10] if args.quick else [10, 100, 1000])
    rows = []
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        for n in tasks:
            dsk, root = tree(n)
            ordered = dask.order.order(dsk)
            for nw in workers:
                loop = asyncio.new_event_loop()
                py = PythonSide(loop, validate=False)
                py.normalise = False
                t_py, n_py = run(py, dsk, root, ordered, nw)
                py.close()
                loop.close()
                loop = asyncio.new_event_loop()
                rs = EngineSide(loop, validate=False)
                rs.normalise = False
                t_rs, n_rs = run(rs, dsk, root, ordered, nw)
                rs.close()
                loop.close()
                assert n_py == n_rs == len(dsk), (n_py, n_rs, len(dsk))
                us_py = t_py / len(dsk) * 1e6
                us_rs = t_rs / len(dsk) * 1e6
                rows.append((len(dsk), nw, us_py, us_rs, us_py / us_rs))
                print(
                    f"tasks={len(dsk):>8} workers={nw:>5} python={us_py:8.1f} us/task "
                    f"engine={us_rs:8.1f} us/task ratio={us_py / us_rs:6.1f}x",
                    flush=True,
                )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "| tasks | workers | pure Python (µs/task) | engine (µs/task) | speed-up |",
        "|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {t} | {w} | {a:.1f} | {b:.1f} | {r:.1f}x |" for t, w, a, b, r in rows]
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
