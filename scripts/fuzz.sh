#!/usr/bin/env bash
# Builds fuzz/frames_fuzz.c with the engine under ASan+UBSan and runs it:
#   bash scripts/fuzz.sh [ITERATIONS] [SEED]     (default 20000, 1)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
gcc -std=c11 -D_GNU_SOURCE -O1 -g -Wall -Wextra -fsanitize=address,undefined \
    -fno-omit-frame-pointer -fno-sanitize-recover=all -I"$root/src" \
    "$root/fuzz/frames_fuzz.c" "$root/src/channel.c" "$root/src/outq.c" \
    "$root/src/loop.c" "$root/src/policy.c" "$root/src/util.c" -o "$out/frames_fuzz"
ASAN_OPTIONS=detect_leaks=1 "$out/frames_fuzz" "${1:-20000}" "${2:-1}" "$root"/fuzz/corpus/*.bin
