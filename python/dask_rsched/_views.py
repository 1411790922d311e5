"""Read-only views of the engine's containers with the types distributed's code expects.

`Scheduler.tasks` and `Scheduler.workers` are live mappings over the engine; the smaller
scheduler-wide containers (`idle`, `running`, `queued`, ...) are rebuilt on each access,
which only periodic callbacks, diagnostics and extensions do (the hot path never does).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping, Sequence, ValuesView
from typing import Any

from sortedcontainers import SortedDict

from dask_rsched._core import Engine


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

    def __repr__(self) -> str:
        return f"<WorkersView: {len(self)} workers>"

    def _to_dict(self, *, exclude: Any = ()) -> dict:
        from distributed.utils import recursive_to_dict

        return recursive_to_dict(dict(self), exclude=exclude)


class QueuedView:
    """`SchedulerState.queued` (a HeapSet ordered by priority), read-only."""

    __slots__ = ("_tasks",)

    def __init__(self, tasks: list[Any]) -> None:
        self._tasks = tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __bool__(self) -> bool:
        return bool(self._tasks)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._tasks)

    def __contains__(self, ts: object) -> bool:
        return ts in set(self._tasks)

    def peek(self) -> Any:
        if not self._tasks:
            raise KeyError("peek into empty heap")
        return self._tasks[0]

    def peekn(self, n: int) -> Iterator[Any]:
        return iter(self._tasks[:n])

    def sorted(self) -> Iterator[Any]:
        return iter(self._tasks)

    def __repr__(self) -> str:
        return f"<QueuedView: {len(self)} items>"


def container(engine: Engine, name: str) -> Any:
    """One scheduler-wide container as distributed's type, holding engine handles; only
    the requested one is converted."""
    raw = engine.containers(name)
    worker = engine.get_worker
    task = engine.get_task
    if name == "idle":
        return SortedDict((a, worker(a)) for a in raw["idle"])
    if name in ("running", "saturated", "idle_task_count"):
        return {worker(a) for a in raw[name]}
    if name == "queued":
        return QueuedView([task(k) for k in raw["queued"]])
    if name == "unrunnable":
        return {
            task(k): since
            for k, since in zip(raw["unrunnable"], raw["unrunnable_since"], strict=True)
        }
    if name == "replicated_tasks":
        return {task(k) for k in raw["replicated_tasks"]}
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
        return self._engine.transition_log_entry(index)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._engine.transition_log)

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
