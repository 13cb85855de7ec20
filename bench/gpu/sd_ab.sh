#!/bin/bash
# Decode A/B in one call: builds attn_bench and its phase-stamp build
# (-DCATTN_SD_PROF) unless present, then for each setting in SETTINGS
# (space-separated; each VAR=value[,VAR=value...], '-' for none) the phase
# stamps at N tokens and the decode rows at N, twice in alternation.
# MODE=sparse (default: sdprof, the sparse paths' rows with the default
# path only) or dense (decprof, the dense decode rows).  OLD: another
# attn_bench (e.g. an older tree's, with the mode's rows command) timed
# beside each round's settings; OLD_PROF: its stamp build, whose stamps
# then come beside the new ones.  Env: N (default 1048576), MODE,
# SETTINGS, OLD, OLD_PROF, OUT.
set -u -o pipefail
cd "$(dirname "$0")/../.."
N=${N:-1048576}
OUT=${OUT:-/tmp/sd-ab}
SETTINGS=${SETTINGS:--}
MODE=${MODE:-sparse}
PROF=sdprof ROWS=decode
[ "$MODE" = dense ] && PROF=decprof ROWS=dense
mkdir -p "$OUT" build-gpu
SRC="bench/gpu/attn_bench.cu engine/cuda/attn_decode.cu engine/cuda/attn_prefill.cu engine/cuda/attn_prefill_sm90.cu"
ARCH="-gencode=arch=compute_90a,code=sm_90a -gencode=arch=compute_80,code=sm_80"
[ -x build-gpu/attn_bench ] || nvcc -O3 -std=c++17 -I. $ARCH -o build-gpu/attn_bench $SRC || exit 1
[ -x build-gpu/attn_bench.prof ] || nvcc -O3 -std=c++17 -I. -DCATTN_SD_PROF $ARCH -o build-gpu/attn_bench.prof $SRC || exit 1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/gpu.txt"
for r in 1 2; do
    for s in $SETTINGS; do
        e=${s//,/ }; [ "$e" = - ] && e=SPARSED_AB_NONE=1
        echo "=== round $r setting $s" | tee -a "$OUT/sd-ab.log"
        env $e timeout 120 build-gpu/attn_bench.prof $PROF "$N" 2>&1 | tee -a "$OUT/sd-ab.log" | grep -E "^==|PROF"
        env $e CATTN_SD_PASSES=1 timeout 200 build-gpu/attn_bench $ROWS "$N" 2>&1 | tee -a "$OUT/sd-ab.log" |
            grep -E "^ROW|FAIL" | sed "s/^/[$s] /"
    done
    if [ -n "${OLD:-}" ]; then
        echo "=== round $r old $OLD" | tee -a "$OUT/sd-ab.log"
        [ -n "${OLD_PROF:-}" ] && timeout 120 "$OLD_PROF" $PROF "$N" 2>&1 | tee -a "$OUT/sd-ab.log" | grep -E "^==|PROF"
        CATTN_SD_PASSES=1 timeout 200 "$OLD" $ROWS "$N" 2>&1 | tee -a "$OUT/sd-ab.log" | grep -E "^ROW|FAIL" |
            sed "s/^/[old] /"
    fi
done
