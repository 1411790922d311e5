"""Worker streams read and written by the engine (`dask_rsched._wire`): in use on plain
TCP, distributed's own path when switched off, and a malformed frame from one worker
closes that worker's comm only."""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from pathlib import Path

import dask_rsched
import pytest
from dask._task_spec import Task, TaskRef
from distributed import Worker
from distributed.comm import connect
from distributed.utils_test import captured_logger, div, gen_cluster, inc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
from hypothesis import example, given, settings
from hypothesis import strategies as st
from scheduler_e2e import METRICS


@pytest.fixture(autouse=True)
def engine():
    dask_rsched.install()
    yield
    dask_rsched.uninstall()


def comm_types(s) -> set:
    return {type(bs.comm).__name__ for bs in s.stream_comms.values()}


@gen_cluster(client=True)
async def test_worker_streams_are_the_engines(c, s, a, b):
    assert comm_types(s) == {"WireComm"}
    # distributed's 5 ms batching interval, in seconds as BatchedSend keeps it
    assert {bs.interval for bs in s.stream_comms.values()} == {0.005}
    futs = c.map(inc, range(300))
    assert await c.submit(sum, futs) == sum(range(1, 301))
    # task-erred carries a pickled exception: a batch distributed's decoding reads
    with pytest.raises(ZeroDivisionError):
        await c.submit(div, 1, 0)
    # free-keys and friends went the same way
    del futs
    while any(k.startswith("inc-") for k in s.tasks):
        await asyncio.sleep(0.01)
    s.validate_state()
    assert s.stream_comms[a.address].message_count > 0


@gen_cluster(client=True, config={"distributed.scheduler.rsched-wire": False})
async def test_switched_off_keeps_distributeds_comms(c, s, a, b):
    assert comm_types(s) == {"TCP"}
    assert type(s.client_comms[c.id]).__name__ == "BatchedSend"
    assert await c.submit(inc, 1) == 2


@gen_cluster(client=True)
async def test_client_streams_are_the_engines(c, s, a, b):
    """A client's stream is read and written by the engine: its messages in both
    directions (graphs with pickled frames, releases, reports, errors) as on
    distributed's comm, and a client leaving or vanishing is removed."""
    from distributed import Client
    from distributed.diagnostics.plugin import SchedulerPlugin

    bcomm = s.client_comms[c.id]
    assert type(bcomm).__name__ == "WireBatchedSend"
    assert type(bcomm.comm).__name__ == "WireComm"
    assert bcomm.interval == 0.002  # add_client's 2 ms, in seconds
    futs = c.map(inc, range(300))
    assert await c.gather(futs) == list(range(1, 301))
    with pytest.raises(ZeroDivisionError):
        await c.submit(div, 1, 0)
    big = c.submit(len, b"x" * 3_000_000)  # a graph larger than the offload threshold
    assert await big == 3_000_000
    del futs, big
    while any(k.startswith("inc-") for k in s.tasks):
        await asyncio.sleep(0.01)
    assert bcomm.message_count > 300 and bcomm.recent_message_log
    s.validate_state()

    async with Client(s.address, asynchronous=True) as c2:
        assert await c2.submit(inc, 10) == 11
        assert c2.id in s.clients
    while c2.id in s.clients:
        await asyncio.sleep(0.01)

    removed: list = []

    class Removed(SchedulerPlugin):
        def remove_client(self, scheduler, client):
            removed.append(client)

    s.add_plugin(Removed())
    async with Client(s.address, asynchronous=True) as c3:
        assert await c3.submit(inc, 20) == 21
        s.client_comms[c3.id].comm.abort()  # the connection drops (the client reconnects)
        while c3.id not in removed:
            await asyncio.sleep(0.01)
    assert await c.submit(inc, 1) == 2


@gen_cluster(client=True, nthreads=[])
async def test_worker_leaving_and_joining(c, s):
    async with Worker(s.address, nthreads=1):
        x = c.submit(inc, 1, key="x")
        assert await x == 2
        assert comm_types(s) == {"WireComm"}
    while s.workers:
        await asyncio.sleep(0.01)
    assert s.tasks["x"].state != "memory"
    async with Worker(s.address, nthreads=1):
        assert await x == 2  # computed again on the new worker


@pytest.mark.parametrize("protocol", ["tls", "inproc"])
def test_other_comms_keep_distributeds_path(protocol):
    """TLS and inproc comms are not taken over: distributed's handle_stream and
    BatchedSend serve them, on the engine."""
    from distributed import Client, Scheduler
    from distributed.security import Security

    security = Security.temporary() if protocol == "tls" else None

    async def run():
        async with Scheduler(protocol=protocol, security=security, dashboard_address=":0") as s:
            async with Worker(s.address, security=security, nthreads=1) as w:
                async with Client(s.address, security=security, asynchronous=True) as c:
                    assert await c.submit(inc, 1) == 2
                    assert type(s.stream_comms[w.address]).__name__ == "BatchedSend"
                    assert comm_types(s) == {"TLS" if protocol == "tls" else "InProc"}
                    assert hasattr(s, "_rsched_engine")

    asyncio.run(run())


REGISTER = dict(
    op="register-worker",
    reply=False,
    status="running",
    nthreads=1,
    memory_limit=2**30,
    local_directory="/tmp",
    services={},
    nanny=None,
    versions={},
    metrics=METRICS,
    extra={},
    resources={},
)


async def fake_worker(s, name: str):
    """A worker that registers through the real handshake and then only writes what
    the test gives it."""
    comm = await connect(s.address)
    address = f"tcp://127.0.0.1:{40000 + len(name)}"
    msg = dict(REGISTER, address=address, name=name, now=time.time(), pid=os.getpid())
    msg.update(server_id=f"fake-{name}", stimulus_id=f"connect-{name}")
    await comm.write(msg, serializers=["msgpack"])
    assert (await comm.read())["status"] == "OK"
    while address not in s.stream_comms or s.stream_comms[address].comm is None:
        await asyncio.sleep(0.01)
    assert type(s.stream_comms[address].comm).__name__ == "WireComm"
    return comm, address


# A peer's garbled stream: what each malformed-frame test writes.
GARBAGE = pytest.mark.parametrize(
    "garbage",
    [
        # a frame count the header's length cannot hold
        struct.pack("<QQ", 16, 2**40),
        # a well-framed batch that is not msgpack (0xc1 is never used)
        struct.pack("<QQQ", 17, 1, 1) + b"\xc1",
        # a batch of two frames (distributed's decoding) whose msgpack is truncated
        struct.pack("<QQQQ", 26, 2, 1, 1) + b"\x92x",
    ],
    ids=["header", "msgpack", "frames"],
)


@GARBAGE
def test_malformed_frame_closes_that_worker_only(garbage):
    @gen_cluster(client=True, nthreads=[("127.0.0.1", 1)])
    async def run(c, s, a):
        comm, address = await fake_worker(s, "bad")
        with captured_logger("distributed.core") as log:
            await comm.stream.write(garbage)
            while address in s.workers:
                await asyncio.sleep(0.01)
        assert "register-worker" in log.getvalue()
        assert list(s.workers) == [a.address]
        assert await c.submit(inc, 41) == 42
        s.validate_state()
        comm.abort()

    run()


@pytest.mark.parametrize("wire", [True, False], ids=["engine", "distributed"])
@GARBAGE
def test_malformed_frame_closes_that_client_only(garbage, wire):
    """A client's garbled stream ends that client, on the engine's comm as on
    distributed's: the scheduler removes it and keeps everything else."""
    from distributed import versions

    if not wire and len(garbage) == 16:
        pytest.skip("distributed's comm waits for the lengths of 2**40 frames")

    @gen_cluster(
        client=True,
        nthreads=[("127.0.0.1", 1)],
        config={"distributed.scheduler.rsched-wire": wire},
    )
    async def run(c, s, a):
        x = c.submit(inc, 1, key="x")
        assert await x == 2
        comm = await connect(s.address)
        await comm.write(
            {
                "op": "register-client",
                "client": "bad-client",
                "reply": False,
                "versions": versions.get_versions(),
            }
        )
        assert (await comm.read())[0]["op"] == "stream-start"  # a batch
        bcomm = s.client_comms["bad-client"]
        assert type(bcomm.comm).__name__ == ("WireComm" if wire else "TCP")
        await comm.stream.write(garbage)
        while "bad-client" in s.clients:
            await asyncio.sleep(0.01)
        assert set(s.clients) == {c.id, "fire-and-forget"}
        assert await c.submit(inc, 41) == 42 and await x == 2
        s.validate_state()
        comm.abort()

    run()


def distributed_bytes(msg) -> bytes:
    from distributed import protocol
    from distributed.comm.tcp import _add_frames_header

    frames = protocol.dumps(msg, on_error="raise", context={}, frame_split_size=2**26)
    return b"".join(bytes(f) for f in _add_frames_header(frames)[0])


def test_encoder_writes_distributeds_bytes():
    """The engine's encoding of a batch is byte for byte what distributed's `dumps`
    and TCP framing make of it, for what scheduler messages hold."""
    import operator

    from dask._task_spec import Task, TaskRef
    from dask_rsched._core import encode_batch
    from distributed.protocol.serialize import ToPickle

    ints = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**63 - 1, 2**64 - 1]
    ints += [-1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63)]
    strs = ["", "a" * 31, "a" * 32, "é" * 200, "x" * 70000]
    batch = [
        {
            "op": "compute-task",
            "key": ("x", 1, 2.5),
            "run_id": 7,
            "priority": (0, 1, -3),
            "duration": 0.5,
            "who_has": {"y": ["tcp://127.0.0.1:1"]},
            "nbytes": {"y": 28},
            "resource_restrictions": None,
            "actor": False,
            "annotations": {"retries": 2, "span": ["a", "b"]},
            "span_id": "abc",
            "run_spec": ToPickle(Task("x", operator.add, TaskRef("y"), 1)),
            "stimulus_id": "s-1",
        },
        {"op": "free-keys", "keys": ["a", "b"] * 20, "stimulus_id": "s-2"},
        {"ints": ints, "strs": strs, "bytes": [b"", b"x" * 300, b"y" * 70000]},
        {i: True for i in range(20)},
        [list(range(20)), tuple(range(70000)), {"nested": [{"deep": (None, 1.0)}]}],
        {"second": ToPickle({"a": 1})},
    ]
    for msg in [batch, *batch, []]:
        assert encode_batch(msg) == distributed_bytes(msg)


def _in_main():
    return 1


def test_encoder_pickles_run_specs_as_distributed():
    """The run_spec's pickle is distributed's `dumps`: plain pickle, cloudpickle where
    the pickle names `__main__` (short, or long without `_always_use_pickle_for`), and
    distributed's own path where pickle fails or a module is pickled by value."""
    import operator

    import cloudpickle
    from dask._task_spec import Task, TaskRef
    from dask_rsched._core import encode_batch
    from distributed.protocol.serialize import ToPickle

    main_fn = _in_main
    specs = [
        Task("a", operator.add, TaskRef("y"), 1),
        Task("b", operator.add, "__main__", 1),  # names __main__: cloudpickle
        Task("c", operator.add, "__main__" + "x" * 2000, 1),  # long
        Task("d", lambda x: x, 1),  # pickle fails: cloudpickle, the lambda kept
        Task("e", main_fn, TaskRef("y")),
    ]
    for spec in specs:
        msg = [{"op": "compute-task", "run_spec": ToPickle(spec)}]
        if spec.key == "d":
            assert run_spec_back(spec)({}) == 1
        else:
            assert encode_batch(msg) == distributed_bytes(msg)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    try:
        for spec in specs:
            msg = [{"op": "compute-task", "run_spec": ToPickle(spec)}]
            assert encode_batch(msg) == distributed_bytes(msg)
    finally:
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


class _Slotted:
    __slots__ = ("a", "b")

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __eq__(self, other):
        return type(other) is _Slotted and (self.a, self.b) == (other.a, other.b)


class _TaskWithSlot(Task):
    """A Task subclass with a slot of its own (its state has one more item)."""

    __slots__ = ("extra",)

    def __init__(self, key, func, *args, extra=None):
        super().__init__(key, func, *args)
        self.extra = extra


class _TaskOwnState(Task):
    """A Task subclass whose state is not Task's: reduced by its own method."""

    __slots__ = ()

    def __getstate__(self):
        return ("own", *super().__getstate__())

    def __setstate__(self, state):
        super().__setstate__(state[1:])


class _TaskRefSub(TaskRef):
    __slots__ = ()


def _values():
    """Values of the shapes run_specs hold, to trace against `pickle.dumps`."""
    import functools
    import operator

    from dask._task_spec import Alias, DataNode, List
    from hypothesis import strategies as st

    keys = st.text(max_size=5) | st.tuples(st.text(max_size=5), st.integers(0, 3))

    atoms = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=300),
        st.binary(max_size=300),
        st.sampled_from([operator.add, len, int, dict, functools.partial, _in_main]),
    )

    def nested(children):
        return st.one_of(
            st.lists(children, max_size=5),
            st.lists(children, max_size=5).map(tuple),
            st.dictionaries(st.text(max_size=5), children, max_size=5),
            st.frozensets(st.integers() | st.text(max_size=5), max_size=5),
            st.sets(st.integers(), max_size=5),
            st.tuples(children, children).map(lambda ab: _Slotted(*ab)),
            st.lists(children, max_size=3).map(lambda xs: functools.partial(operator.add, *xs)),
            # dask's graph nodes, reduced without their Python methods
            st.tuples(keys, st.lists(children | keys.map(TaskRef), max_size=3)).map(
                lambda ka: Task(ka[0], max, *ka[1])
            ),
            st.tuples(keys, children).map(lambda kv: DataNode(kv[0], kv[1])),
            st.tuples(keys, keys).map(lambda kt: Alias(kt[0], kt[1])),
            st.tuples(keys, children).map(lambda kx: _TaskWithSlot(kx[0], len, kx[1], extra=kx[1])),
            st.tuples(keys, children).map(lambda kx: _TaskOwnState(kx[0], len, kx[1])),
            keys.map(_TaskRefSub),
            st.lists(children | keys.map(TaskRef), max_size=3).map(lambda xs: List(*xs)),
        )

    return st.recursive(atoms, nested, max_leaves=20)


def test_pickle_trace_matches_pickle():
    """The traced pickle is `pickle.dumps(protocol=5)` byte for byte, shared objects
    (memo) included, on run_specs of dask collections and random values."""
    import pickle

    import dask.array as da
    from dask._task_spec import Task, TaskRef, convert_legacy_graph
    from dask_rsched._core import pickle_trace
    from hypothesis import given, settings

    shared = ("k", 1)
    graphs = [
        convert_legacy_graph(dict((da.ones((40, 40), chunks=10) + 1).sum().__dask_graph__())),
        {"t": Task("t", max, TaskRef(shared), TaskRef(shared), [shared, shared, {"x": shared}])},
    ]
    traced = 0
    for dsk in graphs:
        for spec in dsk.values():
            out, fails, _ = pickle_trace(spec)
            assert not fails
            if out is not None:
                traced += 1
                assert out == pickle.dumps(spec, protocol=5)
    assert traced > 0

    @settings(max_examples=300, deadline=None)
    @given(_values())
    def check(value):
        out, fails, _ = pickle_trace(value)
        if out is not None:
            assert out == pickle.dumps(value, protocol=5)
        if fails:
            with pytest.raises(pickle.PicklingError):
                pickle.dumps(value, protocol=5)

    check()
    unset = Task.__new__(Task)  # no slot set: Task.__getstate__ raises
    assert pickle_trace(unset)[0] is None
    with pytest.raises(AttributeError):
        pickle.dumps(unset, protocol=5)
    for big in (list(range(2500)), {i: i for i in range(1000)}, set(range(1000))):
        out, _, _ = pickle_trace(big)
        assert out is None or out == pickle.dumps(big, protocol=5)


def main_function(source: str, name: str, **globals_):
    """A function as a client's `__main__` function is on the scheduler: loaded from
    cloudpickle's by-value pickle."""
    import cloudpickle

    ns = {"__name__": "__main__", **globals_}
    exec(source, ns)
    return cloudpickle.loads(cloudpickle.dumps(ns[name]))


def run_spec_back(spec):
    """The run_spec as a worker loads it from the engine's encoding of a compute-task."""
    from dask_rsched._core import encode_batch
    from distributed.protocol import loads
    from distributed.protocol.serialize import ToPickle

    wire = encode_batch([{"op": "compute-task", "run_spec": ToPickle(spec)}])
    (n,) = struct.unpack_from("<Q", wire, 8)
    lengths = struct.unpack_from(f"<{n}Q", wire, 16)
    frames, at = [], 16 + 8 * n
    for length in lengths:
        frames.append(wire[at : at + length])
        at += length
    return loads(frames)[0]["run_spec"]


def test_main_functions_are_pickled_once():
    """A run_spec whose function pickle cannot find (a client's `__main__` function
    on the scheduler) is what cloudpickle writes, with the function loaded from its
    own cloudpickle bytes, kept from one task to the next."""
    import operator

    import cloudpickle
    from dask._task_spec import Task, TaskRef
    from dask_rsched._core import encode_batch, pickle_trace
    from distributed.protocol.serialize import ToPickle

    inc = main_function("def inc(x):\n    return x + ONE\n", "inc", ONE=1)
    spec = Task(("inc", 1), inc, TaskRef(("x", 1)), operator.add)
    out, fails, types = pickle_trace(spec)
    assert out is None and fails
    assert Task in types and type(inc) in types
    own = cloudpickle.dumps(inc, protocol=5)
    for i in range(3):
        spec = Task(("inc", i), inc, TaskRef(("x", i)))
        assert own in encode_batch([{"op": "compute-task", "run_spec": ToPickle(spec)}])
        back = run_spec_back(spec)
        assert back.key == ("inc", i) and back({("x", i): 41}) == 42
    # the same function twice in a run_spec is one function on the worker
    back = run_spec_back(Task("t", operator.is_, inc, inc))
    assert back({}) is True


def test_main_functions_kept_see_their_changes():
    """What cloudpickle would write differently makes the function pickled again:
    its globals' values, defaults, closure, code, `__dict__`, `sys.modules`."""
    import types

    from dask._task_spec import Task
    from dask_rsched._core import encode_batch
    from distributed.protocol.serialize import ToPickle

    f = main_function("def f(x=1):\n    return x + ONE\n", "f", ONE=1)
    assert run_spec_back(Task("t", f))({}) == 2
    f.__globals__["ONE"] = 10
    assert run_spec_back(Task("t", f))({}) == 11
    f.__defaults__ = (5,)
    assert run_spec_back(Task("t", f))({}) == 15
    f.__code__ = main_function("def g(x=1):\n    return x * ONE\n", "g").__code__
    assert run_spec_back(Task("t", f))({}) == 50
    f.tag = "t"
    assert run_spec_back(Task("t", f)).func.tag == "t"
    adder = main_function(
        "def make(n):\n    def add(x):\n        return x + n\n    return add\n", "make"
    )(3)
    assert run_spec_back(Task("t", adder, 1))({}) == 4
    adder.__closure__[0].cell_contents = 7
    assert run_spec_back(Task("t", adder, 1))({}) == 8
    # a global pickled by reference that no longer resolves is pickled by value
    helpers = types.ModuleType("_dask_rsched_test_helpers")
    exec("def helper():\n    return 1\n", helpers.__dict__)
    sys.modules[helpers.__name__] = helpers
    try:
        uses = main_function("def u():\n    return helper()\n", "u", helper=helpers.helper)
        assert run_spec_back(Task("t", uses))({}) == 1
        helpers.helper = lambda: 2
        msg = [{"op": "compute-task", "run_spec": ToPickle(Task("t", uses))}]
        assert encode_batch(msg) == distributed_bytes(msg)
    finally:
        del sys.modules[helpers.__name__]
    sys.modules["_dask_rsched_test_new_module"] = sys  # cloudpickle lists submodules
    try:
        assert run_spec_back(Task("t", adder, 1))({}) == 8
    finally:
        del sys.modules["_dask_rsched_test_new_module"]


def test_main_functions_cloudpickle_writes_its_way():
    """A function capturing something mutable (or not pickled by reference), two
    functions written by value in one run_spec (cloudpickle gives them one globals
    dict), a `__main__` class: cloudpickle's own bytes, as distributed writes them."""
    from dask._task_spec import Task
    from dask_rsched._core import encode_batch
    from distributed.protocol.serialize import ToPickle

    uses_list = main_function("def f(x):\n    return x + len(ITEMS)\n", "f", ITEMS=[1])
    a = main_function("def a(x):\n    return x\n", "a")
    b = main_function("def b(x):\n    return x\n", "b")
    helper = main_function("def h(x):\n    return a(x)\n", "h", a=a)
    kw = main_function("def k(*, x=1):\n    return x\n", "k")
    cls = main_function("class C:\n    pass\n", "C")
    big = main_function("def f():\n    return BIG\n", "f", BIG=b"x" * 100_000)
    for spec in [
        Task("t", big),
        Task("t", uses_list, 1),
        Task("t", a, Task("u", b, 1)),
        Task("t", helper, 1),
        Task("t", kw),
        Task("t", a, cls()),
        Task("t", a, cls),
    ]:
        msg = [{"op": "compute-task", "run_spec": ToPickle(spec)}]
        assert encode_batch(msg) == distributed_bytes(msg), spec


def test_encoder_leaves_the_rest_to_distributed():
    import numpy as np
    from dask_rsched._core import encode_batch
    from distributed.protocol.serialize import Serialize, ToPickle

    class Sub(dict):
        pass

    for odd in [
        {1, 2},
        Sub(a=1),
        2**64,
        bytearray(b"x"),
        Serialize(1),
        ToPickle(np.arange(100_000)),  # out-of-band buffers
    ]:
        out = encode_batch([{"op": "x", "v": odd}])
        if out is not None:
            assert out == distributed_bytes([{"op": "x", "v": odd}])
    # cloudpickle's: still bytes, encoded, the lambda loaded from its own pickle
    assert run_spec_back(lambda: asyncio)() is asyncio


def framed(frames: list[bytes]) -> bytes:
    prelude = struct.pack(f"<Q{len(frames)}Q", len(frames), *map(len, frames))
    body = prelude + b"".join(frames)
    return struct.pack("<Q", len(body)) + body


def read_back(data: bytes, finished_runs: bool = False, runs: list | None = None) -> list:
    """What `WireStream.read_batches` makes of `data` arriving on a socket, with the
    batches it hands back as frames decoded by distributed's `loads` (and each
    `FinishedRun` as its messages, counted in `runs`)."""
    import socket

    from dask_rsched._core import FinishedRun, WireStream
    from distributed.protocol import loads

    def flat(batch):
        if type(batch) is not tuple:
            return batch
        out = []
        for m in batch:
            if type(m) is FinishedRun:
                if runs is not None:
                    runs.append(len(m))
                out += m.messages()
            else:
                out.append(m)
        return tuple(out)

    a, b = socket.socketpair()
    try:
        a.setblocking(False)
        b.sendall(data)
        b.close()
        stream = WireStream(a.fileno())
        out: list = []
        while (batches := stream.read_batches(finished_runs)) is not None:
            out += [loads(x, deserialize=False) if type(x) is list else flat(x) for x in batches]
        return out
    finally:
        a.close()


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | st.sampled_from(["__Set__", "__Pickled__", "op", "key"]),
    lambda inner: (
        st.lists(inner, max_size=5)
        | st.dictionaries(
            st.text(max_size=20) | st.integers(-(2**63), 2**64 - 1), inner, max_size=5
        )
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(msgpack_values, st.binary(max_size=20))
@example(None, b"\xca\x7f\x80\x00\x01")  # garbage that is a float32 NaN
def test_decoder_gives_what_distributeds_loads_gives(value, garbage):
    """Plain msgpack decodes to exactly what distributed's `loads` returns; anything
    else (garbage, ext types, hook maps) is handed to distributed's decoding."""
    import msgpack
    from distributed.protocol import loads

    frame = msgpack.dumps(value, use_bin_type=True)
    assert read_back(framed([frame])) == [loads([frame], deserialize=False)]
    for odd in (garbage, frame + garbage):
        try:
            expected = loads([odd], deserialize=False)
        except Exception as e:
            with pytest.raises(type(e)):
                read_back(framed([odd]))
        else:
            # by repr: a NaN equals no NaN, and the types must match too
            assert repr(read_back(framed([odd]))) == repr([expected])


def finished_report(**fields) -> dict:
    """A `task-finished` message as distributed's worker sends it."""
    from distributed.worker_state_machine import TaskFinishedMsg

    args = dict(
        key=("x", 1),
        run_id=7,
        nbytes=28,
        type=b"\x80\x05int",
        typename="int",
        metadata={},
        thread=140000,
        startstops=[{"action": "compute", "start": 1.5, "stop": 2.25}],
        stimulus_id="task-finished-1.0",
    )
    args.update(fields)
    return TaskFinishedMsg(**args).to_dict()


_numbers = st.floats(allow_nan=False) | st.integers(-(2**63), 2**64 - 1)
_reports = st.builds(
    finished_report,
    key=st.text(max_size=8) | st.tuples(st.text(max_size=5), st.integers(0, 9)),
    run_id=st.integers(-(2**63), 2**64 - 1),
    nbytes=st.integers(-(2**63), 2**64 - 1),
    type=st.none() | st.binary(max_size=8),
    metadata=st.dictionaries(st.text(max_size=4), st.integers(-(2**63), 2**63 - 1), max_size=2),
    thread=st.none() | st.integers(0, 2**40),
    startstops=st.lists(
        st.fixed_dictionaries(
            {"action": st.text(max_size=8), "start": _numbers, "stop": _numbers},
            optional={"source": st.text(max_size=5)},
        ),
        max_size=3,
    ),
)
# the same, a field dropped, added or of another type
_odd_reports = _reports.flatmap(
    lambda d: st.sampled_from(sorted(d)).flatmap(
        lambda k: (
            st.sampled_from([{f: v for f, v in d.items() if f != k}, {**d, "worker": "tcp://w"}])
            | msgpack_values.map(lambda v: {**d, k: v})
        )
    )
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_reports | _odd_reports | msgpack_values, max_size=6))
def test_finished_runs_give_distributeds_messages(batch):
    """A batch read with its `task-finished` runs parsed gives, run by run, the messages
    distributed's `loads` gives."""
    import msgpack
    from distributed.protocol import loads

    frame = msgpack.dumps(batch, use_bin_type=True)
    runs: list = []
    assert read_back(framed([frame]), True, runs) == [loads([frame], deserialize=False)]
    # the reports as workers send them are parsed (a run per stretch of them)
    plain = [m for m in batch if type(m) is dict and m.get("op") == "task-finished"]
    assert sum(runs) <= len(plain)


def test_workers_reports_are_parsed():
    import msgpack

    batch = [finished_report(), finished_report(key="y", metadata={"a": 1}), {"op": "x"}]
    batch.append(
        finished_report(startstops=[{"action": "transfer", "start": 1, "stop": 2, "source": "w"}])
    )
    runs: list = []
    frame = msgpack.dumps(batch, use_bin_type=True)
    [got] = read_back(framed([frame]), True, runs)
    assert runs == [2, 1]
    assert len(got) == 4


@pytest.mark.parametrize("field", [b"\xa2OK", b"\xa1w"], ids=["status", "source"])
def test_reports_with_invalid_utf8_go_to_distributeds_decoding(field):
    import msgpack
    from distributed.protocol import loads

    report = finished_report(startstops=[{"action": "a", "start": 1, "stop": 2, "source": "w"}])
    frame = msgpack.dumps([report], use_bin_type=True)
    frame = frame.replace(field, field[:1] + b"\xff" * (len(field) - 1))
    with pytest.raises(Exception) as expected:
        loads([frame], deserialize=False)
    with pytest.raises(expected.type):
        read_back(framed([frame]), True)


def test_deep_nesting_goes_to_distributeds_decoding():
    """Nesting deeper than msgpack-python allows is not decoded in Rust (no stack
    overflow): distributed's `loads` raises what it raises."""
    from dask_rsched._core import encode_batch
    from distributed.protocol import loads

    frame = b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(Exception) as expected:
        loads([frame], deserialize=False)
    with pytest.raises(expected.type):
        read_back(framed([frame]))
    deep: list = []
    for _ in range(2000):
        deep = [deep]
    assert encode_batch(deep) is None
    cyclic: list = []
    cyclic.append(cyclic)
    assert encode_batch(cyclic) is None


@gen_cluster(client=True)
async def test_client_releases_run_in_one_engine_call(c, s, a, b):
    """A client stream's run of `client-releases-keys` goes to the engine in one call,
    each message its own stimulus with distributed's stimulus id."""
    calls = []
    handle = s._rsched_releases_batch

    def spy(runs):
        calls.append(len(runs))
        handle(runs)

    s._rsched_releases_batch = spy
    futures = c.map(inc, range(50))
    await c.gather(futures)
    del futures
    while s.tasks:
        await asyncio.sleep(0.01)
    assert sum(calls) == 50
    assert len(calls) < 50
    released = {sid for *_, sid, _ in s.transition_log if sid.startswith("client-releases-keys-")}
    assert len(released) > 1


@gen_cluster(
    client=True,
    nthreads=[("", 1)] * 2,
    worker_kwargs={"resources": {"R": 2}},
    scheduler_kwargs={"validate": False},
)
async def test_messages_are_written_as_distributeds_dicts(c, s, a, b):
    """A run's messages reach the streams as the engine's `Messages` (`task-finished`
    runs: without validation); what the engine writes for them is byte for byte what
    distributed writes for their dicts, and the stream counts each message."""
    import dask
    from dask_rsched._core import Messages, encode_batch
    from dask_rsched._wire import WireComm, as_dicts
    from distributed.utils_test import slowinc

    seen: list = []
    write_encoded = WireComm.write_encoded

    def spy(self, msg, max_size=None):
        if type(msg) is list and any(type(m) is Messages for m in msg):
            seen.append(len(as_dicts(msg)))
            assert encode_batch(msg) == distributed_bytes(as_dicts(msg))
        return write_encoded(self, msg, max_size)

    counts = {w: bs.message_count for w, bs in s.stream_comms.items()}
    WireComm.write_encoded = spy
    try:
        with dask.annotate(resources={"R": 1}, retries=2):
            xs = c.map(slowinc, range(20), delay=0.01, key=[("x", i) for i in range(20)])
        with dask.annotate(priority=-3):
            total = c.submit(sum, xs, key="total")
        assert await total == sum(range(1, 21))
        ys = c.map(inc, range(30), workers=[a.address], allow_other_workers=True)
        await c.gather(ys)
        del xs, total, ys
        while s.tasks:
            await asyncio.sleep(0.01)
    finally:
        WireComm.write_encoded = write_encoded
    assert seen, "no run of messages went through the engine's writer"
    kinds = {
        m["op"]
        for bs in s.stream_comms.values()
        for p in bs.recent_message_log
        if type(p) is list
        for m in as_dicts(p)
    }
    assert {"compute-task", "free-keys"} <= kinds
    sent = sum(bs.message_count - counts.get(w, 0) for w, bs in s.stream_comms.items())
    assert sent >= 51


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs={"validate": False})
async def test_frozen_stream_gets_dicts(c, s, a):
    """A stream a test wrapped (`freeze_batched_send`) gets distributed's dicts."""
    from distributed.utils_test import freeze_batched_send

    await c.submit(inc, 0)
    with freeze_batched_send(s.stream_comms[a.address]) as locked:
        futs = c.map(inc, range(1, 10))
        _, msgs = await locked.write_queue.get()
        assert all(type(m) is dict for m in msgs), msgs
    assert await c.gather(futs) == list(range(2, 11))


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs={"validate": False})
async def test_parsed_reports_reach_the_engine_and_plugins(c, s, a):
    """Workers' `task-finished` reports reach the engine parsed, a run per call; a
    plugin watching transitions to memory gets the fields distributed gives it."""
    from dask_rsched._core import FinishedRun
    from distributed.diagnostics.plugin import SchedulerPlugin

    kinds: list = []
    handle = s._rsched_task_finished_batch

    def spy(worker, msgs):
        kinds.append(type(msgs))
        handle(worker, msgs)

    s._rsched_task_finished_batch = spy
    assert await c.gather(c.map(inc, range(20))) == list(range(1, 21))
    assert FinishedRun in kinds

    seen: list = []

    class Memory(SchedulerPlugin):
        def transition(self, key, start, finish, *args, stimulus_id, **kwargs):
            if finish == "memory":
                seen.append(kwargs)

    s.add_plugin(Memory(), name="memory-watch")
    kinds.clear()
    assert await c.submit(inc, 100, key="watched") == 101
    assert FinishedRun in kinds
    [fields] = seen
    assert set(fields) == {
        "nbytes",
        "type",
        "typename",
        "metadata",
        "thread",
        "startstops",
        "status",
        "worker",
    }
    assert fields["typename"] == "int" and fields["worker"] == a.address
    assert fields["status"] == "OK" and type(fields["nbytes"]) is int
    assert fields["startstops"][0]["action"] == "compute"


@gen_cluster(client=True, nthreads=[("", 1)], scheduler_kwargs={"validate": False})
async def test_batches_past_the_offload_threshold_go_to_the_comms_write(c, s, a):
    """A batch whose bytes pass the offload threshold goes through the comm's async
    `write` (distributed's offloaded `to_frames`), as its dicts."""
    from dask_rsched._wire import WireBatchedSend
    from distributed.comm import utils as comm_utils

    calls: list = []
    write_async = WireBatchedSend._write_async

    async def spy(self, payload):
        calls.append(payload)
        await write_async(self, payload)

    threshold = comm_utils.OFFLOAD_THRESHOLD
    comm_utils.OFFLOAD_THRESHOLD = 200
    s.stream_comms[a.address].comm.allow_offload = True  # (off on this test's listener)
    WireBatchedSend._write_async = spy
    try:
        futs = c.map(inc, range(50), key=[f"k-{'x' * 150}-{i}" for i in range(50)])
        assert await c.gather(futs) == list(range(1, 51))
    finally:
        WireBatchedSend._write_async = write_async
        comm_utils.OFFLOAD_THRESHOLD = threshold
    assert calls
    assert all(type(m) is dict for p in calls for m in p)


async def _socket_batched_send(interval: str):
    """A `WireBatchedSend` writing to one end of a socket pair (the other end returned
    to read what it wrote)."""
    import socket
    import types

    from dask_rsched._wire import WireBatchedSend, WireComm
    from distributed.batched import BatchedSend

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    tcp = types.SimpleNamespace(
        deserialize=False,
        allow_offload=False,
        name="pair",
        local_info={},
        remote_info={},
        handshake_options={},
        max_shard_size=2**30,
        stream=types.SimpleNamespace(socket=ours),
        abort=lambda: None,
    )
    bsend = WireBatchedSend(BatchedSend(interval=interval))
    bsend.start(WireComm(tcp, b""))
    return bsend, theirs, ours


def _received(sock) -> bytes:
    try:
        return sock.recv(1 << 20)
    except BlockingIOError:
        return b""


def test_batches_due_together_are_written_by_one_loop_callback():
    """Batches falling due in the same millisecond are written by one loop callback:
    none before its deadline, each one once; a stream aborted meanwhile is passed by,
    and a flush that raises is reported as a loop callback's error is, without
    keeping the other streams of its callback from being written."""
    asyncio.run(_batches_due_together())


async def _batches_due_together() -> None:
    from dask_rsched import _wire

    loop = asyncio.get_running_loop()
    pairs = [await _socket_batched_send("20ms") for _ in range(4)]
    (a, ra, _), (b, rb, _), (c, rc, _), (d, rd, _) = pairs
    flushes = _wire._flushes(loop)
    for bsend, _, _ in pairs:
        bsend.next_deadline = time.time() + 0.02
    a.send({"op": "a"})
    tick = a._handle
    assert tick and tick in flushes.due and _received(ra) == b""
    for bsend in (d, b, c):  # the same millisecond as `a`'s (`d` before `b`)
        bsend.send({"op": "x"})
        flushes.due[bsend._handle].remove(bsend)
        bsend._handle = tick
        flushes.due[tick].append(bsend)
    c.abort()
    errors: list = []
    loop.set_exception_handler(lambda loop, context: errors.append(context))

    def fail() -> None:
        raise RuntimeError("flush failed")

    d._flush = fail
    try:
        started = time.time()
        while tick in flushes.due:
            await asyncio.sleep(0.001)
        assert time.time() - started >= 0.015
    finally:
        loop.set_exception_handler(None)
    assert b"a" in _received(ra) and b"x" in _received(rb)
    assert _received(rc) == b"" and _received(rd) == b""
    assert [type(e["exception"]) for e in errors] == [RuntimeError]
    assert a.batch_count == b.batch_count == 1 and c.batch_count == 0
    # due at once: one `call_soon` for both
    for bsend in (a, b):
        bsend.next_deadline = None
        bsend.send({"op": "now"})
    assert a._handle == b._handle == 0 and flushes.due[0] == [a, b]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert a.batch_count == b.batch_count == 2
    for _, theirs, ours in pairs:
        theirs.close()
        ours.close()


def test_lean_fake_workers_write_distributeds_bytes():
    """`benches/tcp_e2e.py --fake-workers lean` writes a batch of answers as
    distributed's `dumps` and TCP framing write it, and reads one as they read it."""
    from distributed.comm.tcp import _add_frames_header
    from distributed.protocol import dumps, loads
    from tcp_e2e import INT_TYPE, FakeWorker, lean_batch

    worker = FakeWorker("tcp://127.0.0.1:1", 1, "fake-7")
    compute = {"op": "compute-task", "key": ("x", 1), "run_id": 3, "priority": (0, 1)}
    answers = worker.answer([compute, {"op": "free-keys", "keys": [("y", 2)]}])
    assert [a["op"] for a in answers] == ["task-finished"]
    assert answers[0]["key"] == ("x", 1) and answers[0]["type"] == INT_TYPE
    steal = worker.answer([{"op": "steal-request", "key": ("x", 1)}])
    answers += steal
    frames, _, _ = _add_frames_header(dumps(answers))
    ours = lean_batch(answers)
    assert ours == b"".join(bytes(f) for f in frames)
    # distributed reads the answers back from the frame after the 24-byte header
    read = loads([ours[24:]])
    assert [(m["op"], m["key"]) for m in read] == [(a["op"], a["key"]) for a in answers]
    assert steal[0]["state"] == "memory"
    assert worker.answer([{"op": "close"}]) is None
