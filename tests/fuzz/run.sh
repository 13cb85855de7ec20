#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for
# SECONDS (default 60), starting from tests/fuzz/corpus/NAME.  New inputs go
# to build-fuzz/corpus/NAME; crashes are written to tests/fuzz/crash-*.
# usage: tests/fuzz/run.sh [SECONDS] [NAME...]
#   NAME: gguf, model, tokenizer, chat, request, sse, http (default: all fuzz_*.c)
# A crash, once fixed, goes into tests/fuzz/corpus/NAME/ as a regression input.
set -euo pipefail
cd "$(dirname "$0")/../.."

secs=${1:-60}
[ $# -gt 0 ] && shift
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in tests/fuzz/fuzz_*.c; do
        n=$(basename "$f" .c)
        targets+=("${n#fuzz_}")
    done
fi

if [ ! -f build-fuzz/build.ninja ]; then
    CC=clang meson setup build-fuzz -Dfuzz=true -Dbuildtype=debugoptimized -Db_lundef=false \
        -Dcuda=disabled >/dev/null
fi

status=0
for t in "${targets[@]}"; do
    ninja -C build-fuzz "tests/fuzz/fuzz_$t" >/dev/null
    work=build-fuzz/corpus/$t
    mkdir -p "$work"
    args=(-max_total_time="$secs" -timeout=10 -print_final_stats=1 -artifact_prefix=tests/fuzz/)
    [ -f "tests/fuzz/$t.dict" ] && args+=(-dict="tests/fuzz/$t.dict")
    seeds=()
    [ -d "tests/fuzz/corpus/$t" ] && seeds+=("tests/fuzz/corpus/$t")
    echo "== fuzz_$t for ${secs}s"
    if ! "build-fuzz/tests/fuzz/fuzz_$t" "${args[@]}" "$work" "${seeds[@]}" 2> "build-fuzz/fuzz_$t.log"; then
        echo "fuzz_$t FAILED; see build-fuzz/fuzz_$t.log and tests/fuzz/crash-*"
        tail -40 "build-fuzz/fuzz_$t.log"
        status=1
    else
        grep -E "stat::number_of_executed_units|cov:" "build-fuzz/fuzz_$t.log" | tail -2
    fi
done
exit $status
