"""sparsed against llama.cpp on the same GGUF files.

llama.cpp (built from its source by `tools/deps.sh --tests`, through the
llama-cpp-python package) is the reference implementation of the format:
a file sparsed reads differently from it -- an architecture's layout, a
RoPE scaling key, a quantization type -- computes other logits.  Each case
compares every prompt position's log-probability served by the real
daemon (echo, max_tokens 0: prefill, in chunks where the prompt is longer
than a step) and a greedy continuation (decode steps over the paged KV
cache) with llama.cpp's.

Models: small random ones written here with llama.cpp's own GGUF writer
(ggufgen.py), one per architecture and RoPE variant, quantized by
llama.cpp's quantizer to each type sparsed reads; and the real
stories260K and SmolLM2-135M (real text, both tokenizers).  Tokenizers:
/tokenize against llama.cpp's on those two, a Phi-3 vocabulary and small
byte-level BPE vocabularies under each pre-tokenizer sparsed knows.
Block-sparse attention that chooses every block must give llama.cpp's
dense logits too.
"""
import os
import subprocess

import gguf
import numpy as np
import pytest

import ggufgen
from conftest import BINARY, BUILD, SMOL, STORIES, Reference, greedy, prompt_logprobs

# f32 weights and K/V on both sides: only the order of the arithmetic
# differs.  Measured: |d logprob| <= 6e-6.
F32_TOL = 1e-3
# Gemma's GELU: llama.cpp's CPU looks it up in a table of fp16 inputs and
# outputs, sparsed computes it in f32 as the models were trained.
# Measured: |d logprob| 0.84-1.15e-3; 1.3-6.6e-4 with that rounding copied
# (then only upstream order differences flip fp16 steps).  A window one
# token too wide gives 0.49-0.56.
GELU_TOL = 3e-3


def tol(name):
    """The tolerance of an architecture (or ARCHS entry) by its name."""
    return GELU_TOL if name.startswith("gemma") else F32_TOL


def random_prompt(n, vocab, seed=1):
    rng = np.random.default_rng(seed)
    return [int(t) for t in rng.integers(3, vocab, n)]


def compare(serve, path, tokens, args=(), gen=16, ref_path=None, ref_ctx=0):
    """Max |d logprob| over the prompt and over a greedy continuation,
    after checking that the continuation picks llama.cpp's tokens.
    llama.cpp reads ref_path (the same weights widened to f32) if given,
    with a context of ref_ctx (what sparsed serves, where that matters)."""
    ref = Reference(ref_path or path, n_ctx=max(ref_ctx, len(tokens) + gen + 8))
    d = serve(path, *args)
    got, _ = prompt_logprobs(d, tokens)
    want = ref.logprobs(tokens)
    assert got[0] is None
    diff = max(abs(got[i] - want[i - 1, tokens[i]]) for i in range(1, len(tokens)))
    if not gen:
        return diff, None
    ids, lps = greedy(d, tokens, gen)
    full = ref.logprobs(tokens + ids)
    for k, t in enumerate(ids):
        row = full[len(tokens) + k - 1]
        # greedy takes llama.cpp's best token, unless the two are a near tie
        assert row[t] >= row.max() - 1e-4, "step %d: took %d, llama.cpp's best is %d" % (k, t, row.argmax())
    gdiff = max(abs(lps[k] - full[len(tokens) + k - 1, t]) for k, t in enumerate(ids))
    return diff, gdiff


ARCHS = {
    "llama": dict(arch="llama"),
    "llama-tied-embeddings": dict(arch="llama", tied=True),
    "qwen2-qkv-bias": dict(arch="qwen2"),
    "qwen3-qk-norm": dict(arch="qwen3", head_dim=32),
    # Llama 3.1/3.2's RoPE: per-pair divisors in rope_freqs.weight
    "llama3-rope-freqs": dict(arch="llama", ctx=2048,
                              rope_freqs=ggufgen.llama3_rope_freqs(16, 10000.0, factor=8, orig_ctx=64)),
    "linear-rope-x4": dict(arch="llama", ctx=2048, rope_scaling="linear", rope_factor=4.0),
    "yarn-rope-x4": dict(arch="qwen2", ctx=2048, rope_scaling="yarn", rope_factor=4.0, rope_orig_ctx=128),
    "yarn-rope-x4-qwen3": dict(arch="qwen3", head_dim=32, ctx=2048, rope_scaling="yarn",
                               rope_factor=4.0, rope_orig_ctx=128),
    # Phi-3: fused QKV and gate-up; LongRoPE's short divisors within the
    # original 512 tokens, its long ones past them (see test_phi3_short)
    "phi3-longrope": dict(arch="phi3", ctx=2048, rope_orig_ctx=512, rope_attn_factor=1.19,
                          rope_long=np.linspace(1.0, 12.0, 8), rope_short=np.linspace(1.0, 1.6, 8)),
    # Gemma: scaled embeddings, GELU; Gemma 2 adds post-norms, soft caps
    # (small here, so that they bite) and every other layer a 48-token
    # sliding window; Gemma 3 QK norm and windows with their own unscaled
    # RoPE (base 10000 against the global layers' 1e6, linear x4)
    "gemma": dict(arch="gemma", head_dim=32),
    "gemma2-window-softcaps": dict(arch="gemma2", layers=4, swa=(48, None), softcaps=(1.5, 4.0)),
    "gemma3-window": dict(arch="gemma3", layers=4, head_dim=32, ctx=2048, rope_base=1e6, rope_scaling="linear",
                          rope_factor=4.0, swa=(48, 2)),
    "gemma3-window-flags": dict(arch="gemma3", layers=3, swa=(40, [True, False, True]), softcaps=(None, 3.0)),
    # mixtures of experts: Qwen3-MoE (QK norm, 8 experts of width 32, 2 a
    # token) and Mixtral's layout (llama with expert tensors: 4 as wide as
    # feed_forward_length, which llama.cpp takes for their width; 2 a token)
    "qwen3moe": dict(arch="qwen3moe", head_dim=32, moe=(8, 2, 32)),
    "llama-moe": dict(arch="llama", ff=64, moe=(4, 2, 64)),
}


@pytest.mark.parametrize("name", list(ARCHS))
def test_architecture(serve, tmp_path, name):
    """Each architecture and RoPE variant, f32: a 300-token prompt
    prefilled in chunks of 128 (--max-batch-tokens), then 16 greedy steps."""
    path = str(tmp_path / (name + ".gguf"))
    ggufgen.write_model(path, **ARCHS[name])
    diff, gdiff = compare(serve, path, random_prompt(300, 320), ("--max-batch-tokens", "128"),
                          ref_ctx=ARCHS[name].get("ctx", 512))
    assert diff < tol(name) and gdiff < tol(name), (name, diff, gdiff)


@pytest.mark.parametrize("rope", [["--rope-scaling", "yarn"], ["--rope-scaling", "linear"],
                                  ["--llama3-rope-freqs", "--rope-orig-ctx", "64"], ["--arch", "phi3"],
                                  ["--arch", "gemma3", "--swa-window", "40", "--swa-pattern", "2"],
                                  ["--arch", "gemma2", "--swa-window", "40", "--attn-softcap", "2",
                                   "--logit-softcap", "5"],
                                  ["--arch", "qwen3moe", "--experts", "8", "--experts-used", "3", "--expert-ff", "40"]])
def test_mkmodel_options(serve, tmp_path, rope):
    """tools/mkmodel's RoPE and architecture options (the GPU checks'
    models) write what llama.cpp reads as intended."""
    path = str(tmp_path / "mk.gguf")
    p = subprocess.run([os.path.join(BUILD, "tools", "mkmodel"), "--out", path, "--layers", "2",
                        "--ctx", "1024", "--seed", "5"] + rope, capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    r = gguf.GGUFReader(path)
    if rope[0] == "--rope-scaling":
        assert r.fields["llama.rope.scaling.type"].contents() == rope[1]
    elif rope[1] == "phi3":
        assert r.fields["general.architecture"].contents() == "phi3"
        assert "blk.0.attn_qkv.weight" in [t.name for t in r.tensors]
    elif rope[1] == "qwen3moe":
        assert r.fields["qwen3moe.expert_used_count"].contents() == 3
        assert [t.shape.tolist() for t in r.tensors if t.name == "blk.1.ffn_down_exps.weight"] == [[40, 64, 8]]
    elif rope[0] == "--arch":
        assert r.fields[rope[1] + ".attention.sliding_window"].contents() == 40
        assert "blk.1.post_ffw_norm.weight" in [t.name for t in r.tensors]
    else:
        f = [t for t in r.tensors if t.name == "rope_freqs.weight"][0].data
        assert f.min() == 1.0 and f.max() == 8.0, f
    diff, gdiff = compare(serve, path, random_prompt(300, 512), ("--max-batch-tokens", "128"))
    assert diff < tol(rope[1]) and gdiff < tol(rope[1]), (rope, diff, gdiff)


def test_phi3_short(serve, tmp_path):
    """Phi-3 served within its original context (--max-model-len 512)
    takes the short LongRoPE divisors, as llama.cpp does at that context."""
    path = str(tmp_path / "phi3.gguf")
    ggufgen.write_model(path, **ARCHS["phi3-longrope"])
    toks = random_prompt(400, 320)
    ref = Reference(path, n_ctx=512).logprobs(toks)
    d = serve(path, "--max-model-len", "512")
    got, _ = prompt_logprobs(d, toks)
    diff = max(abs(got[i] - ref[i - 1, toks[i]]) for i in range(1, len(toks)))
    assert diff < F32_TOL, diff
    long_ref = Reference(path, n_ctx=1024).logprobs(toks)
    assert np.abs(long_ref - ref).max() > 100 * F32_TOL     # the two really differ


def test_rope_scaling_changes_the_logits(tmp_path):
    """The RoPE cases above discriminate: with the scaling keys removed
    llama.cpp's own logits move by far more than the tolerance."""
    base = str(tmp_path / "plain.gguf")
    scaled = str(tmp_path / "yarn.gguf")
    ggufgen.write_model(base, arch="qwen2", ctx=2048)
    ggufgen.write_model(scaled, **ARCHS["yarn-rope-x4"])
    toks = random_prompt(300, 320)
    a, b = Reference(base).logprobs(toks), Reference(scaled).logprobs(toks)
    assert np.abs(a - b).max() > 100 * F32_TOL


@pytest.mark.parametrize("indexer,arch", [("minmax", "qwen3-qk-norm"), ("mean", "qwen3-qk-norm"),
                                          ("minmax", "gemma3-window")])
def test_sparse_covering_every_block(serve, tmp_path, indexer, arch):
    """Block-sparse attention (a training-free indexer, blocks of 16)
    whose top-k covers every block attends to all the keys: llama.cpp's
    dense logits, prefill in chunks and decode alike (Gemma 3: sparse on
    its global layers, its window layers as they are)."""
    path = str(tmp_path / "model.gguf")
    ggufgen.write_model(path, **ARCHS[arch])
    args = ("--attention", "sparse", "--indexer", indexer, "--block-size", "16", "--top-k-blocks", "1000",
            "--sparse-min-context", "0", "--max-batch-tokens", "128")
    diff, gdiff = compare(serve, path, random_prompt(300, 320), args, ref_ctx=ARCHS[arch].get("ctx", 512))
    assert "attention sparse" in serve.last.log, serve.last.log[-2000:]
    assert diff < tol(arch) and gdiff < tol(arch), (indexer, arch, diff, gdiff)


def test_unusable_rope_is_refused(tmp_path):
    """A RoPE sparsed does not implement, or divisors it cannot use, stop
    the load with a message (and a non-zero exit), never other logits."""
    cases = [
        (dict(rope_scaling="longrope", rope_factor=4.0), "rope scaling 'longrope' is not supported"),
        (dict(rope_freqs=np.r_[np.ones(7), 0.0]), "rope_freqs.weight[7] = 0 is not a divisor in [1e-6, 1e6]"),
        (dict(rope_scaling="yarn", rope_factor=-2.0), "scaling factor -2,"),
        (dict(rope_base=-10000.0), "rope base -10000,"),
    ]
    for i, (kw, needle) in enumerate(cases):
        path = str(tmp_path / ("bad%d.gguf" % i))
        ggufgen.write_model(path, **kw)
        p = subprocess.run([BINARY, "generate", "--model", path, "--max-tokens", "1"],
                           capture_output=True, timeout=60)
        assert p.returncode == 1 and needle in p.stderr.decode(), (kw, p.returncode, p.stderr.decode())


def test_unusable_moe_is_refused(tmp_path):
    """Mixtures of experts routed otherwise than sparsed routes them
    (shared experts, sigmoid gating) or with more experts used than there
    are stop the load with a message, never other logits; and the
    routing the suite checks is not vacuous: a model whose experts are
    all chosen (8 of 8) gives other logits than 2 of 8."""
    cases = [
        (dict(keys={"expert_shared_count": 1}), "1 shared"),
        (dict(keys={"expert_gating_func": 2}), "gating 2"),
        (dict(moe=(8, 9, 32)), "9 used"),
    ]
    for i, (kw, needle) in enumerate(cases):
        path = str(tmp_path / ("bad%d.gguf" % i))
        ggufgen.write_model(path, **dict(dict(ARCHS["qwen3moe"]), **kw))
        p = subprocess.run([BINARY, "generate", "--model", path, "--max-tokens", "1"],
                           capture_output=True, timeout=60)
        assert p.returncode == 1 and needle in p.stderr.decode(), (kw, p.returncode, p.stderr.decode())
    toks = random_prompt(40, 320)
    out = {}
    for used in (2, 8):
        path = str(tmp_path / ("used%d.gguf" % used))
        ggufgen.write_model(path, **dict(dict(ARCHS["qwen3moe"]), moe=(8, used, 32)))
        out[used] = Reference(path, n_ctx=64).logprobs(toks)
    assert np.abs(out[2] - out[8]).max() > 100 * F32_TOL


# The file types people download, made by llama.cpp's quantizer: its
# llama_ftype, and the tensor type that must then be in the file (the
# K-quant mixes hold other types too, for some tensors).
QUANTS = {
    "F16": (1, "F16"), "BF16": (32, "BF16"), "Q8_0": (7, "Q8_0"),
    "Q5_0": (8, "Q5_0"), "Q5_1": (9, "Q5_1"), "Q4_0": (2, "Q4_0"), "Q4_1": (3, "Q4_1"),
    "Q2_K": (10, "Q2_K"), "Q3_K_M": (12, "Q3_K"), "Q4_K_M": (15, "Q4_K"),
    "Q5_K_M": (17, "Q5_K"), "Q6_K": (18, "Q6_K"), "IQ4_NL": (25, "IQ4_NL"), "IQ4_XS": (30, "IQ4_XS"),
}


@pytest.fixture(scope="module")
def f32_model(tmp_path_factory):
    """A random llama whose rows suit every block size (256): the source
    each quantized file is made from."""
    path = str(tmp_path_factory.mktemp("q") / "f32.gguf")
    ggufgen.write_model(path, arch="llama", embd=256, heads=4, kv_heads=2, ff=512, vocab=512, ctx=1024)
    return path


@pytest.mark.parametrize("qname", list(QUANTS))
def test_quantized(serve, f32_model, qname):
    """A file quantized by llama.cpp's quantizer, served by sparsed, against
    llama.cpp on the same weights widened to f32 by the gguf package: equal
    to f32 precision.  (llama.cpp's own quantized products round the
    activations to 8 bits, ~0.03 on these logprobs; within that it agrees
    with the widened file, which checks the oracle itself.)"""
    path = f32_model.replace("f32.gguf", qname + ".gguf")
    wide = path.replace(".gguf", "-f32.gguf")
    ftype, qtype = QUANTS[qname]
    Reference(f32_model).quantize(f32_model, path, ftype)
    assert qtype in ggufgen.tensor_types(path), (qname, ggufgen.tensor_types(path))
    ggufgen.dequantize_file(path, wide)
    toks = random_prompt(200, 512)
    diff, gdiff = compare(serve, path, toks, ref_path=wide)
    assert diff < F32_TOL and gdiff < F32_TOL, (qname, diff, gdiff)
    pos = np.arange(len(toks) - 1)
    own = Reference(path).logprobs(toks)[pos, toks[1:]]
    assert np.abs(own - Reference(wide).logprobs(toks)[pos, toks[1:]]).max() < 0.25


def real_text():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md"), encoding="utf-8") as f:
        return f.read()[:3000]


TEXTS = [
    "Once upon a time, there was a little girl named Lily.",
    "  leading spaces, tabs\tand\nnew lines\n\n  end ",
    "Numbers 1234567 3.14159 -42 1e10, dates 2026-11-27, and code: x->y[i] += f(a, b);",
    "Unicode: café naïve Ωmega 日本語のテキスト 한국어 emoji 🙂🚀 and math ∑∫√",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "",
]


PHI3_CHAT = "<|system|>\nBe brief.<|end|>\n<|user|>\n  Hi there\t<|end|>\n<|assistant|>\n Hello<|endoftext|> x"


GEMMA_CHAT = "<start_of_turn>user\n Hi there<end_of_turn>\n<start_of_turn>model\nHello  x"


@pytest.mark.parametrize("model", ["stories260K", "SmolLM2", "phi3", "gemma"])
def test_tokenizer(serve, tmp_path, model):
    """/tokenize equals llama.cpp's tokenizer (special tokens parsed, with
    and without BOS) on assorted texts and the README.  A Phi-3 vocabulary
    drops the whitespace after its added tokens (but <|endoftext|>); a
    Gemma one (stories260K's pieces here) adds no space prefix."""
    if model == "phi3":
        path = str(tmp_path / "phi3.gguf")
        ggufgen.write_model(path, arch="phi3", vocab=2000)
    elif model == "gemma":
        path = str(tmp_path / "gemma.gguf")
        ggufgen.write_model(path, arch="gemma3", spm_from=STORIES)
    else:
        path = STORIES if model == "stories260K" else SMOL
    if not os.path.exists(path):
        pytest.skip("%s not fetched (tools/deps.sh)" % path)
    ref = Reference(path)
    d = serve(path)
    for text in TEXTS + [real_text(), PHI3_CHAT, GEMMA_CHAT]:
        for bos in (False, True):
            r = d.post("/tokenize", {"prompt": text, "add_special_tokens": bos})
            assert r.status_code == 200, r.text
            want = ref.tokenize(text, add_bos=bos)
            assert r.json()["tokens"] == want, (model, text[:40], bos)


# Gemma 3's template as far as the two renderers look: its turn markers
# (sparsed and llama.cpp both recognise the family by them)
GEMMA3_TEMPLATE = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}...{%- endif -%}"
                   "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n"
                   "{%- if add_generation_prompt -%}<start_of_turn>model\n{%- endif -%}")


def test_gemma_chat(serve, tmp_path):
    """A Gemma 3 conversation: the daemon's prompt is llama.cpp's rendering
    of it, token for token in number (BOS once, the system message folded
    into the first user turn); <end_of_turn> ends the reply."""
    path = str(tmp_path / "gemma.gguf")
    ggufgen.write_model(path, arch="gemma3", spm_from=STORIES, chat_template=GEMMA3_TEMPLATE)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"},
            {"role": "assistant", "content": "there was a cat."}, {"role": "user", "content": "And then?"}]
    ref = Reference(path)
    want = ref.tokenize(ref.chat(GEMMA3_TEMPLATE, msgs), add_bos=True)
    d = serve(path)
    end = ref.tokenize("<end_of_turn>")
    assert len(end) == 1
    r = d.post("/v1/chat/completions", {"model": d.model_id, "messages": msgs, "max_tokens": 8, "temperature": 0,
                                        "logit_bias": {str(end[0]): 100}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["usage"]["prompt_tokens"] == len(want), (body["usage"], len(want))
    assert body["choices"][0]["finish_reason"] == "stop", body
    assert body["choices"][0]["message"]["content"] == "", body


@pytest.mark.parametrize("pre", ["llama-bpe", "qwen2", "smollm", "gpt-2"])
def test_bpe_pre_tokenizers(serve, tmp_path, pre):
    """Byte-level BPE vocabularies (Llama 3's, Qwen 2's, SmolLM's, GPT-2's
    pre-tokenizer), merges learned from this repo's README: every text
    tokenizes as llama.cpp tokenizes it.  The merges join words, spaces
    and digit runs, so a text cut other than llama.cpp cuts it gives other
    tokens (Llama 3: digits in threes and whole pieces first; Qwen 2:
    single digits)."""
    path = str(tmp_path / "bpe.gguf")
    train = real_text() + " 1234567 2026 3.14159 \n\n\t x = 100000;" * 3
    ggufgen.write_model(path, arch="qwen2" if pre == "qwen2" else "llama", bpe=(train, pre))
    ref = Reference(path)
    d = serve(path)
    for text in TEXTS + [real_text(), "  123456789 digits 12 1234 and 3.14159\n\n\n x  y", "<|eot_id|>x"]:
        for bos in (False, True):
            r = d.post("/tokenize", {"prompt": text, "add_special_tokens": bos})
            assert r.status_code == 200, r.text
            assert r.json()["tokens"] == ref.tokenize(text, add_bos=bos), (pre, text[:40], bos)


@pytest.mark.parametrize("model", ["stories260K", "SmolLM2"])
def test_real_model(serve, tmp_path, model):
    """Real checkpoints on real text: every prompt position and 16 greedy
    steps.  stories260K is f32; SmolLM2 is Q4_1, compared with llama.cpp
    on its weights widened to f32 (as in test_quantized)."""
    path = STORIES if model == "stories260K" else SMOL
    if not os.path.exists(path):
        pytest.skip("%s not fetched (tools/deps.sh)" % path)
    wide = None
    if model == "SmolLM2":
        wide = str(tmp_path / "smollm2-f32.gguf")
        ggufgen.dequantize_file(path, wide)
    text = "Once upon a time, there was a little dog named Max. He liked to run in the park." \
        if model == "stories260K" else real_text()[:600]
    toks = Reference(path).tokenize(text, add_bos=True)
    diff, gdiff = compare(serve, path, toks, ref_path=wide)
    assert diff < F32_TOL and gdiff < F32_TOL, (model, diff, gdiff)
