"""Sliding-window layers in pages of their own (kvcache.h's window group):
a Gemma-3-shaped random model (every second layer a 48-token window) served
with window pages answers exactly as with every token kept
(--no-window-pages), alone, from the prefix cache, and with several
sequences at once, and leaves the pool empty."""
import os
import random
import subprocess
import tempfile
import threading

import pytest
import requests

from conftest import BUILD

ARGS = ["--block-size", "16", "--max-batch-tokens", "64", "--max-running", "4", "--kv-pages", "160"]


@pytest.fixture(scope="module")
def model():
    d = tempfile.mkdtemp(prefix="sparsed-window-")
    path = os.path.join(d, "g3.gguf")
    subprocess.run([os.path.join(BUILD, "tools", "mkmodel"), "--out", path, "--arch", "gemma3", "--layers", "4",
                    "--embd", "64", "--heads", "4", "--kv-heads", "2", "--head-dim", "16", "--ff", "128",
                    "--vocab", "300", "--ctx", "2048", "--swa-window", "48", "--swa-pattern", "2", "--seed", "21"],
                   check=True, capture_output=True)
    yield path
    os.unlink(path)
    os.rmdir(d)


def prompts():
    rng = random.Random(5)
    base = [rng.randrange(3, 300) for _ in range(200)]
    # two share a 200-token prefix (a prefix-cache hit past the window), the others stand alone
    return [base + [rng.randrange(3, 300) for _ in range(40)], base + [rng.randrange(3, 300) for _ in range(25)]] + \
        [[rng.randrange(3, 300) for _ in range(n)] for n in (90, 310)]


def complete(d, p):
    r = requests.post(d.url + "/v1/completions", json={"prompt": p, "max_tokens": 60, "temperature": 0,
                                                       "ignore_eos": True, "logprobs": 0}, timeout=300)
    assert r.status_code == 200, r.text
    j = r.json()
    return j["choices"][0]["logprobs"]["tokens"], j["usage"]["prompt_tokens_details"]["cached_tokens"]


def at_once(d, ps):
    """Every prompt of ps from its own thread at once; their tokens."""
    out = [None] * len(ps)

    def worker(k):
        out[k] = complete(d, ps[k])[0]
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(len(ps))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def test_window_pages_same_answers(make_daemon, model):
    w = make_daemon(*ARGS, model=model)
    full = make_daemon(*(ARGS + ["--no-window-pages"]), model=model)
    assert " window pages " in w.log and " window pages " not in full.log, w.log
    # 4 sequences' windows (48 tokens: 3 pages + 3 of rounding each) and a 64-token step (4)
    assert w.metrics()["sparsed_kv_window_pages_total"] == 4 * (3 + 3) + 4
    ps = prompts()
    # one at a time: the same steps on both daemons
    for i, p in enumerate(ps):
        a, ca = complete(w, p)
        b, cb = complete(full, p)
        assert a == b, "prompt %d differs with window pages" % i
        assert ca == cb, (i, ca, cb)
        if i == 1:
            assert ca == 192, "the shared 200-token prefix was not matched past the window"
    # all at once, twice (the second round from the cache): every answer as alone
    alone = [complete(full, p)[0] for p in ps]
    for _ in range(2):
        out = at_once(w, ps)
        for k in range(len(ps)):
            # a batch can round a near tie the other way; the first tokens must agree
            assert out[k][:20] == alone[k][:20], "prompt %d in a batch" % k
    m = w.metrics()
    assert m["sparsed_kv_pages_used"] == 0 and m["vllm:num_requests_running"] == 0
    assert m["sparsed_kv_window_pages_total"] > 0 and m["sparsed_kv_window_pages_used"] == 0
    assert "sparsed_kv_window_pages_total" not in full.metrics()


def test_window_pages_under_preemption(make_daemon, model):
    # 4 sequences of ~23 main pages each in a pool of 40: preempted ones recompute from the prefix
    # cache, whose window pages must still be there (or the match ends earlier), and finish as alone
    d = make_daemon(*(ARGS[:-1] + ["40"]), model=model)
    alone = make_daemon(*ARGS, model=model)
    ps = prompts()[:3] + [prompts()[3][:300]]
    want = [complete(alone, p)[0] for p in ps]
    out = at_once(d, ps)
    m = d.metrics()
    assert m["vllm:num_preemptions_total"] > 0, "the pool was never short: the test lost its point"
    for k in range(len(ps)):
        assert out[k][:20] == want[k][:20], "prompt %d after preemption" % k
    assert m["sparsed_kv_pages_used"] == 0 and m["sparsed_kv_window_pages_used"] == 0


def test_window_pages_n_choices(make_daemon, model):
    # the siblings of an n=3 request start from the first one's prompt pages, window pages included
    d = make_daemon(*ARGS, model=model)
    p = prompts()[2] + prompts()[0]
    r = requests.post(d.url + "/v1/completions", json={"prompt": p, "max_tokens": 30, "temperature": 0, "n": 3,
                                                       "ignore_eos": True}, timeout=300)
    assert r.status_code == 200, r.text
    texts = [c["text"] for c in r.json()["choices"]]
    assert len(texts) == 3 and len(set(texts)) == 1
    m = d.metrics()
    assert m["vllm:prefix_cache_hits_total"] >= 2 * (len(p) // 16 * 16 - 16), m["vllm:prefix_cache_hits_total"]
