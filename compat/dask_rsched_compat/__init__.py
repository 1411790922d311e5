"""Legacy dictionary views of the Dask scheduler state.

From distributed 1.21.0 to 2022.4.1 the scheduler presented its state both as
``TaskState``/``WorkerState``/``ClientState`` objects and, for older diagnostics,
as dictionaries such as ``scheduler.who_has`` or ``scheduler.processing``.
distributed 2022.4.2 removed those dictionaries.  This module presents them
again, as live read-only views computed from the state objects on every access.

The views only use distributed's public state attribute API (``scheduler.tasks``,
``scheduler.workers``, ``scheduler.clients`` and the attributes of the state
objects), so they work on the pure-Python scheduler as well as on any engine that
presents the same attributes (such as the dask-rsched Rust engine).

Usage::

    import dask_rsched_compat

    views = dask_rsched_compat.legacy_views(scheduler)
    views.who_has["x"]                                  # {'tcp://127.0.0.1:40001'}

    dask_rsched_compat.install_legacy_attributes(scheduler)
    scheduler.processing["tcp://127.0.0.1:40001"]       # {'y': 0.5}

Lookups are O(1) (one lookup in the underlying state mapping plus the cost of
building the value), iteration is lazy, and nothing copies the whole state.
"""

from __future__ import annotations

from collections.abc import (
    Callable,
    Hashable,
    ItemsView,
    Iterator,
    Mapping,
    ValuesView,
)
from collections.abc import Set as AbstractSet
from typing import Any, Final, Generic, TypeVar

__all__ = [
    "CLIENT_VIEWS",
    "TASK_VIEWS",
    "VIEW_NAMES",
    "WORKER_VIEWS",
    "LegacyViews",
    "OptionalStateMapping",
    "StateKeySet",
    "StateMapping",
    "install_legacy_attributes",
    "legacy_views",
    "processing_costs",
    "uninstall_legacy_attributes",
]

__version__ = "0.1.0"

V = TypeVar("V")

Accessor = Callable[[Any], Any]
Predicate = Callable[[Any], bool]


class _ViewBase:
    """Common plumbing: the views keep a reference to the *owner* (the scheduler)
    and the name of the state collection, and look the collection up on every
    access, so they stay valid even if an engine replaces the collection object.
    """

    __slots__ = ("_accessor", "_collection", "_name", "_owner")

    def __init__(self, owner: Any, collection: str, name: str, accessor: Accessor) -> None:
        self._owner = owner
        self._collection = collection
        self._name = name
        self._accessor = accessor

    @property
    def _states(self) -> Mapping[Hashable, Any]:
        states: Mapping[Hashable, Any] = getattr(self._owner, self._collection)
        return states

    def __setattr__(self, attr: str, value: Any) -> None:
        if hasattr(self, "_accessor"):
            raise TypeError(f"legacy view {self._name!r} is read-only")
        object.__setattr__(self, attr, value)


class _ItemsView(ItemsView):  # type: ignore[type-arg]
    __slots__ = ()

    def __iter__(self) -> Iterator[tuple[Hashable, Any]]:
        return self._mapping._iter_items()  # type: ignore[attr-defined,no-any-return]


class _ValuesView(ValuesView):  # type: ignore[type-arg]
    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return (v for _, v in self._mapping._iter_items())  # type: ignore[attr-defined]


class StateMapping(_ViewBase, Mapping[Hashable, V], Generic[V]):
    """Read-only mapping ``key -> accessor(state)`` over a state collection.

    Every entry of the collection is present (the former ``_StateLegacyMapping``).
    """

    __slots__ = ()

    def __getitem__(self, key: Hashable) -> V:
        return self._accessor(self._states[key])  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._states)

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._states
        except TypeError:  # unhashable
            return False

    def _iter_items(self) -> Iterator[tuple[Hashable, V]]:
        accessor = self._accessor
        for key, st in self._states.items():
            yield key, accessor(st)

    def items(self) -> ItemsView[Hashable, V]:
        return _ItemsView(self)

    def values(self) -> ValuesView[V]:
        return _ValuesView(self)

    def __repr__(self) -> str:
        return f"<legacy view {self._name} {dict(self._iter_items())!r}>"


class OptionalStateMapping(StateMapping[V]):
    """Like :class:`StateMapping`, but entries whose value is empty are hidden:
    iteration and ``len`` skip them and lookup raises ``KeyError`` (the former
    ``_OptionalStateLegacyMapping``).

    ``present(state)`` decides cheaply whether an entry is shown, without building
    its value; it must be equivalent to ``bool(accessor(state))``.
    """

    __slots__ = ("_present",)

    _present: Predicate

    def __init__(
        self,
        owner: Any,
        collection: str,
        name: str,
        accessor: Accessor,
        present: Predicate | None = None,
    ) -> None:
        object.__setattr__(self, "_present", present or (lambda st: bool(accessor(st))))
        super().__init__(owner, collection, name, accessor)

    def __getitem__(self, key: Hashable) -> V:
        st = self._states[key]
        if not self._present(st):
            raise KeyError(key)
        return self._accessor(st)  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Hashable]:
        present = self._present
        return (key for key, st in self._states.items() if present(st))

    def __len__(self) -> int:
        present = self._present
        return sum(1 for st in self._states.values() if present(st))

    def __contains__(self, key: object) -> bool:
        try:
            st = self._states[key]
        except (KeyError, TypeError):
            return False
        return bool(self._present(st))

    def _iter_items(self) -> Iterator[tuple[Hashable, V]]:
        present = self._present
        accessor = self._accessor
        for key, st in self._states.items():
            if present(st):
                yield key, accessor(st)


class StateKeySet(_ViewBase, AbstractSet[Hashable]):
    """Read-only set of the keys whose ``accessor(state)`` is true (the former
    ``_StateLegacySet``, used for ``loose_restrictions``)."""

    __slots__ = ()

    def __iter__(self) -> Iterator[Hashable]:
        accessor = self._accessor
        return (key for key, st in self._states.items() if accessor(st))

    def __len__(self) -> int:
        accessor = self._accessor
        return sum(1 for st in self._states.values() if accessor(st))

    def __contains__(self, key: object) -> bool:
        try:
            st = self._states[key]
        except (KeyError, TypeError):
            return False
        return bool(self._accessor(st))

    def __repr__(self) -> str:
        return f"<legacy view {self._name} {set(self)!r}>"


# --------------------------------------------------------------------------- #
# Accessors                                                                   #
# --------------------------------------------------------------------------- #


def _task_keys(attr: str) -> Accessor:
    """A (possibly ``None``) set of TaskStates -> a fresh set of their keys."""

    def accessor(st: Any) -> set[Hashable]:
        return {ts.key for ts in getattr(st, attr) or ()}

    accessor.__name__ = f"{attr}_keys"
    return accessor


def _worker_addresses(attr: str) -> Accessor:
    def accessor(st: Any) -> set[str]:
        return {ws.address for ws in getattr(st, attr) or ()}

    accessor.__name__ = f"{attr}_addresses"
    return accessor


def _client_keys(attr: str) -> Accessor:
    def accessor(st: Any) -> set[str]:
        return {cs.client_key for cs in getattr(st, attr) or ()}

    accessor.__name__ = f"{attr}_client_keys"
    return accessor


def _attr(attr: str) -> Accessor:
    def accessor(st: Any) -> Any:
        return getattr(st, attr)

    accessor.__name__ = attr
    return accessor


def _truthy_attr(attr: str) -> Predicate:
    def present(st: Any) -> bool:
        return bool(getattr(st, attr))

    present.__name__ = f"has_{attr}"
    return present


def _nbytes(ts: Any) -> int | None:
    # distributed <= 2022.4.1 used ``None`` for "size unknown"; today it is ``-1``.
    nbytes: int = ts.nbytes
    return nbytes if nbytes >= 0 else None


def _has_nbytes(ts: Any) -> bool:
    # Falsy values were hidden: unknown size (-1, formerly None) and 0.
    return bool(ts.nbytes > 0)


def _blame_key(ts: Any) -> Hashable | None:
    blame = ts.exception_blame
    return None if blame is None else blame.key


def _has_blame(ts: Any) -> bool:
    return ts.exception_blame is not None


def _has_processing_on(ts: Any) -> bool:
    return ts.processing_on is not None


def _state(ts: Any) -> str:
    return ts.state  # type: ignore[no-any-return]


def processing_costs(scheduler: Any, ws: Any) -> dict[Hashable, float]:
    """Estimated cost in seconds of each task processing on worker ``ws``.

    Until 2022.4.1 ``WorkerState.processing`` was a dict ``{TaskState: cost}``,
    ``cost`` being the expected compute time of the task plus the time to fetch
    its missing dependencies, and ``WorkerState.occupancy`` was the sum of those
    costs (a long-running, seceded task counted 0).  Today ``ws.processing`` is a
    set and the occupancy is computed per task prefix:
    ``ws.occupancy == sum(prefix_duration * count) + ws._network_occ / bandwidth``
    (``SchedulerState._calc_occupancy``).  The legacy per-task cost is rebuilt as
    that task's share of the modern occupancy:

    - compute: ``scheduler._get_prefix_duration(ts.prefix)`` (the prefix's average
      duration, else twice the longest observed execution, else
      ``distributed.scheduler.unknown-task-duration``), or 0 for a task in
      ``ws.long_running``;
    - transfer: for each dependency still to be fetched by this worker
      (``dts in ws.needs_what``), ``dts.get_nbytes() / ws.needs_what[dts]``, i.e.
      its size split among the processing tasks waiting for it, divided by
      ``scheduler.bandwidth``.

    So, as in the legacy scheduler, ``sum(processing[addr].values())`` equals
    ``occupancy[addr]`` (up to float rounding).
    """
    long_running = ws.long_running
    needs_what = ws.needs_what
    bandwidth = scheduler.bandwidth
    prefix_duration = scheduler._get_prefix_duration
    durations: dict[Any, float] = {}
    costs: dict[Hashable, float] = {}
    for ts in ws.processing:
        if ts in long_running:
            cost = 0.0
        else:
            prefix = ts.prefix
            try:
                cost = durations[prefix.name]
            except KeyError:
                cost = durations[prefix.name] = prefix_duration(prefix)
        if needs_what:
            transfer = 0.0
            for dts in ts.dependencies:
                waiting_tasks = needs_what.get(dts)
                if waiting_tasks:
                    transfer += dts.get_nbytes() / waiting_tasks
            cost += transfer / bandwidth
        costs[ts.key] = cost
    return costs


def _processing_placeholder(ws: Any) -> Any:  # pragma: no cover - replaced
    raise AssertionError("bound to processing_costs(scheduler, ws) by LegacyViews")


# --------------------------------------------------------------------------- #
# The view table                                                              #
# --------------------------------------------------------------------------- #

# name -> (kind, accessor, present-predicate or None)
_MAPPING = "mapping"
_OPTIONAL = "optional"
_SET = "set"

_TASK_SPECS: Final[dict[str, tuple[str, Accessor, Predicate | None]]] = {
    "priority": (_MAPPING, _attr("priority"), None),
    "dependencies": (_MAPPING, _task_keys("dependencies"), None),
    "dependents": (_MAPPING, _task_keys("dependents"), None),
    "retries": (_MAPPING, _attr("retries"), None),
    "nbytes": (_OPTIONAL, _nbytes, _has_nbytes),
    "who_wants": (_OPTIONAL, _client_keys("who_wants"), _truthy_attr("who_wants")),
    "who_has": (_OPTIONAL, _worker_addresses("who_has"), _truthy_attr("who_has")),
    "waiting": (_OPTIONAL, _task_keys("waiting_on"), _truthy_attr("waiting_on")),
    "waiting_data": (_OPTIONAL, _task_keys("waiters"), _truthy_attr("waiters")),
    "rprocessing": (_OPTIONAL, _attr("processing_on"), _has_processing_on),
    "host_restrictions": (_OPTIONAL, _attr("host_restrictions"), None),
    "worker_restrictions": (_OPTIONAL, _attr("worker_restrictions"), None),
    "resource_restrictions": (_OPTIONAL, _attr("resource_restrictions"), None),
    "suspicious_tasks": (_OPTIONAL, _attr("suspicious"), None),
    "exceptions": (_OPTIONAL, _attr("exception"), None),
    "tracebacks": (_OPTIONAL, _attr("traceback"), None),
    "exceptions_blame": (_OPTIONAL, _blame_key, _has_blame),
    "loose_restrictions": (_SET, _attr("loose_restrictions"), None),
    "task_state": (_MAPPING, _state, None),
}

_CLIENT_SPECS: Final[dict[str, tuple[str, Accessor, Predicate | None]]] = {
    "wants_what": (_MAPPING, _task_keys("wants_what"), None),
}

_WORKER_SPECS: Final[dict[str, tuple[str, Accessor, Predicate | None]]] = {
    "nthreads": (_MAPPING, _attr("nthreads"), None),
    "ncores": (_MAPPING, _attr("nthreads"), None),
    "worker_bytes": (_MAPPING, _attr("nbytes"), None),
    "worker_resources": (_MAPPING, _attr("resources"), None),
    "used_resources": (_MAPPING, _attr("used_resources"), None),
    "occupancy": (_MAPPING, _attr("occupancy"), None),
    "worker_info": (_MAPPING, _attr("metrics"), None),
    # "processing" needs the scheduler; its accessor is bound in LegacyViews.
    "processing": (_MAPPING, _processing_placeholder, None),
    "has_what": (_MAPPING, _task_keys("has_what"), None),
}

#: Views keyed by task key.
TASK_VIEWS: Final[tuple[str, ...]] = tuple(_TASK_SPECS)
#: Views keyed by client id.
CLIENT_VIEWS: Final[tuple[str, ...]] = tuple(_CLIENT_SPECS)
#: Views keyed by worker address.
WORKER_VIEWS: Final[tuple[str, ...]] = tuple(_WORKER_SPECS)
#: Every view name, i.e. every attribute of :class:`LegacyViews`.
VIEW_NAMES: Final[tuple[str, ...]] = TASK_VIEWS + CLIENT_VIEWS + WORKER_VIEWS

_COLLECTIONS: Final = (
    ("tasks", _TASK_SPECS),
    ("clients", _CLIENT_SPECS),
    ("workers", _WORKER_SPECS),
)


class LegacyViews:
    """The legacy dictionaries of one scheduler, as read-only live views.

    Each name in :data:`VIEW_NAMES` is an attribute; the container itself is
    read-only too.
    """

    __slots__ = ("_views", "scheduler")

    # Static declarations for type checkers and IDEs.
    priority: StateMapping[tuple[float, ...] | None]
    dependencies: StateMapping[set[Hashable]]
    dependents: StateMapping[set[Hashable]]
    retries: StateMapping[int]
    nbytes: OptionalStateMapping[int]
    who_wants: OptionalStateMapping[set[str]]
    who_has: OptionalStateMapping[set[str]]
    waiting: OptionalStateMapping[set[Hashable]]
    waiting_data: OptionalStateMapping[set[Hashable]]
    rprocessing: OptionalStateMapping[Any]
    host_restrictions: OptionalStateMapping[set[str]]
    worker_restrictions: OptionalStateMapping[set[str]]
    resource_restrictions: OptionalStateMapping[dict[str, float]]
    suspicious_tasks: OptionalStateMapping[int]
    exceptions: OptionalStateMapping[Any]
    tracebacks: OptionalStateMapping[Any]
    exceptions_blame: OptionalStateMapping[Hashable]
    loose_restrictions: StateKeySet
    task_state: StateMapping[str]
    wants_what: StateMapping[set[Hashable]]
    nthreads: StateMapping[int]
    ncores: StateMapping[int]
    worker_bytes: StateMapping[int]
    worker_resources: StateMapping[dict[str, float]]
    used_resources: StateMapping[dict[str, float]]
    occupancy: StateMapping[float]
    worker_info: StateMapping[dict[str, Any]]
    processing: StateMapping[dict[Hashable, float]]
    has_what: StateMapping[set[Hashable]]

    def __init__(self, scheduler: Any) -> None:
        views: dict[str, _ViewBase] = {}
        for collection, specs in _COLLECTIONS:
            for name, (kind, accessor, present) in specs.items():
                if accessor is _processing_placeholder:
                    accessor = _bind_scheduler(processing_costs, scheduler)
                view: _ViewBase
                if kind == _MAPPING:
                    view = StateMapping(scheduler, collection, name, accessor)
                elif kind == _OPTIONAL:
                    view = OptionalStateMapping(scheduler, collection, name, accessor, present)
                else:
                    view = StateKeySet(scheduler, collection, name, accessor)
                views[name] = view
        object.__setattr__(self, "scheduler", scheduler)
        object.__setattr__(self, "_views", views)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._views[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise TypeError("legacy views are read-only")

    def __delattr__(self, name: str) -> None:
        raise TypeError("legacy views are read-only")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(VIEW_NAMES))

    def items(self) -> Iterator[tuple[str, Any]]:
        """``(name, view)`` pairs, in :data:`VIEW_NAMES` order."""
        return iter(self._views.items())

    def __repr__(self) -> str:
        return f"<LegacyViews of {self.scheduler!r}>"


def _bind_scheduler(func: Callable[[Any, Any], Any], scheduler: Any) -> Accessor:
    def accessor(ws: Any) -> Any:
        return func(scheduler, ws)

    accessor.__name__ = func.__name__
    return accessor


def legacy_views(scheduler: Any) -> LegacyViews:
    """Return the legacy dictionary views of ``scheduler``.

    ``scheduler`` is a ``distributed.Scheduler`` (or any object presenting its
    ``tasks``/``workers``/``clients`` attribute API).  The views are live: they
    reflect the scheduler's state at the time they are read.
    """
    missing = [a for a in ("tasks", "workers", "clients") if not hasattr(scheduler, a)]
    if missing:
        raise TypeError(
            f"expected a distributed.Scheduler, got {type(scheduler).__name__} "
            f"(it has no {', '.join(missing)})"
        )
    return LegacyViews(scheduler)


def install_legacy_attributes(scheduler: Any, *, overwrite: bool = False) -> LegacyViews:
    """Put the legacy views on ``scheduler`` itself (``scheduler.who_has`` ...),
    so that unmodified old plugin code runs.  Idempotent.

    Raises ``AttributeError`` if the scheduler already has an attribute of the
    same name that is not a legacy view, unless ``overwrite=True``.
    """
    views = legacy_views(scheduler)
    if not overwrite:
        clashes = [
            name
            for name in VIEW_NAMES
            if not isinstance(getattr(scheduler, name, None), (_ViewBase, type(None)))
        ]
        if clashes:
            raise AttributeError(
                f"{type(scheduler).__name__} already has attribute(s) {clashes}; "
                "pass overwrite=True to replace them"
            )
    for name, view in views.items():
        setattr(scheduler, name, view)
    return views


def uninstall_legacy_attributes(scheduler: Any) -> None:
    """Remove the attributes added by :func:`install_legacy_attributes`."""
    for name in VIEW_NAMES:
        if isinstance(getattr(scheduler, name, None), _ViewBase):
            delattr(scheduler, name)
