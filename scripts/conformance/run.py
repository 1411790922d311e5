"""Runs distributed's test modules on one engine and compares the two runs.

    python run.py pure   TAG MODULE...   # pure-Python scheduler
    python run.py engine TAG MODULE...   # the same under `-p dask_rsched.testing`
    python run.py compare TAG            # tests that pass on pure Python but not on the engine

Run from the folder fetch_tests.sh filled. Tests run in chunks of 60 in fresh processes,
30 s each; a chunk that hangs past 400 s is killed, its next unfinished test is recorded
as HUNG and the rest of the chunk runs again. Results go to out/TAG.pure and out/TAG.engine.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

RESULT = re.compile(r"^(src/.+?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")
NOT_FOUND = re.compile(r"^ERROR: not found: \S*?(src/\S+)")
OUT = Path("out")


def collect(modules: list[str]) -> list[str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "--collect-only",
            *modules,
        ],
        capture_output=True,
        text=True,
    )
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line]


def run(mode: str, tag: str, modules: list[str]) -> None:
    extra = ["-p", "dask_rsched.testing"] if mode == "engine" else []
    ids = collect(modules)
    results: dict[str, str] = {}
    OUT.mkdir(exist_ok=True)
    with open(OUT / f"{tag}.{mode}.log", "w") as log:
        for start in range(0, len(ids), 60):
            chunk = ids[start : start + 60]
            while chunk:
                proc = subprocess.run(
                    [
                        "timeout",
                        "-s",
                        "KILL",
                        "400",
                        sys.executable,
                        "-m",
                        "pytest",
                        "-v",
                        "-p",
                        "no:cacheprovider",
                        "--tb=line",
                        "--timeout",
                        "30",
                        *extra,
                        *chunk,
                    ],
                    capture_output=True,
                    text=True,
                )
                log.write(proc.stdout + proc.stderr)
                not_found = False
                for line in (proc.stdout + proc.stderr).splitlines():
                    if (m := RESULT.match(line)) and m.group(1) in chunk:
                        results.setdefault(m.group(1), m.group(2))
                    elif m := NOT_FOUND.match(line):
                        # an id pytest cannot select spoils its whole run: drop it, rerun
                        not_found = True
                        for i in chunk:
                            if i == m.group(1) or i.startswith(m.group(1) + "["):
                                results[i] = "NOTFOUND"
                rest = [i for i in chunk if i not in results]
                if not_found:
                    pass
                elif proc.returncode == -9 and rest:
                    results[rest[0]] = "HUNG"
                    rest = rest[1:]
                else:
                    results.update((i, "MISSING") for i in rest)
                    rest = []
                chunk = rest
    with open(OUT / f"{tag}.{mode}", "w") as f:
        f.writelines(f"{results.get(i, 'MISSING')} {i}\n" for i in ids)
    print(tag, mode, dict(Counter(results.values())))


def read(path: Path) -> dict[str, str]:
    return {
        test: outcome
        for outcome, test in (line.split(" ", 1) for line in path.read_text().split("\n") if line)
    }


def compare(tag: str) -> None:
    pure, engine = read(OUT / f"{tag}.pure"), read(OUT / f"{tag}.engine")
    passed_pure = {t for t, o in pure.items() if o == "PASSED"}
    passed_engine = {t for t, o in engine.items() if o == "PASSED"}
    for test in sorted(passed_pure - passed_engine):
        print(f"engine {engine.get(test, 'MISSING')}: {test}")
    print(
        f"{tag}: {len(pure)} tests, {len(passed_pure)} pass on pure Python, "
        f"{len(passed_engine)} on the engine, "
        f"{len(passed_pure - passed_engine)} only on pure Python"
    )


if __name__ == "__main__":
    command, tag, *modules = sys.argv[1:]
    if command == "compare":
        compare(tag)
    else:
        run(command, tag, modules)
