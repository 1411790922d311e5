"""Side-by-side: a real `distributed.Scheduler`, pure Python vs on the engine, driven
through its own comm handlers.

Workers register through the real `register-worker` handler (`Scheduler.add_worker`,
with an in-process comm that never sends anything back), the graph goes in through
`_create_taskstate_from_graph` (what `update-graph` calls after deserialising), and every
`compute-task` message the scheduler hands to a worker's stream is answered with the
`task-finished` handler (`handle_task_finished`) until the root is in memory. The cost
measured is the scheduler's own: transitions, worker choice, plugins (the shuffle
plugin's `transition` hook included), message creation and `send_all`.

    python benches/scheduler_e2e.py [--tasks 100000] [--workers 10 100] [--quick]
        [--workload tree|map|shuffle|fanout] [--task-duration SECONDS]
        [--engines python rust]

Both engines run with work stealing on (distributed's default) and off. Stealing's
cost here is its per-transition bookkeeping; `balance()` runs on its periodic callback,
which this tight loop hardly gives a chance to fire.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import dask
from dask._task_spec import Task, TaskRef


def inc(x):
    return x + 1


def add(*xs):
    return sum(xs)


def tree_graph(n: int, fanin: int = 8, prefix: str = "", leaf=inc, node=add) -> tuple[dict, str]:
    """A tree reduction: n `leaf(i)` tasks summed by `node` tasks of fan-in `fanin`."""
    dsk: dict = {}
    layer = []
    for i in range(n):
        k = f"{prefix}inc-{i}"
        dsk[k] = Task(k, leaf, i)
        layer.append(k)
    level = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), fanin):
            k = f"{prefix}sum-{level}-{j}"
            dsk[k] = Task(k, node, *[TaskRef(d) for d in layer[j : j + fanin]])
            nxt.append(k)
        layer = nxt
        level += 1
    return dsk, layer[0]


def map_graph(n: int) -> tuple[dict, set, dict]:
    """`client.map`-like: n independent tasks, all wanted."""
    dsk = {f"inc-{i}": Task(f"inc-{i}", inc, i) for i in range(n)}
    return dsk, set(dsk), {}


def shuffle_graph(n: int) -> tuple[dict, set, dict]:
    """All-to-all: sqrt(n) inputs, each split into sqrt(n) pieces, and sqrt(n)
    outputs each gathering one piece of every input (a task-based shuffle)."""
    k = max(2, int(n**0.5))
    dsk: dict = {}
    for i in range(k):
        dsk[f"input-{i}"] = Task(f"input-{i}", inc, i)
        for j in range(k):
            key = f"split-{i}-{j}"
            dsk[key] = Task(key, add, TaskRef(f"input-{i}"))
    outputs = set()
    for j in range(k):
        key = f"output-{j}"
        dsk[key] = Task(key, add, *[TaskRef(f"split-{i}-{j}") for i in range(k)])
        outputs.add(key)
    return dsk, outputs, {}


def fanout_graph(n: int, addresses: list[str]) -> tuple[dict, set, dict]:
    """One root and n dependents; a third restricted to one of the first few workers
    (loosely), a third needing a resource every worker has."""
    dsk: dict = {"root": Task("root", inc, 0)}
    workers: dict = {}
    loose: dict = {}
    resources: dict = {}
    for i in range(n):
        key = f"leaf-{i}"
        dsk[key] = Task(key, add, TaskRef("root"))
        if i % 3 == 0:
            workers[key] = [addresses[i % min(4, len(addresses))]]
            loose[key] = True
        elif i % 3 == 1:
            resources[key] = {"slot": 1}
    annotations = {"workers": workers, "allow_other_workers": loose, "resources": resources}
    return dsk, set(dsk) - {"root"}, annotations


WORKLOADS = ("tree", "map", "shuffle", "fanout", "futures", "churn")


class SilentComm:
    """A worker's end of the connection that never answers."""

    name = "bench"
    peer_address = "bench://worker"

    def __init__(self) -> None:
        self.local_info: dict = {}
        self.remote_info: dict = {}
        self.handshake_options: dict = {}
        self._closed = False
        self._never = asyncio.Event()
        self.written: list = []

    async def write(self, msg, serializers=None, on_error=None):
        self.written.extend(msg if isinstance(msg, list) else [msg])
        return 0

    async def read(self, deserializers=None):
        from distributed.comm.core import CommClosedError

        await self._never.wait()
        raise CommClosedError("bench comm closed")

    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        self._never.set()

    def abort(self) -> None:
        self._closed = True
        self._never.set()


class Collector:
    """A comm that keeps every message sent (tests read them)."""

    def __init__(self) -> None:
        self.msgs: list = []

    def send(self, *msgs) -> None:
        self.msgs.extend(msgs)

    def start(self, comm) -> None:
        pass

    def closed(self) -> bool:
        return False

    def abort(self) -> None:
        pass

    async def close(self, timeout=None) -> None:
        pass


class WorkerStream(Collector):
    """A worker's stream in the benchmark. Keeps what the fake worker needs to answer,
    the key and run_id of each `compute-task`, and drops the message, as a real
    BatchedSend serializes and drops it within its 2 ms interval. The fake workers'
    state would live in other processes: it is kept in flat lists, so that it adds no
    objects for CPython's cyclic GC to track (a dict or tuple per task in flight makes
    full collections more frequent as rounds grow with the number of workers)."""

    def __init__(self) -> None:
        self.keys: list = []
        self.run_ids: list = []

    def send(self, *msgs) -> None:
        for m in msgs:
            if m.get("op") == "compute-task":
                self.keys.append(m["key"])
                self.run_ids.append(m["run_id"])


METRICS = {
    "bandwidth": {"total": 100e6, "workers": {}, "types": {}},
    "digests_total_since_heartbeat": {},
    "memory": 0,
    "spilled_bytes": {"memory": 0, "disk": 0},
    "managed_bytes": 0,
    "task_counts": {},
    "event_loop_interval": 0.02,
    "transfer": {
        "incoming_bytes": 0,
        "incoming_count": 0,
        "incoming_count_total": 0,
        "outgoing_bytes": 0,
        "outgoing_count": 0,
        "outgoing_count_total": 0,
    },
}


def register_worker(
    s,
    comm,
    address: str,
    server_id: str,
    *,
    nthreads: int,
    resources: dict,
    now: float,
    stimulus_id: str,
):
    """The real `register-worker` handler (`Scheduler.add_worker`) for a fake worker
    behind `comm`; the coroutine runs until the comm closes."""
    return s.add_worker(
        comm,
        address=address,
        status="running",
        server_id=server_id,
        nthreads=nthreads,
        name=address,
        resolve_address=False,
        now=now,
        resources=resources,
        memory_limit=2**32,
        metrics=METRICS,
        pid=0,
        services={},
        local_directory="/tmp",
        versions={},
        nanny="",
        extra={},
        stimulus_id=stimulus_id,
    )


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


async def start_worker(s, address: str, server_id: str) -> tuple[str, SilentComm, asyncio.Future]:
    """Register one fake worker through the real handler (see `take_stream`)."""
    comm = SilentComm()
    task = asyncio.ensure_future(
        register_worker(
            s,
            comm,
            address,
            server_id,
            nthreads=2,
            resources={"slot": 4},
            now=time.time(),
            stimulus_id=f"add-{server_id}",
        )
    )
    return address, comm, task


def take_stream(s, address: str, comm: SilentComm) -> None:
    """Swap the worker's BatchedSend for a WorkerStream, keeping what it already sent (a
    joining worker is handed queued tasks at once)."""
    batched = s.stream_comms[address]
    collector = WorkerStream()
    collector.send(*comm.written, *batched.buffer)
    batched.buffer.clear()
    comm.written.clear()
    s.stream_comms[address] = collector


def submit(s, dsk: dict, wanted: set, annotations: dict, ordered: dict, sid: str) -> None:
    s._create_taskstate_from_graph(
        start=time.time(),
        dsk=dsk,
        keys=wanted,
        ordered=ordered,
        client="bench-client",
        annotations_by_type=annotations,
        global_annotations=None,
        stimulus_id=sid,
        submitting_task=None,
        span_metadata={"collections": []},
    )


def answer_all(s, startstops: list, counter: list) -> int:
    """Answer every `compute-task` sent so far with `task-finished`; returns how many."""
    pending = []
    for addr, c in s.stream_comms.items():
        if c.keys:
            pending.append((addr, c.keys, c.run_ids))
            c.keys, c.run_ids = [], []
    n = 0
    for addr, keys, run_ids in pending:
        for key, run_id in zip(keys, run_ids, strict=True):
            s.handle_task_finished(
                key=key,
                worker=addr,
                stimulus_id=f"tf-{counter[0]}",
                run_id=run_id,
                nbytes=28,
                type=b"int",
                typename="int",
                metadata={},
                startstops=startstops,
                thread=0,
                status="OK",
            )
            counter[0] += 1
            n += 1
    return n


def build_graph(workload: str, n: int, addresses: list[str]) -> tuple[dict, set, dict]:
    if workload in ("tree", "churn"):
        dsk, root = tree_graph(n)
        return dsk, {root}, {}
    if workload == "map":
        return map_graph(n)
    if workload == "shuffle":
        return shuffle_graph(n)
    if workload == "fanout":
        return fanout_graph(n, addresses)
    raise ValueError(f"unknown workload {workload!r}")


def new_scheduler(engine: str):
    """A Scheduler (not started) on `engine`: "python" or "rust"."""
    import dask_rsched
    from distributed import Scheduler

    if engine == "rust":
        dask_rsched.install()
    try:
        return Scheduler(dashboard=False, validate=False, port=0)
    finally:
        dask_rsched.uninstall()


async def run(
    engine: str,
    n: int,
    n_workers: int,
    stealing: bool,
    task_duration: float | None = None,
    workload: str = "tree",
    queuing: bool = True,
    memory: bool = False,
) -> dict:
    """One configuration on one engine. Returns seconds for graph submission and for
    the run, and the scheduler's memory growth for the submitted graph.

    `memory=True` traces Python allocations (tracemalloc) during submission and stops
    there; tracemalloc slows the submission, so its timings are not reported."""
    # distributed's config defaults are registered on import: before the config is set
    # (leaving `dask.config.set` would otherwise take them away again)
    import distributed  # noqa: F401

    config = {"distributed.scheduler.work-stealing": stealing}
    if not queuing:
        config["distributed.scheduler.worker-saturation"] = float("inf")
    with dask.config.set(config):
        s = new_scheduler(engine)
        await s
        try:
            return await _drive(s, n, n_workers, task_duration, workload, memory)
        finally:
            await s.close()


async def _drive(s, n, n_workers, task_duration, workload, memory) -> dict:
    workers = []
    for w in range(n_workers):
        workers.append(await start_worker(s, f"tcp://10.0.{w // 250}.{w % 250}:1234", f"w{w}"))
    while len(s.workers) < n_workers or len(s.stream_comms) < n_workers:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    for addr, comm, _ in workers:
        take_stream(s, addr, comm)
    s.client_comms["bench-client"] = WorkerStream()  # drops the client's messages
    s.client_desires_keys(keys=[], client="bench-client")
    # Without reported durations every prefix stays "unknown", and stealing (both
    # engines) re-buckets all its processing tasks at each completion.
    startstops = (
        [{"action": "compute", "start": 0.0, "stop": task_duration}]
        if task_duration is not None
        else []
    )
    try:
        counter = [0]
        out: dict = {}
        if workload == "futures":
            # Many small submissions: submit one task, answer it, release it (the
            # `client.submit(...).result()` loop).
            gc.collect()
            t0 = time.perf_counter()
            for i in range(n):
                key = f"f-{i}"
                submit(s, {key: Task(key, inc, i)}, {key}, {}, {key: 0}, f"sub-{i}")
                answer_all(s, startstops, counter)
                s.client_releases_keys(keys=[key], client="bench-client", stimulus_id=f"rel-{i}")
            t2 = time.perf_counter()
            assert counter[0] == n, counter
            out = {"tasks": n, "graph": 0.0, "run": t2 - t0, "total": t2 - t0}
        else:
            dsk, wanted, annotations = build_graph(workload, n, sorted(s.workers))
            ordered = dask.order.order(dsk)
            gc.collect()
            if memory:
                import tracemalloc

                tracemalloc.start()
                before = (rss(), tracemalloc.get_traced_memory()[0])
            else:
                before = (rss(), 0)
            t0 = time.perf_counter()
            submit(s, dsk, wanted, annotations, ordered, "bench-graph")
            t1 = time.perf_counter()
            gc.collect()
            out["rss_per_task"] = (rss() - before[0]) / len(dsk)
            if memory:
                out["traced_per_task"] = (tracemalloc.get_traced_memory()[0] - before[1]) / len(dsk)
                tracemalloc.stop()
                out["tasks"] = len(dsk)
                return out
            t1b = time.perf_counter()
            # Worker churn: 20 times during the run, the worker holding the least data
            # leaves (its processing tasks are rescheduled and its data recomputed, as
            # when adaptive scaling removes a worker) and a new one joins.
            churn_every = max(1, len(dsk) // 20) if workload == "churn" else 0
            next_churn = churn_every
            joined = n_workers
            while answer_all(s, startstops, counter):
                if churn_every and counter[0] >= next_churn and joined < n_workers + 20:
                    next_churn += churn_every
                    addr = min(s.workers.values(), key=lambda ws: len(ws.has_what)).address
                    i = next(i for i, w in enumerate(workers) if w[0] == addr)
                    addr, comm, _ = workers.pop(i)
                    await s.remove_worker(addr, stimulus_id=f"churn-{joined}", expected=True)
                    comm.abort()
                    new = f"tcp://10.1.{joined // 250}.{joined % 250}:1234"
                    workers.append(await start_worker(s, new, f"w{joined}"))
                    joined += 1
                    while new not in s.stream_comms:
                        await asyncio.sleep(0)
                    take_stream(s, new, workers[-1][1])
            t2 = time.perf_counter()
            assert all(s.tasks[k].state == "memory" for k in wanted)
            if workload != "churn":
                assert counter[0] == len(dsk), (counter[0], len(dsk))
            run_s = t2 - t1b
            out.update(tasks=len(dsk), graph=t1 - t0, run=run_s, total=(t1 - t0) + run_s)
            out["answered"] = counter[0]
    finally:
        for _, comm, _ in workers:  # the workers hang up; the scheduler removes them
            comm.abort()
        await asyncio.gather(*(t for _, _, t in workers), return_exceptions=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--quick", action="store_true", help="10,000 tasks, 10 workers")
    parser.add_argument(
        "--task-duration",
        type=float,
        default=None,
        help="compute time the fake workers report (seconds); default: none reported",
    )
    parser.add_argument(
        "--engines", nargs="+", default=["python", "rust"], choices=["python", "rust"]
    )
    parser.add_argument("--workload", choices=WORKLOADS, default="tree")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.workers = 10_000, [10]
    import logging

    for name in ("distributed", "distributed.core", "distributed.scheduler", "dask_rsched"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    print(f"{'workers':>7} {'tasks':>7} {'engine':<28} {'graph s':>8} {'run s':>7} {'us/task':>8}")
    for n_workers in args.workers:
        results = {}
        for stealing in (True, False):
            for engine in args.engines:
                r = asyncio.run(
                    run(engine, args.tasks, n_workers, stealing, args.task_duration, args.workload)
                )
                label = {"python": "pure Python", "rust": "dask-rsched"}[engine] + (
                    " (stealing on)" if stealing else " (stealing off)"
                )
                results[(engine, stealing)] = r
                print(
                    f"{n_workers:>7} {r['tasks']:>7} {label:<28} {r['graph']:>8.3f} "
                    f"{r['run']:>7.3f} {r['total'] / r['tasks'] * 1e6:>8.1f}",
                    flush=True,
                )
        if len(args.engines) < 2:
            continue
        ratio = {
            st: results[("python", st)]["total"] / results[("rust", st)]["total"]
            for st in (True, False)
        }
        print(
            f"{'':>7} ratio pure Python / engine: {ratio[True]:.2f}x (stealing on, "
            f"distributed's default), {ratio[False]:.2f}x (stealing off)"
        )


if __name__ == "__main__":
    main()
