"""Drive distributed's pure-Python scheduler and the Rust engine with the same stimuli.

`PythonSide` is a real `distributed.Scheduler` (never started: no comms, no periodic
callbacks) whose workers and clients are in-process collectors; its stimuli go through
the same `SchedulerState`/`Scheduler` methods the comm handlers call. `EngineSide` is the
same Scheduler moved onto the engine. Both return per-stimulus messages per destination,
normalised so they compare equal when the engines behave the same.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from typing import Any, ClassVar

import dask
import dask_rsched
import dask_rsched._views
from distributed import Scheduler
from distributed.core import Status
from distributed.protocol.serialize import Serialized, deserialize
from distributed.scheduler import ClientState, WorkerState

IGNORED_OPS = {"close", "remove-worker"}


class Collector:
    """A comm that records what is sent to it; it also tells `dirty` it has messages, so
    collecting is O(messages), not O(workers)."""

    def __init__(self, dest: str, dirty: dict) -> None:
        self.msgs: list[dict] = []
        self.dest = dest
        self.dirty = dirty

    def send(self, *msgs: dict) -> None:
        self.msgs.extend(msgs)
        self.dirty[self.dest] = self

    def abort(self) -> None:
        pass

    def closed(self) -> bool:
        return True

    def close(self) -> None:
        pass


def assign_run_ids(batches: list[list[dict]], run_ids: dict) -> None:
    """Number new run ids in increasing order: run ids grow with emission order, so equal
    numbers mean the same emission order across destinations."""
    new = sorted(
        m["run_id"]
        for ms in batches
        for m in ms
        if m.get("op") == "compute-task" and m["run_id"] not in run_ids
    )
    for r in new:
        run_ids[r] = len(run_ids)


def _exception_identity(exc: object) -> object:
    """Exceptions made by the scheduler itself (pickled KilledWorker, the serialized
    "Worker holding Actor was lost") compare by content; the test's own by identity."""
    if isinstance(exc, Serialized):
        e = deserialize(exc.header, exc.frames)
        return (type(e).__name__, e.args)
    if isinstance(exc, bytes):
        e = pickle.loads(exc)
        args = tuple(
            (type(a).__name__, a.address, a.status.name, a.nthreads) if hasattr(a, "address") else a
            for a in e.args
        )
        return (type(e).__name__, args)
    return id(exc)


def normalise(msg: dict, run_ids: dict) -> dict:
    """Drop what legitimately differs (timestamps) and map objects to identities."""
    msg = dict(msg)
    sid = msg.get("stimulus_id")
    if isinstance(sid, str) and sid.startswith(("stimulus-retry", "cancel-key")):
        # distributed appends time() to these
        msg["stimulus_id"] = "stimulus-retry" if sid.startswith("stimulus-retry") else "cancel-key"
    if msg.get("op") == "compute-task":
        msg.pop("stimulus_id")
        msg["run_id"] = run_ids.setdefault(msg["run_id"], len(run_ids))
        msg["run_spec"] = id(msg["run_spec"].data)
        # span ids come from the spans extension, which the bare engine does not run
        msg.pop("span_id")
    for k in ("exception", "traceback"):
        if k in msg:
            msg[k] = _exception_identity(msg[k])
    return msg


def _config() -> Any:
    return dask.config.set({"distributed.scheduler.work-stealing": False})


_ORDERED_SETS = ("dependencies", "dependents", "waiting_on", "waiters", "who_has", "who_wants")


def engine_set_orders(s: Any) -> tuple | None:
    """For a scheduler on the engine, the engine's own iteration order of the sets that
    handles give as new Python sets (whose order can differ)."""
    engine = getattr(s, "_rsched_engine", None)
    return None if engine is None else engine.set_orders()


def task_snapshot(tasks: Any, orders: dict | None = None) -> dict:
    """Per task, the attributes both engines must agree on (sets in iteration order:
    `orders`, the engine's, where handles would lose it)."""
    out = {}

    def keys(tasks: Any) -> list | None:
        return None if tasks is None else [d.key for d in tasks]

    for k, ts in tasks.items():
        out[k] = {
            "state": ts.state,
            "processing_on": ts.processing_on.address if ts.processing_on else None,
            "who_has": None if ts.who_has is None else [w.address for w in ts.who_has],
            "waiting_on": keys(ts.waiting_on),
            "waiters": keys(ts.waiters),
            "dependencies": keys(ts.dependencies),
            "dependents": keys(ts.dependents),
            "priority": ts.priority,
            "retries": ts.retries,
            # as sets: a set the engine's handle makes again from the restrictions'
            # order may iterate in another order when two addresses share a slot (the
            # order that decides, `valid_workers`', is compared through the messages)
            "host_restrictions": None
            if ts.host_restrictions is None
            else sorted(ts.host_restrictions),
            "worker_restrictions": None
            if ts.worker_restrictions is None
            else sorted(ts.worker_restrictions),
            "resource_restrictions": None
            if ts.resource_restrictions is None
            else [(k, float(v)) for k, v in ts.resource_restrictions.items()],
            "loose_restrictions": bool(ts.loose_restrictions),
            "nbytes": ts.nbytes,
            "suspicious": ts.suspicious,
            "exception_blame": ts.exception_blame.key if ts.exception_blame else None,
            "who_wants": None if ts.who_wants is None else [c.client_key for c in ts.who_wants],
        }
        if orders is not None:
            out[k].update(zip(_ORDERED_SETS, orders[k], strict=True))
    return out


def worker_snapshot(workers: Any, orders: dict | None = None) -> dict:
    """Per worker, the attributes both engines must agree on (`processing` in iteration
    order: `orders`, the engine's, where handles would lose it)."""
    out = {}
    for addr, ws in workers.items():
        out[addr] = {
            "processing": orders[addr] if orders else [ts.key for ts in ws.processing],
            "has_what": [ts.key for ts in ws.has_what],
            "nbytes": ws.nbytes,
            "occupancy": ws.occupancy,
            "status": ws.status.name,
        }
    return out


class _Side:
    """`run_ids` maps real run ids to normalised ones. With `normalise=False` (benchmarks)
    messages are returned as the engine made them."""

    run_ids: dict
    normalise: bool = True

    def real_run_id(self, normalised: int) -> int:
        if not self.normalise:
            return normalised
        if len(self._inverse) != len(self.run_ids):
            self._inverse = {n: r for r, n in self.run_ids.items()}
        return self._inverse[normalised]

    _inverse: ClassVar[dict] = {}


class PythonSide(_Side):
    def __init__(self, loop: asyncio.AbstractEventLoop, validate: bool = False) -> None:
        # validate=False: distributed's per-transition assertions reject some legal
        # sequences (e.g. retrying a dependency while its dependents are erred) that run
        # fine in production; the state machine calls validate_state() after every step.
        self.loop = loop

        async def make() -> Scheduler:
            with _config():
                return Scheduler(dashboard=False, validate=validate)

        self.s = loop.run_until_complete(make())
        self.run_ids: dict = {}
        self.dirty_clients: dict = {}
        self.dirty_workers: dict = {}

    def _collect(self) -> tuple[dict, dict]:
        dirty_clients, dirty_workers = dict(self.dirty_clients), dict(self.dirty_workers)
        self.dirty_clients.clear()
        self.dirty_workers.clear()
        # a removed worker's comm is gone from stream_comms: its messages are dropped
        dirty_workers = {w: c for w, c in dirty_workers.items() if self.s.stream_comms.get(w) is c}
        if not self.normalise:
            cm, wm = {}, {}
            for c, comm in dirty_clients.items():
                cm[c], comm.msgs = comm.msgs, []
            for w, comm in dirty_workers.items():
                wm[w], comm.msgs = comm.msgs, []
            return cm, wm
        assign_run_ids([c.msgs for c in dirty_workers.values()], self.run_ids)
        cm = {}
        for c, comm in dirty_clients.items():
            cm[c] = [normalise(m, self.run_ids) for m in comm.msgs]
            comm.msgs = []
        wm = {}
        for w, comm in dirty_workers.items():
            msgs = [normalise(m, self.run_ids) for m in comm.msgs if m.get("op") not in IGNORED_OPS]
            comm.msgs = []
            if msgs:
                wm[w] = msgs
        return cm, wm

    def add_client(self, client: str) -> None:
        self.s.clients[client] = ClientState(client)
        self.s.client_comms[client] = Collector(client, self.dirty_clients)

    def add_worker(
        self, addr: str, server_id: str, nthreads: int, sid: str, resources: dict | None = None
    ) -> tuple:
        s = self.s
        ws = WorkerState(
            address=addr,
            status=Status.running,
            pid=0,
            nthreads=nthreads,
            memory_limit=2**32,
            name=addr,
            local_directory="/tmp",
            services={},
            versions={},
            nanny=None,
            extra={},
            server_id=server_id,
            scheduler=s,
        )
        s.workers[addr] = ws
        s.running.add(ws)
        host = ws.host
        dh = s.host_info.setdefault(host, {})
        dh.setdefault("addresses", set()).add(addr)
        dh["nthreads"] = dh.get("nthreads", 0) + nthreads
        s.total_memory += ws.memory_limit
        s.total_nthreads += nthreads
        s.aliases[addr] = addr
        s.add_resources(worker=addr, resources=resources or {})
        s.check_idle_saturated(ws)
        s.stream_comms[addr] = Collector(addr, self.dirty_workers)
        s.transitions(s.bulk_schedule_unrunnable_after_adding_worker(ws), sid)
        s.stimulus_queue_slots_maybe_opened(stimulus_id=sid)
        return self._collect()

    def remove_worker(self, addr: str, expected: bool, sid: str) -> tuple:
        collector = self.s.stream_comms[addr]
        self.loop.run_until_complete(
            self.s.remove_worker(addr, stimulus_id=sid, expected=expected, close=False)
        )
        # remove_worker deletes the comm; messages already sent to it are dropped
        collector.msgs.clear()
        return self._collect()

    def worker_status(self, addr: str, status: str, sid: str) -> tuple:
        self.s.handle_worker_status_change(status, addr, stimulus_id=sid)
        return self._collect()

    def update_graph(
        self,
        dsk: dict,
        keys: set,
        ordered: dict,
        client: str,
        sid: str,
        annotations: dict | None = None,
        user_priority: int = 0,
        actors: list | None = None,
    ) -> tuple:
        self.s._create_taskstate_from_graph(
            user_priority=user_priority,
            actors=actors,
            start=0.0,
            dsk=dsk,
            keys=set(keys),
            ordered=ordered,
            client=client,
            annotations_by_type=annotations or {},
            global_annotations=None,
            stimulus_id=sid,
            submitting_task=None,
            span_metadata={"collections": []},
        )
        return self._collect()

    def scatter(self, who_has: dict, nbytes: dict, client: str) -> tuple:
        self.s.update_data(who_has=who_has, nbytes=nbytes, client=client)
        return self._collect()

    def release_worker_data(self, key: Any, worker: str, sid: str) -> tuple:
        self.s.release_worker_data(key, worker, stimulus_id=sid)
        return self._collect()

    def add_keys(self, worker: str, keys: list, sid: str) -> tuple:
        status = self.s.add_keys(worker=worker, keys=keys, stimulus_id=sid)
        cm, wm = self._collect()
        return status, cm, wm

    def long_running(self, key: Any, worker: str, run_id: int, sid: str) -> tuple:
        self.s.handle_long_running(
            key=key, worker=worker, run_id=run_id, compute_duration=0.25, stimulus_id=sid
        )
        return self._collect()

    def cancel(self, keys: list, client: str, force: bool, sid: str) -> tuple:
        self.s.stimulus_cancel(keys, client, force=force, reason="test", msg="m")
        return self._collect()

    def retry(self, keys: list, client: str, sid: str) -> tuple:
        self.s.stimulus_retry(keys, client)
        return self._collect()

    def task_finished(
        self, key: Any, worker: str, run_id: int, sid: str, nbytes: int = 28
    ) -> tuple:
        self.s.handle_task_finished(
            key=key,
            worker=worker,
            stimulus_id=sid,
            run_id=run_id,
            nbytes=nbytes,
            type=b"int",
            typename="int",
            metadata={},
            thread=0,
            startstops=[{"action": "compute", "start": 1.0, "stop": 1.5}],
        )
        return self._collect()

    def task_erred(self, key: Any, worker: str, run_id: int, exc: Any, sid: str) -> tuple:
        self.s.handle_task_erred(
            key=key,
            worker=worker,
            stimulus_id=sid,
            run_id=run_id,
            exception=exc,
            traceback=None,
            exception_text="boom",
            traceback_text="",
            thread=0,
            startstops=[],
        )
        return self._collect()

    def release(self, keys: list, client: str, sid: str) -> tuple:
        self.s.client_releases_keys(keys=keys, client=client, stimulus_id=sid)
        return self._collect()

    def snapshot(self) -> dict:
        orders = engine_set_orders(self.s)
        return task_snapshot(self.s.tasks, orders and orders[0])

    def worker_snapshot(self) -> dict:
        orders = engine_set_orders(self.s)
        return worker_snapshot(self.s.workers, orders and orders[1])

    def containers(self) -> dict:
        s = self.s
        return {
            "idle": list(s.idle),
            "running": [ws.address for ws in s.running],
            "saturated": [ws.address for ws in s.saturated],
            "idle_task_count": [ws.address for ws in s.idle_task_count],
            "queued": [ts.key for ts in s.queued.sorted()],
            "unrunnable": [ts.key for ts in s.unrunnable],
            "replicated_tasks": [ts.key for ts in s.replicated_tasks],
            "total_nthreads": s.total_nthreads,
            "n_tasks": s.n_tasks,
            "total_occupancy": s.total_occupancy,
        }

    def validate(self) -> None:
        self.s.validate_state()

    def close(self) -> None:
        # Never started, so there is nothing for Scheduler.close to stop; let go of what
        # its constructor took, as close would: the dashboard's listening sockets, the
        # scratch directory's lock and its sys.path entry (thousands of sequences made
        # every import scan thousands of directories and ran out of file descriptors).
        s = self.s
        s.stream_comms.clear()
        s.client_comms.clear()
        if s.http_server is not None:
            s.http_server.stop()
        if s._workdir is not None:
            s._workdir.release()
        if s._updated_sys_path and s.local_directory in sys.path:
            sys.path.remove(s.local_directory)


class EngineSide(PythonSide):
    """`PythonSide` on the engine: the same never-started Scheduler, moved onto the
    engine (`dask_rsched.activate`) and driven through the same methods, so that
    distributed's own code running on the engine (worker lifecycle, handlers) is what
    is compared."""

    def __init__(self, loop: asyncio.AbstractEventLoop, validate: bool = True) -> None:
        super().__init__(loop, validate=False)
        # the engine validates every transition; distributed's Python-side checks stay
        # off, as on PythonSide
        self.s.validate = validate
        assert dask_rsched.activate(self.s)
        self.s.validate = False

    @property
    def e(self) -> dask_rsched.Engine:
        return self.s._rsched_engine

    def close(self) -> None:
        super().close()
        # as Scheduler.close does: the Scheduler can be freed (its sockets closed)
        self.s._rsched_engine.release_handles()

    def containers(self) -> dict:
        # the engine's own order: the views give new Python sets, whose order can differ
        out = self.s._rsched_engine.containers()
        del out["unrunnable_since"]  # timestamps; the keys are compared
        return out
