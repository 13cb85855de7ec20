#!/bin/bash
# cattn_flash (head dims 64 and 256, sliding windows, soft caps) against
# the generic attention kernel it replaces in bf16, and against the tuned
# kernels at head dim 128, on whole models: one sequence prefilled in
# chunks of 2048 to CONTEXT (32768), then 32 greedy decode steps.
#   gemma3  a Gemma-3-4B-shaped stack: 6 layers (5 with a 1024-token
#           window, 1 global), embd 2560, 8/4 heads of 256, ff 10240
#   llama64 Llama-3.2-1B's attention: 6 layers, embd 2048, 32/8 heads of 64
#   llama   gemma3's widths as 16/8 heads of 128 (the tuned kernels)
# Random bf16 weights, vocab 32000.  SPARSED_CUDA_ATTN=generic rows run
# the generic kernel.  Then at LONG (131072) tokens, dense against sparse
# attention (the engine's training-free default: minmax summaries, blocks
# of 64, sink 1 + top 61 + local 2) through cattn_flash's selection lists:
# prefill chunks KV-block outer (cattn_flash_bo), the -token rows a tile a
# token as before it; the ctas8 row splits decode keys for 8 CTAs an SM
# instead of 2; llama128 rows the tuned dense kernels against sparse at
# head dim 128; fp8kv rows fp8 K/V pages through cattn_flash; chunk8192
# rows the daemon's default step on a large card.
# Uses the pack (PACK); writes flash.jsonl and card.txt under OUT.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-flash-out}
CTX=${CONTEXT:-32768}
mkdir -p "$OUT"
. bench/gpu/env.sh
W=/tmp/gpu-flash-work
mkdir -p $W
common="--layers 6 --vocab 32000 --ctx 131072 --type bf16 --seed 21"
$P/bin/mkmodel --out $W/gemma3.gguf --arch gemma3 $common --embd 2560 --ff 10240 --heads 8 --kv-heads 4 \
    --head-dim 256 --swa-window 1024 --swa-pattern 6 >/dev/null
$P/bin/mkmodel --out $W/llama64.gguf $common --embd 2048 --ff 8192 --heads 32 --kv-heads 8 --head-dim 64 >/dev/null
$P/bin/mkmodel --out $W/llama.gguf $common --embd 2560 --ff 10240 --heads 16 --kv-heads 8 --head-dim 128 >/dev/null
: > "$OUT/flash.jsonl"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/card.txt" 2>/dev/null || true
run() {   # label model [env [context [more options]]]
    env ${3:-X=1} timeout 300 $P/bin/gpu_model_bench --model $W/$2.gguf --context ${4:-$CTX} --chunk 2048 --steps 32 \
        --max-seconds 120 --label $1 ${5:-} 2>&1 | tee $W/$1.log | grep '^JSON ' | sed 's/^JSON //' >> "$OUT/flash.jsonl"
}
run gemma3-flash gemma3
run gemma3-generic gemma3 SPARSED_CUDA_ATTN=generic
run llama64-flash llama64
run llama64-generic llama64 SPARSED_CUDA_ATTN=generic
run llama128-tuned llama
L=${LONG:-131072}
run llama64-dense-long llama64 X=1 $L
run llama64-dense-long-ctas8 llama64 CATTN_FLASH_CTAS=8 $L
run llama64-sparse-long llama64 X=1 $L "--attention sparse"
run llama64-sparse-long-token llama64 SPARSED_CUDA_SPARSE_PREFILL=token $L "--attention sparse"
run llama128-dense-long llama X=1 $L
run llama128-sparse-long llama X=1 $L "--attention sparse"
run llama64-sparse-long-fp8kv llama64 X=1 $L "--attention sparse --kv-cache-dtype fp8"
run llama64-dense-long-chunk8192 llama64 X=1 $L "--chunk 8192"
run llama64-sparse-long-chunk8192 llama64 X=1 $L "--attention sparse --chunk 8192"
run llama64-dense-long-fp8kv llama64 X=1 $L "--kv-cache-dtype fp8"
run gemma3-dense-long gemma3 X=1 $L
run gemma3-sparse-long gemma3 X=1 $L "--attention sparse"
run gemma3-sparse-long-token gemma3 SPARSED_CUDA_SPARSE_PREFILL=token $L "--attention sparse"
cat "$OUT/flash.jsonl"
