#!/usr/bin/env python3
"""Soak test for sparsed (bounded, loopback only).

Starts `sparsed serve` on a free loopback port and sends REQUESTS requests
from CONCURRENCY clients (asyncio, raw HTTP/1.1 on real sockets), a
seeded mix of:

    non-streaming completions and chat (n, logprobs, stop, seeds)
    streaming completions and chat (include_usage, logprobs)
    cancelled streams: the client hangs up (FIN or RST) after the first
      event, or before the reply
    invalid requests: bad JSON, wrong types, unknown model or route,
      wrong method, context overflow, bad token ids, oversized body
    other routes: /tokenize, /detokenize, /v1/models, /health, /metrics

Every reply is checked against what that request must get (status, error
code, body shape, [DONE], usage); anything else is an unexpected error.
Keep-alive connections are reused for some requests and fresh ones opened
for others.  The daemon's VmRSS (/proc/PID/status) and open descriptors
(/proc/PID/fd) are sampled after the warm-up and at every tenth of the
run; at the end, idle, /metrics must show an empty KV pool and nothing
running.  Passes when: no unexpected error, RSS grew < 5% after warm-up,
no descriptor growth, pool empty.

    bench/soak/soak.py [--binary build/sparsed] [--requests 20000]
        [--concurrency 64] [--max-tokens 8] [--warmup 2000] [--seed 1]
        [--out bench/results/reliability.md] [-- extra serve options]

Prints a table whose last line is the headline and, with --out, appends
the run (date, commit, machine, numbers) to that Markdown file.
"""
import argparse
import asyncio
import datetime
import json
import os
import platform
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORDS = ("once upon a time there was a little girl named lily she loved to play outside in the "
         "park with her dog max one day they found a big red ball under a tree").split()


class Unexpected(Exception):
    pass


# ---- the daemon --------------------------------------------------------------

class Daemon:
    def __init__(self, binary, extra):
        args = [binary, "serve", "--host", "127.0.0.1", "--port", "0", "--no-access-log"] + extra
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARSED_")}
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=ROOT, env=env)
        self.lines = []
        self.port = None
        seen = threading.Event()

        def read():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.lines.append(line)
                m = re.search(r"listening on http://[^ ]*:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    seen.set()
            seen.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not seen.wait(60) or not self.port:
            self.proc.kill()
            sys.exit("sparsed did not start:\n" + "".join(self.lines))
        self.pid = self.proc.pid

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def n_fds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed after 60 s"
        self.reader.join(5)
        return rc


# ---- a small HTTP/1.1 client ---------------------------------------------------

async def read_head(r):
    head = await r.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    h = {}
    for l in lines[1:]:
        if l:
            k, _, v = l.partition(":")
            h[k.strip().lower()] = v.strip()
    return status, h


async def read_body(r, h):
    if h.get("transfer-encoding") == "chunked":
        out = bytearray()
        while True:
            size = int((await r.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await r.readuntil(b"\r\n")
                return bytes(out)
            out += await r.readexactly(size + 2)
            del out[-2:]
    return await r.readexactly(int(h.get("content-length", "0")))


class Conn:
    """One client's connection; reopened when closed or when asked for."""

    def __init__(self, port):
        self.port = port
        self.r = self.w = None

    async def open(self):
        self.close()
        self.r, self.w = await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 22)

    def close(self, reset=False):
        if self.w:
            if reset:
                sock = self.w.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.w.close()
        self.r = self.w = None

    async def send(self, method, path, body=None, keep=True, raw=None):
        if not self.w or not keep:
            await self.open()
        data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        head = "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: %s\r\n" % (
            method, path, "keep-alive" if keep else "close")
        if body is not None or raw is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(data)
        self.w.write(head.encode() + b"\r\n" + data)
        await self.w.drain()

    async def exchange(self, method, path, body=None, keep=True, raw=None):
        await self.send(method, path, body, keep, raw)
        status, h = await read_head(self.r)
        b = await read_body(self.r, h)
        if not keep or h.get("connection", "").lower() == "close":
            self.close()
        return status, h, b


# ---- the request mix -----------------------------------------------------------

def words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def check(cond, what):
    if not cond:
        raise Unexpected(what)


def check_error(status, b, want_status, want_code=None):
    check(status == want_status, "status %d, wanted %d: %r" % (status, want_status, b[:200]))
    e = json.loads(b)["error"]
    check(e["message"] and e["type"], "error without message/type: %r" % b[:200])
    if want_code:
        check(e["code"] == want_code, "error code %r, wanted %r" % (e["code"], want_code))


def sse_payloads(b):
    out = []
    for block in b.split(b"\n\n"):
        if not block or block.startswith(b":"):
            continue
        check(block.startswith(b"data: "), "bad SSE block %r" % block[:80])
        d = block[6:]
        out.append(d if d == b"[DONE]" else json.loads(d))
    return out


async def do_whole(c, rng, cfg):
    chat = rng.random() < 0.5
    n = rng.choice((1, 1, 1, 2))
    mt = rng.randint(1, cfg.max_tokens)
    body = {"max_tokens": mt, "n": n, "temperature": rng.choice((0, 0.7, 1.0)), "seed": rng.randint(0, 99)}
    if rng.random() < 0.3:
        body["stop"] = [rng.choice(WORDS)]
    if chat:
        body["messages"] = [{"role": "user", "content": words(rng, rng.randint(1, 30))}]
        if rng.random() < 0.3:
            body["logprobs"], body["top_logprobs"] = True, rng.randint(0, 5)
    else:
        body["prompt"] = words(rng, rng.randint(1, 60))
        if rng.random() < 0.3:
            body["logprobs"] = rng.randint(0, 5)
    status, _, b = await c.exchange("POST", "/v1/chat/completions" if chat else "/v1/completions",
                                    body, keep=rng.random() < 0.7)
    check(status == 200, "status %d: %r" % (status, b[:200]))
    j = json.loads(b)
    check(len(j["choices"]) == n, "choices")
    check(1 <= j["usage"]["completion_tokens"] <= n * mt, "usage %r" % j["usage"])
    return "whole"


async def do_stream(c, rng, cfg):
    chat = rng.random() < 0.5
    mt = rng.randint(1, cfg.max_tokens)
    body = {"max_tokens": mt, "stream": True, "stream_options": {"include_usage": True},
            "temperature": rng.choice((0, 0.8)), "seed": rng.randint(0, 99)}
    if chat:
        body["messages"] = [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": words(rng, rng.randint(1, 20))}]
    else:
        body["prompt"] = words(rng, rng.randint(1, 40))
        if rng.random() < 0.3:
            body["logprobs"] = 2
    status, h, b = await c.exchange("POST", "/v1/chat/completions" if chat else "/v1/completions",
                                    body, keep=rng.random() < 0.7)
    check(status == 200 and h.get("content-type", "").startswith("text/event-stream"),
          "stream status %d %r" % (status, b[:200]))
    ev = sse_payloads(b)
    check(ev and ev[-1] == b"[DONE]", "stream without [DONE]")
    usage = ev[-2]["usage"]
    check(usage and 1 <= usage["completion_tokens"] <= mt, "stream usage %r" % usage)
    finishes = [ch["finish_reason"] for e in ev[:-1] for ch in e["choices"] if ch.get("finish_reason")]
    check(len(finishes) == 1, "finish reasons %r" % finishes)
    return "stream"


async def do_cancel(c, rng, cfg):
    body = {"prompt": words(rng, rng.randint(1, 40)), "max_tokens": cfg.max_tokens * 8,
            "stream": True, "ignore_eos": True}
    how = rng.choice(("after_first", "after_first", "before_reply"))
    await c.send("POST", "/v1/completions", body, keep=True)
    if how == "after_first":
        status, h = await read_head(c.r)
        check(status == 200, "cancel: status %d" % status)
        await c.r.readuntil(b"\n\n")   # the first event
    c.close(reset=rng.random() < 0.5)
    return "cancelled"


INVALID = [
    ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": ', 400, None),
    ("POST", "/v1/completions", {"prompt": 42}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"prompt": "a", "model": "gpt-4"}, 404, "model_not_found"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 0}, 400, "integer_below_min_value"),
    ("POST", "/v1/completions", {"prompt": [1] * 2047, "max_tokens": 10}, 400, "context_length_exceeded"),
    ("POST", "/v1/completions", {"prompt": [999999]}, 400, "invalid_value"),
    ("POST", "/v1/completions", {"prompt": "a", "temperature": "hot"}, 400, "invalid_type"),
    ("POST", "/v1/completions", {"prompt": "a", "stream_options": {"include_usage": True}}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", {"messages": []}, 400, "empty_array"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "invalid_value"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "n": 1000}, 400,
     "integer_above_max_value"),
    ("GET", "/v1/completions", None, 405, "method_not_allowed"),
    ("GET", "/v2/nothing", None, 404, "not_found"),
    ("POST", "/detokenize", {"tokens": [-1]}, 400, "invalid_value"),
]


async def do_invalid(c, rng, cfg):
    if rng.random() < 0.05:
        # over the body limit (the daemon runs with --body-limit 64K)
        status, _, b = await c.exchange("POST", "/v1/completions", {"prompt": "x" * 70000}, keep=False)
        check_error(status, b, 413, "request_too_large")
        return "invalid"
    method, path, body, want, code = rng.choice(INVALID)
    raw = body if isinstance(body, bytes) else None
    status, _, b = await c.exchange(method, path, None if raw else body, keep=rng.random() < 0.7, raw=raw)
    check_error(status, b, want, code)
    return "invalid"


async def do_other(c, rng, cfg):
    k = rng.randrange(5)
    if k == 0:
        status, _, b = await c.exchange("POST", "/tokenize", {"prompt": words(rng, 10)})
        check(status == 200 and json.loads(b)["count"] >= 1, "tokenize %r" % b[:200])
    elif k == 1:
        status, _, b = await c.exchange("POST", "/detokenize", {"tokens": [1, 400, 401, 402]})
        check(status == 200 and "prompt" in json.loads(b), "detokenize %r" % b[:200])
    elif k == 2:
        status, _, b = await c.exchange("GET", "/v1/models")
        check(status == 200 and json.loads(b)["data"][0]["id"], "models")
    elif k == 3:
        status, _, b = await c.exchange("GET", "/health")
        check(status == 200, "health %d" % status)
    else:
        status, _, b = await c.exchange("GET", "/metrics")
        check(status == 200 and b"sparsed_kv_pages_used" in b, "metrics")
    return "other"


MIX = [(do_whole, 0.35), (do_stream, 0.25), (do_cancel, 0.15), (do_invalid, 0.15), (do_other, 0.10)]


def pick(rng):
    x, acc = rng.random(), 0.0
    for f, p in MIX:
        acc += p
        if x < acc:
            return f
    return MIX[-1][0]


# ---- the run ---------------------------------------------------------------------

def metrics(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    buf = b""
    while True:
        k = s.recv(65536)
        if not k:
            break
        buf += k
    s.close()
    out = {}
    for line in buf.split(b"\r\n\r\n", 1)[1].decode().splitlines():
        if not line or line.startswith("#"):
            continue
        k, v = line.rsplit(" ", 1)
        name = k.split("{", 1)[0]
        if name.endswith("_bucket"):
            continue
        out[name] = out.get(name, 0.0) + float(v)   # summed over labels
        m = re.search(r'finished_reason="(\w+)"', k)
        if m:
            out["%s{finished_reason=%s}" % (name, m.group(1))] = float(v)
    return out


async def run(cfg, d):
    counts, errors, samples = {}, [], []
    next_i = [0]
    done = [0]
    marks = sorted({cfg.warmup} | {cfg.warmup + (cfg.requests - cfg.warmup) * k // 10 for k in range(1, 11)})
    t0 = time.time()

    def sample():
        samples.append((done[0], time.time() - t0, d.rss_kb(), d.n_fds()))

    async def client(ci):
        c = Conn(d.port)
        while True:
            i = next_i[0]
            if i >= cfg.requests:
                break
            next_i[0] += 1
            rng = random.Random(cfg.seed * 1000003 + i)
            f = pick(rng)
            try:
                kind = await asyncio.wait_for(f(c, rng, cfg), 120)
                counts[kind] = counts.get(kind, 0) + 1
            except (Unexpected, OSError, asyncio.IncompleteReadError, asyncio.TimeoutError,
                    ValueError, KeyError, IndexError, TypeError) as e:
                errors.append("request %d (%s): %s: %s" % (i, f.__name__, type(e).__name__, e))
                c.close()
            done[0] += 1
            if done[0] in marks:
                sample()
        c.close()

    await asyncio.gather(*(client(k) for k in range(cfg.concurrency)))
    return counts, errors, samples, time.time() - t0


def commit():
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", default=os.path.join(ROOT, "build", "sparsed"))
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", help="append the results to this Markdown file")
    ap.add_argument("serve_args", nargs="*", help="extra `sparsed serve` options (after --)")
    cfg = ap.parse_args()
    if cfg.warmup >= cfg.requests:
        sys.exit("--warmup must be below --requests")

    # a small pool, so the warm-up touches every page of it (RSS then flat)
    extra = ["--threads", "2", "--kv-pages", "256", "--body-limit", "64K",
             "--max-connections-per-client", "0"] + cfg.serve_args
    d = Daemon(cfg.binary, extra)
    base_rss, base_fds = d.rss_kb(), d.n_fds()
    counts, errors, samples, secs = asyncio.run(run(cfg, d))
    # idle: everything finished, the cancelled ones included
    idle = {}
    for _ in range(50):
        idle = metrics(d.port)
        if idle.get("sparsed_kv_pages_used", 1) == 0 and idle.get("vllm:num_requests_running", 1) == 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    end = (cfg.requests, secs, d.rss_kb(), d.n_fds())
    samples.append(end)
    rc = d.stop()

    warm = samples[0]
    rss_growth = (end[2] - warm[2]) / warm[2] * 100.0
    rss_max = max(s[2] for s in samples)
    fd_growth = end[3] - base_fds   # both idle
    aborted = idle.get("vllm:request_success_total{finished_reason=abort}", 0)
    pool_empty = idle.get("sparsed_kv_pages_used") == 0 and idle.get("vllm:num_requests_running") == 0 \
        and idle.get("vllm:num_requests_waiting") == 0
    ok = not errors and rss_growth < 5.0 and fd_growth <= 0 and pool_empty and rc == 0

    print("%-10s %8s %10s %6s" % ("requests", "seconds", "VmRSS kB", "fds"))
    print("%-10s %8s %10d %6d" % ("start", "-", base_rss, base_fds))
    for s in samples:
        print("%-10d %8.1f %10d %6d" % s)
    print()
    print("mix: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())))
    print("unexpected errors: %d" % len(errors))
    for e in errors[:20]:
        print("  " + e)
    print("idle: kv_pages_used %s, running %s, waiting %s; preemptions %s, aborted %s; exit status %s" % (
        idle.get("sparsed_kv_pages_used"), idle.get("vllm:num_requests_running"),
        idle.get("vllm:num_requests_waiting"), idle.get("vllm:num_preemptions_total"), aborted, rc))
    headline = ("soak %s: %d requests, %d clients, %.0f s (%.0f req/s), %d unexpected errors, "
                "RSS %+.2f%% after warm-up, fds %+d idle to idle, KV pool %s at idle" % (
                    "PASS" if ok else "FAIL", cfg.requests, cfg.concurrency, secs, cfg.requests / secs,
                    len(errors), rss_growth, fd_growth, "empty" if pool_empty else "NOT empty"))
    print(headline)

    if cfg.out:
        date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        lines = ["", "## Soak %s, commit %s" % (date, commit()), "",
                 "Machine: %s, %d cores, Python %s; model %s; `bench/soak/soak.py --requests %d "
                 "--concurrency %d --max-tokens %d --warmup %d --seed %d`; daemon options `%s`." % (
                     platform.processor() or platform.machine(), os.cpu_count(), platform.python_version(),
                     "models/stories260K.gguf", cfg.requests, cfg.concurrency, cfg.max_tokens, cfg.warmup,
                     cfg.seed, " ".join(extra)),
                 "",
                 "Mix: " + ", ".join("%s %d" % kv for kv in sorted(counts.items())) + ".",
                 "",
                 "| requests done | seconds | VmRSS (kB) | open fds |",
                 "|---:|---:|---:|---:|",
                 "| start | - | %d | %d |" % (base_rss, base_fds)]
        lines += ["| %d | %.1f | %d | %d |" % s for s in samples]
        lines += ["",
                  "- unexpected errors: %d" % len(errors),
                  "- VmRSS after warm-up (%d requests): %d kB; at the end, idle: %d kB (%+.2f%%); "
                  "highest sample %d kB" % (warm[0], warm[2], end[2], rss_growth, rss_max),
                  "- open descriptors idle before the run: %d; idle after it: %d (%+d); "
                  "%d at the warm-up mark, with the clients' connections open" % (
                      base_fds, end[3], fd_growth, warm[3]),
                  "- at idle: sparsed_kv_pages_used %s, requests running %s, waiting %s; %s preemptions "
                  "and %s aborted requests over the run; exit status after SIGTERM %s" % (
                      idle.get("sparsed_kv_pages_used"), idle.get("vllm:num_requests_running"),
                      idle.get("vllm:num_requests_waiting"), idle.get("vllm:num_preemptions_total"),
                      aborted, rc),
                  "", "**%s**" % headline, ""]
        new = not os.path.exists(cfg.out)
        with open(cfg.out, "a") as f:
            if new:
                f.write("# Reliability results\n\nSoak runs of `bench/soak/soak.py` (newest last).\n")
            f.write("\n".join(lines))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
