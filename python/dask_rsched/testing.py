"""pytest plugin: ``pytest -p dask_rsched.testing`` runs every Scheduler on the engine,
those the tests start in subprocesses (``dask scheduler``, spawned clusters) included."""

from __future__ import annotations

import ast
import os
from typing import Any

import dask_rsched

PRELOAD_ENV = "DASK_DISTRIBUTED__SCHEDULER__PRELOAD"


def preload_env_value(current: str | None) -> str:
    """The preload setting for child processes: dask_rsched added to what is there."""
    if not current:
        return repr(["dask_rsched"])
    try:
        value = ast.literal_eval(current)
    except (ValueError, SyntaxError):
        value = current  # dask reads an unparsable value as a plain string
    preloads = list(value) if isinstance(value, (list, tuple)) else [value]
    if "dask_rsched" not in preloads:
        preloads.append("dask_rsched")
    return repr(preloads)


def pytest_configure(config: Any) -> None:
    if dask_rsched.install():
        # child processes read dask's config from the environment when they start
        os.environ[PRELOAD_ENV] = preload_env_value(os.environ.get(PRELOAD_ENV))


def pytest_report_header(config: Any) -> str:
    state = "on" if dask_rsched.is_installed() else "off (unsupported distributed)"
    return f"dask-rsched engine: {state}"
