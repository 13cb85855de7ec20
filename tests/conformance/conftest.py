"""Helpers for the conformance tests: the integration suite's Daemon (the
real `sparsed serve` on a free loopback port) and llama.cpp through the
llama-cpp-python package, on the same GGUF files."""
import importlib.util
import os

import numpy as np
import pytest

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "integration_conftest", os.path.join(_here, "..", "integration", "conftest.py"))
_itest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_itest)

Daemon = _itest.Daemon
BINARY = _itest.BINARY
BUILD = _itest.BUILD
ROOT = _itest.ROOT
need_binary = _itest.need_binary
SMOL = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES = os.path.join(ROOT, "models", "stories260K.gguf")

llama_cpp = pytest.importorskip("llama_cpp")
# llama.cpp's log off; the callback object must outlive every call
_quiet = llama_cpp.llama_log_callback(lambda level, text, data: None)
llama_cpp.llama_log_set(_quiet, None)


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Reference:
    """llama.cpp on one model: every position's logits, K/V kept in f32 so
    that only the arithmetic's order differs from sparsed's."""

    def __init__(self, path, n_ctx=1024):
        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                                   logits_all=True, verbose=False, n_threads=2,
                                   type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)

    def logprobs(self, tokens):
        """[len(tokens)][vocab]: row i is the distribution of token i + 1."""
        self.llm.reset()
        self.llm.eval(list(tokens))
        return log_softmax(np.array(self.llm.scores[:len(tokens)]))

    def tokenize(self, text, add_bos=False):
        return self.llm.tokenize(text.encode(), add_bos=add_bos, special=True)

    def chat(self, template, messages, add_generation_prompt=True):
        """llama.cpp's built-in rendering of a conversation for the family
        it recognises in template."""
        arr = (llama_cpp.llama_chat_message * len(messages))(
            *[llama_cpp.llama_chat_message(m["role"].encode(), m["content"].encode()) for m in messages])
        buf = bytes(1 << 16)
        n = llama_cpp.llama_chat_apply_template(template.encode(), arr, len(messages), add_generation_prompt, buf,
                                                len(buf))
        assert 0 < n < len(buf), n
        return buf[:n].decode()

    def quantize(self, src, dst, ftype):
        """llama.cpp's own quantizer: src (f32 GGUF) to dst in ftype."""
        p = llama_cpp.llama_model_quantize_default_params()
        p.ftype = ftype
        p.nthread = 2
        rc = llama_cpp.llama_model_quantize(src.encode(), dst.encode(), p)
        assert rc == 0, "llama.cpp could not quantize %s to ftype %d" % (src, ftype)


@pytest.fixture
def serve():
    """Starts `sparsed serve` on a model (dense attention, 2 threads);
    stops each daemon at the end and checks it exits 0."""
    need_binary()
    started = []

    def start(model, *args):
        d = Daemon("--attention", "dense", *args, model=model)
        started.append(d)
        d.model_id = d.get("/v1/models").json()["data"][0]["id"]
        start.last = d
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            rc = d.stop()
            assert rc == 0, d.log[-4000:]


def prompt_logprobs(d, tokens, top=0):
    """sparsed's logprob of each prompt token after the ones before it
    (echo, max_tokens 0), and its top alternatives when top > 0."""
    r = d.post("/v1/completions", {"model": d.model_id, "prompt": list(tokens), "max_tokens": 0,
                                   "echo": True, "logprobs": top}, timeout=600)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    return lp["token_logprobs"], lp["top_logprobs"]


def greedy(d, tokens, n):
    """sparsed's greedy continuation of a token prompt: ids and logprobs."""
    r = d.post("/v1/completions", {"model": d.model_id, "prompt": list(tokens), "max_tokens": n,
                                   "temperature": 0, "logprobs": 1, "ignore_eos": True,
                                   "return_tokens_as_token_ids": True}, timeout=600)
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    ids = [int(t.split(":", 1)[1]) for t in lp["tokens"]]
    return ids, lp["token_logprobs"]
