#!/usr/bin/env bash
# Builds cluster_ext with AddressSanitizer + UndefinedBehaviorSanitizer
# (CX_SANITIZE=1) in a scratch copy of the tree and runs the test suite
# against that build. Extra arguments go to pytest.
#   PYTHON=.venv/bin/python bash scripts/sanitize.sh [-x] [-k expr]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v "${PYTHON:-python3}")
case $py in /*) ;; *) py="$PWD/$py" ;; esac
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/src" "$root/cluster_ext" "$root/tests" "$root/examples" "$root/fuzz" "$root/bench" "$root/docs" \
      "$root/setup.py" "$root/pyproject.toml" "$root/README.md" "$root/CONTRIBUTING.md" \
      "$work/"
rm -f "$work"/cluster_ext/*.so
# shellcheck source=build_inplace.sh
source "$root/scripts/build_inplace.sh"
build_inplace "$py" "$work" CX_SANITIZE=1
# The interpreter itself is not built with ASan: the runtime is preloaded, and
# leak detection is off (CPython keeps memory until exit on purpose).
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$work"
cd "$work"
echo "+ sanitizer build: pytest $*"
"$py" -m pytest -q -p no:cacheprovider "$@" tests
