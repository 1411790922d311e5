"""Views of the engine's containers with the types distributed's code expects.

`Scheduler.tasks` and `Scheduler.workers` are live mappings over the engine; the smaller
scheduler-wide containers (`idle`, `running`, `queued`, ...) are rebuilt on each access,
which only periodic callbacks, diagnostics, extensions and the worker lifecycle do (the
hot path never does). The writes distributed's own worker lifecycle makes
(`workers[address] = ws`, `del workers[address]`, `running.add(ws)`, `idle.pop(address)`,
...) reach the engine.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from typing import Any

from distributed._stories import scheduler_story
from distributed.scheduler import ErredTask, Transition
from sortedcontainers import SortedDict

from dask_rsched._core import Engine, TaskState, WorkerState


class TasksView(Mapping):
    """`SchedulerState.tasks`: key -> TaskState, in creation order."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getitem__(self, key: Any) -> Any:
        ts = self._engine.get_task(key)
        if ts is None:
            raise KeyError(key)
        return ts

    def get(self, key: Any, default: Any = None) -> Any:
        ts = self._engine.get_task(key)
        return default if ts is None else ts

    def __contains__(self, key: object) -> bool:
        return self._engine.get_task(key) is not None

    def __iter__(self) -> Iterator[Any]:
        return self._engine.iter_task_keys()

    def __len__(self) -> int:
        return len(self._engine)

    def items(self) -> ItemsView:
        return _TaskItems(self)

    def values(self) -> ValuesView:
        return _TaskValues(self)

    def __repr__(self) -> str:
        return f"<TasksView: {len(self)} tasks>"

    def _to_dict(self, *, exclude: Any = ()) -> dict:
        from distributed.utils import recursive_to_dict

        return recursive_to_dict(dict(self), exclude=exclude)


class _TaskItems(ItemsView):
    """`tasks.items()` iterated in Rust, one handle per task, nothing copied."""

    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._engine.iter_task_items()


class _TaskValues(ValuesView):
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return self._mapping._engine.iter_task_items(values=True)


class WorkersView(Mapping):
    """`SchedulerState.workers`: address -> WorkerState, sorted by address."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getitem__(self, address: Any) -> Any:
        ws = self._engine.get_worker(address) if isinstance(address, str) else None
        if ws is None:
            raise KeyError(address)
        return ws

    def get(self, address: Any, default: Any = None) -> Any:
        ws = self._engine.get_worker(address) if isinstance(address, str) else None
        return default if ws is None else ws

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self._engine.get_worker(address) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._engine.worker_addresses())

    def __len__(self) -> int:
        return self._engine.worker_count()

    def __setitem__(self, address: str, ws: Any) -> None:
        """`workers[address] = WorkerState(...)` in distributed's `add_worker`: the
        worker joins the engine, and the attributes only Python reads move to its
        handle (which serves the rest)."""
        self._engine.add_worker(
            address,
            server_id=ws.server_id,
            nthreads=ws.nthreads,
            memory_limit=ws.memory_limit,
            name=ws.name,
            status=ws.status.name,
        )
        handle = self._engine.get_worker(address)
        served = type(handle)
        for attr in type(ws).__slots__:
            if not hasattr(served, attr) and hasattr(ws, attr):
                handle.__dict__[attr] = getattr(ws, attr)

    def __delitem__(self, address: str) -> None:
        """`del workers[address]` in distributed's `remove_worker`."""
        self._engine.detach_worker(address)

    def __repr__(self) -> str:
        return f"<WorkersView: {len(self)} workers>"

    def _to_dict(self, *, exclude: Any = ()) -> dict:
        from distributed.utils import recursive_to_dict

        return recursive_to_dict(dict(self), exclude=exclude)


class QueuedView:
    """`SchedulerState.queued` (a HeapSet ordered by priority), read-only and live: its
    length and truth come from the engine without building the queue (distributed's
    `check_idle` asks every 250 ms); iterating makes a handle per task as it goes
    (`adaptive_target` takes the first 100)."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _iter(self) -> Iterator[Any]:
        task = self._engine.get_task
        return (task(k) for k in self._engine.containers("queued")["queued"])

    def __len__(self) -> int:
        return self._engine.waiting_counts()[0]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __iter__(self) -> Iterator[Any]:
        return self._iter()

    def __contains__(self, ts: object) -> bool:
        return bool(self) and any(ts is t or ts == t for t in self._iter())

    def peek(self) -> Any:
        for ts in self._iter():
            return ts
        raise KeyError("peek into empty heap")

    def peekn(self, n: int) -> Iterator[Any]:
        return itertools.islice(self._iter(), n)

    def sorted(self) -> Iterator[Any]:
        return self._iter()

    def __repr__(self) -> str:
        return f"<QueuedView: {len(self)} items>"


class UnrunnableView(Mapping):
    """`SchedulerState.unrunnable` (task -> `monotonic()` when it became unrunnable),
    read-only and live, its length from the engine without building it; `keys()`
    iterates lazily, `items()` and `values()` build the dict once."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _dict(self) -> dict[Any, float]:
        if not len(self):
            return {}
        raw = self._engine.containers("unrunnable")
        task = self._engine.get_task
        return {
            task(k): since
            for k, since in zip(raw["unrunnable"], raw["unrunnable_since"], strict=True)
        }

    def __len__(self) -> int:
        return self._engine.waiting_counts()[1]

    def __iter__(self) -> Iterator[Any]:
        if not len(self):
            return iter(())
        task = self._engine.get_task
        return (task(k) for k in self._engine.containers("unrunnable")["unrunnable"])

    def __getitem__(self, ts: Any) -> float:
        return self._dict()[ts]

    def __contains__(self, ts: object) -> bool:
        return bool(len(self)) and ts in self._dict()

    def items(self) -> ItemsView[Any, float]:
        return self._dict().items()

    def values(self) -> ValuesView[float]:
        return self._dict().values()

    def get(self, ts: Any, default: Any = None) -> Any:
        return self._dict().get(ts, default)

    def __eq__(self, other: object) -> bool:
        return self._dict() == (dict(other) if isinstance(other, Mapping) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._dict())


class HandleSet(set):
    """A set of handles that iterates in the engine's order, which is distributed's
    (a new Python set of the same objects can iterate in another order, and the order
    decides ties where distributed's code iterates: `remove_worker`, `replicate`, ...).
    Once changed, it iterates as a plain set."""

    __slots__ = ("_order",)

    def __init__(self, items: Any = ()) -> None:
        order = tuple(items)
        super().__init__(order)
        self._order: tuple | None = order

    def __iter__(self) -> Iterator[Any]:
        return super().__iter__() if self._order is None else iter(self._order)


def _forgetting_order(name: str) -> Any:
    method = getattr(set, name)

    def change(self: HandleSet, *args: Any) -> Any:
        self._order = None
        return method(self, *args)

    change.__name__ = name
    return change


for _name in (
    "add", "discard", "remove", "pop", "clear", "update", "difference_update",
    "intersection_update", "symmetric_difference_update", "__ior__", "__iand__",
    "__isub__", "__ixor__",
):  # fmt: skip
    setattr(HandleSet, _name, _forgetting_order(_name))


class _WorkerSet(HandleSet):
    """A snapshot of one of the engine's worker sets (`running`, `saturated`,
    `idle_task_count`); `add` and `discard`, as distributed's worker lifecycle calls
    them, change the engine's set."""

    __slots__ = ("_engine", "_name")

    def __init__(self, engine: Engine, name: str, workers: Any) -> None:
        super().__init__(workers)
        self._engine = engine
        self._name = name

    def add(self, ws: Any) -> None:
        self._engine.update_worker_container(self._name, worker_ref(ws), True)
        super().add(ws)

    def discard(self, ws: Any) -> None:
        self._engine.update_worker_container(self._name, worker_ref(ws), False)
        super().discard(ws)


class _IdleDict(SortedDict):
    """A snapshot of `idle` (address -> WorkerState, sorted); `pop(address)`, as
    distributed's worker lifecycle calls it, changes the engine's."""

    def __init__(self, engine: Engine, items: Any) -> None:
        super().__init__(items)
        self._engine = engine

    def pop(self, address: Any, *default: Any) -> Any:
        if address in self:
            self._engine.update_worker_container("idle", address, False)
        return super().pop(address, *default)


def worker_ref(ws: Any) -> Any:
    """A worker as the engine is told of it: its handle, or (distributed's own
    `WorkerState`, in `add_worker`) its address."""
    return ws if isinstance(ws, WorkerState) else ws.address


def story(engine: Engine, *keys_or_tasks_or_stimuli: Any) -> list:
    """`SchedulerState.story`"""
    keys = {k.key if isinstance(k, TaskState) else k for k in keys_or_tasks_or_stimuli}
    return scheduler_story(keys, list(TransitionLogView(engine)))


def erred_tasks(engine: Engine) -> deque:
    """`SchedulerState.erred_tasks`, newest first."""
    records, maxlen = engine.erred_task_records()
    return deque((ErredTask(*fields) for fields in records), maxlen=maxlen)


def container(engine: Engine, name: str) -> Any:
    """One scheduler-wide container as distributed's type, holding engine handles; only
    the requested one is converted."""
    raw = engine.containers(name)
    worker = engine.get_worker
    task = engine.get_task
    if name == "idle":
        return _IdleDict(engine, ((a, worker(a)) for a in raw["idle"]))
    if name in ("running", "saturated", "idle_task_count"):
        return _WorkerSet(engine, name, (worker(a) for a in raw[name]))
    if name == "replicated_tasks":
        return HandleSet(task(k) for k in raw["replicated_tasks"])
    return raw[name]


class TransitionLogView(Sequence):
    """`SchedulerState.transition_log` (a bounded deque in distributed): the engine's
    log, read on access; `clear()` clears it in the engine."""

    __slots__ = ("_engine",)

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __len__(self) -> int:
        return self._engine.transition_log_len()

    def __getitem__(self, index: Any) -> Any:
        if not isinstance(index, int):
            # as distributed's deque
            raise TypeError(f"sequence index must be integer, not '{type(index).__name__}'")
        return Transition(*self._engine.transition_log_entry(index))

    def __iter__(self) -> Iterator[Any]:
        return (Transition(*fields) for fields in self._engine.transition_log_entries())

    def clear(self) -> None:
        self._engine.clear_transition_log()

    def _to_dict(self, *, exclude: Any = ()) -> list:
        """Cluster dumps (`recursive_to_dict`) store it as distributed's deque: a list."""
        from distributed.utils import recursive_to_dict

        return recursive_to_dict(list(self), exclude=exclude)

    def __eq__(self, other: object) -> bool:
        return list(self) == (list(other) if isinstance(other, Sequence) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"TransitionLogView({list(self)!r})"
