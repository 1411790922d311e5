"""Worker and client streams on the engine's own socket reading and writing.

After a worker registers, distributed's `handle_worker` reads its stream with
`Server.handle_stream` (tornado's IOStream, msgpack, one handler call per message) and
writes to it with a `BatchedSend` over the same comm. On the engine, a plain TCP comm
(`distributed.comm.tcp.TCP`; not TLS, inproc, ws or ucx, which keep distributed's path)
is taken from tornado once the handshake is done: `WireComm` reads and writes the
socket through `_core.WireStream` (distributed's framing, plain msgpack decoded in
Rust), and a `WireBatchedSend` (distributed's `BatchedSend` with its buffer and
counters) writes the batches. A client's stream (`add_client`) is taken over the same
way. What goes on the wire is what distributed sends (the engine's encoding is
distributed's `dumps` byte for byte), except for a task function cloudpickle writes by
value: the run_spec's pickle loads it from its own cloudpickle bytes, pickled once
(`bindings/by_value.rs`).

`distributed.scheduler.rsched-wire: false` in the Dask config turns this off.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from math import ceil
from time import time
from typing import Any

import dask.config
from distributed import protocol
from distributed.batched import BatchedSend
from distributed.comm import utils as comm_utils
from distributed.comm.core import Comm, CommClosedError
from distributed.comm.tcp import TCP, _add_frames_header
from distributed.comm.utils import from_frames, to_frames
from distributed.sizeof import safe_sizeof
from distributed.utils import iscoroutinefunction

from dask_rsched._core import FinishedRun, Messages, WireStream

# The lines distributed logs on these paths, on the loggers it logs them on.
core_logger = logging.getLogger("distributed.core")
batched_logger = logging.getLogger("distributed.batched")
utils_logger = logging.getLogger("distributed.comm.utils")


def enabled() -> bool:
    return bool(dask.config.get("distributed.scheduler.rsched-wire", True))


def takeover(comm: Comm) -> WireComm | None:
    """The comm's socket as a `WireComm`, or None when it is not a plain TCP comm or
    tornado is in the middle of a read or write on it."""
    if type(comm) is not TCP or comm.closed() or not enabled():
        return None
    stream = comm.stream
    if (
        stream is None
        or stream.closed()
        or stream._read_future is not None
        or stream._user_read_buffer
        or stream.writing()
    ):
        return None
    pending = bytes(stream._read_buffer[: stream._read_buffer_size])
    stream.io_loop.remove_handler(stream.socket)
    stream._state = None
    return WireComm(comm, pending)


def as_dicts(msgs: Any) -> Any:
    """A batch of messages, each engine `Messages` in it as its messages' dicts."""
    if type(msgs) is not list or not any(type(m) is Messages for m in msgs):
        return msgs
    return [d for m in msgs for d in (m.messages() if type(m) is Messages else (m,))]


class WireComm(TCP):
    """A worker's or client's comm once the engine reads and writes its socket. A
    `TCP` for whoever checks (distributed's test utilities wrap TCP comms), with none
    of TCP's state: every method a comm has is its own."""

    def __init__(self, tcp: TCP, pending: bytes) -> None:
        Comm.__init__(self, deserialize=tcp.deserialize)
        self._tcp = tcp
        self.stream = None
        self.allow_offload = tcp.allow_offload
        self.name = tcp.name
        self.local_info = tcp.local_info
        self.remote_info = tcp.remote_info
        self.handshake_options = tcp.handshake_options
        self.max_shard_size = tcp.max_shard_size
        self._fd = tcp.stream.socket.fileno()
        self._wire = WireStream(self._fd, pending)
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._reading = False
        self._reader: Callable[[], bool] | None = None
        self._unawaited = 0
        self._writing = False
        # `read`'s batches not yet returned, and its wait for the socket
        self._batches: deque = deque()
        self._read_waiter: asyncio.Future | None = None

    def __repr__(self) -> str:
        return f"<WireComm {self.name}: {self.local_address} -> {self.peer_address}>"

    @property
    def local_address(self) -> str:
        return self._tcp.local_address

    @property
    def peer_address(self) -> str:
        return self._tcp.peer_address

    @property
    def same_host(self) -> bool:
        return self._tcp.same_host

    @property
    def extra_info(self):
        return self._tcp.extra_info

    # Reading: a `WorkerStream` reads the socket when the selector says it is readable.

    def _on_readable(self) -> None:
        reader = self._reader
        if reader is not None and reader():
            return
        # Nobody waits: data came while a handler was awaited. Twice in a row: stop
        # polling until the stream waits again.
        self._unawaited += 1
        if self._unawaited > 1:
            self._stop_polling()

    def _poll(self, reader) -> None:
        """Call `reader()` each time the socket becomes readable (it returns whether
        it took the data) until `_stop_polling`. The socket stays registered between
        reads, so that a stream read in a loop costs no selector change per batch."""
        self._reader = reader
        self._unawaited = 0
        if not self._reading and not self._closed:
            self._reading = True
            self._loop.add_reader(self._fd, self._on_readable)

    def _stop_polling(self) -> None:
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)

    def read_now(self, finished_runs: bool = False) -> list | None:
        """The batches that arrived (perhaps none), each decoded (a tuple of messages
        or one message) or as the list of frames distributed's decoding must read;
        `None` once the peer closed the connection. With `finished_runs`, a batch's
        consecutive `task-finished` messages are one `FinishedRun` item."""
        if self._closed:
            return None
        batches = self._wire.read_batches(finished_runs)
        if batches is None:
            self.abort()
        return batches

    async def decode(self, frames: list):
        """A batch only distributed's decoding reads (pickled payloads, ...)."""
        try:
            return await from_frames(
                frames, deserialize=self.deserialize, allow_offload=self.allow_offload
            )
        except EOFError:
            # as TCP.read: garbled or truncated data ends the stream
            self.abort()
            raise CommClosedError("aborted stream on truncated data") from None

    async def read(self, deserializers=None):
        """The next batch, as `TCP.read` gives it: for a client's stream (a worker's
        is read by `WorkerStream`)."""
        if self._closed:
            # as `TCP.read`: what was read but not yet returned is dropped
            raise CommClosedError(f"{self!r} closed")
        batches = self._batches
        while not batches:
            read = self.read_now()
            if read is None:
                raise CommClosedError(f"{self!r} closed")
            if read:
                batches.extend(read)
                break
            # wait for the selector to say the socket is readable
            self._read_waiter = waiter = self._loop.create_future()
            self._poll(self._wake_reader)
            try:
                await waiter
            finally:
                self._read_waiter = None
        batch = batches.popleft()
        if type(batch) is list:
            return await self.decode(batch)  # frames: distributed decodes them
        return batch  # (a batch of messages is a tuple, as distributed's `loads` gives)

    def _wake_reader(self) -> bool:
        waiter = self._read_waiter
        if waiter is None or waiter.done():
            return False
        waiter.set_result(None)
        return True

    # Writing: distributed's frames, written by the engine.

    def _context(self) -> dict:
        return {"sender": self.local_info, "recipient": self.remote_info, **self.handshake_options}

    async def write(self, msg, serializers=None, on_error="message") -> int:
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        frames = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context=self._context(),
            frame_split_size=self.max_shard_size,
        )
        return self._write_frames(frames)

    def small(self, msg) -> bool:
        """Whether `to_frames` would serialize `msg` on the event loop (not offload)."""
        threshold = comm_utils.OFFLOAD_THRESHOLD
        if not (threshold and self.allow_offload):
            return True
        size = safe_sizeof(msg, default_size=-1)
        return size != -1 and size <= threshold

    def write_dumped(self, msg, serializers=None, on_error="message") -> int:
        """`write` done before returning, through distributed's `dumps`: for a batch
        the engine does not encode that `small` accepts."""
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        msg = as_dicts(msg)
        try:
            frames = protocol.dumps(
                msg,
                serializers=serializers,
                on_error=on_error,
                context=self._context(),
                frame_split_size=self.max_shard_size,
            )
        except Exception as e:
            utils_logger.info("Unserializable Message: %s", msg)
            utils_logger.exception(e)
            raise
        return self._write_frames(frames)

    def write_encoded(self, msgs, max_size: int | None = None) -> int | None:
        """`msgs` encoded by the engine and written before returning (what the socket
        does not take, when it becomes writable): the bytes written, or None (nothing
        written) for what only distributed's `dumps` serializes or, with `max_size`,
        what would be more bytes."""
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        written = self._engine_write(self._wire.write_batch, msgs, max_size)
        if written is None:
            return None
        nbytes, pending = written
        self._watch_writes(pending)
        return nbytes

    def _write_frames(self, frames: list) -> int:
        frames, _, nbytes = _add_frames_header(frames)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        self._watch_writes(self._engine_write(self._wire.write, bytes(data)))
        return nbytes

    def _engine_write(self, write, *args):
        """`write(*args)` on the engine's socket writer; a socket error ends the comm,
        as a failed write ends a TCP comm."""
        try:
            return write(*args)
        except OSError as e:
            self.abort()
            raise CommClosedError(f"{self!r}: {e}") from e

    def _watch_writes(self, pending: bool) -> None:
        """Bytes the socket did not take are written when it becomes writable."""
        if pending and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)

    def _on_writable(self) -> None:
        try:
            pending = self._wire.flush()
        except OSError:
            self.abort()
            return
        if not pending and self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)

    # Closing

    def _detach(self) -> None:
        self._closed = True
        self._wire.detach()
        self._stop_polling()
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        reader, self._reader = self._reader, None
        if reader is not None:
            reader()  # the stream learns that the comm closed

    def abort(self) -> None:
        if not self._closed:
            self._detach()
            self._tcp.abort()

    async def close(self) -> None:
        if self._closed:
            return
        # Give queued bytes a last chance, as TCP.close waits for its last write.
        for _ in range(100):
            if self._closed or not self._wire.pending_write:
                break
            try:
                self._wire.flush()
            except OSError:
                break
            await asyncio.sleep(0.01)
        if self._closed:
            return
        self._detach()
        await self._tcp.close()

    def closed(self) -> bool:
        return self._closed


class _Flushes:
    """The `WireBatchedSend` writes of one event loop that fall due in the same
    millisecond, made by one loop callback (one `call_soon` for those due now). With
    one thread per worker nearly every write carries one message, and a timer of its
    own made each write a loop callback and often a loop iteration of its own. A write
    is made at most a millisecond after its batch's deadline, as a loop busy for a
    millisecond would make it."""

    __slots__ = ("due", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        # tick (the deadline in whole milliseconds of the loop's clock; 0: now) ->
        # the streams to flush then
        self.due: dict[int, list[WireBatchedSend]] = {}

    def add(self, bsend: WireBatchedSend, delay: float) -> int:
        """Flush `bsend` in `delay` seconds (at once if not positive); the tick that
        will, which the stream keeps as its `_handle` (set to None, it is passed by)."""
        loop = self.loop
        tick = ceil((loop.time() + delay) * 1000) if delay > 0 else 0
        streams = self.due.get(tick)
        if streams is None:
            self.due[tick] = streams = []
            if tick:
                loop.call_at(tick / 1000, self._run, tick)
            else:
                loop.call_soon(self._run, 0)
        streams.append(bsend)
        return tick

    def _run(self, tick: int) -> None:
        for bsend in self.due.pop(tick):
            if bsend._handle != tick:
                continue
            try:
                bsend._flush()
            except Exception as e:  # reported as the loop reports a callback's error
                self.loop.call_exception_handler(
                    {"message": f"Exception in {bsend!r}'s flush", "exception": e}
                )


_FLUSHES: dict[asyncio.AbstractEventLoop, _Flushes] = {}


def _flushes(loop: asyncio.AbstractEventLoop) -> _Flushes:
    flushes = _FLUSHES.get(loop)
    if flushes is None:
        # a closed loop's entry goes with it
        for old in [old for old in _FLUSHES if old.is_closed()]:
            del _FLUSHES[old]
        flushes = _FLUSHES[loop] = _Flushes(loop)
    return flushes


class WireBatchedSend(BatchedSend):
    """distributed's `BatchedSend` (its buffer, interval, counters and message log) for
    a WireComm: a batch is written by a callback the event loop runs at the batch's
    deadline, instead of by a background coroutine that waits on an event. A batch too
    large for the event loop, or a comm something wrapped, goes through the comm's
    `write`, as BatchedSend's does."""

    def __init__(self, old: BatchedSend) -> None:
        super().__init__(interval=0, loop=old.loop, serializers=old.serializers)
        self.interval = old.interval  # seconds already (BatchedSend parsed it)
        self.buffer = old.buffer
        self.message_count = old.message_count
        self._handle: int | None = None  # the tick of `_Flushes` that flushes it
        self._flushes: _Flushes | None = None  # its loop's
        self._writing: asyncio.Future | None = None

    def start(self, comm) -> None:
        self.comm = comm
        self._schedule()

    def send(self, *msgs: Any) -> None:
        if self.comm is not None and self.comm.closed():
            raise CommClosedError(f"Comm {self.comm!r} already closed.")
        # the engine's `Messages`: the messages of a run, to this stream, in one item
        n = len(msgs)
        for m in msgs:
            if type(m) is Messages:
                n += len(m) - 1
        self.message_count += n
        self.buffer.extend(msgs)
        if self._handle is None:
            self._schedule()

    def _schedule(self) -> None:
        if self.comm is None or self.please_stop or not self.buffer or self._writing:
            return
        delay = 0.0 if self.next_deadline is None else self.next_deadline - time()
        flushes = self._flushes
        if flushes is None:
            flushes = self._flushes = _flushes(asyncio.get_running_loop())
        self._handle = flushes.add(self, delay)

    def _flush(self) -> None:
        self._handle = None
        if self.please_stop or not self.buffer:
            return
        payload, self.buffer = self.buffer, []
        self.batch_count += 1
        self.next_deadline = time() + self.interval
        comm = self.comm
        if type(comm) is WireComm and self.serializers is None:
            # the engine's encoding on the event loop, unless it cannot take the batch
            # or the batch's bytes pass the offload threshold: then as distributed
            # decides (its `sizeof`, which only sees a `ToPickle`'s wrapper, not the
            # run_spec, would call nearly every batch small)
            threshold = comm_utils.OFFLOAD_THRESHOLD
            limit = threshold if threshold and comm.allow_offload else None
            try:
                nbytes = comm.write_encoded(payload, limit)
            except Exception as e:
                self._write_failed(e)
                return
            if nbytes is not None:
                self._written(payload, nbytes)
                return
        if type(comm) is not WireComm or not comm.small(payload):
            # a large batch, or a comm a test wrapped: the comm's own `write`
            self._writing = asyncio.ensure_future(self._write_async(as_dicts(payload)))
            return
        try:
            nbytes = comm.write_dumped(payload, serializers=self.serializers, on_error="raise")
        except Exception as e:
            self._write_failed(e)
            return
        self._written(payload, nbytes)

    async def _write_async(self, payload: list) -> None:
        try:
            nbytes = await self.comm.write(payload, serializers=self.serializers, on_error="raise")
        except Exception as e:
            self._write_failed(e)
            return
        finally:
            self._writing = None
        self._written(payload, nbytes)
        self._schedule()

    def _write_failed(self, e: Exception) -> None:
        """A failed write ends the stream, logged as BatchedSend logs it."""
        if isinstance(e, CommClosedError):
            batched_logger.info("Batched Comm Closed %r", self.comm, exc_info=e)
        else:
            batched_logger.error("Error in batched write", exc_info=e)
        self.abort()

    def _written(self, payload: list, nbytes: int) -> None:
        self.recent_message_log.append(payload if nbytes < 1e6 else "large-message")
        self.byte_count += nbytes

    async def close(self, timeout=None) -> None:
        """Write what is buffered, then close the comm."""
        if self.comm is None:
            return
        self.please_stop = True
        self._handle = None  # (its tick's callback passes it by)
        if self._writing is not None:
            await asyncio.wait_for(asyncio.shield(self._writing), timeout)
        if not self.comm.closed():
            try:
                if self.buffer:
                    self.buffer, payload = [], self.buffer
                    await self.comm.write(
                        as_dicts(payload), serializers=self.serializers, on_error="raise"
                    )
            except CommClosedError:
                pass
            await self.comm.close()

    def abort(self) -> None:
        self._handle = None  # (its tick's callback passes it by)
        super().abort()


_CLOSE = object()


class WorkerStream:
    """`Server.handle_stream` for a worker's WireComm: the same dispatch, message by
    message in order, `close-stream`, "OK" and odd messages handled as it handles them;
    a run of `task-finished` messages for the engine's own handler goes to the engine
    in one call (each message still its own stimulus).

    The messages are handled by the selector's callback as soon as they arrive, while
    nothing is awaited: no coroutine step, future or extra loop iteration per batch.
    The stream's coroutine (`run`) takes over for what must be awaited: a coroutine
    handler, distributed's decoding of a batch, the end of the stream, a handler's
    exception (raised from it, as `handle_stream` raises it)."""

    def __init__(self, scheduler: Any, comm: WireComm, worker: str) -> None:
        self.scheduler = scheduler
        self.comm = comm
        self.worker = worker
        self.handlers = scheduler.stream_handlers
        # batches to handle, in order, the first one from `pos` on
        self.batches: deque = deque()
        self.pos = 0
        self.batch_finished = False
        self.error: BaseException | None = None
        self.eof = False
        self.awaiting: object = None  # what `_handle` left to the coroutine
        self.wake: asyncio.Future | None = None

    def _add(self, batches: list | None) -> bool:
        """Queue what a read returned; False when the stream ended."""
        if batches is None:
            self.eof = True
            return False
        self.batches.extend(batches)
        return True

    def _handle(self) -> object:
        """Handle the queued messages until one needs the coroutine: `_CLOSE` at
        `close-stream`, a batch of frames to decode, `(handler, msg)` for a coroutine
        handler; None once the queue is empty."""
        scheduler = self.scheduler
        batches = self.batches
        while batches:
            msgs = batches[0]
            if type(msgs) is list:
                return msgs  # frames: distributed decodes them
            if self.pos == 0:
                self.batch_finished = scheduler._rsched_batch_task_finished()
            if not isinstance(msgs, tuple):
                msgs = (msgs,)
            finished: list = []
            n = len(msgs)
            i = self.pos
            step: object = None
            while i < n:
                msg = msgs[i]
                i += 1
                if type(msg) is FinishedRun:
                    if self.batch_finished:
                        if finished:
                            scheduler._rsched_task_finished_batch(self.worker, finished)
                            finished = []
                        scheduler._rsched_task_finished_batch(self.worker, msg)
                        continue
                    # the messages one by one, as dicts
                    i -= 1
                    msgs = (*msgs[:i], *msg.messages(), *msgs[i + 1 :])
                    batches[0] = msgs
                    n = len(msgs)
                    continue
                if msg == "OK":
                    i = n
                    break
                op = msg.pop("op")
                if (
                    op == "task-finished"
                    and self.batch_finished
                    and "key" in msg
                    and "stimulus_id" in msg
                    and "worker" not in msg
                ):
                    finished.append(msg)
                    continue
                if finished:
                    scheduler._rsched_task_finished_batch(self.worker, finished)
                    finished = []
                if not op:
                    core_logger.error("odd message %s", msg)
                    continue
                if op == "close-stream":
                    core_logger.info(
                        "Received 'close-stream' from %s; closing.", self.comm.peer_address
                    )
                    step = _CLOSE
                    break
                msg.setdefault("worker", self.worker)
                handler = self.handlers[op]
                if iscoroutinefunction(handler):
                    step = (handler, msg)
                    break
                handler(**msg)
            if finished:
                scheduler._rsched_task_finished_batch(self.worker, finished)
            if i >= n or step is _CLOSE:
                batches.popleft()
                self.pos = 0
            else:
                self.pos = i
            if step is not None:
                return step
        return None

    def _on_readable(self) -> bool:
        """The selector's callback: read, and handle what arrived unless the coroutine
        handles this stream now. Whether the data was taken."""
        wake = self.wake
        if wake is None:
            return False
        try:
            step = self._handle() if self._add(self.comm.read_now(True)) else _CLOSE
        except BaseException as e:  # raised by the coroutine, as handle_stream raises
            self.error = e
            step = e
        if step is None:
            return True
        if step is not _CLOSE or not self.eof:
            self.awaiting = step
        self.wake = None
        if not wake.done():
            wake.set_result(None)
        return True

    async def run(self) -> None:
        comm = self.comm
        loop = asyncio.get_running_loop()
        while True:
            if self.error is not None:
                raise self.error
            step, self.awaiting = self.awaiting, None
            if step is None:
                step = self._handle()
            if step is _CLOSE:
                return
            if type(step) is tuple:
                handler, msg = step
                await handler(**msg)
                self.batch_finished = self.scheduler._rsched_batch_task_finished()
                continue
            if type(step) is list:
                try:
                    decoded = await comm.decode(step)
                    # (a list here is messages, not frames: `_handle` tells them apart
                    # by type)
                    self.batches[0] = tuple(decoded) if type(decoded) is list else decoded
                except CommClosedError:
                    # garbled or truncated data ends the stream, as a failed read does
                    core_logger.info("Connection to %s has been closed.", comm.peer_address)
                    return
                continue
            if self.eof or not self._add(comm.read_now(True)):
                core_logger.info("Connection to %s has been closed.", comm.peer_address)
                return
            if self.batches:
                await asyncio.sleep(0)
                continue
            # nothing to do: the selector's callback handles what comes next
            self.wake = loop.create_future()
            comm._poll(self._on_readable)
            try:
                await self.wake
            finally:
                self.wake = None


async def handle_worker_stream(scheduler: Any, comm: WireComm, worker: str) -> None:
    """`Server.handle_stream` for a worker's WireComm (`WorkerStream`)."""
    core_logger.info("Starting established connection to %s", comm.peer_address)
    try:
        await WorkerStream(scheduler, comm, worker).run()
    finally:
        await comm.close()


_RELEASE_FIELDS = frozenset({"keys", "client", "stimulus_id"})


async def handle_client_stream(scheduler: Any, comm: Comm, extra: dict) -> None:
    """`Server.handle_stream` for a client's stream (read by its own comm): the same
    dispatch, message by message in order, except that a run of `client-releases-keys`
    messages for the engine's own handler goes to the engine in one call (each message
    still its own stimulus, with the stimulus id distributed's handler would give it)."""
    core_logger.info("Starting established connection to %s", comm.peer_address)
    handlers = scheduler.stream_handlers
    closed = False
    try:
        while not closed:
            try:
                msgs = await comm.read()
            except CommClosedError:
                core_logger.info("Connection to %s has been closed.", comm.peer_address)
                break
            if not isinstance(msgs, (tuple, list)):
                msgs = (msgs,)
            batch = scheduler._rsched_batch_releases()
            runs: list = []
            for msg in msgs:
                if msg == "OK":
                    break
                op = msg.pop("op")
                if (
                    op == "client-releases-keys"
                    and batch
                    and "keys" in msg
                    and msg.keys() <= _RELEASE_FIELDS
                ):
                    runs.append(
                        (
                            msg["keys"],
                            msg.get("client", extra["client"]),
                            msg.get("stimulus_id") or f"client-releases-keys-{time()}",
                        )
                    )
                    continue
                if runs:
                    scheduler._rsched_releases_batch(runs)
                    runs = []
                if not op:
                    core_logger.error("odd message %s", msg)
                    continue
                if op == "close-stream":
                    closed = True
                    core_logger.info("Received 'close-stream' from %s; closing.", comm.peer_address)
                    break
                handler = handlers[op]
                if iscoroutinefunction(handler):
                    await handler(**{**extra, **msg})
                    batch = scheduler._rsched_batch_releases()
                else:
                    handler(**{**extra, **msg})
            if runs:
                scheduler._rsched_releases_batch(runs)
            await asyncio.sleep(0)
    finally:
        await comm.close()
