"""Work stealing: the engine against distributed's `WorkStealing`, side by side.

Two real Schedulers (pure Python with distributed's extension, and on the engine) get
the same stimuli through their real handlers: workers registering over an in-process
comm, graphs with restrictions and dependencies, tasks finishing with fixed durations and
sizes, `balance()` calls, `steal-response`s in every state a worker can answer, workers
leaving and joining. The fake workers' answers are a function of the messages, so as
long as both schedulers say the same things the stimuli stay the same. After every step
both must agree on the messages sent, every task's state and worker, the stealing
containers (`stealable` buckets compared in iteration order), `in_flight` with its
occupancy and durations, the metrics and the stealing log.

`STEAL_EXAMPLES` sets the number of random scenarios (default 6).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import sys
from pathlib import Path
from typing import Any

import dask
import pytest
from dask._task_spec import Task, TaskRef
from distributed import Scheduler
from distributed.utils_test import gen_test

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benches"))
import dask_rsched
from scheduler_e2e import Collector, SilentComm, register_worker

EXAMPLES = int(os.environ.get("STEAL_EXAMPLES", "6"))
RESPONSES = ["ready", "waiting", "constrained", "executing", "memory", "released", None]


def inc(x: int) -> int:
    return x + 1


def add(*xs: int) -> int:
    return sum(xs)


class Cluster:
    """One scheduler with fake workers whose comms collect what it sends."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.s: Any = None
        self.background: list = []
        self.comms: dict[str, SilentComm] = {}
        self.sent: list[dict] = []

    async def start(self) -> None:
        with dask.config.set({"distributed.scheduler.work-stealing": True}):
            if self.engine == "rust":
                dask_rsched.install()
            try:
                self.s = Scheduler(dashboard_address=":0", validate=True, port=0)
            finally:
                dask_rsched.uninstall()
        await self.s
        pcs = self.s.periodic_callbacks
        if "stealing" in pcs:  # balance() is called by the test
            pcs.pop("stealing").stop()
        self.s.client_comms["c"] = Collector()
        self.s.client_desires_keys(keys=[], client="c")

    async def add_worker(self, i: int, nthreads: int) -> str:
        addr = f"tcp://10.0.0.{i}:1234"
        comm = SilentComm()
        self.comms[addr] = comm
        self.background.append(
            asyncio.ensure_future(
                register_worker(
                    self.s,
                    comm,
                    addr,
                    f"w{i}",
                    nthreads=nthreads,
                    resources={},
                    now=0.0,
                    stimulus_id=f"add-{i}",
                )
            )
        )
        while addr not in self.s.stream_comms:
            await asyncio.sleep(0.001)
        self.s.stream_comms[addr] = Collector()
        return addr

    async def close(self) -> None:
        for comm in self.comms.values():
            comm.abort()
        await asyncio.gather(*self.background, return_exceptions=True)
        await self.s.close()

    def take_messages(self) -> list:
        """Normalised messages; the raw ones are appended to `self.sent` (run ids come
        from a process-wide counter in distributed, so they are per scheduler)."""
        out = []
        for addr, c in sorted(self.s.stream_comms.items()):
            for m in c.msgs:
                out.append((addr, normalize_msg(m), len(self.sent)))
                self.sent.append(m)
            c.msgs.clear()
        return out


def normalize_msg(m: dict) -> tuple:
    op = m.get("op")
    if op == "compute-task":
        return (op, m["key"], tuple(m["priority"]), sorted(m["who_has"]))
    if op == "steal-request":
        return (op, m["key"], m["stimulus_id"])
    return (op, str(sorted(m.get("keys", []))))


def stealing_snapshot(cl: Cluster) -> dict:
    s = cl.s
    ext = s.extensions["stealing"]
    if cl.engine == "rust":
        st = s._rsched_engine.stealing_state()
        stealable = {a: [list(level) for level in levels] for a, levels in st["stealable"].items()}
        in_flight = {
            k: (
                i["victim"],
                i["thief"],
                i["victim_duration"],
                i["thief_duration"],
                i["stimulus_id"],
            )
            for k, i in st["in_flight"].items()
        }
        occ = {a: v for a, v in st["in_flight_occupancy"].items()}
        ntasks = {a: v for a, v in st["in_flight_tasks"].items()}
        key_stealable = dict(st["key_stealable"])
        unknown = {p: list(ks) for p, ks in st["unknown_durations"].items()}
    else:
        stealable = {
            a: [[ts.key for ts in level] for level in levels]
            for a, levels in sorted(ext.stealable.items())
        }
        in_flight = {
            ts.key: (
                i["victim"].address,
                i["thief"].address,
                i["victim_duration"],
                i["thief_duration"],
                i["stimulus_id"],
            )
            for ts, i in ext.in_flight.items()
        }
        occ = {ws.address: v for ws, v in ext.in_flight_occupancy.items()}
        ntasks = {ws.address: v for ws, v in ext.in_flight_tasks.items()}
        key_stealable = {ts.key: v for ts, v in ext.key_stealable.items()}
        unknown = {p: [ts.key for ts in tss] for p, tss in ext.unknown_durations.items()}
    return {
        "stealable": stealable,
        "key_stealable": key_stealable,
        "in_flight": in_flight,
        # defaultdicts: untouched workers read 0
        "in_flight_occupancy": {a: v for a, v in occ.items() if v},
        "in_flight_tasks": {a: v for a, v in ntasks.items() if v},
        "unknown_durations": {p: ks for p, ks in unknown.items() if ks},
        "metrics": {k: dict(v) for k, v in ext.metrics.items()},
        "count": ext.count,
        "events": [mask_event(msg) for _, msg in s.get_events("stealing")],
    }


def mask_event(msg: Any) -> Any:
    if msg[0] == "request":  # (start time, level, key, cost, victim, occ, thief, occ)
        return ("request", [tuple(e[1:]) for e in msg[1]])
    return tuple(msg)


def task_snapshot(cl: Cluster) -> dict:
    s = cl.s
    return {
        "tasks": {
            k: (ts.state, ts.processing_on.address if ts.processing_on else None)
            for k, ts in s.tasks.items()
        },
        "idle": list(s.idle),
        "saturated": [ws.address for ws in s.saturated],
        "occupancy": {a: ws.occupancy for a, ws in s.workers.items()},
        "nbytes": {a: ws.nbytes for a, ws in s.workers.items()},
    }


def graph(rng: random.Random, gen: int, addrs: list[str]) -> tuple[dict, dict, set]:
    """Roots restricted (loosely) to one worker, so stealing has something to move;
    dependents with fan-in; some tasks pinned hard to a worker."""
    dsk: dict = {}
    workers: dict = {}
    loose: dict = {}
    roots = [f"r{gen}-{i}" for i in range(rng.randint(4, 16))]
    for k in roots:
        dsk[k] = Task(k, inc, 1)
        workers[k] = [addrs[0]]
        loose[k] = True
    layer = roots
    for lvl in range(rng.randint(1, 3)):
        nxt = []
        for j in range(rng.randint(2, 8)):
            k = f"{'abc'[lvl]}{gen}-{j}"
            deps = rng.sample(layer, min(len(layer), rng.randint(1, 3)))
            dsk[k] = Task(k, add, *[TaskRef(d) for d in deps])
            if rng.random() < 0.3:
                workers[k] = [rng.choice(addrs)]
                if rng.random() < 0.5:
                    loose[k] = True
            nxt.append(k)
        layer = nxt
    return dsk, {"workers": workers, "allow_other_workers": loose}, set(layer)


def submit(cl: Cluster, dsk: dict, annotations: dict, keys: set, gen: int) -> None:
    cl.s._create_taskstate_from_graph(
        start=0.0,
        dsk=dsk,
        keys=keys,
        ordered=dask.order.order(dsk),
        client="c",
        annotations_by_type=annotations,
        global_annotations=None,
        stimulus_id=f"graph-{gen}",
        submitting_task=None,
        span_metadata={"collections": []},
    )


async def scenario(seed: int) -> None:
    clusters = [Cluster("python"), Cluster("rust")]
    for cl in clusters:
        await cl.start()
    try:
        rng = random.Random(seed)
        addrs = []
        next_worker = 0
        for _ in range(rng.randint(2, 5)):
            nthreads = rng.randint(1, 3)
            for cl in clusters:
                addr = await cl.add_worker(next_worker, nthreads)
            addrs.append(addr)
            next_worker += 1
        # compute-task / steal-request messages not answered yet, per worker
        pending: list[tuple[str, tuple, int]] = []

        async def step(label: str, action: Any) -> None:
            results = []
            for cl in clusters:
                r = action(cl)
                if inspect.isawaitable(r):
                    await r
                results.append(
                    (
                        cl.take_messages(),
                        task_snapshot(cl),
                        stealing_snapshot(cl),
                    )
                )
            (m0, t0, s0), (m1, t1, s1) = results
            assert [m[:2] for m in m1] == [m[:2] for m in m0], (label, "messages")
            for name in t0:
                assert t1[name] == t0[name], (label, name)
            for name in s0:
                assert s1[name] == s0[name], (label, name)
            pending.extend(m0)
            for cl in clusters:
                cl.s.validate_state()

        gen = 0
        for i in range(rng.randint(20, 60)):
            r = rng.random()
            computes = [p for p in pending if p[1][0] == "compute-task"]
            steals = [p for p in pending if p[1][0] == "steal-request"]
            if r < 0.12 or not (computes or steals):
                dsk, ann, keys = graph(rng, gen, addrs)
                await step(
                    f"{i} graph", lambda cl, d=dsk, a=ann, k=keys, g=gen: submit(cl, d, a, k, g)
                )
                gen += 1
            elif r < 0.45 and computes:
                addr, m, idx = computes[rng.randrange(len(computes))]
                pending.remove((addr, m, idx))
                duration = rng.choice([0.001, 0.05, 0.5, 2.0])
                nbytes = rng.choice([28, 10_000, 50_000_000])

                def finish(
                    cl: Cluster,
                    addr: str = addr,
                    m: tuple = m,
                    d: float = duration,
                    n: int = nbytes,
                    idx: int = idx,
                    i: int = i,
                ) -> None:
                    cl.s.handle_task_finished(
                        key=m[1],
                        worker=addr,
                        stimulus_id=f"tf-{i}",
                        run_id=cl.sent[idx]["run_id"],
                        nbytes=n,
                        type=b"int",
                        typename="int",
                        metadata={},
                        startstops=[{"action": "compute", "start": 1.0, "stop": 1.0 + d}],
                        thread=0,
                        status="OK",
                    )

                await step(f"{i} finish {m[1]}", finish)
            elif r < 0.5 and computes:
                # a task fails, or the client lets go of a key (tasks get forgotten
                # while stealing still tracks their prefix)
                addr, m, idx = computes[rng.randrange(len(computes))]
                if rng.random() < 0.5:
                    pending.remove((addr, m, idx))

                    def erred(
                        cl: Cluster, addr: str = addr, m: tuple = m, idx: int = idx, i: int = i
                    ) -> None:
                        cl.s.handle_task_erred(
                            key=m[1],
                            worker=addr,
                            stimulus_id=f"te-{i}",
                            run_id=cl.sent[idx]["run_id"],
                            exception=None,
                            traceback=None,
                            exception_text="boom",
                            traceback_text="",
                        )

                    await step(f"{i} erred {m[1]}", erred)
                else:
                    keys = sorted({m[1] for _, m, _ in computes})
                    released = rng.sample(keys, min(len(keys), rng.randint(1, 4)))

                    def release(cl: Cluster, keys: list = released, i: int = i) -> None:
                        cl.s.client_releases_keys(keys=keys, client="c", stimulus_id=f"rel-{i}")

                    await step(f"{i} release {released}", release)
            elif r < 0.7:
                await step(f"{i} balance", lambda cl: cl.s.extensions["stealing"].balance())
            elif r < 0.9 and steals:
                addr, m, idx = steals[rng.randrange(len(steals))]
                pending.remove((addr, m, idx))
                state = rng.choice(RESPONSES)
                if state in ("ready", "waiting", "constrained"):
                    # the victim gave the task up: it will not report it finished
                    for p in list(pending):
                        if p[0] == addr and p[1][0] == "compute-task" and p[1][1] == m[1]:
                            pending.remove(p)

                def respond(
                    cl: Cluster, addr: str = addr, m: tuple = m, state: Any = state
                ) -> None:
                    cl.s.stream_handlers["steal-response"](
                        key=m[1], state=state, stimulus_id=m[2], worker=addr
                    )

                await step(f"{i} steal-response {m[1]} {state}", respond)
            elif len(addrs) > 2 and rng.random() < 0.5:
                addr = addrs.pop(rng.randrange(1, len(addrs)))
                pending[:] = [p for p in pending if p[0] != addr]

                def remove(cl: Cluster, addr: str = addr, i: int = i) -> Any:
                    return cl.s.remove_worker(address=addr, stimulus_id=f"remove-{i}")

                await step(f"{i} remove {addr}", remove)
            else:
                nthreads = rng.randint(1, 3)
                for cl in clusters:
                    addr = await cl.add_worker(next_worker, nthreads)
                addrs.append(addr)
                next_worker += 1
                await step(f"{i} added {addr}", lambda cl: None)
    finally:
        for cl in clusters:
            await cl.close()


@pytest.mark.parametrize("seed", range(EXAMPLES))
@gen_test(timeout=120)
async def test_stealing_matches_distributed(seed: int) -> None:
    await scenario(seed)
