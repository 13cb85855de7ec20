#!/bin/bash
# Long-context model benchmark of the CUDA engine: an M3-shaped 1B-class
# MSA model made on the spot with mkmodel (preset m3-1b: 16 layers, embd
# 2048, 16 query / 4 KV heads of 128, index heads 4 x 128, blocks of 128,
# top 16 + 1 local, first 2 layers dense; bf16, random weights), one
# sequence prefilled CHUNK tokens per engine_step, then greedy decode.
# Rows: sparse and dense at 128K and at 1M (dense prefill at 1M is
# quadratic: a few minutes on the wgmma kernel).  Each row is appended to
# OUT/long.jsonl as soon as it is measured; OUT/gpu-model.json gathers
# them with the card and the floors (datasheet bandwidth and bf16 rate).
# ROWS picks rows by label (sparse-1m-fp8, MSA index keys in fp8, and
# sparse-128k-fp8kv, sparse-1m-fp8kv(-fp8), K/V in fp8 (and index keys),
# are not in the default set).  SERVE=1 also runs `sparsed serve --device
# cuda` smoke tests (stories260K; the small MSA model with a prompt past
# sparse_min_context).  Uses the
# folder tests/gpu/pack.sh made (PACK).
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-long-out}
MODEL=${MODEL:-/tmp/m3-1b.gguf}
LAYERS=${LAYERS:-16}
CHUNK=${CHUNK:-16384}
STEPS=${STEPS:-32}
COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
. bench/gpu/env.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/gpu.txt"
ROWS=${ROWS-"sparse-128k dense-128k sparse-1m dense-1m"}   # ROWS= runs none
if [ -n "$ROWS" ]; then
    m3_model "$MODEL" $LAYERS || exit 1
fi
: > "$OUT/long.jsonl"
row() {   # label attention context max-seconds [gpu_model_bench options]
    case " $ROWS " in *" $1 "*) ;; *) return ;; esac
    timeout ${4}s $P/bin/gpu_model_bench --model "$MODEL" --label "$1" --attention "$2" --context "$3" \
        --chunk $CHUNK --steps $STEPS --max-seconds $(( $4 - 60 )) ${5:-} 2>&1 | tee -a "$OUT/long.log" |
        grep '^JSON ' | sed 's/^JSON //' >> "$OUT/long.jsonl"
}
row sparse-128k sparse 131072 ${T128:-120}
row dense-128k dense 131072 ${T128:-120}
row sparse-128k-fp8kv sparse 131072 ${T128:-120} "--kv-cache-dtype fp8"   # not in the default ROWS
row sparse-1m sparse 1048576 ${T1M:-240}
row sparse-1m-fp8 sparse 1048576 ${T1M:-240} "--index-keys fp8"   # not in the default ROWS
row sparse-1m-fp8kv sparse 1048576 ${T1M:-240} "--kv-cache-dtype fp8"   # nor these two
row sparse-1m-fp8kv-fp8 sparse 1048576 ${T1M:-240} "--kv-cache-dtype fp8 --index-keys fp8"
row dense-1m dense 1048576 ${T1M_DENSE:-420}

serve_smoke() {   # name model prompt-repeats: one completion over HTTP from the daemon on the GPU
    LD_LIBRARY_PATH="$P/lib:${LD_LIBRARY_PATH:-}" $P/bin/sparsed serve --device cuda --model "$2" --port 18089 \
        > "$OUT/serve-$1.log" 2>&1 &
    local spid=$!
    python3 - "$OUT/serve.jsonl" "$1" "$3" <<'PY'
import json, sys, time, urllib.request
base = "http://127.0.0.1:18089"
for _ in range(150):
    try:
        urllib.request.urlopen(base + "/health", timeout=1).read()
        break
    except Exception:
        time.sleep(0.2)
prompt = "Once upon a time there was a little cat who sat on a mat. " * int(sys.argv[3])
req = urllib.request.Request(base + "/v1/completions", method="POST",
                             data=json.dumps({"prompt": prompt, "max_tokens": 32, "temperature": 0}).encode(),
                             headers={"Content-Type": "application/json"})
res = {"name": sys.argv[2], "status": None}
try:
    with urllib.request.urlopen(req, timeout=60) as r:
        body = json.loads(r.read())
        res.update(status=r.status, text=body["choices"][0]["text"], usage=body.get("usage"))
except Exception as e:
    res["error"] = str(e)
open(sys.argv[1], "a").write(json.dumps(res) + "\n")
print("serve:", res)
PY
    kill $spid 2>/dev/null
    wait $spid 2>/dev/null
}
if [ -n "${SERVE:-}" ]; then
    : > "$OUT/serve.jsonl"
    serve_smoke stories260K $P/models/stories260K.gguf 1
    # MSA model, prompt past sparse_min_context: the tuned sparse kernels
    serve_smoke m3-128 $P/models/m3-128.gguf 40
fi

python3 - "$OUT" "$COMMIT" <<'PY'
import json, os, sys, datetime
out, commit = sys.argv[1], sys.argv[2]
card = open(os.path.join(out, "gpu.txt")).read().strip()
bw, fl = (4.8e12, 989e12) if "H200" in card else (3.35e12, 989e12)   # datasheet: bytes/s, bf16 dense FLOP/s
# m3-1b: E 2048, 16 q / 4 kv heads of 128, F 5632, V 32000 (tied? count both), index 4 x 128
E, Hq, Hkv, D, F, V, L, Ld, I = 2048, 16, 4, 128, 5632, 32000, 16, 2, 128
layer = E * (Hq * D + 2 * Hkv * D) + Hq * D * E + 3 * E * F
params = L * layer + (L - Ld) * E * (Hkv * I + I) + 2 * V * E
sel = 17 * 128                      # tokens a sparse query reads (top 16 + 1 local blocks)
def floors(n, sparse, ib=2, kv8=False):   # ib: bytes per index key element; kv8: fp8 K/V pages
    kv_tok = 2 * Hkv * (D + 4) if kv8 else 2 * Hkv * D * 2   # bytes of K and V per token and layer (fp8: + row scales)
    wb = 2 * params
    if sparse:
        dec = wb + Ld * n * kv_tok + (L - Ld) * (n * I * ib + sel * kv_tok)
        att = Ld * n * n * Hq * D * 2 + (L - Ld) * (n * n * Hkv * I + 4 * n * sel * Hq * D)
    else:
        dec = wb + L * n * kv_tok
        att = L * n * n * Hq * D * 2
    return {"decode_ms": 1e3 * dec / bw, "prefill_s": (2 * params * n + att) / fl}
rows = [json.loads(l) for l in open(os.path.join(out, "long.jsonl")) if l.strip()]
for r in rows:
    f = floors(r["context"], r["attention"] == "sparse", 1 if r.get("index_keys") == "fp8" else 2,
               r.get("kv_cache_dtype") == "fp8")
    r["floor_decode_ms"] = round(f["decode_ms"], 3)
    r["floor_prefill_s"] = round(f["prefill_s"], 3)
ref = {} if any(r["label"] == "dense-1m" for r in rows) else {"dense-1m (floor only)": floors(1 << 20, False)}
serve = None
sp = os.path.join(out, "serve.jsonl")
if os.path.exists(sp):
    serve = [json.loads(l) for l in open(sp) if l.strip()]
res = {"what": "long-context model benchmark of the CUDA engine (bench/gpu/long.sh)",
       "date": datetime.date.today().isoformat(), "commit": commit, "card": card,
       "model": "mkmodel --preset m3-1b (random bf16, %.2fB parameters)" % (params / 1e9),
       "floor_basis": "datasheet %.2f TB/s, %.0f TFLOP/s bf16; decode reads weights + KV (+ index keys), each in the row's dtype" %
                      (bw / 1e12, fl / 1e12),
       "rows": rows, "floors_unmeasured": ref, "serve_smoke": serve}
json.dump(res, open(os.path.join(out, "gpu-model.json"), "w"), indent=1)
print("%-12s %9s %10s %10s %10s %10s" % ("row", "prefill s", "floor s", "dec tok/s", "ms/token", "floor ms"))
for r in rows:
    print("%-12s %9.2f %10.2f %10.1f %10.3f %10.3f" % (r["label"], r["prefill_s"], r["floor_prefill_s"],
          r["decode_tok_s"], r["decode_ms_per_token"], r["floor_decode_ms"]))
PY
