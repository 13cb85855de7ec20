#!/usr/bin/env bash
# CPU decode step time from 8K to 128K tokens of context, dense vs sparse,
# on two small mkmodel models (2 layers, 8 query / 2 KV heads of 64, so the
# attention dominates): Llama-shaped (training-free indexer, its defaults)
# and M3-style (MSA indexer: 128-dim index keys, blocks of 128, top 16),
# plus an M3-proportioned MSA model.
# Pages are filled with random K/V/index keys (see decode.c); only decode
# steps are timed.  JSON to bench/results/cpu-decode-<date>.json.
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
meson compile -C "$build" bench/cpu_decode tools/mkmodel >/dev/null
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$build/tools/mkmodel" --out "$tmp/llama.gguf" --preset tiny --layers 2 --embd 128 --heads 8 \
    --kv-heads 2 --head-dim 64 --ff 256 --vocab 512 --ctx 262144 --seed 1 >/dev/null
"$build/tools/mkmodel" --out "$tmp/msa.gguf" --preset m3-tiny --layers 2 --embd 128 --heads 8 \
    --kv-heads 2 --head-dim 64 --ff 256 --vocab 512 --ctx 262144 --indexer-dim 128 \
    --indexer-block 128 --indexer-top-k 16 --indexer-local 1 --dense-layers 0 --seed 2 >/dev/null
# M3's proportions (16 query heads per 4 KV heads of 128, one 128-dim index
# key): K/V are 8x the index keys per token, as in M3
"$build/tools/mkmodel" --out "$tmp/msa-m3shape.gguf" --preset m3-tiny --layers 2 --embd 128 --heads 16 \
    --kv-heads 4 --head-dim 128 --ff 256 --vocab 512 --ctx 262144 --indexer-dim 128 \
    --indexer-block 128 --indexer-top-k 16 --indexer-local 1 --dense-layers 0 --seed 3 >/dev/null
SPARSED_COMMIT=$(git rev-parse --short HEAD) "$build/bench/cpu_decode" \
    --out "bench/results/cpu-decode-$(date -u +%F).json" "$@" "$tmp/llama.gguf" "$tmp/msa.gguf" \
    "$tmp/msa-m3shape.gguf"
