"""Daemon lifecycle: a client that disconnects mid-stream frees its pages;
SIGTERM drains in-flight streams (not ready meanwhile) and exits 0; the
drain and request timeouts; keep-alive comments; configuration sources."""
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

import requests

from conftest import BINARY, ROOT, MODEL_NAME, Daemon, need_binary

LONG = {"prompt": "Once upon a time", "max_tokens": 1900, "temperature": 0, "ignore_eos": True}


def raw_stream_start(d, body, n_events=3):
    """Opens a stream on a raw socket and reads until n_events data lines arrived."""
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    payload = json.dumps(dict(body, stream=True)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    got = b""
    while got.count(b"data: ") < n_events:
        chunk = s.recv(65536)
        assert chunk, "stream closed early: %r" % got[:500]
        got += chunk
    return s, got


def test_disconnect_frees_pages(make_daemon):
    # 16 sequences one after another: far more than can finish before the close
    d = make_daemon("--max-running", "1")
    s, got = raw_stream_start(d, dict(LONG, n=16))
    assert b"200 OK" in got.split(b"\r\n", 1)[0]
    d.wait_metric("sparsed_kv_pages_used", lambda v: v > 0, timeout=10)
    s.close()
    d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0, timeout=30)
    d.wait_metric("vllm:num_requests_running", lambda v: v == 0, timeout=30)
    m = d.metrics()
    assert m['vllm:request_success_total{model_name="%s",finished_reason="abort"}' % MODEL_NAME] == 1
    assert m["vllm:generation_tokens_total"] < 16 * 1900, "generation went on after the client left"
    # the daemon still serves
    assert d.post("/v1/completions", {"prompt": "Hi", "max_tokens": 3}).status_code == 200


def test_nonstream_disconnect_frees_pages(make_daemon):
    # a waiting (suspended) request notices its client left at the keep-alive wakeup
    d = make_daemon("--sse-keepalive", "0.3", "--max-running", "1")
    s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
    payload = json.dumps(dict(LONG, n=8)).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    d.wait_metric("sparsed_kv_pages_used", lambda v: v > 0, timeout=10)
    s.close()
    d.wait_metric("vllm:num_requests_running", lambda v: v == 0, timeout=30)
    d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0, timeout=30)
    assert d.metrics()["vllm:generation_tokens_total"] < 8 * 1900


def test_stalled_readers_hold_no_thread(make_daemon):
    # one HTTP thread; streams nobody reads must not keep others waiting
    d = make_daemon("--http-threads", "1")
    stalled = []
    for i in range(3):
        s, _ = raw_stream_start(d, dict(LONG, prompt="Once upon a time %d" % i), n_events=1)
        stalled.append(s)
    for i in range(5):
        r = requests.post(d.url + "/v1/completions", json={"prompt": "Hi %d" % i, "max_tokens": 4}, timeout=30)
        assert r.status_code == 200
    assert requests.get(d.url + "/health", timeout=10).status_code == 200
    for s in stalled:
        s.close()
    d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0, timeout=30)


def test_sigterm_drains_streams(make_daemon):
    # one runs, two wait in the queue: all three were accepted, so the drain
    # finishes all three (the queued ones are still to run when the signal
    # comes, however fast the machine)
    d = make_daemon("--shutdown-timeout", "120", "--max-running", "1")
    n = 3
    out = [None] * n
    lengths = [1000, 200, 200]
    first_chunk = threading.Event()

    def worker(i):
        r = requests.post(d.url + "/v1/completions", json=dict(LONG, max_tokens=lengths[i], stream=True),
                          stream=True, timeout=300)
        it = r.iter_content(chunk_size=None)
        got = next(it)
        first_chunk.set()
        out[i] = got + b"".join(it)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    threads[0].start()
    assert first_chunk.wait(60)
    for t in threads[1:]:
        t.start()
    d.wait_metric("vllm:num_requests_waiting", lambda v: v == n - 1, timeout=60)
    d.signal(signal.SIGTERM)
    # draining (once the loop has seen the signal): not ready, no new work, but alive
    deadline = time.time() + 20
    while True:
        r = requests.get(d.url + "/ready", timeout=10)
        if r.status_code != 200 or time.time() > deadline:
            break
        time.sleep(0.005)
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    assert any(t.is_alive() for t in threads), "the streams ended before the drain began"
    r = requests.post(d.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2}, timeout=10)
    assert r.status_code == 503 and r.headers.get("Retry-After")
    assert r.json()["error"]["code"] == "server_draining"
    assert requests.get(d.url + "/health", timeout=10).status_code == 200
    for t in threads:
        t.join(300)
    rc = d.proc.wait(120)
    assert rc == 0, d.log[-3000:]
    for body in out:
        events = [json.loads(b[6:]) for b in body.decode().split("\n\n") if b.startswith("data: {")]
        assert body.endswith(b"data: [DONE]\n\n")
        assert all("choices" in e for e in events), d.log[-1500:]
        text_chunks = [e for e in events if e["choices"]]
        assert text_chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert len(text_chunks) >= 190, "the stream was cut short"


def test_drain_timeout_ends_streams(make_daemon):
    # 16 sequences one at a time: far longer than the drain allows
    d = make_daemon("--shutdown-timeout", "0.5", "--max-running", "1")
    s, got = raw_stream_start(d, dict(LONG, n=16))
    t0 = time.time()
    d.signal(signal.SIGTERM)
    s.settimeout(60)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    s.close()
    assert d.proc.wait(60) == 0
    assert time.time() - t0 < 30
    assert b'"error"' in got and b"data: [DONE]" in got


def test_request_timeout(make_daemon):
    d = make_daemon("--request-timeout", "0.5", "--max-running", "1")
    r = d.post("/v1/completions", dict(LONG, n=16))
    assert r.status_code == 504, r.text
    e = r.json()["error"]
    assert e["type"] == "timeout_error" and e["code"] == "request_timeout"
    d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0)


def test_keepalive_while_queued(make_daemon):
    d = make_daemon("--max-running", "1", "--sse-keepalive", "0.2")
    s, _ = raw_stream_start(d, dict(LONG, n=16))   # holds the only running slot for long
    r = requests.post(d.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2, "stream": True},
                      stream=True, timeout=300)
    it = r.iter_content(chunk_size=None)
    first = next(it)
    assert first.startswith(b": keep-alive\n\n"), first
    s.close()   # frees the slot: the queued request runs
    body = first + b"".join(it)
    assert body.endswith(b"data: [DONE]\n\n")
    assert b'"finish_reason":"length"' in body


def test_help_lists_every_option():
    need_binary()
    p = subprocess.run([BINARY, "serve", "--help"], capture_output=True, timeout=30)
    assert p.returncode == 0
    out = p.stdout.decode()
    for opt in ("--model", "--host", "--port", "--config", "--device", "--threads", "--attention", "--indexer",
                "--block-size", "--top-k-blocks", "--local-blocks", "--sink-blocks", "--dense-layers",
                "--sparse-min-context", "--kv-pages", "--kv-memory", "--max-running", "--max-batch-tokens",
                "--max-queue", "--max-queued-tokens", "--body-limit", "--request-timeout", "--shutdown-timeout",
                "--api-key", "--api-key-file", "--served-model-name", "--max-connections",
                "--connection-timeout", "--index-keys", "--kv-cache-dtype", "--gpu-memory-utilization",
                "--max-model-len", "SPARSED_MAX_RUNNING"):
        assert opt in out, opt


def bad_start(args, env=None):
    need_binary()
    e = {k: v for k, v in os.environ.items() if not k.startswith("SPARSED_")}
    e.update(env or {})
    p = subprocess.run([BINARY, "serve", "--port", "0"] + args, capture_output=True, timeout=60, env=e, cwd=ROOT)
    return p.returncode, p.stderr.decode()


def test_invalid_values_rejected(tmp_path):
    cases = [
        (["--max-running", "0"], None, "--max-running"),
        (["--port", "70000"], None, "--port"),
        (["--attention", "fast"], None, "--attention"),
        (["--indexer", "best"], None, "--indexer"),
        (["--block-size", "48"], None, "--block-size"),
        (["--kv-memory", "lots"], None, "--kv-memory"),
        (["--request-timeout", "-1"], None, "--request-timeout"),
        (["--prefix-cache=maybe"], None, "--prefix-cache"),
        (["--no-such-option", "1"], None, "--no-such-option"),
        (["--max-batch-tokens"], None, "--max-batch-tokens"),
        (["--max-running", "64", "--max-batch-tokens", "32"], None, "--max-batch-tokens"),
        ([], {"SPARSED_MAX_QUEUE": "abc"}, "SPARSED_MAX_QUEUE"),
        (["--host", "not-an-address"], None, "--host"),
        (["--model", "/nonexistent.gguf"], None, "/nonexistent.gguf"),
        (["--index-keys", "fp16"], None, "--index-keys"),
        (["--gpu-memory-utilization", "1.5"], None, "--gpu-memory-utilization"),
        (["--gpu-memory-utilization", "0"], None, "--gpu-memory-utilization"),
        ([], {"SPARSED_GPU_MEMORY_UTILIZATION": "most"}, "SPARSED_GPU_MEMORY_UTILIZATION"),
        (["--device", "cpu", "--index-keys", "fp8"], None, "--index-keys fp8 needs --device cuda"),
        ([], {"SPARSED_INDEX_KEYS": "fp8"}, "--index-keys fp8 needs --device cuda"),
        (["--kv-cache-dtype", "fp16"], None, "--kv-cache-dtype"),
        (["--device", "cpu", "--kv-cache-dtype", "fp8"], None, "--kv-cache-dtype fp8 needs --device cuda"),
        ([], {"SPARSED_KV_CACHE_DTYPE": "fp8"}, "--kv-cache-dtype fp8 needs --device cuda"),
        (["--max-model-len", "-5"], None, "--max-model-len"),
        (["--max-model-len", "4096"], None, "max model len: 4096 is outside 1 to 2048"),
        (["--device", "gpu"], None, "invalid value 'gpu' for --device"),
        (["--device", "cuda:x"], None, "invalid value 'cuda:x' for --device"),
        (["--device", "cuda:-1"], None, "invalid value 'cuda:-1' for --device"),
        (["--device", "cuda:"], None, "invalid value 'cuda:' for --device"),
        ([], {"SPARSED_DEVICE": "cuda:1 "}, "invalid value 'cuda:1 ' for --device"),
    ]
    cfg = tmp_path / "bad.json"
    cfg.write_text('{"max_running": 4, "max_runing": 5}')
    cases.append((["--config", str(cfg)], None, "max_runing"))
    cfg2 = tmp_path / "bad2.json"
    cfg2.write_text('{"max_running": "many"}')
    cases.append((["--config", str(cfg2)], None, "--max-running"))
    for args, env, needle in cases:
        rc, err = bad_start(args, env)
        assert rc != 0, args
        assert needle in err, (args, err)


def test_max_model_len(make_daemon):
    """--max-model-len serves a shorter context than the model's 2048: the
    API reports it, requests past it get 400 context_length_exceeded, chat's
    default completion fills the rest of it, and the pool is capped at what
    --max-running contexts of that length use."""
    d = make_daemon("--max-model-len", "300", "--max-running", "4")
    assert d.get("/v1/models").json()["data"][0]["max_model_len"] == 300
    assert d.post("/tokenize", {"prompt": "hi"}).json()["max_model_len"] == 300
    r = d.post("/v1/completions", {"prompt": [1] + [300] * 280, "max_tokens": 30})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "context_length_exceeded" and "maximum context length is 300 tokens" in err["message"]
    r = d.post("/v1/completions", {"prompt": [1] + [300] * 250, "max_tokens": 30, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 251, r.text
    msgs = [{"role": "user", "content": "Once upon a time"}]
    r = d.post("/v1/chat/completions", {"messages": msgs, "temperature": 0, "ignore_eos": True}).json()
    assert r["usage"]["total_tokens"] == 300 and r["choices"][0]["finish_reason"] == "length", r["usage"]
    pages, block = map(int, re.search(r"KV pool (\d+) pages x (\d+) tokens", d.log).groups())
    assert pages == 4 * -(-300 // block), d.log


def test_precedence_flag_env_file(tmp_path):
    need_binary()
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"served_model_name": "from-file", "max-running": 3}))
    d = Daemon("--config", str(cfg))
    try:
        assert requests.get(d.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "from-file"
    finally:
        assert d.stop() == 0
    d = Daemon("--config", str(cfg), env={"SPARSED_SERVED_MODEL_NAME": "from-env"})
    try:
        assert requests.get(d.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "from-env"
    finally:
        assert d.stop() == 0
    d = Daemon("--config", str(cfg), "--served-model-name", "from-flag",
               env={"SPARSED_SERVED_MODEL_NAME": "from-env"})
    try:
        assert requests.get(d.url + "/v1/models", timeout=10).json()["data"][0]["id"] == "from-flag"
        assert "max running 3" in d.log
    finally:
        assert d.stop() == 0


def test_default_model_from_repo_root():
    need_binary()
    d = Daemon(model=None)
    try:
        assert requests.get(d.url + "/v1/models", timeout=10).json()["data"][0]["id"] == MODEL_NAME
        assert requests.post(d.url + "/v1/completions", json={"prompt": "Hi", "max_tokens": 2},
                             timeout=60).status_code == 200
    finally:
        assert d.stop() == 0


def test_preset_configs_load():
    need_binary()
    cdir = os.path.join(ROOT, "configs")
    files = sorted(f for f in os.listdir(cdir) if f.endswith(".json")) if os.path.isdir(cdir) else []
    assert files, "no configs/*.json"
    for f in files:
        d = Daemon("--config", os.path.join(cdir, f), "--kv-pages", "64", "--device", "cpu")
        try:
            assert requests.get(d.url + "/ready", timeout=10).status_code == 200
        finally:
            assert d.stop() == 0
