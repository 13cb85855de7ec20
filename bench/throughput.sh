#!/usr/bin/env bash
# CPU prefill/decode tokens/s for stories260K and SmolLM2-135M (if fetched),
# 1 and 2 threads; JSON to bench/results/cpu-throughput-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD:-build}
meson compile -C "$build" bench/throughput >/dev/null
models=(models/stories260K.gguf:128)
smol=.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$smol" ] && models+=("$smol:256")
SPARSED_COMMIT=$(git rev-parse --short HEAD) \
    "$build/bench/throughput" --out "bench/results/cpu-throughput-$(date -u +%F).json" "${models[@]}"
