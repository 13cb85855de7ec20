#!/bin/bash
# Where a chunked prefill's time goes, kernel by kernel: ncu times every
# kernel (one metric, caches and clocks left alone) of gpu_model_bench
# prefilling CONTEXT tokens of long.sh's m3-1b (MSA) in
# CHUNK-token steps (as the daemon chunks a prompt), and the kernels' GPU
# time is summed per name and per kind (GEMM, attention, selection,
# elementwise).  Writes prefill-<context>.txt and prefill-<context>.json
# under OUT.  Env: PACK, MODEL, CONTEXTS, CHUNK, ARGS (more bench options);
# MOE=1 profiles moe.sh's Qwen3-MoE-shaped model instead, prefilling BATCH
# (32) prompts of 512 tokens in one step (its context: "b32").
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-prefill-out}
MODEL=${MODEL:-/tmp/m3-1b.gguf}
CONTEXTS=${CONTEXTS:-32768 131072}
CHUNK=${CHUNK:-8192}
W=/tmp/gpu-prefill-work
mkdir -p "$OUT" "$W"
. bench/gpu/env.sh
if [ -n "${MOE:-}" ]; then
    MODEL=/tmp/bench-qwen3moe-4.gguf CONTEXTS="b${BATCH:-32}"
    qwen3moe_model $MODEL 4 || exit 1
else
    m3_model "$MODEL" || exit 1
fi
for ctx in $CONTEXTS; do
    if [ -n "${MOE:-}" ]; then
        bargs="--prompt 512 --batches ${ctx#b} --steps 1"
    else
        bargs="--attention sparse --context $ctx --chunk $CHUNK --steps 1"
    fi
    # the same run without the profiler: the prefill's real time
    $P/bin/gpu_model_bench --model "$MODEL" $bargs ${ARGS:-} 2>/dev/null | grep '^JSON ' | \
        sed 's/^JSON /JSON {"unprofiled":true,/; s/,{/,/' > "$W/plain-$ctx.log"
    timeout 560 ncu --cache-control none --clock-control none --metrics gpu__time_duration.sum --csv \
        --print-units base $P/bin/gpu_model_bench --model "$MODEL" $bargs ${ARGS:-} > "$W/ncu-$ctx.csv" \
        2> "$W/bench-$ctx.log" || echo "ncu rc $? at $ctx"
    cat "$W/plain-$ctx.log" >> "$W/bench-$ctx.log"
    python3 - "$W/ncu-$ctx.csv" "$W/bench-$ctx.log" "$ctx" "$CHUNK" "$OUT" <<'EOF'
import csv, json, re, sys
path, log, ctx, chunk, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
ctx = int(ctx) if ctx.isdigit() else ctx
lines = [l for l in open(path) if l.startswith('"')]
rows = list(csv.DictReader(lines))
def kind(n):
    if re.search(r'nvjet|gemm|cutlass|xmma|cublas|splitKreduce', n, re.I): return 'GEMM (cuBLASLt)'
    if re.search(r'\bmoe_', n): return 'experts'
    if re.search(r'select|score|topk|msa_', n): return 'block selection'
    if re.search(r'prefill|attn|decode|combine|flash|bo_', n): return 'attention'
    return 'elementwise and the rest'
agg = {}
for r in rows:
    n = re.sub(r'\(.*', '', r['Kernel Name'])[:110]
    a = agg.setdefault(n, [0.0, 0])
    a[0] += float(r['Metric Value'].replace(',', '')) / 1e6
    a[1] += 1
tot = sum(a[0] for a in agg.values())
kinds, names = {}, []
for n, (ms, c) in agg.items():
    kinds[kind(n)] = kinds.get(kind(n), 0) + ms
    names.append((ms, c, n))
names.sort(reverse=True)
bench = [json.loads(l[5:]) for l in open(log) if l.startswith('JSON ')]
res = {"context": ctx, "chunk": chunk, "gpu_ms_total": round(tot, 2),
       "by_kind_ms": {k: round(v, 2) for k, v in sorted(kinds.items(), key=lambda x: -x[1])},
       "top_kernels": [{"ms": round(m, 2), "calls": c, "name": n} for m, c, n in names[:25]], "bench": bench}
json.dump(res, open("%s/prefill-%s.json" % (out, ctx), "w"), indent=1)
with open("%s/prefill-%s.txt" % (out, ctx), "w") as f:
    f.write("context %s, chunks of %d: %.1f ms of kernels\n" % (ctx, chunk, tot))
    for k, v in res["by_kind_ms"].items():
        f.write("  %-26s %9.1f ms  %5.1f%%\n" % (k, v, 100 * v / tot))
    for m, c, n in names[:25]:
        f.write("  %9.2f ms %6d x  %s\n" % (m, c, n))
print(open("%s/prefill-%s.txt" % (out, ctx)).read())
EOF
done
