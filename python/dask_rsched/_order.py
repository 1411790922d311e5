"""`order`: dask's static task priorities (`dask.order.order`) computed in Rust, the
same priority for every key.

dask's result depends on the order this interpreter iterates its sets; the engine lays
sets out as CPython does, which is checked against real sets once per process. Graphs
the Rust order does not reproduce (values that are not dask `GraphNode`s, cycles, two
keys with the same ``str``) go to dask's own function.
"""

from __future__ import annotations

import contextvars
import random
from collections.abc import Mapping
from typing import Any

from dask_rsched import _core

#: Set inside an engine-backed scheduler's `update_graph` (distributed offloads
#: `dask.order.order` to a thread with this context): the `dask.order.order` it calls is
#: this module's, which notes in the dict the graph it ordered and the keys that graph
#: names without holding (`"graph"`, `"external"`).
ENGINE_ORDER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "dask_rsched_engine_order", default=None
)

_layout_matches: bool | None = None


def set_layout_matches() -> bool:
    """Whether the engine's set layout gives this interpreter's set iteration order
    (checked once, on sets of ints after adds, discards and pops, then on small graphs
    against dask's own order)."""
    global _layout_matches
    if _layout_matches is None:
        rng = random.Random(20261204)
        ok = True
        for length in (3, 9, 30, 100, 400, 3000):
            ops = []
            for _ in range(length):
                r = rng.random()
                op = 0 if r < 0.65 else 1 if r < 0.9 else 2
                ops.append((op, rng.randrange(-64, 4 * length) * rng.choice((1, 8, 32, 1 << 20))))
            s: set[int] = set()
            popped = []
            for op, v in ops:
                if op == 0:
                    s.add(v)
                elif op == 1:
                    s.discard(v)
                elif s:
                    popped.append(s.pop())
            ok = ok and _core.pyset_order(ops) == [tuple(s), tuple(popped)]
        _layout_matches = ok and _small_graphs_match(rng)
    return _layout_matches


def _small_graphs_match(rng: random.Random) -> bool:
    """The Rust order gives dask's priorities on a few small graphs whose result hangs
    on set order: wide fan-ins (a difference copying its set), shared data roots, str
    and tuple keys."""
    from dask._task_spec import DataNode, Task, TaskRef

    for n in (12, 40, 90):
        dsk: dict[Any, Any] = {}
        keys: list[Any] = []
        for i in range(n):
            key: Any = f"k-{rng.randrange(1 << 30):x}-{i}" if i % 3 else ("t", i)
            deps = rng.sample(keys, min(len(keys), rng.choice((0, 1, 2, 3, 9))))
            if not deps and rng.random() < 0.4:
                dsk[key] = DataNode(key, i)
            else:
                dsk[key] = Task(key, _no_op, *(TaskRef(d) for d in deps))
            keys.append(key)
        for stats in (False, True):
            if _core.order_graph(dsk, stats) != _dask_order(dict(dsk), return_stats=stats):
                return False
    return True


def _no_op(*args: Any) -> None:
    return None


def order(
    dsk: Mapping[Any, Any],
    dependencies: Mapping[Any, Any] | None = None,
    *,
    return_stats: bool = False,
    _seen: dict[str, Any] | None = None,
) -> dict[Any, Any]:
    """`dask.order.order` in Rust: ``{key: priority}``, or ``{key: Order(priority,
    critical_path)}`` with ``return_stats=True``, as dask gives them.

    ``dependencies`` is accepted and ignored, as dask ignores it (it reads each task's
    own). The GIL is released while the order is computed.
    """
    if not dsk:
        return {}
    graph = dsk if type(dsk) is dict else dict(dsk)
    if set_layout_matches():
        external: list[Any] = []
        read: list[Any] | None = None if _seen is None else []
        tasks = 0 if _seen is None else _seen.get("tasks", 0)
        wanted = None if _seen is None else _seen.get("keys")
        result = _core.order_graph(graph, return_stats, external, read, tasks, wanted)
        if result is not None:
            if _seen is not None:
                _seen.update(graph=graph, external=external, read=read[0] if read else None)
            return result
    return _dask_order(graph, return_stats=return_stats)


def lost_keys(seen: dict[str, Any] | None, dsk: Any, keys: Any, tasks: Any) -> set | None:
    """`_find_lost_dependencies` without walking the graph, when the Rust order saw this
    graph and every key it names outside itself is held: then only a requested key that
    is neither in the graph nor held is lost. `None` when the walk is needed."""
    if not seen or seen.get("graph") is not dsk:
        return None
    if not all(k in tasks for k in seen["external"]):
        return None
    return {k for k in keys if k not in dsk and k not in tasks}


def graph_read(seen: dict[str, Any] | None, dsk: Any) -> Any:
    """What the Rust order read of `dsk` (a `ReadGraph`, for `Engine.update_graph`), or
    None if it did not order this graph."""
    if not seen or seen.get("graph") is not dsk:
        return None
    return seen.get("read")


def _dask_order(dsk: Any, dependencies: Any = None, **kwargs: Any) -> Any:
    import dask.order

    original = getattr(dask.order.order, "__wrapped__", dask.order.order)
    return original(dsk, dependencies, **kwargs)


def _scheduler_order(
    dsk: Mapping[Any, Any],
    dependencies: Mapping[Any, Any] | None = None,
    *,
    return_stats: bool = False,
) -> dict[Any, Any]:
    seen = ENGINE_ORDER.get()
    if seen is not None:
        return order(dsk, return_stats=return_stats, _seen=seen)
    return _dask_order(dsk, dependencies, return_stats=return_stats)


def install_scheduler_order() -> None:
    """`dask.order.order` becomes a dispatcher: the Rust order inside an engine-backed
    scheduler's `update_graph`, dask's own everywhere else."""
    import dask.order

    if getattr(dask.order.order, "_dask_rsched", False):
        return
    original = dask.order.order
    _scheduler_order.__wrapped__ = original  # type: ignore[attr-defined]
    _scheduler_order._dask_rsched = True  # type: ignore[attr-defined]
    _scheduler_order.__doc__ = original.__doc__
    dask.order.order = _scheduler_order  # type: ignore[assignment]
