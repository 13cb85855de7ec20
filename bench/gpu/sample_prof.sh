#!/bin/bash
# The device sampler's time per sampling kind: ncu's gpu__time_duration of
# each sample_kernel launch in gpu_check's sampled decode (one sequence, 18
# steps: step s samples with kind s % 9 of gpu_check's cycle, 5 logprobs
# when s % 3 == 0), over random models with a 32000 and a 151936 vocabulary.
# PACKS: colon-separated packs (tests/gpu/pack.sh) whose bin/gpu_check are
# timed one after another in this call, e.g. PACKS=old:new.  Writes
# sample-prof.json under $OUT.  Env: LABELS (one per pack), VOCABS, ENVS
# (colon-separated, one per pack: a VAR=value for its runs, or -), e.g.
# PACKS=p:p ENVS=SPARSED_SAMPLE_CLUSTER=1:- times one pack two ways.
set -u -o pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/gpu-out}
PACKS=${PACKS:-build-cuda/gpu-pack}
LABELS=${LABELS:-$PACKS}
VOCABS=${VOCABS:-32000 151936}
W=$(mktemp -d)
mkdir -p "$OUT"
IFS=: read -r -a packs <<<"$PACKS"
IFS=: read -r -a labels <<<"$LABELS"
IFS=: read -r -a envs <<<"${ENVS:-}"
MK=${packs[0]}/bin/mkmodel
[ -x "$MK" ] || MK=$(ls ${packs[*]/%//bin/mkmodel} 2>/dev/null | head -1)
for V in $VOCABS; do
    "$MK" --out "$W/v$V.gguf" --layers 2 --embd 256 --heads 4 --kv-heads 2 --head-dim 64 --ff 512 \
        --vocab "$V" --type q8_0 --seed 5 >/dev/null || exit 1
done
for r in 1 2; do # two rounds, packs alternating
    for j in "${!packs[@]}"; do
        for V in $VOCABS; do
            log="$W/sample-ncu-${labels[$j]//\//_}-v$V-r$r.txt"
            e=${envs[$j]:--}
            [ "$e" = - ] && e=SPARSED_SAMPLE_PROF_NONE=1
            env "$e" LD_LIBRARY_PATH=${packs[$j]}/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} timeout 300 \
                ncu --clock-control none --metrics gpu__time_duration.sum -k regex:sample_kernel \
                "${packs[$j]}/bin/gpu_check" --label prof --model "$W/v$V.gguf" --prompts 60 --decode 18 \
                >"$log" 2>&1 || { echo "ncu failed: $log"; tail -5 "$log"; }
        done
    done
done
python3 - "$OUT" "$W" "$VOCABS" "${labels[@]}" <<'EOF'
import json, re, sys, glob
out, work, vocabs, labels = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4:]
kinds = ["T 0 (greedy)", "T 0.8", "T 1.3 top-k 5", "T 1.0 top-p 0.7", "T 0.9 top-p 0.9 min-p 0.05 top-k 40",
         "T 1.1 min-p 0.2", "T 1.0 top-k 1024", "T 2.0 top-p 0.95", "T 0.5 top-p 0.5 top-k 700"]
res = {"what": "ncu gpu__time_duration (us) of sample_kernel per decode step; step s: kind s % 9, "
               "5 logprobs when s % 3 == 0; two rounds, packs alternating", "packs": {}}
for lab in labels:
    res["packs"][lab] = {}
    for V in vocabs:
        rows = {}
        for f in sorted(glob.glob(f"{work}/sample-ncu-{lab.replace('/', '_')}-v{V}-r*.txt")):
            t = []
            for line in open(f):
                m = re.search(r"gpu__time_duration.sum\s+(\S+)\s+([\d.,]+)", line)
                if m:
                    v = float(m.group(2).replace(",", ""))
                    t.append(v / 1000 if m.group(1) == "ns" else v * 1000 if m.group(1) == "ms" else v)
            for s, us in enumerate(t):
                k = f"{kinds[s % 9]}{', 5 logprobs' if s % 3 == 0 else ''}"
                rows.setdefault(k, []).append(round(us, 2))
        res["packs"][lab][f"vocab_{V}"] = rows
json.dump(res, open(f"{out}/sample-prof.json", "w"), indent=1)
for V in vocabs:
    print(f"vocab {V}: us per launch (" + " | ".join(labels) + ")")
    for k in res["packs"][labels[0]][f"vocab_{V}"]:
        print(f"  {k:48s}", " | ".join(" ".join(f"{x:7.1f}" for x in res['packs'][l][f'vocab_{V}'].get(k, []))
                                    for l in labels))
EOF
