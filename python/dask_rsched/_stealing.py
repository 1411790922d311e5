"""`scheduler.extensions["stealing"]` on the engine.

The stealing state and decisions live in the engine (src/core/stealing.rs), updated at
every transition without crossing into Python. This object keeps the Python face of
distributed's `WorkStealing`: the periodic `balance`, the `steal-response` handler,
`move_task_request`, `story`, the stealing log events, and read-only snapshots of
`stealable`, `key_stealable`, `in_flight`, `in_flight_occupancy`, `metrics`, ... with
TaskState/WorkerState handles, as the dashboard, Prometheus and tests read them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from time import time
from typing import Any, ClassVar

import dask
from dask.utils import parse_timedelta
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.stealing import WorkStealing
from tornado.ioloop import PeriodicCallback

logger = logging.getLogger("distributed.stealing")


class EngineWorkStealing(SchedulerPlugin):
    """distributed's `WorkStealing`, served by the engine."""

    cost_multipliers: ClassVar[tuple[float, ...]] = WorkStealing.cost_multipliers

    # Same text as distributed's; they only read `self.scheduler`.
    log = WorkStealing.log
    story = WorkStealing.story
    _to_dict_no_nest = WorkStealing._to_dict_no_nest
    stealing_objective = WorkStealing.stealing_objective
    _combined_occupancy = WorkStealing._combined_occupancy

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self._engine = scheduler._rsched_engine
        self._callback_time = parse_timedelta(
            dask.config.get("distributed.scheduler.work-stealing-interval"), default="ms"
        )
        scheduler.stream_handlers["steal-response"] = self.move_task_confirm

    # ----- lifecycle (as WorkStealing) -------------------------------------------------

    async def start(self, scheduler: Any = None) -> None:
        self._start_balancing()

    def _start_balancing(self) -> None:
        if "stealing" in self.scheduler.periodic_callbacks:
            return
        pc = PeriodicCallback(callback=self.balance, callback_time=self._callback_time * 1000)
        pc.start()
        self.scheduler.periodic_callbacks["stealing"] = pc

    async def stop(self) -> None:
        pc = self.scheduler.periodic_callbacks.pop("stealing", None)
        if pc:
            pc.stop()
        # in_flight also empties inside transitions (a victim leaving), which no event
        # reports: poll, as distributed waits for its event
        while self._state("in_flight"):
            await asyncio.sleep(0.01)

    def teardown(self) -> None:
        pcs = self.scheduler.periodic_callbacks
        if "stealing" in pcs:
            pcs["stealing"].stop()
            del pcs["stealing"]

    def restart(self, scheduler: Any) -> None:
        self._engine.steal_restart()

    def remove_worker(self, scheduler: Any, worker: str, **kwargs: Any) -> None:
        self._engine.steal_remove_worker(worker)

    # ----- decisions (in the engine) ---------------------------------------------------

    def balance(self) -> None:
        start = time()
        self._apply(self.scheduler._rsched_call(self._engine.steal_balance))
        digests = self.scheduler.digests
        if digests:
            digests["steal-duration"].add(time() - start)

    def move_task_request(self, ts: Any, victim: Any, thief: Any) -> str:
        stimulus_id, *msgs = self.scheduler._rsched_call(
            self._engine.steal_request, ts.key, victim.address, thief.address
        )
        if stimulus_id == "in-flight":
            return stimulus_id
        # logged once the request is made, before it is sent, as distributed does
        logger.debug(
            "Request move %s, %s: %2f -> %s: %2f",
            ts.key,
            victim,
            victim.occupancy,
            thief,
            thief.occupancy,
        )
        self._apply(msgs)
        return stimulus_id

    def move_task_confirm(
        self, *, key: Any, state: str | None, stimulus_id: str, worker: str | None = None
    ) -> None:
        s = self.scheduler
        if key not in s.tasks:
            logger.debug("Key released between request and confirm: %s", key)
            return
        try:
            s._rsched_run(self._engine.steal_response, key, state, stimulus_id, worker)
        finally:
            self._log_events()

    def put_key_in_stealable(self, ts: Any) -> None:
        self._engine.steal_put_key(ts.key)

    def remove_key_from_stealable(self, ts: Any) -> None:
        self._engine.steal_remove_key(ts.key)

    def recalculate_cost(self, ts: Any) -> None:
        if ts not in self.in_flight:
            self.remove_key_from_stealable(ts)
            self.put_key_in_stealable(ts)

    def steal_time_ratio(self, ts: Any) -> tuple[float, int] | tuple[None, None]:
        return self._engine.steal_time_ratio(ts.key)  # type: ignore[no-any-return]

    def _apply(self, msgs: tuple[dict, dict]) -> None:
        client_msgs, worker_msgs = msgs
        if client_msgs or worker_msgs:
            self.scheduler.send_all(client_msgs, worker_msgs)
        self._log_events()

    def _log_events(self) -> None:
        for msg in self._engine.take_steal_events():
            self.log(msg)

    # ----- read-only snapshots of the engine's stealing state --------------------------

    def _state(self, name: str) -> Any:
        return self._engine.stealing_state(name)[name]

    def _task(self, key: Any) -> Any:
        return self.scheduler.tasks[key]

    def _worker(self, address: str) -> Any:
        return self._engine.get_worker(address)

    @property
    def stealable(self) -> dict[str, tuple[set, ...]]:
        state = self._state("stealable")
        return {
            addr: tuple({self._task(k) for k in level} for level in levels)
            for addr, levels in state.items()
        }

    @property
    def key_stealable(self) -> dict[Any, tuple[str, int]]:
        state = self._state("key_stealable")
        return {self._task(k): v for k, v in state.items()}

    @property
    def in_flight(self) -> dict[Any, dict[str, Any]]:
        state = self._state("in_flight")
        return {
            self._task(k): {
                **info,
                "victim": self._worker(info["victim"]),
                "thief": self._worker(info["thief"]),
            }
            for k, info in state.items()
        }

    @property
    def in_flight_occupancy(self) -> defaultdict[Any, float]:
        state = self._state("in_flight_occupancy")
        return defaultdict(int, {self._worker(a): v for a, v in state.items()})

    @property
    def in_flight_tasks(self) -> defaultdict[Any, int]:
        state = self._state("in_flight_tasks")
        return defaultdict(int, {self._worker(a): v for a, v in state.items()})

    @property
    def unknown_durations(self) -> dict[str, set]:
        state = self._state("unknown_durations")
        return {name: {self._task(k) for k in keys} for name, keys in state.items()}

    @property
    def metrics(self) -> dict[str, defaultdict[int, float]]:
        state = self._state("metrics")
        return {name: defaultdict(int, values) for name, values in state.items()}

    @property
    def count(self) -> int:
        return self._state("count")  # type: ignore[no-any-return]

    @property
    def _request_counter(self) -> int:
        return self._state("request_counter")  # type: ignore[no-any-return]
