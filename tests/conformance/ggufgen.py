"""Small random GGUF models of the architectures sparsed loads, written
with the gguf package (llama.cpp's own writer), so that llama.cpp and
sparsed read the same file.  Weights are normal / sqrt(fan-in) with a
fixed seed; the vocabulary is SentencePiece-style (specials, byte tokens,
filler pieces), enough for both loaders; tests feed token ids.
"""
import numpy as np
import gguf


PHI3_SPECIALS = ["<|endoftext|>", "<|assistant|>", "<|end|>", "<|system|>", "<|user|>"]


def _vocab(w, n, arch):
    toks, scores, types = [], [], []
    for i in range(n):
        if arch == "phi3" and i - 259 in range(len(PHI3_SPECIALS)):
            # Phi-3's added tokens (llama.cpp looks <|endoftext|> up by text)
            t, ty = PHI3_SPECIALS[i - 259], gguf.TokenType.CONTROL
        elif i == 0:
            t, ty = "<unk>", gguf.TokenType.UNKNOWN
        elif i in (1, 2):
            t, ty = ("<s>", "</s>")[i - 1], gguf.TokenType.CONTROL
        elif i < 259:
            t, ty = f"<0x{i - 3:02X}>", gguf.TokenType.BYTE
        else:
            t, ty = "\u2581" + format(i, "x"), gguf.TokenType.NORMAL
        toks.append(t.encode())
        scores.append(-float(i))
        types.append(ty)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_unk_token_id(0)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)


GEMMA_TURNS = ["<start_of_turn>", "<end_of_turn>"]


def copy_spm_vocab(w, src, specials):
    """src's SentencePiece vocabulary and special ids, plus specials as
    control tokens, without the space prefix and with BOS added (Gemma's
    settings); returns the vocabulary size."""
    r = gguf.GGUFReader(src)
    f = r.fields
    toks = [t.encode() for t in f["tokenizer.ggml.tokens"].contents()] + [t.encode() for t in specials]
    scores = list(f["tokenizer.ggml.scores"].contents()) + [0.0] * len(specials)
    types = list(f["tokenizer.ggml.token_type"].contents()) + [gguf.TokenType.CONTROL] * len(specials)
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    for key, add in (("unknown", w.add_unk_token_id), ("bos", w.add_bos_token_id), ("eos", w.add_eos_token_id)):
        add(int(f["tokenizer.ggml.%s_token_id" % key].contents()))
    w.add_add_bos_token(True)
    w.add_add_space_prefix(False)
    return len(toks)


def layout(arch, layers, embd, heads, kv_heads, hd, ff, vocab, tied=False, qkv_bias=False, qk_norm=False,
           extra=(), indexer=None, moe=None):
    """The tensors of a model, in file order: ("mat", name, rows, cols),
    ("exps", name, n, rows, cols) for n stacked experts' matrices,
    ("vec", name, n, mean, spread) and ("given", name, values) for each
    (name, values) of extra (RoPE divisors), after the output ones.  phi3
    fuses Q, K and V into attn_qkv, gate and up into ffn_up; gemma2 and
    gemma3 add post-norms.  indexer:
    (key_length, layers with one) for an MSA indexer.  moe: (experts,
    used a token, expert width) for a mixture of experts' FFN."""
    fused = arch == "phi3"
    post_norms = arch in ("gemma2", "gemma3")     # norms of the attention and FFN outputs
    out = [("mat", "token_embd.weight", vocab, embd), ("vec", "output_norm.weight", embd, 1.0, 0.1)]
    if not tied:
        out.append(("mat", "output.weight", vocab, embd))
    out += [("given", n, v) for n, v in extra]
    for l in range(layers):
        p = f"blk.{l}."
        out.append(("vec", p + "attn_norm.weight", embd, 1.0, 0.1))
        if fused:
            out.append(("mat", p + "attn_qkv.weight", (heads + 2 * kv_heads) * hd, embd))
        else:
            out += [("mat", p + "attn_q.weight", heads * hd, embd), ("mat", p + "attn_k.weight", kv_heads * hd, embd),
                    ("mat", p + "attn_v.weight", kv_heads * hd, embd)]
        out.append(("mat", p + "attn_output.weight", embd, heads * hd))
        if post_norms:
            out.append(("vec", p + "post_attention_norm.weight", embd, 1.0, 0.1))
        if qkv_bias and fused:
            out.append(("vec", p + "attn_qkv.bias", (heads + 2 * kv_heads) * hd, 0.0, 0.5))
        elif qkv_bias:
            out += [("vec", p + "attn_q.bias", heads * hd, 0.0, 0.5), ("vec", p + "attn_k.bias", kv_heads * hd, 0.0, 0.5),
                    ("vec", p + "attn_v.bias", kv_heads * hd, 0.0, 0.5)]
        if qk_norm:
            out += [("vec", p + "attn_q_norm.weight", hd, 1.0, 0.1), ("vec", p + "attn_k_norm.weight", hd, 1.0, 0.1)]
        out.append(("vec", p + "ffn_norm.weight", embd, 1.0, 0.1))
        if moe:
            x, _, xf = moe
            out += [("mat", p + "ffn_gate_inp.weight", x, embd), ("exps", p + "ffn_gate_exps.weight", x, xf, embd),
                    ("exps", p + "ffn_up_exps.weight", x, xf, embd), ("exps", p + "ffn_down_exps.weight", x, embd, xf)]
        elif fused:
            out.append(("mat", p + "ffn_up.weight", 2 * ff, embd))
        else:
            out += [("mat", p + "ffn_gate.weight", ff, embd), ("mat", p + "ffn_up.weight", ff, embd)]
        if not moe:
            out.append(("mat", p + "ffn_down.weight", embd, ff))
        if post_norms:
            out.append(("vec", p + "post_ffw_norm.weight", embd, 1.0, 0.1))
        if indexer and l in indexer[1]:
            d = indexer[0]
            out += [("mat", p + "indexer.q_proj.weight", kv_heads * d, embd), ("mat", p + "indexer.k_proj.weight", d, embd),
                    ("vec", p + "indexer.q_norm.weight", d, 1.0, 0.1), ("vec", p + "indexer.k_norm.weight", d, 1.0, 0.1)]
    return out


def byte_chars():
    """GPT-2's byte-level alphabet: byte b as a printable character (the
    printable Latin-1 bytes as themselves, the rest from U+0100 on)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def train_bpe(text, n_merges):
    """Byte-level BPE merges learned from text (words cut at spaces and
    digits, most frequent pair first): a vocabulary whose tokens span
    words, spaces and runs of digits, so that any two pre-tokenizers that
    cut a text differently give other tokens."""
    import collections
    import re
    bc = byte_chars()
    words = collections.Counter(re.findall(r" ?[^\s\d]+|\d+|\s+", text))
    seqs = {w: [bc[b] for b in w.encode()] for w in words}
    merges = []
    for _ in range(n_merges):
        pairs = collections.Counter()
        for w, n in words.items():
            q = seqs[w]
            for a, b in zip(q, q[1:]):
                pairs[a, b] += n
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        for w in seqs:
            q, r, i = seqs[w], [], 0
            while i < len(q):
                if i + 1 < len(q) and q[i] == a and q[i + 1] == b:
                    r.append(a + b)
                    i += 2
                else:
                    r.append(q[i])
                    i += 1
            seqs[w] = r
    return merges


def write_bpe_vocab(w, text, pre, n_merges=400, specials=("<|begin_of_text|>", "<|eot_id|>")):
    """A gpt2-style (byte-level BPE) tokenizer trained on text, with
    tokenizer.ggml.pre = pre; returns the vocabulary size."""
    merges = train_bpe(text, n_merges)
    toks = [byte_chars()[b] for b in range(256)] + [a + b for a, b in merges]
    toks = list(dict.fromkeys(toks))
    types = [gguf.TokenType.NORMAL] * len(toks) + [gguf.TokenType.CONTROL] * len(specials)
    toks += list(specials)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(toks)
    w.add_token_types(types)
    w.add_token_merges([a + " " + b for a, b in merges])
    w.add_bos_token_id(len(toks) - len(specials))
    w.add_eos_token_id(len(toks) - len(specials) + 1)
    w.add_add_bos_token(True)
    return len(toks)


def shape_keys(w, layers, ctx, embd, ff, heads, kv_heads, hd):
    """The <arch>.* keys of a model's shape (head dims only where they
    are not embd / heads)."""
    w.add_block_count(layers)
    w.add_context_length(ctx)
    w.add_embedding_length(embd)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    if hd * heads != embd:
        w.add_key_length(hd)
        w.add_value_length(hd)


def write_model(path, arch="llama", layers=2, embd=64, heads=4, kv_heads=2, head_dim=None,
                ff=96, vocab=320, ctx=512, rope_base=10000.0, qkv_bias=None, qk_norm=None,
                rope_scaling=None, rope_factor=None, rope_orig_ctx=None, rope_freqs=None,
                rope_long=None, rope_short=None, rope_attn_factor=None,
                tied=None, seed=0, dtype=np.float32, bpe=None, swa=None, softcaps=None, spm_from=None,
                chat_template=None, moe=None, keys=None):
    """Writes a model; returns the dict of its arrays by tensor name.
    rope_freqs: an array of rope_dim/2 divisors (Llama 3 style) or None;
    rope_long, rope_short: Phi-3's LongRoPE divisors.  phi3 fuses Q, K and
    V into attn_qkv and the gate and up projections into ffn_up.  bpe:
    (training text, pre-tokenizer name) for a byte-level BPE vocabulary
    (its size replaces vocab) instead of the SentencePiece one.  Gemma
    ties its embeddings; swa: (window, pattern: an int or a flag per
    layer, or None for the architecture's default) for gemma2/3's
    sliding-window layers; softcaps: (attention, final) for gemma2/3.
    spm_from: a GGUF file whose SentencePiece vocabulary to take, as
    Gemma's: no space prefix, BOS added, its turn markers as control
    tokens.  chat_template: tokenizer.chat_template's text.  moe:
    (experts, used a token, expert width) for a mixture of experts.
    keys: more '<arch>.'-relative keys, as uint32."""
    rng = np.random.default_rng(seed)
    hd = head_dim or embd // heads
    qkv_bias = arch == "qwen2" if qkv_bias is None else qkv_bias
    qk_norm = arch in ("qwen3", "qwen3moe", "gemma3") if qk_norm is None else qk_norm
    tied = arch.startswith("gemma") if tied is None else tied
    w = gguf.GGUFWriter(path, arch)
    w.add_name(f"conformance-{arch}")
    shape_keys(w, layers, ctx, embd, ff, heads, kv_heads, hd)
    w.add_rope_dimension_count(hd)
    w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(1e-5)
    if bpe:
        vocab = write_bpe_vocab(w, *bpe)
    w.add_vocab_size(vocab)
    if rope_scaling:
        w.add_rope_scaling_type(gguf.RopeScalingType(rope_scaling))
        w.add_rope_scaling_factor(rope_factor)
    if rope_orig_ctx:
        w.add_rope_scaling_orig_ctx_len(rope_orig_ctx)
    if rope_attn_factor:
        w.add_rope_scaling_attn_factors(rope_attn_factor)
    if spm_from:
        vocab = copy_spm_vocab(w, spm_from, GEMMA_TURNS)
    elif not bpe:
        _vocab(w, vocab, arch)
    if chat_template:
        w.add_chat_template(chat_template)
    if swa:
        w.add_sliding_window(swa[0])
        if swa[1] is not None:
            w.add_sliding_window_pattern(swa[1])
    if moe:
        w.add_expert_count(moe[0])
        w.add_expert_used_count(moe[1])
        w.add_expert_feed_forward_length(moe[2])
    for k, v in (keys or {}).items():
        w.add_uint32(f"{arch}.{k}", v)
    if softcaps:
        if softcaps[0] is not None:
            w.add_attn_logit_softcapping(softcaps[0])
        if softcaps[1] is not None:
            w.add_final_logit_softcapping(softcaps[1])

    divisors = [(n + ".weight", f) for n, f in (("rope_freqs", rope_freqs), ("rope_factors_long", rope_long),
                                                 ("rope_factors_short", rope_short)) if f is not None]
    arrays = {}
    for kind, name, *dims in layout(arch, layers, embd, heads, kv_heads, hd, ff, vocab, tied, qkv_bias,
                                    qk_norm, extra=divisors, moe=moe):
        if kind == "mat":
            rows, cols = dims
            arrays[name] = (rng.standard_normal((rows, cols)) / np.sqrt(cols)).astype(dtype)
        elif kind == "exps":
            n, rows, cols = dims
            arrays[name] = (rng.standard_normal((n, rows, cols)) / np.sqrt(cols)).astype(dtype)
        elif kind == "vec":
            n, mean, spread = dims
            arrays[name] = (mean + spread * rng.standard_normal(n)).astype(np.float32)
        else:
            arrays[name] = np.asarray(dims[0], dtype=np.float32)
    for name, a in arrays.items():
        w.add_tensor(name, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return arrays


def llama3_rope_freqs(head_dim, base, factor=8.0, low=1.0, high=4.0, orig_ctx=8192):
    """Llama 3.1's per-pair divisors, as its converter computes them."""
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * np.pi / (base ** (-i / head_dim))
        lo_w, hi_w = orig_ctx / low, orig_ctx / high
        if wavelen < hi_w:
            out.append(1.0)
        elif wavelen > lo_w:
            out.append(factor)
        else:
            s = (orig_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - s) / factor + s))
    return np.array(out, dtype=np.float32)


def dequantize_file(src, dst):
    """Copies a GGUF file with every tensor widened to f32 by the gguf
    package's own dequantizers: the exact weights a quantized file holds,
    for llama.cpp to run without rounding its activations to 8 bits (as
    its quantized products do)."""
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch, use_temp_file=False)
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        sub = f.types[1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(name, f.contents(), f.types[0], sub)
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, a.reshape([int(n) for n in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_types(path):
    """The set of tensor type names in a GGUF file (e.g. {"F32", "Q4_K"})."""
    return {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
