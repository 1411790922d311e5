"""pytest plugin: run dask's own `dask/tests/test_order.py` against `dask_rsched.order`.

Loaded with ``-p dask_order_plugin`` before dask's test module imports `order`, it puts
a checking `order` in `dask.order`: every graph a test orders is also ordered by the
Rust order (legacy graphs after `convert_legacy_graph`, as the scheduler sees them) and
compared with dask's result on the same graph; the test itself gets
`dask_rsched.order`'s result. Counts go to ``$DASK_ORDER_STATS`` as JSON.
"""

from __future__ import annotations

import json
import os

import dask.order
import dask_rsched
from dask._task_spec import GraphNode, convert_legacy_graph
from dask_rsched import _core

_dask_order = getattr(dask.order.order, "__wrapped__", dask.order.order)
stats = {"graphs": 0, "rust": 0, "fallback": 0, "mismatch": 0, "tasks": 0}


def checking_order(dsk, dependencies=None, *, return_stats=False):
    stats["graphs"] += 1
    graph = dict(dsk)
    if not all(isinstance(v, GraphNode) for v in graph.values()):
        graph = convert_legacy_graph(graph)
    try:
        expected = _dask_order(dict(graph), return_stats=return_stats)
    except Exception:
        expected = None
    rust = _core.order_graph(graph, return_stats) if graph else {}
    if rust is None:
        stats["fallback"] += 1
    else:
        stats["rust"] += 1
        stats["tasks"] += len(graph)
        if rust != expected:
            stats["mismatch"] += 1
            raise AssertionError("dask_rsched.order differs from dask.order.order")
    return dask_rsched.order(dsk, dependencies, return_stats=return_stats)


checking_order.__wrapped__ = _dask_order  # type: ignore[attr-defined]
dask.order.order = checking_order


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("DASK_ORDER_STATS")
    if path:
        with open(path, "w") as f:
            json.dump(stats, f)
