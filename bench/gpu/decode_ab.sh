#!/bin/bash
# Decode throughput of the CUDA engine under two settings, alternating, in
# one call: A=VAR=value and B=VAR=value (or -) are environments for the
# same pack (e.g. A=SPARSED_PDL=0 B=-); PACK_B times another pack instead.
# Rows: model.sh's 0.5B Llama at batches 1, 2, 8 and 32 (LLAMA_BATCHES; 512-token prompts),
# and long.sh's m3-1b (MSA) at one sequence of 16K and 128K tokens (not
# with NO_M3=1).  Two
# rounds; every JSON line goes to OUT/decode-ab.jsonl with its setting
# and round.
set -u -o pipefail
cd "$(dirname "$0")/../.."
P=${PACK:-build-cuda/gpu-pack}
PB=${PACK_B:-$P}
OUT=${OUT:-/tmp/gpu-ab-out}
A=${A:--}
B=${B:--}
LLAMA=/tmp/bench-llama-0.5b.gguf
M3=/tmp/m3-1b.gguf
mkdir -p "$OUT"
. bench/gpu/env.sh
llama_model $LLAMA || exit 1
[ -n "${NO_M3:-}" ] || m3_model $M3 || exit 1
: > "$OUT/decode-ab.jsonl"
one() { # setting pack round
    local e=$1 pk=$2 r=$3
    [ "$e" = - ] && e=SPARSED_AB_NONE=1
    {
        env "$e" timeout 120 $pk/bin/gpu_model_bench --model $LLAMA --prompt 512 --batches ${LLAMA_BATCHES:-1,2,8,32} --steps 64 \
            --label "llama-0.5b"
        if [ -z "${NO_M3:-}" ]; then
            env "$e" timeout 120 $pk/bin/gpu_model_bench --model $M3 --attention sparse --context 16384 \
                --chunk 16384 --steps 64 --label "m3-1b-16k"
            env "$e" timeout 180 $pk/bin/gpu_model_bench --model $M3 --attention sparse --context 131072 \
                --chunk 16384 --steps 64 --label "m3-1b-128k"
        fi
    } 2>&1 | grep '^JSON ' | sed 's/^JSON //' |
        python3 -c 'import json,sys
for l in sys.stdin:
    d = json.loads(l); d["setting"] = sys.argv[1]; d["round"] = int(sys.argv[2]); print(json.dumps(d))' \
            "$1${PACK_B:+ ($pk)}" "$r" >> "$OUT/decode-ab.jsonl"
}
for r in 1 2; do
    one "$A" "$P" $r
    one "$B" "$PB" $r
done
python3 - "$OUT/decode-ab.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for d in rows:
    tps = d.get("decode_tok_s") or d.get("decode_tokens_per_s") or d.get("tok_s")
    print(f'{d["setting"]:28s} r{d["round"]} {d.get("label","")[:14]:14s} batch {d.get("batch", 1):>2} '
          f'decode {tps}')
EOF
