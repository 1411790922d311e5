"""Differential test: random stimulus sequences into distributed's pure-Python scheduler and
the Rust engine; after every stimulus, every task's state, the workers, the scheduler-wide
containers and every emitted message must be identical (including set iteration orders).

DIFF_EXAMPLES sets the number of sequences (CI default 2000; `DIFF_EXAMPLES=20000` for a
long run).
"""

from __future__ import annotations

import asyncio
import os

import dask
import pytest
from dask._task_spec import Task, TaskRef
from differential import EngineSide, PythonSide
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

EXAMPLES = int(os.environ.get("DIFF_EXAMPLES", "2000"))
EXC = RuntimeError("boom")


def inc(*args: int) -> int:
    return sum(args) + 1


def assert_same(a: object, b: object, what: str) -> None:
    assert a == b, f"{what} differs:\npython={a!r}\nrust  ={b!r}"


RESOURCES = ["GPU", "MEM"]


@st.composite
def annotations_for(draw: st.DrawFn, keys: list, workers: list[str]) -> dict:
    """Layer annotations as distributed receives them: annotation -> {key: value}."""
    out: dict = {}
    for key in keys:
        if draw(st.integers(0, 4)):
            continue
        kind = draw(st.sampled_from(["resources", "workers", "retries", "priority", "loose"]))
        if kind == "resources":
            r = draw(st.sampled_from(RESOURCES))
            out.setdefault("resources", {})[key] = {r: draw(st.sampled_from([1, 2]))}
        elif kind == "workers":
            hosts = [w.split("//")[1].split(":")[0] for w in workers]
            choice = draw(st.lists(st.sampled_from(workers + hosts + ["10.9.9.9"]), max_size=2))
            if choice:
                out.setdefault("workers", {})[key] = choice
                if draw(st.booleans()):
                    out.setdefault("allow_other_workers", {})[key] = True
        elif kind == "retries":
            out.setdefault("retries", {})[key] = draw(st.integers(1, 2))
        elif kind == "priority":
            out.setdefault("priority", {})[key] = draw(st.integers(-2, 2))
    return out


@st.composite
def graphs(draw: st.DrawFn, token: int, external: list | None = None) -> tuple[dict, set]:
    """A random DAG: some wide groups (tuple keys) and string-keyed tasks; may depend on
    `external` keys the scheduler already holds (scattered data)."""
    n_groups = draw(st.integers(1, 3))
    dsk: dict = {}
    all_keys: list = []
    for g in range(n_groups):
        width = draw(st.integers(1, 12))
        name = f"g{g}-{token}"
        layer_keys = []
        for i in range(width):
            key = (name, i) if width > 1 else f"{name}"
            deps = []
            pool = all_keys + (external or [])
            if pool:
                deps = draw(st.lists(st.sampled_from(pool), max_size=3, unique=True))
            dsk[key] = Task(key, inc, *[TaskRef(d) for d in deps])
            layer_keys.append(key)
        all_keys.extend(layer_keys)
    keys = set(draw(st.lists(st.sampled_from(all_keys), min_size=1, max_size=4, unique=True)))
    return dsk, keys


class Differential(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.py = PythonSide(self.loop)
        self.rs = EngineSide(self.loop)
        self.workers: list[str] = []
        self.n_workers = 0
        self.n_graphs = 0
        self.known_workers: list[str] = []
        self.broken = False
        self.graphs: list[tuple[dict, dict]] = []
        self.scattered: list[str] = []
        self.seceded: set = set()
        self.step = 0
        self.compute: list[tuple[str, object, int]] = []  # (worker, key, normalised run id)
        self.client_keys: dict[str, set] = {"c1": set(), "c2": set()}
        for c in self.client_keys:
            self.py.add_client(c)
            self.rs.add_client(c)

    def teardown(self) -> None:
        self.py.close()
        self.rs.close()
        self.loop.close()

    def sid(self, what: str) -> str:
        self.step += 1
        return f"{what}-{self.step}"

    def both_calls(self, what: str, call_py, call_rs) -> None:
        """The same stimulus into both engines; the messages must be equal."""
        if self.broken:
            return
        try:
            a = call_py()
        except Exception as exc:
            # distributed fails on its own (an assertion such as cancelling a dependent
            # nobody wants, or its `assert ts.priority` on a lost scattered key queued
            # again): the engine must refuse too (an exception, never a panic); the
            # states after are not comparable.
            try:
                call_rs()
            except Exception:
                self.broken = True
                return
            raise AssertionError(f"{what}: distributed raised, the engine did not") from exc
        b = self.refusing_early(call_rs)
        if b is not None:
            assert_same(a, b, f"messages of {what}")
            self.record_compute(a)

    def refusing_early(self, call_rs):
        """The engine's result, or None when it refused a queued task without priority
        (a lost scattered key wanted again): distributed breaks on that task itself a
        stimulus later (`assert ts.priority`), so the states stop being comparable."""
        try:
            return call_rs()
        except ValueError as exc:
            if "without priority" not in str(exc):
                raise
            self.broken = True
            return None

    def both(self, name: str, *args: object) -> None:
        self.both_calls(
            f"{name}{args!r}",
            lambda: getattr(self.py, name)(*args),
            lambda: getattr(self.rs, name)(*args),
        )

    @initialize(n=st.integers(0, 3), nthreads=st.integers(1, 3))
    def start(self, n: int, nthreads: int) -> None:
        for _ in range(n):
            self.add_worker(nthreads)

    @rule(
        nthreads=st.integers(1, 4),
        resources=st.dictionaries(st.sampled_from(RESOURCES), st.sampled_from([1, 2, 3])),
    )
    def add_worker(self, nthreads: int, resources: dict | None = None) -> None:
        self.n_workers += 1
        addr = f"tcp://10.0.0.{self.n_workers}:1234"
        self.workers.append(addr)
        self.known_workers.append(addr)
        self.both(
            "add_worker",
            addr,
            f"Worker-{self.n_workers}-id",
            nthreads,
            self.sid("add-worker"),
            resources or {},
        )

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), expected=st.booleans())
    def remove_worker(self, data: st.DataObject, expected: bool) -> None:
        addr = data.draw(st.sampled_from(self.workers))
        self.workers.remove(addr)
        self.both("remove_worker", addr, expected, self.sid("remove-worker"))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), status=st.sampled_from(["paused", "running"]))
    def worker_status(self, data: st.DataObject, status: str) -> None:
        addr = data.draw(st.sampled_from(self.workers))
        self.both("worker_status", addr, status, self.sid("status"))

    @rule(data=st.data(), client=st.sampled_from(["c1", "c2"]))
    def submit(self, data: st.DataObject, client: str) -> None:
        # keys are unique per example and identical across runs of the same example
        self.n_graphs += 1
        scattered = [
            k
            for k in self.scattered
            if (ts := self.py.s.tasks.get(k)) is not None and ts.state == "memory"
        ]
        dsk, keys = data.draw(graphs(self.n_graphs, scattered))
        annotations = {}
        if data.draw(st.booleans()):
            workers = [*self.known_workers, "tcp://10.0.0.99:1234"]
            annotations = data.draw(annotations_for(list(dsk), workers))
        ordered = dask.order.order(dsk)
        if self.py.s._find_lost_dependencies(dsk, keys):
            return
        self.client_keys[client] |= keys
        user_priority = data.draw(st.sampled_from([0, 0, 1, -1]))
        actors = None
        if data.draw(st.integers(0, 9)) == 0:
            actors = data.draw(st.lists(st.sampled_from(sorted(keys, key=repr)), max_size=1))
        self.graphs.append((dsk, ordered))
        self.both(
            "update_graph",
            dsk,
            keys,
            ordered,
            client,
            self.sid("update-graph"),
            annotations,
            user_priority,
            actors,
        )

    @precondition(lambda self: self.graphs)
    @rule(data=st.data(), client=st.sampled_from(["c1", "c2"]))
    def resubmit(self, data: st.DataObject, client: str) -> None:
        """Submit keys of an earlier graph again (existing tasks in any state, or
        forgotten ones), like a client computing the same collection twice."""
        dsk, ordered = data.draw(st.sampled_from(self.graphs))
        keys = set(
            data.draw(
                st.lists(
                    st.sampled_from(sorted(dsk, key=repr)), min_size=1, max_size=3, unique=True
                )
            )
        )
        if self.py.s._find_lost_dependencies(dsk, keys):
            # Scheduler.update_graph cancels such a graph before it reaches the state
            return
        self.client_keys[client] |= keys
        self.both("update_graph", dsk, keys, ordered, client, self.sid("resubmit"))

    @precondition(lambda self: self.workers)
    @rule(data=st.data(), client=st.sampled_from(["c1", "c2"]))
    def scatter(self, data: st.DataObject, client: str) -> None:
        n = data.draw(st.integers(1, 3))
        who_has, nbytes = {}, {}
        for _ in range(n):
            key = f"scatter-{len(self.scattered)}"
            self.scattered.append(key)
            who_has[key] = data.draw(
                st.lists(st.sampled_from(self.workers), min_size=1, max_size=2, unique=True)
            )
            nbytes[key] = data.draw(st.sampled_from([100, 2_000_000]))
        self.client_keys[client] |= set(who_has)
        self.both("scatter", who_has, nbytes, client)

    def in_memory(self) -> list:
        return sorted((k for k, ts in self.py.s.tasks.items() if ts.state == "memory"), key=repr)

    @precondition(lambda self: self.workers)
    @rule(data=st.data())
    def release_worker_data(self, data: st.DataObject) -> None:
        """A worker drops a replica (possibly one it does not hold)."""
        keys = self.in_memory()
        if not keys:
            return
        key = data.draw(st.sampled_from(keys))
        worker = data.draw(st.sampled_from(self.workers))
        self.both("release_worker_data", key, worker, self.sid("release-worker-data"))

    @precondition(lambda self: self.workers and self.graphs)
    @rule(data=st.data())
    def add_keys(self, data: st.DataObject) -> None:
        """A worker reports keys: replicas of keys in memory, or keys it should drop."""
        dsk, _ = data.draw(st.sampled_from(self.graphs))
        pool = sorted(set(self.in_memory()) | set(dsk), key=repr)
        keys = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=3, unique=True))
        worker = data.draw(st.sampled_from(self.workers))
        self.both("add_keys", worker, keys, self.sid("add-keys"))

    @precondition(lambda self: self.compute)
    @rule(
        data=st.data(),
        outcome=st.sampled_from(["finished", "finished", "finished", "erred", "stale"]),
    )
    def finish(self, data: st.DataObject, outcome: str) -> None:
        i = data.draw(st.integers(0, len(self.compute) - 1))
        worker, key, nrun = self.compute.pop(i)
        if worker not in self.workers or self.broken:
            return
        rp, rr = self.py.real_run_id(nrun), self.rs.real_run_id(nrun)
        sid = self.sid("task-" + outcome)
        if outcome == "stale":
            rp, rr = rp - 10_000_000, rr - 10_000_000
            outcome = "finished"
        if outcome == "finished":
            nbytes = data.draw(st.sampled_from([28, 0, 5_000_000]))
            call_py = lambda: self.py.task_finished(key, worker, rp, sid, nbytes)  # noqa: E731
            call_rs = lambda: self.rs.task_finished(key, worker, rr, sid, nbytes)  # noqa: E731
        else:
            call_py = lambda: self.py.task_erred(key, worker, rp, EXC, sid)  # noqa: E731
            call_rs = lambda: self.rs.task_erred(key, worker, rr, EXC, sid)  # noqa: E731
        self.both_calls(f"task {outcome} {key!r}", call_py, call_rs)

    @precondition(lambda self: self.compute)
    @rule(data=st.data())
    def long_running(self, data: st.DataObject) -> None:
        worker, key, nrun = self.compute[data.draw(st.integers(0, len(self.compute) - 1))]
        if worker not in self.workers or (key, nrun) in self.seceded or self.broken:
            return
        self.seceded.add((key, nrun))
        sid = self.sid("long-running")
        self.both_calls(
            f"long-running {key!r}",
            lambda: self.py.long_running(key, worker, self.py.real_run_id(nrun), sid),
            lambda: self.rs.long_running(key, worker, self.rs.real_run_id(nrun), sid),
        )

    @precondition(lambda self: any(self.client_keys.values()))
    @rule(data=st.data(), force=st.booleans())
    def cancel(self, data: st.DataObject, force: bool) -> None:
        client = data.draw(st.sampled_from([c for c, k in self.client_keys.items() if k]))
        keys = data.draw(
            st.lists(
                st.sampled_from(sorted(self.client_keys[client], key=repr)),
                min_size=1,
                max_size=2,
                unique=True,
            )
        )
        self.both("cancel", keys, client, force, self.sid("cancel"))
        for c in self.client_keys:
            self.client_keys[c] = {k for k in self.client_keys[c] if self.py.s.tasks.get(k)}

    @precondition(lambda self: any(ts.state == "erred" for ts in self.py.s.tasks.values()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        erred = sorted((k for k, ts in self.py.s.tasks.items() if ts.state == "erred"), key=repr)
        keys = data.draw(st.lists(st.sampled_from(erred), min_size=1, max_size=2, unique=True))
        self.both("retry", keys, "c1", self.sid("retry"))

    def record_compute(self, msgs: tuple) -> None:
        for w, ms in msgs[1].items():
            for m in ms:
                if m["op"] == "compute-task":
                    self.compute.append((w, m["key"], m["run_id"]))

    @precondition(lambda self: any(self.client_keys.values()))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        client = data.draw(st.sampled_from([c for c, k in self.client_keys.items() if k]))
        keys = data.draw(
            st.lists(
                st.sampled_from(sorted(self.client_keys[client], key=repr)),
                min_size=1,
                max_size=3,
                unique=True,
            )
        )
        self.client_keys[client] -= set(keys)
        self.both("release", keys, client, self.sid("release"))

    @invariant()
    def same_state(self) -> None:
        if self.broken:
            return
        assert_same(self.py.snapshot(), self.rs.snapshot(), "tasks")
        assert_same(self.py.worker_snapshot(), self.rs.worker_snapshot(), "workers")
        assert_same(self.py.containers(), self.rs.containers(), "containers")
        try:
            self.py.validate()
        except AssertionError:
            # distributed itself reached a state its validate_state rejects (both engines
            # agree on it, checked above); nothing after this is comparable
            self.broken = True
            return
        self.rs.validate()


TestDifferential = Differential.TestCase
TestDifferential.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=bool(os.environ.get("CI")),
)


def test_smoke_tree_reduction() -> None:
    """A full tree reduction finishes with the same messages on both engines."""
    m = Differential()
    try:
        m.add_worker(2)
        m.add_worker(1)
        dsk = {("leaf", i): Task(("leaf", i), inc, i) for i in range(16)}
        for j in range(4):
            dsk[("mid", j)] = Task(
                ("mid", j), inc, *[TaskRef(("leaf", 4 * j + i)) for i in range(4)]
            )
        dsk["root"] = Task("root", inc, *[TaskRef(("mid", j)) for j in range(4)])
        m.both("update_graph", dsk, {"root"}, dask.order.order(dsk), "c1", m.sid("ug"))
        m.same_state()
        while m.compute:
            worker, key, nrun = m.compute.pop(0)
            sid = m.sid("tf")
            a = m.py.task_finished(key, worker, m.py.real_run_id(nrun), sid)
            b = m.rs.task_finished(key, worker, m.rs.real_run_id(nrun), sid)
            assert_same(a, b, f"task-finished {key!r}")
            for w, msgs in a[1].items():
                m.compute.extend(
                    (w, x["key"], x["run_id"]) for x in msgs if x["op"] == "compute-task"
                )
            m.same_state()
        assert m.rs.e.task_state("root") == "memory"
    finally:
        m.teardown()


def test_restricted_tie_follows_the_restrictions_set() -> None:
    """Two idle workers a task is restricted to tie; distributed takes the first of its
    sets (restrictions, valid addresses, valid workers) in their iteration order. With
    addresses that share a slot the order depends on how each set was built, so the
    engine must keep the restrictions set's own order (a regression: it rebuilt it)."""
    addresses = [f"tcp://10.0.0.{i}:1234" for i in range(1, 250)]
    pair = next(
        (a, b)
        for a in addresses
        for b in addresses
        if a != b and list({a: 0, b: 0}) != list({a, b}) != list(set(list({a, b})))
    )
    names = [f"Worker-{i}-id" for i in range(100)]
    ids = next((x, y) for x in names for y in names if x != y and hash(x) % 8 == hash(y) % 8)
    for restriction in (list(pair), list(reversed(pair))):
        m = Differential()
        try:
            for addr, server_id in zip(pair, ids, strict=True):
                m.both("add_worker", addr, server_id, 1, m.sid("add-worker"), {})
            dsk = {"t": Task("t", inc)}
            annotations = {"workers": {"t": restriction}}
            m.both(
                "update_graph", dsk, {"t"}, dask.order.order(dsk), "c1", m.sid("ug"), annotations
            )
            m.same_state()
        finally:
            m.teardown()


if __name__ == "__main__":
    pytest.main([__file__, "-x", "-q"])
