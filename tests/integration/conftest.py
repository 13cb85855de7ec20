"""Fixtures for the integration tests: each starts the real `sparsed serve`
on a free loopback port (--port 0; the daemon logs the port it got) and
stops it with SIGTERM, checking that it exits 0.

Paths come from the environment meson sets (SPARSED_ROOT, SPARSED_BUILD);
run by hand from the repo root they default to . and ./build.
"""
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest
import requests

ROOT = os.path.abspath(os.environ.get("SPARSED_ROOT", os.path.join(os.path.dirname(__file__), "..", "..")))
BUILD = os.path.abspath(os.environ.get("SPARSED_BUILD", os.path.join(ROOT, "build")))
BINARY = os.path.join(BUILD, "sparsed")
MODEL = os.path.join(ROOT, "models", "stories260K.gguf")
MODEL_NAME = "stories260K"


class Daemon:
    """A running `sparsed serve`; stderr is collected in self.log."""

    def __init__(self, *args, env=None, model=MODEL, wait=True):
        self.args = [BINARY, "serve"] + (["--model", model] if model else []) + \
            ["--port", "0", "--threads", "2"] + list(args)
        e = dict(os.environ)
        for k in list(e):
            if k.startswith("SPARSED_") and k not in ("SPARSED_ROOT", "SPARSED_BUILD"):
                del e[k]
        if env:
            e.update(env)
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=e, cwd=ROOT)
        self.lines = []
        self.port = None
        self._port_seen = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if wait:
            if not self._port_seen.wait(30) or self.port is None:
                self.kill()
                raise RuntimeError("daemon did not start:\n" + self.log)
        self.url = "http://127.0.0.1:%s" % self.port

    def _read(self):
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            m = re.search(r"listening on http://[^ ]*:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                self._port_seen.set()
        self._port_seen.set()

    @property
    def log(self):
        return "".join(self.lines)

    def get(self, path, **kw):
        kw.setdefault("timeout", 60)
        return requests.get(self.url + path, **kw)

    def post(self, path, body=None, **kw):
        kw.setdefault("timeout", 120)
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            kw.setdefault("headers", {})["Content-Type"] = "application/json"
        return requests.post(self.url + path, data=body, **kw)

    def metrics(self, **kw):
        """Prometheus text -> {name{labels}: value} plus {name: value} summed over labels."""
        text = self.get("/metrics", **kw).text
        out, sums = {}, {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, val = line.rsplit(" ", 1)
            out[key] = float(val)
            name = key.split("{", 1)[0]
            if key != name and not name.endswith("_bucket"):
                sums[name] = sums.get(name, 0.0) + float(val)
        for name, v in sums.items():
            out.setdefault(name, v)
        return out

    def wait_metric(self, name, pred, timeout=30):
        deadline = time.time() + timeout
        v = None
        while time.time() < deadline:
            v = self.metrics().get(name)
            if v is not None and pred(v):
                return v
            time.sleep(0.02)
        raise AssertionError("metric %s stayed at %r" % (name, v))

    def signal(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)

    def stop(self, timeout=60):
        """SIGTERM, then the exit code (the daemon must drain and exit 0)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("daemon did not exit after SIGTERM:\n" + self.log[-4000:])
        self._reader.join(5)
        return rc

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def need_binary():
    if not os.path.exists(BINARY):
        pytest.skip("no sparsed binary at %s (build first)" % BINARY)


@pytest.fixture(scope="module")
def daemon():
    """One daemon shared by a module's tests."""
    need_binary()
    d = Daemon()
    yield d
    rc = d.stop()
    assert rc == 0, d.log[-4000:]


@pytest.fixture
def make_daemon():
    """Starts daemons with given options; stops each at the end (exit 0)."""
    need_binary()
    started = []

    def make(*args, **kw):
        d = Daemon(*args, **kw)
        started.append(d)
        return d

    yield make
    for d in started:
        if d.proc.poll() is None:
            rc = d.stop()
            assert rc == 0, d.log[-4000:]


def sse_events(resp):
    """Parses an SSE response: list of JSON payloads, then '[DONE]'; comments kept as ':'."""
    out = []
    buf = b""
    for chunk in resp.iter_content(chunk_size=None):
        buf += chunk
        while b"\n\n" in buf:
            block, buf = buf.split(b"\n\n", 1)
            for line in block.split(b"\n"):
                if line.startswith(b"data: "):
                    data = line[6:].decode()
                    out.append(data if data == "[DONE]" else json.loads(data))
                elif line.startswith(b":"):
                    out.append(":")
    assert buf == b"", "trailing bytes after the last event: %r" % buf
    return out
