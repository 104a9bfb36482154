#!/usr/bin/env bash
# Coverage-guided fuzzing (atheris) of the Python that decodes what a peer
# sent: fuzz/py_decode_fuzz.py's targets frames, protocol and control, each
# seeded from fuzz/py_corpus/TARGET/ copied into a scratch corpus and run for a
# bounded time, against the cluster_ext installed for PYTHON. Prints each
# target's executions and coverage; exits non-zero on a failure, whose input is
# kept in fuzz/out/ (not committed). Without atheris for PYTHON it replays the
# committed corpus only, and says so.
#   PYTHON=.venv/bin/python bash scripts/fuzz_python.sh [SECONDS_PER_TARGET] [TARGET...]
#   (default 10 s each; --runs N for N executions each instead)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=fuzz_report.sh
source "$root/scripts/fuzz_report.sh"
py=$(command -v "${PYTHON:-python3}")
seconds=10 runs="" targets=()
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        frames|protocol|control) targets+=("$1"); shift ;;
        *) seconds=$1; shift ;;
    esac
done
((${#targets[@]})) || targets=(frames protocol control)
harness=$root/fuzz/py_decode_fuzz.py
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export TMPDIR=$work         # the frames target's scratch directory: libFuzzer exits without atexit
mkdir -p "$root/fuzz/out"
if ! "$py" -c 'import atheris' 2> /dev/null; then
    echo "+ atheris is not installed for $py: replaying fuzz/py_corpus only"
    for target in "${targets[@]}"; do
        "$py" "$harness" "$target" --replay "$root/fuzz/py_corpus/$target"
    done
    exit 0
fi
status=0
for target in "${targets[@]}"; do
    corpus=$work/$target
    mkdir -p "$corpus"
    cp "$root/fuzz/py_corpus/$target"/* "$corpus/"
    bound=(-max_total_time="$seconds") what="$seconds s"
    [[ -n $runs ]] && bound=(-runs="$runs") what="$runs runs"
    echo "+ $target: atheris, $what"
    # -rss_limit_mb over the harness's RLIMIT_AS (3 GiB): a pickle's huge
    # allocation fails as MemoryError (the 'error' path) before it is an OOM
    fuzz_run "$work/$target.log" "py-$target" failures \
        "$py" "$harness" "$target" "${bound[@]}" -max_len=8192 -timeout=10 -rss_limit_mb=3500 \
        -print_final_stats=1 -artifact_prefix="$root/fuzz/out/py-$target-" "$corpus" || status=1
done
exit $status
