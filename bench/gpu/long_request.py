#!/usr/bin/env python3
"""One very long request through the HTTP API while other streams run.

Sends a synthetic document of about --tokens prompt tokens (random short
words, calibrated against the server's own token count) as one streaming
completion, while --others client threads keep sending short streaming
completions back to back.  Records for the long request: the HTTP status,
prompt tokens, time to first token, the SSE keep-alive comments received
while it was prefilled (count and the longest silence), and its decode
rate; for the other streams: inter-token latency and completed requests
during the long prefill (from when the body was tokenized, timed with the
same document refused for asking more tokens than the context holds, to
the first token) and outside it.  Standard library only.

    long_request.py --url http://127.0.0.1:8080 --tokens 1048000 --out res.json
"""
import argparse
import http.client
import json
import random
import sys
import os
import threading
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "serve"))
from loadgen import pct  # noqa: E402  (the serving benchmark's percentile)


def ms(v):
    return None if v is None else round(v * 1000.0, 2)


class Stream:
    """A streaming POST; events are (time, kind, payload): kind 'comment' for
    SSE comment lines, 'data' for JSON chunks, 'done' for [DONE]."""

    def __init__(self, url, path, body, timeout):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)
        self.path = (u.path.rstrip("/") or "") + path
        self.body = json.dumps(body).encode()

    def run(self, on_event):
        self.conn.request("POST", self.path, body=self.body,
                          headers={"Content-Type": "application/json"})
        r = self.conn.getresponse()
        if r.status != 200:
            return r.status, r.read()[:400].decode(errors="replace")
        buf = b""
        while True:
            chunk = r.read1(1 << 16)
            if not chunk:
                break
            now = time.perf_counter()
            buf += chunk
            while b"\n\n" in buf:
                block, buf = buf.split(b"\n\n", 1)
                for line in block.split(b"\n"):
                    if line.startswith(b":"):
                        on_event(now, "comment", line)
                    elif line.startswith(b"data: "):
                        d = line[6:]
                        if d == b"[DONE]":
                            on_event(now, "done", None)
                        else:
                            on_event(now, "data", json.loads(d))
        self.conn.close()
        return 200, None


def text_of(ev):
    return "".join(ch.get("text") or "" for ch in ev.get("choices", []))


def count_tokens(url, prompt):
    u = urllib.parse.urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": prompt, "max_tokens": 1}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    body = json.loads(r.read())
    if r.status != 200:
        raise RuntimeError("calibration request: %d %s" % (r.status, body))
    return body["usage"]["prompt_tokens"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--tokens", type=int, default=1048000, help="target prompt tokens of the long request")
    ap.add_argument("--max-tokens", type=int, default=32, help="tokens the long request generates")
    ap.add_argument("--others", type=int, default=4, help="concurrent short streams")
    ap.add_argument("--other-max-tokens", type=int, default=64)
    ap.add_argument("--other-words", type=int, default=200)
    ap.add_argument("--label", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    rng = random.Random(7)
    words = [x + y for x in "abcdefghijklmnopqrstuvwxyz" for y in "abcdefghijklmnopqrstuvwxyz"]
    sample = " ".join(rng.choice(words) for _ in range(4000))
    per_word = count_tokens(a.url, sample) / 4000.0
    n_words = max(1, int(a.tokens / per_word))
    rng = random.Random(11)
    doc = " ".join(rng.choice(words) for _ in range(n_words))

    # parsing and tokenizing the body alone: the same document with more
    # tokens asked than the context holds is refused once it is tokenized
    t0 = time.perf_counter()
    u = urllib.parse.urlparse(a.url)
    c = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=600)
    c.request("POST", "/v1/completions", body=json.dumps({"prompt": doc, "max_tokens": 1 << 30}),
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    r.read()
    tokenize_s = time.perf_counter() - t0 if r.status == 400 else 0.0
    c.close()

    stop = threading.Event()
    others = []   # per request: {"t0", "times": [token times], "ok"}
    lock = threading.Lock()

    def other_worker(k):
        i = 0
        while not stop.is_set():
            r = random.Random(1000 * k + i)
            p = " ".join(r.choice(words) for _ in range(a.other_words))
            rec = {"t0": time.perf_counter(), "times": [], "status": None}
            st = Stream(a.url, "/v1/completions",
                        {"prompt": p, "max_tokens": a.other_max_tokens, "stream": True, "ignore_eos": True,
                         "temperature": 0.8, "seed": i}, 600)

            def on_ev(t, kind, ev):
                if kind == "data" and text_of(ev):
                    rec["times"].append(t)
            try:
                rec["status"], _ = st.run(on_ev)
            except (OSError, http.client.HTTPException, ValueError) as e:
                rec["status"] = repr(e)
            rec["t1"] = time.perf_counter()
            with lock:
                others.append(rec)
            i += 1

    threads = [threading.Thread(target=other_worker, args=(k,), daemon=True) for k in range(a.others)]
    for t in threads:
        t.start()
    time.sleep(2.0)   # the short streams are decoding when the long request arrives

    long = {"comments": [], "tokens": [], "usage": None, "done": False}

    def on_long(t, kind, ev):
        if kind == "comment":
            long["comments"].append(t)
        elif kind == "data":
            if text_of(ev):
                long["tokens"].append(t)
            if ev.get("usage"):
                long["usage"] = ev["usage"]
        elif kind == "done":
            long["done"] = True

    body = {"prompt": doc, "max_tokens": a.max_tokens, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    t_send = time.perf_counter()
    status, err = Stream(a.url, "/v1/completions", body, 3600).run(on_long)
    t_end = time.perf_counter()
    stop.set()
    for t in threads:
        t.join(timeout=120)

    t_first = long["tokens"][0] if long["tokens"] else None
    # silences the long stream saw before its first token (send, comments, first token)
    marks = [t_send] + long["comments"] + ([t_first] if t_first else [t_end])
    silences = [b - x for x, b in zip(marks, marks[1:])]
    res = {"label": a.label, "status": status, "error": err, "body_bytes": len(json.dumps(body)),
           "target_tokens": a.tokens, "tokens_per_word": round(per_word, 4),
           "parse_and_tokenize_s": round(tokenize_s, 3)}
    if status == 200 and t_first:
        dec = long["tokens"]
        res.update({
            "prompt_tokens": (long["usage"] or {}).get("prompt_tokens"),
            "completion_tokens": (long["usage"] or {}).get("completion_tokens"),
            "done": long["done"],
            "ttft_s": round(t_first - t_send, 3),
            "prefill_tok_s": round(((long["usage"] or {}).get("prompt_tokens") or 0) / (t_first - t_send), 1),
            "keepalives_before_first_token": sum(1 for c in long["comments"] if c < t_first),
            "longest_silence_before_first_token_s": round(max(silences), 3),
            "decode_tok_s": round((len(dec) - 1) / (dec[-1] - dec[0]), 2) if len(dec) > 1 else None,
            "total_s": round(t_end - t_send, 3),
        })
    # the other streams, split by the long request's prefill window (from
    # when its body was tokenized to its first token)
    win = (t_send + tokenize_s, t_first or t_end)
    during, outside, done_during, done_total, bad = [], [], 0, 0, 0
    for r in others:
        if r["status"] != 200:
            bad += 1
            continue
        done_total += 1
        if win[0] <= r["t1"] <= win[1]:
            done_during += 1
        for x, y in zip(r["times"], r["times"][1:]):
            (during if win[0] <= x and y <= win[1] else outside).append(y - x)
    started = [r["times"][0] - r["t0"] for r in others
               if r["status"] == 200 and r["times"] and win[0] <= r["t0"] <= win[1]]
    res["others"] = {
        "ttft_ms_of_those_started_during_prefill": {"n": len(started), "p50": ms(pct(started, 50)),
                                                    "max": ms(max(started) if started else None)},
        "streams": a.others, "requests_ok": done_total, "requests_failed": bad,
        "completed_during_long_prefill": done_during,
        "itl_ms_during_prefill": {"n": len(during), "p50": ms(pct(during, 50)), "p99": ms(pct(during, 99)),
                                  "max": ms(max(during) if during else None)},
        "itl_ms_outside": {"n": len(outside), "p50": ms(pct(outside, 50)), "p99": ms(pct(outside, 99))},
    }
    # every other request on one line, in ms from the long request's send:
    # [start, first token or None, end, tokens, status]
    rel = lambda t: None if t is None else round((t - t_send) * 1000.0)
    res["others"]["requests"] = [[rel(r["t0"]), rel(r["times"][0] if r["times"] else None), rel(r["t1"]),
                                  len(r["times"]), r["status"]] for r in others]
    res["others"]["requests_fields"] = "ms from the long request's send: start, first token, end; tokens; status"
    res["keepalive_ms"] = [rel(t) for t in long["comments"]]
    json.dump(res, open(a.out, "w"), indent=1)
    brief = dict(res, others={k: v for k, v in res["others"].items() if k != "requests"})
    brief.pop("keepalive_ms")
    print(json.dumps(brief, indent=1))
    ok = status == 200 and long["done"] and bad == 0 and done_total > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
