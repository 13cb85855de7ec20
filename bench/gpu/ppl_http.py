#!/usr/bin/env python3
"""Perplexity of a text through a running daemon's HTTP API.

One /v1/completions request scores the whole text as the prompt
(max_tokens 0, echo, logprobs 0, as vLLM takes them): the perplexity is
exp of minus the mean of the prompt tokens' logprobs (the first token has
none).  Any device, any K/V dtype: the daemon's own options decide, so two
daemons on one text compare e.g. bf16 and fp8 K/V pages end to end.

    ppl_http.py --url http://127.0.0.1:8080 --text FILE [--chars N] [--label L]

Prints one JSON object: label, model, tokens, ppl, seconds.  Exit status 1
with a message when the daemon answers with an error.
"""
import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.request


def post(url, body, timeout):
    req = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        sys.exit(f"ppl_http: {url}: HTTP {e.code}: {e.read().decode(errors='replace')[:300]}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--text", required=True)
    ap.add_argument("--chars", type=int, default=0, help="only the text's first N characters")
    ap.add_argument("--label", default="")
    ap.add_argument("--timeout", type=float, default=1800)
    a = ap.parse_args()
    text = open(a.text, encoding="utf-8", errors="replace").read()
    if a.chars:
        text = text[: a.chars]
    with urllib.request.urlopen(a.url + "/v1/models", timeout=60) as r:
        model = json.load(r)["data"][0]["id"]
    t0 = time.time()
    out = post(a.url + "/v1/completions",
               {"model": model, "prompt": text, "max_tokens": 0, "echo": True, "logprobs": 0}, a.timeout)
    lps = [x for x in out["choices"][0]["logprobs"]["token_logprobs"] if x is not None]
    if not lps:
        sys.exit("ppl_http: no token logprobs in the reply")
    print(json.dumps({"label": a.label, "model": model, "tokens": len(lps) + 1,
                      "ppl": round(math.exp(-sum(lps) / len(lps)), 5), "seconds": round(time.time() - t0, 2)}))


if __name__ == "__main__":
    main()
