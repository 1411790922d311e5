"""End to end: real worker processes, real comms, every workload on both engines.

Each test runs once on a LocalCluster whose scheduler is pure Python and once on one
whose scheduler runs on the engine (`dask_rsched.install()`), and checks the same
expected results, so results on the engine equal the pure-Python scheduler's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import dask.array as da
import dask.dataframe as dd
import dask_rsched
import pandas as pd
import pytest
from dask_rsched._scheduler import is_active
from distributed import Client, LocalCluster, Scheduler, rejoin, secede, worker_client
from distributed.diagnostics.plugin import SchedulerPlugin

ENGINE = dask_rsched.__version__ and "dask-rsched"


def engine_of(client: Client) -> str:
    return client.run_on_scheduler(
        lambda dask_scheduler: dask_rsched.scheduler_engine(dask_scheduler) or "python"
    )


def start_cluster(engine: str, **kwargs) -> LocalCluster:
    if engine == "rust":
        dask_rsched.install()
    try:
        return LocalCluster(dashboard_address=None, **kwargs)
    finally:
        dask_rsched.uninstall()


@pytest.fixture(scope="module", params=["python", "rust"])
def client(request):
    cluster = start_cluster(
        request.param,
        n_workers=2,
        threads_per_worker=2,
        processes=True,
        resources={"GPU": 1},
    )
    with cluster, Client(cluster) as c:
        c.engine = request.param  # type: ignore[attr-defined]
        yield c


def inc(x):
    return x + 1


def slow(x, t=0.05):
    time.sleep(t)
    return x


def fib(n):
    if n < 2:
        return n
    with worker_client() as c:
        a = c.submit(fib, n - 1)
        b = c.submit(fib, n - 2)
        return a.result() + b.result()


def seceding(x):
    secede()
    time.sleep(0.05)
    rejoin()
    return x * 2


class Counter:
    def __init__(self):
        self.n = 0

    def increment(self):
        self.n += 1
        return self.n


def fail_once(path):
    p = Path(path)
    if not p.exists():
        p.write_text("failed once")
        raise OSError("transient")
    return "ok"


def test_engine_in_use(client):
    assert engine_of(client).startswith(ENGINE) == (client.engine == "rust")
    # the worker processes' streams: the engine's own reading and writing (TCP)
    comms = client.run_on_scheduler(
        lambda dask_scheduler: {type(b.comm).__name__ for b in dask_scheduler.stream_comms.values()}
    )
    assert comms == ({"WireComm"} if client.engine == "rust" else {"TCP"})


def test_futures(client):
    futs = client.map(inc, range(200))
    assert client.submit(sum, futs).result() == sum(range(1, 201))
    assert client.gather(client.map(slow, range(10), pure=False)) == list(range(10))


def test_delayed(client):
    xs = [dask.delayed(inc)(i) for i in range(100)]
    total = dask.delayed(sum)(xs)
    assert total.compute() == sum(range(1, 101))


def test_array(client):
    x = da.arange(40_000, chunks=1_000).reshape(200, 200).rechunk((50, 50))
    assert int((x + x.T).sum().compute()) == 2 * sum(range(40_000))
    assert float(x.mean().compute()) == pytest.approx(19_999.5)


def test_dataframe(client):
    df = pd.DataFrame({"a": range(2_000), "b": [i % 7 for i in range(2_000)]})
    ddf = dd.from_pandas(df, npartitions=8)
    expected = df.groupby("b").a.sum()
    pd.testing.assert_series_equal(ddf.groupby("b").a.sum().compute(), expected)


def test_p2p_shuffle(client):
    df = pd.DataFrame({"a": range(2_000), "b": [i % 11 for i in range(2_000)]})
    ddf = dd.from_pandas(df, npartitions=8)
    out = ddf.shuffle("b", shuffle_method="p2p").compute()
    assert sorted(out.a) == list(range(2_000))
    # every value of b lands in one partition
    parts = ddf.shuffle("b", shuffle_method="p2p").map_partitions(lambda p: p.assign(n=len(p)))
    assert len(parts.compute()) == 2_000


def test_retries(client, tmp_path):
    f = client.submit(fail_once, str(tmp_path / f"marker-{client.engine}"), retries=1)
    assert f.result() == "ok"


def test_erred_task_and_dependents(client):
    bad = client.submit(lambda: 1 / 0)
    dep = client.submit(inc, bad)
    with pytest.raises(ZeroDivisionError):
        bad.result()
    with pytest.raises(ZeroDivisionError):
        dep.result()
    assert dep.status == "error"


def test_cancel(client):
    f = client.submit(slow, 1, 5, pure=False)
    time.sleep(0.2)
    f.cancel()
    deadline = time.time() + 10
    while f.status != "cancelled" and time.time() < deadline:
        time.sleep(0.05)
    assert f.status == "cancelled"


def test_resources_and_restrictions(client):
    futs = [client.submit(slow, i, resources={"GPU": 1}, pure=False) for i in range(8)]
    assert sum(client.gather(futs)) == sum(range(8))
    workers = sorted(client.scheduler_info()["workers"])
    pinned = client.submit(slow, 5, workers=[workers[0]], pure=False)
    assert pinned.result() == 5
    assert next(iter(client.who_has(pinned).values())) == (workers[0],)
    loose = client.submit(slow, 6, workers=["tcp://10.255.0.1:1"], allow_other_workers=True)
    assert loose.result() == 6


def test_actor(client):
    counter = client.submit(Counter, actor=True).result()
    assert counter.increment().result() == 1
    assert counter.increment().result() == 2


def test_secede_rejoin(client):
    assert client.submit(fib, 7).result() == 13
    assert sum(client.gather(client.map(seceding, range(10)))) == 90


def test_scatter_gather(client):
    [x] = client.scatter([41])
    assert client.submit(inc, x).result() == 42
    assert client.gather(x) == 41


def test_worker_killed_mid_computation(client):
    futs = client.map(slow, range(40), t=0.2, pure=False)
    time.sleep(0.5)
    victim = sorted(client.scheduler_info()["workers"])[-1]
    pid = client.run(os.getpid, workers=[victim])[victim]
    os.kill(pid, signal.SIGKILL)
    assert sum(client.gather(futs)) == sum(range(40))
    client.wait_for_workers(2, timeout=60)


class TransitionRecorder(SchedulerPlugin):
    name = "transition-recorder"

    def __init__(self):
        self.seen: dict = {}

    def transition(self, key, start, finish, *args, **kwargs):
        self.seen.setdefault(key, []).append((start, finish, "stimulus_id" in kwargs))


def transition_stream(engine: str) -> dict:
    if engine == "rust":
        dask_rsched.install()
    try:
        cluster = LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        )
    finally:
        dask_rsched.uninstall()
    with cluster, Client(cluster) as c:
        recorder = TransitionRecorder()
        c.register_plugin(recorder)
        a = c.submit(inc, 1, key="a")
        b = c.submit(inc, a, key="b")
        bad = c.submit(lambda x: 1 / 0, b, key="bad")
        after = c.submit(inc, bad, key="after")
        assert b.result() == 3
        with pytest.raises(ZeroDivisionError):
            after.result()
        del a, b, bad, after
        deadline = time.time() + 10
        while cluster.scheduler.tasks and time.time() < deadline:
            time.sleep(0.02)
        return recorder.seen


def test_plugin_sees_the_same_transition_stream():
    assert transition_stream("rust") == transition_stream("python")


def test_install_uninstall():
    dask_rsched.install()
    try:
        assert is_active(Scheduler(dashboard_address=None))
    finally:
        dask_rsched.uninstall()
    assert not is_active(Scheduler(dashboard_address=None))


def test_unsupported_version_leaves_python(monkeypatch, caplog):
    import distributed

    monkeypatch.setattr(distributed, "__version__", "1999.1.0")
    monkeypatch.setattr(dask_rsched, "_warned", False)
    with caplog.at_level("WARNING", logger="distributed.dask_rsched"):
        assert dask_rsched.install() is False
    assert not dask_rsched.is_installed()
    assert sum("supports distributed" in r.getMessage() for r in caplog.records) == 1
    s = Scheduler(dashboard_address=None)
    assert not dask_rsched.activate(s)
    assert not is_active(s)


CHECK = """
import dask, dask.array as da
from distributed import Client
{connect}
import dask_rsched
engine = c.run_on_scheduler(
    lambda dask_scheduler: dask_rsched.scheduler_engine(dask_scheduler) or "python")
x = da.ones((400, 400), chunks=100)
print(engine, "|", int(x.sum().compute()), "|", c.submit(lambda: 6 * 7).result())
"""


def run_python(code: str, env: dict | None = None, timeout: float = 120) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_config_preload_env():
    code = CHECK.format(
        connect="from distributed import LocalCluster\n"
        "cluster = LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None)\n"
        "c = Client(cluster)"
    )
    line = run_python(code, {"DASK_DISTRIBUTED__SCHEDULER__PRELOAD": "dask_rsched"})
    engine, total, answer = (p.strip() for p in line.split("|"))
    assert engine.startswith(ENGINE)
    assert (total, answer) == ("160000", "42")


def test_pytest_plugin_reaches_child_processes(monkeypatch):
    from dask_rsched import testing

    assert testing.preload_env_value(None) == "['dask_rsched']"
    assert testing.preload_env_value("['a']") == "['a', 'dask_rsched']"
    assert testing.preload_env_value("a") == "['a', 'dask_rsched']"
    assert testing.preload_env_value("['dask_rsched']") == "['dask_rsched']"
    # recorded by setenv, so that the value pytest_configure writes is undone afterwards
    # (delenv of an unset variable records nothing)
    monkeypatch.setenv(testing.PRELOAD_ENV, "")
    monkeypatch.delenv(testing.PRELOAD_ENV)
    try:
        testing.pytest_configure(None)
        env_value = os.environ[testing.PRELOAD_ENV]
    finally:
        dask_rsched.uninstall()
    # a cluster a test starts in a child process runs on the engine too
    code = CHECK.format(
        connect="from distributed import LocalCluster\n"
        "cluster = LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None)\n"
        "c = Client(cluster)"
    )
    line = run_python(code, {testing.PRELOAD_ENV: env_value})
    assert line.split("|")[0].strip().startswith(ENGINE)


def test_cli_scheduler_preload_and_workers(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    dask_bin = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    sched = subprocess.Popen(
        [
            *dask_bin,
            "--preload",
            "dask_rsched",
            "--port",
            "0",
            "--no-dashboard",
            "--scheduler-file",
            str(sched_file),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    workers = []
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        assert sched_file.exists()
        for _ in range(2):
            workers.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "distributed.cli.dask_worker",
                        "--scheduler-file",
                        str(sched_file),
                        "--nthreads",
                        "1",
                        "--no-dashboard",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        code = CHECK.format(
            connect=f"c = Client(scheduler_file={str(sched_file)!r})\nc.wait_for_workers(2)"
        )
        engine, total, answer = (p.strip() for p in run_python(code).split("|"))
        assert engine.startswith(ENGINE)
        assert (total, answer) == ("160000", "42")
    finally:
        for p in [*workers, sched]:
            p.terminate()
        for p in [*workers, sched]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
    log = sched.stderr.read().decode() if sched.stderr else ""
    assert "Scheduler engine: dask-rsched" in log
