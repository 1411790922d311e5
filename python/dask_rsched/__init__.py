"""dask-rsched: the Dask distributed scheduler's state and transitions in Rust."""

from dask_rsched._core import (
    ClientState,
    Engine,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerState,
    __version__,
)

__all__ = [
    "ClientState",
    "Engine",
    "TaskGroup",
    "TaskPrefix",
    "TaskState",
    "WorkerState",
    "__version__",
]
