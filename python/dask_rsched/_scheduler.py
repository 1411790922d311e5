"""A `distributed.Scheduler` whose task, worker and client state lives in the engine.

`activate(scheduler)` swaps a freshly constructed (or just-started, not yet used)
Scheduler's class for a subclass that overrides the methods which change state: they call
the engine, which runs the transitions in Rust and returns the messages, and hand those
to `send_all`. Everything else (comms, heartbeats, extensions, plugins, diagnostics) is
distributed's own code, reading state through the engine's handles and views.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import textwrap
import weakref
from collections.abc import Callable, Collection
from contextlib import suppress
from time import time
from typing import Any

import dask
from dask.utils import parse_timedelta
from distributed import scheduler as _dsched
from distributed.batched import BatchedSend
from distributed.comm.addressing import get_address_host
from distributed.core import Status
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.metrics import monotonic
from distributed.scheduler import Computation
from distributed.shuffle._core import _BARRIER_PREFIX as _SHUFFLE_BARRIER_PREFIX
from distributed.shuffle._scheduler_plugin import ShuffleSchedulerPlugin as _ShuffleSchedulerPlugin
from distributed.utils import log_errors

from dask_rsched import _views
from dask_rsched._core import ClientState, Engine, TaskState, __version__

# the messages distributed's scheduler logs go to its logger, as on pure Python
logger = logging.getLogger("distributed.scheduler")

ENGINE_NAME = f"dask-rsched {__version__} (Rust)"

# Instance attributes of SchedulerState that the engine owns; the subclass serves them
# as properties (data descriptors win over the instance dict).
_ENGINE_ATTRIBUTES = (
    "tasks",
    "workers",
    "idle",
    "idle_task_count",
    "saturated",
    "running",
    "queued",
    "unrunnable",
    "replicated_tasks",
    "task_groups",
    "task_prefixes",
    "n_tasks",
    "bandwidth",
    "WORKER_SATURATION",
    "transition_log",
    "transition_counter",
    "transition_counter_max",
    "erred_tasks",
)

_SHUFFLE_FINISHES = ["released", "erred", "forgotten"]
_TRANSITION_ARGS = frozenset(
    ("exception", "traceback", "exception_text", "traceback_text", "cause", "worker")
)


def _plugins_overriding(plugins: dict, hook: str) -> list:
    """The plugins whose class overrides `SchedulerPlugin.<hook>`."""
    if isinstance(plugins, _PluginsDict):
        found = plugins.overriding.get(hook)
        if found is None:
            found = plugins.overriding[hook] = _find_overriding(plugins, hook)
        return found
    return _find_overriding(plugins, hook)


def _find_overriding(plugins: dict, hook: str) -> list:
    base = getattr(SchedulerPlugin, hook)
    return [p for p in plugins.values() if getattr(type(p), hook, base) is not base]


class _NotifyingDict(dict):
    """A dict that calls `on_change()` after every change."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_change: Callable[[], None] | None = None

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._changed()

    def __ior__(self, other: Any) -> Any:
        super().__ior__(other)
        self._changed()
        return self

    def pop(self, *args: Any) -> Any:
        value = super().pop(*args)
        self._changed()
        return value

    def popitem(self) -> tuple:
        item = super().popitem()
        self._changed()
        return item

    def clear(self) -> None:
        super().clear()
        self._changed()

    def update(self, *args: Any, **kwargs: Any) -> None:
        super().update(*args, **kwargs)
        self._changed()

    def setdefault(self, key: Any, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._changed()
        return value


class _PluginsDict(_NotifyingDict):
    """`Scheduler.plugins`, remembering which plugins override each hook until the
    dict changes (asked at every stimulus, answered without scanning the plugins)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.overriding: dict[str, list] = {}

    def _changed(self) -> None:
        self.overriding = {}
        super()._changed()


def _without(d: dict, drop: str, **extra: Any) -> dict:
    """`d` without the key `drop`, with `extra` added."""
    out = {k: v for k, v in d.items() if k != drop}
    out.update(extra)
    return out


def _status_name(status: Any) -> str:
    return status.name if isinstance(status, Status) else str(status)


class EngineSchedulerMixin:
    """Overrides of `distributed.Scheduler`'s state-changing methods."""

    _rsched_engine: Engine
    # the plugins overriding `transition`, and the running stimulus' own transition
    _rsched_transition_plugins: list
    _rsched_first: tuple | None

    # ------------------------------------------------------------------ views

    @property
    def tasks(self) -> _views.TasksView:
        return self._rsched_tasks

    @property
    def workers(self) -> _views.WorkersView:
        return self._rsched_workers

    # scheduler-wide containers, converted from the engine on each read
    idle = property(lambda self: _views.container(self._rsched_engine, "idle"))
    idle_task_count = property(
        lambda self: _views.container(self._rsched_engine, "idle_task_count")
    )
    saturated = property(lambda self: _views.container(self._rsched_engine, "saturated"))
    running = property(lambda self: _views.container(self._rsched_engine, "running"))
    queued = property(lambda self: _views.container(self._rsched_engine, "queued"))
    unrunnable = property(lambda self: _views.container(self._rsched_engine, "unrunnable"))
    replicated_tasks = property(
        lambda self: _views.container(self._rsched_engine, "replicated_tasks")
    )
    total_occupancy = property(
        lambda self: _views.container(self._rsched_engine, "total_occupancy")
    )

    @property
    def n_tasks(self) -> int:
        return self._rsched_engine.n_tasks

    @property
    def bandwidth(self) -> float:
        return self._rsched_engine.bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float) -> None:
        # heartbeats move the estimate; occupancy and stealing read it in the engine
        self._rsched_engine.bandwidth = value

    @property
    def WORKER_SATURATION(self) -> float:
        return self._rsched_engine.worker_saturation

    @WORKER_SATURATION.setter
    def WORKER_SATURATION(self, value: float) -> None:
        # tests and operators change it on a running scheduler; queuing reads it
        self._rsched_engine.worker_saturation = float(value)

    @property
    def is_idle(self) -> bool:
        return self._rsched_engine.is_idle

    @property
    def task_groups(self) -> dict:
        return self._rsched_engine.task_groups()

    @property
    def task_prefixes(self) -> dict:
        return self._rsched_engine.task_prefixes()

    @property
    def erred_tasks(self) -> Any:
        return self._rsched_engine.erred_tasks

    @property
    def transition_log(self) -> _views.TransitionLogView:
        return _views.TransitionLogView(self._rsched_engine)

    @property
    def transition_counter(self) -> int:
        return self._rsched_engine.transition_counter

    @property
    def transition_counter_max(self) -> int | bool:
        return self._rsched_engine.transition_counter_max or False

    @transition_counter_max.setter
    def transition_counter_max(self, value: int | bool) -> None:
        # gen_cluster sets it; tests lower it on a running scheduler
        self._rsched_engine.transition_counter_max = int(value or 0)

    def validate_state(self, allow_overlap: bool = False) -> None:
        self._rsched_engine.validate_state()
        if set(self.workers) != set(self.stream_comms):
            raise ValueError("Workers not the same in all collections")
        if self.transition_counter_max:
            assert self.transition_counter < self.transition_counter_max

    def story(self, *keys_or_tasks_or_stimuli: Any) -> list:
        keys = [
            getattr(k, "key", k) if isinstance(k, TaskState) else k
            for k in keys_or_tasks_or_stimuli
        ]
        return self._rsched_engine.story(*keys)

    def _clear_task_state(self) -> None:
        for collection in (self.computations, self.task_metadata):
            collection.clear()

    # ------------------------------------------------------------- plumbing

    def _rsched_configure_hook(self) -> None:
        """Tells the engine which transitions to call `_rsched_transition_hook` for: none
        without a plugin overriding `transition`. distributed's shuffle plugin returns at
        once unless a task is released, erred or forgotten, and with no shuffle active
        unless it is a barrier task: with only it listening, the rest stays in Rust.
        Runs again whenever the plugins or the shuffles change."""
        plugins = _plugins_overriding(self.plugins, "transition")
        self._rsched_transition_plugins = plugins
        engine = self._rsched_engine
        if not plugins:
            engine.set_transition_hook(None)
            return
        shuffle_only = True
        for plugin in plugins:
            if type(plugin) is _ShuffleSchedulerPlugin:
                active = plugin.active_shuffles
                if not isinstance(active, _NotifyingDict):
                    active = plugin.active_shuffles = _NotifyingDict(active)
                active.on_change = self._rsched_configure_hook
            else:
                shuffle_only = False
        if not shuffle_only:
            engine.set_transition_hook(self._rsched_transition_hook)
            return
        key_prefix = None
        if not any(p.active_shuffles for p in plugins):
            key_prefix = _SHUFFLE_BARRIER_PREFIX
        engine.set_transition_hook(self._rsched_transition_hook, _SHUFFLE_FINISHES, key_prefix)

    def _rsched_transition_hook(self, key: Any, start: str, finish: str, stimulus_id: str) -> None:
        """`SchedulerPlugin.transition` for each plugin, called by the engine right after
        the transition, before the next, as `_transition` calls it. The stimulus' own
        transition (`_rsched_first`: key, finish, kwargs) gets the stimulus' fields."""
        kwargs: dict = {}
        first = self._rsched_first
        if first is not None and first[1] == finish and first[0] == key:
            self._rsched_first = None
            kwargs = first[2]() if callable(first[2]) else first[2]
        for plugin in self._rsched_transition_plugins:
            try:
                plugin.transition(key, start, finish, stimulus_id=stimulus_id, **kwargs)
            except Exception:
                logger.info("Plugin failed with exception", exc_info=True)

    def _rsched_release(self) -> None:
        """Frees the tasks the engine forgot: plugins could look them up until now."""
        self._rsched_engine.release_forgotten(self.task_metadata)

    def _rsched_apply(self, msgs: tuple[dict, dict]) -> None:
        """Ends a stimulus: frees forgotten tasks, hands `msgs` to the comms."""
        self._rsched_release()
        self._rsched_send(*msgs)

    def _rsched_send(self, client_msgs: dict, worker_msgs: dict) -> None:
        if client_msgs or worker_msgs:
            self.send_all(client_msgs, worker_msgs)

    def _rsched_call(self, call: Callable[[], Any], first: Any = None) -> Any:
        """Runs an engine stimulus; `first` (key, finish, kwargs) is its own transition,
        whose plugin call gets the stimulus' fields. Logs the failed transitions and
        frees forgotten tasks if it raises."""
        outer = self._rsched_first
        self._rsched_first = first
        try:
            return call()
        except BaseException:
            self._rsched_failed()
            raise
        finally:
            self._rsched_first = outer

    def _rsched_run(self, call: Callable[[], tuple[dict, dict]], first: Any = None) -> None:
        self._rsched_apply(self._rsched_call(call, first))

    def _rsched_failed(self) -> None:
        """After an engine call raised: logs each failed transition as distributed's
        `_transition` does on the way up, then tells plugins what did happen."""
        failed = self._rsched_engine.take_failed_transitions()
        # read from the engine once: every level's event carries the same log
        log = list(self.transition_log) if failed else []
        for key, start, finish in failed:
            logger.exception("Error transitioning %r from %r to %r", key, start, finish)
            self.log_event(
                "transitions",
                {
                    "action": "scheduler-transition-failed",
                    "key": key,
                    "start": start,
                    "finish": finish,
                    "transition_log": list(log),
                },
            )
        self._rsched_release()

    # ------------------------------------------------------------ identity

    def identity(self, n_workers: int = -1) -> dict[str, Any]:
        d = super().identity(n_workers)  # type: ignore[misc]
        d["scheduler-engine"] = ENGINE_NAME
        return d

    # --------------------------------------------------------- transitions

    def new_task(self, key: Any, spec: Any, state: str, computation: Any = None) -> Any:
        ts = self._rsched_engine.new_task(key, spec, state)
        # a live group holds at least one task, so one made for this task holds only it
        if computation and len(ts.group) == 1:
            computation.groups.add(ts.group)
        return ts

    def transitions(self, recommendations: dict, stimulus_id: str) -> None:
        engine = self._rsched_engine
        self._rsched_run(lambda: engine.transitions(dict(recommendations), stimulus_id))

    def _transitions(
        self, recommendations: dict, client_msgs: dict, worker_msgs: dict, stimulus_id: str
    ) -> None:
        engine = self._rsched_engine
        new_cmsgs, new_wmsgs = self._rsched_call(
            lambda: engine.transitions(dict(recommendations), stimulus_id)
        )
        self._rsched_release()
        for c, msgs in new_cmsgs.items():
            client_msgs.setdefault(c, []).extend(msgs)
        for w, msgs in new_wmsgs.items():
            worker_msgs.setdefault(w, []).extend(msgs)

    # `_transition`, `transition` and `stimulus_task_finished/erred` return the
    # recommendations they make without carrying them out, as distributed's do; the
    # handlers carry a stimulus out in one engine call unless these are replaced.

    def _rsched_stimulus(
        self, call: Callable[[], tuple[dict, dict, dict]], first: Any = None
    ) -> tuple[dict, dict, dict]:
        recs, client_msgs, worker_msgs = self._rsched_call(call, first)
        self._rsched_release()
        return recs, client_msgs, worker_msgs

    def _transition(
        self, key: Any, finish: str, stimulus_id: str, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        engine = self._rsched_engine
        args = {k: v for k, v in kwargs.items() if k in _TRANSITION_ARGS}
        return self._rsched_stimulus(
            lambda: engine.transition(key, finish, stimulus_id, **args), (key, finish, kwargs)
        )

    def transition(self, key: Any, finish: str, stimulus_id: str, **kwargs: Any) -> dict:
        recs, client_msgs, worker_msgs = self._transition(key, finish, stimulus_id, **kwargs)
        self.send_all(client_msgs, worker_msgs)
        return recs

    def stimulus_task_finished(
        self, worker: str, stimulus_id: str, key: Any, run_id: int, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        engine = self._rsched_engine
        return self._rsched_stimulus(
            lambda: engine.stimulus_task_finished(
                key, worker, stimulus_id, run_id=run_id, **kwargs
            ),
            (key, "memory", lambda: dict(kwargs, worker=worker)),
        )

    def stimulus_task_erred(
        self, worker: str, stimulus_id: str, key: Any, run_id: int, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        engine = self._rsched_engine
        return self._rsched_stimulus(
            lambda: engine.stimulus_task_erred(
                key, stimulus_id, worker=worker, run_id=run_id, **kwargs
            ),
            (key, "erred", lambda: dict(cause=key, worker=worker, **kwargs)),
        )

    def _rsched_replaced(self, name: str) -> bool:
        """Whether `name` is not the engine's own (a test or extension wrapped it)."""
        method = getattr(self, name)
        return getattr(method, "__func__", None) is not getattr(EngineSchedulerMixin, name)

    def stimulus_queue_slots_maybe_opened(self, *, stimulus_id: str) -> None:
        engine = self._rsched_engine
        self._rsched_run(lambda: engine.stimulus_queue_slots_maybe_opened(stimulus_id))

    def check_idle_saturated(self, ws: Any, occ: float = -1.0) -> None:
        # the engine checks at distributed's points itself; this serves other callers
        if ws.address in self.workers:
            self._rsched_engine.check_idle_saturated(ws.address, occ)

    # --------------------------------------------------------------- graphs

    def _create_taskstate_from_graph(
        self,
        *,
        start: float,
        dsk: dict,
        keys: set,
        ordered: dict,
        client: str,
        annotations_by_type: dict,
        global_annotations: dict | None,
        stimulus_id: str,
        submitting_task: Any,
        span_metadata: Any,
        user_priority: int | dict = 0,
        actors: bool | list | None = None,
        fifo_timeout: float = 0.0,
        code: tuple = (),
    ) -> dict[str, float]:
        if not self.is_idle and self.computations:
            computation = self.computations[-1]
        else:
            computation = Computation()
            self.computations.append(computation)
        if code:
            computation.code.add(code)
        if global_annotations:
            computation.annotations.update(global_annotations)

        engine = self._rsched_engine
        before = len(engine)
        touched_keys = engine.update_graph(
            dsk=dsk,
            keys=keys,
            ordered=ordered,
            client=client,
            stimulus_id=stimulus_id,
            user_priority=user_priority,
            fifo_timeout=fifo_timeout,
            start=start,
            submitting_task=submitting_task,
            actors=actors,
            annotations_by_type=annotations_by_type,
            global_annotations=global_annotations,
            defer_transitions=True,
        )
        collisions = engine.take_graph_collisions()
        if collisions:
            self._rsched_warn_collisions(collisions, dsk)
        try:
            self._rsched_observe_graph(
                touched_keys, keys, client, stimulus_id, span_metadata, code, computation
            )
        finally:
            # the transitions run and their messages go out even if an observer failed
            self._rsched_run(engine.update_graph_commit)
        return {
            "tasks": len(dsk),
            "new_tasks": len(engine) - before,
            "key_collisions": len(collisions),
        }

    def _rsched_warn_collisions(self, collisions: list, dsk: dict) -> None:
        """`_generate_taskstates`' warning for a resubmitted key whose run_spec has
        other dependencies: once per task group, at debug level after that."""
        warned_groups = set()
        for key in collisions:
            ts = self.tasks[key]
            deps_lhs = {dts.key for dts in ts.dependencies}
            deps_rhs = dsk[key].dependencies
            if ts.group not in warned_groups:
                warned_groups.add(ts.group)
                logger.warning(
                    f"Detected different `run_spec` for key {ts.key!r} between "
                    "two consecutive calls to `update_graph`. "
                    "This can cause failures and deadlocks down the line. "
                    "Please ensure unique key names. "
                    "If you are using a standard dask collections, consider "
                    "releasing all the data before resubmitting another "
                    "computation. More details and help can be found at "
                    "https://github.com/dask/dask/issues/9888. "
                    + textwrap.dedent(f"""
                        Debugging information
                        ---------------------
                        old task state: {ts.state}
                        old run_spec: {ts.run_spec!r}
                        new run_spec: {dsk[key]!r}
                        old dependencies: {deps_lhs}
                        new dependencies: {deps_rhs}
                        """)
                )
            else:
                logger.debug(
                    f"Detected different `run_spec` for key {ts.key!r} between "
                    "two consecutive calls to `update_graph`."
                )

    def _rsched_observe_graph(
        self,
        touched_keys: list,
        keys: Collection,
        client: str,
        stimulus_id: str,
        span_metadata: Any,
        code: tuple,
        computation: Any,
    ) -> None:
        """The spans extension and `update_graph` plugins see the submitted tasks
        before their transitions run, as in `_create_taskstate_from_graph`."""
        touched = [self.tasks[k] for k in touched_keys]
        computation.groups.update({ts.group for ts in touched})
        annotations: dict[str, dict] = {}
        graph_plugins = _plugins_overriding(self.plugins, "update_graph")
        if graph_plugins:
            for ts in touched:
                for name, value in (ts.annotations or {}).items():
                    annotations.setdefault(name, {})[ts.key] = value
        spans_ext = self.extensions.get("spans")
        if spans_ext:
            span_annotations = spans_ext.observe_tasks(
                touched, span_metadata=span_metadata, code=code
            )
            if span_annotations:
                annotations["span"] = span_annotations
            else:
                annotations.pop("span", None)
        if not graph_plugins:
            return
        tasks_for_plugin = [ts.key for ts in touched]
        priorities = {ts.key: ts.priority for ts in touched}
        for plugin in graph_plugins:
            try:
                plugin.update_graph(
                    self,
                    client=client,
                    tasks=tasks_for_plugin,
                    keys=keys,
                    annotations=annotations,
                    priority=priorities,
                    stimulus_id=stimulus_id,
                )
            except Exception as e:
                logger.exception(e)

    # -------------------------------------------------------------- workers

    @log_errors
    async def add_worker(
        self,
        comm: Any,
        *,
        address: str,
        status: str,
        server_id: str,
        nthreads: int,
        name: str,
        resolve_address: bool = True,
        now: float,
        resources: dict[str, float],
        host_info: None = None,
        memory_limit: int | None,
        metrics: dict[str, Any],
        pid: int = 0,
        services: dict[str, int],
        local_directory: str,
        versions: dict[str, Any],
        nanny: str,
        extra: dict,
        stimulus_id: str,
    ) -> None:
        from collections import deque

        from distributed import versions as version_module
        from distributed.comm.addressing import normalize_address

        address = self.coerce_address(address, resolve_address)
        address = normalize_address(address)
        host = get_address_host(address)

        if address in self.workers:
            raise ValueError(f"Worker already exists {address}")

        if name in self.aliases:
            logger.warning("Worker tried to connect with a duplicate name: %s", name)
            await comm.write({"status": "error", "message": f"name taken, {name}", "time": time()})
            return

        self.log_event(address, {"action": "add-worker"})
        self.log_event("all", {"action": "add-worker", "worker": address})

        engine = self._rsched_engine
        status_name = _status_name(_dsched.Status.lookup[status])  # type: ignore[attr-defined]
        # unrunnable tasks are rescheduled and queue slots filled after the plugins' own
        # `add_worker`, as distributed orders it
        engine.add_worker(
            address,
            server_id=server_id,
            nthreads=nthreads,
            memory_limit=memory_limit or 0,
            name=name,
            status=status_name,
            resources=resources or None,
            stimulus_id=stimulus_id,
            schedule=False,
        )
        ws = self.workers[address]
        # distributed's WorkerState attributes that only Python reads
        ws.name = name
        ws.pid = pid
        ws.scheduler_ref = weakref.ref(self)
        ws.local_directory = local_directory
        ws.services = services
        ws.versions = versions
        ws.nanny = nanny
        ws.extra = extra
        ws.server_id = server_id
        ws.metrics = {}
        ws.last_seen = 0.0
        ws.time_delay = 0.0
        ws.bandwidth = self.bandwidth
        ws.executing = {}
        ws._memory_unmanaged_old = 0
        ws._memory_unmanaged_history = deque()
        ws._hash = hash(server_id)

        self._workers_added_total += 1
        if status_name == "running":
            self._refresh_no_workers_since()

        dh = self.host_info.get(host)
        if dh is None:
            self.host_info[host] = dh = {}
        dh_addresses = dh.get("addresses")
        if dh_addresses is None:
            dh["addresses"] = dh_addresses = set()
            dh["nthreads"] = 0
        dh_addresses.add(address)
        dh["nthreads"] += nthreads

        self.total_memory += ws.memory_limit
        self.total_nthreads += nthreads
        self.total_nthreads_history.append((time(), self.total_nthreads))
        self.aliases[name] = address
        for resource, quantity in (resources or {}).items():
            self.resources.setdefault(resource, {})[address] = quantity

        self.heartbeat_worker(
            address=address,
            resolve_address=resolve_address,
            now=now,
            host_info=host_info,
            metrics=metrics,
        )

        self.stream_comms[address] = BatchedSend(interval="5ms", loop=self.loop)

        awaitables = []
        for plugin in list(self.plugins.values()):
            try:
                result = plugin.add_worker(scheduler=self, worker=address)
                if result is not None and inspect.isawaitable(result):
                    awaitables.append(result)
            except Exception as e:
                logger.exception(e)
        plugin_msgs = await asyncio.gather(*awaitables, return_exceptions=True)
        for exc in plugin_msgs:
            if isinstance(exc, Exception):
                logger.exception(exc, exc_info=exc)

        self._rsched_run(lambda: engine.schedule_after_adding_worker(address, stimulus_id))

        logger.info("Register worker addr: %s name: %s", ws.address, ws.name)

        msg = {
            "status": "OK",
            "time": time(),
            "heartbeat-interval": _dsched.heartbeat_interval(len(self.workers)),
            "worker-plugins": self.worker_plugins,
        }
        msg.update(
            version_module.error_message(
                version_module.get_versions(),
                {w: ws.versions for w, ws in self.workers.items()},
                versions,
                source_name=str(server_id),
            )
        )
        await comm.write(msg)
        await self.handle_worker(comm, address)

    def heartbeat_worker(
        self,
        *,
        address: str,
        resolve_address: bool = True,
        now: float | None = None,
        resources: dict[str, float] | None = None,
        host_info: dict | None = None,
        metrics: dict,
        executing: dict | None = None,
        extensions: dict | None = None,
    ) -> dict[str, Any]:
        # distributed's heartbeat with `executing` handled here: the prefixes'
        # max_exec_time and duration_average live in the engine
        result = super().heartbeat_worker(  # type: ignore[misc]
            address=address,
            resolve_address=resolve_address,
            now=now,
            resources=resources,
            host_info=host_info,
            metrics=metrics,
            executing=None,
            extensions=extensions,
        )
        if executing is not None and result.get("status") == "OK":
            ws = self.workers.get(self.coerce_address(address, resolve_address))
            if ws is not None:
                ws.executing = {self.tasks[k]: d for k, d in executing.items() if k in self.tasks}
                self._rsched_engine.add_exec_times(executing)
        return result

    def add_resources(self, worker: str, resources: dict | None = None) -> str:
        self._rsched_engine.add_resources(worker, resources)
        ws = self.workers[worker]
        for resource, quantity in ws.resources.items():
            self.resources.setdefault(resource, {})[worker] = quantity
        return "OK"

    def remove_resources(self, worker: str) -> None:
        for dr in self.resources.values():
            dr.pop(worker, None)

    @log_errors
    async def remove_worker(
        self,
        address: str,
        *,
        stimulus_id: str,
        expected: bool = False,
        close: bool = True,
    ) -> str:
        from distributed.comm import CommClosedError

        if self.status == Status.closed:
            return "already-removed"
        address = self.coerce_address(address)
        if address not in self.workers:
            return "already-removed"
        host = get_address_host(address)
        ws = self.workers[address]
        logger.info(f"Remove worker addr: {ws.address} name: {ws.name} ({stimulus_id=})")
        if close:
            with suppress(AttributeError, CommClosedError):
                self.stream_comms[address].send(
                    {"op": "close", "reason": "scheduler-remove-worker"}
                )
        self.remove_resources(address)

        dh = self.host_info[host]
        dh_addresses: set = dh["addresses"]
        dh_addresses.remove(address)
        dh["nthreads"] -= ws.nthreads
        self.total_memory -= ws.memory_limit
        self.total_nthreads -= ws.nthreads
        self.total_nthreads_history.append((time(), self.total_nthreads))
        if not dh_addresses:
            del self.host_info[host]

        self.rpc.remove(address)
        del self.stream_comms[address]
        name = ws.name
        self.aliases.pop(name, None)
        self._workers_removed_total += 1

        timestamp = monotonic()
        processing_keys = {ts.key for ts in ws.processing}
        recompute_keys = set()
        lost_keys = set()
        for ts in ws.has_what:
            if ts.who_has == {ws} and ts not in ws.actors:
                (recompute_keys if ts.run_spec else lost_keys).add(ts.key)

        # the tasks the engine errs for too many failures (`suspicious` is counted up
        # once more by this removal)
        killed = (
            []
            if expected
            else [
                (ts.key, ts.suspicious + 1)
                for ts in ws.processing
                if ts.suspicious + 1 > self.allowed_failures
            ]
        )
        engine = self._rsched_engine
        msgs = engine.remove_worker(address, stimulus_id=stimulus_id, expected=expected)
        for key, suspicious in killed:
            logger.error(
                "Task %s marked as failed because %d workers died while trying to run it",
                key,
                suspicious,
            )

        if recompute_keys:
            logger.warning(
                f"Removing worker {address!r} caused the cluster to lose "
                "already computed task(s), which will be recomputed elsewhere: "
                f"{recompute_keys} ({stimulus_id=})"
            )
        if lost_keys:
            logger.error(
                f"Removing worker {address!r} caused the cluster to lose scattered "
                f"data, which can't be recovered: {lost_keys} ({stimulus_id=})"
            )
        event_msg = {
            "action": "remove-worker",
            "processing-tasks": processing_keys,
            "lost-computed-tasks": recompute_keys,
            "lost-scattered-tasks": lost_keys,
            "stimulus_id": stimulus_id,
            "expected": expected,
        }
        self.log_event(address, event_msg.copy())
        event_msg["worker"] = address
        self.log_event("all", event_msg)

        self._rsched_apply(msgs)
        self._refresh_no_workers_since(timestamp=timestamp)

        awaitables = []
        for plugin in list(self.plugins.values()):
            try:
                result = plugin.remove_worker(
                    scheduler=self, worker=address, stimulus_id=stimulus_id
                )
                if inspect.isawaitable(result):
                    awaitables.append(result)
            except Exception as e:
                logger.exception(e)
        plugin_msgs = await asyncio.gather(*awaitables, return_exceptions=True)
        for exc in plugin_msgs:
            if isinstance(exc, Exception):
                logger.exception(exc, exc_info=exc)

        if not self.workers:
            logger.info("Lost all workers")
        for w in self.workers:
            self.bandwidth_workers.pop((address, w), None)
            self.bandwidth_workers.pop((w, address), None)

        async def remove_worker_from_events() -> None:
            if address not in self.workers:
                self._broker.truncate(address)

        cleanup_delay = parse_timedelta(
            dask.config.get("distributed.scheduler.events-cleanup-delay")
        )
        self._ongoing_background_tasks.call_later(cleanup_delay, remove_worker_from_events)
        for w in self.workers:
            self.worker_send(
                w, {"op": "remove-worker", "worker": address, "stimulus_id": stimulus_id}
            )
        return "OK"

    def handle_worker_status_change(self, status: Any, worker: Any, stimulus_id: str) -> None:
        ws = self.workers.get(worker) if isinstance(worker, str) else worker
        if not ws:
            return
        prev_status = ws.status
        new_status = Status[status] if isinstance(status, str) else status
        if new_status == prev_status:
            return
        self.log_event(
            ws.address,
            {
                "action": "worker-status-change",
                "prev-status": prev_status.name,
                "status": new_status.name,
                "stimulus_id": stimulus_id,
            },
        )
        engine = self._rsched_engine
        self._rsched_run(
            lambda: engine.handle_worker_status_change(new_status.name, ws.address, stimulus_id)
        )
        self._refresh_no_workers_since()

    # ---------------------------------------------------------- task events

    def _rsched_carry_out(self, stimulus: tuple[dict, dict, dict], stimulus_id: str) -> None:
        """The rest of distributed's task handlers, step by step, after a replaced
        `stimulus_task_finished/erred` returned."""
        recs, client_msgs, worker_msgs = stimulus
        self._transitions(recs, client_msgs, worker_msgs, stimulus_id)
        self.send_all(client_msgs, worker_msgs)
        self.stimulus_queue_slots_maybe_opened(stimulus_id=stimulus_id)

    def handle_task_finished(self, key: Any, worker: str, stimulus_id: str, **msg: Any) -> None:
        if worker not in self.workers:
            return
        if self._rsched_replaced("stimulus_task_finished"):
            self._rsched_carry_out(
                self.stimulus_task_finished(key=key, worker=worker, stimulus_id=stimulus_id, **msg),
                stimulus_id,
            )
            return
        engine = self._rsched_engine
        self._rsched_run(
            lambda: engine.handle_task_finished(key, worker, stimulus_id, **msg),
            # the fields `stimulus_task_finished` passes on (not its run_id)
            (key, "memory", lambda: _without(msg, "run_id", worker=worker)),
        )

    def handle_task_erred(self, key: Any, stimulus_id: str, **msg: Any) -> None:
        if self._rsched_replaced("stimulus_task_erred"):
            self._rsched_carry_out(
                self.stimulus_task_erred(key=key, stimulus_id=stimulus_id, **msg), stimulus_id
            )
            return
        engine = self._rsched_engine
        worker = msg.pop("worker")
        self._rsched_run(
            lambda: engine.handle_task_erred(key, stimulus_id, worker=worker, **msg),
            (key, "erred", lambda: dict(cause=key, worker=worker, **_without(msg, "run_id"))),
        )

    def handle_long_running(
        self,
        key: Any,
        worker: str,
        run_id: int,
        compute_duration: float | None,
        stimulus_id: str,
    ) -> None:
        engine = self._rsched_engine
        self._rsched_run(
            lambda: engine.handle_long_running(key, worker, run_id, compute_duration, stimulus_id)
        )

    def release_worker_data(self, key: Any, worker: str, stimulus_id: str) -> None:
        engine = self._rsched_engine
        self._rsched_run(lambda: engine.release_worker_data(key, worker, stimulus_id))

    def add_keys(self, worker: str, keys: Collection = (), stimulus_id: str | None = None) -> str:
        status, worker_msgs = self._rsched_engine.add_keys(worker, list(keys), stimulus_id)
        self._rsched_send({}, worker_msgs)
        return status

    def add_replica(self, ts: Any, ws: Any) -> None:
        self._rsched_engine.add_replica(ts.key, ws.address)

    def remove_replica(self, ts: Any, ws: Any) -> None:
        self._rsched_engine.remove_replica(ts.key, ws.address)

    @log_errors
    def update_data(self, *, who_has: dict, nbytes: dict, client: str | None = None) -> None:
        who_has = {k: [self.coerce_address(vv) for vv in v] for k, v in who_has.items()}
        engine = self._rsched_engine
        self._rsched_run(lambda: engine.update_data(who_has=who_has, nbytes=nbytes, client=client))

    # -------------------------------------------------------------- clients

    def client_desires_keys(self, keys: Collection, client: str) -> None:
        engine = self._rsched_engine
        self._rsched_register_client(client)
        self._rsched_run(lambda: engine.client_desires_keys(list(keys), client))

    def _rsched_register_client(self, client: str) -> None:
        # for publish, queues etc., as distributed's client_desires_keys does
        if client not in self.clients:
            self.clients[client] = _dsched.ClientState(client)

    def client_releases_keys(
        self, keys: Collection, client: str, stimulus_id: str | None = None
    ) -> None:
        stimulus_id = stimulus_id or f"client-releases-keys-{time()}"
        engine = self._rsched_engine
        self._rsched_run(lambda: engine.client_releases_keys(list(keys), client, stimulus_id))

    def stimulus_cancel(
        self, keys: Collection, client: str, force: bool, reason: str, msg: str
    ) -> None:
        logger.info("Client %s requests to cancel %d keys", client, len(keys))
        self.log_event(client, {"action": "cancel", "count": len(keys), "force": force})
        if client not in self.clients:
            return
        engine = self._rsched_engine

        def cancel() -> tuple[dict, dict]:
            log: list = []
            try:
                return engine.stimulus_cancel(
                    list(keys), client, force, reason, msg, f"cancel-key-{time()}", log
                )
            finally:
                # what distributed's recursive stimulus_cancel logs, in its order
                for what, value in log:
                    if what == "request":
                        logger.info("Client %s requests to cancel %d keys", client, value)
                        self.log_event(client, {"action": "cancel", "count": value, "force": force})
                    else:
                        logger.info("Scheduler cancels key %s.  Force=%s", value, force)

        self._rsched_run(cancel)

    def stimulus_retry(self, keys: Collection, client: str | None = None) -> tuple:
        logger.info("Client %s requests to retry %d keys", client, len(keys))
        if client:
            self.log_event(client, {"action": "retry", "count": len(keys)})
        engine = self._rsched_engine
        try:
            seen, client_msgs, worker_msgs = engine.stimulus_retry(
                list(keys), f"stimulus-retry-{time()}"
            )
        except BaseException:
            self._rsched_release()
            raise
        self._rsched_apply((client_msgs, worker_msgs))
        return seen


def _replace_stealing(scheduler: Any, steal: Any) -> None:
    """distributed's WorkStealing (extension, plugin, periodic callback, stream handler)
    gives way to the engine's, under the same names."""
    from dask_rsched._stealing import EngineWorkStealing

    pc = scheduler.periodic_callbacks.pop("stealing", None)
    if pc is not None:
        pc.stop()
    face = EngineWorkStealing(scheduler)
    scheduler.extensions["stealing"] = face
    for name, plugin in list(scheduler.plugins.items()):
        if plugin is steal:
            scheduler.plugins[name] = face
    if pc is not None:
        # the original had started: so does its replacement
        face._start_balancing()


def _rebind_handlers(scheduler: Any) -> None:
    """Handlers were bound at construction; point them at the overriding methods."""
    for table in (scheduler.handlers, scheduler.stream_handlers):
        for op, handler in list(table.items()):
            if inspect.ismethod(handler) and handler.__self__ is scheduler:
                table[op] = getattr(scheduler, handler.__func__.__name__)


_engine_classes: dict[type, type] = {}


def engine_class(cls: type) -> type:
    """The engine-backed subclass of a Scheduler class (cached)."""
    sub = _engine_classes.get(cls)
    if sub is None:
        sub = type(cls.__name__, (EngineSchedulerMixin, cls), {"__module__": cls.__module__})
        _engine_classes[cls] = sub
    return sub


def is_active(scheduler: Any) -> bool:
    return isinstance(scheduler, EngineSchedulerMixin)


def activate(scheduler: Any) -> bool:
    """Moves a Scheduler that holds no workers or tasks yet onto the engine.

    Returns False (and leaves the scheduler untouched) if it already holds state.
    """
    if is_active(scheduler):
        return True
    if scheduler.tasks or scheduler.workers:
        logging.getLogger("dask_rsched").warning(
            "dask-rsched: the scheduler already holds tasks or workers; "
            "it keeps running on the pure-Python engine"
        )
        return False
    steal = scheduler.extensions.get("stealing")
    engine = Engine(
        validate=bool(scheduler.validate),
        allowed_failures=scheduler.allowed_failures,
        worker_saturation=float(scheduler.WORKER_SATURATION),
        work_stealing=steal is not None,
    )
    engine.observe_transitions(True)

    engine.bandwidth = float(scheduler.__dict__.get("bandwidth", engine.bandwidth))
    engine.transition_counter_max = int(getattr(scheduler, "transition_counter_max", 0) or 0)
    for attr in _ENGINE_ATTRIBUTES:
        scheduler.__dict__.pop(attr, None)
    scheduler._rsched_engine = engine
    scheduler._rsched_tasks = _views.TasksView(engine)
    scheduler._rsched_workers = _views.WorkersView(engine)
    scheduler.__class__ = engine_class(type(scheduler))

    # ClientState objects come from the engine (the fire-and-forget client included)
    clients = _ClientsDict(engine)
    clients.update(scheduler.clients)
    scheduler.clients = clients
    scheduler.plugins = plugins = _PluginsDict(scheduler.plugins)
    _rebind_handlers(scheduler)
    if steal is not None:
        _replace_stealing(scheduler, steal)
    scheduler._rsched_first = None
    scheduler._rsched_configure_hook()
    plugins.on_change = scheduler._rsched_configure_hook
    # on distributed's scheduler logger, which `dask scheduler` shows at INFO
    logger.info("Scheduler engine: %s", ENGINE_NAME)
    return True


class _ClientsDict(dict):
    """`Scheduler.clients`: where distributed stores a pure-Python ClientState
    (`add_client`, `client_desires_keys`), the engine's handle for that client takes its
    place, carrying the Python-only `versions` and `last_seen`."""

    def __init__(self, engine: Engine) -> None:
        super().__init__()
        self._engine = engine

    def __setitem__(self, client: str, cs: Any) -> None:
        if not isinstance(cs, ClientState):
            self._engine.add_client(client)
            handle = self._engine.get_client(client)
            handle.versions = getattr(cs, "versions", {})
            handle.last_seen = getattr(cs, "last_seen", time())
            cs = handle
        super().__setitem__(client, cs)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for client, cs in dict(*args, **kwargs).items():
            self[client] = cs

    def __delitem__(self, client: str) -> None:
        super().__delitem__(client)
        self._engine.remove_client(client)
