"""An old-style diagnostic ``SchedulerPlugin`` running on today's scheduler.

The body of ``transition`` and ``summary`` is written the way diagnostics were
before distributed 2022.4.2, against the scheduler's dictionaries
(``scheduler.rprocessing``, ``scheduler.processing``, ``scheduler.nbytes`` ...).
The only change needed is the one line in ``start`` that installs the legacy
views.  Run this file for a small demonstration.
"""

from __future__ import annotations

from typing import Any

import dask_rsched_compat
from distributed.diagnostics.plugin import SchedulerPlugin


class LegacyTaskReporter(SchedulerPlugin):
    """Records where tasks are sent, what they are estimated to cost, the size of
    their results and who blamed which failure."""

    name = "legacy-task-reporter"

    def __init__(self) -> None:
        self.scheduler: Any = None
        self.records: list[dict[str, Any]] = []

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        dask_rsched_compat.install_legacy_attributes(scheduler)  # the one new line

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        s = self.scheduler
        if finish == "processing":
            worker = s.rprocessing[key].address
            self.records.append(
                {
                    "event": "assigned",
                    "key": key,
                    "worker": worker,
                    "estimated_cost": s.processing[worker][key],
                    "worker_occupancy": s.occupancy[worker],
                }
            )
        elif finish == "memory":
            self.records.append(
                {
                    "event": "in-memory",
                    "key": key,
                    "nbytes": s.nbytes.get(key),
                    "who_has": sorted(s.who_has.get(key, ())),
                }
            )
        elif finish == "erred":
            self.records.append(
                {"event": "erred", "key": key, "blame": s.exceptions_blame.get(key)}
            )

    def summary(self) -> dict[str, dict[str, Any]]:
        s = self.scheduler
        return {
            addr: {
                "ncores": s.ncores[addr],
                "processing": len(s.processing[addr]),
                "occupancy": s.occupancy[addr],
                "in_memory": len(s.has_what[addr]),
                "bytes": s.worker_bytes[addr],
            }
            for addr in s.ncores
        }


def _demo() -> None:  # pragma: no cover - manual demonstration
    import pprint

    from distributed import Client, LocalCluster

    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(LegacyTaskReporter())
        plugin = cluster.scheduler.plugins[LegacyTaskReporter.name]
        x = client.submit(sum, [1, 2, 3], key="x")
        y = client.submit(lambda v: v * 2, x, key="y")
        y.result()
        pprint.pprint(plugin.records)
        pprint.pprint(plugin.summary())


if __name__ == "__main__":
    _demo()
