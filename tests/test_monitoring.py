"""What an operator sees of the engine: `dask_scheduler_engine_*` metrics on the
scheduler's own Prometheus `/metrics` endpoint and the engine's name on the dashboard's
scheduler info page, fetched over HTTP from a real scheduler on each engine (a
pure-Python scheduler shows neither), and from the `dask scheduler` CLI."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dask_rsched
import pytest
from distributed import Client, Worker
from distributed.utils_test import gen_test, inc
from engines import scheduler_on
from tornado.httpclient import AsyncHTTPClient

pytest.importorskip("prometheus_client")


def parse_metrics(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line.startswith("dask_scheduler_engine_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.parametrize("engine", ["python", "rust"])
@gen_test(timeout=60)
async def test_metrics_and_info_page(engine):
    scheduler = scheduler_on(engine)
    http = AsyncHTTPClient()
    async with scheduler as s, Worker(s.address), Client(s.address, asynchronous=True) as c:
        base = f"http://127.0.0.1:{s.http_server.port}"
        # a scrape before any work, then the counters move with the work
        first = parse_metrics((await http.fetch(f"{base}/metrics")).body.decode())
        futs = c.map(inc, range(50))
        assert sum(await c.gather(futs)) == sum(range(1, 51))
        metrics_page = (await http.fetch(f"{base}/metrics")).body.decode()
        info = (await http.fetch(f"{base}/info/main/workers.html")).body.decode()
    metrics = parse_metrics(metrics_page)
    assert "dask_scheduler_tasks" in metrics_page  # distributed's own are all still there
    assert f"Scheduler {s.address}" in info
    if engine == "python":
        assert metrics == {} and first == {}
        assert "Scheduler engine" not in info
        return
    assert f"Scheduler engine: dask-rsched {dask_rsched.__version__} (Rust)" in info
    assert metrics["dask_scheduler_engine_tasks"] == 50
    assert metrics["dask_scheduler_engine_workers"] == 1
    assert metrics["dask_scheduler_engine_transitions_total"] >= 50 * 4
    assert metrics["dask_scheduler_engine_stimuli_total"] > first.get(
        "dask_scheduler_engine_stimuli_total", 0
    )
    engine_seconds = metrics['dask_scheduler_engine_seconds_total{part="engine"}']
    assert 0 < engine_seconds < 10
    assert metrics['dask_scheduler_engine_seconds_total{part="python_send"}'] > 0
    assert metrics['dask_scheduler_engine_seconds_total{part="plugin_hooks"}'] >= 0


def test_metrics_from_the_dask_scheduler_cli(tmp_path: Path) -> None:
    scheduler_file = tmp_path / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distributed.cli.dask_scheduler",
            "--scheduler-file",
            str(scheduler_file),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--dashboard-address",
            "127.0.0.1:0",
            "--preload",
            "dask_rsched",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    worker = None
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "distributed.cli.dask_worker",
                "--scheduler-file",
                str(scheduler_file),
                "--no-dashboard",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        with Client(scheduler_file=str(scheduler_file)) as client:
            client.wait_for_workers(1, timeout=60)
            port = client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.http_server.port)
            assert client.submit(inc, 1).result(timeout=30) == 2
            base = f"http://127.0.0.1:{port}"
            with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
                metrics = parse_metrics(r.read().decode())
            with urllib.request.urlopen(f"{base}/info/main/workers.html", timeout=30) as r:
                info = r.read().decode()
            client.shutdown()
    finally:
        for p in (worker, proc):
            if p is None:
                continue
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    assert "Scheduler engine: dask-rsched" in info
    assert metrics["dask_scheduler_engine_transitions_total"] >= 1
