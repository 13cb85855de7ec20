#!/usr/bin/env python3
"""How many tokens of context a fixed KV budget holds for a model with
sliding-window layers, with the window layers in pages of their own (the
default) and without (--no-window-pages), and whether one long prompt that
needs the difference is served.  The model is a seeded random one of
Gemma-3's attention shape (mkmodel: 6 layers, 5 of them a window of 1024
tokens, 4 KV heads of 256), on the cpu.  Prints a table and writes
bench/results/window-pages-<date>.json.

    python3 bench/window_pages.py [--build build] [--kv-memory 512M] [--prompt 16000]
"""
import argparse
import datetime
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def serve(build, model, extra):
    p = subprocess.Popen([os.path.join(build, "sparsed"), "serve", "--model", model, "--port", "0", "--threads", "2"]
                         + extra, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    log = []
    for line in p.stderr:
        log.append(line)
        m = re.search(r"listening on http://[^ ]*:(\d+)", line)
        if m:
            return p, int(m.group(1)), "".join(log)
    raise RuntimeError("daemon did not start:\n" + "".join(log))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--kv-memory", default="512M")
    ap.add_argument("--prompt", type=int, default=16000)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="sparsed-window-bench-")
    model = os.path.join(tmp, "gemma3-shape.gguf")
    subprocess.run([os.path.join(a.build, "tools", "mkmodel"), "--out", model, "--arch", "gemma3", "--layers", "6",
                    "--embd", "256", "--heads", "8", "--kv-heads", "4", "--head-dim", "256", "--ff", "512",
                    "--vocab", "1024", "--ctx", "131072", "--swa-window", "1024", "--swa-pattern", "6",
                    "--seed", "31"], check=True, capture_output=True)
    rng = random.Random(3)
    prompt = [rng.randrange(3, 1024) for _ in range(a.prompt)]
    common = ["--kv-memory", a.kv_memory, "--max-running", "2", "--max-batch-tokens", "2048", "--block-size", "64"]
    rows = []
    for name, extra in (("window pages", []), ("every token (--no-window-pages)", ["--no-window-pages"])):
        p, port, log = serve(a.build, model, common + extra)
        try:
            m = re.search(r"KV pool (\d+) pages x (\d+) tokens \(([\d.]+) MiB\)(?: \+ (\d+) window pages \(([\d.]+) MiB\))?",
                          log)
            pages, bs = int(m.group(1)), int(m.group(2))
            row = {"pool": name, "pages": pages, "main_mib": float(m.group(3)),
                   "window_pages": int(m.group(4) or 0), "window_mib": float(m.group(5) or 0),
                   "tokens_held": pages * bs}
            body = json.dumps({"prompt": prompt, "max_tokens": 8, "temperature": 0}).encode()
            req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, body,
                                         {"content-type": "application/json"})
            t0 = time.time()
            try:
                with urllib.request.urlopen(req, timeout=3600) as r:
                    j = json.load(r)
                    row["long_prompt"] = "served: %d tokens out in %.1f s" % (j["usage"]["completion_tokens"],
                                                                                time.time() - t0)
            except urllib.error.HTTPError as e:
                row["long_prompt"] = "HTTP %d: %s" % (e.code, json.load(e)["error"]["message"])
            rows.append(row)
        finally:
            p.terminate()
            p.wait()
    os.unlink(model)
    os.rmdir(tmp)
    print("KV budget %s, Gemma-3 attention shape (5 of 6 layers a 1024-token window), a %d-token prompt"
          % (a.kv_memory, a.prompt))
    print("%-34s %8s %10s %14s  %s" % ("pool", "pages", "tokens", "window pages", "long prompt"))
    for r in rows:
        print("%-34s %8d %10d %14d  %s" % (r["pool"], r["pages"], r["tokens_held"], r["window_pages"], r["long_prompt"]))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = os.path.join(ROOT, "bench", "results", "window-pages-%s.json" % datetime.date.today().isoformat())
    with open(out, "w") as f:
        json.dump({"what": "tokens a KV budget holds with sliding-window layers in pages of their own and without "
                   "(bench/window_pages.py), cpu", "date": datetime.date.today().isoformat(), "commit": commit,
                   "kv_memory": a.kv_memory, "prompt_tokens": a.prompt, "rows": rows}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    sys.exit(main())
