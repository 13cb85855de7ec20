#!/bin/bash
# The daemon on the GPU: `sparsed serve --device cuda` on an M3-shaped 1B-class
# MSA model made on the spot (mkmodel --preset m3-1b, random bf16, context
# 1M + 4K), then
#   1. the serving benchmark (bench/serve/loadgen.py) at 32K-token prompts,
#      concurrency 1 and 8 (LEVELS), streaming completions;
#   2. one ~1M-token request through the HTTP API (bench/gpu/long_request.py):
#      a synthetic document in one body, prefilled in chunks of CHUNK tokens
#      while the stream sends keep-alive comments and 4 other streams keep
#      decoding; time to first token, decode rate and the other streams'
#      inter-token latency during that prefill;
#   3. SIGTERM: the daemon drains and exits 0.
# Writes OUT/serve-32k.json, OUT/long-request.json and OUT/gpu-serve.json
# (all of it with the card and commit).  Uses the folder tests/gpu/pack.sh
# made (PACK).  LONG_TOKENS= skips step 2; SERVE_ARGS adds daemon options
# (e.g. "--interactive-context 0").
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
OUT=${OUT:-/tmp/gpu-serve-out}
MODEL=${MODEL:-/tmp/m3-1b-1m.gguf}
LAYERS=${LAYERS:-16}
CHUNK=${CHUNK:-8192}
KV_MEM=${KV_MEM:-44G}
LEVELS=${LEVELS:-1,8}
PROMPT=${PROMPT:-32768}
LONG_TOKENS=${LONG_TOKENS-1048000}
PORT=${PORT:-18090}
export SPARSED_COMMIT=${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
mkdir -p "$OUT"
. bench/gpu/env.sh
export LD_LIBRARY_PATH="$P/lib:${LD_LIBRARY_PATH:-}"
card=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU (cpu)")
m3_model "$MODEL" $LAYERS $((1048576 + 4096)) || exit 1
get() { python3 -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen('http://127.0.0.1:$PORT' + sys.argv[1], timeout=5).read().decode())" "$1"; }
args=(--device ${DEVICE:-cuda} --model "$MODEL" --port $PORT --kv-memory $KV_MEM --max-batch-tokens $CHUNK
      --body-limit 64M --sse-keepalive 2 --max-queued-tokens 4194304 --no-access-log ${SERVE_ARGS:-})
echo "sparsed serve ${args[*]}" | tee "$OUT/serve.log"
t0=$(date +%s.%N)
$P/bin/sparsed serve "${args[@]}" >> "$OUT/serve.log" 2>&1 &
spid=$!
for _ in $(seq 1 600); do
    get /health >/dev/null 2>&1 && break
    kill -0 $spid 2>/dev/null || { echo "the daemon died"; tail "$OUT/serve.log"; exit 1; }
    sleep 0.2
done
ready=$(python3 -c "import time; print(round(time.time() - $t0, 2))")
echo "ready after ${ready}s"
rc=0
PYTHONUNBUFFERED=1 python3 bench/serve/loadgen.py --url http://127.0.0.1:$PORT --prompt-tokens $PROMPT \
    --concurrency $LEVELS --max-tokens 64 --card "$card" --server "sparsed serve --device cuda" \
    --out "$OUT/serve-32k.json" 2>&1 | tee "$OUT/loadgen.log" || rc=1
if [ -n "$LONG_TOKENS" ]; then
    PYTHONUNBUFFERED=1 python3 bench/gpu/long_request.py --url http://127.0.0.1:$PORT --tokens $LONG_TOKENS \
        --others 4 --label "m3-1b chunk $CHUNK${SERVE_ARGS:+ $SERVE_ARGS}" --out "$OUT/long-request.json" 2>&1 | tail -40 || rc=1
fi
get /metrics > "$OUT/metrics.txt"
kill -TERM $spid
wait $spid
exit_code=$?
echo "daemon exit status after SIGTERM: $exit_code"
[ $exit_code -eq 0 ] || rc=1
python3 - "$OUT" "$SPARSED_COMMIT" "$card" "$ready" "$exit_code" "${args[*]}" <<'PY'
import json, os, sys, datetime
out, commit, card, ready, code, args = sys.argv[1:]
load = lambda f: json.load(open(os.path.join(out, f))) if os.path.exists(os.path.join(out, f)) else None
res = {"what": "sparsed serve --device cuda under load (bench/gpu/serve.sh)", "date": datetime.date.today().isoformat(),
       "commit": commit, "card": card, "daemon": "sparsed serve " + args, "ready_s": float(ready),
       "exit_status_after_sigterm": int(code),
       "model": "mkmodel --preset m3-1b (16 layers, 2 dense + 14 MSA, 16 q / 4 kv heads x 128, random bf16, 0.87B)",
       "serve_32k": load("serve-32k.json"), "long_request": load("long-request.json")}
json.dump(res, open(os.path.join(out, "gpu-serve.json"), "w"), indent=1)
PY
exit $rc
