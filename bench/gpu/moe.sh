#!/bin/bash
# Mixture-of-experts throughput of the CUDA engine (engine/cuda/moe.cuh) on
# a seeded random model of Qwen3-30B-A3B's layer shape made on the spot
# (LAYERS layers, default 4, of embd 2048, 32/4 heads of 128, 128 experts of
# width 768, 8 a token; vocab 32000; bf16): prefill and greedy decode at
# BATCHES (1,8,32; gpu_model_bench, CUDA graphs on), four times in one
# call: the default choice of kernels (CUDA-core products up to
# MOE_SIMPLE_T tokens, tensor cores past it: wgmma on Hopper), and each
# kernel everywhere (SPARSED_CUDA_MOE=simple, =mma, =wgmma).  Batch-1
# decode is set beside the bytes a step must read (weights of the
# attention, the router and 8 experts a layer, the output matrix), and
# prefill beside its FLOPs.  Uses the pack (PACK); writes moe.jsonl under OUT.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-moe-out}
LAYERS=${LAYERS:-4}
MODEL=${MODEL:-/tmp/bench-qwen3moe-$LAYERS.gguf}
mkdir -p "$OUT"
. bench/gpu/env.sh
E=2048 H=32 KV=4 D=128 X=128 K=8 F=768 V=32000     # qwen3moe_model's shape (env.sh)
qwen3moe_model "$MODEL" $LAYERS || exit 1
log=/tmp/gpu-moe-bench.log
: > $log
rc=0
for k in default simple mma wgmma; do
    env $([ $k = default ] || echo SPARSED_CUDA_MOE=$k) timeout 300 $P/bin/gpu_model_bench --model "$MODEL" \
        --prompt 512 --batches ${BATCHES:-1,8,32} --steps 64 --label "moe=$k" | tee -a $log || rc=1
done
grep '^JSON ' $log | sed 's/^JSON //' > "$OUT/moe.jsonl"
python3 - "$OUT/moe.jsonl" $LAYERS $E $H $KV $D $X $K $F $V <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
L, E, H, KV, D, X, K, F, V = map(int, sys.argv[2:])
layer = (H * D + 2 * KV * D) * E + H * D * E + X * E + K * 3 * F * E
floor_b = 2 * (L * layer + V * E)
print("batch-1 decode reads %.1f MB of weights a step" % (floor_b / 1e6))
attn_flops = lambda n: 2 * 2 * H * D * n * (n + 1) / 2   # causal QK and PV over a prompt of n
for r in rows:
    if r.get("batch") == 32:
        n = r["prompt"]
        fl = 2 * L * layer + L * attn_flops(n) / n   # a prompt token: the layers' weights, its attention (logits: the last only)
        print("%-12s prefill at batch 32: %.0f TFLOP/s" % (r["label"], r["prefill_tok_s"] * fl / 1e12))
    if r.get("batch") == 1:
        step = r["decode_ms_per_step"] / 1e3
        print("%-12s batch 1: %.1f us a step, %.2f TB/s of weights" % (r["label"], step * 1e6, floor_b / step / 1e12))
PY
exit $rc
