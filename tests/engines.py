"""A `distributed.Scheduler` on the engine named (not started)."""

from __future__ import annotations

from typing import Any

import dask_rsched
from distributed import Scheduler


def scheduler_on(engine: str, **kwargs: Any) -> Scheduler:
    """A Scheduler on `engine` ("python" or "rust"), with a dashboard on a free port."""
    kwargs.setdefault("dashboard_address", ":0")
    kwargs.setdefault("host", "127.0.0.1")
    if engine == "rust":
        dask_rsched.install()
    try:
        return Scheduler(**kwargs)
    finally:
        dask_rsched.uninstall()
