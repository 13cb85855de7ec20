#!/usr/bin/env python3
"""Serving load generator for any OpenAI-compatible server.

For each concurrency level, N client threads send streaming completions
back to back (closed loop) and the script measures output throughput,
time to first token and inter-token latency (p50/p99).  Only the standard
library is used, so it runs anywhere python3 does.

    bench/serve/loadgen.py --url http://127.0.0.1:8080 [--model NAME]
        [--concurrency 1,8,32] [--requests 32] [--max-tokens 64]
        [--prompt-words 64 | --prompt-tokens N] [--chat] [--api-key KEY] [--out FILE]

Prints a table whose last line is the headline (output tokens/s at the
highest concurrency) and writes bench/results/serve-<model>-<date>.json
with the date, commit and machine.
"""
import argparse
import datetime
import http.client
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
import urllib.parse

WORDS = ("once upon a time there was a little girl named lily she loved to play outside in the "
         "park with her dog max one day they found a big red ball under a tree and played until "
         "the sun went down then they went home and had dinner with mom and dad").split()


def prompt_text(i, n_words):
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


class Client:
    def __init__(self, url, api_key):
        u = urllib.parse.urlparse(url)
        self.host, self.port = u.hostname, u.port or (443 if u.scheme == "https" else 80)
        self.https = u.scheme == "https"
        self.base = u.path.rstrip("/")
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = "Bearer " + api_key
        self.conn = None
        self.prompt_tokens = None   # of the last streamed request, from its usage chunk

    def _conn(self):
        if self.conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            self.conn = cls(self.host, self.port, timeout=600)
        return self.conn

    def get_json(self, path):
        c = self._conn()
        c.request("GET", self.base + path, headers=self.headers)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError("GET %s: %d %s" % (path, r.status, body[:200]))
        return json.loads(body)

    def count_tokens(self, model, text):
        """Prompt tokens of `text` by the server's tokenizer (a one-token completion)."""
        c = self._conn()
        c.request("POST", self.base + "/v1/completions", headers=self.headers,
                  body=json.dumps({"model": model, "prompt": text, "max_tokens": 1}))
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError("counting tokens: %d %s" % (r.status, body[:200]))
        return json.loads(body)["usage"]["prompt_tokens"]

    def stream(self, path, body):
        """Sends one streaming request; returns (ttft, [chunk gaps], completion tokens, error)."""
        c = self._conn()
        t0 = time.perf_counter()
        try:
            c.request("POST", self.base + path, body=json.dumps(body), headers=self.headers)
            r = c.getresponse()
            if r.status != 200:
                err = r.read()[:300]
                self.conn = None
                return None, [], 0, "HTTP %d %s" % (r.status, err)
            ttft, last, gaps, usage = None, None, [], 0
            buf = b""
            done = False
            while not done:
                chunk = r.read1(65536) if hasattr(r, "read1") else r.read(1)
                if not chunk:
                    break
                buf += chunk
                while b"\n\n" in buf and not done:
                    block, buf = buf.split(b"\n\n", 1)
                    if not block.startswith(b"data: "):
                        continue
                    data = block[6:]
                    if data == b"[DONE]":
                        done = True
                        break
                    ev = json.loads(data)
                    if ev.get("usage"):
                        usage = ev["usage"].get("completion_tokens", usage)
                        self.prompt_tokens = ev["usage"].get("prompt_tokens")
                    has_text = any((ch.get("text") or (ch.get("delta") or {}).get("content"))
                                   for ch in ev.get("choices", []))
                    if has_text:
                        now = time.perf_counter()
                        if ttft is None:
                            ttft = now - t0
                        else:
                            gaps.append(now - last)
                        last = now
            r.read()   # the rest (chunked terminator) so the connection can be reused
            return ttft, gaps, usage, None
        except (OSError, http.client.HTTPException, ValueError) as e:
            self.conn = None
            return None, [], 0, repr(e)


def run_level(args, model, conc, n_requests, seed_base):
    lock = threading.Lock()
    next_i = [0]
    res = {"ttft": [], "itl": [], "tokens": 0, "errors": [], "done": 0, "latency": [], "prompt": []}
    path = "/v1/chat/completions" if args.chat else "/v1/completions"

    def worker():
        cl = Client(args.url, args.api_key)
        while True:
            with lock:
                i = next_i[0]
                if i >= n_requests:
                    return
                next_i[0] += 1
            p = prompt_text(seed_base + i, args.prompt_words)
            body = {"model": model, "max_tokens": args.max_tokens, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": args.temperature,
                    "seed": seed_base + i, "ignore_eos": True}
            if args.chat:
                body["messages"] = [{"role": "user", "content": p}]
            else:
                body["prompt"] = p
            t0 = time.perf_counter()
            ttft, gaps, toks, err = cl.stream(path, body)
            lat = time.perf_counter() - t0
            with lock:
                if err:
                    res["errors"].append(err)
                    continue
                res["done"] += 1
                res["tokens"] += toks
                res["latency"].append(lat)
                if cl.prompt_tokens:
                    res["prompt"].append(cl.prompt_tokens)
                if ttft is not None:
                    res["ttft"].append(ttft)
                res["itl"].extend(gaps)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(conc)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = lambda v: None if v is None else round(v * 1000.0, 3)
    return {
        "concurrency": conc,
        "requests": n_requests,
        "completed": res["done"],
        "errors": len(res["errors"]),
        "error_samples": res["errors"][:3],
        "wall_s": round(wall, 3),
        "output_tokens": res["tokens"],
        "output_tok_per_s": round(res["tokens"] / wall, 2) if wall > 0 else 0,
        "requests_per_s": round(res["done"] / wall, 3) if wall > 0 else 0,
        "ttft_ms_p50": ms(pct(res["ttft"], 50)),
        "ttft_ms_p99": ms(pct(res["ttft"], 99)),
        "itl_ms_p50": ms(pct(res["itl"], 50)),
        "itl_ms_p99": ms(pct(res["itl"], 99)),
        "latency_ms_p50": ms(pct(res["latency"], 50)),
        "mean_tokens_per_request": round(res["tokens"] / max(res["done"], 1), 1),
        "mean_prompt_tokens": round(sum(res["prompt"]) / len(res["prompt"]), 1) if res["prompt"] else None,
    }


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "loadavg": load}


def commit():
    if os.environ.get("SPARSED_COMMIT"):   # where the tree has no .git (a copied checkout)
        return os.environ["SPARSED_COMMIT"]
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        return subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--model", help="model id (default: the first of /v1/models)")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--requests", type=int, default=0,
                    help="requests per level (default: max(8, 3 x concurrency))")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="size prompts to about N tokens of the server's tokenizer (overrides --prompt-words)")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--chat", action="store_true", help="use /v1/chat/completions")
    ap.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"))
    ap.add_argument("--card", help="what served it (default: this machine's CPU)")
    ap.add_argument("--server", default="sparsed", help="server label for the results")
    ap.add_argument("--out", help="results file (default bench/results/serve-<model>-<date>.json)")
    args = ap.parse_args()

    cl = Client(args.url, args.api_key)
    model = args.model or cl.get_json("/v1/models")["data"][0]["id"]
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.prompt_tokens > 0:
        args.prompt_words = max(1, round(args.prompt_tokens * 1000 / cl.count_tokens(model, prompt_text(-1, 1000))))
    # one warm-up request so the first level does not pay for cold caches
    run_level(args, model, 1, 1, 10 ** 6)
    rows = []
    for i, c in enumerate(levels):
        n = args.requests or max(8, 3 * c)
        rows.append(run_level(args, model, c, n, 1000 * (i + 1)))

    hdr = "%-5s %6s %6s %10s %8s %10s %10s %10s %10s" % (
        "conc", "reqs", "errors", "tok/s", "req/s", "ttft_p50", "ttft_p99", "itl_p50", "itl_p99")
    print("serving %s at %s (%s, max_tokens %d, ~%d prompt words)" % (
        model, args.url, "chat" if args.chat else "completions", args.max_tokens, args.prompt_words))
    print(hdr)
    f = lambda v: "-" if v is None else "%.2f" % v
    for r in rows:
        print("%-5d %6d %6d %10.1f %8.2f %10s %10s %10s %10s" % (
            r["concurrency"], r["completed"], r["errors"], r["output_tok_per_s"], r["requests_per_s"],
            f(r["ttft_ms_p50"]), f(r["ttft_ms_p99"]), f(r["itl_ms_p50"]), f(r["itl_ms_p99"])))
    top = rows[-1]
    print("headline: %.1f output tok/s at concurrency %d (TTFT p50 %s ms, ITL p50 %s ms)" % (
        top["output_tok_per_s"], top["concurrency"], f(top["ttft_ms_p50"]), f(top["itl_ms_p50"])))
    sys.stdout.flush()

    now = datetime.datetime.now(datetime.timezone.utc)
    out = {
        "benchmark": "serve",
        "date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit(),
        "server": args.server,
        "url": args.url,
        "model": model,
        "card": args.card or machine()["cpu"],
        "machine": machine(),
        "endpoint": "chat" if args.chat else "completions",
        "max_tokens": args.max_tokens,
        "prompt_words": args.prompt_words,
        "temperature": args.temperature,
        "results": rows,
    }
    path = args.out
    if not path:
        root = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results"))
        safe = "".join(ch if ch.isalnum() or ch in "-._" else "_" for ch in model)
        path = os.path.join(root, "serve-%s-%s.json" % (safe, now.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=2)
        fh.write("\n")
    print("wrote %s" % path, file=sys.stderr)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
