"""Side-by-side: the scheduler *process* over real TCP, pure Python vs on the engine.

The scheduler is the real `dask scheduler` CLI in its own process (`--preload
dask_rsched` for the engine). N fake workers live in one other process: each listens on
its own TCP address, registers through the real `register-worker` handshake, streams
with distributed's own `BatchedSend`, heartbeats, serves `get_data`, answers
`steal-request`, and answers every `compute-task` at once with a `task-finished`
carrying the durations a worker reports (the RSDS paper's zero-worker). With
`--fake-workers lean` each fake worker's stream (after the same handshake and
registration) is read and written by a few lines of this file instead of distributed's
comm and `BatchedSend`: the same bytes on the wire, at a tenth of the cost in their
process, so that on a small machine the fake workers limit the rate less and the
scheduler's ceiling shows. The graph comes from a real `Client` in this process. What
is measured is the scheduler process's CPU (psutil, user + system) from submission to
result, per task, and tasks per second over that wall time; the fake workers' CPU is
shown too, since on a small machine they can be what limits the rate.

    python benches/tcp_e2e.py [--tasks 20000] [--workers 10 100] [--threads 1 8]
        [--workload tree map] [--functions main importable] [--repeat 3] [--quick]
        [--engines python rust-tornado rust] [--fake-workers distributed lean]
        [--profile DIR] [--json FILE]

`--tasks` is the number of leaves of a fan-in-8 tree (20,000 leaves: 22,859 tasks) or
of `client.map`-like independent tasks. Medians of `--repeat` graphs per cluster, after
a warm-up graph. Work stealing is on (distributed's default). `rust-tornado` is the
engine with distributed's own worker streams (`distributed.scheduler.rsched-wire:
False`). `--profile DIR` records the scheduler with py-spy during the measured graphs
(`TCP_E2E_PROFILER` replaces the profiler command, e.g. `perf record -g -p`).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import operator
import os
import pickle
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgpack
import scheduler_e2e
from dask._task_spec import Task

HERE = Path(__file__).resolve()


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


# The functions a graph calls: defined in the driver's `__main__` (pickled by value,
# with cloudpickle, each time the scheduler sends a task, as for functions defined in a
# notebook or script) or importable ones (pickled by reference, as library code is).
FUNCTIONS = {"main": (inc, add), "importable": (operator.index, max)}


def tree_graph(n: int, prefix: str, functions: str = "main") -> tuple[dict, list]:
    leaf, node = FUNCTIONS[functions]
    dsk, root = scheduler_e2e.tree_graph(n, prefix=prefix, leaf=leaf, node=node)
    return dsk, [root]


def map_graph(n: int, prefix: str, functions: str = "main") -> tuple[dict, list]:
    leaf = FUNCTIONS[functions][0]
    dsk = {f"{prefix}inc-{i}": Task(f"{prefix}inc-{i}", leaf, i) for i in range(n)}
    return dsk, list(dsk)


# ---------------------------------------------------------------------------------
# The fake workers (their own process: `--serve-workers`)

METRICS = scheduler_e2e.METRICS  # what a worker's heartbeat reports
INT_TYPE = pickle.dumps(int)


class FakeWorker:
    """One zero-worker: what a `distributed.Worker` says on the wire, nothing else.
    Incoming run_specs are never unpickled (the stream is read with
    `deserialize=False`), as a worker in another process would unpickle them."""

    def __init__(self, scheduler: str, nthreads: int, name: str, lean: bool = False) -> None:
        self.scheduler = scheduler
        self.nthreads = nthreads
        self.name = name
        self.lean = lean
        self.memory: set = set()
        self.counts: dict = {}

    async def start(self, pool) -> None:
        from distributed.batched import BatchedSend
        from distributed.comm import connect
        from distributed.core import Server
        from distributed.versions import get_versions

        self.pool = pool
        self.server = Server({"get_data": self.get_data})
        await self.server.listen("tcp://127.0.0.1:0")
        self.address = self.server.address
        comm = await connect(self.scheduler, deserialize=False)
        comm.name = "Worker->Scheduler"
        await comm.write(
            dict(
                op="register-worker",
                reply=False,
                address=self.address,
                status="running",
                nthreads=self.nthreads,
                name=self.name,
                now=time.time(),
                resources={},
                memory_limit=2**34,
                local_directory="/tmp",
                services={},
                nanny=None,
                pid=os.getpid(),
                versions=get_versions(),
                metrics=METRICS,
                extra={},
                stimulus_id=f"worker-connect-{time.time()}",
                server_id=f"fake-{self.name}",
            ),
            serializers=["msgpack"],
        )
        response = await comm.read(deserializers=["msgpack"])
        assert response["status"] == "OK", response
        self.heartbeat_interval = response["heartbeat-interval"]
        self.comm = comm
        if self.lean:
            self.stream = LeanStream(self, comm)
            self.tasks = []
        else:
            self.stream = BatchedSend(interval="2ms")
            self.stream.start(comm)
            self.tasks = [asyncio.ensure_future(self.handle_scheduler())]
        self.tasks.append(asyncio.ensure_future(self.heartbeat()))

    async def heartbeat(self) -> None:
        rpc = self.pool(self.scheduler)
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            response = await rpc.heartbeat_worker(
                address=self.address,
                now=time.time(),
                metrics=METRICS,
                executing={},
                extensions={},
            )
            self.heartbeat_interval = response.get("heartbeat-interval", 1)

    async def handle_scheduler(self) -> None:
        from distributed.comm.core import CommClosedError

        try:
            while True:
                out = self.answer(await self.comm.read())
                if out is None:
                    return
                if out:
                    self.stream.send(*out)
        except CommClosedError:
            return

    def answer(self, msgs) -> list | None:
        """The answers to a batch from the scheduler (None at `close`)."""
        thread = 1000 + int(self.name.rsplit("-", 1)[-1])
        out = []
        now = time.time()
        for msg in msgs:
            op = msg["op"]
            self.counts[op] = self.counts.get(op, 0) + 1
            if op == "compute-task":
                key = msg["key"]
                self.memory.add(key)
                out.append(
                    {
                        "op": "task-finished",
                        "key": key,
                        "run_id": msg["run_id"],
                        "nbytes": 28,
                        "type": INT_TYPE,
                        "typename": "int",
                        "metadata": {},
                        "thread": thread,
                        "startstops": [{"action": "compute", "start": now, "stop": time.time()}],
                        "stimulus_id": f"task-finished-{now}",
                        "status": "OK",
                    }
                )
            elif op == "free-keys" or op == "remove-replicas":
                self.memory.difference_update(msg["keys"])
            elif op == "steal-request":
                key = msg["key"]
                out.append(
                    {
                        "op": "steal-response",
                        "key": key,
                        "state": "memory" if key in self.memory else None,
                        "stimulus_id": f"steal-response-{now}",
                    }
                )
            elif op == "close":
                return None
        return out

    async def get_data(self, comm, keys=(), who=None, serializers=None):
        from distributed.core import Status

        data = {k: 1 for k in keys if k in self.memory}
        await comm.write({"status": "OK", "data": data}, serializers=serializers)
        response = await comm.read(deserializers=serializers)
        assert response == "OK", response
        return Status.dont_reply


def lean_batch(msgs: list) -> bytes:
    """A batch of plain messages as distributed writes it on TCP: `dumps` packs it
    into one msgpack frame, `_add_frames_header` puts the frames' prelude before it."""
    frame = msgpack.packb(msgs, use_bin_type=True)
    return struct.pack("<QQQ", 16 + len(frame), 1, len(frame)) + frame


class LeanStream:
    """A fake worker's stream to the scheduler without distributed's comm objects:
    once the comm's handshake and the registration are done, its socket is read and
    written here, in distributed's TCP framing (a u64 length, the frames' count and
    lengths, the frames) with the answers msgpacked as distributed's `dumps` packs
    plain messages, batched at most every 2 ms as a worker's `BatchedSend`. The bytes
    on the wire are what the other fake workers send; only their cost in this process
    is less (so that, on a small machine, this process limits the rate less)."""

    INTERVAL = 0.002

    def __init__(self, worker: FakeWorker, comm) -> None:
        self.worker = worker
        self.comm = comm  # holds the socket open
        stream = comm.stream
        self.rbuf = bytearray(stream._read_buffer[: stream._read_buffer_size])
        stream.io_loop.remove_handler(stream.socket)
        stream._state = None
        self.sock = stream.socket
        self.fd = self.sock.fileno()
        self.wbuf = bytearray()
        self.out: list = []
        self.next_deadline = 0.0
        self.flush_due = False
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self.on_readable)
        self.on_readable()

    def on_readable(self) -> None:
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.loop.remove_reader(self.fd)
            return
        self.rbuf += data
        rbuf = self.rbuf
        pos = 0
        while len(rbuf) - pos >= 8:
            (total,) = struct.unpack_from("<Q", rbuf, pos)
            if len(rbuf) - pos - 8 < total:
                break
            (nframes,) = struct.unpack_from("<Q", rbuf, pos + 8)
            (first,) = struct.unpack_from("<Q", rbuf, pos + 16)
            start = pos + 16 + 8 * nframes
            msgs = msgpack.unpackb(
                rbuf[start : start + first], raw=False, use_list=False, strict_map_key=False
            )
            pos += 8 + total
            out = self.worker.answer(msgs if isinstance(msgs, tuple) else (msgs,))
            if out is None:
                self.loop.remove_reader(self.fd)
                return
            self.out += out
        del rbuf[:pos]
        if self.out and not self.flush_due:
            delay = self.next_deadline - time.time()
            self.flush_due = True
            if delay <= 0:
                self.loop.call_soon(self.flush)
            else:
                self.loop.call_later(delay, self.flush)

    def flush(self) -> None:
        self.flush_due = False
        out, self.out = self.out, []
        self.wbuf += lean_batch(out)
        self.next_deadline = time.time() + self.INTERVAL
        self.write()

    def write(self) -> None:
        try:
            sent = self.sock.send(self.wbuf)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.loop.remove_writer(self.fd)
            return
        del self.wbuf[:sent]
        if self.wbuf:
            self.loop.add_writer(self.fd, self.write)
        else:
            self.loop.remove_writer(self.fd)


async def serve_workers(scheduler: str, n: int, nthreads: int, lean: bool = False) -> None:
    from distributed.core import ConnectionPool

    pool = await ConnectionPool(limit=64)
    workers = [FakeWorker(scheduler, nthreads, f"fake-{i}", lean) for i in range(n)]
    for w in workers:
        await w.start(pool)
    print("ready", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    counts: dict = {}
    for w in workers:
        for op, c in w.counts.items():
            counts[op] = counts.get(op, 0) + c
    print(json.dumps(counts), flush=True)
    os._exit(0)


# ---------------------------------------------------------------------------------
# The driver


def start_scheduler(engine: str, tmp: Path) -> tuple[subprocess.Popen, str]:
    sfile = tmp / f"scheduler-{engine}.json"
    cmd = [
        shutil.which("dask") or "dask",
        "scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--no-dashboard",
        "--scheduler-file",
        str(sfile),
    ]
    env = dict(os.environ, DASK_LOGGING__DISTRIBUTED="warning")
    if engine != "python":
        cmd += ["--preload", "dask_rsched"]
    if engine == "rust-tornado":  # the engine with distributed's worker streams
        env["DASK_DISTRIBUTED__SCHEDULER__RSCHED_WIRE"] = "False"
    log = open(tmp / f"scheduler-{engine}.log", "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)
    proc.log_path = log.name
    deadline = time.time() + 60
    while not sfile.exists() or not sfile.read_text().strip():
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"scheduler did not start: {Path(log.name).read_text()}")
        time.sleep(0.05)
    time.sleep(0.2)
    return proc, json.loads(sfile.read_text())["address"]


def start_workers(address: str, n: int, nthreads: int, lean: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, str(HERE), "--serve-workers", address, "--n", str(n)]
    cmd += ["--nthreads", str(nthreads)] + (["--lean"] if lean else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    if line != "ready":
        raise RuntimeError(f"fake workers did not start: {line!r}")
    return proc


PROFILER = ["py-spy", "record", "-r", "250", "-f", "raw", "--nonblocking", "-p"]
if os.environ.get("TCP_E2E_PROFILER"):  # e.g. "perf record -F 999 -g -p" (output: -o)
    PROFILER = os.environ["TCP_E2E_PROFILER"].split()


def cpu(proc) -> float:
    t = proc.cpu_times()
    return t.user + t.system


async def measure(client, workload: str, functions: str, n: int, prefix: str, sproc, wproc) -> dict:
    from distributed import wait

    dsk, outs = (tree_graph if workload == "tree" else map_graph)(n, prefix, functions)
    ntasks = len(dsk)
    c0, w0, t0 = cpu(sproc), cpu(wproc), time.perf_counter()
    futures = client.get(dsk, outs, sync=False)
    if workload == "tree":
        await client.gather(futures)
    else:
        await wait(futures)
    t1 = time.perf_counter()
    c1, w1 = cpu(sproc), cpu(wproc)
    del futures
    while len(await client.run_on_scheduler(_count_tasks)) > 0:
        await asyncio.sleep(0.05)
    return {
        "tasks": ntasks,
        "wall": t1 - t0,
        "cpu_us": (c1 - c0) / ntasks * 1e6,
        "workers_cpu_us": (w1 - w0) / ntasks * 1e6,
        "tasks_per_s": ntasks / (t1 - t0),
    }


def _count_tasks(dask_scheduler=None):
    return list(dask_scheduler.tasks)[:1]


async def run_one(engine, workload, functions, n, n_workers, nthreads, args, tmp) -> dict:
    import psutil
    from distributed import Client

    if __name__ != "__main__":  # imported (the suite): send our functions by value
        import cloudpickle

        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    sproc, address = start_scheduler(engine, tmp)
    wproc = start_workers(address, n_workers, nthreads, args.fake_workers == "lean")
    try:
        async with Client(address, asynchronous=True) as client:
            await client.wait_for_workers(n_workers)
            engine_seen = await client.run_on_scheduler(_engine_name)
            assert engine_seen == engine.partition("-")[0], (engine_seen, engine)
            sp, wp = psutil.Process(sproc.pid), psutil.Process(wproc.pid)
            await measure(client, workload, functions, max(n // 10, 100), "warm-", sp, wp)
            spy = None
            if args.profile:
                name = f"{engine}-{workload}-{functions}-{n_workers}w-{nthreads}t.txt"
                out = Path(args.profile) / name
                spy = subprocess.Popen(
                    [*PROFILER, str(sproc.pid), "-o", str(out)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                await asyncio.sleep(1)
            runs = [
                await measure(client, workload, functions, n, f"r{i}-", sp, wp)
                for i in range(args.repeat)
            ]
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
    finally:
        wproc.send_signal(signal.SIGTERM)
        try:
            counts = json.loads(wproc.communicate(timeout=30)[0].strip().splitlines()[-1])
        except Exception:
            counts = {}
        sproc.send_signal(signal.SIGINT)
        try:
            sproc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            sproc.kill()
    row = {
        k: statistics.median(r[k] for r in runs)
        for k in ("wall", "cpu_us", "workers_cpu_us", "tasks_per_s")
    }
    row.update(
        engine=engine,
        workload=workload,
        functions=functions,
        workers=n_workers,
        threads=nthreads,
        tasks=runs[0]["tasks"],
        fake_workers=args.fake_workers,
        runs=runs,
        ops=counts,
    )
    return row


def _engine_name(dask_scheduler=None):
    return "rust" if hasattr(dask_scheduler, "_rsched_engine") else "python"


REPORT_HEADER = (
    "| workload | functions | workers | threads | tasks "
    "| scheduler CPU µs/task Python / engine | ratio | tasks/s Python / engine "
    "| fake workers' CPU µs/task Python / engine |"
)
REPORT_ALIGN = "|---|---|---:|---:|---:|---:|---:|---:|---:|"


def report_rows(rows: list[dict]) -> list[str]:
    """One table row per configuration measured on both engines."""

    def config(r: dict) -> tuple:
        lean = r.get("fake_workers") == "lean"
        return (r["workload"], r["functions"], r["workers"], r["threads"], lean)

    by = {(*config(r), r["engine"]): r for r in rows}
    lines = []
    for wl, fn, nw, nt, lean in dict.fromkeys(config(r) for r in rows):
        p, e = by.get((wl, fn, nw, nt, lean, "python")), by.get((wl, fn, nw, nt, lean, "rust"))
        if p is None or e is None:
            continue
        workers = f"{nw} (lean)" if lean else nw
        lines.append(
            f"| {wl} | {fn} | {workers} | {nt} | {p['tasks']:,} "
            f"| {p['cpu_us']:.0f} / {e['cpu_us']:.0f} "
            f"| {p['cpu_us'] / e['cpu_us']:.2f}x | {p['tasks_per_s']:,.0f} / "
            f"{e['tasks_per_s']:,.0f} | {p['workers_cpu_us']:.0f} / {e['workers_cpu_us']:.0f} |"
        )
    return lines


def report(rows: list[dict]) -> str:
    return "\n".join([REPORT_HEADER, REPORT_ALIGN, *report_rows(rows)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--workload", nargs="+", choices=("tree", "map"), default=["tree", "map"])
    parser.add_argument(
        "--functions", nargs="+", choices=tuple(FUNCTIONS), default=["main", "importable"]
    )
    parser.add_argument(
        "--engines",
        nargs="+",
        choices=("python", "rust-tornado", "rust"),
        default=["python", "rust"],
    )
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5,000 leaves, 10 workers, tree")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--profile", help="py-spy the scheduler into this folder (raw stacks)")
    parser.add_argument("--serve-workers", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--nthreads", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--lean", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--fake-workers",
        choices=("distributed", "lean"),
        default="distributed",
        help="the fake workers' stream: distributed's comm and BatchedSend, or the same "
        "bytes written by a few lines of their own (cheaper in their process)",
    )
    args = parser.parse_args()
    if args.serve_workers:
        asyncio.run(serve_workers(args.serve_workers, args.n, args.nthreads, args.lean))
        return
    if args.quick:
        args.tasks, args.workers, args.threads = 5000, [10], [1]
        args.workload, args.functions = ["tree"], ["importable"]
        args.repeat = 1
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload, functions in itertools.product(args.workload, args.functions):
            for n_workers in args.workers:
                for nthreads in args.threads:
                    for engine in args.engines:
                        row = asyncio.run(
                            run_one(
                                engine,
                                workload,
                                functions,
                                args.tasks,
                                n_workers,
                                nthreads,
                                args,
                                Path(tmp),
                            )
                        )
                        rows.append(row)
                        print(
                            f"{engine:6} {workload:4} {functions:10} "
                            f"workers={n_workers:<3} threads={nthreads} "
                            f"tasks={row['tasks']:,}: scheduler {row['cpu_us']:.1f} µs/task, "
                            f"{row['tasks_per_s']:,.0f} tasks/s, fake workers "
                            f"{row['workers_cpu_us']:.1f} µs/task",
                            flush=True,
                        )
    print()
    print(report(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
