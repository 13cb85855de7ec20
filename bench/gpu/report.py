"""Merges attn_bench and torch_bench output into one table and a JSON file.

usage: report.py CUDA_LOG TORCH_LOG --out FILE.json [--commit C]

Each comparison prints our time, the baseline's, the speedup and its cap
(the FLOP or byte ratio of the two algorithms), and our time over our own
floor (FLOPs over the measured matmul rate, or bytes over the measured copy
bandwidth).  The last line is the headline figure.
"""
import argparse
import datetime
import json
import re


def load(path):
    rows, card = [], None
    with open(path) as f:
        for line in f:
            if line.startswith("ROW "):
                rows.append(json.loads(line[4:]))
            m = re.match(r"device: ([^,]+),", line)
            if m:
                card = m.group(1)
    return rows, card


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cuda_log")
    ap.add_argument("torch_log")
    ap.add_argument("--out", required=True)
    ap.add_argument("--commit", default="unknown")
    a = ap.parse_args()
    crows, card = load(a.cuda_log)
    trows, _ = load(a.torch_log)
    rows = crows + trows

    def get(src, name, shape, n, batch=1):
        for r in rows:
            if r["src"] == src and r["name"] == name and r["shape"] == shape and r["N"] == n and r["batch"] == batch:
                return r
        return None

    copy = get("cuda", "copy", "-", 0) or get("torch", "copy", "-", 0)
    mm = get("torch", "matmul", "8192^3", 8192)
    copy_bps = copy["bytes"] / (copy["us"] * 1e-6) if copy else None
    mm_fps = mm["flops"] / (mm["us"] * 1e-6) if mm else None
    ceil = {"copy_GBps": copy_bps / 1e9 if copy_bps else None, "matmul_TFLOPs": mm_fps / 1e12 if mm_fps else None}
    ns = sorted({r["N"] for r in crows if r["N"] > 0})
    comps = []

    def floor_us(r):
        if r.get("flops") and mm_fps:
            return r["flops"] / mm_fps * 1e6
        if r.get("bytes") and copy_bps:
            return r["bytes"] / copy_bps * 1e6
        return None

    def comp(label, n, ours, base, cap_kind, batch=1):
        if not ours:
            return
        c = {"comparison": label, "N": n, "batch": batch, "ours_us": ours["us"]}
        fl = floor_us(ours)
        if fl:
            c["floor_us"] = fl
            c["ours_over_floor"] = ours["us"] / fl
        if ours.get("select_us"):
            c["select_us"] = ours["select_us"]
            c["attend_us"] = ours["attend_us"]
        if base:
            c["base_us"] = base["us"]
            c["speedup"] = base["us"] / ours["us"]
            if cap_kind == "flops" and ours.get("flops"):
                c["cap"] = base["flops"] / ours["flops"]
            elif cap_kind == "bytes" and ours.get("bytes") and base.get("bytes"):
                c["cap"] = base["bytes"] / ours["bytes"]
        if cap_kind == "bw" and copy_bps:
            c["GBps"] = ours["bytes"] / (ours["us"] * 1e-6) / 1e9
        comps.append(c)

    for n in ns:
        g = lambda s, nm, sh, b=1: get(s, nm, sh, n, b)
        comp("M3 MSA prefill vs SDPA dense (M3)", n, g("cuda", "msa_prefill", "M3"), g("torch", "sdpa_prefill", "M3"),
             "flops")
        comp("M3 MSA prefill vs SDPA dense (M2 shape)", n, g("cuda", "msa_prefill", "M3"),
             g("torch", "sdpa_prefill", "M2"), "flops")
        for idx in ("bf16", "fp8"):
            ours = g("cuda", f"msa_decode_{idx}", "M3")
            comp(f"M3 MSA decode b1 {idx} idx vs SDPA dense (M3)", n, ours, g("torch", "sdpa_decode", "M3"), "bytes")
            comp(f"M3 MSA decode b1 {idx} idx vs SDPA dense (M2 shape)", n, ours, g("torch", "sdpa_decode", "M2"),
                 "bytes")
        for sh in ("M3", "M2", "L3-8B"):
            comp(f"{sh} dense decode b1 (ours) vs SDPA", n, g("cuda", "dense_decode", sh),
                 g("torch", "sdpa_decode", sh), "bw")
        comp("L3-8B dense prefill (ours) vs SDPA", n, g("cuda", "dense_prefill", "L3-8B"),
             g("torch", "sdpa_prefill", "L3-8B"), "flops")
        comp("M3 dense prefill (ours) vs SDPA", n, g("cuda", "dense_prefill", "M3"), g("torch", "sdpa_prefill", "M3"),
             "flops")
        comp("L3-8B block-sparse prefill 4096 vs Flex", n, g("cuda", "blocksparse_prefill", "L3-8B"),
             g("torch", "flex_prefill", "L3-8B"), "none")
        comp("L3-8B block-sparse prefill 4096 vs SDPA dense", n, g("cuda", "blocksparse_prefill", "L3-8B"),
             g("torch", "sdpa_prefill", "L3-8B"), "flops")
        comp("L3-8B quest decode b1 (4096) vs SDPA dense", n, g("cuda", "quest_decode", "L3-8B"),
             g("torch", "sdpa_decode", "L3-8B"), "bytes")
        for nm, sh, bn in (("msa_decode_bf16", "M3", "SDPA dense (M3)"), ("msa_decode_fp8", "M3", "SDPA dense (M3)"),
                           ("dense_decode", "M3", "SDPA dense (M3)"), ("dense_decode", "L3-8B", "SDPA dense (L3-8B)"),
                           ("quest_decode", "L3-8B", "SDPA dense (L3-8B)")):
            comp(f"{sh} {nm} b32 vs {bn}", n, g("cuda", nm, sh, 32), g("torch", "sdpa_decode", sh, 32),
                 "bytes" if nm != "dense_decode" else "bw", 32)

    def fmt(x, unit=""):
        if x is None:
            return "-"
        if unit == "us":
            return f"{x / 1e6:.3f} s" if x >= 1e6 else (f"{x / 1e3:.2f} ms" if x >= 1e3 else f"{x:.1f} us")
        return f"{x:.2f}"

    print(f"card {card}; copy {fmt(ceil['copy_GBps'])} GB/s; bf16 matmul {fmt(ceil['matmul_TFLOPs'])} TFLOP/s")
    print(f"{'comparison':52s} {'N':>8s} {'ours':>10s} {'baseline':>10s} {'speedup':>8s} {'cap':>7s} {'ours/floor':>10s}")
    for c in comps:
        extra = ""
        if "GBps" in c:
            extra = f"  {c['GBps']:.0f} GB/s"
        if "select_us" in c:
            extra = f"  (select {fmt(c['select_us'], 'us')}, attend {fmt(c['attend_us'], 'us')})"
        print(f"{c['comparison']:52s} {c['N']:8d} {fmt(c['ours_us'], 'us'):>10s} {fmt(c.get('base_us'), 'us'):>10s} "
              f"{fmt(c.get('speedup')):>8s} {fmt(c.get('cap')):>7s} {fmt(c.get('ours_over_floor')):>10s}{extra}")
    out = {"card": card, "commit": a.commit, "date": datetime.date.today().isoformat(), "ceilings": ceil,
           "comparisons": comps, "rows": rows}
    with open(a.out, "w") as f:
        json.dump(out, f, indent=1)

    def find(label, n):
        for c in comps:
            if c["comparison"] == label and c["N"] == n:
                return c
        return None

    top = max(ns) if ns else 0
    p = find("M3 MSA prefill vs SDPA dense (M3)", top)
    d = find("M3 MSA decode b1 bf16 idx vs SDPA dense (M3)", top)
    d8 = find("M3 MSA decode b1 fp8 idx vs SDPA dense (M3)", top)
    parts = []
    if p and "speedup" in p:
        parts.append(f"MSA prefill {p['speedup']:.1f}x (cap {p['cap']:.1f}x)")
    if d and "speedup" in d:
        parts.append(f"MSA decode b1 {d['speedup']:.1f}x bf16 idx (cap {d['cap']:.1f}x)")
    if d8 and "speedup" in d8:
        parts.append(f"{d8['speedup']:.1f}x fp8 idx (cap {d8['cap']:.1f}x)")
    print(f"HEADLINE M3 layer, N={top}, {card}: " + ", ".join(parts) + " vs PyTorch SDPA dense on the same card")


if __name__ == "__main__":
    main()
