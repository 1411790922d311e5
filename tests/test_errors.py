"""Malformed input gets the exception distributed raises, or a clear KeyError/ValueError,
and never takes the interpreter down."""

from __future__ import annotations

import dask
import dask_rsched
import pytest
from dask._task_spec import Task, TaskRef


def inc(x: int = 0) -> int:
    return x + 1


@pytest.fixture
def engine() -> dask_rsched.Engine:
    e = dask_rsched.Engine(validate=True)
    e.add_client("c")
    e.add_worker("tcp://127.0.0.1:1", server_id="w1", nthreads=1)
    return e


def submit(e: dask_rsched.Engine, dsk: dict, keys: set) -> tuple:
    """`(client_msgs, worker_msgs)` of a graph submission."""
    _, cm, wm = e.update_graph(
        dsk=dsk, keys=keys, ordered=dask.order.order(dsk), client="c", stimulus_id="ug"
    )
    return cm, wm


def test_duplicate_worker_is_value_error(engine: dask_rsched.Engine) -> None:
    with pytest.raises(ValueError, match="Worker already exists"):
        engine.add_worker("tcp://127.0.0.1:1", server_id="w1b", nthreads=1)


def test_unknown_status_is_value_error(engine: dask_rsched.Engine) -> None:
    with pytest.raises(ValueError, match="unknown worker status"):
        engine.add_worker("tcp://127.0.0.1:3", server_id="w3", nthreads=1, status="sleepy")


def test_unknown_dependency_is_key_error(engine: dask_rsched.Engine) -> None:
    dsk = {"y": Task("y", inc, TaskRef("nope"))}
    with pytest.raises(KeyError):
        engine.update_graph(dsk=dsk, keys={"y"}, ordered={"y": 0}, client="c", stimulus_id="u")
    assert len(engine) == 0


def test_unknown_client_release_is_key_error(engine: dask_rsched.Engine) -> None:
    with pytest.raises(KeyError):
        engine.client_releases_keys(["x"], "who", "s")


def test_unknown_key_and_worker_are_ignored_like_distributed(engine: dask_rsched.Engine) -> None:
    # distributed ignores task-finished from unknown workers and frees unknown keys
    assert engine.handle_task_finished("x", "tcp://9.9.9.9:1", "s", run_id=0) == ({}, {})
    _, wm = engine.handle_task_finished("x", "tcp://127.0.0.1:1", "s", run_id=0)
    assert wm == {"tcp://127.0.0.1:1": [{"op": "free-keys", "keys": ["x"], "stimulus_id": "s"}]}
    assert engine.handle_task_erred("x", "s", worker="tcp://127.0.0.1:1", run_id=0) == ({}, {})
    with pytest.raises(KeyError):
        engine.detach_worker("tcp://9.9.9.9:1")
    with pytest.raises(KeyError):
        engine.stimulus_retry(["x"], "s")


def test_wrong_types_are_type_errors(engine: dask_rsched.Engine) -> None:
    with pytest.raises(TypeError):
        engine.add_worker(123, server_id="w", nthreads=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        engine.add_worker("tcp://127.0.0.1:2", server_id="w2", nthreads="two")  # type: ignore[arg-type]
    dsk = {"x": Task("x", inc)}
    submit(engine, dsk, {"x"})
    with pytest.raises(TypeError):
        engine.handle_task_finished(["x"], "tcp://127.0.0.1:1", "s", run_id=1)
    # a run id that is no int matches no run, as in distributed: a stale report
    _, wm = engine.handle_task_finished(
        "x",
        "tcp://127.0.0.1:1",
        "s",
        run_id="zero",  # type: ignore[arg-type]
    )
    assert wm["tcp://127.0.0.1:1"][0]["op"] == "free-keys"
    engine.validate_state()


def test_state_survives_errors(engine: dask_rsched.Engine) -> None:
    dsk = {"x": Task("x", inc)}
    _, wm = submit(engine, dsk, {"x"})
    (msg,) = wm["tcp://127.0.0.1:1"]
    with pytest.raises(KeyError):
        engine.client_releases_keys(["x"], "nobody", "s")
    cm, _ = engine.handle_task_finished(
        "x", "tcp://127.0.0.1:1", "s", run_id=msg["run_id"], nbytes=8, typename="int"
    )
    assert cm == {"c": [{"op": "key-in-memory", "key": "x", "type": None}]}
    assert engine.task_state("x") == "memory"
    engine.validate_state()


def test_group_slots_are_reused(engine: dask_rsched.Engine) -> None:
    # a scheduler's spans and computations hold its groups (distributed keeps spans for
    # good); without them, a dead group's slot goes to the next new group
    worker = "tcp://127.0.0.1:1"

    def run(key: str) -> None:
        submit(engine, {key: Task(key, inc)}, {key})
        run_id = engine.get_task(key).run_id
        engine.handle_task_finished(key, worker, "tf", run_id=run_id, nbytes=8)
        engine.client_releases_keys([key], "c", "release")
        assert engine.get_task(key) is None

    for i in range(50):
        run(f"loop{i}-x")
    assert engine.n_group_slots == 1
    submit(engine, {"held-x": Task("held-x", inc)}, {"held-x"})
    held = engine.get_task("held-x").group
    engine.client_releases_keys(["held-x"], "c", "release")
    for i in range(50):
        run(f"again{i}-x")
    # a group still held from Python keeps its slot and reads as it was
    assert held.name == "held-x" and len(held) == 1
    assert engine.n_group_slots == 2
    engine.validate_state()
