"""The engine's TaskState/WorkerState/ClientState/TaskGroup/TaskPrefix handles read like
distributed's objects after the same stimuli, and are canonical."""

from __future__ import annotations

import dask
import dask_rsched._views
import pytest
from dask._task_spec import Task, TaskRef
from test_differential import EXC, Differential, inc


@pytest.fixture
def machine():
    m = Differential()
    yield m
    m.teardown()


def run_some(m: Differential) -> None:
    m.add_worker(2, {"GPU": 1})
    m.add_worker(1)
    dsk = {("a", i): Task(("a", i), inc, i) for i in range(6)}
    dsk["b"] = Task("b", inc, *[TaskRef(("a", i)) for i in range(6)])
    dsk["c"] = Task("c", inc, TaskRef("b"))
    ann = {"resources": {("a", 0): {"GPU": 1}}, "retries": {"c": 1}}
    m.both("update_graph", dsk, {"c", ("a", 5)}, dask.order.order(dsk), "c1", "ug", ann)
    # finish two tasks, fail one
    for outcome in ("finished", "finished", "erred"):
        worker, key, nrun = m.compute.pop(0)
        if outcome == "finished":
            a = m.py.task_finished(key, worker, m.py.real_run_id(nrun), f"tf-{key}")
            m.rs.task_finished(key, worker, m.rs.real_run_id(nrun), f"tf-{key}")
        else:
            a = m.py.task_erred(key, worker, m.py.real_run_id(nrun), EXC, f"te-{key}")
            m.rs.task_erred(key, worker, m.rs.real_run_id(nrun), EXC, f"te-{key}")
        m.record_compute(a)
    m.same_state()


SCALAR = [
    "key",
    "state",
    "priority",
    "retries",
    "nbytes",
    "type",
    "suspicious",
    "actor",
    "loose_restrictions",
    "has_lost_dependencies",
    "run_spec",
    "exception",
    "exception_text",
    "traceback_text",
    "host_restrictions",
    "worker_restrictions",
    "resource_restrictions",
    "erred_on",
    "group_key",
    "run_id",
]


def keys(s):
    return None if s is None else {x.key for x in s}


def test_task_handles_match_distributed(machine: Differential) -> None:
    run_some(machine)
    e, s = machine.rs.e, machine.py.s
    assert sorted(e.task_keys(), key=repr) == sorted(s.tasks, key=repr)
    for k, ts in s.tasks.items():
        h = e.get_task(k)
        for attr in SCALAR:
            if attr == "run_id":
                assert (getattr(h, attr) is None) == (ts.run_id is None)
                continue
            assert getattr(h, attr) == getattr(ts, attr), (k, attr)
        for attr in ("dependencies", "dependents", "waiting_on", "waiters"):
            assert keys(getattr(h, attr)) == keys(getattr(ts, attr)), (k, attr)
        assert (None if h.who_has is None else {w.address for w in h.who_has}) == (
            None if ts.who_has is None else {w.address for w in ts.who_has}
        )
        assert (h.processing_on and h.processing_on.address) == (
            ts.processing_on and ts.processing_on.address
        )
        assert (h.exception_blame and h.exception_blame.key) == (
            ts.exception_blame and ts.exception_blame.key
        )
        assert h.get_nbytes() == ts.get_nbytes()
        assert h.group.name == ts.group.name
        assert h.group.states == ts.group.states
        assert len(h.group) == len(ts.group)
        assert h.prefix.name == ts.prefix.name
        assert h.prefix.states == ts.prefix.states
        assert h.prefix.duration_average == ts.prefix.duration_average
        assert repr(h) == repr(ts)


def test_worker_and_client_handles(machine: Differential) -> None:
    run_some(machine)
    e, s = machine.rs.e, machine.py.s
    for addr, ws in s.workers.items():
        h = e.get_worker(addr)
        assert h.address == ws.address
        assert h.nthreads == ws.nthreads
        assert h.status == ws.status
        assert h.nbytes == ws.nbytes
        assert h.occupancy == ws.occupancy
        assert keys(h.processing) == keys(ws.processing)
        assert [t.key for t in h.has_what] == [t.key for t in ws.has_what]
        assert h.resources == ws.resources
        assert h.used_resources == ws.used_resources
    for c, cs in s.clients.items():
        h = e.get_client(c)
        assert h.client_key == cs.client_key
        assert keys(h.wants_what) == keys(cs.wants_what)


def test_handles_are_canonical(machine: Differential) -> None:
    run_some(machine)
    e = machine.rs.e
    b = e.get_task("b")
    assert e.get_task("b") is b
    assert all(b in d.dependents for d in b.dependencies)
    assert hash(b) == hash("b")
    assert e.get_task("missing") is None
    assert e.get_worker(b.dependencies.pop().who_has.pop().address if False else "x") is None


def test_forgotten_handle_reads_forgotten(machine: Differential) -> None:
    run_some(machine)
    e = machine.rs.e
    h = e.get_task(("a", 5))
    machine.both("release", [("a", 5)], "c1", "rel")
    machine.both("cancel", ["c"], "c1", True, "cancel")
    if e.get_task(("a", 5)) is None:
        assert h.state == "forgotten"
        assert h.who_has is None


def test_story_and_transition_log(machine: Differential) -> None:
    run_some(machine)
    e, s = machine.rs.e, machine.py.s
    story = dask_rsched._views.story(e, "b")
    ours = [(t.key, t.start, t.finish, t.recommendations, t.stimulus_id) for t in story]
    theirs = [(t.key, t.start, t.finish, t.recommendations, t.stimulus_id) for t in s.story("b")]
    assert ours == theirs
    assert e.transition_log_len() == len(s.transition_log)
    assert e.transition_counter == s.transition_counter


def test_exec_times_from_heartbeats_match_distributed():
    import dask_rsched
    from distributed.scheduler import TaskPrefix

    e = dask_rsched.Engine()
    e.add_worker("tcp://10.0.0.1:1", server_id="w", nthreads=1)
    dsk = {"inc-1": Task("inc-1", inc, 1)}
    e.update_graph(dsk=dsk, keys={"inc-1"}, ordered={"inc-1": 0}, client="c", stimulus_id="u")
    expected = TaskPrefix("inc")
    tp = e.get_task("inc-1").prefix
    for seconds in (0.25, 0.1, 3.0):
        # distributed's heartbeat_worker calls it on the handle; it sets the engine's
        tp.add_exec_time(seconds)
        expected.add_exec_time(seconds)
        assert (tp.max_exec_time, tp.duration_average) == (
            expected.max_exec_time,
            expected.duration_average,
        )


def test_tasks_mapping_behaves_like_a_dict(machine: Differential) -> None:
    """`SchedulerState.tasks` on the engine (a Rust key table, not a dict) looks keys up,
    iterates and fails on changes during iteration as the dict of pure Python does."""
    run_some(machine)
    py_tasks, rs_tasks = machine.py.s.tasks, machine.rs.s.tasks
    assert list(rs_tasks) == list(py_tasks)
    assert [k for k, _ in rs_tasks.items()] == list(py_tasks)
    assert [ts.key for ts in rs_tasks.values()] == list(py_tasks)
    # equal keys that are other objects (a fresh tuple) find the same task
    fresh = tuple(["a", 3])
    assert rs_tasks[fresh].key == py_tasks[fresh].key == ("a", 3)
    assert (("a", 3.0) in rs_tasks) == (("a", 3.0) in py_tasks) is True
    assert ("missing" in rs_tasks) is ("missing" in py_tasks) is False
    with pytest.raises(TypeError):
        rs_tasks.get(["unhashable"])
    with pytest.raises(TypeError):
        py_tasks.get(["unhashable"])
    # forgetting tasks during an iteration fails it, on both
    errors = []
    its = [iter(machine.py.s.tasks), iter(machine.rs.s.tasks)]
    for it in its:
        next(it)
    machine.both("release", [("a", 5)], "c1", "rel")
    machine.both("cancel", ["c"], "c1", True, "cancel")
    for it in its:
        try:
            list(it)
        except RuntimeError as e:
            errors.append(str(e))
    assert len(errors) == 2 and errors[0] == errors[1]
    assert list(machine.rs.s.tasks) == list(machine.py.s.tasks)
