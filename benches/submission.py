"""Graph submission side by side: a real `distributed.Scheduler`, pure Python vs on the
engine, taking a graph through `dask.order` and `_create_taskstate_from_graph` (what
`update-graph` runs once the graph is deserialised and materialised). Each engine orders
as its scheduler does: dask's `order` on pure Python, `dask_rsched.order` (Rust) on the
engine, whose reading of the graph the engine's state creation then uses, as in
`update_graph`; the two are timed apart.

    python benches/submission.py [--tasks 200000] [--workloads tree array] [--quick]

Per engine and workload, each in a fresh process: microseconds per task of submission
(no workers: the tasks end up `no-worker` or queued, so no messages go out), the longest
full garbage collection (`gc.collect()`) with the graph held, the RSS growth per task,
and the live heap per task.

The live heap is the memory method: a second process with `PYTHONMALLOC=malloc`, so that
Python's objects and the engine's Rust records all come from glibc's malloc, and
`mallinfo2()` counts the bytes in use (`uordblks + hblkhd`) before and after the
submission, both after a full collection. The graph's own objects (its run_specs and
keys) exist before, so they are not counted; what is counted is what the scheduler keeps
per task. Unlike RSS it does not count memory freed but kept by the allocator.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def build(workload: str, n: int) -> tuple[dict, set]:
    if workload == "tree":
        from scheduler_e2e import build_graph

        dsk, wanted, _ = build_graph("tree", n, [])
        return dsk, wanted
    import dask
    import dask.array as da
    from dask._task_spec import convert_legacy_graph

    side = max(int((n / 2.5) ** 0.5), 2) * 10
    y = (da.ones((side, side), chunks=(10, 10)) + 1).sum()
    expr = dask.base.collections_to_expr([y]).optimize()
    dsk = convert_legacy_graph(dict(expr.__dask_graph__()))
    return dsk, set(dask.core.flatten(expr.__dask_keys__()))


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def heap_in_use() -> int | None:
    """Bytes glibc's malloc has handed out and not got back (None without glibc)."""
    try:
        libc = ctypes.CDLL(None)
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _Mallinfo2
    info = mallinfo2()
    return info.uordblks + info.hblkhd


async def measure(engine: str, workload: str, n: int) -> dict:
    import dask
    from scheduler_e2e import new_scheduler, rss, submit

    async with new_scheduler(engine) as s:
        s.client_desires_keys(keys=[], client="bench-client")
        dsk, wanted = build(workload, n)
        import dask_rsched
        from dask_rsched import _order

        # as in `update_graph`: on the engine, the order's reading of the graph goes to
        # the state creation
        seen: dict = {}
        token = _order.ENGINE_ORDER.set(seen if engine == "rust" else None)
        t = time.perf_counter()
        ordered = dask_rsched.order(dsk, _seen=seen) if engine == "rust" else dask.order.order(dsk)
        order_s = time.perf_counter() - t
        gc.collect()
        before, heap_before = rss(), heap_in_use()
        # what the order read goes to the state creation and is freed or taken by it
        # (the task arena, made in the order's thread): not counted as there before
        read_bytes = seen["read"].nbytes if seen.get("read") is not None else 0
        before -= read_bytes
        if heap_before is not None:
            heap_before -= read_bytes
        t = time.perf_counter()
        submit(s, dsk, wanted, {}, ordered, "bench-graph")
        submit_s = time.perf_counter() - t
        _order.ENGINE_ORDER.reset(token)
        seen.clear()
        gc.collect()
        # the graph and its order existed before: neither is counted
        heap_after = heap_in_use()
        del dsk, ordered
        gc.collect()
        grown = rss() - before
        pauses = []
        for _ in range(3):
            t = time.perf_counter()
            gc.collect()
            pauses.append(time.perf_counter() - t)
        tasks = len(s.tasks)
        return {
            "engine": engine,
            "workload": workload,
            "tasks": tasks,
            "order_us": order_s / tasks * 1e6,
            "submit_us": submit_s / tasks * 1e6,
            "gc_pause_ms": max(pauses) * 1e3,
            "rss_per_task": grown / tasks,
            "heap_per_task": (None if heap_before is None else (heap_after - heap_before) / tasks),
        }


def live_heap(engine: str, workload: str, n: int) -> float | None:
    """The live heap per task (the memory method), from a process of its own."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", f"{engine},{workload},{n}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONMALLOC": "malloc"},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["heap_per_task"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=200_000)
    ap.add_argument("--workloads", nargs="+", default=["tree", "array"])
    ap.add_argument("--quick", action="store_true", help="10,000 tasks")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        engine, workload, n = args.one.split(",")
        print(json.dumps(asyncio.run(measure(engine, workload, int(n)))))
        return
    n = 10_000 if args.quick else args.tasks
    print(
        f"{'workload':8s} {'tasks':>9s} {'engine':12s} {'submit µs/task':>15s} "
        f"{'gc pause ms':>12s} {'RSS B/task':>11s} {'heap B/task':>12s} "
        f"{'order µs/task':>14s}"
    )

    def one(engine: str, workload: str) -> dict:
        out = subprocess.run(
            [sys.executable, __file__, "--one", f"{engine},{workload},{n}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return json.loads(out.strip().splitlines()[-1])

    for workload in args.workloads:
        rows = {}
        for engine in ("python", "rust"):
            r = rows[engine] = one(engine, workload)
            live = live_heap(engine, workload, n)
            name = "pure Python" if engine == "python" else "dask-rsched"
            print(
                f"{workload:8s} {r['tasks']:9,d} {name:12s} {r['submit_us']:15.2f} "
                f"{r['gc_pause_ms']:12.1f} {r['rss_per_task']:11.0f} "
                f"{'n/a' if live is None else f'{live:.0f}':>12s} {r['order_us']:14.2f}",
                flush=True,
            )
        p, e = rows["python"], rows["rust"]
        ratio = p["submit_us"] / e["submit_us"]
        order_ratio = p["order_us"] / e["order_us"]
        both = (p["submit_us"] + p["order_us"]) / (e["submit_us"] + e["order_us"])
        gc_ratio = p["gc_pause_ms"] / max(e["gc_pause_ms"], 1e-3)
        print(
            f"{workload:8s} pure Python / engine: submission {ratio:.1f}x, order "
            f"{order_ratio:.1f}x, order + submission {both:.1f}x, GC {gc_ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
