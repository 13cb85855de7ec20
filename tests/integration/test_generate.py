"""`sparsed generate`, the CLI for checks and scripts: greedy from BOS it
reproduces stories260K's published ids; bad options get a message and a
non-zero exit."""
import json
import os
import subprocess

from conftest import BINARY, MODEL, ROOT, need_binary


def generate(*args):
    need_binary()
    return subprocess.run([BINARY, "generate", "--model", MODEL, "--threads", "2"] + list(args),
                          capture_output=True, timeout=120, cwd=ROOT)


def test_greedy_matches_published_ids():
    with open(os.path.join(ROOT, "tests", "data", "stories260K-greedy.txt")) as f:
        ref = [int(x) for line in f if not line.startswith("#") for x in line.split()]
    p = generate("--max-tokens", "64", "--json")
    assert p.returncode == 0, p.stderr.decode()
    out = json.loads(p.stdout.decode().strip().splitlines()[-1])
    assert out["tokens"] == ref[:64]


def test_bad_options_rejected():
    cases = [
        (["--max-tokens", "-1"], 2, "--max-tokens"),
        (["--attention", "fast"], 2, "--attention"),
        (["--no-such-option"], 2, "usage"),
        (["--kv-cache-dtype", "fp16"], 1, "kv cache dtype: 'fp16' is not known (bf16, fp8)"),
        (["--kv-cache-dtype", "fp8"], 1, "kv cache dtype: fp8 needs the cuda device"),
        (["--index-keys", "fp8"], 1, "index keys: fp8 needs the cuda device"),
    ]
    for args, rc, needle in cases:
        p = generate(*args)
        assert p.returncode == rc, (args, p.returncode, p.stderr.decode())
        assert needle in p.stderr.decode(), (args, p.stderr.decode())
        assert p.stdout == b"", args
