"""The spans extension over the engine: on the engine it observes only the first task of
each task group at submission and the engine gives the group's other tasks the same
annotation (no handle per task). The spans, their groups, the computations' groups and
every task's annotations must come out as on pure Python."""

from __future__ import annotations

import asyncio

import dask
import dask.array as da
import dask_rsched
from dask.utils import key_split
from distributed import Client, Scheduler, Worker, span
from distributed.utils_test import gen_test, inc
from engines import scheduler_on


def snapshot(s: Scheduler, worker: Worker) -> dict:
    ext = s.extensions["spans"]
    names = {sp.id: sp.name for sp in ext.spans.values()}

    def norm(ann: object) -> object:
        if not isinstance(ann, dict):
            return ann
        out = dict(ann)
        if isinstance(out.get("span"), dict):
            sp = out["span"]
            out["span"] = (sp["name"], tuple(names.get(i, "?") for i in sp["ids"]))
        return out

    return {
        "annotations": {ts.key: norm(ts.annotations) for ts in s.tasks.values()},
        # what the compute-task messages carried (the pending dicts included)
        "worker_annotations": {ts.key: norm(ts.annotations) for ts in worker.state.tasks.values()},
        "spans": sorted(
            (sp.name, sorted(str(tg.name) for tg in sp.groups), len(sp._code))
            for sp in ext.spans.values()
        ),
        "group_spans": sorted(
            (str(tg.name), names.get(tg.span_id)) for tg in s.task_groups.values()
        ),
        "computations": [sorted(str(tg.name) for tg in c.groups) for c in s.computations],
    }


async def scenario(engine: str) -> dict:
    scheduler = scheduler_on(engine)
    async with scheduler as s, Worker(s.address, nthreads=2) as worker:
        async with Client(s.address, asynchronous=True) as c:
            assert (dask_rsched.scheduler_engine(s) is None) == (engine == "python")
            x = da.ones(40, chunks=5) + 1
            with span("alpha"):
                x = c.persist(x)
            futs = c.map(inc, range(12))
            with span("outer"), span("inner"):
                y = c.submit(sum, futs, key="total")
                z = c.compute((x * 2).sum())
            # tasks already held, submitted again under another span: their groups stay
            with span("beta"):
                w = c.compute(x.sum() + 1)
            with dask.annotate(retries=2), span("annotated"):
                v = c.compute(da.arange(30, chunks=6).sum())
            await c.gather([y, z, w, v])
            await asyncio.sleep(0.05)
            return snapshot(s, worker)


@gen_test(timeout=120)
async def test_spans_as_on_pure_python():
    python = await scenario("python")
    rust = await scenario("rust")
    assert rust["spans"] == python["spans"]
    assert rust["group_spans"] == python["group_spans"]
    assert rust["computations"] == python["computations"]
    # finalize keys carry a fresh uuid per run: those compare by prefix
    common = rust["annotations"].keys() & python["annotations"].keys()
    assert len(common) > 50
    for key in common:
        assert rust["annotations"][key] == python["annotations"][key], key

    def by_prefix(annotations: dict) -> list:
        return sorted((key_split(k), repr(a)) for k, a in annotations.items())

    assert by_prefix(rust["annotations"]) == by_prefix(python["annotations"])
    # what the compute-task messages carried (the engine's pending dicts included)
    assert len(rust["worker_annotations"]) > 5
    assert by_prefix(rust["worker_annotations"]) == by_prefix(python["worker_annotations"])
    # every task went through the extension: an annotations dict, with its span
    assert all(isinstance(a, dict) for a in rust["annotations"].values())
    assert any(a.get("span") for a in rust["annotations"].values())
