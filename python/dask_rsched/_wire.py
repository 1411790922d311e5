"""A worker's stream on the engine's own socket reading and writing.

After a worker registers, distributed's `handle_worker` reads its stream with
`Server.handle_stream` (tornado's IOStream, msgpack, one handler call per message) and
writes to it with a `BatchedSend` over the same comm. On the engine, a plain TCP comm
(`distributed.comm.tcp.TCP`; not TLS, inproc, ws or ucx, which keep distributed's path)
is taken from tornado once the handshake is done: `WireComm` reads and writes the
socket through `_core.WireStream` (distributed's framing, plain msgpack decoded in
Rust), and the scheduler's `BatchedSend` for the worker writes through it unchanged.
What goes on the wire is what distributed sends: the frames come from distributed's own
`to_frames` and `_add_frames_header`.

`distributed.scheduler.rsched-wire: false` in the Dask config turns this off.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import dask.config
from distributed.comm.core import Comm, CommClosedError
from distributed.comm.tcp import TCP, _add_frames_header
from distributed.comm.utils import from_frames, to_frames
from distributed.utils import iscoroutinefunction

from dask_rsched._core import WireStream

logger = logging.getLogger("distributed.scheduler")


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


class WireComm(Comm):
    """The worker's comm once the engine reads and writes its socket."""

    def __init__(self, tcp: TCP, pending: bytes) -> None:
        super().__init__(deserialize=tcp.deserialize)
        self._tcp = tcp
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
        self._writing = False
        self._readable: asyncio.Future | None = None

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

    # Reading: batches of messages, as `Comm.read` returns them.

    def _on_readable(self) -> None:
        fut = self._readable
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def read_batches(self) -> list:
        """The batches that arrived (at least one); CommClosedError once the peer is
        gone. Batches that need distributed's decoding come back decoded by it."""
        while True:
            if self._closed:
                raise CommClosedError(f"{self!r} closed")
            batches = self._wire.read_batches()
            if batches is None:
                self.abort()
                raise CommClosedError(f"{self!r}: connection closed by the peer")
            if batches:
                break
            self._readable = self._loop.create_future()
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True
            try:
                await self._readable
            finally:
                self._readable = None
                if self._reading:
                    self._reading = False
                    self._loop.remove_reader(self._fd)
        for i, batch in enumerate(batches):
            if type(batch) is list:
                batches[i] = await from_frames(
                    batch,
                    deserialize=self.deserialize,
                    allow_offload=self.allow_offload,
                )
        return batches

    async def read(self, deserializers=None):
        raise NotImplementedError("a WireComm is read with read_batches")

    # Writing: distributed's frames, written by the engine.

    async def write(self, msg, serializers=None, on_error="message") -> int:
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        frames = await to_frames(
            msg,
            allow_offload=self.allow_offload,
            serializers=serializers,
            on_error=on_error,
            context={
                "sender": self.local_info,
                "recipient": self.remote_info,
                **self.handshake_options,
            },
            frame_split_size=self.max_shard_size,
        )
        frames, _, nbytes = _add_frames_header(frames)
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        if self._closed:
            raise CommClosedError(f"{self!r} closed")
        try:
            pending = self._wire.write(bytes(data))
        except OSError as e:
            self.abort()
            raise CommClosedError(f"{self!r}: {e}") from e
        if pending and not self._writing:
            self._writing = True
            self._loop.add_writer(self._fd, self._on_writable)
        return nbytes

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
        if self._reading:
            self._reading = False
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._writing = False
            self._loop.remove_writer(self._fd)
        self._on_readable()

    def abort(self) -> None:
        if not self._closed:
            self._detach()
            self._tcp.abort()

    async def close(self) -> None:
        if self._closed:
            return
        # Give queued bytes a last chance, as TCP.close waits for its last write.
        for _ in range(100):
            if not self._wire.pending_write:
                break
            try:
                self._wire.flush()
            except OSError:
                break
            await asyncio.sleep(0.01)
        self._detach()
        await self._tcp.close()

    def closed(self) -> bool:
        return self._closed


async def handle_worker_stream(scheduler: Any, comm: WireComm, worker: str) -> None:
    """`Server.handle_stream` for a worker's WireComm: the same dispatch, message by
    message in order, `close-stream` and odd messages handled as it handles them. A
    run of `task-finished` messages for the engine's own handler goes to the engine in
    one call (each message still its own stimulus)."""
    logger.info("Starting established connection to %s", comm.peer_address)
    handlers = scheduler.stream_handlers
    closed = False
    try:
        while not closed:
            try:
                batches = await comm.read_batches()
            except CommClosedError:
                logger.info("Connection to %s has been closed.", comm.peer_address)
                break
            batch_finished = scheduler._rsched_batch_task_finished()
            for msgs in batches:
                if not isinstance(msgs, (tuple, list)):
                    msgs = (msgs,)
                finished: list = []
                for msg in msgs:
                    if msg == "OK":
                        break
                    op = msg.pop("op")
                    if (
                        op == "task-finished"
                        and batch_finished
                        and "key" in msg
                        and "stimulus_id" in msg
                        and "worker" not in msg
                    ):
                        finished.append(msg)
                        continue
                    if finished:
                        scheduler._rsched_task_finished_batch(worker, finished)
                        finished = []
                    if op:
                        if op == "close-stream":
                            closed = True
                            logger.info(
                                "Received 'close-stream' from %s; closing.", comm.peer_address
                            )
                            break
                        msg.setdefault("worker", worker)
                        handler = handlers[op]
                        if iscoroutinefunction(handler):
                            await handler(**msg)
                        else:
                            handler(**msg)
                    else:
                        logger.error("odd message %s", msg)
                if finished:
                    scheduler._rsched_task_finished_batch(worker, finished)
                if closed:
                    break
            await asyncio.sleep(0)
    finally:
        await comm.close()
