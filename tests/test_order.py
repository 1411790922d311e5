"""`dask_rsched.order` against `dask.order.order`: the same priority (and stats) for
every key, on random DAGs of many shapes and on real dask collections' graphs."""

from __future__ import annotations

import random

import dask
import dask.order
import dask_rsched
import pytest
from dask._task_spec import Alias, DataNode, Task, TaskRef, convert_legacy_graph
from dask_rsched import _core, _order
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

dask_order = getattr(dask.order.order, "__wrapped__", dask.order.order)


def _f(*args):
    return None


def assert_same(dsk, *, must_be_rust=True):
    assert _order.set_layout_matches()
    for stats in (False, True):
        expected = dask_order(dict(dsk), return_stats=stats)
        rust = _core.order_graph(dict(dsk), stats)
        if must_be_rust:
            assert rust is not None, "the graph went to dask's order"
        if rust is None:
            continue
        assert rust == expected
        assert list(rust) == [k for k in dsk if k in expected]  # the graph's order
        if stats:
            for k, v in expected.items():
                assert type(rust[k].critical_path) is type(v.critical_path)
        assert dask_rsched.order(dsk, return_stats=stats) == expected


def random_dag(rng: random.Random, n: int, shape: str) -> dict:
    keys: list = []
    for i in range(n):
        style = rng.random()
        if style < 0.45:
            keys.append(f"{rng.choice('abcxyz')}-{rng.randrange(10**6):x}-{i}")
        elif style < 0.9:
            keys.append((rng.choice(["x-1f3a", "sum-9", "getitem-77"]), i, rng.randrange(4)))
        else:
            keys.append(i * 7919)
    dsk: dict = {}
    external = [f"missing-{j}" for j in range(rng.randrange(3))]
    for i, key in enumerate(keys):
        if shape == "tree":
            candidates = keys[max(0, i - 8) : i]
            k = min(len(candidates), rng.choice((0, 2, 2, 3, 4)))
        elif shape == "wide":
            candidates = keys[:i]
            k = min(len(candidates), rng.choice((0, 0, 1, 1, 5, 12)))
        elif shape == "chain":
            candidates = keys[max(0, i - 2) : i]
            k = min(len(candidates), rng.choice((0, 1, 1, 1, 2)))
        else:
            candidates = keys[:i]
            k = min(len(candidates), rng.randrange(0, 7))
        deps = rng.sample(candidates, k) if k else []
        if external and rng.random() < 0.1:
            deps.append(rng.choice(external))
        if not deps and rng.random() < 0.3:
            dsk[key] = DataNode(key, i)
        elif len(deps) == 1 and rng.random() < 0.1:
            dsk[key] = Alias(key, deps[0])
        else:
            dsk[key] = Task(key, _f, *(TaskRef(d) for d in deps))
    if rng.random() < 0.5:
        items = list(dsk.items())
        rng.shuffle(items)
        dsk = dict(items)
    return dsk


@settings(
    max_examples=int(__import__("os").environ.get("ORDER_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    n=st.integers(1, 120),
    shape=st.sampled_from(["tree", "wide", "chain", "random"]),
)
def test_random_dags(seed, n, shape):
    assert_same(random_dag(random.Random(seed), n, shape))


def _collections():
    import dask.array as da
    import dask.bag as db
    import numpy as np

    x = da.ones((300, 300), chunks=(20, 20))
    yield "array-reduction", (x + x.T).sum(axis=0).mean()
    y = da.ones((120, 120), chunks=10)
    yield "matmul", (y @ y.T).sum()
    z = da.ones((600, 600), chunks=(50, 50))
    yield "rechunk", (z.rechunk((100, 20)) * 2).std()
    yield "cumsum", da.ones((400, 400), chunks=(40, 40)).cumsum(axis=0).sum()
    yield (
        "bag-fold",
        db.from_sequence(range(500), npartitions=50)
        .map(str)
        .fold(lambda a, b: a + b, split_every=3),
    )
    yield "store", da.store([x], [np.empty(x.shape)], compute=False, lock=False)
    try:
        import dask.dataframe as dd
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is in the test extra
        return
    df = dd.from_pandas(pd.DataFrame({"a": range(2000), "b": range(2000)}), npartitions=40)
    yield "shuffle", df.shuffle("a", npartitions=15).b.sum()
    yield "groupby", df.groupby("a").b.mean()
    yield "merge", df.merge(df, on="a").b_x.sum()


@pytest.mark.parametrize("name", [name for name, _ in _collections()])
def test_collections(name):
    (coll,) = [c for n, c in _collections() if n == name]
    if isinstance(coll, list):  # da.store(compute=False) gives a Delayed or a list
        coll = coll[0]
    dsk = convert_legacy_graph(dict(coll.__dask_graph__()))
    assert_same(dsk)


def test_empty_and_single():
    assert dask_rsched.order({}) == {}
    assert_same({"a": Task("a", _f)})
    assert_same({"a": DataNode("a", 1)})


def test_external_keys_are_left_out():
    dsk = {"b": Task("b", _f, TaskRef("a")), "c": Task("c", _f, TaskRef("a"), TaskRef("z"))}
    assert_same(dsk)
    assert set(dask_rsched.order(dsk)) == {"b", "c"}


def test_keys_told_apart_as_a_dict_tells_them():
    """The key index: equal hashes of different keys (`hash(-1) == hash(-2)`), a
    dependency equal to a key of another type (`1.0 == 1`), and more keys named outside
    the graph than the index was made for (it grows)."""
    dsk = {
        -1: Task(-1, _f),
        -2: Task(-2, _f, TaskRef(-1)),
        1: Task(1, _f, TaskRef(-2)),
        "x": Task("x", _f, TaskRef(1.0), TaskRef(-1)),
    }
    assert_same(dsk)
    assert set(dask_rsched.order(dsk)) == {-1, -2, 1, "x"}
    outside = {
        f"y{i}": Task(f"y{i}", _f, *(TaskRef(f"out-{i}-{j}") for j in range(9))) for i in range(3)
    }
    assert_same(outside)


def test_data_roots_with_several_dependents():
    dsk = {"d": DataNode("d", 1)}
    for i in range(6):
        dsk[f"t{i}"] = Task(f"t{i}", _f, TaskRef("d"), *(TaskRef(f"t{j}") for j in range(i)))
    assert_same(dsk)


def test_cycle_raises_what_dask_raises():
    dsk = {"a": Task("a", _f, TaskRef("b")), "b": Task("b", _f, TaskRef("a")), "c": Task("c", _f)}
    assert _core.order_graph(dsk) is None
    with pytest.raises(RuntimeError, match="Cycle detected"):
        dask_rsched.order(dsk)


def test_legacy_graph_goes_to_dask():
    dsk = {"a": 1, "b": (_f, "a"), "c": (_f, "b", "a")}
    assert _core.order_graph(dsk) is None
    assert dask_rsched.order(dsk) == dask_order(dsk)


def test_same_str_keys_go_to_dask():
    # 1 and "1" have the same str: dask breaks their tie by set order
    dsk = {1: Task(1, _f), "1": Task("1", _f), "z": Task("z", _f, TaskRef(1), TaskRef("1"))}
    assert dask_rsched.order(dsk) == dask_order(dsk)


def test_not_a_mapping_raises_like_dask():
    with pytest.raises((TypeError, ValueError)):
        dask_order([1, 2])  # the sanity check on what dask raises
    with pytest.raises((TypeError, ValueError)):
        dask_rsched.order([1, 2])


def test_scheduler_order_dispatch():
    """Inside an engine scheduler's update_graph `dask.order.order` is the Rust one;
    everywhere else it is dask's."""
    _order.install_scheduler_order()
    dsk = {"a": Task("a", _f), "b": Task("b", _f, TaskRef("a"))}
    assert dask.order.order.__wrapped__ is dask_order
    token = _order.ENGINE_ORDER.set({})
    try:
        assert dask.order.order(dsk) == {"a": 0, "b": 1}
    finally:
        _order.ENGINE_ORDER.reset(token)
    assert dask.order.order(dsk) == {"a": 0, "b": 1}


def test_dask_own_test_order(tmp_path):
    """dask's `dask/tests/test_order.py` (shipped in its wheel) passes against the Rust
    order, and every graph it orders gets dask's priorities from it."""
    import json
    import os
    import subprocess
    import sys

    suite = os.path.join(os.path.dirname(dask.__file__), "tests", "test_order.py")
    stats_path = tmp_path / "stats.json"
    env = dict(os.environ, DASK_ORDER_STATS=str(stats_path))
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(__file__), *filter(None, [env.get("PYTHONPATH")])]
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "dask_order_plugin",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore",
            "--rootdir",
            str(tmp_path),
            suite,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    tail = proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, tail
    stats = json.loads(stats_path.read_text())
    print(stats)
    assert stats["mismatch"] == 0
    assert stats["rust"] >= 100, stats


async def _priorities(engine: str, calls: list) -> dict:
    import asyncio

    import dask.array as da
    from distributed import Client
    from engines import scheduler_on

    real = _order.order

    def counting(*args, **kwargs):
        calls.append(engine)
        return real(*args, **kwargs)

    _order.order = counting
    try:
        scheduler = scheduler_on(engine)
        async with scheduler as s, Client(s.address, asynchronous=True) as c:
            x = da.ones((120, 120), chunks=10)
            y = c.compute(((x + x.T) * 2).sum(axis=0))  # no workers: the tasks wait
            for _ in range(500):
                if len(s.tasks) > 300:
                    break
                await asyncio.sleep(0.01)
            priorities = {ts.key: ts.priority for ts in s.tasks.values()}
            del y
            return priorities
    finally:
        _order.order = real


def test_engine_scheduler_orders_in_rust_with_the_same_priorities():
    """A real Client's graph: the engine-backed scheduler's `update_graph` orders it in
    Rust, and every task gets the priority the pure-Python scheduler gives it."""
    import asyncio

    calls: list = []
    python = asyncio.run(_priorities("python", calls))
    rust = asyncio.run(_priorities("rust", calls))
    assert calls == ["rust"]
    # the finalize key carries a fresh token per run
    common = python.keys() & rust.keys()
    assert len(common) >= len(python) - 1 > 300
    assert all(rust[k] == python[k] for k in common)


@pytest.mark.parametrize("case", ["whole", "key-outside", "external-missing", "external-elsewhere"])
def test_lost_dependencies_as_distributed_finds_them(case):
    """The engine skips distributed's walk for lost dependencies when the Rust order saw
    the graph and every key it names outside itself is held; the answer is the same."""
    from engines import scheduler_on

    dsk = {"a": Task("a", _f), "b": Task("b", _f, TaskRef("a")), "c": Task("c", _f, TaskRef("b"))}
    keys = {"c"}
    if case == "key-outside":
        keys = {"c", "gone"}
    if case in ("external-missing", "external-elsewhere"):
        dsk["d"] = Task("d", _f, TaskRef("c"), TaskRef("x"))
        keys = {"d"}
    answers = {}
    for engine in ("python", "rust"):
        s = scheduler_on(engine)
        if case == "external-elsewhere":
            s.new_task("x", None, "released")  # held: nothing is lost
        seen: dict = {}
        token = _order.ENGINE_ORDER.set(seen)
        try:
            _order.order(dsk, _seen=seen)
            answers[engine] = s._find_lost_dependencies(dsk, keys)
        finally:
            _order.ENGINE_ORDER.reset(token)
        assert seen["graph"] is dsk
    assert answers["rust"] == answers["python"]


@pytest.mark.parametrize("keys", [["c"], ["c", "a"], ["nowhere"], [["unhashable"]], None])
def test_wanted_keys_only_hint_the_state_creation(keys):
    """The submitted keys reach the order's thread (the walk it prepares for the state
    creation): whatever they are, the order and what it read are the same."""
    dsk = {"a": Task("a", _f), "b": Task("b", _f, TaskRef("a")), "c": Task("c", _f, TaskRef("b"))}
    plain = _order.order(dsk)
    seen: dict = {"keys": keys}
    assert _order.order(dsk, _seen=seen) == plain == dask.order.order(dsk)
    assert seen["graph"] is dsk and seen["read"].nbytes > 0


async def _bad_graph_outcome(engine: str, dsk: dict, key: str) -> tuple:
    """What a Client sees for a bad graph, and the scheduler's tasks after it: then a
    good graph still computes on the same scheduler."""
    import asyncio

    from distributed import Client, Worker
    from engines import scheduler_on

    async with (
        scheduler_on(engine) as s,
        Worker(s.address, nthreads=1),
        Client(s.address, asynchronous=True) as c,
    ):
        try:
            await asyncio.wait_for(c.get(dsk, key, sync=False), 30)
            outcome: tuple = ("no error",)
        except Exception as e:  # the error itself is compared
            outcome = (type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        for _ in range(200):
            if not s.tasks:
                break
            await asyncio.sleep(0.01)
        left = sorted(map(str, s.tasks))
        good = await c.get({"ok": Task("ok", sum, [1, 2])}, "ok", sync=False)
        return outcome, left, good


@pytest.mark.parametrize("case", ["cycle", "missing-dependency"])
def test_bad_graph_through_a_client_as_on_pure_python(case):
    """A cyclic graph, or one naming a key nobody has: the Client gets the error the
    pure-Python scheduler gives, no task is left behind, and the scheduler goes on."""
    import asyncio

    if case == "cycle":
        dsk = {"a": Task("a", _f, TaskRef("b")), "b": Task("b", _f, TaskRef("a"))}
    else:
        dsk = {"a": Task("a", _f, TaskRef("nowhere"))}
    python = asyncio.run(_bad_graph_outcome("python", dsk, "a"))
    rust = asyncio.run(_bad_graph_outcome("rust", dsk, "a"))
    assert rust == python
    assert python[0] != ("no error",) and python[1:] == ([], 3)
