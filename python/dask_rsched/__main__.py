"""``python -m dask_rsched``: which engine, which versions, is this environment supported.

``python -m dask_rsched bench`` runs a quick side-by-side timing (pure Python, then the
engine) of the same graph on an in-process LocalCluster and prints the ratio.
"""

from __future__ import annotations

import argparse
import sys
import time


def info() -> int:
    import dask_rsched

    print(f"dask-rsched {dask_rsched.__version__}")
    try:
        from dask_rsched import _core

        print(f"compiled engine: loads ({_core.__file__})")
    except ImportError as e:  # pragma: no cover - the package imports it already
        print(f"compiled engine: does not load: {e}")
        return 1
    print(f"supported distributed releases: {', '.join(dask_rsched.SUPPORTED_DISTRIBUTED)}")
    try:
        import distributed
    except ImportError:
        print("installed distributed: none (pip install distributed)")
        return 1
    ok = distributed.__version__ in dask_rsched.SUPPORTED_DISTRIBUTED
    print(
        f"installed distributed: {distributed.__version__} "
        f"({'supported' if ok else 'not supported: schedulers stay pure Python'})"
    )
    return 0 if ok else 1


def _timed_run(engine: str, n: int) -> float:
    """Seconds for an n-task tree reduction on a fresh in-process cluster."""
    import dask
    from dask import delayed
    from distributed import Client, LocalCluster

    import dask_rsched

    # the engine is chosen here, not by a preload in the environment's config
    preload = [p for p in dask.config.get("distributed.scheduler.preload") if p != "dask_rsched"]
    if engine == "rust":
        dask_rsched.install()
    try:
        with dask.config.set({"distributed.scheduler.preload": preload}):
            cluster = LocalCluster(
                n_workers=4, threads_per_worker=1, processes=False, dashboard_address=None
            )
    finally:
        dask_rsched.uninstall()
    with cluster, Client(cluster) as client:
        if (dask_rsched.scheduler_engine(cluster.scheduler) is not None) != (engine == "rust"):
            raise RuntimeError(f"the {engine} scheduler did not start on that engine")
        layer = [delayed(int)(i) for i in range(n // 2)]
        while len(layer) > 1:
            layer = [delayed(sum)(layer[i : i + 2]) for i in range(0, len(layer), 2)]
        start = time.perf_counter()
        client.compute(layer[0]).result()
        return time.perf_counter() - start


def bench(n: int) -> int:
    times = {}
    for step, engine in enumerate(("python", "rust"), 1):
        print(f"[{step}/2] {engine:>6}: {n} tasks ...", end="", flush=True)
        times[engine] = _timed_run(engine, n)
        print(f" {times[engine]:.2f} s")
    ratio = times["python"] / times["rust"]
    print(
        f"engine {ratio:.2f}x the pure-Python scheduler's speed (wall time, workers in the "
        "same process: this bounds the scheduler's share; see benches/ for the "
        "scheduler-process CPU per task)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dask_rsched", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="a quick side-by-side timing against pure Python")
    b.add_argument("--tasks", type=int, default=20_000)
    args = parser.parse_args(argv)
    if args.command == "bench":
        return bench(args.tasks)
    return info()


if __name__ == "__main__":
    sys.exit(main())
