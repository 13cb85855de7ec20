"""The OpenAI API surface with real clients: curl and the official OpenAI
Python SDK, completions and chat, streamed and not, n > 1, stop strings,
seeds, logprobs, include_usage; every response checked against OpenAI's
published schema for its path."""
import json
import re
import shutil
import subprocess

import pytest

from conftest import MODEL_NAME, sse_events
import schemas

PROMPT = "Once upon a time, there was a little"


def sdk(daemon):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=daemon.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def curl(*args):
    if not shutil.which("curl"):
        pytest.skip("curl not installed")
    p = subprocess.run(["curl", "-sS", "--max-time", "120"] + list(args), capture_output=True, timeout=150)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


# ---- curl ----------------------------------------------------------------

def test_curl_completion(daemon):
    out = curl(daemon.url + "/v1/completions", "-H", "Content-Type: application/json",
               "-d", json.dumps({"model": MODEL_NAME, "prompt": PROMPT, "max_tokens": 12, "temperature": 0}))
    r = json.loads(out)
    schemas.check("CreateCompletionResponse", r)
    assert r["object"] == "text_completion" and r["model"] == MODEL_NAME
    assert r["choices"][0]["finish_reason"] in ("stop", "length")
    assert r["usage"]["completion_tokens"] == 12 or r["choices"][0]["finish_reason"] == "stop"
    assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
    assert r["choices"][0]["text"].strip()


def test_curl_chat_stream(daemon):
    out = curl("-N", daemon.url + "/v1/chat/completions", "-H", "Content-Type: application/json",
               "-d", json.dumps({"model": MODEL_NAME, "messages": [{"role": "user", "content": "Tell a story"}],
                                 "max_tokens": 10, "stream": True, "stream_options": {"include_usage": True}}))
    assert out.endswith("data: [DONE]\n\n")
    events = [json.loads(b[6:]) for b in out.split("\n\n") if b.startswith("data: {")]
    ids = {e["id"] for e in events}
    assert len(ids) == 1 and next(iter(ids)).startswith("chatcmpl-")
    for e in events:
        schemas.check("CreateChatCompletionStreamResponse", e)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1
    assert [e for e in events if e["choices"] and e["choices"][0]["finish_reason"]]


# ---- OpenAI SDK -------------------------------------------------------------

def test_sdk_models(daemon):
    c = sdk(daemon)
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    raw = daemon.get("/v1/models").json()
    schemas.check("ListModelsResponse", raw)
    one = daemon.get("/v1/models/" + MODEL_NAME).json()
    schemas.check("Model", one)
    assert c.models.retrieve(MODEL_NAME).id == MODEL_NAME


def test_sdk_completion_and_schema(daemon):
    c = sdk(daemon)
    r = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0)
    schemas.check("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.choices[0].text
    # greedy is deterministic
    r2 = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=16, temperature=0)
    assert r2.choices[0].text == r.choices[0].text


def test_sdk_completion_stream_matches_whole(daemon):
    c = sdk(daemon)
    whole = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=20, temperature=0)
    chunks = list(c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=20, temperature=0,
                                       stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].text for ch in chunks if ch.choices)
    assert text == whole.choices[0].text
    assert len({ch.id for ch in chunks}) == 1
    for ch in chunks:
        schemas.check("CreateCompletionResponse", ch.model_dump(exclude_unset=True),
                      schemas.completion_chunk_patch)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_sdk_chat(daemon):
    c = sdk(daemon)
    r = c.chat.completions.create(model=MODEL_NAME, max_tokens=12, temperature=0, messages=[
        {"role": "system", "content": "You tell stories."},
        {"role": "user", "content": [{"type": "text", "text": "Once upon"}, {"type": "text", "text": "a time"}]},
    ])
    schemas.check("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")


def test_sdk_chat_stream(daemon):
    c = sdk(daemon)
    msgs = [{"role": "user", "content": "Once upon a time"}]
    whole = c.chat.completions.create(model=MODEL_NAME, max_tokens=15, temperature=0, messages=msgs)
    chunks = list(c.chat.completions.create(model=MODEL_NAME, max_tokens=15, temperature=0, messages=msgs,
                                            stream=True))
    for ch in chunks:
        schemas.check("CreateChatCompletionStreamResponse", ch.model_dump(exclude_unset=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert all(ch.usage is None for ch in chunks)   # not asked for


def test_n_choices_and_seed(daemon):
    c = sdk(daemon)
    kw = dict(model=MODEL_NAME, prompt=PROMPT, max_tokens=24, temperature=1.0, n=4, seed=1234)
    a = c.completions.create(**kw)
    b = c.completions.create(**kw)
    schemas.check("CreateCompletionResponse", a.model_dump(exclude_unset=True))
    assert sorted(ch.index for ch in a.choices) == [0, 1, 2, 3]
    assert [ch.text for ch in a.choices] == [ch.text for ch in b.choices], "same seed, same samples"
    assert len({ch.text for ch in a.choices}) > 1, "the n samples should differ"
    other = c.completions.create(**dict(kw, seed=99))
    assert [ch.text for ch in other.choices] != [ch.text for ch in a.choices]
    # streamed n > 1: every index gets its own finish
    chunks = list(c.completions.create(**dict(kw, stream=True)))
    texts = {}
    fins = {}
    for ch in chunks:
        for x in ch.choices:
            texts[x.index] = texts.get(x.index, "") + x.text
            if x.finish_reason:
                fins[x.index] = x.finish_reason
    assert [texts[i] for i in range(4)] == [ch.text for ch in a.choices]
    assert sorted(fins) == [0, 1, 2, 3]


def test_chat_n_stream(daemon):
    c = sdk(daemon)
    chunks = list(c.chat.completions.create(model=MODEL_NAME, max_tokens=8, n=3, seed=5, stream=True,
                                            messages=[{"role": "user", "content": "hi"}]))
    roles = sorted(x.index for ch in chunks for x in ch.choices if x.delta.role == "assistant")
    assert roles == [0, 1, 2]
    for ch in chunks:
        schemas.check("CreateChatCompletionStreamResponse", ch.model_dump(exclude_unset=True))


def test_multiple_prompts(daemon):
    r = daemon.post("/v1/completions", {"prompt": ["Once upon a time", "The dog"], "max_tokens": 6,
                                        "temperature": 0, "n": 2}).json()
    schemas.check("CreateCompletionResponse", r)
    assert [ch["index"] for ch in r["choices"]] == [0, 1, 2, 3]
    assert r["choices"][0]["text"] == r["choices"][1]["text"]      # greedy, same prompt
    single = daemon.post("/v1/completions", {"prompt": "The dog", "max_tokens": 6, "temperature": 0}).json()
    assert r["choices"][2]["text"] == single["choices"][0]["text"]
    # token-id prompts and lists of them
    toks = daemon.post("/tokenize", {"prompt": "The dog"}).json()["tokens"]
    r2 = daemon.post("/v1/completions", {"prompt": [toks], "max_tokens": 6, "temperature": 0}).json()
    assert r2["choices"][0]["text"] == single["choices"][0]["text"]
    r3 = daemon.post("/v1/completions", {"prompt": toks, "max_tokens": 6, "temperature": 0}).json()
    assert r3["choices"][0]["text"] == single["choices"][0]["text"]


def test_stop_strings(daemon):
    c = sdk(daemon)
    free = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0).choices[0].text
    # pick a stop string that occurs in the free-running output
    word = next(w for w in free.split() if len(w) >= 3)
    at = free.index(word)
    r = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=[word, "zzzz"])
    assert r.choices[0].text == free[:at]
    assert r.choices[0].finish_reason == "stop"
    # streamed: the same text, no piece of the stop string leaks out
    chunks = list(c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0,
                                       stop=word, stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == free[:at]
    # a stop string spanning several tokens
    span = free[at - 2: at + 3] if at >= 2 else free[at: at + 5]
    r = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=40, temperature=0, stop=span)
    assert r.choices[0].text == free[:free.index(span)]


def test_logprobs_completions(daemon):
    c = sdk(daemon)
    r = c.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=3)
    schemas.check("CreateCompletionResponse", r.model_dump(exclude_unset=True))
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert "".join(lp.tokens) == r.choices[0].text
    for tok, l, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert l <= 0 and 1 <= len(top) <= 3
        # greedy: the chosen token is the most likely one
        assert max(top.values()) == pytest.approx(l, abs=1e-5)
        assert top.get(tok) == pytest.approx(l, abs=1e-5)


def test_logprobs_chat_stream(daemon):
    c = sdk(daemon)
    chunks = list(c.chat.completions.create(model=MODEL_NAME, max_tokens=5, temperature=0, logprobs=True,
                                            top_logprobs=2, stream=True,
                                            messages=[{"role": "user", "content": "hello"}]))
    entries = [e for ch in chunks if ch.choices and ch.choices[0].logprobs
               for e in ch.choices[0].logprobs.content]
    assert len(entries) >= 1
    for e in entries:
        assert e.logprob <= 0 and len(e.top_logprobs) == 2
        assert bytes(e.bytes).decode("utf-8", "replace") == e.token or e.token.count("\ufffd")
    whole = c.chat.completions.create(model=MODEL_NAME, max_tokens=5, temperature=0, logprobs=True,
                                      top_logprobs=2, messages=[{"role": "user", "content": "hello"}])
    schemas.check("CreateChatCompletionResponse", whole.model_dump(exclude_unset=True))
    assert [e.token for e in whole.choices[0].logprobs.content] == [e.token for e in entries]


def test_logprobs_as_token_ids(daemon):
    """return_tokens_as_token_ids (vLLM's): the same logprobs, each token
    named "token_id:N" with N the id whose text the plain request shows."""
    body = {"prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 2, "echo": True}
    plain = daemon.post("/v1/completions", body).json()["choices"][0]["logprobs"]
    r = daemon.post("/v1/completions", dict(body, return_tokens_as_token_ids=True)).json()
    schemas.check("CreateCompletionResponse", r, echo_patch)
    ids = r["choices"][0]["logprobs"]
    assert ids["token_logprobs"] == plain["token_logprobs"]
    toks = [int(t.split(":", 1)[1]) for t in ids["tokens"]]
    assert all(t.startswith("token_id:") for t in ids["tokens"])
    prompt_ids = daemon.post("/tokenize", {"prompt": PROMPT}).json()["tokens"]
    assert toks[:len(prompt_ids)] == prompt_ids
    assert daemon.post("/detokenize", {"tokens": toks}).json()["prompt"] == r["choices"][0]["text"]
    for a, b in zip(ids["top_logprobs"][1:], plain["top_logprobs"][1:]):
        assert sorted(a.values()) == sorted(b.values()) and all(k.startswith("token_id:") for k in a)
    chat = daemon.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hello"}],
                                                "max_tokens": 3, "temperature": 0, "logprobs": True,
                                                "top_logprobs": 1, "return_tokens_as_token_ids": True}).json()
    schemas.check("CreateChatCompletionResponse", chat)
    for e in chat["choices"][0]["logprobs"]["content"]:
        assert e["token"].startswith("token_id:") and e["top_logprobs"][0]["token"].startswith("token_id:")
    bad = daemon.post("/v1/completions", dict(body, return_tokens_as_token_ids="yes"))
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "return_tokens_as_token_ids"


def test_echo(daemon):
    r = daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0, "echo": True}).json()
    plain = daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0}).json()
    assert r["choices"][0]["text"] == PROMPT + plain["choices"][0]["text"]
    ev = sse_events(daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 4, "temperature": 0,
                                                    "echo": True, "stream": True}, stream=True))
    assert "".join(e["choices"][0]["text"] for e in ev if isinstance(e, dict)) == r["choices"][0]["text"]


def test_sampling_fields_accepted(daemon):
    body = {"prompt": PROMPT, "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05,
            "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1,
            "logit_bias": {"13": -100}, "seed": 7, "user": "someone", "unknown_field": {"x": 1}}
    a = daemon.post("/v1/completions", body)
    assert a.status_code == 200, a.text
    b = daemon.post("/v1/completions", body)
    assert a.json()["choices"][0]["text"] == b.json()["choices"][0]["text"]


def test_logit_bias_forces_token(daemon):
    toks = daemon.post("/tokenize", {"prompt": " dog", "add_special_tokens": False}).json()["tokens"]
    forced = toks[-1]
    text = daemon.post("/detokenize", {"tokens": [forced]}).json()["prompt"]
    r = daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "temperature": 0,
                                        "logit_bias": {str(forced): 100}, "logprobs": 1}).json()
    got = [t.lstrip() for t in r["choices"][0]["logprobs"]["tokens"]]
    assert got == [text.lstrip()] * 3   # +100 wins every step


def test_ignore_eos_and_max_completion_tokens(daemon):
    r = daemon.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                             "max_completion_tokens": 30, "ignore_eos": True,
                                             "temperature": 0}).json()
    assert r["usage"]["completion_tokens"] == 30 and r["choices"][0]["finish_reason"] == "length"


def test_tokenize_roundtrip(daemon):
    t = daemon.post("/tokenize", {"prompt": "Hello world, tokens!"}).json()
    assert t["count"] == len(t["tokens"]) and t["max_model_len"] == 2048
    d = daemon.post("/detokenize", {"tokens": t["tokens"]}).json()
    assert d["prompt"] == "Hello world, tokens!"
    m = daemon.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    assert m["count"] > 1


def test_health_ready_metrics(daemon):
    assert daemon.get("/health").status_code == 200
    assert daemon.get("/ready").status_code == 200
    r = daemon.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    m = daemon.metrics()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
                 "vllm:prompt_tokens_total", "vllm:generation_tokens_total",
                 "vllm:time_to_first_token_seconds_count", "vllm:inter_token_latency_seconds_count",
                 "vllm:e2e_request_latency_seconds_count", "sparsed_engine_steps_total",
                 "sparsed_batch_size_count", "sparsed_kv_pages_used", "sparsed_kv_pages_total"):
        assert name in m, name
    assert m["vllm:generation_tokens_total"] > 0
    # the pool's configuration as vLLM's info metric, as the start-up log gave it (the cpu keeps K/V in f32)
    info = [l for l in r.text.splitlines() if l.startswith("vllm:cache_config_info{")]
    assert len(info) == 1, r.text[-2000:]
    labels = dict(re.findall(r'(\w+)="([^"]*)"', info[0]))
    pages, block = map(int, re.search(r"KV pool (\d+) pages x (\d+) tokens", daemon.log).groups())
    assert labels["cache_dtype"] == "f32" and labels["enable_prefix_caching"] == "True", labels
    assert int(labels["block_size"]) == block and int(labels["num_gpu_blocks"]) == pages, labels
    assert pages == m["sparsed_kv_pages_total"] and info[0].endswith("} 1")


def test_smollm2_chat_template_and_eog(make_daemon):
    """A real chat model: its template renders the messages and its end-of-turn
    token ends generation (finish_reason stop)."""
    import os
    from conftest import ROOT
    path = os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        pytest.skip("SmolLM2 not at %s (tools/deps.sh fetches it)" % path)
    d = make_daemon(model=path)
    c = sdk(d)
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}]
    r = c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=40,
                                  temperature=0)
    schemas.check("CreateChatCompletionResponse", r.model_dump(exclude_unset=True))
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert "Paris" in r.choices[0].message.content
    assert "<|im_end|>" not in r.choices[0].message.content
    chunks = list(c.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", messages=msgs, max_tokens=40,
                                            temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == r.choices[0].message.content


def echo_patch(schema):
    """Echo with logprobs: the prompt's first token has no logprob (null),
    as OpenAI's own API returns; the spec's item types leave null out."""
    lp = schema["properties"]["choices"]["items"]["properties"]["logprobs"]["anyOf"][0]["properties"]
    lp["token_logprobs"]["items"] = {"type": ["number", "null"]}
    lp["top_logprobs"]["items"] = {"anyOf": [lp["top_logprobs"]["items"], {"type": "null"}]}
    return schema


def test_echo_logprobs_scores_the_prompt(daemon):
    gen = daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 8, "temperature": 0,
                                          "logprobs": 2}).json()
    text = gen["choices"][0]["text"]
    n_prompt = daemon.post("/tokenize", {"prompt": PROMPT}).json()["count"]
    scored = daemon.post("/v1/completions", {"prompt": PROMPT + text, "max_tokens": 0, "echo": True,
                                             "logprobs": 2}).json()
    schemas.check("CreateCompletionResponse", scored, echo_patch)
    ch = scored["choices"][0]
    assert ch["text"] == PROMPT + text and scored["usage"]["completion_tokens"] == 0
    lp = ch["logprobs"]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert len(lp["tokens"]) == scored["usage"]["prompt_tokens"]
    # the continuation scored as prompt has the logprobs it had when generated
    g = gen["choices"][0]["logprobs"]
    assert lp["tokens"][n_prompt:] == g["tokens"]
    for a, b in zip(lp["token_logprobs"][n_prompt:], g["token_logprobs"]):
        assert a == pytest.approx(b, abs=1e-4)
    # offsets point into the echoed text
    for tok, off in zip(lp["tokens"][1:], lp["text_offset"][1:]):
        assert ch["text"][off:].startswith(tok.lstrip()) or ch["text"][off:].startswith(tok)
    # with generation after the prompt, and streamed
    both = daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "echo": True, "logprobs": 1,
                                           "temperature": 0}).json()
    blp = both["choices"][0]["logprobs"]
    assert len(blp["tokens"]) == n_prompt + 3
    ev = sse_events(daemon.post("/v1/completions", {"prompt": PROMPT, "max_tokens": 3, "echo": True,
                                                    "logprobs": 1, "temperature": 0, "stream": True}, stream=True))
    toks = [t for e in ev if isinstance(e, dict) for c in e["choices"] if c["logprobs"]
            for t in c["logprobs"]["tokens"]]
    assert toks == blp["tokens"]
