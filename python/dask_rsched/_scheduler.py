"""A `distributed.Scheduler` whose task, worker and client state lives in the engine.

`activate(scheduler)` swaps a freshly constructed (or just-started, not yet used)
Scheduler's class for a subclass that overrides the methods which change task state: they
call the engine, which runs the transitions in Rust and returns the messages, and hand
those to `send_all`. Everything else is distributed's own code, running unchanged on the
engine's handles and views: comms, heartbeats, extensions, plugins, diagnostics, and the
worker lifecycle (`add_worker`, `remove_worker`, `handle_worker_status_change`), whose
state changes reach the engine through the views they write to (`workers[address] = ws`,
`running.add(ws)`, ...) and the methods they call (`transitions`, `remove_replica`, ...).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import textwrap
from collections.abc import Callable, Collection
from time import perf_counter, time
from typing import Any

import dask.config
from dask.utils import parse_timedelta
from distributed import scheduler as _dsched
from distributed.batched import BatchedSend
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.scheduler import Computation
from distributed.shuffle._core import _BARRIER_PREFIX as _SHUFFLE_BARRIER_PREFIX
from distributed.shuffle._scheduler_plugin import ShuffleSchedulerPlugin as _ShuffleSchedulerPlugin
from distributed.utils import log_errors

from dask_rsched import _monitoring, _order, _views, _wire
from dask_rsched._core import ClientState, Engine, Messages, __version__

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

_SEND_ALL = _dsched.Scheduler.send_all
_WireBatchedSend = _wire.WireBatchedSend

# `_generate_taskstates`' warning for a resubmitted key whose run_spec has other
# dependencies (distributed's wording)
_COLLISION_WARNING = (
    "Detected different `run_spec` for key {key!r} between two consecutive calls to "
    "`update_graph`. This can cause failures and deadlocks down the line. Please ensure "
    "unique key names. If you are using a standard dask collections, consider releasing "
    "all the data before resubmitting another computation. More details and help can be "
    "found at https://github.com/dask/dask/issues/9888. "
)
_COLLISION_DEBUG = (
    "Detected different `run_spec` for key {key!r} between two consecutive calls to `update_graph`."
)


#: Inside `update_graph`: its engine call's time budget (`_graph_step`). A direct call
#: of `_create_taskstate_from_graph` runs all its transitions, as distributed's does.
_GRAPH_STEP: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "dask_rsched_graph_step", default=None
)


def _graph_step() -> float | None:
    """`distributed.scheduler.rsched-graph-step`: how long one engine call of a graph
    submission may keep the event loop before the graph's remaining transitions yield
    to it (None: never)."""
    step = dask.config.get("distributed.scheduler.rsched-graph-step", "250ms")
    return None if step is None else parse_timedelta(step)


def _collision_details(ts: Any, new_spec: Any) -> str:
    """The "Debugging information" block of the collision warning, laid out (and
    dedented, with the values in it) as distributed's."""
    lines = (
        "Debugging information",
        "-" * 21,
        f"old task state: {ts.state}",
        f"old run_spec: {ts.run_spec!r}",
        f"new run_spec: {new_spec!r}",
        f"old dependencies: { {dts.key for dts in ts.dependencies} }",
        f"new dependencies: {new_spec.dependencies}",
    )
    pad = " " * 24
    return textwrap.dedent("\n" + "".join(f"{pad}{line}\n" for line in lines) + pad)


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


class EngineSchedulerMixin:
    """Overrides of `distributed.Scheduler`'s state-changing methods."""

    _rsched_engine: Engine
    # the plugins overriding `transition`
    _rsched_transition_plugins: list

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
    queued = property(lambda self: _views.QueuedView(self._rsched_engine))
    unrunnable = property(lambda self: _views.UnrunnableView(self._rsched_engine))
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
        return _views.erred_tasks(self._rsched_engine)

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

    async def close(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().close(*args, **kwargs)  # type: ignore[misc]
        finally:
            # the handles and the engine refer to each other in a way the garbage
            # collector cannot see: break it so the closed Scheduler can be freed
            self._rsched_engine.release_handles()

    def validate_state(self, allow_overlap: bool = False) -> None:
        self._rsched_engine.validate_state()
        if set(self.workers) != set(self.stream_comms):
            raise ValueError("Workers not the same in all collections")
        if self.transition_counter_max:
            assert self.transition_counter < self.transition_counter_max

    def validate_key(self, key: Any, ts: Any = None) -> None:
        # natively: distributed's own checks test for its TaskState classes
        try:
            self._rsched_engine.validate_key(key if ts is None else ts.key)
        except Exception as e:
            logger.exception(e)
            raise

    def story(self, *keys_or_tasks_or_stimuli: Any) -> list:
        return _views.story(self._rsched_engine, *keys_or_tasks_or_stimuli)

    def _clear_task_state(self) -> None:
        # in place: the engine shares task_metadata
        for collection in (self.computations, self.task_metadata):
            collection.clear()

    # ------------------------------------------------------------- stimuli

    def _rsched_call(self, stimulus: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Runs an engine stimulus and returns what it returns. If it raises, the
        transitions it failed in are logged first, as `_transition` logs them."""
        try:
            return stimulus(*args, **kwargs)
        except Exception as exc:
            self._rsched_log_failed(getattr(exc, "failed_transitions", ()))
            raise

    def _rsched_run(self, stimulus: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The stimulus runner: runs an engine stimulus, sends its `(client_msgs,
        worker_msgs)` and returns its result, if it has one (`(result, client_msgs,
        worker_msgs)`). The hot path of every handler: one call, no more."""
        try:
            out = stimulus(*args, **kwargs)
        except Exception as exc:
            self._rsched_log_failed(getattr(exc, "failed_transitions", ()))
            raise
        if len(out) == 2:
            result = None
            client_msgs, worker_msgs = out
        else:
            result, client_msgs, worker_msgs = out
        if client_msgs or worker_msgs:
            sending = perf_counter()
            self.send_all(client_msgs, worker_msgs)
            self._rsched_send_seconds += perf_counter() - sending
        return result

    def _rsched_log_failed(self, failed: Collection) -> None:
        """distributed's log line and `scheduler-transition-failed` event for each
        `_transition` an error passed through, innermost first."""
        # every level's event carries the same log
        log = list(self.transition_log) if failed else []
        for key, start, finish in failed:
            logger.exception("Error transitioning %r from %r to %r", key, start, finish)
            event = {"action": "scheduler-transition-failed", "key": key}
            event.update(start=start, finish=finish, transition_log=list(log))
            self.log_event("transitions", event)

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

    def _rsched_transition_hook(
        self, key: Any, start: str, finish: str, stimulus_id: str, fields: dict | None
    ) -> None:
        """`SchedulerPlugin.transition` for each plugin, called by the engine right after
        the transition, before the next, as `_transition` calls it; the transition a
        stimulus asked for comes with the stimulus' `fields`."""
        kwargs = fields or {}
        for plugin in self._rsched_transition_plugins:
            try:
                plugin.transition(key, start, finish, stimulus_id=stimulus_id, **kwargs)
            except Exception:
                logger.info("Plugin failed with exception", exc_info=True)

    # --------------------------------------------------------- transitions

    def new_task(self, key: Any, spec: Any, state: str, computation: Any = None) -> Any:
        ts = self._rsched_engine.new_task(key, spec, state)
        # a live group holds at least one task, so one made for this task holds only it
        if computation and len(ts.group) == 1:
            computation.groups.add(ts.group)
        return ts

    def transitions(self, recommendations: dict, stimulus_id: str) -> None:
        self._rsched_run(self._rsched_engine.transitions, dict(recommendations), stimulus_id)

    def _transitions(
        self, recommendations: dict, client_msgs: dict, worker_msgs: dict, stimulus_id: str
    ) -> None:
        engine = self._rsched_engine
        new = self._rsched_call(engine.transitions, dict(recommendations), stimulus_id)
        for msgs, new_msgs in zip((client_msgs, worker_msgs), new, strict=True):
            for dest, ms in new_msgs.items():
                msgs.setdefault(dest, []).extend(ms)

    # `_transition`, `transition` and `stimulus_task_finished/erred` return the
    # recommendations they make without carrying them out, as distributed's do; the
    # handlers carry a stimulus out in one engine call unless these are replaced.

    def _transition(
        self, key: Any, finish: str, stimulus_id: str, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        return self._rsched_call(self._rsched_engine.transition, key, finish, stimulus_id, **kwargs)

    def transition(self, key: Any, finish: str, stimulus_id: str, **kwargs: Any) -> dict:
        recs, client_msgs, worker_msgs = self._transition(key, finish, stimulus_id, **kwargs)
        self.send_all(client_msgs, worker_msgs)
        return recs

    def stimulus_task_finished(
        self, worker: str, stimulus_id: str, key: Any, run_id: int, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        stimulus = self._rsched_engine.stimulus_task_finished
        return self._rsched_call(stimulus, key, worker, stimulus_id, run_id=run_id, **kwargs)

    def stimulus_task_erred(
        self, worker: str, stimulus_id: str, key: Any, run_id: int, **kwargs: Any
    ) -> tuple[dict, dict, dict]:
        stimulus = self._rsched_engine.stimulus_task_erred
        return self._rsched_call(stimulus, key, stimulus_id, worker=worker, run_id=run_id, **kwargs)

    def _rsched_replaced(self, name: str) -> bool:
        """Whether `name` is not the engine's own (a test or extension wrapped it)."""
        method = getattr(self, name)
        return getattr(method, "__func__", None) is not getattr(EngineSchedulerMixin, name)

    def stimulus_queue_slots_maybe_opened(self, *, stimulus_id: str) -> None:
        self._rsched_run(self._rsched_engine.stimulus_queue_slots_maybe_opened, stimulus_id)

    def check_idle_saturated(self, ws: Any, occ: float = -1.0) -> None:
        # the engine checks at distributed's points itself; this serves other callers
        if ws.address in self.workers:
            self._rsched_engine.check_idle_saturated(ws.address, occ)

    def bulk_schedule_unrunnable_after_adding_worker(self, ws: Any) -> dict:
        engine = self._rsched_engine
        return engine.bulk_schedule_unrunnable_after_adding_worker(_views.worker_ref(ws))

    # --------------------------------------------------------------- graphs

    async def update_graph(self, *args: Any, **kwargs: Any) -> None:
        # the graph's `dask.order.order` runs in Rust (same priorities)
        # the order makes the task arena for the tasks there are and the graph's
        # (the keys it is wanted for: the order's thread also walks the graph from them)
        seen = {"tasks": len(self._rsched_engine), "keys": kwargs.get("keys")}
        token = _order.ENGINE_ORDER.set(seen)
        budget = _graph_step()
        step = _GRAPH_STEP.set(budget)
        try:
            await super().update_graph(*args, **kwargs)  # type: ignore[misc]
        finally:
            _order.ENGINE_ORDER.reset(token)
            _GRAPH_STEP.reset(step)
        # a large graph's transitions, in steps with the event loop running between
        engine = self._rsched_engine
        while engine.graph_pending:
            await asyncio.sleep(0)
            began = perf_counter()
            self._rsched_run(engine.continue_graph, budget)
            self._rsched_note_graph_step(perf_counter() - began)

    def _rsched_note_graph_step(self, seconds: float) -> None:
        """The longest time one engine call of a graph submission held the event loop
        (`benches/submit_e2e.py` reads it)."""
        longest = getattr(self, "_rsched_longest_graph_step", 0.0)
        self._rsched_longest_graph_step = max(longest, seconds)

    def _find_lost_dependencies(self, dsk: dict, keys: set) -> set:
        lost = _order.lost_keys(_order.ENGINE_ORDER.get(), dsk, keys, self.tasks)
        if lost is None:
            return super()._find_lost_dependencies(dsk, keys)  # type: ignore[misc]
        for k in lost:
            _dsched.logger.info(
                "User asked for computation on lost data. Final key is %s with missing "
                "dependency %s",
                k,
                k,
            )
        return lost

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

        annotate = None
        if annotations_by_type or global_annotations:

            def annotate(new_keys: list) -> None:
                # distributed's own, on the new tasks' handles
                self._apply_annotations(
                    tasks=[self.tasks[k] for k in new_keys],
                    annotations_by_type=annotations_by_type,
                    global_annotations=global_annotations,
                )

        failure: list[BaseException] = []
        graph_plugins = _plugins_overriding(self.plugins, "update_graph")

        def observe(touched_keys: list | None, collisions: list, first_keys: list) -> bool:
            # the transitions run and their messages go out even if an observer fails
            try:
                self._rsched_warn_collisions(collisions, dsk)
                return self._rsched_observe_graph(
                    graph_plugins,
                    touched_keys,
                    first_keys,
                    keys,
                    client,
                    stimulus_id,
                    span_metadata,
                    code,
                    computation,
                )
            except BaseException as exc:
                failure.append(exc)
                return False

        began = perf_counter()
        new_tasks, collisions, _ = self._rsched_run(
            self._rsched_engine.update_graph,
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
            annotate=annotate,
            observe=observe,
            observe_touched=bool(graph_plugins),
            budget=_GRAPH_STEP.get(),
            read=_order.graph_read(_order.ENGINE_ORDER.get(), dsk),
        )
        self._rsched_note_graph_step(perf_counter() - began)
        if failure:
            raise failure[0]
        return {"tasks": len(dsk), "new_tasks": new_tasks, "key_collisions": len(collisions)}

    def _rsched_warn_collisions(self, collisions: list, dsk: dict) -> None:
        """The collision warning, once per task group; at debug level after that."""
        warned_groups = set()
        for key in collisions:
            ts = self.tasks[key]
            if ts.group in warned_groups:
                logger.debug(_COLLISION_DEBUG.format(key=ts.key))
                continue
            warned_groups.add(ts.group)
            message = _COLLISION_WARNING.format(key=ts.key)
            logger.warning(message + _collision_details(ts, dsk[key]))

    def _rsched_observe_graph(
        self,
        graph_plugins: list,
        touched_keys: list | None,
        first_keys: list,
        keys: Collection,
        client: str,
        stimulus_id: str,
        span_metadata: Any,
        code: tuple,
        computation: Any,
    ) -> bool:
        """The spans extension and `update_graph` plugins see the submitted tasks
        before their transitions run, as in `_create_taskstate_from_graph`. True if the
        spans extension saw only the first task of each group (the engine then gives the
        others their group's span annotation). `touched_keys` is given only when there
        are `graph_plugins`."""
        spans_ext = self.extensions.get("spans")
        if touched_keys is None:
            # No handle per task: the spans extension gives every task of a group the
            # span its first task gets, so it sees the first task of each group and the
            # engine hands the result to the others.
            firsts = [self.tasks[k] for k in first_keys]
            computation.groups.update({ts.group for ts in firsts})
            if not spans_ext:
                return False
            spans_ext.observe_tasks(firsts, span_metadata=span_metadata, code=code)
            return True
        touched = [self.tasks[k] for k in touched_keys]
        computation.groups.update({ts.group for ts in touched})
        annotations: dict[str, dict] = {}
        for ts in touched:
            for name, value in (ts.annotations or {}).items():
                annotations.setdefault(name, {})[ts.key] = value
        if spans_ext:
            span_annotations = spans_ext.observe_tasks(
                touched, span_metadata=span_metadata, code=code
            )
            if span_annotations:
                annotations["span"] = span_annotations
            else:
                annotations.pop("span", None)
        update = {
            "client": client,
            "tasks": [ts.key for ts in touched],
            "keys": keys,
            "annotations": annotations,
            "priority": {ts.key: ts.priority for ts in touched},
            "stimulus_id": stimulus_id,
        }
        for plugin in graph_plugins:
            try:
                plugin.update_graph(self, **update)
            except Exception as e:
                logger.exception(e)
        return False

    # -------------------------------------------------------------- workers

    def add_resources(self, worker: str, resources: dict | None = None) -> str:
        self._rsched_engine.add_resources(worker, resources)
        ws = self.workers[worker]
        for resource, quantity in ws.resources.items():
            self.resources.setdefault(resource, {})[worker] = quantity
        return "OK"

    def add_replica(self, ts: Any, ws: Any) -> None:
        self._rsched_engine.add_replica(ts, ws)

    def remove_replica(self, ts: Any, ws: Any) -> None:
        self._rsched_engine.remove_replica(ts, ws)

    def add_keys(self, worker: str, keys: Collection = (), stimulus_id: str | None = None) -> str:
        return self._rsched_run(self._rsched_engine.add_keys, worker, list(keys), stimulus_id)

    def release_worker_data(self, key: Any, worker: str, stimulus_id: str) -> None:
        self._rsched_run(self._rsched_engine.release_worker_data, key, worker, stimulus_id)

    @log_errors
    def update_data(self, *, who_has: dict, nbytes: dict, client: str | None = None) -> None:
        who_has = {k: [self.coerce_address(vv) for vv in v] for k, v in who_has.items()}
        engine = self._rsched_engine
        self._rsched_run(engine.update_data, who_has=who_has, nbytes=nbytes, client=client)

    # ---------------------------------------------------------- worker streams

    async def handle_worker(self, comm: Any, worker: str) -> None:
        """distributed's `handle_worker` with the worker's stream read and written by
        the engine (`_wire`) when its comm is plain TCP; otherwise distributed's own."""
        comm.name = "Scheduler connection to worker"
        wire = _wire.takeover(comm)
        if wire is None:
            await super().handle_worker(comm, worker)  # type: ignore[misc]
            return
        worker_comm = self.stream_comms[worker] = _wire.WireBatchedSend(self.stream_comms[worker])
        worker_comm.start(wire)
        logger.info("Starting worker compute stream, %s", worker)
        try:
            await _wire.handle_worker_stream(self, wire, worker)
        finally:
            if worker in self.stream_comms:
                worker_comm.abort()
                await self.remove_worker(worker, stimulus_id=f"handle-worker-cleanup-{time()}")

    async def handle_stream(self, comm: Any, extra: dict | None = None) -> None:
        """A client's stream (`add_client` reads it with `handle_stream`) dispatched by
        `_wire.handle_client_stream`: runs of `client-releases-keys` in one engine
        call; any other stream by distributed's own."""
        if extra is not None and list(extra) == ["client"]:
            wire = self._rsched_client_wire(comm, extra["client"])
            await _wire.handle_client_stream(self, wire or comm, extra)
            return
        await super().handle_stream(comm, extra)  # type: ignore[misc]

    def _rsched_client_wire(self, comm: Any, client: str) -> Any:
        """The client's comm read and written by the engine (`_wire.WireComm`), its
        `BatchedSend` (just started by `add_client`) replaced by a `WireBatchedSend`
        with what it buffered; None (distributed's comm and BatchedSend) for a comm
        that is not plain TCP or a BatchedSend that is not `add_client`'s."""
        bcomm = self.client_comms.get(client)
        if type(bcomm) is not BatchedSend or bcomm.comm is not comm or bcomm.batch_count:
            return None
        wire = _wire.takeover(comm)
        if wire is None:
            return None
        new = _wire.WireBatchedSend(bcomm)
        # the old one's writer ends when it runs: nothing left to write, asked to stop
        bcomm.buffer = []
        bcomm.please_stop = True
        bcomm.waker.set()
        self.client_comms[client] = new
        new.start(wire)
        return wire

    def _rsched_batch_releases(self) -> bool:
        """Whether a client stream's `client-releases-keys` messages may go to the
        engine a run at a time: the stream handler is this class's."""
        handler = self.stream_handlers.get("client-releases-keys")
        return getattr(handler, "__func__", None) is EngineSchedulerMixin.client_releases_keys

    def _rsched_releases_batch(self, runs: list) -> None:
        """`client_releases_keys(keys, client, stimulus_id)` for each of `runs`, in one
        call into the engine; the messages of those handled are sent before an error
        that stopped the run is raised."""
        direct = self._rsched_direct_send()
        self._rsched_send_run(*self._rsched_engine.client_releases_keys_batch(runs, direct))

    def _rsched_direct_send(self) -> bool:
        """Whether a run's messages may reach `send_all` as `Messages` (each
        destination's messages in one item, which a `WireBatchedSend` buffers and the
        engine writes without making their dicts): `send_all` is distributed's."""
        return type(self).send_all is _SEND_ALL and "send_all" not in self.__dict__

    def _rsched_send_run(self, client_msgs: dict, worker_msgs: dict, error: Any) -> None:
        """A run of stimuli's messages sent, then the error that stopped it raised.
        A destination whose stream is not a `WireBatchedSend` (or whose `send` something
        replaced) gets the dicts of its `Messages`."""
        if client_msgs or worker_msgs:
            sending = perf_counter()
            for msgs, comms in ((client_msgs, self.client_comms), (worker_msgs, self.stream_comms)):
                for dest, run in msgs.items():
                    if type(run[0]) is Messages:
                        bcomm = comms.get(dest)
                        if type(bcomm) is not _WireBatchedSend or "send" in bcomm.__dict__:
                            msgs[dest] = run[0].messages()
            self.send_all(client_msgs, worker_msgs)
            self._rsched_send_seconds += perf_counter() - sending
        if error is not None:
            self._rsched_log_failed(getattr(error, "failed_transitions", ()))
            raise error

    # ---------------------------------------------------------- task events

    def handle_task_finished(self, key: Any, worker: str, stimulus_id: str, **msg: Any) -> None:
        if self._rsched_replaced("stimulus_task_finished"):
            # distributed's handler, step by step through the replacement
            super().handle_task_finished(key, worker, stimulus_id, **msg)  # type: ignore[misc]
            return
        if self.validate and worker in self.workers:
            self.validate_key(key)
        engine = self._rsched_engine
        self._rsched_run(engine.handle_task_finished, key, worker, stimulus_id, **msg)

    def _rsched_batch_task_finished(self) -> bool:
        """Whether a worker stream's `task-finished` messages may go to the engine a
        run at a time: the stream handler is this class's, nothing replaced the
        stimulus, and no validation runs between messages."""
        handler = self.stream_handlers.get("task-finished")
        return (
            getattr(handler, "__func__", None) is EngineSchedulerMixin.handle_task_finished
            and not self.validate
            and not self._rsched_replaced("stimulus_task_finished")
        )

    def _rsched_task_finished_batch(self, worker: str, msgs: list) -> None:
        """`handle_task_finished(worker=worker, **msg)` for each message, in one call
        into the engine; the messages of those handled are sent before an error that
        stopped the run is raised."""
        direct = self._rsched_direct_send()
        self._rsched_send_run(*self._rsched_engine.handle_task_finished_batch(worker, msgs, direct))

    def handle_task_erred(self, key: Any, stimulus_id: str, **msg: Any) -> None:
        if self._rsched_replaced("stimulus_task_erred"):
            super().handle_task_erred(key, stimulus_id, **msg)  # type: ignore[misc]
            return
        self._rsched_run(self._rsched_engine.handle_task_erred, key, stimulus_id, **msg)

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
            engine.handle_long_running, key, worker, run_id, compute_duration, stimulus_id
        )

    # -------------------------------------------------------------- clients

    def client_desires_keys(self, keys: Collection, client: str) -> None:
        # for publish, queues etc., as distributed's client_desires_keys does
        if client not in self.clients:
            self.clients[client] = _dsched.ClientState(client)
        self._rsched_run(self._rsched_engine.client_desires_keys, list(keys), client)

    def client_releases_keys(
        self, keys: Collection, client: str, stimulus_id: str | None = None
    ) -> None:
        stimulus_id = stimulus_id or f"client-releases-keys-{time()}"
        engine = self._rsched_engine
        self._rsched_run(engine.client_releases_keys, list(keys), client, stimulus_id)

    def stimulus_cancel(
        self, keys: Collection, client: str, force: bool, reason: str, msg: str
    ) -> None:
        logger.info("Client %s requests to cancel %d keys", client, len(keys))
        self.log_event(client, {"action": "cancel", "count": len(keys), "force": force})
        engine = self._rsched_engine
        log = self._rsched_run(
            engine.stimulus_cancel, list(keys), client, force, reason, msg, f"cancel-key-{time()}"
        )
        # what distributed's recursive stimulus_cancel logs, in its order
        for what, value in log:
            if what == "request":
                logger.info("Client %s requests to cancel %d keys", client, value)
                self.log_event(client, {"action": "cancel", "count": value, "force": force})
            else:
                logger.info("Scheduler cancels key %s.  Force=%s", value, force)

    def stimulus_retry(self, keys: Collection, client: str | None = None) -> tuple:
        logger.info("Client %s requests to retry %d keys", client, len(keys))
        if client:
            self.log_event(client, {"action": "retry", "count": len(keys)})
        engine = self._rsched_engine
        return self._rsched_run(engine.stimulus_retry, list(keys), f"stimulus-retry-{time()}")


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
        logging.getLogger("distributed.dask_rsched").warning(
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
        aliases=scheduler.aliases,
        task_metadata=scheduler.task_metadata,
    )
    engine.bandwidth = float(scheduler.__dict__.get("bandwidth", engine.bandwidth))
    engine.transition_counter_max = int(getattr(scheduler, "transition_counter_max", 0) or 0)
    for attr in _ENGINE_ATTRIBUTES:
        scheduler.__dict__.pop(attr, None)
    scheduler._rsched_engine = engine
    # seconds `send_all` took for the engine's messages (the Prometheus metrics)
    scheduler._rsched_send_seconds = 0.0
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
    scheduler._rsched_configure_hook()
    plugins.on_change = scheduler._rsched_configure_hook
    _monitoring.install(scheduler)
    _order.install_scheduler_order()
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
