#!/bin/bash
# One greedy decode step of the CUDA engine, kernel by kernel: ncu times
# each node of the decode graph on its own (--graph-profiling node, caches
# not flushed, clocks not locked) in gpu_model_bench on long.sh's m3-1b
# (MSA) at CONTEXTS tokens, and the step between the last two argmax
# launches is summed per kernel (the GEMVs per grid size, i.e. per matrix
# shape).  cuBLASLt's kernels (prefill, 3+ tokens) are not in the filter.
# Writes step-<context>.txt under OUT.  Env: PACK, CONTEXTS, MODEL;
# LLAMA=1 profiles model.sh's 0.5B Llama instead, at BATCH sequences of
# 512-token prompts, every kernel (cuBLASLt's too); MOE=1 the same on
# moe.sh's Qwen3-MoE-shaped model.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-step-out}
CONTEXTS=${CONTEXTS:-16384 131072}
MODEL=${MODEL:-/tmp/m3-1b.gguf}
mkdir -p "$OUT"
. bench/gpu/env.sh
m3_model "$MODEL" || exit 1
if [ -n "${LLAMA:-}" ]; then
    MODEL=/tmp/bench-llama-0.5b.gguf
    llama_model $MODEL || exit 1
    CONTEXTS="b${BATCH:-32}"
elif [ -n "${MOE:-}" ]; then   # moe.sh's Qwen3-MoE-shaped model, like LLAMA=1
    MODEL=/tmp/bench-qwen3moe-4.gguf LLAMA=1
    qwen3moe_model $MODEL 4 || exit 1
    CONTEXTS="b${BATCH:-32}"
fi
for ctx in $CONTEXTS; do
    if [ -n "${LLAMA:-}" ]; then
        filter=regex:. run=(--prompt 512 --batches "${BATCH:-32}" --steps 2)
    else
        filter=regex:'msa_score|decode_kernel|gemv_kernel|rmsnorm|qkv_post|swiglu|argmax'
        run=(--attention sparse --context "$ctx" --chunk 65536 --steps 2)
    fi
    timeout 280 ncu --graph-profiling node --cache-control none --clock-control none -k "$filter" \
        --metrics gpu__time_duration.sum $P/bin/gpu_model_bench --model "$MODEL" "${run[@]}" \
        > "$OUT/ncu-$ctx.log" 2>&1 || echo "ncu rc $? at $ctx"
    python3 - "$OUT/ncu-$ctx.log" <<'EOF' | tee "$OUT/step-$ctx.txt"
import collections, re, sys
rows, name = [], None
for line in open(sys.argv[1]):
    m = re.match(r'\s+(?:void )?([A-Za-z_0-9:]+)(<[^(]*>)?(?:\(.*?\))?\s*\((\d+), (\d+), (\d+)\)x', line)
    if m:
        name, grid = m.group(1) + (m.group(2) or '').replace('__nv_bfloat16', 'bf16'), m.group(3)
        continue
    m = re.search(r'gpu__time_duration.sum\s+(\S+)\s+([\d.,]+)', line)
    if m and name:
        v, u = float(m.group(2).replace(',', '')), m.group(1)
        rows.append((name, grid, v / 1000 if u == 'ns' else v * 1000 if u == 'ms' else v))
        name = None
ends = [i for i, r in enumerate(rows) if r[0].startswith('argmax')]
if len(ends) < 2:
    sys.exit('fewer than two decode steps profiled')
tot = collections.OrderedDict()
for nm, g, v in rows[ends[-2] + 1:ends[-1] + 1]:
    a = tot.setdefault(nm + (' grid ' + g if nm.startswith(('gemv', 'nvjet', 'sm90', 'cutlass', 'moe')) else ''), [0, 0.0])
    a[0] += 1
    a[1] += v
print(sys.argv[1].split('ncu-')[-1].split('.')[0], 'tokens: one decode step, us')
for nm, (c, v) in tot.items():
    print(f'  {nm:44s} {c:4d} x {v / c:8.2f} = {v:9.1f}')
print(f'  {"sum":44s} {sum(v for c, v in tot.values()):22.1f}')
EOF
done
