"""The run_specs the engine holds are out of Python's cyclic GC while their tasks live
(a full collection then does not walk the graph), and back in it once the engine lets go
of them, so that a cycle through one is collected as on pure Python."""

from __future__ import annotations

import asyncio
import gc
import weakref

import dask_rsched
import pytest
from dask._task_spec import Task, TaskRef
from dask_rsched import _order
from distributed import Client, Scheduler
from distributed.utils_test import gen_test, inc


def add(*args):
    return sum(args)


class Remembers:
    """A callable whose task refers back to it: a cycle through the run_spec."""

    def __call__(self, x):
        return x

    task: Task | None = None


def chain(n: int) -> dict:
    dsk: dict = {"x-0": Task("x-0", inc, 0)}
    for i in range(1, n):
        dsk[f"x-{i}"] = Task(f"x-{i}", add, TaskRef(f"x-{i - 1}"), (1, [2]))
    return dsk


def test_the_orders_reading_holds_the_run_specs_until_dropped():
    dsk = chain(10)
    seen: dict = {"keys": ["x-9"]}
    _order.order(dsk, _seen=seen)
    last = dsk["x-9"]
    ref, pair = last.args
    # the task and its parts are untracked, not what dask did not make (the list)
    assert not any(map(gc.is_tracked, [last, ref, pair]))
    assert gc.is_tracked(pair[1])
    # the reading dropped without a state creation taking it: back in the GC's lists
    seen.clear()
    assert all(map(gc.is_tracked, [last, ref, pair]))
    assert all(gc.is_tracked(t) for t in dsk.values())
    # a plain order call holds nothing
    _order.order(dsk)
    assert all(gc.is_tracked(t) for t in dsk.values())


@pytest.mark.parametrize("engine", ["python", "rust"])
@gen_test(timeout=60)
async def test_run_specs_held_while_their_tasks_live(engine):
    if engine == "rust":
        dask_rsched.install()
    try:
        async with Scheduler(dashboard_address=":0", port=0) as s:
            async with Client(s.address, asynchronous=True) as c:
                fut = c.get(chain(200), "x-199", sync=False)
                while len(s.tasks) < 200:
                    await asyncio.sleep(0.01)
                specs = [ts.run_spec for ts in s.tasks.values()]
                refs = [spec.args[0] for spec in specs if spec.args and spec.args[0] != 0]
                tracked = [gc.is_tracked(spec) for spec in specs + refs]
                # on the engine: none, on pure Python: all
                assert tracked == [engine == "python"] * 399
                del fut
                while s.tasks:
                    await asyncio.sleep(0.01)
                assert all(gc.is_tracked(spec) for spec in specs + refs)
    finally:
        dask_rsched.uninstall()


@gen_test(timeout=60)
async def test_a_cycle_through_a_held_run_spec_is_collected_once_released():
    dask_rsched.install()
    try:
        async with Scheduler(dashboard_address=":0", port=0) as s:
            async with Client(s.address, asynchronous=True) as c:
                func = Remembers()
                func.task = Task("cyclic", func, 1)
                fut = c.get({"cyclic": func.task}, "cyclic", sync=False)
                while "cyclic" not in s.tasks:
                    await asyncio.sleep(0.01)
                held = s.tasks["cyclic"].run_spec
                assert not gc.is_tracked(held)
                # the scheduler's own copy of the cycle (the graph came pickled)
                assert held.func.task is held and held.func is not func
                scheduler_side = weakref.ref(held.func)
                del held, fut
                while s.tasks:
                    await asyncio.sleep(0.01)
                gc.collect()
                assert scheduler_side() is None
    finally:
        dask_rsched.uninstall()
