#!/bin/bash
# GPU attention benchmark: builds the harness with nvcc (unless a build that
# runs here is already in build-gpu/), runs the correctness checks, times our
# kernels and the PyTorch baselines on the same card, and writes logs and
# gpu-attn-<date>.json under $OUT.  Env: NS (token counts), PREFILL_1M
# (shapes whose 1M SDPA prefill runs), COMMIT, SKIP_CHECK, NO_FLEX, PROFILE
# (ncu durations of the decode kernels at 1M).
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
NS=${NS:-32768,131072,1048576}
PREFILL_1M=${PREFILL_1M-M3,M2,L3-8B}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
MASKDIR=/tmp/attn-masks
BIN=build-gpu/attn_bench
mkdir -p "$OUT" "$MASKDIR" build-gpu
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem,driver_version --format=csv | tee "$OUT/gpu.txt"
if ! "$BIN" info >/dev/null 2>&1; then
    echo "building $BIN"
    nvcc -O3 -std=c++17 -I. -gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80 \
        -o "$BIN" bench/gpu/attn_bench.cu engine/cuda/attn_decode.cu engine/cuda/attn_prefill.cu \
        engine/cuda/attn_prefill_sm90.cu || exit 1
fi
if [ -z "${SKIP_CHECK:-}" ]; then
    timeout 150 "$BIN" check 2>&1 | tee "$OUT/check.log"
fi
if [ -n "${PROFILE:-}" ] && command -v ncu >/dev/null; then
    # per-kernel durations of the decode paths at 1M (MSA bf16, MSA fp8, Quest, dense)
    timeout 150 ncu --clock-control none --metrics gpu__time_duration.sum \
        -k regex:'msa_score|topk|decode_kernel|decode_combine|quest_score' "$BIN" profile 1048576 \
        >"$OUT/ncu.txt" 2>&1
    awk '/^  [a-z_]+.*\([0-9]+, [0-9]+, [0-9]+\)x/ {name=$1} /gpu__time_duration.sum/ {print name, $(NF-1), $NF}' \
        "$OUT/ncu.txt" | tee "$OUT/ncu-summary.txt"
fi
timeout 200 "$BIN" bench "$NS" "$MASKDIR" 2>&1 | tee "$OUT/cuda.log"
flex=""
[ -n "${NO_FLEX:-}" ] && flex="--no-flex"
timeout ${TORCH_TIMEOUT:-220} python3 bench/gpu/torch_bench.py --ns "$NS" --maskdir "$MASKDIR" --prefill-1m "$PREFILL_1M" $flex \
    2>&1 | tee "$OUT/torch.log"
grep -E "FAIL|PASS" "$OUT/check.log" 2>/dev/null | tail -40
python3 bench/gpu/report.py "$OUT/cuda.log" "$OUT/torch.log" --commit "$COMMIT" \
    --out "$OUT/gpu-attn-$(date +%Y-%m-%d).json" 2>&1 | tee "$OUT/report.txt"
