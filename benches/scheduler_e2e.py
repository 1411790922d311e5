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


def tree_graph(n: int, fanin: int = 8) -> tuple[dict, str]:
    dsk: dict = {}
    layer = []
    for i in range(n):
        k = f"inc-{i}"
        dsk[k] = Task(k, inc, i)
        layer.append(k)
    level = 0
    while len(layer) > 1:
        nxt = []
        for j in range(0, len(layer), fanin):
            k = f"sum-{level}-{j}"
            dsk[k] = Task(k, add, *[TaskRef(d) for d in layer[j : j + fanin]])
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


WORKLOADS = ("tree", "map", "shuffle", "fanout")


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

    async def write(self, msg, serializers=None, on_error=None):
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


async def run(
    engine: str,
    n: int,
    n_workers: int,
    stealing: bool,
    task_duration: float | None = None,
    workload: str = "tree",
) -> dict:
    import dask_rsched
    from distributed import Scheduler

    with dask.config.set({"distributed.scheduler.work-stealing": stealing}):
        if engine == "rust":
            dask_rsched.install()
        try:
            s = Scheduler(dashboard=False, validate=False, port=0)
        finally:
            dask_rsched.uninstall()
    await s
    try:
        background = []
        comms = []
        for w in range(n_workers):
            addr = f"tcp://10.0.{w // 250}.{w % 250}:1234"
            comms.append(SilentComm())
            background.append(
                asyncio.ensure_future(
                    register_worker(
                        s,
                        comms[-1],
                        addr,
                        f"w{w}",
                        nthreads=2,
                        resources={"slot": 4},
                        now=time.time(),
                        stimulus_id=f"add-{w}",
                    )
                )
            )
        while len(s.workers) < n_workers or len(s.stream_comms) < n_workers:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        for addr in list(s.stream_comms):
            s.stream_comms[addr] = Collector()
        s.client_comms["bench-client"] = Collector()
        s.client_desires_keys(keys=[], client="bench-client")

        annotations: dict = {}
        if workload == "tree":
            dsk, root = tree_graph(n)
            wanted = {root}
        elif workload == "map":
            dsk, wanted, annotations = map_graph(n)
        elif workload == "shuffle":
            dsk, wanted, annotations = shuffle_graph(n)
        else:
            dsk, wanted, annotations = fanout_graph(n, sorted(s.workers))
        ordered = dask.order.order(dsk)
        gc.collect()
        t0 = time.perf_counter()
        s._create_taskstate_from_graph(
            start=time.time(),
            dsk=dsk,
            keys=wanted,
            ordered=ordered,
            client="bench-client",
            annotations_by_type=annotations,
            global_annotations=None,
            stimulus_id="bench-graph",
            submitting_task=None,
            span_metadata={"collections": []},
        )
        t1 = time.perf_counter()
        # Without reported durations every prefix stays "unknown", and stealing (both
        # engines) re-buckets all its processing tasks at each completion.
        startstops = (
            [{"action": "compute", "start": 0.0, "stop": task_duration}]
            if task_duration is not None
            else []
        )
        finished = 0
        while True:
            pending = []
            for addr, c in s.stream_comms.items():
                for m in c.msgs:
                    if m.get("op") == "compute-task":
                        pending.append((addr, m))
                c.msgs.clear()
            if not pending:
                break
            for addr, m in pending:
                s.handle_task_finished(
                    key=m["key"],
                    worker=addr,
                    stimulus_id=f"tf-{finished}",
                    run_id=m["run_id"],
                    nbytes=28,
                    type=b"int",
                    typename="int",
                    metadata={},
                    startstops=startstops,
                    thread=0,
                    status="OK",
                )
                finished += 1
        t2 = time.perf_counter()
        assert all(s.tasks[k].state == "memory" for k in wanted)
        assert finished == len(dsk), (finished, len(dsk))
        for comm in comms:  # the workers hang up; the scheduler removes them
            comm.abort()
        await asyncio.gather(*background, return_exceptions=True)
        return {"tasks": len(dsk), "graph": t1 - t0, "run": t2 - t1, "total": t2 - t0}
    finally:
        await s.close()


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
