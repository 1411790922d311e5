"""First run as an operator meets it (issue 17): wrong input is refused early and
clearly, the preload on a worker says so, the engine logs through distributed's logging
config, and `python -m dask_rsched` reports the environment."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import dask_rsched
import pytest
from dask_rsched_compat import install_legacy_attributes, legacy_views


@pytest.mark.parametrize(
    "call",
    [dask_rsched.activate, legacy_views, install_legacy_attributes],
    ids=lambda c: c.__name__,
)
def test_not_a_scheduler_is_a_type_error(call) -> None:
    with pytest.raises(TypeError, match=r"expected a distributed\.Scheduler, got object"):
        call(object())


def test_preload_on_a_worker_warns(caplog) -> None:
    class NotAScheduler:
        pass

    with caplog.at_level(logging.WARNING, logger="distributed.dask_rsched"):
        dask_rsched.dask_setup(NotAScheduler())
    assert any("does nothing" in r.getMessage() for r in caplog.records)


def test_logger_is_under_distributed() -> None:
    # distributed's logging config (handlers, format) applies to everything it logs
    assert dask_rsched.logger.name.startswith("distributed.")


def test_missing_distributed_is_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(ImportError, match="distributed scheduler, which is not installed"):
        dask_rsched.supported()


def test_python_m_dask_rsched_reports_the_environment() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dask_rsched"], capture_output=True, text=True, check=True
    ).stdout
    assert f"dask-rsched {dask_rsched.__version__}" in out
    assert "compiled engine: loads" in out
    assert "(supported)" in out


def test_python_m_dask_rsched_bench() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dask_rsched", "bench", "--tasks", "400"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "[2/2]" in proc.stdout and "x the pure-Python scheduler's speed" in proc.stdout


def test_demo_prints_both_engines_and_a_reading() -> None:
    # the README's first command, small: real `dask scheduler` and `dask worker` processes
    demo = Path(__file__).parent.parent / "benches" / "demo.py"
    proc = subprocess.run(
        [sys.executable, str(demo), "--tasks", "300", "--workers", "1", "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "distributed (pure Python)" in out and "dask-rsched" in out, out
    assert out.count("µs/task") == 2, out
    assert "scheduler CPU per task" in out and "Reading:" in out, out


def test_wheel_metadata_leaves_supported_deployments_alone() -> None:
    # the declared range is exactly the supported releases: pip keeps a deployment's own
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.version import Version

    (dist,) = [Requirement(r) for r in requires("dask-rsched") if r.startswith("distributed")]
    for release in dask_rsched.SUPPORTED_DISTRIBUTED:
        assert Version(release) in dist.specifier, (release, dist)
    assert Version("2026.5.0") not in dist.specifier
    assert Version("2026.8.1") not in dist.specifier


def test_suite_without_matplotlib_or_tqdm_skips_plots(monkeypatch, tmp_path, capsys) -> None:
    # the bench extra is optional: without it the suite still runs and says what it skips
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "suite", Path(__file__).parent.parent / "benches" / "suite.py"
    )
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)
    assert suite.plots([], tmp_path) == []
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert suite.execute([], budget=1.0) == []
