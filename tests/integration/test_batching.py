"""Continuous batching with the real engine: concurrent greedy streams give
the same tokens as each alone while sharing engine steps; the prefix cache
hits and changes nothing; more long requests than the pool holds all
complete through preemption and leave the pool empty."""
import threading

import requests

from conftest import sse_events

SUBJECTS = ["a little girl", "a big dog", "a small cat", "a happy bird", "a red ball", "a tiny fish",
            "a kind boy", "an old man", "a brave bunny", "a shy frog", "a funny duck", "a tall tree",
            "a blue car", "a sleepy bear", "a busy bee", "a green bug"]


def story(i):
    return "Once upon a time, there was %s. One day, %s wanted to play" % (SUBJECTS[i % 16], ["she", "he"][i // 16])


def run_stream(d, body):
    r = requests.post(d.url + "/v1/completions", json=dict(body, stream=True), stream=True, timeout=300)
    assert r.status_code == 200, r.text
    ev = sse_events(r)
    assert ev[-1] == "[DONE]"
    toks, text, fin = [], "", None
    for e in ev[:-1]:
        if e == ":":
            continue
        for c in e["choices"]:
            text += c["text"]
            if c["logprobs"]:
                toks += c["logprobs"]["tokens"]
            fin = c["finish_reason"] or fin
    return toks, text, fin


def hist_above(m, name, bound):
    """Observations above `bound` in a histogram (count minus the le=bound bucket)."""
    le = [k for k in m if k.startswith(name + "_bucket{") and 'le="%g"' % bound in k]
    assert le, "no bucket le=%g for %s" % (bound, name)
    return m[name + "_count"] - m[le[0]]


def test_concurrent_streams_match_alone(daemon):
    body = {"max_tokens": 40, "temperature": 0, "ignore_eos": True, "logprobs": 0}
    alone = [run_stream(daemon, dict(body, prompt=story(i))) for i in range(32)]
    for toks, text, fin in alone:
        assert len(toks) == 40 and fin == "length"

    before = daemon.metrics()
    results = [None] * 32
    barrier = threading.Barrier(32)

    def worker(i):
        barrier.wait()
        results[i] = run_stream(daemon, dict(body, prompt=story(i)))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = daemon.metrics()

    for i in range(32):
        assert results[i] == alone[i], "stream %d differs when batched" % i
    steps = after["sparsed_engine_steps_total"] - before["sparsed_engine_steps_total"]
    tokens = after["vllm:generation_tokens_total"] - before["vllm:generation_tokens_total"]
    assert tokens == 32 * 40
    # 1280 tokens in far fewer steps: the streams shared engine steps
    assert steps < tokens / 4, (steps, tokens)
    shared = hist_above(after, "sparsed_batch_size", 8) - hist_above(before, "sparsed_batch_size", 8)
    assert shared > 0, "no engine step ran more than 8 sequences"


def long_prefix():
    words = ("the little dog ran to the park and saw a big red ball near the tree . "
             "she was happy and they played all day in the sun . ").split()
    return " ".join(words[i % len(words)] for i in range(700))


def test_prefix_cache_hit_same_output(make_daemon):
    d = make_daemon()
    p = long_prefix()
    base = {"max_tokens": 24, "temperature": 0}
    first = d.post("/v1/completions", dict(base, prompt=p + " Tom said")).json()
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    m0 = d.metrics()
    second = d.post("/v1/completions", dict(base, prompt=p + " Then Sue")).json()
    m1 = d.metrics()
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 512, second["usage"]
    hits = m1["vllm:prefix_cache_hits_total"] - m0["vllm:prefix_cache_hits_total"]
    queries = m1["vllm:prefix_cache_queries_total"] - m0["vllm:prefix_cache_queries_total"]
    assert hits == cached and queries == second["usage"]["prompt_tokens"]
    # the exact repeat is served from the cache with the same output
    again = d.post("/v1/completions", dict(base, prompt=p + " Tom said")).json()
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0

    nc = make_daemon("--no-prefix-cache")
    ref = nc.post("/v1/completions", dict(base, prompt=p + " Then Sue")).json()
    assert ref["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert ref["choices"][0]["text"] == second["choices"][0]["text"]
    assert nc.metrics()["vllm:prefix_cache_hits_total"] == 0


def test_n_shares_prompt_pages(make_daemon):
    d = make_daemon()
    p = long_prefix()
    r = d.post("/v1/completions", {"prompt": p, "max_tokens": 8, "n": 4, "temperature": 0}).json()
    texts = [c["text"] for c in r["choices"]]
    assert len(set(texts)) == 1, "greedy choices of one prompt agree"
    m = d.metrics()
    # siblings 1..3 found the first one's full pages
    assert m["vllm:prefix_cache_hits_total"] >= 3 * 640


def test_preemption_all_complete(make_daemon):
    # 24 pages of 64 tokens; 8 requests that each end near 7 pages
    d = make_daemon("--kv-pages", "24", "--max-running", "16")
    body = {"max_tokens": 300, "temperature": 0, "ignore_eos": True}
    prompts = [story(i) + " " + " ".join(["and then"] * 20) for i in range(8)]
    results = [None] * 8
    barrier = threading.Barrier(8)

    def worker(i):
        barrier.wait()
        results[i] = requests.post(d.url + "/v1/completions", json=dict(body, prompt=prompts[i]), timeout=600)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        assert r.status_code == 200, r.text
        j = r.json()
        assert j["usage"]["completion_tokens"] == 300 and j["choices"][0]["finish_reason"] == "length"
    m = d.metrics()
    assert m["vllm:num_preemptions_total"] > 0, "the pool was never short: the test lost its point"
    assert m["sparsed_kv_pages_used"] == 0 and m["vllm:kv_cache_usage_perc"] == 0
    assert m["vllm:num_requests_running"] == 0 and m["vllm:num_requests_waiting"] == 0
    # recomputed sequences continue exactly where they were
    for i in (0, 5):
        alone = d.post("/v1/completions", dict(body, prompt=prompts[i])).json()
        assert alone["choices"][0]["text"] == results[i].json()["choices"][0]["text"]
    assert d.metrics()["sparsed_kv_pages_used"] == 0


SAMPLING = [dict(temperature=0.8), dict(temperature=1.3, top_k=5), dict(temperature=1.0, top_p=0.7),
            dict(temperature=0.9, top_k=40, top_p=0.9, min_p=0.05), dict(temperature=1.1, min_p=0.2),
            dict(temperature=0.7, top_p=0.95, logprobs=3), dict(temperature=1.0, top_k=2000)]


def sampled(d, i, kw, host=False):
    body = dict(kw, prompt=story(i), max_tokens=24, seed=100 + i, ignore_eos=True)
    if "logprobs" not in body:
        body["logprobs"] = 0
    if host:   # a logit bias of 0 changes no logit but sends the row to the host sampler
        body["logit_bias"] = {"1": 0}
    return run_stream(d, body)


def test_sampling_in_the_step_matches_the_host(daemon):
    """Rows with only temperature, top-k, top-p and min-p are sampled inside
    the engine step (on a GPU, on the device); rows with a logit bias on the
    host.  The same seed gives the same tokens and logprobs either way, alone
    or batched with other rows of other settings."""
    n = len(SAMPLING)
    alone = [sampled(daemon, i, SAMPLING[i]) for i in range(n)]
    host = [sampled(daemon, i, SAMPLING[i], host=True) for i in range(n)]
    for i in range(n):
        assert len(alone[i][0]) == 24
        assert alone[i] == host[i], "settings %r: step and host samplers differ" % SAMPLING[i]
    assert len({tuple(a[0]) for a in alone}) > 1, "different settings and seeds gave one output"

    results = [None] * n
    barrier = threading.Barrier(n)

    def worker(i):
        barrier.wait()
        results[i] = sampled(daemon, i, SAMPLING[i])

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(n):
        assert results[i] == alone[i], "settings %r differ when batched" % SAMPLING[i]
