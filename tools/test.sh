#!/usr/bin/env bash
# Runs every test: the release build with warnings as errors (unit,
# integration and deploy suites), then the unit suite again under
# ASan+UBSan.  Expects tools/deps.sh to have run.
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
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    meson test -C build-asan --suite unit --print-errorlogs --num-processes 2 --timeout-multiplier 4
