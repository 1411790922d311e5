"""What an operator sees of the engine: its counters as Prometheus metrics on the
scheduler's own `/metrics` endpoint, and its name on the dashboard's scheduler info page
(`/info/main/workers.html`). Both through distributed's own HTTP code: a collector added
to the ones its `/metrics` handler serves, and its info page handler with one line added
to what it renders."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

logger = logging.getLogger("distributed.dask_rsched")


class EngineMetricCollector:
    """`dask_scheduler_engine_*` metrics of the scheduler whose `/metrics` is served
    (distributed points its collectors at that scheduler; a pure-Python one yields
    nothing)."""

    def __init__(self, server: Any) -> None:
        import dask.config

        self.server = server
        self.namespace = dask.config.get("distributed.dashboard.prometheus.namespace")

    def build_name(self, name: str) -> str:
        return "_".join(p for p in (self.namespace, "scheduler_engine", name) if p)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        engine = getattr(self.server, "_rsched_engine", None)
        if engine is None:
            return
        m = engine.metrics()
        yield GaugeMetricFamily(
            self.build_name("tasks"), "Tasks the scheduler engine holds.", value=m["tasks"]
        )
        yield GaugeMetricFamily(
            self.build_name("workers"), "Workers the scheduler engine holds.", value=m["workers"]
        )
        yield CounterMetricFamily(
            self.build_name("transitions_total"),
            "Task transitions the scheduler engine ran.",
            value=m["transitions"],
        )
        yield CounterMetricFamily(
            self.build_name("stimuli_total"),
            "Stimuli (handler calls into the engine) the scheduler engine ran.",
            value=m["stimuli"],
        )
        seconds = CounterMetricFamily(
            self.build_name("seconds_total"),
            "Time spent running the scheduler's state: in the Rust engine, in Python "
            "plugin hooks the engine called between transitions, and in Python handing "
            "the engine's messages to the comms (send_all).",
            labels=["part"],
        )
        hooks = m["plugin_hook_seconds"]
        seconds.add_metric(["engine"], max(m["stimulus_seconds"] - hooks, 0.0))
        seconds.add_metric(["plugin_hooks"], hooks)
        seconds.add_metric(["python_send"], getattr(self.server, "_rsched_send_seconds", 0.0))
        yield seconds


def _add_collector(scheduler: Any) -> None:
    try:
        import prometheus_client
        from distributed.http.scheduler.prometheus import core
    except ImportError:  # distributed serves a "not available" page then
        return
    if any(c is EngineMetricCollector for c in core.COLLECTORS):
        return
    # before the first scrape, distributed instantiates COLLECTORS itself and points
    # them at the scheduler being served; after it, join the instances it keeps
    core.COLLECTORS.append(EngineMetricCollector)
    instances = core.PrometheusHandler._collectors
    if instances:
        collector = EngineMetricCollector(scheduler)
        core.PrometheusHandler._collectors = (*instances, collector)
        prometheus_client.REGISTRY.register(collector)


def _engine_info_page(scheduler: Any) -> None:
    """The info page names the engine under the scheduler's address."""
    from distributed.http.scheduler.info import Workers

    app = getattr(scheduler, "http_application", None)
    if app is None:
        return
    for application in (app, *getattr(app, "applications", ())):
        for rule in getattr(getattr(application, "wildcard_router", None), "rules", ()):
            if rule.target is Workers:
                rule.target = _engine_workers_page()


@functools.cache
def _engine_workers_page() -> type:
    from distributed.http.scheduler.info import Workers

    from dask_rsched._scheduler import ENGINE_NAME

    class EngineWorkersPage(Workers):
        def render_string(self, template_name: str, **kwargs: Any) -> bytes:
            html = super().render_string(template_name, **kwargs)
            if getattr(self.server, "_rsched_engine", None) is None:
                return html
            line = f'\n  <p class="subtitle">Scheduler engine: {ENGINE_NAME}</p>\n'.encode()
            head, sep, rest = html.partition(b"</h1>")
            return head + sep + line + rest if sep else html

    return EngineWorkersPage


def install(scheduler: Any) -> None:
    """Metrics and the info page line for an engine-backed scheduler (never fatal)."""
    try:
        _add_collector(scheduler)
        _engine_info_page(scheduler)
    except Exception:
        logger.exception("dask-rsched: could not add the engine's metrics or info page line")
