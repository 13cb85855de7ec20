#!/usr/bin/env bash
# Runs every test: the release build with warnings as errors (unit,
# integration, reliability, conformance and deploy suites), then the unit,
# integration, reliability and conformance suites again under ASan+UBSan
# (LeakSanitizer on the daemon's exit), then each fuzz target for 60 s.
# Expects `tools/deps.sh --tests` to have run (without it the conformance
# suite is skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f build-test/build.ninja ]; then
    meson setup build-test -Dwerror=true
fi
meson compile -C build-test
meson test -C build-test --print-errorlogs --num-processes 2

if [ ! -f build-asan/build.ninja ]; then
    meson setup build-asan -Dwerror=true -Dbuildtype=debug -Db_sanitize=address,undefined -Dcuda=disabled \
        -Db_lundef=false
fi
meson compile -C build-asan
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 --timeout-multiplier 4
# The daemon itself under ASan+UBSan: these suites start build-asan/sparsed
# (meson sets SPARSED_BUILD), and LeakSanitizer checks each daemon when it
# exits after its SIGTERM drain (the tests require exit status 0).
meson test -C build-asan --suite integration --suite reliability --suite conformance --print-errorlogs \
    --num-processes 2 --timeout-multiplier 4
unset ASAN_OPTIONS UBSAN_OPTIONS

# Every libFuzzer target (tests/fuzz/fuzz_*.c) for 60 s from its corpus.
tests/fuzz/run.sh 60
