# Sourced by the coverage-guided fuzz scripts (libFuzzer and atheris write the
# same log). fuzz_run LOG NAME WHAT COMMAND... runs one fuzzer into LOG, shows
# the log's tail when it fails, then NAME's line: executions, rate, the last
# coverage figures, and 0 WHAT (crashes, failures) or where the failing input
# was kept (fuzz/out/NAME-*). Returns 1 when the fuzzer failed.
fuzz_run() {
    local log=$1 name=$2 what=$3 start=$SECONDS failed="" last execs rate cov
    shift 3
    if ! "$@" > "$log" 2>&1; then
        failed="1: see fuzz/out/$name-*"
        grep -a -v '^#\|^INFO\|^WARNING\|^\s*$' "$log" | tail -40 >&2
    fi
    last=$(grep -a -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE|INITED)' "$log" \
           | tail -n 1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    cov=$(sed -n 's/.* cov: \([0-9]*\) ft: \([0-9]*\) corp: \([0-9]*\)\/.*/cov \1, ft \2, corpus \3 inputs/p' \
          <<< "$last")
    echo "$name: ${execs:-?} execs in $((SECONDS - start)) s (${rate:-?}/s)," \
         "${cov:-no coverage line}, $what ${failed:-0}"
    [[ -z $failed ]]
}
