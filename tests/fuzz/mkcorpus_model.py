"""Writes the seed corpus of fuzz_model (tests/fuzz/corpus/model/) and the
new-quant-types seed of fuzz_gguf: small models (a few KB to ~35 KB) that
model_load accepts, covering the llama, qwen2, qwen3, qwen3moe, mistral,
phi3, gemma2 and gemma3 layouts (windows by pattern and by per-layer flags, soft
caps, the windows' RoPE base), RoPE scaling none / linear (by type and by the older
rope.scale_linear) / YaRN with its optional keys, per-pair divisor tensors
(rope_freqs, Phi-3's rope_factors_long/short, F32 and quantized), the MSA
indexer, and weights of every type the engine dequantizes.  No tokenizer:
model_load does not read one, and small inputs fuzz faster.

Quantized blocks come from ggml's own quantizer (llama.cpp's libggml-base,
as the llama_cpp package ships it), so they are the blocks llama.cpp
writes.  Run with a Python that has numpy, gguf and llama_cpp:
    .venv/bin/python tests/fuzz/mkcorpus_model.py
The output is deterministic (fixed seeds)."""
import ctypes
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "conformance"))
import ggufgen  # noqa: E402  (the tensor layout the conformance suite writes)


def _ggml():
    import llama_cpp
    lib = os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so")
    g = ctypes.CDLL(lib)
    g.ggml_quantize_chunk.restype = ctypes.c_size_t
    g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    g.ggml_row_size.restype = ctypes.c_size_t
    g.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    return g


GGML = _ggml()


def add(w, name, a, ty):
    """a: float32 [n, rows, cols], [rows, cols] or [n]; stored as ggml type ty."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if ty == T.F32:
        w.add_tensor(name, a)
    elif ty == T.F16:
        w.add_tensor(name, a.astype(np.float16))
    else:
        rows = int(np.prod(a.shape[:-1]))
        cols = a.shape[-1]
        assert cols % gguf.GGML_QUANT_SIZES[ty][0] == 0, (name, ty, cols)
        rb = GGML.ggml_row_size(int(ty), cols)
        out = np.zeros((rows, rb), dtype=np.uint8)
        n = GGML.ggml_quantize_chunk(int(ty), a.ctypes.data, out.ctypes.data, 0, rows, cols, None)
        assert n == rows * rb, (name, ty, n, rows * rb)
        w.add_tensor(name, out.reshape(a.shape[:-1] + (rb,)) if a.ndim > 1 else out[0], raw_dtype=ty)


def model(path, arch, embd, heads, kv_heads, ff, vocab, head_dim=None, layers=1, ctx=256,
          rope_dim=None, kv=None, types=None, default=T.F16, tied=False, qkv_bias=False,
          qk_norm=False, divisors=None, indexer=None, moe=None, seed=0):
    """types: tensor name suffix -> ggml type (`default` for the other
    matrices, F32 for the other vectors);
    kv: extra '<arch>.'-relative keys -> value (str, float, int, list);
    divisors: tensor name -> (values, type); indexer: (key_length, layers);
    moe: (experts, used a token, expert width)."""
    rng = np.random.default_rng(seed)
    types = types or {}
    hd = head_dim or embd // heads
    w = gguf.GGUFWriter(path, arch)
    ggufgen.shape_keys(w, layers, ctx, embd, ff, heads, kv_heads, hd)
    if rope_dim is not None:
        w.add_rope_dimension_count(rope_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    if moe:
        w.add_expert_count(moe[0])
        w.add_expert_used_count(moe[1])
        w.add_expert_feed_forward_length(moe[2])
    if indexer:
        w.add_uint32(f"{arch}.attention.indexer.key_length", indexer[0])
        w.add_uint32(f"{arch}.attention.indexer.head_count", kv_heads)
        w.add_uint32(f"{arch}.attention.indexer.top_k", 4)
        w.add_uint32(f"{arch}.attention.indexer.block_size", 16)
    for k, v in (kv or {}).items():
        k = f"{arch}.{k}"
        if isinstance(v, list):
            w.add_array(k, v)
        elif isinstance(v, str):
            w.add_string(k, v)
        elif isinstance(v, float):
            w.add_float32(k, v)
        else:
            w.add_uint32(k, v)

    def ty(name, dflt):
        # the longest suffix that matches: attn_output.weight before output.weight
        hits = [s for s in types if name.endswith(s)]
        return types[max(hits, key=len)] if hits else dflt

    for kind, name, *dims in ggufgen.layout(arch, layers, embd, heads, kv_heads, hd, ff, vocab, tied, qkv_bias,
                                            qk_norm, extra=[(n, d) for n, (d, _) in (divisors or {}).items()],
                                            indexer=indexer, moe=moe):
        if kind == "mat":
            rows, cols = dims
            add(w, name, rng.standard_normal((rows, cols)) / np.sqrt(cols), ty(name, default))
        elif kind == "exps":
            n, rows, cols = dims
            add(w, name, rng.standard_normal((n, rows, cols)) / np.sqrt(cols), ty(name, default))
        elif kind == "vec":
            n, mean, spread = dims
            add(w, name, mean + spread * rng.standard_normal(n), ty(name, T.F32))
        else:
            add(w, name, np.asarray(dims[0], dtype=np.float32), divisors[name][1])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    size = os.path.getsize(path)
    assert size < 64 * 1024, (path, size)
    print(f"{os.path.relpath(path)}: {size} bytes")


def llama3_divisors(n, factor=8.0):
    # Llama 3.1's shape: 1 for fast pairs, `factor` for slow ones, a ramp
    return np.concatenate([np.ones(n // 2), np.linspace(1.0, factor, n - n // 2)]).astype(np.float32)


def main():
    out = os.path.join(HERE, "corpus", "model")
    os.makedirs(out, exist_ok=True)
    o = lambda n: os.path.join(out, n)

    # llama, linear scaling named by type; legacy quant types
    model(o("llama_linear.gguf"), "llama", embd=32, heads=4, kv_heads=2, ff=64, vocab=16,
          kv={"rope.scaling.type": "linear", "rope.scaling.factor": 4.0},
          types={"token_embd.weight": T.F16, "attn_q.weight": T.Q8_0, "attn_k.weight": T.Q4_0,
                 "attn_v.weight": T.Q4_1, "output.weight": T.Q4_0, "ffn_down.weight": T.BF16})
    # llama 3 style: no type key, the older rope.scale_linear, rope_freqs
    # (F32) divisors, tied embeddings, partial rotary
    model(o("llama_scale_linear_ropefreqs.gguf"), "llama", embd=32, heads=2, kv_heads=1, ff=32,
          vocab=16, rope_dim=8, tied=True, kv={"rope.scale_linear": 2.0},
          divisors={"rope_freqs.weight": (llama3_divisors(4), T.F32)}, seed=1)
    # llama, rope_freqs quantized to a new type (32 divisors: one Q5_1
    # block), YaRN with every optional key
    model(o("llama_yarn_ropefreqs_q5_1.gguf"), "llama", embd=64, heads=1, kv_heads=1, ff=32,
          vocab=8, ctx=1024, default=T.Q8_0,
          kv={"rope.scaling.type": "yarn", "rope.scaling.factor": 8.0,
              "rope.scaling.original_context_length": 128, "rope.scaling.attn_factor": 0.75,
              "rope.scaling.yarn_beta_fast": 24.0, "rope.scaling.yarn_beta_slow": 2.0},
          divisors={"rope_freqs.weight": (llama3_divisors(32), T.Q5_1)},
          types={"attn_q.weight": T.Q5_0, "attn_output.weight": T.IQ4_NL}, seed=2)
    # qwen2 (QKV biases), YaRN with defaults; Q5_0 / Q5_1 / IQ4_NL weights
    model(o("qwen2_yarn.gguf"), "qwen2", embd=32, heads=4, kv_heads=2, ff=64, vocab=16, ctx=512,
          qkv_bias=True,
          kv={"rope.scaling.type": "yarn", "rope.scaling.factor": 4.0,
              "rope.scaling.original_context_length": 128},
          types={"token_embd.weight": T.IQ4_NL, "attn_q.weight": T.Q5_0, "attn_k.weight": T.Q5_1,
                 "attn_v.weight": T.IQ4_NL, "attn_output.weight": T.Q5_1, "ffn_gate.weight": T.Q5_0,
                 "ffn_up.weight": T.IQ4_NL, "ffn_down.weight": T.Q5_0, "attn_q.bias": T.F16},
          seed=3)
    # qwen3 (QK norms, F16 so they are dequantized), head_dim apart from
    # embd/heads, scaling switched off whatever the factor says
    model(o("qwen3_none.gguf"), "qwen3", embd=32, heads=2, kv_heads=1, head_dim=32, ff=32,
          vocab=16, qk_norm=True, kv={"rope.scaling.type": "none", "rope.scaling.factor": 8.0},
          types={"_norm.weight": T.F16, "token_embd.weight": T.BF16}, seed=4)
    # the K-quants and IQ4_XS (256-wide rows), norms and divisors dequantized
    # from them too
    model(o("llama_kquants.gguf"), "llama", embd=256, heads=1, kv_heads=1, head_dim=32, ff=32,
          vocab=4, divisors={"rope_freqs.weight": (llama3_divisors(16, 4.0), T.F16)},
          kv={"rope.scaling.type": "linear", "rope.scaling.factor": 2.0},
          types={"token_embd.weight": T.Q6_K, "output.weight": T.Q2_K, "attn_q.weight": T.Q5_K,
                 "attn_k.weight": T.Q2_K, "attn_v.weight": T.Q3_K, "attn_output.weight": T.IQ4_NL,
                 "ffn_gate.weight": T.IQ4_XS, "ffn_up.weight": T.Q4_K, "ffn_down.weight": T.Q5_1,
                 "output_norm.weight": T.Q3_K, "attn_norm.weight": T.Q5_K,
                 "ffn_norm.weight": T.IQ4_XS}, seed=5)
    # mistral, two layers, the MSA indexer on the second
    model(o("mistral_indexer.gguf"), "mistral", embd=32, heads=4, kv_heads=2, ff=32, vocab=16,
          layers=2, tied=True, indexer=(8, [1]), types={"indexer.q_norm.weight": T.F16}, seed=6)
    # phi3: fused QKV (with a bias, dequantized) and gate-up, LongRoPE
    # divisors
    model(o("phi3_longrope.gguf"), "phi3", embd=32, heads=4, kv_heads=4, ff=32, vocab=16,
          ctx=1024, qkv_bias=True, kv={"rope.scaling.original_context_length": 256,
                        "rope.scaling.attn_factor": 1.19},
          divisors={"rope_factors_long.weight": (llama3_divisors(4, 4.0), T.F32),
                    "rope_factors_short.weight": (np.ones(4), T.F16)},
          types={"attn_qkv.weight": T.Q8_0, "attn_qkv.bias": T.F16}, seed=7)

    # qwen3moe: QK norms, 4 experts of width 32 (Q8_0, down in Q4_0), 2 a
    # token, the router in F16
    model(o("qwen3moe_experts.gguf"), "qwen3moe", embd=32, heads=2, kv_heads=1, head_dim=32, ff=64, vocab=16,
          layers=2, qk_norm=True, moe=(4, 2, 32), default=T.Q8_0,
          types={"ffn_gate_inp.weight": T.F16, "ffn_down_exps.weight": T.Q4_0, "_norm.weight": T.F32}, seed=11)

    # gemma3: QK norms, post-norms, tied; a window every other layer by
    # pattern, their own RoPE base, a final soft cap, linear x2 globally
    model(o("gemma3_window.gguf"), "gemma3", embd=32, heads=2, kv_heads=1, head_dim=32, ff=32, vocab=16,
          layers=2, tied=True, qk_norm=True,
          kv={"attention.sliding_window": 64, "attention.sliding_window_pattern": 2,
              "rope.freq_base_swa": 10000.0, "final_logit_softcapping": 30.0,
              "rope.scaling.type": "linear", "rope.scaling.factor": 2.0}, seed=9)
    # gemma2: post-norms, tied; windows by per-layer flags, both soft caps
    model(o("gemma2_flags.gguf"), "gemma2", embd=32, heads=4, kv_heads=2, ff=32, vocab=16, layers=3,
          tied=True, kv={"attention.sliding_window": 16, "attention.sliding_window_pattern": [True, False, True],
                         "attn_logit_softcapping": 50.0, "final_logit_softcapping": 30.0}, seed=10)

    # fuzz_gguf: one tensor of each newly dequantized type, two rows each
    g = os.path.join(HERE, "corpus", "gguf", "newtypes.gguf")
    w = gguf.GGUFWriter(g, "llama")
    rng = np.random.default_rng(8)
    for t in (T.Q5_0, T.Q5_1, T.IQ4_NL):
        add(w, t.name.lower(), rng.standard_normal((2, 32)), t)
    for t in (T.Q2_K, T.Q3_K, T.Q5_K, T.IQ4_XS):
        add(w, t.name.lower(), rng.standard_normal((2, 256)), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"{os.path.relpath(g)}: {os.path.getsize(g)} bytes")


if __name__ == "__main__":
    sys.exit(main())
