#!/bin/sh
# Serving benchmark: starts `sparsed serve` on a free port for each model
# (stories260K, and SmolLM2-135M-Instruct when .cache/models has it), runs
# bench/serve/loadgen.py at concurrency 1, 8 and 32, and writes
# bench/results/serve-*.json.  Usage: bench/serve/run.sh [build dir] [loadgen args...]
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
build=${1:-$root/build}
[ $# -gt 0 ] && shift
py=$root/.venv/bin/python3
[ -x "$py" ] || py=python3

run_model() {
    model=$1; shift
    log=$(mktemp)
    "$build/sparsed" serve --model "$model" --port 0 --max-running 64 "$@" 2>"$log" &
    pid=$!
    port=
    for _ in $(seq 1 100); do
        port=$(sed -n 's/.*listening on http:\/\/[^ ]*:\([0-9]*\).*/\1/p' "$log")
        [ -n "$port" ] && break
        sleep 0.1
    done
    if [ -z "$port" ]; then cat "$log"; kill "$pid"; exit 1; fi
    "$py" "$root/bench/serve/loadgen.py" --url "http://127.0.0.1:$port" $LOADGEN_ARGS || true
    kill -TERM "$pid"
    wait "$pid" || true
    rm -f "$log"
}

LOADGEN_ARGS="$*"
run_model "$root/models/stories260K.gguf" --no-access-log
smol=$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
if [ -f "$smol" ]; then
    LOADGEN_ARGS="--max-tokens 32 --requests 24 $*"
    run_model "$smol" --no-access-log
fi
