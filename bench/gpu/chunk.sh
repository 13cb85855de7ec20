#!/bin/bash
# What a prompt chunk deep in a long context costs a step of the CUDA
# engine: gpu_model_bench prefills one sequence of CONTEXT tokens of
# long.sh's m3-1b (CHUNK tokens a step, timed: the prefill a long request
# gets in the daemon), then times steps that prefill each of PROBES more
# tokens at its end (--probe-chunks: the other streams' inter-token time
# while such a chunk runs).  Each setting of ENVS ("-" = none, else
# VAR=value[,VAR=value]) runs the whole thing once, in this order, so
# kernels can be compared in one call.  Rows go to OUT/chunk.jsonl with
# their env.  Env: PACK, MODEL, CONTEXTS, CHUNK, PROBES, ENVS, STEPS.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-chunk-out}
MODEL=${MODEL:-/tmp/m3-1b.gguf}
CONTEXTS=${CONTEXTS:-262144 1048576}
CHUNK=${CHUNK:-8192}
PROBES=${PROBES:-128,512,2048,8192}
ENVS=${ENVS:--}
STEPS=${STEPS:-8}
mkdir -p "$OUT"
. bench/gpu/env.sh
m3_model "$MODEL" || exit 1
for ctx in $CONTEXTS; do
    for e in $ENVS; do
        envs=()
        [ "$e" != - ] && IFS=, read -ra envs <<< "$e"
        env "${envs[@]}" $P/bin/gpu_model_bench --model "$MODEL" --label "$e" --attention sparse --context "$ctx" \
            --chunk "$CHUNK" --steps "$STEPS" --probe-chunks "$PROBES" 2>>"$OUT/chunk.log" |
            grep '^JSON ' | sed 's/^JSON //' | tee -a "$OUT/chunk.jsonl"
    done
done
