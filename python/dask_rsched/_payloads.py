"""The exceptions the scheduler makes itself, in the form distributed sends them. The
engine calls these when a transition needs one (it cannot make Python objects itself)."""

from __future__ import annotations

import logging
import pickle
from typing import Any

from dask.utils import format_bytes
from distributed.protocol.serialize import Serialized, serialize

logger = logging.getLogger("distributed.scheduler")


def actor_lost() -> Serialized:
    """What the clients of an actor hear when the worker holding it is lost."""
    return Serialized(*serialize(RuntimeError("Worker holding Actor was lost")))


def memory_error(
    key: Any, ndep_bytes: int, address: str, memory_limit: int, has_dependents: bool
) -> bytes:
    """`_add_to_processing`'s safety check: a task whose inputs exceed the worker's
    memory limit errs with this (logged first, as distributed logs it)."""
    message = (
        f"Task {key!r} has {format_bytes(ndep_bytes)} worth of input dependencies, "
        f"but worker {address} has memory_limit set to {format_bytes(memory_limit)}."
    )
    if not has_dependents:
        message += (
            " It seems like you called client.compute() on a huge collection. "
            "Consider writing to distributed storage or slicing/reducing first."
        )
    logger.error(message)
    return pickle.dumps(MemoryError(message))
