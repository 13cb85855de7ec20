#!/usr/bin/env python3
"""The daemon on the GPU, as a user starts it: `sparsed serve --device cuda`
with no memory options.  Standard library only; run by tests/gpu/run.sh.

Checks (one JSON line each, appended to --checks, gpu_check's format):
  daemon-stories-greedy   stories260K over HTTP, greedy: the cuda daemon's
                          text equals the cpu daemon's, and its logprobs
                          (top 3 a token) agree within bf16's error
  daemon-auto-pool        an M3-shaped model with a 1M context: the KV pool
                          takes what --gpu-memory-utilization (0.9) leaves
                          (the card ends near 90% used), the batch size
                          follows the card, and a 128K-token prompt plus 8
                          concurrent requests run without the card's use
                          growing (the work buffers were reserved at start)
  daemon-fp8-kv           the same model and card with --kv-cache-dtype fp8:
                          the auto pool holds at least 1.5x the pages of
                          bf16 K/V (and /metrics' vllm:cache_config_info
                          says fp8 and those pages), and a 128K-token prompt plus 8
                          concurrent requests run without the card's use
                          growing (the widened prefill copy was reserved)
  daemon-kv-too-big       --kv-memory 1T fails at start with a message,
                          not on the first request
  daemon-no-such-gpu      --device cuda:<GPUs visible> fails at start, naming
                          the count
  daemon-two-gpus         (with 2 GPUs or more) daemons on cuda:0 and cuda:1
                          at once, each pool on its own card, both serving
                          the stories260K greedy text
  daemon-pressure         stories260K, block-sparse (minmax summaries), a
                          pool too small for four concurrent requests: a
                          repeated prompt hits the prefix cache, the four at
                          once force preemptions, and every greedy text
                          equals the one the same prompt got alone (up to
                          a near tie, where bf16 rounding may go either way)
  daemon-pressure-fp8kv   the same with --kv-cache-dtype fp8 (the generic
                          kernels on fp8 pages; cached pages shared with
                          their row scales)
Every daemon must exit 0 on SIGTERM.  Exit status: the failed checks.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request


def gpu_mib():
    """(used, total) MiB of the first card, from nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    used, total = out.strip().splitlines()[0].split(",")
    return int(used), int(total)


def cards_used_mib():
    """Used MiB of every card, from nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                         capture_output=True, text=True, timeout=30).stdout
    return [int(x) for x in out.split()]


def gpu_count():
    return len(subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True).stdout.strip().splitlines())


class Daemon:
    def __init__(self, binary, args, port, log):
        self.port = port
        self.log = log
        self.f = open(log, "w")
        self.p = subprocess.Popen([binary, "serve", "--port", str(port), "--no-access-log"] + args,
                                  stdout=self.f, stderr=subprocess.STDOUT)
        self.url = "http://127.0.0.1:%d" % port

    def wait_ready(self, limit=300):
        t = time.time()
        while time.time() - t < limit:
            if self.p.poll() is not None:
                return False
            try:
                if urllib.request.urlopen(self.url + "/ready", timeout=2).status == 200:
                    return True
            except Exception:
                time.sleep(0.2)
        return False

    def text(self):
        self.f.flush()
        return open(self.log).read()

    def post(self, path, body, timeout=600):
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.f.close()
        return rc


def stories_greedy(a):
    prompt = "Once upon a time, there was a little girl named Lily."
    body = {"prompt": prompt, "max_tokens": 120, "temperature": 0, "logprobs": 3}
    texts, rcs, lps = {}, {}, {}
    # the GPU named by its ordinal, as on a host of several
    for dev, port in (("cpu", a.port), ("cuda:0", a.port + 1)):
        d = Daemon(a.sparsed, ["--device", dev, "--model", a.stories], port, os.path.join(a.work, "d-%s.log" % dev))
        try:
            if not d.wait_ready():
                return {"pass": False, "error": "%s daemon not ready: %s" % (dev, d.text()[-400:])}
            st, r = d.post("/v1/completions", body)
            if st != 200:
                return {"pass": False, "error": "%s: HTTP %d %s" % (dev, st, str(r)[:300])}
            texts[dev] = r["choices"][0]["text"]
            lps[dev] = r["choices"][0]["logprobs"]
        finally:
            rcs[dev] = d.stop()
        if dev != "cpu":   # the start-up log names the card it took
            named = next((l for l in open(d.log).read().splitlines() if "served as" in l), "")
    # the logprobs the device copies back (bf16 weights there, f32 on the
    # cpu): the chosen tokens' within 0.25, the same top 3 at 90% of steps
    # (a near tie may swap the third)
    c, g = lps["cpu"], lps["cuda:0"]
    chosen = max(abs(x - y) for x, y in zip(c["token_logprobs"], g["token_logprobs"]))
    same_top = sum(set(x) == set(y) for x, y in zip(c["top_logprobs"], g["top_logprobs"]))
    top_diff = max(abs(x[t] - y[t]) for x, y in zip(c["top_logprobs"], g["top_logprobs"]) for t in x if t in y)
    n = len(c["token_logprobs"])
    ok = (texts["cpu"] == texts["cuda:0"] and len(texts["cpu"]) > 0 and rcs == {"cpu": 0, "cuda:0": 0}
          and " on cuda:0: " in named and n == len(g["token_logprobs"]) == 120 and chosen <= 0.25
          and same_top >= 0.9 * n and c["tokens"] == g["tokens"])
    return {"pass": ok, "cpu_text": texts["cpu"], "cuda_text": texts["cuda:0"], "exit_codes": rcs,
            "model_line": named[:200], "logprob_max_diff_chosen": round(chosen, 4),
            "logprob_max_diff_top": round(top_diff, 4), "top3_same_steps": same_top, "steps": n}


def pool_line(log):
    """(pages, tokens a page, MiB, batch tokens) from the daemon's start-up log, or None."""
    m = re.search(r"KV pool (\d+) pages x (\d+) tokens \(([\d.]+) MiB\).*batch tokens (\d+)", log)
    return m and (int(m.group(1)), int(m.group(2)), float(m.group(3)), int(m.group(4)))


def long_and_concurrent(d, res):
    """A 128K-token prompt (token ids), then 8 short requests at once; True when all answer 200."""
    rnd = random.Random(5)
    n = 131072
    st, r = d.post("/v1/completions", {"prompt": [rnd.randrange(3, 30000) for _ in range(n)],
                                        "max_tokens": 8, "temperature": 0})
    res["long_status"] = st
    res["long_prompt_tokens"] = r.get("usage", {}).get("prompt_tokens") if st == 200 else str(r)[:300]
    sts = []

    def one(i):
        s, _ = d.post("/v1/completions", {"prompt": [rnd.randrange(3, 30000) for _ in range(300 + i)],
                                          "max_tokens": 16})
        sts.append(s)
    th = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    res["short_statuses"] = sts
    return st == 200 and res["long_prompt_tokens"] == n and sts == [200] * 8


def auto_pool(a):
    d = Daemon(a.sparsed, ["--device", "cuda", "--model", a.m3], a.port + 2, os.path.join(a.work, "d-auto.log"))
    res = {}
    try:
        t0 = time.time()
        if not d.wait_ready(600):
            return {"pass": False, "error": "not ready: %s" % d.text()[-600:]}
        res["ready_s"] = round(time.time() - t0, 1)
        log = d.text()
        pl = pool_line(log)
        if not pl:
            return {"pass": False, "error": "no pool line in the log: %s" % log[-600:]}
        pages, block, pool_mib, batch = pl
        a.bf16_pages = pages
        used0, total = gpu_mib()
        res.update(pool_pages=pages, pool_tokens=pages * block, pool_mib=pool_mib, batch_tokens=batch,
                   card_used_mib=used0, card_total_mib=total, sizing_line=next(
                       (l for l in log.splitlines() if "gpu-memory-utilization" in l), None))
        want_batch = 8192 if total >= 70 * 1024 else 2048
        share = used0 / total
        res["card_used_share"] = round(share, 4)
        served = long_and_concurrent(d, res)
        used1, _ = gpu_mib()
        res["card_used_after_mib"] = used1
        res["pass"] = batch == want_batch and abs(share - 0.9) <= 0.03 and served and used1 - used0 <= 512
        return res
    finally:
        res["exit_code"] = d.stop()
        if res["exit_code"] != 0:
            res["pass"] = False


def fp8_kv(a):
    d = Daemon(a.sparsed, ["--device", "cuda", "--model", a.m3, "--kv-cache-dtype", "fp8"], a.port + 9,
               os.path.join(a.work, "d-fp8kv.log"))
    res = {}
    try:
        if not d.wait_ready(600):
            return {"pass": False, "error": "not ready: %s" % d.text()[-600:]}
        log = d.text()
        pl = pool_line(log)
        if not pl:
            return {"pass": False, "error": "no pool line in the log: %s" % log[-600:]}
        used0, _ = gpu_mib()
        with urllib.request.urlopen(d.url + "/metrics", timeout=10) as r:
            info = next((l for l in r.read().decode().splitlines() if l.startswith("vllm:cache_config_info{")), "")
        res["cache_config_info"] = info
        bf16 = getattr(a, "bf16_pages", None)
        res.update(pool_pages=pl[0], pool_mib=pl[2], bf16_pool_pages=bf16, logged_fp8="K/V in fp8" in log,
                   card_used_mib=used0)
        served = long_and_concurrent(d, res)
        used1, _ = gpu_mib()
        res["card_used_after_mib"] = used1
        res["pass"] = (served and used1 - used0 <= 512 and res["logged_fp8"] and bf16 is not None
                       and pl[0] >= 1.5 * bf16 and 'cache_dtype="fp8"' in info
                       and 'num_gpu_blocks="%d"' % pl[0] in info)
        return res
    finally:
        res["exit_code"] = d.stop()
        if res["exit_code"] != 0:
            res["pass"] = False


def failed_start(a, args, port, log, needle, limit):
    """Starts a daemon that must refuse to run: exit status, time and the log line naming needle."""
    d = Daemon(a.sparsed, args, port, os.path.join(a.work, log))
    t0 = time.time()
    try:
        rc = d.p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        d.stop()
        return None, {"pass": False, "error": "still running after %d s" % limit}
    text = d.text()
    d.f.close()
    msg = next((l for l in text.splitlines() if needle in l), "")
    return msg, {"exit_code": rc, "seconds": round(time.time() - t0, 1), "message": msg[:300]}


def kv_too_big(a):
    # the model's 1M context keeps the pool from being capped at what
    # --max-running full contexts use (stories260K's 512 tokens would be)
    msg, r = failed_start(a, ["--device", "cuda", "--model", a.m3, "--kv-memory", "1T"], a.port + 3, "d-big.log",
                          "cannot place the KV pool", 120)
    if msg is None:
        return r
    return {"pass": r["exit_code"] != 0 and msg != "", **r}


def no_such_gpu(a):
    # one past the visible GPUs: a clear message and a non-zero exit, at once
    n = gpu_count()
    msg, r = failed_start(a, ["--device", "cuda:%d" % n, "--model", a.stories], a.port + 4, "d-nogpu.log",
                          "does not exist", 60)
    if msg is None:
        return r
    return {"pass": r["exit_code"] != 0 and ("cuda:%d does not exist" % n) in msg, "gpus": n, **r}


def two_gpus(a):
    # one daemon a card, as on a host of several: each card's memory use
    # rises by a daemon's (context, weights, pool), and both answer at once
    body = {"prompt": "Once upon a time, there was a little girl named Lily.", "max_tokens": 120, "temperature": 0}
    before = cards_used_mib()
    ds = [Daemon(a.sparsed, ["--device", "cuda:%d" % i, "--model", a.stories], a.port + 5 + i,
                 os.path.join(a.work, "d-gpu%d.log" % i)) for i in range(2)]
    res = {}
    try:
        for i, d in enumerate(ds):
            if not d.wait_ready():
                return {"pass": False, "error": "cuda:%d daemon not ready: %s" % (i, d.text()[-400:])}
        res["cards_rise_mib"] = [u - b for u, b in zip(cards_used_mib(), before)][:2]
        texts = [None, None]

        def ask(i):
            st, r = ds[i].post("/v1/completions", body)
            texts[i] = r["choices"][0]["text"] if st == 200 else "HTTP %d" % st

        th = [threading.Thread(target=ask, args=(i,)) for i in range(2)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        res["texts_equal"] = texts[0] == texts[1] and len(texts[0]) > 0 and not texts[0].startswith("HTTP")
        res["named"] = [any((" on cuda:%d: " % i) in l for l in d.text().splitlines()) for i, d in enumerate(ds)]
    finally:
        res["exit_codes"] = [d.stop() for d in ds]
    res["pass"] = (res.get("texts_equal", False) and all(res.get("named", [False])) and res["exit_codes"] == [0, 0]
                   and all(r >= 200 for r in res.get("cards_rise_mib", [0])))
    return res


def metric(d, name):
    """Sum of a counter over its label sets, from /metrics."""
    with urllib.request.urlopen(d.url + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith(name + "{") or l.startswith(name + " "))


def first_split(ref, got):
    """Where greedy run got leaves ref (logprobs of both): None if nowhere,
    else (step, ref's top-2 margin there, got took ref's second best)."""
    for j, (x, y) in enumerate(zip(ref["tokens"], got["tokens"])):
        if x != y:
            top = sorted(ref["top_logprobs"][j].items(), key=lambda kv: -kv[1])
            margin = top[0][1] - top[1][1] if len(top) > 1 else float("inf")
            return j, round(margin, 4), len(top) > 1 and y == top[1][0]
    return None if len(ref["tokens"]) == len(got["tokens"]) else (min(len(ref["tokens"]), len(got["tokens"])), 0, False)


def at_once(ask, n):
    """ask(i, out) for i < n from n threads at once; out, filled."""
    out = {}
    th = [threading.Thread(target=ask, args=(i, out)) for i in range(n)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    return out


def same_greedy(ref, got):
    """(equal, split): two greedy runs' logprobs agree, or split only where
    ref's top two were within 0.25 and got took the second (first_split)."""
    if ref is None or got is None:
        return False, "HTTP error"
    sp = first_split(ref, got)
    return sp is None or (sp[1] <= 0.25 and sp[2]), sp


def window_serve(a):
    # sliding-window layers in pages of their own (the default) against
    # --no-window-pages: 4 prompts past the window (the last starts with the
    # first's first half: a prefix-cache hit), alone, then together; greedy,
    # equal up to near ties
    rng = random.Random(12)
    prompts = ["Tell me " + " ".join(rng.choice(("red", "sun", "box", "tree", "cat", "sky")) for _ in range(n))
               for n in (150, 60, 300, 150)]
    prompts[3] = prompts[0][:len(prompts[0]) // 2] + " sky sun"
    res = {}
    outs = {}
    for name, extra in (("window", []), ("full", ["--no-window-pages"])):
        d = Daemon(a.sparsed, ["--device", "cuda", "--model", a.window, "--max-running", "8", "--block-size", "16",
                               "--max-batch-tokens", "256"] + extra,
                   a.port + 13, os.path.join(a.work, "d-window-%s.log" % name))
        got = {}

        def ask(i, out, d=d):
            st, r = d.post("/v1/completions", {"prompt": prompts[i], "max_tokens": 40, "temperature": 0,
                                               "logprobs": 2, "ignore_eos": True})
            out[i] = r["choices"][0]["logprobs"] if st == 200 and r["usage"]["completion_tokens"] == 40 else None

        try:
            if not d.wait_ready():
                return {"pass": False, "error": "%s daemon not ready: %s" % (name, d.text()[-400:])}
            res[name + "_log_window_pages"] = " window pages " in d.text()
            for i in range(4):
                ask(i, got)
            both = at_once(ask, 4)
            res[name + "_together_ok"] = [same_greedy(got[i], both[i])[0] for i in range(4)]
            outs[name] = got
        finally:
            res[name + "_exit_code"] = d.stop()
    if len(outs) == 2:
        cmp = [same_greedy(outs["full"][i], outs["window"][i]) for i in range(4)]
        res["window_vs_full_ok"], res["window_vs_full_split"] = [x[0] for x in cmp], [x[1] for x in cmp]
    res["pass"] = (res.get("window_log_window_pages") is True and res.get("full_log_window_pages") is False and
                   all(res.get("window_vs_full_ok", [False])) and all(res.get("window_together_ok", [False])) and
                   all(res.get("full_together_ok", [False])) and res.get("window_exit_code") == 0 and
                   res.get("full_exit_code") == 0)
    return res


def moe_serve(a):
    # a mixture of experts served on the card: four prompts alone (a token
    # a step: the CUDA-core expert products) and then together (batches of
    # 3-4: the tensor-core ones), greedy, each pair equal up to near ties
    rng = random.Random(11)
    prompts = ["Tell me " + " ".join(rng.choice(("red", "sun", "box", "tree", "cat", "sky")) for _ in range(40))
               for _ in range(4)]
    d = Daemon(a.sparsed, ["--device", "cuda", "--model", a.moe, "--max-running", "8"], a.port + 12,
               os.path.join(a.work, "d-moe.log"))
    res = {}

    def ask(i, out):
        st, r = d.post("/v1/completions", {"prompt": prompts[i], "max_tokens": 48, "temperature": 0, "logprobs": 2})
        out[i] = r["choices"][0]["logprobs"] if st == 200 and r["usage"]["completion_tokens"] == 48 else None

    try:
        if not d.wait_ready():
            return {"pass": False, "error": "daemon not ready: %s" % d.text()[-400:]}
        alone = {}
        for i in range(4):
            ask(i, alone)
        both = at_once(ask, 4)
        together = [same_greedy(alone[i], both[i]) for i in range(4)]
        res["together_ok"], res["together_split"] = [x[0] for x in together], [x[1] for x in together]
        res["text0"] = "".join(alone[0]["tokens"])[:200] if alone[0] else ""
    finally:
        res["exit_code"] = d.stop()
    res["pass"] = all(res.get("together_ok", [False])) and len(res.get("text0", "")) > 0 and res["exit_code"] == 0
    return res


def pressure(a, extra=(), port=7, log="d-pressure.log"):
    # prompts of ~140 tokens fit the pool together (4 x 9 pages of 40), but
    # 150 more tokens each do not (4 x 19): decode must preempt.  Each greedy
    # text is compared with the same prompt's alone; the steps' batches then
    # differ in size and content, graphs replayed over changing tables.  On
    # the card a batch's size picks its matrix kernels (bf16 rounding), so
    # a text may leave the other at a near tie: allowed only where the other
    # run's top two were within 0.25 and this one took the second.
    rng = random.Random(7)
    words = ("the cat dog sun girl boy ball tree park mom dad said play big red happy sad little ran jumped "
             "saw went home day fun friend bird sky blue green box toy cake").split()
    prompts = ["Once upon a time, " + " ".join(rng.choice(words) for _ in range(60)) + "." for _ in range(4)]
    dev = getattr(a, "pressure_device", "cuda")
    args = ["--device", dev, "--model", a.stories, "--kv-pages", "40", "--block-size", "16", "--attention", "sparse",
            "--indexer", "minmax", "--top-k-blocks", "3", "--local-blocks", "1", "--sink-blocks", "1",
            "--sparse-min-context", "0", "--max-running", "8", *extra]
    d = Daemon(a.sparsed, args, a.port + port, os.path.join(a.work, log))
    res = {}

    def ask(i, out):
        st, r = d.post("/v1/completions", {"prompt": prompts[i], "max_tokens": 150, "temperature": 0, "logprobs": 2})
        out[i] = (r["choices"][0]["logprobs"], r["usage"]["prompt_tokens"]) if st == 200 else (None, 0)

    try:
        if not d.wait_ready():
            return {"pass": False, "error": "daemon not ready: %s" % d.text()[-400:]}
        alone = {}
        for i in range(4):
            ask(i, alone)
        res["prompt_tokens"] = [alone[i][1] for i in range(4)]
        h0 = metric(d, "vllm:prefix_cache_hits_total")
        again = {}
        ask(0, again)   # its full prompt pages are cached unless the later prompts took them
        ask(3, again)   # the last prompt's surely are
        res["prefix_hit_tokens"] = metric(d, "vllm:prefix_cache_hits_total") - h0
        p0 = metric(d, "vllm:num_preemptions_total")
        both = at_once(ask, 4)
        res["preemptions"] = metric(d, "vllm:num_preemptions_total") - p0
        together = [same_greedy(alone[i][0], both[i][0]) for i in range(4)]
        cached = [same_greedy(alone[i][0], again[i][0]) for i in (0, 3)]
        res["together_ok"], res["together_split"] = [x[0] for x in together], [x[1] for x in together]
        res["cached_ok"], res["cached_split"] = [x[0] for x in cached], [x[1] for x in cached]
        res["text0"] = "".join(alone[0][0]["tokens"])[:200] if alone[0][0] else ""
    finally:
        res["exit_code"] = d.stop()
    full = res.get("prompt_tokens", [0] * 4)[3] // 16 * 16
    res["pass"] = (all(res.get("together_ok", [False])) and all(res.get("cached_ok", [False]))
                   and res.get("preemptions", 0) > 0 and res.get("prefix_hit_tokens", 0) >= full - 16
                   and len(res.get("text0", "")) > 0 and res["exit_code"] == 0)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sparsed", required=True)
    ap.add_argument("--stories", required=True)
    ap.add_argument("--m3", required=True, help="M3-shaped model with a 1M context")
    ap.add_argument("--moe", help="a mixture-of-experts model (daemon-moe)")
    ap.add_argument("--window", help="a model with sliding-window layers (daemon-window)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--checks", required=True, help="JSON lines file to append to")
    ap.add_argument("--port", type=int, default=18210)
    ap.add_argument("--only", help="run just these checks (labels, comma-separated)")
    a = ap.parse_args()
    fails = 0
    checks = [("daemon-stories-greedy", stories_greedy), ("daemon-auto-pool", auto_pool),
              ("daemon-fp8-kv", fp8_kv), ("daemon-kv-too-big", kv_too_big), ("daemon-no-such-gpu", no_such_gpu),
              ("daemon-pressure", pressure),
              ("daemon-pressure-fp8kv", lambda a: pressure(a, ("--kv-cache-dtype", "fp8"), 10, "d-pressure-fp8.log"))]
    if a.moe:
        checks.append(("daemon-moe", moe_serve))
    if a.window:
        checks.append(("daemon-window", window_serve))
    if gpu_count() >= 2:
        checks.append(("daemon-two-gpus", two_gpus))
    for label, fn in checks:
        if a.only and label not in a.only.split(","):
            continue
        try:
            r = fn(a)
        except Exception as e:   # a check that crashes fails, the others still run
            r = {"pass": False, "error": "%s: %s" % (type(e).__name__, e)}
        r = {"label": label, **r}
        fails += not r["pass"]
        with open(a.checks, "a") as f:
            f.write(json.dumps(r) + "\n")
        print("%-28s %s" % (label, json.dumps(r)[:600]))
    sys.exit(fails)


if __name__ == "__main__":
    main()
