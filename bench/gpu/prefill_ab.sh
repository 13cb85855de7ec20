#!/bin/bash
# Two builds of gpu_model_bench side by side: one sequence of each of
# CONTEXTS tokens of long.sh's m3-1b prefilled CHUNK tokens a step (as the
# daemon chunks a prompt), A then B, ROUNDS times, in one call.  A may be
# an older pack's binary carried beside this one (e.g.
# A=.gpupack/bin/gpu_model_bench.old).  Rows go to OUT/prefill-ab.jsonl,
# labelled A or B.  ENV_A / ENV_B ("VAR=v,VAR=v") set variables for one
# side only (A and B may then be the same binary).  Env: PACK, MODEL, A,
# B, ENV_A, ENV_B, CONTEXTS, CHUNK, ROUNDS, ARGS.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-prefill-ab-out}
MODEL=${MODEL:-/tmp/m3-1b.gguf}
A=${A:-$P/bin/gpu_model_bench}
B=${B:-$P/bin/gpu_model_bench}
CONTEXTS=${CONTEXTS:-32768 131072}
CHUNK=${CHUNK:-8192}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
. bench/gpu/env.sh
m3_model "$MODEL" || exit 1
for ctx in $CONTEXTS; do
    for r in $(seq 1 "$ROUNDS"); do
        for side in A B; do
            bin=$A envs=${ENV_A:-}
            [ $side = B ] && bin=$B envs=${ENV_B:-}
            IFS=, read -ra ev <<< "$envs"
            env "${ev[@]}" "$bin" --model "$MODEL" --label "$side" --attention sparse --context "$ctx" --chunk "$CHUNK" --steps 4 \
                ${ARGS:-} 2>>"$OUT/prefill-ab.log" | grep '^JSON ' | sed 's/^JSON //' | tee -a "$OUT/prefill-ab.jsonl"
        done
    done
done
