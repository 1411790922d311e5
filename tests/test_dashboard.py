"""The Bokeh dashboard over the engine: every page of the scheduler's dashboard is
fetched (its document built and left to update for a while) after the same computation
on each engine: tasks in memory, an erred task, a blocked task, stealing. Each page must
answer as it does on pure Python, and the errors the dashboard logs (distributed's own,
e.g. the task-group graph's KeyError on some graphs) must be the same. Skipped where
bokeh is not installed."""

from __future__ import annotations

import asyncio
import logging
import traceback

import dask_rsched
import pytest
from distributed import Client, Event, Scheduler, Worker, wait
from distributed.utils_test import div, gen_test, slowinc

pytest.importorskip("bokeh")

from distributed.dashboard.scheduler import applications
from tornado.httpclient import AsyncHTTPClient

PAGES = sorted(p for p in applications if "gpu" not in p and "rmm" not in p)


# Teardown races (a page broadcasting to a worker that is closing) depend on timing.
TIMING_ERRORS = frozenset({"CommClosedError", "StreamClosedError"})


class Errors(logging.Handler):
    """The distinct errors logged: (exception type, message)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: set[tuple[str, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            e = record.exc_info[1]
            if type(e).__name__ not in TIMING_ERRORS:
                self.seen.add((type(e).__name__, str(e)))
        elif not any(t in record.getMessage() for t in ("Uncaught exception", *TIMING_ERRORS)):
            self.seen.add(("log", record.getMessage().splitlines()[0]))


async def render_all(engine: str) -> tuple[dict[str, int], set[tuple[str, str]]]:
    if engine == "rust":
        dask_rsched.install()
    errors = Errors()
    loggers = [logging.getLogger(n) for n in ("bokeh", "distributed.dashboard", "tornado")]
    for lg in loggers:
        lg.addHandler(errors)
    try:
        async with (
            Scheduler(dashboard=True, dashboard_address=":0", host="127.0.0.1") as s,
            Worker(s.address, nthreads=1) as a,
            Worker(s.address, nthreads=1),
            Client(s.address, asynchronous=True) as c,
        ):
            from dask_rsched._scheduler import is_active

            assert is_active(s) == (engine == "rust")
            futs = c.map(
                slowinc, range(30), delay=0.01, workers=[a.address], allow_other_workers=True
            )
            total = c.submit(sum, futs, key="total")
            bad = c.submit(div, 1, 0, key="bad")
            ev = Event(client=c)
            blocked = c.submit(lambda ev: ev.wait(), ev, key="blocked")
            await wait([total, bad])
            client = AsyncHTTPClient()
            codes = {}
            for page in PAGES:
                response = await client.fetch(
                    f"http://127.0.0.1:{s.http_server.port}{page}",
                    raise_error=False,
                    request_timeout=30,
                )
                codes[page] = response.code
            await asyncio.sleep(1.5)  # the documents' periodic updates run
            await ev.set()
            await blocked
            return codes, errors.seen
    except Exception:
        traceback.print_exc()
        raise
    finally:
        for lg in loggers:
            lg.removeHandler(errors)
        dask_rsched.uninstall()


@gen_test(timeout=180)
async def test_dashboard_pages_render_as_on_pure_python():
    py_codes, py_errors = await render_all("python")
    rs_codes, rs_errors = await render_all("rust")
    assert sum(code == 200 for code in py_codes.values()) > len(PAGES) // 2
    assert rs_codes == py_codes
    assert rs_errors == py_errors
