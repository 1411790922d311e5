#!/usr/bin/env bash
# Installs everything the project needs and runs every check and test.
# Quick mode by default (CI); DIFF_EXAMPLES / BENCH_MODE select the long modes.
set -euo pipefail
cd "$(dirname "$0")/.."

# the abi3 wheel is built once: installed here, and into a fresh venv per supported
# distributed release at the end (scripts/wheel-matrix.sh)
python -m pip install --quiet "maturin>=1.8,<2"
wheels="${TMPDIR:-/tmp}/dask-rsched-wheels"
rm -rf "$wheels"
python -m maturin build --release --quiet --out "$wheels"
wheel="$(ls "$wheels"/dask_rsched-*.whl)"
python -m pip install --quiet "$wheel[test]" ./compat
python -m pip install --quiet --no-deps --force-reinstall "$wheel"

echo "== cargo fmt / clippy"
cargo fmt --check
cargo clippy --all-targets -- -D warnings

echo "== cargo test (core, no Python)"
cargo test --no-default-features --quiet

echo "== ruff"
ruff check python tests benches compat scripts
ruff format --check python tests benches compat scripts

echo "== stubtest"
python -m mypy.stubtest dask_rsched._core --ignore-missing-stub --allowlist python/dask_rsched/stubtest-allowlist.txt

echo "== benchmark harness (quick)"
python benches/scheduler_only.py --quick
python benches/submission.py --quick
python benches/order.py --quick
python benches/tcp_e2e.py --quick --fake-workers lean

echo "== benchmark suite, both engines, every workload (quick: checks that it runs)"
python benches/suite.py --quick --out "${TMPDIR:-/tmp}/dask-rsched-bench-quick"

echo "== pytest"
export DIFF_EXAMPLES="${DIFF_EXAMPLES:-2000}"
python -m pytest -q -p no:cacheprovider -p no:warnings tests

echo "== the wheel without a Rust toolchain, on each older supported distributed release"
bash scripts/wheel-matrix.sh "$wheel"
