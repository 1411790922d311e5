#!/usr/bin/env bash
# The built abi3 wheel in a fresh venv with no Rust toolchain on PATH, once per supported
# distributed release other than the newest (which the main test run covers): the release
# is installed first, as in a deployment; installing the wheel must leave it in place;
# then a LocalCluster smoke test on the engine and the differential and e2e quick tests.
#
#   bash scripts/wheel-matrix.sh WHEEL [RELEASE ...]
set -euo pipefail
cd "$(dirname "$0")/.."
wheel="$1"
shift
releases=("$@")
if [ ${#releases[@]} -eq 0 ]; then
    releases=(2026.6.0 2026.7.0 2026.7.1)
fi
case "$wheel" in
*-abi3-*.whl) ;;
*)
    echo "not an abi3 wheel: $wheel" >&2
    exit 1
    ;;
esac

# PATH without any directory that holds cargo or rustc
path=""
IFS=: read -ra dirs <<<"$PATH"
for d in "${dirs[@]}"; do
    if [ -x "$d/cargo" ] || [ -x "$d/rustc" ]; then
        continue
    fi
    path="${path:+$path:}$d"
done

venv="$(mktemp -d)/venv"
python -m venv "$venv"
trap 'rm -rf "$(dirname "$venv")"' EXIT
run() { env PATH="$venv/bin:$path" CARGO=/nonexistent "$@"; }
run sh -c '! command -v cargo && ! command -v rustc' >/dev/null
run python -m pip install --quiet --upgrade pip
run python -m pip install --quiet pytest pytest-timeout hypothesis psutil bokeh

for release in "${releases[@]}"; do
    echo "== wheel on distributed $release (no cargo on PATH)"
    run python -m pip uninstall --quiet --yes dask-rsched dask-rsched-compat 2>/dev/null || true
    run python -m pip install --quiet "distributed==$release" "dask[array,dataframe]==$release"
    run python -m pip install --quiet "$wheel" ./compat
    run python scripts/smoke.py "$release"
    # test_order.py also runs that dask release's own test_order.py against the Rust order
    run env DIFF_EXAMPLES="${MATRIX_DIFF_EXAMPLES:-300}" ORDER_EXAMPLES=100 \
        python -m pytest -q -p no:cacheprovider -p no:warnings \
        tests/test_differential.py tests/test_e2e.py tests/test_order.py
done
