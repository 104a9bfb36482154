#!/usr/bin/env bash
# valgrind memcheck over scenario apps from tests/apps, the primary under
# memcheck (and its fork(target=) workers, which inherit it; exec'ed
# workers run natively). PYTHONMALLOC=malloc lets memcheck see every
# allocation. Fails on any memcheck error or definite leak in any process.
# Builds the extension with -O1 -g in a scratch copy. Not part of CI (slow).
# The interpreter has to be memcheck-clean itself (Debian's /usr/bin/python3
# is, the default here; a pyenv build is not: checked first).
#   [PYTHON=/usr/bin/python3] bash scripts/valgrind.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=$(command -v "${PYTHON:-/usr/bin/python3}")
case $py in /*) ;; *) py="$PWD/$py" ;; esac
py=$("$py" -c 'import sys; print(sys.executable)')     # not a shim: memcheck the interpreter
command -v valgrind > /dev/null || { echo "valgrind is not installed" >&2; exit 2; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$root/src" "$root/cluster_ext" "$root/tests" "$root/setup.py" \
      "$root/pyproject.toml" "$root/README.md" "$work/"
rm -f "$work"/cluster_ext/*.so
# shellcheck source=build_inplace.sh
source "$root/scripts/build_inplace.sh"
build_inplace "$py" "$work" CFLAGS="-O1 -g" > /dev/null 2>&1
export PYTHONPATH="$work" PYTHONMALLOC=malloc
if ! valgrind -q --error-exitcode=1 "$py" -c pass 2> "$work/baseline.log"; then
    echo "$py has memcheck errors of its own (python -c pass); try PYTHON=/usr/bin/python3" >&2
    exit 2
fi

scenarios=(
    "exit_table.py primary_disconnect"
    "exit_table.py sigkill"
    "fork_mix.py"
    "msg_flood.py json 10000"
    "msg_flood.py pickle 10000"
    "msg_big.py json"
    "rob_garbage.py badtype"
    "rob_garbage.py truncated"
    "rob_cluster_disconnect.py three"
    "fault_kill_stream.py 4"
    "fault_kill_disconnect.py 6 3"
    "fault_kill_reload.py kill 4 1"
    "fault_kill_reload.py bad"
)
failed=0
printf '%-34s %9s %7s %14s %9s\n' scenario processes errors "definitely lost" seconds
for scenario in "${scenarios[@]}"; do
    logs="$work/logs/${scenario// /_}"
    mkdir -p "$logs"
    start=$(date +%s)
    # shellcheck disable=SC2086  # the scenario's words are its argv
    if ! (cd "$work/tests/apps" && timeout 600 valgrind --tool=memcheck --leak-check=full \
            --show-leak-kinds=definite --errors-for-leak-kinds=definite \
            --suppressions="$root/scripts/valgrind-cpython.supp" \
            --trace-children=no --child-silent-after-fork=no \
            --log-file="$logs/%p.log" "$py" $scenario > "$logs/stdout" 2>&1); then
        echo "$scenario: the app failed:" >&2
        tail -5 "$logs/stdout" >&2
        failed=1
    fi
    procs=$(ls "$logs"/*.log | wc -l)
    errors=$(awk '/ERROR SUMMARY/ {s += $4} END {print s + 0}' "$logs"/*.log)
    lost=$(awk '/definitely lost:/ {gsub(",", "", $4); s += $4} END {print s + 0}' "$logs"/*.log)
    printf '%-34s %9s %7s %12s B %9s\n' "$scenario" "$procs" "$errors" "$lost" \
        $(( $(date +%s) - start ))
    if [[ $errors != 0 || $lost != 0 ]]; then
        grep -h -A25 "^==[0-9]*== [A-Z].*\(Invalid\|uninitialised\|definitely lost in\)" \
            "$logs"/*.log | head -80 >&2 || true
        failed=1
    fi
done
if [[ $failed == 0 ]]; then echo "valgrind: clean"; else echo "valgrind: FAILED"; fi
exit $failed
