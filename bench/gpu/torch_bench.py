"""Torch baselines for the attention benchmark (run on the GPU machine).

Prints "ROW {json}" lines: the card's ceilings (bf16 matmul, device copy),
SDPA dense causal prefill and dense decode for the M3, M2 and Llama-3-8B
layer shapes, and FlexAttention (torch.compile) with the block masks that
attn_bench wrote, so both run the same blocks.  Random inputs, CUDA events,
median of the timed runs; decode runs evict L2 before each timed call.
"""
import argparse
import json
import os
import sys
import traceback

import numpy as np
import torch
import torch.nn.functional as F

SHAPES = {"M3": (64, 4), "M2": (48, 8), "L3-8B": (32, 8)}
DEV = "cuda"
BF = torch.bfloat16


def row(**kw):
    kw["src"] = "torch"
    print("ROW " + json.dumps(kw), flush=True)


_flush = None
# The flush reads 256 MB, leaving the L2 full of clean lines, as attn_bench
# does (TORCH_FLUSH=memset: the earlier random_ fill, which left dirty lines
# for the timed kernel to write back).
_flush_write = os.environ.get("TORCH_FLUSH") == "memset"


def timed(fn, warm=1, reps=3, flush=False):
    global _flush
    if flush and _flush is None:
        _flush = torch.zeros(256 << 20, dtype=torch.uint8, device=DEV)
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        if flush and _flush_write:
            _flush.random_(0, 255)
        elif flush:
            _flush.view(torch.int32).sum()
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1) * 1000.0)
    ts.sort()
    return ts[len(ts) // 2]


def free():
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def ceilings():
    a = torch.randn(8192, 8192, dtype=BF, device=DEV)
    b = torch.randn(8192, 8192, dtype=BF, device=DEV)
    us = timed(lambda: a @ b, warm=3, reps=10)
    row(name="matmul", shape="8192^3", N=8192, batch=1, us=us, flops=2 * 8192.0**3, bytes=0)
    del a, b
    x = torch.empty(1 << 30, dtype=torch.uint16, device=DEV).random_(0, 60000)
    y = torch.empty_like(x)
    us = timed(lambda: y.copy_(x), warm=2, reps=7)
    row(name="copy", shape="-", N=0, batch=1, us=us, bytes=2.0 * x.numel() * 2, flops=0)
    del x, y
    free()


def sdpa_prefill(shape, n, variant):
    hq, hkv = SHAPES[shape]
    q = torch.randn(1, hq, n, 128, dtype=BF, device=DEV)
    k = torch.randn(1, hkv, n, 128, dtype=BF, device=DEV)
    v = torch.randn(1, hkv, n, 128, dtype=BF, device=DEV)
    if variant == "gqa":
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        k = k.repeat_interleave(hq // hkv, dim=1)
        v = v.repeat_interleave(hq // hkv, dim=1)
        if variant == "cudnn":
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def fn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    big = n >= (1 << 20)
    try:
        return timed(fn, warm=0 if big else 1, reps=1 if big else 3)
    finally:
        del q, k, v
        free()


def sdpa_decode(shape, n, batch):
    hq, hkv = SHAPES[shape]
    q = torch.randn(batch, hq, 1, 128, dtype=BF, device=DEV)
    k = torch.randn(batch, hkv, n, 128, dtype=BF, device=DEV)
    v = torch.randn(batch, hkv, n, 128, dtype=BF, device=DEV)
    fn = lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
    us = timed(fn, warm=5, reps=30, flush=True)
    del q, k, v
    free()
    return us


_flex = None


def flex_prefill(n, maskdir):
    global _flex
    from torch.nn.attention.flex_attention import BlockMask, flex_attention

    if _flex is None:
        _flex = torch.compile(flex_attention, dynamic=False)
    nqb = n // 128
    m = torch.from_numpy(np.fromfile(os.path.join(maskdir, f"mask_{n}.bin"), dtype=np.int32).reshape(nqb, 32))
    m = m.to(DEV).long()
    diag = torch.arange(nqb, device=DEV)
    big = nqb + 1
    full = torch.where((m < 0) | (m == diag[:, None]), torch.full_like(m, big), m).sort(dim=1).values
    full_cnt = (full < big).sum(dim=1).int()
    full = torch.where(full < big, full, torch.zeros_like(full)).int()
    full_idx = torch.zeros(1, 1, nqb, nqb, dtype=torch.int32, device=DEV)
    full_idx[0, 0, :, :32] = full
    part_idx = torch.zeros(1, 1, nqb, nqb, dtype=torch.int32, device=DEV)
    part_idx[0, 0, :, 0] = diag.int()
    part_cnt = torch.ones(1, 1, nqb, dtype=torch.int32, device=DEV)

    def causal(b, h, qi, ki):
        return qi >= ki

    bm = BlockMask.from_kv_blocks(part_cnt, part_idx, full_cnt.view(1, 1, nqb), full_idx, BLOCK_SIZE=128,
                                  mask_mod=causal, seq_lengths=(n, n))
    hq, hkv = SHAPES["L3-8B"]
    q = torch.randn(1, hq, n, 128, dtype=BF, device=DEV)
    k = torch.randn(1, hkv, n, 128, dtype=BF, device=DEV)
    v = torch.randn(1, hkv, n, 128, dtype=BF, device=DEV)
    fn = lambda: _flex(q, k, v, block_mask=bm, enable_gqa=True)
    us = timed(fn, warm=1, reps=3)
    del q, k, v, bm
    free()
    return us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ns", default="32768,131072,1048576")
    ap.add_argument("--maskdir", default="/tmp/masks")
    ap.add_argument("--prefill-1m", default="M3,M2,L3-8B", help="shapes whose 1M SDPA prefill runs ('' = none)")
    ap.add_argument("--no-flex", action="store_true")
    ap.add_argument("--decode-only", action="store_true", help="the dense decode rows alone")
    a = ap.parse_args()
    ns = [int(x) for x in a.ns.split(",") if x]
    print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    ceilings()
    best = {}
    for n in ns:
        for shape in SHAPES:
            for batch in ([1, 32] if n <= 32768 and shape != "M2" else [1]):
                try:
                    row(name="sdpa_decode", shape=shape, N=n, batch=batch, us=sdpa_decode(shape, n, batch),
                        bytes=2.0 * batch * n * SHAPES[shape][1] * 128 * 2, flops=0)
                except Exception as e:
                    print(f"sdpa decode {shape} {n} b{batch} failed: {e}", flush=True)
                    free()
        if a.decode_only:
            continue
        for shape in SHAPES:
            hq = SHAPES[shape][0]
            flops = 2.0 * hq * 128 * n * n
            if n >= (1 << 20):
                if shape not in a.prefill_1m.split(","):
                    continue
                variants = [best.get(shape, "gqa")] + [v for v in ("gqa", "expand") if v != best.get(shape)]
            else:
                variants = ["gqa", "expand", "cudnn"]
            results = {}
            for var in variants:
                try:
                    results[var] = sdpa_prefill(shape, n, var)
                    row(name=f"sdpa_prefill_{var}", shape=shape, N=n, batch=1, us=results[var], flops=flops, bytes=0)
                except Exception as e:
                    print(f"sdpa prefill {shape} {n} {var} failed: {str(e)[:200]}", flush=True)
                    free()
                if n >= (1 << 20) and results:
                    break
            if results:
                var = min(results, key=results.get)
                best[shape] = var
                row(name="sdpa_prefill", shape=shape, N=n, batch=1, us=results[var], flops=flops, bytes=0,
                    variant=var)
        if not a.no_flex and n >= 131072:
            try:
                row(name="flex_prefill", shape="L3-8B", N=n, batch=1, us=flex_prefill(n, a.maskdir), flops=0,
                    bytes=0)
            except Exception:
                print("flex attention failed (skipped):", flush=True)
                traceback.print_exc(limit=3)
                free()


if __name__ == "__main__":
    sys.exit(main())
