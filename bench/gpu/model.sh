#!/bin/bash
# Whole-model throughput of the CUDA engine (prefill and greedy decode,
# batches of 1, 8 and 32 sequences) on a seeded random Llama made on the
# spot with mkmodel (8 layers, embd 2048, 16/4 heads of 128, ff 5632, vocab
# 32000, bf16: 0.5B parameters).  Uses the folder tests/gpu/pack.sh made
# (PACK), without and with CUDA graphs for the decode steps; writes
# bench.jsonl under OUT; the last line printed is the headline (decode
# tokens/s at the largest batch, graphs on).
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-model-out}
MODEL=${MODEL:-/tmp/bench-llama-0.5b.gguf}
mkdir -p "$OUT"
. bench/gpu/env.sh
llama_model "$MODEL" || exit 1
log=/tmp/gpu-model-bench.log
: > $log
rc=0
for g in 0 1; do
    SPARSED_CUDA_GRAPHS=$g timeout 120 $P/bin/gpu_model_bench --model "$MODEL" --prompt 512 --batches 1,8,32 \
        --steps 64 --label "graphs=$g" | tee -a $log || rc=1
done
grep '^JSON ' $log | sed 's/^JSON //' > "$OUT/bench.jsonl"
tail -1 "$OUT/bench.jsonl"
exit $rc
