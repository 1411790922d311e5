"""dask-rsched: the Dask distributed scheduler's state and transitions in Rust.

Switch it on with any of:

* ``dask scheduler --preload dask_rsched`` (or the Dask config
  ``distributed.scheduler.preload: [dask_rsched]``,
  ``DASK_DISTRIBUTED__SCHEDULER__PRELOAD=dask_rsched``);
* ``dask_rsched.install()`` in-process (``uninstall()`` switches it off again);
* ``pytest -p dask_rsched.testing``.
"""

from __future__ import annotations

import logging
from typing import Any

from dask_rsched._core import (
    ClientState,
    Engine,
    TaskGroup,
    TaskPrefix,
    TaskState,
    WorkerState,
    __version__,
)
from dask_rsched._order import order

__all__ = [
    "SUPPORTED_DISTRIBUTED",
    "ClientState",
    "Engine",
    "TaskGroup",
    "TaskPrefix",
    "TaskState",
    "WorkerState",
    "__version__",
    "activate",
    "dask_setup",
    "install",
    "is_installed",
    "order",
    "scheduler_engine",
    "supported",
    "uninstall",
]

#: The distributed releases whose scheduler the engine reproduces (their scheduler.py,
#: stealing.py and collections.py differ only in how `close` stops services).
SUPPORTED_DISTRIBUTED = ("2026.6.0", "2026.7.0", "2026.7.1", "2026.8.0")

# under distributed's logger, so that its logging config (handlers, format, levels) applies
logger = logging.getLogger("distributed.dask_rsched")
_warned = False
_original_init: Any = None


def supported() -> bool:
    """True if the installed distributed is one the engine reproduces; otherwise logs
    one warning (once per process) and the scheduler stays pure Python."""
    global _warned
    distributed = _import_distributed()
    if distributed.__version__ in SUPPORTED_DISTRIBUTED:
        return True
    if not _warned:
        _warned = True
        logger.warning(
            "dask-rsched supports distributed %s, found %s: the scheduler keeps running "
            "on the pure-Python engine",
            ", ".join(SUPPORTED_DISTRIBUTED),
            distributed.__version__,
        )
    return False


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as e:
        raise ImportError(
            "dask-rsched runs inside Dask's distributed scheduler, which is not installed: "
            f"pip install 'distributed=={SUPPORTED_DISTRIBUTED[-1]}'"
        ) from e
    return distributed


def _require_scheduler(scheduler: Any, what: str) -> None:
    from distributed import Scheduler

    if not isinstance(scheduler, Scheduler):
        raise TypeError(f"{what}: expected a distributed.Scheduler, got {type(scheduler).__name__}")


def activate(scheduler: Any) -> bool:
    """Moves one Scheduler (with no workers or tasks yet) onto the engine."""
    _require_scheduler(scheduler, "activate")
    if not supported():
        return False
    from dask_rsched._scheduler import activate as _activate

    try:
        return _activate(scheduler)
    except Exception:
        # the engine is set up before the scheduler is touched, so this leaves it whole
        logger.exception("dask-rsched could not start; the scheduler stays pure Python")
        return False


def scheduler_engine(scheduler: Any) -> str | None:
    """The engine a Scheduler runs on (``"dask-rsched <version> (Rust)"``), or None on
    pure Python. distributed's own `identity()` is left as distributed makes it."""
    from dask_rsched._scheduler import ENGINE_NAME, is_active

    return ENGINE_NAME if is_active(scheduler) else None


def dask_setup(server: Any) -> None:
    """Preload hook: ``dask scheduler --preload dask_rsched``."""
    from distributed import Scheduler

    if isinstance(server, Scheduler):
        activate(server)
    else:
        logger.warning(
            "dask-rsched: the preload was given to a %s, where it does nothing; it moves a "
            "scheduler onto the engine (dask scheduler --preload dask_rsched)",
            type(server).__name__,
        )


def install() -> bool:
    """Every ``distributed.Scheduler`` created from now on runs on the engine."""
    global _original_init
    if _original_init is not None:
        return True
    if not supported():
        return False
    from distributed import Scheduler

    original = Scheduler.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        activate(self)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    _original_init = original
    Scheduler.__init__ = __init__  # type: ignore[method-assign]
    return True


def uninstall() -> None:
    """Schedulers created from now on are pure Python again."""
    global _original_init
    if _original_init is None:
        return
    from distributed import Scheduler

    Scheduler.__init__ = _original_init  # type: ignore[method-assign]
    _original_init = None


def is_installed() -> bool:
    return _original_init is not None
