#!/usr/bin/env bash
# Coverage-guided fuzzing of the C engine's parsers of bytes from outside the
# process: each fuzz/TARGET.c with LLVMFuzzerTestOneInput, built with clang's
# libFuzzer, ASan and UBSan (-fno-sanitize-recover=all), seeded from
# fuzz/corpus/TARGET/ (and, for frames_libfuzzer, the bare streams
# fuzz/corpus/*.bin behind a neutral prefix) copied into a scratch corpus, then
# run for a bounded time. Prints each target's executions, coverage (cov: the
# edges, ft: the features) and corpus size; exits non-zero on a crash, a leak,
# a hang or a failed check, whose input is kept in fuzz/out/ (not committed).
#   bash scripts/fuzz_coverage.sh [SECONDS_PER_TARGET]    (default 60: CI's share)
#   bash scripts/fuzz_coverage.sh --runs N                 N executions per target
#   bash scripts/fuzz_coverage.sh --corpus DIR [...]       grow DIR/TARGET, not a scratch copy
#   bash scripts/fuzz_coverage.sh --afl [SECONDS]          the same targets, built with
#                                                          afl-clang-fast, under afl-fuzz
# CC (default clang) and AFL_CC (default afl-clang-fast) name the compilers.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=fuzz_report.sh
source "$root/scripts/fuzz_report.sh"
targets=(frames_libfuzzer)
engine=(channel.c outq.c loop.c policy.c util.c)
mode=libfuzzer seconds=60 runs="" keep=""
while (($#)); do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --corpus) keep=$(mkdir -p "$2" && cd "$2" && pwd); shift 2 ;;
        --afl) mode=afl; shift ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) seconds=$1; shift ;;
    esac
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$root/fuzz/out"
flags=(-std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -fno-omit-frame-pointer
       -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all -I"$root/src")
sources=("${engine[@]/#/$root/src/}")
# The engine's asserts stay on (no NDEBUG), as in CX_SANITIZE=1 builds.
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:quarantine_size_mb=64}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

seed() {    # seed TARGET DIR: the committed inputs, into DIR (left as it is if it has some)
    local target=$1 dir=$2 f
    mkdir -p "$dir"
    if [[ -n $(ls -A "$dir") ]]; then
        return
    fi
    cp "$root/fuzz/corpus/$target"/* "$dir/" 2>/dev/null || true
    if [[ $target == frames_libfuzzer ]]; then
        for f in "$root"/fuzz/corpus/*.bin; do     # bare streams: one write, no fds
            { printf '\0\0\0\0'; cat "$f"; } > "$dir/bare-$(basename "$f")"
        done
    fi
}

status=0
for target in "${targets[@]}"; do
    corpus=${keep:+$keep/$target}
    corpus=${corpus:-$work/corpus-$target}
    seed "$target" "$corpus"
    if [[ $mode == afl ]]; then
        cc=${AFL_CC:-afl-clang-fast}
        command -v "$cc" > /dev/null || { echo "$cc not found (apt-get install afl++)" >&2; exit 2; }
        AFL_QUIET=1 "$cc" "${flags[@]}" "$root/fuzz/$target.c" "${sources[@]}" -o "$work/$target"
        out=$work/afl-$target
        echo "+ $target: afl-fuzz for ${seconds} s, corpus $corpus"
        # afl++'s driver calls LLVMFuzzerInitialize and runs persistent; -t: a
        # hang is an input over 1 s; -m none: ASan reserves terabytes of
        # address space; no core binding (the caller may pin with taskset).
        AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
            AFL_NO_AFFINITY=1 \
            ASAN_OPTIONS=abort_on_error=1:symbolize=0:detect_leaks=0 \
            afl-fuzz -V "$seconds" -t 1000 -m none -i "$corpus" -o "$out" -- "$work/$target" \
            > "$work/$target.log" 2>&1 || { tail -20 "$work/$target.log"; status=1; continue; }
        stats=$out/default/fuzzer_stats
        get() { awk -v k="$1" '$1 == k {print $3}' "$stats"; }
        crashes=$(get saved_crashes) hangs=$(get saved_hangs)
        echo "$target (afl++): $(get execs_done) execs in $(get run_time) s" \
             "($(get execs_per_sec)/s), edges $(get edges_found), map $(get bitmap_cvg)," \
             "corpus $(get corpus_count) inputs, crashes $crashes, hangs $hangs"
        if ((crashes + hangs > 0)); then
            cp -r "$out/default/crashes" "$out/default/hangs" "$root/fuzz/out/" 2>/dev/null || true
            echo "$target: see fuzz/out/crashes and fuzz/out/hangs" >&2
            status=1
        fi
        continue
    fi
    cc=${CC:-clang}
    command -v "$cc" > /dev/null || { echo "$cc not found (apt-get install clang)" >&2; exit 2; }
    "$cc" "${flags[@]}" "$root/fuzz/$target.c" "${sources[@]}" -o "$work/$target"
    bound=(-max_total_time="$seconds") what="$seconds s"
    [[ -n $runs ]] && bound=(-runs="$runs") what="$runs runs"
    echo "+ $target: libFuzzer, $what, corpus $corpus"
    fuzz_run "$work/$target.log" "$target" crashes \
        "$work/$target" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$root/fuzz/out/$target-" "$corpus" || status=1
done
exit $status
