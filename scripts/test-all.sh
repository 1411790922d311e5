#!/usr/bin/env bash
# Installs everything the project needs and runs every check and test.
# Quick mode by default (CI); DIFF_EXAMPLES / BENCH_MODE select the long modes.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet ".[test]" ./compat

echo "== cargo fmt / clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== cargo test (core, no Python)"
cargo test --no-default-features --quiet

echo "== ruff"
ruff check python tests benches compat
ruff format --check python tests benches compat

echo "== stubtest"
python -m mypy.stubtest dask_rsched._core --ignore-missing-stub --allowlist python/dask_rsched/stubtest-allowlist.txt

echo "== benchmark harness (quick)"
python benches/scheduler_only.py --quick

echo "== benchmark suite, both engines, every workload (quick: checks that it runs)"
python benches/suite.py --quick --out "${TMPDIR:-/tmp}/dask-rsched-bench-quick"

echo "== pytest"
export DIFF_EXAMPLES="${DIFF_EXAMPLES:-2000}"
python -m pytest -q -p no:cacheprovider -p no:warnings tests
