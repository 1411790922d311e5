#!/bin/bash
# Fetches distributed's own test modules into DIR (default /tmp/dask-rsched-conformance).
# The PyPI sdist and wheel of distributed ship no tests; Debian's python3-distributed
# package does (sid held 2024.12.1 on 2026-11-26). Needs apt-get and dpkg-deb (Debian).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
DIR=${1:-/tmp/dask-rsched-conformance}
mkdir -p "$DIR/lists/partial" "$DIR/deb"
echo "deb http://deb.debian.org/debian sid main" > "$DIR/sources.list"
APT=(-o "Dir::Etc::sourcelist=$DIR/sources.list" -o "Dir::Etc::sourceparts=-"
     -o "Dir::State::Lists=$DIR/lists")
apt-get "${APT[@]}" update -qq
(cd "$DIR/deb" && apt-get "${APT[@]}" download python3-distributed)
rm -rf "$DIR/x" "$DIR/src"
dpkg-deb -x "$DIR"/deb/python3-distributed_*.deb "$DIR/x"
mkdir -p "$DIR/src"
cp -r "$DIR/x/usr/lib/python3/dist-packages/distributed" "$DIR/src/dtests_pkg"
# Only the test packages are used; the installed distributed serves everything else
# (conftest.py appends these folders to its packages' __path__).
find "$DIR/src/dtests_pkg" -name __init__.py -not -path "*/tests/*" -exec sh -c ': > "$1"' _ {} \;
# Names removed from dask/distributed since that release, and a decorator typo, so the
# modules import; the tests that use them fail on both engines alike.
T="$DIR/src/dtests_pkg/tests/test_client.py"
sed -i 's/^from dask.optimization import SubgraphCallable$/SubgraphCallable = None/' "$T"
sed -i 's/^from distributed.shuffle import check_minimal_arrow_version$/check_minimal_arrow_version = lambda: None/' "$T"
grep -rl '^@pytest.importorskip' "$DIR/src/dtests_pkg" | xargs -r sed -i 's/^@pytest.importorskip(.*)$//'
cp "$HERE/conftest.py" "$HERE/run.py" "$DIR/"
echo "tests in $DIR/src/dtests_pkg"
