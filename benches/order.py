"""`order` alone, side by side: `dask_rsched.order` (Rust) against `dask.order.order`
on the same graph in one process, with the results compared key by key.

    python benches/order.py [--tasks 100000 1000000] [--graphs tree array shuffle] [--quick]

Graphs (as the scheduler sees them: `Task`/`DataNode` values after
`convert_legacy_graph`):

- tree: a 4-way tree reduction over `tasks * 3 / 4` loads (str keys);
- array: `((x + x.T) * 2).sum(axis=0)` of a chunked `dask.array` (tuple keys);
- shuffle: a two-stage, 8-way tasks shuffle over partitions (each stage splits every
  partition 8 ways and gathers each output from 8 splits; tuple keys).

The Rust order runs three times (the best is kept), dask's once.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time


def _f(*args):  # pragma: no cover - never called
    return None


def tree(n: int) -> dict:
    from dask._task_spec import Task, TaskRef

    dsk: dict = {}
    layer = [f"load-{i}" for i in range(max(n * 3 // 4, 1))]
    for k in layer:
        dsk[k] = Task(k, _f)
    level = 0
    while len(layer) > 1:
        level += 1
        nxt = []
        for j in range(0, len(layer), 4):
            k = f"sum-{level}-{j // 4}"
            dsk[k] = Task(k, _f, *(TaskRef(x) for x in layer[j : j + 4]))
            nxt.append(k)
        layer = nxt
    return dsk


def array(n: int) -> dict:
    import dask.array as da
    from dask._task_spec import convert_legacy_graph

    side = max(int((n / 5.2) ** 0.5), 2) * 10
    x = da.ones((side, side), chunks=10)
    return convert_legacy_graph(dict(((x + x.T) * 2).sum(axis=0).__dask_graph__()))


def shuffle(n: int, ways: int = 8, stages: int = 2) -> dict:
    from dask._task_spec import Task, TaskRef

    parts = max(n // (stages * (ways + 1) + 1) // ways**stages, 1) * ways**stages
    dsk: dict = {}
    prev = []
    for i in range(parts):
        k = ("input", i)
        dsk[k] = Task(k, _f)
        prev.append(k)
    for s in range(stages):
        stride = ways**s
        for i in range(parts):
            for j in range(ways):
                k = ("split", s, i, j)
                dsk[k] = Task(k, _f, TaskRef(prev[i]))
        outs = []
        for i in range(parts):
            base = (i // (stride * ways)) * (stride * ways) + i % stride
            j = (i // stride) % ways
            members = [base + m * stride for m in range(ways)]
            k = ("shuffle", s, i)
            dsk[k] = Task(k, _f, *(TaskRef(("split", s, m, j)) for m in members))
            outs.append(k)
        prev = outs
    return dsk


GRAPHS = {"tree": tree, "array": array, "shuffle": shuffle}


def measure(name: str, n: int, rust_runs: int = 3) -> dict:
    import dask.order
    import dask_rsched

    dask_order = getattr(dask.order.order, "__wrapped__", dask.order.order)
    dsk = GRAPHS[name](n)
    gc.collect()
    rust_s = []
    for _ in range(rust_runs):
        t = time.perf_counter()
        ours = dask_rsched.order(dsk)
        rust_s.append(time.perf_counter() - t)
    t = time.perf_counter()
    theirs = dask_order(dsk)
    dask_s = time.perf_counter() - t
    return {
        "graph": name,
        "tasks": len(dsk),
        "dask_s": dask_s,
        "rust_s": min(rust_s),
        "ratio": dask_s / min(rust_s),
        "identical": ours == theirs,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--graphs", nargs="+", default=list(GRAPHS), choices=list(GRAPHS))
    ap.add_argument("--quick", action="store_true", help="10,000 tasks")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else args.tasks
    print(
        "| graph | tasks | dask.order s | Rust s | dask µs/task | Rust µs/task | ratio "
        "| identical |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|",
        flush=True,
    )
    ok = True
    for n in sizes:
        for name in args.graphs:
            r = measure(name, n)
            ok &= r["identical"]
            print(
                f"| {r['graph']} | {r['tasks']:,} | {r['dask_s']:.2f} | {r['rust_s']:.3f} "
                f"| {r['dask_s'] / r['tasks'] * 1e6:.1f} | {r['rust_s'] / r['tasks'] * 1e6:.2f} "
                f"| {r['ratio']:.1f}x | {'yes' if r['identical'] else 'NO'} |",
                flush=True,
            )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
