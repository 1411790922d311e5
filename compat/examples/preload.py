"""Scheduler preload that puts the legacy dictionaries back on the scheduler.

    dask scheduler --preload /path/to/compat/examples/preload.py

(or ``--preload mymodule`` for an importable copy of this file).  Any plugin or
extension loaded afterwards can then read ``scheduler.who_has``,
``scheduler.processing``, ``scheduler.ncores`` ... as it did with distributed
1.21 to 2022.4.1.  Works with the pure-Python scheduler and the Rust engine.
"""

from __future__ import annotations

from typing import Any

from dask_rsched_compat import install_legacy_attributes


def dask_setup(scheduler: Any) -> None:
    install_legacy_attributes(scheduler)


def dask_teardown(scheduler: Any) -> None:
    from dask_rsched_compat import uninstall_legacy_attributes

    uninstall_legacy_attributes(scheduler)
