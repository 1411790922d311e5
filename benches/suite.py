"""The benchmark suite: every harness and workload, pure Python and the engine side by side,
with a progress bar; writes a Markdown table, the raw results and PNG plots.

    python benches/suite.py                 # the full matrix (about an hour on 2 cores)
    python benches/suite.py --quick         # CI: small sizes, checks that it all runs
    python benches/suite.py --out DIR       # where results go (default benches/results)

Harnesses:
- scheduler through its real handlers with fake in-process workers
  (`scheduler_e2e.py`): every workload, worker count and stealing on/off, µs per task (graph
  submission + every `task-finished`), and graph-submission time;
- scheduler memory per submitted task: resident set growth and tracemalloc (Python
  objects only: the engine's Rust heap is in the resident set, not in tracemalloc);
- end to end on a `LocalCluster(processes=True)` (`cluster_e2e.py`): wall time and the
  scheduler process's CPU seconds per task.
The Rust core alone is `cargo bench --no-default-features --bench core` (criterion).

Each measurement runs in a fresh subprocess. Pure-Python runs predicted (from the same
series at the previous size) to take longer than `--budget` seconds are skipped and
marked so; a run that exceeds it is stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGINES = ("python", "rust")
LABEL = {"python": "pure Python", "rust": "engine"}


def matrix(quick: bool) -> list[dict]:
    """Every configuration, in the order they run."""
    runs: list[dict] = []
    if quick:
        sizes, workers, other_n, mem_sizes = [2_000], [10], 2_000, [2_000]
    else:
        sizes, workers, other_n = [10_000, 100_000, 1_000_000], [10, 100, 1000], 100_000
        mem_sizes = [100_000, 1_000_000]
    for n in sizes:
        for w in workers:
            for stealing in (True, False):
                for engine in ENGINES:
                    runs.append(
                        dict(
                            kind="handlers",
                            workload="tree",
                            tasks=n,
                            workers=w,
                            stealing=stealing,
                            engine=engine,
                        )
                    )
    for workload in ("map", "map-noqueue", "shuffle", "fanout", "futures", "churn"):
        for w in workers:
            for stealing in (True, False):
                for engine in ENGINES:
                    runs.append(
                        dict(
                            kind="handlers",
                            workload=workload,
                            tasks=other_n,
                            workers=w,
                            stealing=stealing,
                            engine=engine,
                        )
                    )
    for n in mem_sizes:
        for engine in ENGINES:
            runs.append(
                dict(
                    kind="memory",
                    workload="tree",
                    tasks=n,
                    workers=10,
                    stealing=True,
                    engine=engine,
                )
            )
    # graph submission alone: state creation, GC pause, live heap per task
    for n in [10_000] if quick else [1_000_000]:
        for graph in ("tree", "array"):
            for engine in ENGINES:
                runs.append(
                    dict(kind="submission", workload=graph, tasks=n, workers=0, engine=engine)
                )
    # `order` alone: one run measures both (dask's and the Rust one) on the same graph
    for n in [2_000] if quick else [100_000, 1_000_000]:
        for graph in ("tree", "array", "shuffle"):
            runs.append(dict(kind="order", workload=graph, tasks=n, workers=0, engine="rust"))
    # the scheduler process over real TCP: fake workers in another process
    for workload in ["tree"] if quick else ["tree", "map"]:
        for w in [10] if quick else [10, 100]:
            for threads in [1] if quick else [1, 8]:
                # (the long mode also with the lean fake workers at 100 workers)
                for fake_workers in ["distributed"] + ([] if quick or w < 100 else ["lean"]):
                    for engine in ENGINES:
                        runs.append(
                            dict(
                                kind="tcp",
                                workload=workload,
                                tasks=2_000 if quick else 20_000,
                                workers=w,
                                threads=threads,
                                engine=engine,
                                fake_workers=fake_workers,
                            )
                        )
    for workload in ("map", "tree"):
        for engine in ENGINES:
            runs.append(
                dict(
                    kind="cluster",
                    workload=workload,
                    tasks=1_000 if quick else 10_000,
                    workers=2,
                    engine=engine,
                )
            )
    return runs


def run_one(cfg: dict) -> dict:
    """Runs in the subprocess."""
    import asyncio
    import logging

    sys.path.insert(0, str(HERE))
    for name in ("distributed", "dask_rsched"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if cfg["kind"] == "order":
        import order

        return order.measure(cfg["workload"], cfg["tasks"])
    if cfg["kind"] == "submission":
        import submission

        r = asyncio.run(submission.measure(cfg["engine"], cfg["workload"], cfg["tasks"]))
        r["heap_per_task"] = submission.live_heap(cfg["engine"], cfg["workload"], cfg["tasks"])
        return r
    if cfg["kind"] == "tcp":
        import tempfile
        import types

        import tcp_e2e

        opts = types.SimpleNamespace(
            repeat=3, profile=None, fake_workers=cfg.get("fake_workers", "distributed")
        )
        with tempfile.TemporaryDirectory() as tmp:
            row = asyncio.run(
                tcp_e2e.run_one(
                    cfg["engine"],
                    cfg["workload"],
                    "importable",
                    cfg["tasks"],
                    cfg["workers"],
                    cfg["threads"],
                    opts,
                    Path(tmp),
                )
            )
        row.pop("runs", None)
        return row
    if cfg["kind"] == "cluster":
        import cluster_e2e

        return cluster_e2e.run(cfg["engine"], cfg["workload"], cfg["tasks"], cfg["workers"])
    import scheduler_e2e

    workload = cfg["workload"]
    return asyncio.run(
        scheduler_e2e.run(
            cfg["engine"],
            cfg["tasks"],
            cfg["workers"],
            cfg["stealing"],
            task_duration=0.01,
            workload="map" if workload == "map-noqueue" else workload,
            queuing=workload != "map-noqueue",
            memory=cfg["kind"] == "memory",
        )
    )


CONFIG_FIELDS = (
    "kind",
    "workload",
    "tasks",
    "workers",
    "stealing",
    "threads",
    "engine",
    "fake_workers",
)


def cfg_of(r: dict) -> dict:
    """The configuration a result was measured for (tasks as configured; a TCP run
    from before `fake_workers` had distributed's)."""
    cfg = {
        k: r.get("configured_tasks", r.get(k)) if k == "tasks" else r.get(k) for k in CONFIG_FIELDS
    }
    if cfg["kind"] == "tcp" and cfg["fake_workers"] is None:
        cfg["fake_workers"] = "distributed"
    return cfg


def series_key(cfg: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in cfg.items() if k != "tasks"))


class _NoBar(list):
    def set_description(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def execute(runs: list[dict], budget: float, partial: Path | None = None) -> list[dict]:
    try:
        from tqdm import tqdm
    except ImportError:  # no progress bar without the bench extra

        def tqdm(runs, **_):  # type: ignore[no-redef]
            return _NoBar(runs)

    done: list[dict] = []
    last: dict[tuple, dict] = {}  # the previous size of each series
    bar = tqdm(runs, unit="run", dynamic_ncols=True)
    for cfg in bar:
        bar.set_description(
            f"{cfg['kind']} {cfg['workload']} {cfg['tasks']:,}t {cfg['workers']}w "
            f"{'steal ' if cfg.get('stealing') else ''}{LABEL[cfg['engine']]}"
        )
        rec = dict(cfg, configured_tasks=cfg["tasks"])
        prev = last.get(series_key(cfg))
        if cfg["engine"] == "python" and prev and prev.get("total"):
            predicted = prev["total"] / prev["tasks"] * cfg["tasks"] * 1.5 + 30
            if predicted > budget:
                rec["skipped"] = f"predicted {predicted:.0f} s > budget {budget:.0f} s"
                done.append(rec)
                continue
        t = time.perf_counter()
        try:
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(cfg)],
                capture_output=True,
                text=True,
                timeout=budget if cfg["engine"] == "python" else None,
                cwd=HERE,
            )
        except subprocess.TimeoutExpired:
            rec["skipped"] = f"stopped after {budget:.0f} s"
            done.append(rec)
            continue
        if out.returncode:
            raise RuntimeError(f"{cfg} failed:\n{out.stderr[-3000:]}")
        rec.update(json.loads(out.stdout.strip().splitlines()[-1]))
        rec["wall_incl_setup"] = time.perf_counter() - t
        last[series_key(cfg)] = rec
        done.append(rec)
        if partial is not None:  # a long run interrupted keeps what it measured
            partial.write_text(json.dumps(done, indent=1))
    return done


def per_task(r: dict | None, field: str = "total") -> float | None:
    if not r or r.get("skipped") or field not in r:
        return None
    return r[field] / r["tasks"] * 1e6


def fmt(x: float | None, spec: str = ".1f", unit: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    return "—" if not a or not b else f"{a / b:.1f}x"


def find(results: list[dict], **kw) -> dict | None:
    for r in results:
        if all(r.get(k) == v for k, v in kw.items()):
            return r
    return None


def machine() -> str:
    import distributed

    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpus} cores ({model}), {mem:.0f} GiB, {platform.python_implementation()} "
        f"{platform.python_version()}, distributed {distributed.__version__}, "
        f"{time.strftime('%Y-%m-%d')}"
    )


def table_section(
    title: str, header: str, align: str, rows: list[str], intro: str | None = None
) -> list[str]:
    """A report section: its heading, an optional paragraph, and a table."""
    return ["", f"### {title}", "", *([intro, ""] if intro else []), header, align, *rows]


def markdown(results: list[dict], quick: bool) -> str:
    lines = [f"Machine: {machine()}{' (quick mode)' if quick else ''}.", ""]
    handlers = [r for r in results if r["kind"] == "handlers"]
    lines += [
        "### Scheduler through its real handlers (fake in-process workers)",
        "",
        "µs per task = (graph submission + every `task-finished`) / tasks; workers report"
        " 10 ms compute per task. `—`: not run (see notes).",
        "",
        "| workload | tasks | workers | stealing | pure Python µs/task | engine µs/task "
        "| ratio | submission s, pure Python | submission s, engine |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    seen = set()
    for r in handlers:
        key = (r["workload"], r["tasks"], r["workers"], r["stealing"])
        if key in seen:
            continue
        seen.add(key)
        py = find(
            handlers,
            workload=key[0],
            tasks=key[1],
            workers=key[2],
            stealing=key[3],
            engine="python",
        )
        rs = find(
            handlers, workload=key[0], tasks=key[1], workers=key[2], stealing=key[3], engine="rust"
        )
        tasks = (rs or py or r).get("tasks", key[1])
        g_py = py.get("graph") if py and not py.get("skipped") else None
        g_rs = rs.get("graph") if rs and not rs.get("skipped") else None
        sub = key[0] != "futures"
        lines.append(
            f"| {key[0]} | {tasks:,} | {key[2]:,} | {'on' if key[3] else 'off'} | "
            f"{fmt(per_task(py))} | {fmt(per_task(rs))} | "
            f"{ratio(per_task(py), per_task(rs))} | "
            f"{fmt(g_py, '.2f') if sub else 'n/a'} | {fmt(g_rs, '.2f') if sub else 'n/a'} |"
        )
    skipped = [r for r in results if r.get("skipped")]
    if skipped:
        lines += ["", "Not run:"]
        lines += [
            f"- {LABEL[r['engine']]}, {r['workload']}, {r['tasks']:,} tasks, {r['workers']} "
            f"workers, stealing {'on' if r.get('stealing') else 'off'}: {r['skipped']}"
            for r in skipped
        ]
    mem = [r for r in results if r["kind"] == "memory"]
    if mem:
        rows = [
            f"| {r['tasks']:,} | {LABEL[r['engine']]} | — | — |"
            if r.get("skipped")
            else f"| {r['tasks']:,} | {LABEL[r['engine']]} | {r['rss_per_task']:.0f} | "
            f"{r['traced_per_task']:.0f} |"
            for r in mem
        ]
        lines += table_section(
            "Scheduler memory per submitted task (tree reduction)",
            "| tasks | engine | RSS growth bytes/task | tracemalloc bytes/task |",
            "|---:|---|---:|---:|",
            rows,
        )
        lines += [
            "",
            "tracemalloc sees Python objects only; the engine's Rust heap shows in the RSS column.",
        ]
    cl = [r for r in results if r["kind"] == "cluster"]
    if cl:
        lines += table_section(
            "End to end: LocalCluster with worker processes",
            "| workload | tasks | workers | engine | wall s | scheduler CPU s "
            "| scheduler CPU µs/task |",
            "|---|---:|---:|---|---:|---:|---:|",
            [
                f"| {r['workload']} | {r['tasks']:,} | {r['workers']} | {LABEL[r['engine']]} | "
                f"{r['wall']:.2f} | {r['scheduler_cpu']:.2f} | "
                f"{r['scheduler_cpu'] / r['tasks'] * 1e6:.0f} |"
                for r in cl
            ],
        )
    tcp = [r for r in results if r["kind"] == "tcp" and not r.get("skipped")]
    if tcp:
        sys.path.insert(0, str(HERE))
        import tcp_e2e

        lines += table_section(
            "The scheduler process over TCP (`benches/tcp_e2e.py`)",
            tcp_e2e.REPORT_HEADER,
            tcp_e2e.REPORT_ALIGN,
            tcp_e2e.report_rows(tcp),
            intro="`dask scheduler` in its own process; fake zero-workers in another process"
            " over real TCP (registration, heartbeats, `BatchedSend`); a real Client; "
            "medians of 3 graphs.",
        )
    subs = [r for r in results if r["kind"] == "submission" and not r.get("skipped")]
    if subs:
        lines += table_section(
            "Graph submission alone (`benches/submission.py`)",
            "| graph | tasks | engine | submission µs/task | order µs/task | GC pause ms "
            "| live heap B/task |",
            "|---|---:|---|---:|---:|---:|---:|",
            [
                f"| {r['workload']} | {r['tasks']:,} | {LABEL[r['engine']]} | "
                f"{r['submit_us']:.2f} | {r['order_us']:.2f} | {r['gc_pause_ms']:.0f} | "
                f"{'n/a' if r.get('heap_per_task') is None else format(r['heap_per_task'], '.0f')}"
                " |"
                for r in subs
            ],
            intro="Each engine orders as its scheduler does, then `_create_taskstate_from_graph` "
            "with no workers; live heap: `PYTHONMALLOC=malloc` and `mallinfo2`, the graph "
            "and its order held (see `docs/benchmarks.md`).",
        )
    orders = [r for r in results if r["kind"] == "order" and not r.get("skipped")]
    if orders:
        lines += table_section(
            "`order` alone: `dask_rsched.order` against `dask.order.order`",
            "| graph | tasks | dask.order µs/task | Rust µs/task | ratio | identical |",
            "|---|---:|---:|---:|---:|---|",
            [
                f"| {r['workload']} | {r['tasks']:,} | {r['dask_s'] / r['tasks'] * 1e6:.1f} | "
                f"{r['rust_s'] / r['tasks'] * 1e6:.2f} | {r['ratio']:.1f}x | "
                f"{'yes' if r['identical'] else 'NO'} |"
                for r in orders
            ],
        )
    lines += ["", "### Targets", "", *targets(results)]
    return "\n".join(lines) + "\n"


def targets(results: list[dict]) -> list[str]:
    h = [r for r in results if r["kind"] == "handlers" and not r.get("skipped")]
    tree_rs = [r for r in h if r["workload"] == "tree" and r["engine"] == "rust"]
    out = []
    if tree_rs:
        best = min(per_task(r) for r in tree_rs)
        out.append(
            f"- ≤ 3 µs/task through the handlers: best engine tree run {best:.1f} µs/task"
            f" — {'met' if best <= 3 else 'missed'}."
        )
        big = max(r["tasks"] for r in tree_rs)
        for stealing in (True, False):
            lo = find(tree_rs, tasks=big, workers=10, stealing=stealing)
            hi = find(
                tree_rs, tasks=big, workers=max(r["workers"] for r in tree_rs), stealing=stealing
            )
            if lo and hi and hi is not lo:
                f = per_task(hi) / per_task(lo)
                out.append(
                    f"- flat from 10 to {hi['workers']:,} workers (≤ 1.2x), {big:,} tasks, "
                    f"stealing {'on' if stealing else 'off'}: {f:.2f}x — "
                    f"{'met' if f <= 1.2 else 'missed'}."
                )
        for stealing in (True, False):
            rs = find(tree_rs, tasks=big, workers=10, stealing=stealing)
            py = find(h, workload="tree", tasks=big, workers=10, stealing=stealing, engine="python")
            if rs and py:
                f = per_task(py) / per_task(rs)
                out.append(
                    f"- ≥ 30x pure Python at 10 workers, {big:,} tasks, stealing "
                    f"{'on' if stealing else 'off'}: {f:.1f}x — {'met' if f >= 30 else 'missed'}."
                )
    mem = [
        r
        for r in results
        if r["kind"] == "memory" and r["engine"] == "rust" and not r.get("skipped")
    ]
    if mem:
        r = max(mem, key=lambda r: r["tasks"])
        out.append(
            f"- ≤ 400 bytes of scheduler state per task ({r['tasks']:,} tasks, RSS): "
            f"{r['rss_per_task']:.0f} — {'met' if r['rss_per_task'] <= 400 else 'missed'}."
        )
    return out


def plots(results: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plots (pip install '.[bench]')", file=sys.stderr)
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = [r for r in results if r["kind"] == "handlers" and not r.get("skipped")]
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, stealing in zip(axes, (True, False), strict=True):
        for engine, style in (("python", "--"), ("rust", "-")):
            for w in sorted({r["workers"] for r in h}):
                pts = sorted(
                    (r["tasks"], per_task(r))
                    for r in h
                    if r["workload"] == "tree"
                    and r["engine"] == engine
                    and r["workers"] == w
                    and r["stealing"] == stealing
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        marker="o",
                        label=f"{LABEL[engine]}, {w} workers",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("tasks (tree reduction)")
        ax.set_title(f"stealing {'on' if stealing else 'off'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("µs per task")
    axes[0].legend(fontsize=7)
    fig.suptitle("Scheduler cost per task against graph size")
    fig.tight_layout()
    files.append(out / "per_task_vs_tasks.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    colors = plt.get_cmap("tab10").colors
    for ax, stealing in zip(axes, (True, False), strict=True):
        for wi, workload in enumerate(sorted({r["workload"] for r in h})):
            n = max(r["tasks"] for r in h if r["workload"] == workload)
            for engine, style in (("python", "--"), ("rust", "-")):
                pts = sorted(
                    (r["workers"], per_task(r))
                    for r in h
                    if r["workload"] == workload
                    and r["engine"] == engine
                    and r["tasks"] == n
                    and r["stealing"] == stealing
                )
                if pts:
                    ax.plot(
                        *zip(*pts, strict=True),
                        style,
                        marker="o",
                        color=colors[wi % len(colors)],
                        label=f"{LABEL[engine]}, {workload}",
                    )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("workers")
        ax.set_title(f"stealing {'on' if stealing else 'off'}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("µs per task")
    axes[0].legend(fontsize=6, ncol=2)
    fig.suptitle("Scheduler cost per task against workers (largest size of each workload)")
    fig.tight_layout()
    files.append(out / "per_task_vs_workers.png")
    fig.savefig(files[-1], dpi=110)
    plt.close(fig)
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds a pure-Python run may take (default 600; quick: 300)",
    )
    ap.add_argument(
        "--render", type=Path, help="write the table and plots from a results.json, no runs"
    )
    ap.add_argument("--only", nargs="+", help="run only these workloads (e.g. futures)")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="replace those runs in the existing OUT/results.json instead of starting afresh",
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    budget = args.budget or (300.0 if args.quick else 600.0)
    args.out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if args.render:
        results = json.loads(args.render.read_text())
        md = markdown(results, args.quick)
        (args.out / "results.md").write_text(md)
        plots(results, args.out)
        print(md)
        return
    runs = [r for r in matrix(args.quick) if not args.only or r["workload"] in args.only]
    results = execute(runs, budget, args.out / "results.partial.json")
    if args.merge:
        new = {json.dumps(cfg_of(r), sort_keys=True): r for r in results}
        old = json.loads((args.out / "results.json").read_text())
        results = [new.pop(json.dumps(cfg_of(r), sort_keys=True), r) for r in old]
        results += list(new.values())
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    (args.out / "results.partial.json").unlink(missing_ok=True)
    md = markdown(results, args.quick)
    (args.out / "results.md").write_text(md)
    files = plots(results, args.out)
    print(md)
    print(
        f"wrote {args.out / 'results.md'}, {args.out / 'results.json'}, "
        f"{', '.join(str(f) for f in files)} in {time.perf_counter() - t:.0f} s"
    )


if __name__ == "__main__":
    main()
