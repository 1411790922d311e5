"""Graph submission on the engine: a large graph's transitions run in steps, with the
event loop running between them (`distributed.scheduler.rsched-graph-step`): the state
they reach is the one a single step reaches, other stimuli may come in between, and
nothing is lost. The graph is read once, by the Rust order, and that reading gives the
state reading it again gives."""

from __future__ import annotations

import asyncio
import contextlib

import dask
import dask_rsched
import pytest
from dask._task_spec import Task, TaskRef
from distributed import Client, Scheduler, Worker
from distributed.utils_test import gen_cluster, gen_test, inc


@pytest.fixture(autouse=True)
def engine():
    dask_rsched.install()
    yield "rust"
    dask_rsched.uninstall()


def add(*args):
    return sum(args)


def tree(n: int, fan_in: int = 4) -> tuple[dict, str]:
    """A reduction tree of `n` leaves: `(graph, root key)`."""
    dsk: dict = {f"leaf-{i}": Task(f"leaf-{i}", inc, i) for i in range(n)}
    level, depth = [f"leaf-{i}" for i in range(n)], 0
    while len(level) > 1:
        depth += 1
        nxt = []
        for j in range(0, len(level), fan_in):
            key = f"sum-{depth}-{j // fan_in}"
            dsk[key] = Task(key, add, *(TaskRef(k) for k in level[j : j + fan_in]))
            nxt.append(key)
        level = nxt
    return dsk, level[0]


def counting_steps(s: Scheduler) -> list:
    """The engine calls `update_graph` made to continue a graph."""
    calls: list = []
    run = s._rsched_run

    def counted(stimulus, *args, **kwargs):
        if getattr(stimulus, "__name__", "") == "continue_graph":
            calls.append(args)
        return run(stimulus, *args, **kwargs)

    s._rsched_run = counted
    return calls


async def submitted_state(
    step: str | None, dsk: dict | None = None, root: str | None = None, then: dict | None = None
) -> tuple[dict, list, list, int]:
    """A tree submitted to a scheduler without workers, with `step`, and then the graph
    `then` (whose tasks may name the tree's): each task's state, priority and
    dependents (in order), the queue's order, the transitions, and how many steps it
    took."""
    if dsk is None:
        dsk, root = tree(3000)
    with dask.config.set({"distributed.scheduler.rsched-graph-step": step}):
        async with Scheduler(dashboard_address=":0", port=0) as s:
            steps = counting_steps(s)
            async with Client(s.address, asynchronous=True) as c:
                fut = c.get(dsk, root, sync=False)
                while len(s.tasks) < len(dsk) or s._rsched_engine.graph_pending:
                    await asyncio.sleep(0.01)
                if then:
                    more = c.get(then, list(then), sync=False)
                    while len(s.tasks) < len(dsk) + len(then) or s._rsched_engine.graph_pending:
                        await asyncio.sleep(0.01)
                tasks = {
                    k: (ts.state, ts.priority[0::2], [d.key for d in ts.dependents])
                    for k, ts in s.tasks.items()
                }
                queued = [ts.key for ts in s.queued.sorted()]
                log = [(key, start, finish) for key, start, finish, *_ in s.transition_log]
                del fut
                if then:
                    del more
    return tasks, queued, log, len(steps)


@gen_test(timeout=120)
async def test_stepped_graph_reaches_the_state_of_one_step():
    tasks, queued, log, steps = await submitted_state("0ms")
    assert steps > 2
    one_tasks, one_queued, one_log, one_steps = await submitted_state(None)
    assert one_steps == 0
    assert tasks == one_tasks
    assert queued == one_queued
    assert log == one_log


@gen_test(timeout=120)
async def test_the_orders_reading_gives_the_state_of_reading_again(monkeypatch):
    """The same graph, its keys read by the Rust order and handed to the engine, or
    read again by the engine: the same tasks, priorities, dependents, queue and
    transitions."""
    from dask_rsched import _order

    dsk, root = tree(1000, fan_in=3)
    read_paths: list = []
    graph_read = _order.graph_read
    monkeypatch.setattr(
        _order, "graph_read", lambda *a: read_paths.append(graph_read(*a)) or read_paths[-1]
    )
    # then a graph whose tasks name the tree's tasks (keys it does not hold)
    then = {
        f"then-{i}": Task(f"then-{i}", add, TaskRef(f"leaf-{i}"), TaskRef(f"sum-1-{i}"))
        for i in range(40)
    }
    read = await submitted_state(None, dsk, root, then)
    assert len(read_paths) == 2 and all(r is not None for r in read_paths)
    monkeypatch.setattr(_order, "graph_read", lambda *a: None)
    assert await submitted_state(None, dsk, root, then) == read


@gen_cluster(
    client=True,
    config={
        "distributed.scheduler.rsched-graph-step": "0ms",
        "distributed.scheduler.validate": True,
    },
)
async def test_stimuli_between_steps(c, s, a, b):
    """Keys released, tasks finishing and another graph submitted while a graph's
    transitions are pending: every wanted result still comes, the state stays valid."""
    steps = counting_steps(s)
    dsk, root = tree(2000)
    seen_pending = asyncio.Event()
    held = {"leaves": c.get(dsk, [f"leaf-{i}" for i in range(0, 2000, 7)], sync=False)}

    async def meddle() -> list:
        while not s._rsched_engine.graph_pending:
            await asyncio.sleep(0)
        seen_pending.set()
        # the client lets go of the leaves it asked for, and asks for another graph
        del held["leaves"]
        more = {f"more-{i}": Task(f"more-{i}", inc, TaskRef(f"leaf-{i}")) for i in range(50)}
        return await c.gather(c.get(more, list(more), sync=False))

    meddler = asyncio.create_task(meddle())
    total = c.get(dsk, root, sync=False)
    assert await total == sum(range(1, 2001))
    assert await meddler == [i + 2 for i in range(50)]
    assert seen_pending.is_set() and steps
    s.validate_state()
    del total
    while s.tasks:
        await asyncio.sleep(0.01)


@gen_cluster(client=True, config={"distributed.scheduler.rsched-graph-step": "0ms"})
async def test_a_graph_submitted_while_another_is_pending_comes_second(c, s, a, b):
    dsk1, root1 = tree(1500)
    dsk2 = {f"b-{k}": Task(f"b-{k}", inc, i) for i, k in enumerate(range(1500))}
    f1 = c.get(dsk1, root1, sync=False)
    while not s._rsched_engine.graph_pending:
        await asyncio.sleep(0)
    f2 = c.get(dsk2, list(dsk2), sync=False)
    assert await f1 == sum(range(1, 1501))
    assert await c.gather(f2) == [i + 1 for i in range(1500)]
    # the first graph's transitions were all done before the second graph's began
    first_of_second = next(i for i, e in enumerate(s.transition_log) if str(e[0]).startswith("b-"))
    last_of_first_waiting = max(
        i
        for i, e in enumerate(s.transition_log)
        if str(e[0]).startswith(("leaf-", "sum-")) and e[1] == "released"
    )
    assert last_of_first_waiting < first_of_second


@gen_test()
async def test_a_direct_create_taskstate_call_runs_every_transition():
    """Outside `update_graph` (a plugin or test calling distributed's method) the
    engine does all of a graph's transitions in the call, as distributed does."""
    dsk, root = tree(2000)
    with dask.config.set({"distributed.scheduler.rsched-graph-step": "0ms"}):
        async with Scheduler(dashboard_address=":0", port=0) as s:
            s.client_desires_keys(keys=[], client="direct")
            s._create_taskstate_from_graph(
                start=0.0,
                dsk=dsk,
                keys={root},
                ordered=dask_rsched.order(dsk),
                client="direct",
                annotations_by_type={},
                global_annotations=None,
                stimulus_id="direct",
                submitting_task=None,
                span_metadata={"collections": []},
            )
            assert not s._rsched_engine.graph_pending
            assert {ts.state for ts in s.tasks.values()} == {"waiting", "queued"}
            async with Worker(s.address, nthreads=2):
                s.client_releases_keys(keys=[root], client="direct", stimulus_id="done")
                while s.tasks:
                    await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def mapped_without_workers(n: int, saturation: float):
    """A scheduler without workers holding `n` mapped tasks (queued, or unrunnable with
    queuing off): `(scheduler, futures)`."""
    with dask.config.set({"distributed.scheduler.worker-saturation": saturation}):
        async with Scheduler(dashboard_address=":0", port=0) as s:
            async with Client(s.address, asynchronous=True) as c:
                futs = c.map(inc, range(n))
                while len(s.tasks) < n or len(s.queued) + len(s.unrunnable) < n:
                    await asyncio.sleep(0.01)
                yield s, futs


@gen_test()
async def test_queue_and_unrunnable_answer_without_a_handle_per_task():
    """`check_idle` (every 250 ms) and `adaptive_target` ask whether the queue is empty
    and take its first 100 tasks: that makes no handle for the others."""
    async with mapped_without_workers(3000, saturation=1.0) as (s, _):
        engine = s._rsched_engine
        engine.release_handles()
        before = engine.handle_counts()["tasks"]
        assert s.queued and len(s.queued) == 3000 and not s.unrunnable
        assert s.check_idle() is None
        target = s.adaptive_target()
        assert target >= 1
        assert engine.handle_counts()["tasks"] - before <= 100
        first = list(s.queued.peekn(5))
        assert [ts.key for ts in first] == [ts.key for ts in s.queued.sorted()][:5]
        assert first[0] in s.queued and s.queued.peek() is first[0]
        assert dict(s.unrunnable) == {} and s.unrunnable == {}


@gen_test()
async def test_unrunnable_view_reads_as_distributed_dict():
    async with mapped_without_workers(50, saturation=float("inf")) as (s, futs):
        view = s.unrunnable
        tasks = [s.tasks[f.key] for f in futs]
        assert set(view.keys()) == set(tasks) == set(view)
        assert view.keys() == set(tasks)
        items = list(view.items())
        assert [ts for ts, _ in items] == list(view) and len(items) == 50
        assert list(view.values()) == [since for _, since in items]
        assert all(view[ts] == since and ts in view for ts, since in items)
        assert view.get(items[0][0]) == items[0][1] and view.get("nope", 1) == 1
        assert view == dict(items) and not s.queued
        # distributed's no-workers check reads it through `items()`
        s.no_workers_timeout = 3600
        s._check_no_workers()
        assert len(s.unrunnable) == 50


@gen_cluster(
    client=True,
    nthreads=[("", 1)],
    config={"distributed.scheduler.worker-saturation": 1.0},
)
async def test_data_producers_as_read_by_the_order(c, s, a):
    """A task that produces data is root-ish (queued behind a busy worker) whatever
    its group's size; the order's reading tells it from its type's property."""
    from distributed.utils_test import slowinc

    busy = c.submit(slowinc, 1, delay=1.0, key="busy")
    while not a.state.executing:
        await asyncio.sleep(0.01)
    dsk = {
        "producer": Task("producer", inc, 1, _data_producer=True),
        "plain": Task("plain", inc, 2),
    }
    futs = c.get(dsk, list(dsk), sync=False)
    while len(s.tasks) < 3:
        await asyncio.sleep(0.01)
    assert s.tasks["producer"].state == "queued"
    assert s.tasks["plain"].state == "processing"
    assert await c.gather(futs) == [2, 3]
    await busy
