"""distributed-style tests (`gen_cluster`, in-process workers) run on both engines.

The `engine` fixture installs dask-rsched for the "rust" run, so every Scheduler the
test creates runs on the engine, as under `pytest -p dask_rsched.testing`.
"""

from __future__ import annotations

import asyncio
import logging

import dask_rsched
import pytest
from distributed import Client, Event, Nanny, Variable, Worker, wait
from distributed.diagnostics.plugin import SchedulerPlugin
from distributed.utils_test import captured_logger, div, gen_cluster, inc, slowinc


@pytest.fixture(params=["python", "rust"], autouse=True)
def engine(request):
    if request.param == "rust":
        dask_rsched.install()
    yield request.param
    dask_rsched.uninstall()


def on_engine(s) -> bool:
    from dask_rsched._scheduler import is_active

    return is_active(s)


@gen_cluster(client=True)
async def test_basic_state(c, s, a, b, engine):
    assert on_engine(s) == (engine == "rust")
    x = c.submit(inc, 1)
    y = c.submit(inc, x)
    assert await y == 3
    assert s.tasks[y.key].state == "memory"
    assert s.tasks[x.key].who_has
    assert s.workers[a.address].nthreads == 1
    assert s.story(y.key)
    assert s.story(s.tasks[y.key]) == s.story(y.key)
    s.validate_state()


@gen_cluster(client=True)
async def test_processing_and_idle(c, s, a, b, engine):
    ev = Event()
    futs = c.map(lambda i, ev: ev.wait(), range(4), ev=ev)
    while sum(len(ws.processing) for ws in s.workers.values()) < 2:
        await asyncio.sleep(0.01)
    assert not s.idle
    await ev.set()
    await wait(futs)
    while not s.idle:
        await asyncio.sleep(0.01)
    assert s.is_idle


@gen_cluster(client=True)
async def test_erred_blame(c, s, a, b, engine):
    x = c.submit(div, 1, 0)
    with pytest.raises(ZeroDivisionError):
        await x
    ts = s.tasks[x.key]
    assert ts.state == "erred"
    assert ts.exception_blame is ts
    [record] = s.erred_tasks
    assert record.key == x.key
    assert "ZeroDivisionError" in record.exception_text


@gen_cluster(client=True)
async def test_retire_replicate(c, s, a, b, engine):
    futs = c.map(inc, range(10), workers=[a.address])
    await wait(futs)
    await c.replicate(futs)
    assert all(len(s.tasks[f.key].who_has) == 2 for f in futs)
    await c.retire_workers([a.address])
    assert list(s.workers) == [b.address]
    assert sum(await c.gather(futs)) == 55
    s.validate_state()


@gen_cluster(client=True, Worker=Nanny)
async def test_restart(c, s, a, b, engine):
    futs = c.map(inc, range(10))
    await wait(futs)
    await c.restart()
    assert not s.tasks
    assert sum(await c.gather(c.map(inc, range(10)))) == 55


@gen_cluster(client=True)
async def test_primitives_and_publish(c, s, a, b, engine):
    v = Variable("x")
    await v.set(1)
    assert await v.get() == 1
    f = c.submit(inc, 1)
    await c.publish_dataset(f, name="d")
    assert await (await c.get_dataset("d")) == 2


@gen_cluster(client=True)
async def test_diagnostics_handlers(c, s, a, b, engine):
    f = c.submit(inc, 1, workers=[a.address])
    await f
    assert (await c.who_has(f)) == {f.key: (a.address,)}
    assert f.key in (await c.has_what())[a.address]
    assert (await c.nbytes(summary=False))[f.key] > 0
    assert s.get_task_status(keys=[f.key]) == {f.key: "memory"}
    assert (await c.processing()) == {a.address: (), b.address: ()}
    assert any(t[0] == f.key for t in s.transition_log)


@gen_cluster(
    client=True,
    config={"distributed.scheduler.no-workers-timeout": "200ms"},
)
async def test_no_valid_worker_timeout(c, s, a, b, engine):
    from distributed.scheduler import NoValidWorkerError

    f = c.submit(inc, 1, workers=["tcp://10.255.255.1:1"])
    with pytest.raises(NoValidWorkerError):
        await f
    assert s.tasks[f.key].state == "erred"
    s.validate_state()


@gen_cluster(client=True)
async def test_prometheus_metrics_and_prefixes(c, s, a, b, engine):
    from distributed.http.scheduler.prometheus.core import SchedulerMetricCollector

    futs = c.map(inc, range(5))
    await wait(futs)
    metrics = {m.name: m for m in SchedulerMetricCollector(s).collect()}
    assert "dask_scheduler_prefix_state_totals" in metrics
    tp = s.task_prefixes["inc"]
    assert tp.state_counts["memory"] == 5
    assert tp.all_durations["compute"] >= 0
    assert "int" in tp.types
    assert len(s.task_groups) == 1
    del futs
    while s.tasks:
        await asyncio.sleep(0.01)
    # prefixes outlive their tasks, as on pure Python
    assert "inc" in s.task_prefixes


class ForgetWatcher(SchedulerPlugin):
    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.seen = []

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "forgotten":
            # distributed keeps the task findable while plugins hear about it
            self.seen.append((key, key in self.scheduler.tasks))


@gen_cluster(client=True)
async def test_plugin_can_look_up_forgotten_task(c, s, a, b, engine):
    plugin = ForgetWatcher(s)
    s.add_plugin(plugin)
    f = c.submit(slowinc, 1, delay=0.01, key="x")
    await f
    del f
    while s.tasks:
        await asyncio.sleep(0.01)
    assert plugin.seen == [("x", True)]


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_work_stealing_moves_tasks(c, s, a, b, engine):
    """Tasks piled (loosely) on `a` are stolen by the idle `b`; the extension's face
    reads as distributed's."""
    ext = s.extensions["stealing"]
    assert type(ext).__name__ == ("EngineWorkStealing" if engine == "rust" else "WorkStealing")
    assert "stealing" in s.periodic_callbacks
    futs = c.map(slowinc, range(40), delay=0.05, workers=[a.address], allow_other_workers=True)
    while not ext.metrics["request_count_total"]:
        await asyncio.sleep(0.01)
    assert set(ext.stealable) == {a.address, b.address}
    assert all(len(levels) == 15 for levels in ext.stealable.values())
    for ts, info in ext.in_flight.items():
        assert info["victim"] is s.workers[a.address] and ts.processing_on is info["victim"]
    await wait(futs)
    assert len(b.data) > 0
    assert ext.count >= 1
    kinds = {msg[0] for _, msg in s.get_events("stealing")}
    assert "request" in kinds and "confirm" in kinds
    stolen = next(msg[1] for _, msg in s.get_events("stealing") if msg[0] == "confirm")
    assert ext.story(stolen)
    s.validate_state()


@gen_cluster(client=True, config={"distributed.scheduler.work-stealing": False})
async def test_work_stealing_off(c, s, a, b, engine):
    assert "stealing" not in s.extensions
    assert "stealing" not in s.periodic_callbacks
    assert await c.submit(inc, 1) == 2


@gen_cluster(client=True, nthreads=[("127.0.0.1", 1)] * 2)
async def test_set_resources_after_registration(c, s, a, b, engine):
    """`Worker.set_resources` reaches the scheduler's `set_resources` handler: the worker
    now offers the resource and tasks needing it run there."""
    assert not s.workers[a.address].resources
    await a.set_resources(GPU=2)
    ws = s.workers[a.address]
    assert ws.resources == {"GPU": 2}
    assert ws.used_resources == {"GPU": 0}
    assert s.resources == {"GPU": {a.address: 2}}
    futs = c.map(inc, range(4), resources={"GPU": 1})
    assert await c.gather(futs) == [1, 2, 3, 4]
    assert all(s.tasks[f.key].who_has == {ws} for f in futs)
    assert ws.used_resources == {"GPU": 0}
    s.validate_state()


@gen_cluster(client=True)
async def test_direct_stimulus_calls(c, s, a, b, engine):
    """Extensions and tests call `stimulus_task_finished` and `_transition` themselves
    and carry out what they return, as distributed's handlers do."""
    ev = Event()
    fut = c.submit(lambda ev: ev.wait() or 1, ev, key="blocked")
    while "blocked" not in s.tasks or s.tasks["blocked"].state != "processing":
        await asyncio.sleep(0.01)
    ts = s.tasks["blocked"]
    worker = ts.processing_on.address
    recs, client_msgs, worker_msgs = s.stimulus_task_finished(
        worker=worker,
        stimulus_id="direct-finished",
        key="blocked",
        run_id=ts.run_id,
        nbytes=8,
        type=None,
        typename="int",
        metadata={"origin": "test"},
        startstops=[],
        thread=0,
        status="OK",
    )
    s._transitions(recs, client_msgs, worker_msgs, "direct-finished")
    s.send_all(client_msgs, worker_msgs)
    assert s.tasks["blocked"].state == "memory"
    assert s.tasks["blocked"].metadata == {"origin": "test"}
    assert any(
        m.get("op") == "key-in-memory" and m.get("key") == "blocked"
        for m in client_msgs.get(c.id, [])
    )
    assert fut.key == "blocked"
    await ev.set()

    x = c.submit(inc, 1, key="x")
    await x
    recs, client_msgs, worker_msgs = s._transition("x", "released", "direct-release")
    s._transitions(recs, client_msgs, worker_msgs, "direct-release")
    s.send_all(client_msgs, worker_msgs)
    assert await x == 2  # still wanted: it is computed again
    while s.tasks["x"].state != "memory":
        await asyncio.sleep(0.01)


@gen_cluster(client=True)
async def test_task_metadata_written_from_python(c, s, a, b, engine):
    x = c.submit(inc, 1, key="x")
    await x
    ts = s.tasks["x"]
    assert ts.metadata is None
    ts.metadata = {"owner": "plugin"}
    assert s.tasks["x"].metadata == {"owner": "plugin"}
    ts.metadata["more"] = 1
    assert s.tasks["x"].metadata == {"owner": "plugin", "more": 1}
    ts.metadata = None
    assert s.tasks["x"].metadata is None


@gen_cluster(client=True)
async def test_removed_client_is_forgotten(c, s, a, b, engine):
    async with Client(s.address, asynchronous=True) as c2:
        x = c2.submit(inc, 1, key="x2")
        assert await x == 2
        gone = c2.id
    while gone in s.clients:
        await asyncio.sleep(0.01)
    if engine == "rust":
        assert s._rsched_engine.get_client(gone) is None
    while "x2" in s.tasks:
        await asyncio.sleep(0.01)
    # a cancel reports to every client there is; the removed one is not among them
    y = c.submit(slowinc, 1, delay=5, key="y")
    await c.cancel(y)
    s.validate_state()


@gen_cluster(client=True, config={"distributed.scheduler.default-task-durations": {"inc": 100}})
async def test_new_task_called_directly(c, s, a, b, engine):
    await c.submit(inc, 1)
    ts = s.new_task("inc-abcdefab", None, "released")
    assert s.tasks["inc-abcdefab"] is ts
    assert ts.state == "released"
    assert ts.prefix is s.task_prefixes["inc"]
    assert ts.prefix.states["released"] == 1
    assert s.task_groups[ts.group.name] is ts.group
    s.validate_state()


@gen_cluster(client=True)
async def test_plugins_added_and_removed_while_running(c, s, a, b, engine):
    class Recorder(SchedulerPlugin):
        name = "recorder"

        def __init__(self) -> None:
            self.seen: list = []

        def transition(self, key, start, finish, *args, **kwargs):
            self.seen.append((key, start, finish))

    await c.submit(inc, 1, key="before")
    plugin = Recorder()
    s.add_plugin(plugin)
    await c.submit(inc, 2, key="during")
    assert ("during", "processing", "memory") in plugin.seen
    s.remove_plugin(name="recorder")
    n = len(plugin.seen)
    await c.submit(inc, 3, key="after")
    assert len(plugin.seen) == n
    # a plugin put into the dict directly is seen too
    s.plugins["recorder"] = plugin
    await c.submit(inc, 4, key="direct")
    assert ("direct", "processing", "memory") in plugin.seen


@gen_cluster(client=True, nthreads=[])
async def test_worker_saturation_set_while_running(c, s, engine):
    s.WORKER_SATURATION = float("inf")
    x = c.submit(inc, 1)
    while x.key not in s.tasks:
        await asyncio.sleep(0.01)
    assert s.tasks[x.key] in s.unrunnable
    assert s.tasks[x.key].state == "no-worker"
    s.WORKER_SATURATION = 1.0
    y = c.submit(inc, 2)
    while y.key not in s.tasks:
        await asyncio.sleep(0.01)
    assert s.tasks[y.key] in s.queued
    async with Worker(s.address, nthreads=1):
        assert await y == 3
        assert await x == 2
    s.validate_state()


@gen_cluster(nthreads=[("", 1)])
async def test_worker_repr_and_duplicate_name_logged(s, a, engine):
    ws = s.workers[a.address]
    assert repr(ws) == (
        f"<WorkerState {a.address!r}, name: 0, status: running, memory: 0, processing: 0>"
    )
    with captured_logger("distributed.scheduler") as log:
        with pytest.raises(RuntimeError):
            await Worker(s.address, name=a.name)
    assert "duplicate name" in log.getvalue()
    async with Worker(s.address) as b:  # named by its address
        assert repr(s.workers[b.address]).startswith(f"<WorkerState {b.address!r}, status")


@gen_cluster(client=True)
async def test_stealing_logs_a_response_for_a_released_key(c, s, a, b, engine):
    import logging

    steal = s.extensions["stealing"]
    with captured_logger("distributed.stealing", level=logging.DEBUG) as log:
        steal.move_task_confirm(key="gone", state="released", stimulus_id="steal-0")
    assert "Key released between request and confirm: gone" in log.getvalue()


@gen_cluster(client=True)
async def test_resubmitted_key_with_other_dependencies_warns(c, s, a, b, engine):
    from dask import delayed

    events = []
    c.subscribe_topic("scheduler", lambda ev: events.append(ev[1]))
    x1 = c.submit(inc, 1, key="x1")
    y_old = c.submit(inc, x1, key="y")
    y_new = delayed(sum)([2, 11], dask_key_name="y")
    z = delayed(inc)(y_new, dask_key_name="z")
    with captured_logger("distributed.scheduler") as log:
        fut = c.compute(z)
        while "z" not in s.tasks:
            await asyncio.sleep(0.01)
    assert "Detected different `run_spec` for key 'y'" in log.getvalue()
    assert "old dependencies: {'x1'}" in log.getvalue()
    while not any(
        isinstance(e, dict) and e.get("action") == "update-graph" and e["metrics"]["key_collisions"]
        for e in events
    ):
        await asyncio.sleep(0.01)
    collisions = [
        e["metrics"]["key_collisions"]
        for e in events
        if isinstance(e, dict) and e.get("action") == "update-graph"
    ]
    # resubmitting known keys with the same dependencies is no collision
    assert collisions == [0, 0, 1]
    assert await y_old == 3
    assert await fut == 4


@gen_cluster(client=True)
async def test_transition_counter_max_lowered_while_running(c, s, a, b, engine):
    assert s.transition_counter_max > 0  # gen_cluster sets it
    s.transition_counter_max = 1
    with captured_logger("distributed.scheduler") as log:
        with pytest.raises(AssertionError):
            await c.submit(inc, 2)
    assert s.transition_counter == 1
    assert "Error transitioning" in log.getvalue()
    assert "transition_counter_max" in log.getvalue()
    with pytest.raises(AssertionError):
        s.validate_state()
    s.validate = False


@gen_cluster(client=True, nthreads=[("", 1)], config={"distributed.scheduler.validate": False})
async def test_failed_transition_logs_an_event(c, s, a, engine):
    s.validate = False
    block, executing = Event(), Event()

    def wait_for(block, executing):
        executing.set()
        block.wait()
        return 1

    fut = c.submit(wait_for, block, executing)
    await executing.wait()
    # corrupt the state on purpose, as distributed's own test does
    s.tasks[fut.key].processing_on = None
    with captured_logger("distributed.scheduler") as log:
        await block.set()
        while not s.get_events("transitions"):
            await asyncio.sleep(0.01)
    _, event = s.get_events("transitions")[0]
    assert event["action"] == "scheduler-transition-failed"
    assert (event["key"], event["start"], event["finish"]) == (fut.key, "processing", "memory")
    assert isinstance(event["transition_log"], list)
    assert f"Error transitioning {fut.key!r} from 'processing' to 'memory'" in log.getvalue()
    del fut
    await a.close()


@gen_cluster(client=True, nthreads=[("", 1)], config={"distributed.scheduler.allowed-failures": 0})
async def test_killed_worker_task_is_logged(c, s, a, engine):
    ev = Event()
    fut = c.submit(lambda ev: ev.wait(), ev, key="f")
    while not s.tasks.get("f") or s.tasks["f"].state != "processing":
        await asyncio.sleep(0.01)
    with captured_logger("distributed.scheduler") as log:
        await s.remove_worker(a.address, stimulus_id="test")
    assert "Task f marked as failed because 1 workers died while trying to run it" in (
        log.getvalue()
    )
    assert s.tasks["f"].state == "erred"
    del fut


@gen_cluster(client=True)
async def test_task_finished_goes_through_stimulus_task_finished(c, s, a, b, engine):
    from unittest import mock

    with mock.patch.object(s, "stimulus_task_finished", wraps=s.stimulus_task_finished) as w:
        assert await c.submit(inc, 1) == 2
    assert w.call_count == 1
    with mock.patch.object(s, "stimulus_task_erred", wraps=s.stimulus_task_erred) as w:
        with pytest.raises(ZeroDivisionError):
            await c.submit(div, 1, 0)
    assert w.call_count == 1


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_cancel_logs_each_key(c, s, a, engine):
    ev = Event()
    f = c.submit(lambda ev: ev.wait(), ev, key="f")
    f2 = c.submit(inc, f, key="f2")
    while "f2" not in s.tasks:
        await asyncio.sleep(0.01)
    with captured_logger("distributed.scheduler", level=10) as log:
        await c.cancel([f])
        while "cancels key f." not in log.getvalue():
            await asyncio.sleep(0.01)
    lines = log.getvalue().splitlines()
    assert [line for line in lines if "cancel" in line] == [
        f"Client {c.id} requests to cancel 1 keys",
        f"Client {c.id} requests to cancel 1 keys",
        "Scheduler cancels key f2.  Force=False",
        "Scheduler cancels key f.  Force=False",
    ]
    assert [e["count"] for _, e in s.get_events(c.id) if e.get("action") == "cancel"] == [1, 1]
    await ev.set()
    del f2


@gen_cluster(client=True)
async def test_transition_log_clear_and_len(c, s, a, b, engine):
    x = c.submit(inc, 1)
    await x
    n = len(s.transition_log)
    assert n == len(list(s.transition_log)) > 0
    assert s.transition_log[-1] == list(s.transition_log)[-1]
    # cluster dumps store it as a list
    assert isinstance(s._to_dict()["transition_log"], list)
    s.transition_log.clear()
    assert len(s.transition_log) == 0
    y = c.submit(inc, 2)
    await y
    assert len(s.transition_log) == n
    del x, y


@gen_cluster(client=True)
async def test_task_metadata_dropped_when_forgotten(c, s, a, b, engine):
    future = c.submit(inc, 1)
    key = future.key
    await wait(future)
    await c.set_metadata(key, 123)
    assert await c.get_metadata(key) == 123
    del future
    while key in s.tasks:
        await asyncio.sleep(0.01)
    with pytest.raises(KeyError):
        await c.get_metadata(key)


class ForgottenTaskReader(ForgetWatcher):
    """Reads a forgotten task as distributed's GraphLayout and AllProgress do."""

    def transition(self, key, start, finish, *args, **kwargs):
        if finish == "forgotten":
            ts = self.scheduler.tasks[key]
            self.seen.append(
                (
                    key,
                    ts.prefix.name,
                    sorted(d.key for d in ts.dependents),
                    sorted(d.key for d in ts.dependencies),
                )
            )


@gen_cluster(client=True)
async def test_plugin_reads_forgotten_task_with_its_edges(c, s, a, b, engine):
    plugin = ForgottenTaskReader(s)
    s.add_plugin(plugin)
    x = c.submit(inc, 1, key="x")
    y = c.submit(inc, x, key="y")
    z = c.submit(inc, y, key="z")
    await z
    del x, y, z
    while s.tasks:
        await asyncio.sleep(0.01)
    # the dependents went first: each is forgotten with its dependencies only
    assert sorted(plugin.seen) == [
        ("x", "x", [], []),
        ("y", "y", [], ["x"]),
        ("z", "z", [], ["y"]),
    ]


@gen_cluster(client=True, nthreads=[("", 1)] * 3)
async def test_check_idle_saturated_called_from_outside(c, s, *workers, engine):
    ev = Event()
    futs = c.map(lambda i, ev: ev.wait(), range(6), ev=ev, workers=[workers[0].address])
    while len(s.workers[workers[0].address].processing) < 6:
        await asyncio.sleep(0.01)
    for ws in reversed(list(s.workers.values())):
        s.check_idle_saturated(ws)
    assert set(s.idle) == {w.address for w in workers[1:]}
    assert workers[0].address not in s.idle
    await ev.set()
    await wait(futs)


@gen_cluster(client=True)
async def test_key_grouped_under_a_tuple(c, s, a, b, engine):
    # key_split_group names this key's group with the tuple (1, 2), not a str
    key = ((1, 2), ("x", "y"))
    assert await c.submit(lambda: 1, key=key) == 1
    ts = s.tasks[key]
    assert ts.group.name == (1, 2)
    assert ts.group_key == (1, 2)
    assert s.task_groups[(1, 2)] is ts.group
    assert ts.prefix.name == "Other"


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_worker_status_set_directly(c, s, a, engine):
    from distributed.core import Status

    ws = s.workers[a.address]
    ws.status = Status.stopping
    assert ws.status == Status.stopping
    ws.status = Status.running
    assert ws.status == Status.running


class MomentRecorder(SchedulerPlugin):
    """Records what a plugin sees of the scheduler inside each `transition` call."""

    def __init__(self, scheduler, watch=()):
        self.scheduler = scheduler
        self.watch = watch
        self.seen = []

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
        ts = self.scheduler.tasks.get(key)
        others = tuple(
            (k, self.scheduler.tasks[k].state if k in self.scheduler.tasks else None)
            for k in self.watch
        )
        self.seen.append((key, start, finish, ts.state if ts else None, others))


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_plugins_see_the_state_between_transitions(c, s, a, engine):
    # distributed calls plugins inside `_transition`, before the next transition of
    # the batch: a task just made `waiting` still reads `waiting`, though the same
    # batch sends it on to `processing`; other tasks read as they are at that moment
    plugin = MomentRecorder(s, watch=("x", "y"))
    s.add_plugin(plugin)
    # (x runs long enough for y's graph to arrive first, as the moments below assume)
    x = c.submit(slowinc, 1, delay=0.5, key="x")
    y = c.submit(inc, x, key="y")
    assert await y == 3
    del x, y
    while s.tasks:
        await asyncio.sleep(0.01)
    for key, start, finish, state, _ in plugin.seen:
        # a forgotten task is still found while plugins hear of it, then never again
        assert state == finish, (key, start, finish, state)
    moments = {(key, start, finish): others for key, start, finish, _, others in plugin.seen}
    # y is sent to processing by the batch that put x in memory, after x's transition
    assert moments["x", "processing", "memory"] == (("x", "memory"), ("y", "waiting"))
    assert moments["y", "waiting", "processing"] == (("x", "memory"), ("y", "processing"))
    forgotten_first = min(
        i for i, (_, _, finish, _, _) in enumerate(plugin.seen) if finish == "forgotten"
    )
    first_key = plugin.seen[forgotten_first][0]
    later = [others for key, _, _, _, others in plugin.seen[forgotten_first + 1 :]]
    assert later and all(dict(o)[first_key] is None for o in later)


class RestrictOnWaiting(SchedulerPlugin):
    """Restricts a task to a worker when it becomes `waiting`."""

    def __init__(self, scheduler, key, worker):
        self.scheduler = scheduler
        self.key = key
        self.worker = worker

    def transition(self, key, start, finish, *args, **kwargs):
        if key == self.key and finish == "waiting":
            self.scheduler.set_restrictions({key: [self.worker]})


@gen_cluster(client=True)
async def test_plugin_changes_state_before_the_next_transition(c, s, a, b, engine):
    # what a plugin changes in its `transition` call is what the batch's next
    # transition (here: `decide_worker` of waiting -> processing) sees
    for i, target in enumerate([b, a, b]):
        key = f"restricted-{i}"
        s.add_plugin(RestrictOnWaiting(s, key, target.address), name=f"restrict-{i}")
        f = c.submit(inc, i, key=key)
        assert await f == i + 1
        assert {ws.address for ws in s.tasks[key].who_has} == {target.address}
        assert key in target.data


class ReleaseFromHook(SchedulerPlugin):
    """Starts another stimulus from inside `transition`."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.seen = []
        self.done = False

    def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
        self.seen.append((key, start, finish, stimulus_id))
        if key == "trigger" and finish == "memory" and not self.done:
            self.done = True
            self.scheduler.transitions({"first": "released"}, "from-plugin")


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_plugin_starts_a_stimulus_inside_transition(c, s, a, engine):
    plugin = ReleaseFromHook(s)
    s.add_plugin(plugin)
    first = c.submit(inc, 1, key="first")
    assert await first == 2
    trigger = c.submit(inc, 10, key="trigger")
    assert await trigger == 11
    # `first` is released inside the hook, then recomputed for its client
    assert await first == 2
    assert ("first", "memory", "released", "from-plugin") in plugin.seen
    i = next(i for i, t in enumerate(plugin.seen) if t[:3] == ("trigger", "processing", "memory"))
    assert plugin.seen[i + 1][:3] == ("first", "memory", "released")
    while s.tasks["first"].state != "memory":
        await asyncio.sleep(0.01)
    s.validate_state()


class AddsAPluginThenFails(SchedulerPlugin):
    """Adds a plugin from inside `transition`, and raises every time."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.late = None

    def transition(self, key, start, finish, *args, **kwargs):
        if self.late is None and finish == "waiting":
            self.late = MomentRecorder(self.scheduler)
            self.scheduler.add_plugin(self.late, name="late")
        raise ValueError("a plugin bug")


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_plugin_added_and_failing_inside_transition(c, s, a, engine):
    plugin = AddsAPluginThenFails(s)
    with captured_logger("distributed.scheduler", level=logging.INFO) as log:
        s.add_plugin(plugin)
        assert await c.submit(inc, 1, key="x") == 2
    assert "Plugin failed with exception" in log.getvalue()
    # the plugin added in the middle of the batch hears the batch's next transitions
    assert plugin.late.seen[0][:4] == ("x", "waiting", "processing", "processing")


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_transition_returns_its_recommendations(c, s, a, engine):
    # `Scheduler.transition` makes one transition and returns the recommendations it
    # made, not yet carried out (the no-worker timeouts gather them this way)
    ev = Event()
    blocked = c.submit(lambda ev: ev.wait() or 1, ev, key="blocked")
    dep = c.submit(inc, blocked, key="dep")
    # the two submissions may reach the scheduler in separate messages
    while "dep" not in s.tasks or s.tasks["blocked"].state != "processing":
        await asyncio.sleep(0.01)
    recs = s.transition("blocked", "released", "test-release")
    assert recs == {"blocked": "waiting"}
    assert s.tasks["blocked"].state == "released"
    assert s.tasks["dep"].state == "waiting"
    s.transitions(recs, "test-release")
    await ev.set()
    assert await dep == 2


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_transition_log_indexing(c, s, a, engine):
    assert await c.submit(inc, 1, key="x") == 2
    log = list(s.transition_log)
    assert len(log) == len(s.transition_log) > 2
    assert s.transition_log[0] == log[0]
    assert s.transition_log[-1] == log[-1]
    assert s.transition_log[len(log) - 2] == log[-2]
    with pytest.raises(TypeError, match="sequence index must be integer"):
        s.transition_log[1:3]
    with pytest.raises(IndexError):
        s.transition_log[len(log)]
    with pytest.raises(IndexError):
        s.transition_log[-len(log) - 1]


class WorkerArrival(SchedulerPlugin):
    """Records what `add_worker` sees and when transitions happen around it."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.events = []

    def add_worker(self, scheduler, worker):
        ws = scheduler.workers[worker]
        self.events.append(("add_worker", len(ws.processing)))

    def transition(self, key, start, finish, *args, **kwargs):
        self.events.append(("transition", key, start, finish))


@gen_cluster(client=True, nthreads=[])
async def test_add_worker_plugins_run_before_tasks_are_scheduled(c, s, engine):
    # distributed calls the plugins' `add_worker` before it sends waiting tasks to the
    # new worker
    futures = c.map(inc, range(3), key=[f"t-{i}" for i in range(3)])
    while len(s.tasks) < 3:
        await asyncio.sleep(0.01)
    plugin = WorkerArrival(s)
    s.add_plugin(plugin)
    async with Worker(s.address, nthreads=1):
        assert await c.gather(futures) == [1, 2, 3]
    assert plugin.events[0] == ("add_worker", 0)
    assert plugin.events[1][0] == "transition" and plugin.events[1][3] == "processing"


@gen_cluster(client=True, nthreads=[("", 1)])
async def test_dead_groups_stay_readable_while_referred_to(c, s, a, engine):
    x = c.submit(inc, 1, key="b-1")
    y = c.submit(inc, x, key="a-1")
    z = c.submit(inc, 10, key="a-2")
    assert await y == 3
    assert await z == 11
    held = s.tasks["b-1"].group
    del x, y
    while "b-1" in s.tasks or "a-1" in s.tasks:
        await asyncio.sleep(0.01)
    # group b died; group a (alive with a-2) still lists it, and the handle held here
    # still reads it
    tg_a = s.tasks["a-2"].group
    assert "b" not in s.task_groups
    assert [tg.name for tg in tg_a.dependencies] == ["b"]
    assert held.name == "b" and held.states["memory"] == 0
    assert held in tg_a.dependencies
    del z, tg_a
    while s.tasks:
        await asyncio.sleep(0.01)
    assert held.name == "b"
    s.validate_state()
