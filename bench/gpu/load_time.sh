#!/bin/bash
# Time to load a model on the GPU and answer one token (`sparsed generate
# --device cuda --max-tokens 1`), for a 1B-class Llama (mkmodel preset
# llama-1b-ish) in Q4_K and BF16, file in the page cache: the weights'
# dequantization and upload dominate.  OLD=path/to/another/sparsed times it
# beside this one, two rounds each.  Uses the pack of tests/gpu/pack.sh.
#     PACK=build-cuda/gpu-pack [OLD=...] bash bench/gpu/load_time.sh
set -u
P=${PACK:-build-cuda/gpu-pack}
W=/tmp/sparsed-load-time
mkdir -p $W
for d in /usr/local/cuda/lib64 \
         $(python3 -c 'import nvidia.cublas, os; print(os.path.dirname(nvidia.cublas.__file__) + "/lib")' 2>/dev/null); do
    [ -e "$d/libcublas.so.13" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}" && break
done
export LD_LIBRARY_PATH="$P/lib:${LD_LIBRARY_PATH:-}"
bins="$P/bin/sparsed"
[ -n "${OLD:-}" ] && bins="$OLD $bins"
echo "cpus $(nproc); $(nvidia-smi --query-gpu=name --format=csv,noheader)"
for t in q4_k bf16; do
    m=$W/l1b-$t.gguf
    [ -f $m ] || $P/bin/mkmodel --out $m --preset llama-1b-ish --ctx 8192 --type $t --seed 3 >/dev/null 2>&1
    cat $m > /dev/null
    for round in 1 2; do
        for b in $bins; do
            s=$EPOCHREALTIME
            $b generate --device cuda --model $m --max-tokens 1 --prompt hi >/dev/null 2>&1
            rc=$?
            e=$EPOCHREALTIME
            awk -v t="$t" -v b="$b" -v r=$round -v s="$s" -v e="$e" -v rc=$rc \
                'BEGIN { printf "%s %s round %d: %.2f s (rc %d)\n", t, b, r, e - s, rc }'
        done
    done
done
