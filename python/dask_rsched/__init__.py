"""dask-rsched: the Dask distributed scheduler's state and transitions in Rust."""

from dask_rsched._core import Engine, __version__

__all__ = ["Engine", "__version__"]
