"""pytest plugin: ``pytest -p dask_rsched.testing`` runs every Scheduler on the engine."""

from __future__ import annotations

from typing import Any

import dask_rsched


def pytest_configure(config: Any) -> None:
    dask_rsched.install()


def pytest_report_header(config: Any) -> str:
    state = "on" if dask_rsched.is_installed() else "off (unsupported distributed)"
    return f"dask-rsched engine: {state}"
