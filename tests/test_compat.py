"""Tests of compat/ (``dask_rsched_compat``): the legacy dictionary views.

Every test that runs a cluster takes the ``scheduler_engine`` fixture; the
scheduler is built by :func:`start_scheduler`, the one place that knows how to
make a scheduler of a given engine.  Adding an engine means adding it to
``ENGINES`` and to ``start_scheduler``.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import importlib.util
import sys
from collections.abc import AsyncIterator, Callable, Hashable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dask.sizeof import sizeof
from distributed import Client, Event, Scheduler, Worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.protocol import deserialize, pickle
from distributed.utils_test import gen_test, inc

COMPAT = Path(__file__).resolve().parents[1] / "compat"
EXAMPLES = COMPAT / "examples"

try:
    import dask_rsched_compat
except ImportError:  # not pip-installed (pip install ./compat): test the source tree
    sys.path.insert(0, str(COMPAT))
    import dask_rsched_compat

from dask_rsched_compat import (  # noqa: E402
    CLIENT_VIEWS,
    TASK_VIEWS,
    VIEW_NAMES,
    WORKER_VIEWS,
    install_legacy_attributes,
    legacy_views,
    uninstall_legacy_attributes,
)

ENGINES = ["python", "rust"]


@pytest.fixture(params=ENGINES)
def scheduler_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@contextlib.asynccontextmanager
async def start_scheduler(engine: str, **kwargs: Any) -> AsyncIterator[Scheduler]:
    kwargs.setdefault("host", "127.0.0.1")
    kwargs.setdefault("dashboard_address", ":0")
    if engine == "python":
        async with Scheduler(**kwargs) as s:
            yield s
    elif engine == "rust":
        import dask_rsched
        from dask_rsched._scheduler import is_active

        dask_rsched.install()
        try:
            async with Scheduler(**kwargs) as s:
                assert is_active(s)
                yield s
        finally:
            dask_rsched.uninstall()
    else:  # pragma: no cover - engines are added here
        raise NotImplementedError(engine)


@contextlib.asynccontextmanager
async def small_cluster(
    engine: str,
) -> AsyncIterator[tuple[Scheduler, Worker, Worker, Client]]:
    """Scheduler, worker ``a`` (1 thread), worker ``b`` (2 threads, GPU=1), client."""
    async with (
        start_scheduler(engine) as s,
        Worker(s.address, nthreads=1, name="a") as a,
        Worker(s.address, nthreads=2, name="b", resources={"GPU": 1}) as b,
        Client(s.address, asynchronous=True) as c,
    ):
        yield s, a, b, c


async def until(predicate: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def blockinc(x: int, event: Event) -> int:
    event.wait()
    return x + 1


def add(x: int, y: int) -> int:
    return x + y


def div(x: int, y: int) -> float:
    return x / y


# --------------------------------------------------------------------------- #
# Reference: the legacy dictionaries computed directly from the state objects  #
# --------------------------------------------------------------------------- #


def _keys(tss: Any) -> set[Hashable]:
    return {ts.key for ts in tss or ()}


def reference(s: Any) -> dict[str, Any]:
    """What distributed 2022.4.1 would have shown, built from the TaskState,
    WorkerState and ClientState objects without the compat package.
    ``processing`` is given as ``{address: set of keys}``; its costs are
    checked separately (:func:`check_processing_costs`)."""
    tasks, workers, clients = s.tasks, s.workers, s.clients
    ref: dict[str, Any] = {
        "priority": {k: ts.priority for k, ts in tasks.items()},
        "dependencies": {k: _keys(ts.dependencies) for k, ts in tasks.items()},
        "dependents": {k: _keys(ts.dependents) for k, ts in tasks.items()},
        "retries": {k: ts.retries for k, ts in tasks.items()},
        "nbytes": {k: ts.nbytes for k, ts in tasks.items() if ts.nbytes > 0},
        "who_wants": {
            k: {cs.client_key for cs in ts.who_wants} for k, ts in tasks.items() if ts.who_wants
        },
        "who_has": {k: {ws.address for ws in ts.who_has} for k, ts in tasks.items() if ts.who_has},
        "waiting": {k: _keys(ts.waiting_on) for k, ts in tasks.items() if ts.waiting_on},
        "waiting_data": {k: _keys(ts.waiters) for k, ts in tasks.items() if ts.waiters},
        "rprocessing": {
            k: ts.processing_on for k, ts in tasks.items() if ts.processing_on is not None
        },
        "host_restrictions": {
            k: ts.host_restrictions for k, ts in tasks.items() if ts.host_restrictions
        },
        "worker_restrictions": {
            k: ts.worker_restrictions for k, ts in tasks.items() if ts.worker_restrictions
        },
        "resource_restrictions": {
            k: ts.resource_restrictions for k, ts in tasks.items() if ts.resource_restrictions
        },
        "suspicious_tasks": {k: ts.suspicious for k, ts in tasks.items() if ts.suspicious},
        "exceptions": {k: ts.exception for k, ts in tasks.items() if ts.exception is not None},
        "tracebacks": {k: ts.traceback for k, ts in tasks.items() if ts.traceback is not None},
        "exceptions_blame": {
            k: ts.exception_blame.key for k, ts in tasks.items() if ts.exception_blame is not None
        },
        "loose_restrictions": {k for k, ts in tasks.items() if ts.loose_restrictions},
        "task_state": {k: ts.state for k, ts in tasks.items()},
        "wants_what": {ck: _keys(cs.wants_what) for ck, cs in clients.items()},
        "nthreads": {a: ws.nthreads for a, ws in workers.items()},
        "ncores": {a: ws.nthreads for a, ws in workers.items()},
        "worker_bytes": {a: ws.nbytes for a, ws in workers.items()},
        "worker_resources": {a: ws.resources for a, ws in workers.items()},
        "used_resources": {a: ws.used_resources for a, ws in workers.items()},
        "occupancy": {a: ws.occupancy for a, ws in workers.items()},
        "worker_info": {a: ws.metrics for a, ws in workers.items()},
        "processing": {a: _keys(ws.processing) for a, ws in workers.items()},
        "has_what": {a: _keys(ws.has_what) for a, ws in workers.items()},
    }
    assert set(ref) == set(VIEW_NAMES)
    return ref


def materialize(views: Any) -> dict[str, Any]:
    """A deep-enough copy of every view's full contents."""
    snap: dict[str, Any] = {}
    for name, view in views.items():
        if name == "loose_restrictions":
            snap[name] = set(view)
        else:
            # Copy containers only: state objects (rprocessing) are identities.
            snap[name] = {
                k: copy.copy(v) if isinstance(v, (set, dict, list)) else v for k, v in view.items()
            }
    return snap


def check_processing_costs(s: Any, snap: dict[str, Any]) -> None:
    """processing[addr] maps each processing key to a cost >= 0 whose sum is the
    worker's occupancy (as in the legacy scheduler)."""
    for addr, costs in snap["processing"].items():
        assert all(c >= 0 for c in costs.values()), costs
        assert sum(costs.values()) == pytest.approx(snap["occupancy"][addr], abs=1e-9)
        ws = s.workers[addr]
        for key, cost in costs.items():
            ts = s.tasks[key]
            if ts not in ws.long_running:
                assert cost >= s._get_prefix_duration(ts.prefix) - 1e-12


def check_against_reference(s: Any, views: Any) -> dict[str, Any]:
    """Every view's full contents equals the reference, at this very instant."""
    snap = materialize(views)
    ref = reference(s)
    for name in VIEW_NAMES:
        got = snap[name]
        if name == "processing":
            got = {a: set(costs) for a, costs in got.items()}
        assert got == ref[name], name
    check_processing_costs(s, snap)
    return snap


def check_mapping_protocol(views: Any, s: Any) -> None:
    """Lookup, membership, len, iteration and read-only behaviour of each view."""
    for name, view in views.items():
        contents = set(view) if name == "loose_restrictions" else dict(view.items())
        assert len(view) == len(contents), name
        assert set(iter(view)) == set(contents), name
        collection = s.tasks if name in TASK_VIEWS else s.workers
        if name in CLIENT_VIEWS:
            collection = s.clients
        for key in collection:
            assert (key in view) == (key in contents), (name, key)
        assert "no-such-key" not in view
        if name == "loose_restrictions":
            continue
        assert list(view.values()) == list(contents.values()), name
        for key in collection:
            if key in contents:
                assert view[key] == contents[key]
            else:  # hidden entry of an optional view
                with pytest.raises(KeyError):
                    view[key]
                assert view.get(key, "dflt") == "dflt"
        with pytest.raises(KeyError):
            view["no-such-key"]
        with pytest.raises(TypeError):
            view["no-such-key"] = 1
        with pytest.raises(TypeError):
            del view[next(iter(collection))]


def load_exception(ser: Any) -> BaseException:
    """TaskState.exception is a ``Serialized`` pickled exception."""
    obj = deserialize(ser.header, ser.frames)
    return pickle.loads(obj) if isinstance(obj, bytes) else obj  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- #
# Normalisation for comparing runs and engines                                #
# --------------------------------------------------------------------------- #


def normalize(snap: dict[str, Any], names: dict[str, str], client_id: str) -> dict[str, Any]:
    """Replace run-specific identifiers (worker addresses, client id) by stable
    names and timing-derived numbers (costs, occupancy, metrics) by their shape,
    so that two runs of the same computation, on any engine, give equal results.
    The exact numbers are checked per run against the same-instant reference."""

    def addr(a: str) -> str:
        return names.get(a, a)

    def client(k: str) -> str:
        return "client" if k == client_id else k

    def exc(ser: Any) -> Any:
        e = load_exception(ser)
        return (type(e).__name__, str(e))

    out: dict[str, Any] = {}
    for name, view in snap.items():
        if name == "loose_restrictions":
            out[name] = sorted(map(str, view))
            continue
        norm: dict[Any, Any] = {}
        for k, v in view.items():
            if name in WORKER_VIEWS:
                k = addr(k)
            elif name in CLIENT_VIEWS:
                k = client(k)
            if name in ("who_has", "worker_restrictions"):
                v = sorted(map(addr, v))
            elif name == "who_wants":
                v = sorted(map(client, v))
            elif name == "rprocessing":
                v = addr(v.address)
            elif name == "exceptions":
                v = exc(v)
            elif name == "tracebacks":
                v = "<traceback>"
            elif name == "priority" and v is not None:
                # (-user priority, generation, graph order): the generation counter
                # depends on the time between submissions, so it is dropped.
                v = (v[0], *v[2:])
            elif name == "occupancy":
                v = v > 0
            elif name == "processing":
                v = {key: cost > 0 for key, cost in v.items()}
            elif name == "worker_info":
                v = sorted(v)
            elif isinstance(v, (set, frozenset)):
                v = sorted(map(str, v))
            norm[k] = v
        out[name] = norm
    return out


# --------------------------------------------------------------------------- #
# The scenario: one computation observed at several moments                    #
# --------------------------------------------------------------------------- #


class SnapshotAtAssignment(SchedulerPlugin):
    """Takes a snapshot synchronously inside the scheduler when ``key`` is
    assigned to a worker, i.e. before the worker fetched its dependencies."""

    def __init__(self, key: str) -> None:
        self.key = key
        self.taken: list[tuple[dict[str, Any], Any]] = []
        self.errors: list[BaseException] = []

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if key == self.key and finish == "processing" and not self.taken:
            try:
                s = self.scheduler
                snap = check_against_reference(s, legacy_views(s))
                self.taken.append((snap, {a: ws.needs_what.copy() for a, ws in s.workers.items()}))
            except BaseException as e:
                self.errors.append(e)


async def run_scenario(engine: str) -> list[tuple[str, dict[str, Any]]]:
    """Run the reference computation, check every view at each moment against the
    TaskState objects and hand-written expectations; return normalised snapshots."""
    moments: list[tuple[str, dict[str, Any]]] = []
    async with small_cluster(engine) as (s, a, b, c):
        A, B, C = a.address, b.address, c.id
        names = {A: "a", B: "b"}
        views = legacy_views(s)
        plugin = SnapshotAtAssignment("y")
        await plugin.start(s)
        s.add_plugin(plugin, name="snapshot-at-assignment")
        bandwidth, unknown = s.bandwidth, s.UNKNOWN_TASK_DURATION
        n28 = sizeof(2)

        def record(moment: str) -> dict[str, Any]:
            snap = check_against_reference(s, views)
            check_mapping_protocol(views, s)
            moments.append((moment, normalize(snap, names, C)))
            return snap

        # -- setup: x on a, h on b ---------------------- #
        ev = Event("go", client=c)
        x = c.submit(inc, 1, key="x", workers=[A])
        # host 127.0.0.1 has both workers; the resource makes the choice b.
        h = c.submit(
            inc, 10, key="h", workers=["127.0.0.1"], resources={"GPU": 1}, retries=2, priority=5
        )
        await wait([x, h])

        # -- moment 1: y assigned to b, x not yet fetched (inside the scheduler) #
        y = c.submit(blockinc, x, ev, key="y", workers=[B], resources={"GPU": 1})
        z = c.submit(add, x, y, key="z", workers=[A], allow_other_workers=True)
        await until(lambda: "y" in s.tasks and b.state.executing_count == 1)
        assert not plugin.errors, plugin.errors
        ((snap, needs_what),) = plugin.taken
        assert needs_what[B] == {s.tasks["x"]: 1}
        cost_y = unknown + n28 / bandwidth
        assert snap["processing"] == {A: {}, B: {"y": pytest.approx(cost_y)}}
        assert snap["occupancy"] == {A: 0, B: pytest.approx(cost_y)}
        assert snap["who_has"] == {"x": {A}, "h": {B}}
        assert snap["task_state"] == {"x": "memory", "h": "memory", "y": "processing"}
        assert snap["rprocessing"] == {"y": s.workers[B]}
        moments.append(("assigned", normalize(snap, names, C)))

        # -- moment 2: y executing (blocked), z waiting for it --------------- #
        # The scheduler learns that b fetched x a little after b started y.
        await until(lambda: "z" in s.tasks and len(s.tasks["x"].who_has or ()) == 2)
        snap = record("processing")
        expected_processing_state = {
            "dependencies": {"x": set(), "h": set(), "y": {"x"}, "z": {"x", "y"}},
            "dependents": {"x": {"y", "z"}, "h": set(), "y": {"z"}, "z": set()},
            "retries": {"x": 0, "h": 2, "y": 0, "z": 0},
            "nbytes": {"x": n28, "h": n28},
            "who_wants": {k: {C} for k in "xhyz"},
            "who_has": {"x": {A, B}, "h": {B}},
            "waiting": {"z": {"y"}},
            "waiting_data": {"x": {"y", "z"}, "y": {"z"}},
            "rprocessing": {"y": s.workers[B]},
            "host_restrictions": {"h": {"127.0.0.1"}},
            "worker_restrictions": {"x": {A}, "y": {B}, "z": {A}},
            "resource_restrictions": {"y": {"GPU": 1}, "h": {"GPU": 1}},
            "suspicious_tasks": {},
            "exceptions": {},
            "tracebacks": {},
            "exceptions_blame": {},
            "loose_restrictions": {"z"},
            "task_state": {"x": "memory", "h": "memory", "y": "processing", "z": "waiting"},
            "wants_what": {"fire-and-forget": set(), C: {"x", "h", "y", "z"}},
            "nthreads": {A: 1, B: 2},
            "ncores": {A: 1, B: 2},
            "worker_bytes": {A: n28, B: 2 * n28},
            "worker_resources": {A: {}, B: {"GPU": 1}},
            "used_resources": {A: {}, B: {"GPU": 1}},
            "has_what": {A: {"x"}, B: {"x", "h"}},
        }
        for name, expected in expected_processing_state.items():
            assert snap[name] == expected, name
        assert snap["priority"]["h"][0] == -5  # user priority 5, negated
        assert set(snap["processing"][B]) == {"y"} and snap["processing"][A] == {}
        assert snap["occupancy"][B] > 0 and snap["occupancy"][A] == 0
        assert set(snap["worker_info"]) == {A, B}
        assert "memory" in snap["worker_info"][A]
        assert views.worker_info[A] is s.workers[A].metrics  # live, as in the original

        # -- moment 3: everything finished ------------------------------------ #
        await ev.set()
        assert await z == 2 + 3
        snap = record("completed")
        assert snap["task_state"] == dict.fromkeys("xhyz", "memory")
        assert snap["waiting"] == snap["waiting_data"] == snap["rprocessing"] == {}
        assert snap["processing"] == {A: {}, B: {}}
        assert snap["occupancy"] == {A: 0, B: 0}
        assert snap["nbytes"] == dict.fromkeys("xhyz", n28)
        assert snap["who_has"] == {"x": {A, B}, "h": {B}, "y": {A, B}, "z": {A}}
        assert snap["used_resources"] == {A: {}, B: {"GPU": 0}}

        # -- moment 4: a failure and its dependent ---------------------------- #
        f = c.submit(div, 1, 0, key="f")
        g = c.submit(inc, f, key="g")
        await wait([g])
        snap = record("failed")
        assert {k: snap["task_state"][k] for k in "fg"} == {"f": "erred", "g": "erred"}
        assert set(snap["exceptions"]) == set(snap["tracebacks"]) == {"f"}
        e = snap["exceptions"]["f"]
        assert isinstance(load_exception(e), ZeroDivisionError)
        assert snap["exceptions_blame"] == {"f": "f", "g": "f"}
        assert snap["dependencies"]["g"] == {"f"} and snap["dependents"]["f"] == {"g"}
        assert "f" not in snap["nbytes"] and "f" not in snap["who_has"]
        assert snap["wants_what"][C] == set("xhyzfg")

        # -- moment 5: worker a dies while processing ------------------------- #
        ev2 = Event("go2", client=c)
        sus = c.submit(blockinc, 0, ev2, key="sus", workers=[A], allow_other_workers=True)
        w = c.submit(inc, 0, key="w", workers=[A])  # queued behind sus on a
        await until(lambda: a.state.executing_count == 1 and "w" in s.tasks)
        await until(lambda: s.tasks["w"].processing_on is not None)
        await s.remove_worker(A, stimulus_id="compat-test", expected=False)
        await until(
            lambda: (
                s.tasks["sus"].state == "processing"
                and s.tasks["w"].state == "no-worker"
                and s.tasks["z"].state == "memory"
                and s.tasks["h"].state == "memory"
            )
        )
        snap = record("worker-left")
        assert set(snap["nthreads"]) == set(snap["has_what"]) == set(snap["processing"]) == {B}
        assert snap["suspicious_tasks"] == {"sus": 1, "w": 1}
        assert snap["task_state"] == {
            **dict.fromkeys("xhyz", "memory"),
            "f": "erred",
            "g": "erred",
            "sus": "processing",
            "w": "no-worker",
        }
        assert snap["rprocessing"] == {"sus": s.workers[B]}
        assert snap["who_has"] == {key: {B} for key in "xhyz"}
        assert set(snap["processing"][B]) == {"sus"}
        assert snap["worker_restrictions"]["w"] == {A}  # the restriction outlives a
        assert snap["loose_restrictions"] == {"z", "sus"}
        assert snap["has_what"] == {B: set("xhyz")}
        await ev2.set()
        await wait([sus])
        del x, y, z, h, f, g, sus, w
    return moments


# Normalised snapshots of the pure-Python scheduler's run, reused as the
# reference of the cross-engine comparison.
_python_moments: dict[str, list[tuple[str, dict[str, Any]]]] = {}


@gen_test(timeout=60)
async def test_views_match_state_objects_at_every_moment(scheduler_engine: str) -> None:
    moments = await run_scenario(scheduler_engine)
    assert [m for m, _ in moments] == [
        "assigned",
        "processing",
        "completed",
        "failed",
        "worker-left",
    ]
    if scheduler_engine == "python":
        _python_moments.setdefault("python", moments)


@gen_test(timeout=60)
async def test_engines_give_identical_views(scheduler_engine: str) -> None:
    """The same computation on ``scheduler_engine`` and on the pure-Python
    scheduler shows the same contents in every view at every moment (for the
    Python engine itself this checks that the comparison is deterministic)."""
    if "python" not in _python_moments:
        _python_moments["python"] = await run_scenario("python")
    expected = _python_moments["python"]
    got = await run_scenario(scheduler_engine)
    assert [m for m, _ in got] == [m for m, _ in expected]
    for (moment, snap), (_, ref) in zip(got, expected, strict=True):
        for name in VIEW_NAMES:
            assert snap[name] == ref[name], (moment, name)


# --------------------------------------------------------------------------- #
# A known legacy consumer: an adaptive-scaling plugin                          #
# --------------------------------------------------------------------------- #


class LegacyAdaptive:
    """The reads of a pre-2022.4.2 adaptive-scaling plugin (in the style of
    ``distributed.deploy.Adaptive`` 1.21 and dask-drmaa's ``Adaptive``), verbatim
    against the scheduler's legacy dictionaries."""

    def __init__(self, scheduler: Any, startup_cost: float = 0.1) -> None:
        self.scheduler = scheduler
        self.startup_cost = startup_cost

    def busy_workers(self) -> set[str]:
        s = self.scheduler
        return {
            w
            for w in s.ncores
            if len(s.processing[w]) > 2 * s.ncores[w] and s.occupancy[w] > self.startup_cost * 2
        }

    def needs_cpu(self) -> bool:
        s = self.scheduler
        total_occupancy = sum(s.occupancy.values())
        total_cores = sum(s.ncores.values())
        if total_occupancy / (total_cores + 1e-9) > self.startup_cost * 2:
            tasks_processing = 0
            for tasks in s.processing.values():
                tasks_processing += len(tasks)
                if tasks_processing > total_cores:
                    return True
        return False

    def memory_wanted(self, keys: Any) -> list[float]:
        s = self.scheduler
        memory = []
        for key in keys:
            if key in s.resource_restrictions:
                m = s.resource_restrictions[key].get("memory")
                if m:
                    memory.append(m)
        return memory

    def worker_memory(self) -> dict[str, int]:
        s = self.scheduler
        return {w: info["memory"] for w, info in s.worker_info.items()}


@gen_test(timeout=60)
async def test_legacy_adaptive_consumer(scheduler_engine: str) -> None:
    async with small_cluster(scheduler_engine) as (s, a, b, c):
        install_legacy_attributes(s)
        adaptive = LegacyAdaptive(s)
        assert not adaptive.needs_cpu()
        assert adaptive.busy_workers() == set()

        ev = Event("adaptive", client=c)
        futs = [c.submit(blockinc, i, ev, key=f"busy-{i}", workers=[a.address]) for i in range(5)]
        big = c.submit(inc, 1, key="big", resources={"memory": 64e9})  # fits nowhere
        await until(lambda: len(s.workers[a.address].processing) == 5)
        await until(lambda: "big" in s.tasks and s.tasks["big"].state == "no-worker")

        assert adaptive.busy_workers() == {a.address}
        assert adaptive.needs_cpu()
        assert adaptive.memory_wanted(s.tasks) == [64e9]
        assert adaptive.memory_wanted(["busy-0", "unknown"]) == []
        mem = adaptive.worker_memory()
        assert set(mem) == {a.address, b.address} and all(m > 0 for m in mem.values())
        # The values the consumer relied on, from the state objects:
        assert s.processing[a.address].keys() == {f"busy-{i}" for i in range(5)}
        assert s.ncores == {a.address: 1, b.address: 2}
        assert s.occupancy[a.address] == pytest.approx(s.workers[a.address].occupancy)

        await ev.set()
        await wait(futs)
        assert not adaptive.needs_cpu()
        assert adaptive.busy_workers() == set()
        del futs, big
        uninstall_legacy_attributes(s)
        assert not hasattr(s, "processing")


# --------------------------------------------------------------------------- #
# Examples                                                                     #
# --------------------------------------------------------------------------- #


def _load_example(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(
        f"compat_example_{Path(name).stem}", EXAMPLES / name
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@gen_test(timeout=60)
async def test_example_plugin(scheduler_engine: str) -> None:
    example = _load_example("legacy_plugin.py")
    async with small_cluster(scheduler_engine) as (s, a, b, c):
        await c.register_plugin(example.LegacyTaskReporter())
        plugin = s.plugins[example.LegacyTaskReporter.name]
        x = c.submit(inc, 1, key="x", workers=[a.address])
        y = c.submit(div, x, 0, key="y", workers=[b.address])
        await wait([y])
        records = [r for r in plugin.records if r["event"] != "assigned"]
        assert records == [
            {"event": "in-memory", "key": "x", "nbytes": sizeof(2), "who_has": [a.address]},
            {"event": "erred", "key": "y", "blame": "y"},
        ]
        assigned = {r["key"]: r for r in plugin.records if r["event"] == "assigned"}
        assert assigned["x"]["worker"] == a.address and assigned["y"]["worker"] == b.address
        assert assigned["x"]["estimated_cost"] > 0
        assert assigned["x"]["estimated_cost"] <= assigned["x"]["worker_occupancy"] + 1e-12
        summary = plugin.summary()
        assert summary[a.address]["in_memory"] == 1 and summary[b.address]["ncores"] == 2
        del x, y


@gen_test(timeout=60)
async def test_example_preload(scheduler_engine: str) -> None:
    preload = [str(EXAMPLES / "preload.py")]
    async with (
        start_scheduler(scheduler_engine, preload=preload) as s,
        Worker(s.address, nthreads=1) as a,
        Client(s.address, asynchronous=True) as c,
    ):
        assert await c.submit(inc, 1, key="x") == 2
        assert s.who_has == {"x": {a.address}}
        assert s.ncores == {a.address: 1}
        assert s.task_state["x"] == "memory"
        assert dict(s.processing) == {a.address: {}}


# --------------------------------------------------------------------------- #
# Unit tests on plain objects presenting the attribute API                     #
# --------------------------------------------------------------------------- #


def _fake_scheduler() -> SimpleNamespace:
    """Enough of distributed's attribute API, built from plain objects: the views
    must not need a distributed.Scheduler (or any particular engine)."""

    class Obj(SimpleNamespace):
        __hash__ = object.__hash__

        def get_nbytes(self) -> int:
            return self.nbytes if self.nbytes >= 0 else 1000

    prefix = Obj(name="p")
    cs = Obj(client_key="c1", wants_what=set())
    w1 = Obj(address="tcp://w1", nthreads=4, nbytes=100, resources={"GPU": 1},
             used_resources={"GPU": 0}, metrics={"memory": 5}, processing=set(),
             long_running=set(), needs_what={}, has_what={})  # fmt: skip
    d1 = Obj(key="d1", nbytes=100, dependencies=set(), state="memory", who_has={w1})
    d2 = Obj(key="d2", nbytes=-1, dependencies=set(), state="memory", who_has=None)
    t1 = Obj(key="t1", nbytes=-1, dependencies={d1, d2}, state="processing", who_has=None)
    t2 = Obj(key="t2", nbytes=0, dependencies={d2}, state="processing", who_has=set())
    t3 = Obj(key="t3", nbytes=-1, dependencies=set(), state="processing", who_has=None)
    for ts in (d1, d2, t1, t2, t3):
        ts.__dict__.update(
            priority=(0, 1), dependents=set(), retries=0, who_wants={cs}, waiting_on=None,
            waiters=set(), processing_on=None, host_restrictions=None,
            worker_restrictions=None, resource_restrictions=None, suspicious=0,
            exception=None, traceback=None, exception_blame=None, loose_restrictions=False,
            prefix=prefix,
        )  # fmt: skip
    d1.dependents = {t1}
    d2.dependents = {t1, t2}
    cs.wants_what = {d1, d2, t1, t2, t3}
    w1.processing = {t1, t2, t3}
    w1.long_running = {t3}
    w1.needs_what = {d2: 2}  # d2 (unknown size: 1000 bytes) is needed by t1 and t2
    w1.has_what = {d1: None}
    for ts in (t1, t2, t3):
        ts.processing_on = w1
    d1.waiters = {t1}
    t2.exception, t2.exception_blame, t2.suspicious = "boom", t2, 2
    t3.loose_restrictions = True
    t3.resource_restrictions = {"GPU": 1}
    s = SimpleNamespace(
        tasks={ts.key: ts for ts in (d1, d2, t1, t2, t3)},
        workers={"tcp://w1": w1},
        clients={"c1": cs},
        bandwidth=1000.0,
        _get_prefix_duration=lambda p: 0.25,
    )
    w1.occupancy = 2 * 0.25 + 1000 / s.bandwidth  # the scheduler's formula
    return s


def test_views_on_plain_attribute_objects() -> None:
    s = _fake_scheduler()
    v = legacy_views(s)
    assert dict(v.nbytes) == {"d1": 100}  # unknown (-1) and 0 hidden
    assert dict(v.who_has) == {"d1": {"tcp://w1"}}  # None and empty set hidden
    assert dict(v.waiting_data) == {"d1": {"t1"}}
    assert dict(v.dependencies) == {
        "d1": set(), "d2": set(), "t1": {"d1", "d2"}, "t2": {"d2"}, "t3": set()
    }  # fmt: skip
    assert dict(v.exceptions) == {"t2": "boom"}
    assert dict(v.exceptions_blame) == {"t2": "t2"}
    assert dict(v.suspicious_tasks) == {"t2": 2}
    assert set(v.loose_restrictions) == {"t3"} and len(v.loose_restrictions) == 1
    assert "t3" in v.loose_restrictions and "t1" not in v.loose_restrictions
    assert dict(v.rprocessing) == {"t1": s.workers["tcp://w1"]} | {
        k: s.workers["tcp://w1"] for k in ("t2", "t3")
    }
    assert dict(v.wants_what) == {"c1": {"d1", "d2", "t1", "t2", "t3"}}
    assert v.has_what["tcp://w1"] == {"d1"}
    assert v.worker_resources["tcp://w1"] is s.workers["tcp://w1"].resources
    # processing: compute (0 when long-running) + share of the pending transfer
    assert v.processing["tcp://w1"] == {"t1": 0.25 + 0.5, "t2": 0.25 + 0.5, "t3": 0.0}
    assert sum(v.processing["tcp://w1"].values()) == pytest.approx(v.occupancy["tcp://w1"])
    check_mapping_protocol(v, s)
    check_processing_costs(s, materialize(v))


def test_views_are_live_and_return_fresh_sets() -> None:
    s = _fake_scheduler()
    v = legacy_views(s)
    deps = v.dependencies["t1"]
    deps.add("mutated")
    assert v.dependencies["t1"] == {"d1", "d2"}
    assert "t9" not in v.task_state
    t9 = SimpleNamespace(**{**vars(s.tasks["t3"]), "key": "t9", "state": "released"})
    s.tasks["t9"] = t9
    assert v.task_state["t9"] == "released" and len(v.task_state) == 6
    s.tasks["d2"].nbytes = 7
    assert v.nbytes["d2"] == 7
    del s.tasks["d1"]
    with pytest.raises(KeyError):
        v.nbytes["d1"]
    # The collection is looked up on each access, so a replaced one is seen.
    s.tasks = {}
    assert len(v.task_state) == 0 and list(v.who_wants) == []


def test_read_only() -> None:
    s = _fake_scheduler()
    v = legacy_views(s)
    with pytest.raises(TypeError):
        v.who_has["d1"] = {"x"}
    with pytest.raises(TypeError):
        v.who_has = {}
    with pytest.raises(TypeError):
        del v.nbytes
    with pytest.raises(TypeError):
        v.nbytes._accessor = None
    with pytest.raises(AttributeError):
        v.loose_restrictions.add("x")
    with pytest.raises(AttributeError):
        v.no_such_view  # noqa: B018
    assert set(VIEW_NAMES) <= set(dir(v))


def test_install_and_uninstall() -> None:
    s = _fake_scheduler()
    views = install_legacy_attributes(s)
    assert install_legacy_attributes(s) is not views  # idempotent re-install
    assert s.who_has["d1"] == {"tcp://w1"} and s.ncores["tcp://w1"] == 4
    uninstall_legacy_attributes(s)
    assert not any(hasattr(s, name) for name in VIEW_NAMES)
    s.processing = "something else"
    with pytest.raises(AttributeError, match="processing"):
        install_legacy_attributes(s)
    install_legacy_attributes(s, overwrite=True)
    assert s.processing["tcp://w1"]["t3"] == 0.0


def test_public_api() -> None:
    assert dask_rsched_compat.legacy_views is legacy_views
    assert len(VIEW_NAMES) == len(set(VIEW_NAMES)) == 29
    assert set(TASK_VIEWS) >= {"who_has", "nbytes", "task_state", "loose_restrictions"}
    assert CLIENT_VIEWS == ("wants_what",)
    assert set(WORKER_VIEWS) >= {"processing", "has_what", "ncores", "nthreads", "worker_info"}
    assert (Path(dask_rsched_compat.__file__).parent / "py.typed").exists()
