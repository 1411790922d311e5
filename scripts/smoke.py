"""Smoke test of an installed dask-rsched: the installed dask and distributed are the
release named on the command line, the engine activates, and a LocalCluster with worker
processes computes on it.

    python scripts/smoke.py [EXPECTED_DISTRIBUTED_RELEASE]
"""

from __future__ import annotations

import sys

import dask
import dask.array as da
import dask_rsched
import distributed
from distributed import Client, LocalCluster


def engine_in_use(dask_scheduler: distributed.Scheduler) -> str | None:
    return dask_rsched.scheduler_engine(dask_scheduler)


def main() -> None:
    if len(sys.argv) > 1:
        release = sys.argv[1]
        assert distributed.__version__ == release, ("distributed replaced", distributed.__version__)
        assert dask.__version__ == release, ("dask replaced", dask.__version__)
    assert dask_rsched.install() is True
    try:
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
        )
    finally:
        dask_rsched.uninstall()
    with cluster, Client(cluster) as client:
        engine = client.run_on_scheduler(engine_in_use)
        assert engine and "dask-rsched" in engine, engine
        assert client.submit(sum, range(10)).result() == 45
        assert int(da.ones(1_000, chunks=100).sum().compute()) == 1_000
    print(f"smoke test passed: {engine} on distributed {distributed.__version__}")


if __name__ == "__main__":
    main()
