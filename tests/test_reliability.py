"""Bad input and odd use, on both engines: the same outcome as pure Python (issue 18)."""

from __future__ import annotations

import asyncio
import threading

import dask
import dask_rsched
import pytest
from dask._task_spec import Task, TaskRef
from distributed import Client
from distributed.utils import key_split, key_split_group
from distributed.utils_test import gen_cluster, inc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.fixture(params=["python", "rust"], autouse=True)
def engine(request):
    if request.param == "rust":
        dask_rsched.install()
    yield request.param
    dask_rsched.uninstall()


def first(a, b):
    return a


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


@gen_cluster(client=True)
async def test_a_failing_graph_does_not_block_later_graphs(c, s, a, b, engine):
    # a resubmitted key with other dependencies whose run_spec cannot be shown: the
    # collision warning fails, as on pure Python; the next graphs still run
    s._create_taskstate_from_graph(
        start=0.0,
        dsk={"x": Task("x", inc, 1)},
        keys={"x"},
        ordered={"x": 0},
        client="c",
        annotations_by_type={},
        global_annotations=None,
        stimulus_id="one",
        submitting_task=None,
        span_metadata={"collections": []},
    )
    dsk = {"y": Task("y", inc, 1), "x": Task("x", first, TaskRef("y"), BadRepr())}
    with pytest.raises(RuntimeError, match="no repr"):
        s._create_taskstate_from_graph(
            start=0.0,
            dsk=dsk,
            keys={"x"},
            ordered={"x": 1, "y": 0},
            client="c",
            annotations_by_type={},
            global_annotations=None,
            stimulus_id="two",
            submitting_task=None,
            span_metadata={"collections": []},
        )
    assert await c.submit(inc, 41) == 42


@gen_cluster(client=True)
async def test_readers_on_other_threads_do_not_break_stimuli(c, s, a, b, engine):
    stop = threading.Event()
    errors: list[BaseException] = []

    def read() -> None:
        while not stop.is_set():
            seen: list = []
            try:
                # a few tasks per round: pure Python's reads hold the GIL too
                for ts in list(s.tasks.values())[:10]:
                    s.story(ts)
                    seen.append((ts.state, ts.priority, ts.who_has, ts.dependents, ts.group.name))
                list(s.transition_log)[-100:]
                for ws in list(s.workers.values()):
                    seen.append((ws.processing, ws.has_what, ws.nbytes, ws.occupancy, ws.status))
                for view in (s.queued, s.unrunnable, s.idle, s.saturated, s.running):
                    list(view)
                for groups in (s.task_groups, s.task_prefixes, s.clients):
                    list(groups.values())
                list(s.replicated_tasks)
            except RuntimeError:
                # a reader may meet a change (pure Python: "changed size during
                # iteration"); the scheduler's stimuli never do
                pass
            except Exception as e:
                errors.append(e)
            stop.wait(0.005)

    readers = [threading.Thread(target=read) for _ in range(2)]
    for r in readers:
        r.start()
    try:
        futs = c.map(inc, range(200))
        total = c.submit(sum, futs)
        assert await total == sum(range(1, 201))
        del futs, total
        while s.tasks:
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        for r in readers:
            r.join()
    assert not errors
    s.validate_state()


@gen_cluster(client=True)
async def test_a_forgotten_task_keeps_its_group_and_prefix(c, s, a, b, engine):
    # a reader on another thread may hold a TaskState while it is forgotten
    fut = c.submit(inc, 1, key="inc-forgotten")
    await fut
    ts = s.tasks["inc-forgotten"]
    group = ts.group
    del fut
    while s.tasks:
        await asyncio.sleep(0.01)
    assert ts.state == "forgotten"
    assert ts.group is group
    assert ts.group.name == ts.group_key == key_split_group("inc-forgotten")
    assert ts.prefix.name == key_split("inc-forgotten")


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_float_nbytes_from_workers_and_scatter(c, s, a, engine):
    class Weird:
        def __sizeof__(self) -> int:
            return 100

    # a worker reporting a float size (a user's sizeof) keeps its worker
    key = "weird"
    fut = c.submit(Weird, key=key)
    await fut
    s.handle_task_finished(
        key=key,
        worker=a.address,
        stimulus_id="float",
        run_id=-1,
        nbytes=12.5,
        typename="W",
        metadata={},
    )
    assert a.address in s.workers
    s.update_data(who_has={"scattered": [a.address]}, nbytes={"scattered": 8.0}, client=c.id)
    assert s.tasks["scattered"].nbytes == 8
    s.validate_state()


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_huge_sizes_add_up_without_wrapping(c, s, a, engine):
    big = 2**63 - 1
    s.update_data(
        who_has={"b1": [a.address], "b2": [a.address]}, nbytes={"b1": big, "b2": big}, client=c.id
    )
    ws = s.workers[a.address]
    assert ws.nbytes == 2 * big
    assert s.tasks["b1"].group.nbytes_total == big
    assert sum(tp.nbytes_total for tp in s.task_prefixes.values()) == 2 * big
    s.client_releases_keys(keys=["b1"], client=c.id, stimulus_id="rel")
    assert ws.nbytes == big
    s.validate_state()


@gen_cluster(client=True)
async def test_lowest_priority_stays_lowest(c, s, a, b, engine):
    low = c.submit(inc, 1, priority=-(2**63), key="low")
    high = c.submit(inc, 2, priority=0, key="high")
    await asyncio.gather(low, high)
    assert s.tasks["low"].priority > s.tasks["high"].priority


@gen_cluster(client=True)
async def test_group_names_as_distributed_keys_them(c, s, a, b, engine):
    # a tuple key groups under its first element: equal names are one group, and a str
    # name is never mistaken for another object's
    futs = [
        c.submit(inc, 1, key=(1, "a")),
        c.submit(inc, 2, key=(1.0, "b")),
        c.submit(inc, 3, key=("\x00(1, 2)", 0)),
        c.submit(inc, 4, key=((1, 2), 0)),
    ]
    await asyncio.gather(*futs)
    groups = s.task_groups
    assert {k for k in groups} >= {1, "\x00(1, 2)", (1, 2)}
    assert len(groups[1]) == 2
    assert s.tasks[("\x00(1, 2)", 0)].group.name == "\x00(1, 2)"
    assert s.tasks[((1, 2), 0)].group.name == (1, 2)


class TupleKey(tuple):
    pass


NAMED_KEYS = [
    "inc-1",
    "x",
    "hello-world-1",
    "x-abcdefab",
    "_(x)",
    "('x-2', 1)",
    "ae05086432ca935f6eba409a8ecd4896",
    "AE05086432CA935F6EBA409A8ECD4896",
    "<module.submodule.myclass object at 0xdaf372",
    "ünïcode-1",
    "1-2",
    ("x-2", 1),
    ("sum-aggregate-3f2a", 0, 1),
    ("x-2", 2),
    (("nested", 1), 0),
    (7, "seven"),
    TupleKey(("sub-1", 0)),
]


@gen_cluster(client=True, nthreads=[])
async def test_group_and_prefix_names_follow_key_split(c, s, engine):
    # the engine calls key_split/key_split_group less often (cached per tuple key's
    # first element, once for most str keys); the names must stay theirs
    for key in NAMED_KEYS:
        s.new_task(key, None, "released")
    for key in NAMED_KEYS:
        ts = s.tasks[key]
        assert ts.group.name == key_split_group(key), key
        assert ts.prefix.name == key_split(key), key


@settings(
    max_examples=3000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=st.one_of(
        st.text(alphabet="abcfgxyzABF019-_,()'\"<> .é", max_size=40),
        st.lists(st.sampled_from(["inc", "x", "abcdefab", "deadbeef", "Sum", "1", ""])).map(
            "-".join
        ),
        st.text(alphabet="0123456789abcdef", min_size=32, max_size=32),
    )
)
def test_key_names_fuzzed(key, engine):
    # the engine names plain ASCII str keys itself; the names must be key_split's
    if engine == "python" or not key:
        return
    eng = dask_rsched.Engine()
    try:
        expected = (key_split_group(key), key_split(key))
    except Exception as e:  # distributed's own naming fails on this key: so does ours
        with pytest.raises(type(e)):
            eng.new_task(key, None, "released")
        return
    ts = eng.new_task(key, None, "released")
    assert (ts.group.name, ts.prefix.name) == expected, key


@gen_cluster(client=True)
async def test_stealing_objective_and_identity_keys(c, s, a, b, engine):
    fut = c.submit(inc, 1)
    await fut
    steal = s.extensions["stealing"]
    ws = s.workers[a.address]
    objective = steal.stealing_objective(s.tasks[fut.key], ws, occupancies={ws: 0.0})
    assert isinstance(objective, tuple)
    # distributed's identity() keys are left as they are
    assert "scheduler-engine" not in s.identity()
    assert (dask_rsched.scheduler_engine(s) is not None) == (engine == "rust")


def test_scheduler_engine_on_a_client() -> None:
    from distributed import LocalCluster

    dask_rsched.install()
    try:
        with LocalCluster(n_workers=1, processes=False, dashboard_address=":0") as cl:
            with Client(cl) as client:
                name = client.run_on_scheduler(
                    lambda dask_scheduler: dask_rsched.scheduler_engine(dask_scheduler)
                )
                assert name and "dask-rsched" in name
    finally:
        dask_rsched.uninstall()


@gen_cluster(client=True)
async def test_bad_annotations_name_key_and_annotation(c, s, a, b, engine):
    x = c.submit(inc, 1, key="x")
    await x
    bad = [{"resources": {"GPU": "a"}}, {"resources": {1: 1}}]
    if engine == "rust":
        # pure Python accepts it and then cannot encode the task's message: the batched
        # stream to the worker fails on every later write
        bad.append({"retries": 2**70})
    for i, annotated in enumerate(bad):
        key = f"bad-{i}"
        with dask.annotate(**annotated):
            fut = c.submit(inc, x, key=key)
        if engine == "rust":
            # refused at submission, naming the key and the annotation; the graph's
            # tasks are taken back
            name = next(iter(annotated))
            with pytest.raises((TypeError, ValueError), match=f"{key}.*{name}"):
                await fut
            assert key not in s.tasks
            assert [d.key for d in s.tasks["x"].dependents] == []
        else:
            # pure Python accepts them: the task can never run (or its message to the
            # worker cannot be encoded); the engine's refusal is the documented difference
            while key not in s.tasks:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            assert s.tasks[key].state != "memory"
        del fut
    s.validate_state()
    assert await c.submit(inc, 41) == 42


@gen_cluster(client=True, config={"distributed.scheduler.validate": True})
async def test_validate_refuses_to_forget_a_wanted_task(c, s, a, b, engine):
    fut = c.submit(inc, 1, key="wanted")
    await fut
    with pytest.raises(AssertionError, match="Unreachable"):
        s.transitions({"wanted": "forgotten"}, "test-forget")
    assert s.tasks["wanted"].state == "memory"
    assert await fut == 2
