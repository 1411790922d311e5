"""Scheduler memory per task, pure Python vs the engine: the growth of the process's
resident set while the scheduler holds a submitted graph (the graph itself, shared by both,
is built before measuring). Each engine runs in its own subprocess.

    python benches/memory.py --tasks 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
from pathlib import Path


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def measure(engine: str, n: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import dask
    from differential import EngineSide, PythonSide
    from scheduler_only import tree

    dsk, root = tree(n)
    ordered = dask.order.order(dsk)
    with dask.config.set({"distributed.scheduler.work-stealing": False}):
        side_class = PythonSide if engine == "python" else EngineSide
        side = side_class(asyncio.new_event_loop(), validate=False)
        side.normalise = False
        side.add_client("c1")
        gc.collect()
        before = rss()
        side.update_graph(dsk, {root}, ordered, "c1", "ug")
        gc.collect()
        after = rss()
    return {"engine": engine, "tasks": len(dsk), "bytes_per_task": (after - before) / len(dsk)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--engine")
    args = ap.parse_args()
    if args.engine:
        print(json.dumps(measure(args.engine, args.tasks)))
        return
    for engine in ("python", "rust"):
        out = (
            subprocess.run(
                [sys.executable, __file__, "--engine", engine, "--tasks", str(args.tasks)],
                capture_output=True,
                text=True,
                check=True,
            )
            .stdout.strip()
            .splitlines()[-1]
        )
        r = json.loads(out)
        print(f"{r['engine']:>6}: {r['tasks']} tasks, {r['bytes_per_task']:.0f} bytes/task")


if __name__ == "__main__":
    main()
