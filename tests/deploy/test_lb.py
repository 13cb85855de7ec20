"""Two real `sparsed serve` daemons behind a real nginx running
deploy/nginx/sparsed.conf (ports and log path substituted, loopback only),
under concurrent streaming chat load:

1. warm-up: both replicas serve.
2. SIGTERM to replica A while it holds streams: they finish, A exits 0,
   requests started after the signal are served by B, no client sees an
   error, and nginx did move at least one request off A to B.
3. A is started again on its port; nginx routes to it again once
   fail_timeout has passed.
4. SIGKILL of replica B while it holds streams: only streams B held fail
   (cut mid-stream, never an HTTP error), every request started after the
   kill succeeds on A, and nginx stops routing to B (a bounded number of
   attempts reach it, and its error log says it disabled B).

Standard library only.  Everything is bounded: a watchdog alarm, a cap on
requests, timeouts on every wait and socket; the processes it started are
killed on any exit.  Exit 0 pass, 1 fail, 77 skip (no nginx).
"""
import http.client
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nginxconf  # noqa: E402

ROOT = nginxconf.ROOT
BUILD = os.path.abspath(os.environ.get("SPARSED_BUILD", os.path.join(ROOT, "build")))
BINARY = os.path.join(BUILD, "sparsed")
MODEL = os.path.join(ROOT, "models", "stories260K.gguf")

WATCHDOG_S = 170          # the whole test, then everything is killed
WORKERS = 4               # concurrent clients
MAX_REQUESTS = 800        # cap on requests sent
LONG = 1000               # tokens per stream while waiting to signal a replica
SHORT = 48                # tokens per request after the kill: many quick ones
SHUTDOWN_TIMEOUT = 20

procs = []                # everything started here, killed in cleanup()


def now():
    return time.monotonic()


def wait_for(cond, timeout, what, step=0.01):
    end = now() + timeout
    while now() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError("timed out after %.0f s waiting for %s" % (timeout, what))


class Daemon:
    def __init__(self, tmp, name, port=0):
        self.name = name
        self.logpath = os.path.join(tmp, "%s-%d.log" % (name, len(procs)))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SPARSED_")}
        args = [BINARY, "serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port),
                "--threads", "1", "--kv-memory", "64M", "--http-threads", "2",
                # One stream at a time: a replica holding two finishes them one
                # after the other, so while it drains it has fewer connections
                # than its peer and least_conn sends it a new request, which
                # it must refuse with 503 and nginx must move (checked; see
                # run() for why two extra requests make sure of it).
                "--max-running", "1",
                "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
        self.log_f = open(self.logpath, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self.log_f,
                                     stderr=subprocess.STDOUT, env=env, cwd=tmp)
        procs.append(self.proc)
        m = wait_for(lambda: self.proc.poll() is None and
                     re.search(r"listening on http://[^ ]*:(\d+)", self.log()) or
                     self.proc.poll() is not None, 30, "%s to listen" % name)
        if self.proc.poll() is not None:
            raise AssertionError("%s exited (%s) before listening:\n%s"
                                 % (name, self.proc.returncode, self.log()))
        self.port = int(m.group(1))
        self.addr = "127.0.0.1:%d" % self.port

    def log(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def ready_status(self):
        """/ready's status, or None when nothing listens."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/ready")
            return c.getresponse().status
        except OSError:
            return None
        finally:
            c.close()

    def in_flight(self):
        """running + waiting from the replica's own /metrics."""
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", "/metrics")
            text = c.getresponse().read().decode()
        finally:
            c.close()
        n = 0
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            m = re.search(r"^%s(?:\{[^}]*\})? (\S+)$" % re.escape(name), text, re.M)
            assert m, "%s missing from /metrics" % name
            n += int(float(m.group(1)))
        return n


class Nginx:
    def __init__(self, tmp, upstreams):
        nginx = nginxconf.find_nginx()
        self.tmp = tmp
        self.access = os.path.join(tmp, "access.log")
        self.error = os.path.join(tmp, "error.log")
        for attempt in range(5):
            self.port = free_port()
            main = nginxconf.write(tmp, upstreams, "127.0.0.1:%d" % self.port)
            out = open(os.path.join(tmp, "nginx.out"), "w")
            # Its own session: cleanup kills master and worker by group.
            self.proc = subprocess.Popen(nginxconf.command(nginx, tmp, main),
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
            procs.append(self.proc)
            try:
                wait_for(lambda: self.proc.poll() is not None or self.up(), 15, "nginx to start")
            except AssertionError:
                raise AssertionError("nginx did not start:\n" + self.errors())
            if self.proc.poll() is None:
                return
            if "Address already in use" not in self.errors():
                raise AssertionError("nginx exited:\n" + self.errors())
        raise AssertionError("nginx found no free port")

    def up(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            c.request("GET", "/lb-health")
            return c.getresponse().status == 200
        except OSError:
            return False

    def errors(self):
        out = ""
        for p in (self.error, os.path.join(self.tmp, "nginx.out")):
            if os.path.exists(p):
                out += open(p, errors="replace").read()
        return out

    def entries(self):
        """rid -> (upstream addresses tried, their statuses, client status)."""
        out = {}
        if not os.path.exists(self.access):
            return out
        for line in open(self.access, errors="replace"):
            m = re.search(r'" (\d+) \d+ rt=\S+ upstream=(.*?) ustatus=(.*?) urt=.*? rid=(\S+)$',
                          line.rstrip("\n"))
            if not m or m.group(4) == "-":
                continue
            ups = [u.strip() for u in m.group(2).split(",")]
            out[m.group(4)] = (ups, [s.strip() for s in m.group(3).split(",")], int(m.group(1)))
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)   # graceful: flush logs
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
        kill_group(self.proc)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def kill_group(p):
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class Load:
    """WORKERS threads sending streaming chat completions through nginx in a
    loop; every request is recorded with its times, request id and outcome."""

    def __init__(self, port):
        self.port = port
        self.max_tokens = LONG
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.results = []
        self.sent = 0
        self.threads = [threading.Thread(target=self.worker, daemon=True) for _ in range(WORKERS)]
        for t in self.threads:
            t.start()

    def worker(self):
        while not self.stop.is_set():
            with self.lock:
                if self.sent >= MAX_REQUESTS:
                    return
                self.sent += 1
                seq = self.sent
            r = self.one(seq, self.max_tokens)
            with self.lock:
                self.results.append(r)

    def one(self, seq, max_tokens):
        r = {"seq": seq, "t0": now(), "max_tokens": max_tokens, "rid": None, "error": None,
             "t_end": None}
        body = json.dumps({"model": "stories260K", "stream": True, "ignore_eos": True,
                           "max_tokens": max_tokens, "stream_options": {"include_usage": True},
                           "messages": [{"role": "user", "content": "Tell story %d." % seq}]})
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            resp = c.getresponse()
            r["rid"] = resp.getheader("X-Request-Id")
            if resp.status != 200:
                r["error"] = "HTTP %d: %s" % (resp.status, resp.read()[:200])
                return r
            done, finish, usage = False, None, None
            while True:
                line = resp.readline()
                if not line:
                    break
                line = line.rstrip(b"\r\n")
                if not line or line.startswith(b":"):
                    continue
                if line == b"data: [DONE]":
                    # The response must end here (chunked terminator read too).
                    rest = resp.read()
                    if rest.strip():
                        raise ValueError("data after [DONE]: %r" % rest[:80])
                    done = True
                    break
                if not line.startswith(b"data: "):
                    raise ValueError("not an SSE data line: %r" % line[:80])
                ev = json.loads(line[6:])
                if "error" in ev:
                    raise ValueError("error event: %s" % ev["error"])
                for ch in ev.get("choices") or []:
                    finish = ch.get("finish_reason") or finish
                usage = ev.get("usage") or usage
            if not done:
                raise ValueError("stream ended without [DONE]")
            if finish != "length" or not usage or usage.get("completion_tokens") != max_tokens:
                raise ValueError("incomplete stream: finish_reason %r, usage %r" % (finish, usage))
        except Exception as e:  # noqa: BLE001 - every failure is an outcome here
            r["error"] = "%s: %s" % (type(e).__name__, e)
        finally:
            c.close()
            r["t_end"] = now()
        return r

    def extra(self, max_tokens):
        """One request outside the workers' loop, recorded like theirs."""
        with self.lock:
            self.sent += 1
            seq = self.sent
        r = self.one(seq, max_tokens)
        with self.lock:
            self.results.append(r)

    def snapshot(self):
        with self.lock:
            return list(self.results)

    def done_after(self, t):
        return [r for r in self.snapshot() if r["t0"] > t]

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(40)
        assert not any(t.is_alive() for t in self.threads), "a client thread is stuck"
        return self.snapshot()


def fmt(rs):
    return "\n".join("  #%d t0=%.2f rid=%s %s" % (r["seq"], r["t0"], r["rid"], r["error"])
                     for r in rs[:20])


def run(tmp):
    fail_timeout = nginxconf.fail_timeout()
    a = Daemon(tmp, "A")
    b = Daemon(tmp, "B")
    lb = Nginx(tmp, [a.addr, b.addr])
    print("daemons A=%s B=%s, nginx on %d, fail_timeout %d s" % (a.addr, b.addr, lb.port, fail_timeout))
    load = Load(lb.port)
    t_start = now()

    def served_by(addr, after=None):
        ent = lb.entries()
        return [r for r in load.snapshot() if r["rid"] in ent and ent[r["rid"]][0][-1] == addr
                and not r["error"] and (after is None or r["t0"] > after)]

    # 1. warm-up: both replicas serve.
    wait_for(lambda: served_by(a.addr) and served_by(b.addr), 40, "both replicas to serve", 0.05)
    print("warm-up: %d requests, both replicas served" % len(load.snapshot()))

    # 2. SIGTERM to A while it holds streams.
    held = wait_for(lambda: (lambda n: n >= 2 and n)(a.in_flight()), 30, "A to hold streams", 0.005)
    t_term = now()
    a.proc.send_signal(signal.SIGTERM)
    # The daemon takes the signal on its loop a moment later; a request that
    # reached it before then is its to finish.  /ready turning 503 (or the
    # port closing) marks the point after which it must accept nothing.
    wait_for(lambda: a.ready_status() != 200, 10, "A to stop being ready", 0.002)
    t_draining = now()
    # Two more requests at once while A drains.  The workers alone may not
    # reach it: when their reads lag, A's scheduler gives a stalled stream's
    # slot to the waiting one, so A's two streams can end together and A
    # exit before a worker asks again.  With two more on B, least_conn sends
    # one of these to A, which must refuse it (503) for nginx to move it.
    extras = [threading.Thread(target=load.extra, args=(SHORT,), daemon=True) for _ in range(2)]
    for t in extras:
        t.start()
    rc = a.proc.wait(SHUTDOWN_TIMEOUT + 15)
    t_a_exit = now()
    assert rc == 0, "A exited %d after SIGTERM:\n%s" % (rc, a.log()[-3000:])
    log = a.log()
    m = re.search(r"draining: (\d+) request\(s\) in flight", log)
    assert m, "A logged no drain:\n" + log[-3000:]
    drained = int(m.group(1))
    finished = re.findall(r"access id=\S+ route=/v1/chat/completions status=200 .* end=ok",
                          log[m.end():])
    assert drained >= 1, "A had nothing in flight at SIGTERM (metrics said %d)" % held
    assert len(finished) >= drained, \
        "A drained %d but completed only %d afterwards:\n%s" % (drained, len(finished), log[-3000:])
    assert "shutdown timeout" not in log, "A's drain ran out of time:\n" + log[-3000:]
    print("SIGTERM: A held %d (metrics %d), not ready after %.3f s, completed %d during the "
          "drain, exited 0 after %.2f s"
          % (drained, held, t_draining - t_term, len(finished), t_a_exit - t_term))
    wait_for(lambda: len([r for r in load.done_after(t_a_exit) if r["t_end"]]) >= 6, 30,
             "requests after A stopped", 0.05)

    # 3. A again, same port; nginx comes back to it after fail_timeout.
    a2 = Daemon(tmp, "A2", a.port)
    t_a2 = now()
    wait_for(lambda: served_by(a2.addr, t_a2), fail_timeout + 20, "nginx to route to A again", 0.05)
    print("restart: A serves again %.2f s after it started" % (now() - t_a2))

    # 4. SIGKILL of B while it holds streams.
    wait_for(lambda: b.in_flight() >= 1, 30, "B to hold streams", 0.005)
    t_kill = now()
    b.proc.kill()
    b.proc.wait(10)
    load.max_tokens = SHORT
    wait_for(lambda: len([r for r in load.done_after(t_kill) if r["t_end"]]) >= 16, 40,
             "requests after the kill", 0.05)
    t_kill_end = now()
    for t in extras:
        t.join(40)
    results = load.finish()
    lb.stop()
    ent = lb.entries()
    elapsed = now() - t_start

    # ---- what the clients saw ----
    # Request ids are the join key between client, nginx's log and each
    # replica's log, so replicas must never hand out the same one (they once
    # did: a replica's id was its counter and the second, so a stream B held
    # at the kill was blamed on A2, whose log showed that id completed).
    rids = [r["rid"] for r in results if r["rid"]]
    dup = sorted({x for x in rids if rids.count(x) > 1})
    assert not dup, "two requests got the same X-Request-Id: %s" % dup[:5]
    before_kill = [r for r in results if r["t0"] < t_kill]
    after_term = [r for r in results if t_draining < r["t0"] < t_a2]
    after_kill = [r for r in results if r["t0"] > t_kill]
    bad = [r for r in before_kill if r["error"] and r["t_end"] < t_kill]
    assert not bad, "clients saw errors before the kill (drain must be invisible):\n" + fmt(bad)
    assert after_term, "no request was sent while A drained"
    not_b = [r for r in after_term if ent.get(r["rid"], ([None],))[0][-1] != b.addr]
    assert not not_b, "requests after SIGTERM not served by B:\n" + "\n".join(
        "  rid=%s %s" % (r["rid"], ent.get(r["rid"])) for r in not_b[:10])
    tried = lambda r: ent.get(r["rid"], ([], [], 0))  # noqa: E731
    moved = [r for r in results if t_term < r["t0"] < t_a2 and len(tried(r)[0]) > 1
             and tried(r)[0][0] == a.addr]
    assert moved, "nginx never tried A after SIGTERM, so its retry was not exercised"
    refused = [r for r in moved if tried(r)[1][0] == "503"]
    assert refused, "no request reached A while it drained (its 503 was not exercised): %s" % [
        tried(r) for r in moved]

    failed = [r for r in results if r["error"]]
    # Held by B: B was the replica nginx finally passed it to (perhaps after
    # A refused it earlier), and it began before the kill.
    held_by_b = lambda r: r["rid"] in ent and ent[r["rid"]][0][-1] == b.addr  # noqa: E731
    stray = [r for r in failed if not (r["t0"] < t_kill and held_by_b(r))]
    assert not stray, "failures other than streams B held at the kill:\n" + fmt(stray)
    http_err = [r for r in failed if r["error"].startswith("HTTP ")]
    assert not http_err, "a client got an HTTP error status:\n" + fmt(http_err)
    assert len(failed) <= WORKERS, "more failures than requests in flight:\n" + fmt(failed)
    assert failed, "SIGKILL of B cut no stream: B held nothing when killed"
    assert all(not r["error"] for r in after_kill), "a request sent after the kill failed"
    on_a2 = [r for r in after_kill if ent.get(r["rid"], ([None],))[0][-1] == a2.addr]
    assert len(on_a2) == len(after_kill), "requests after the kill not all served by A"

    # ---- nginx stopped routing to B ----
    tried_b = [r for r in after_kill if b.addr in ent[r["rid"]][0]]
    bound = WORKERS + math.ceil((t_kill_end - t_kill) / fail_timeout)
    assert len(tried_b) <= bound, "%d of %d requests after the kill were tried on B (bound %d)" % (
        len(tried_b), len(after_kill), bound)
    errors = lb.errors()
    assert re.search(r"upstream server temporarily disabled", errors), \
        "nginx never disabled B:\n" + errors[-2000:]

    print("SIGKILL: %d streams held by B failed mid-stream; %d requests after the kill all "
          "succeeded on A, %d of them tried B first (bound %d)"
          % (len(failed), len(after_kill), len(tried_b), bound))
    print("after SIGTERM: %d requests, all on B; nginx moved %d off A, %d of them after A's 503"
          % (len(after_term), len(moved), len(refused)))
    print("total: %d requests in %.1f s, %d failed (all held by the killed replica)"
          % (len(results), elapsed, len(failed)))


def cleanup():
    for p in procs:
        if p.poll() is None:
            if p.args and os.path.basename(p.args[0]) == "nginx":
                kill_group(p)
            else:
                p.kill()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
    # nginx's worker shares the master's group even when the master is gone.
    for p in procs:
        if p.args and os.path.basename(p.args[0]) == "nginx":
            kill_group(p)


def on_alarm(signum, frame):
    raise TimeoutError("watchdog: the test ran past %d s" % WATCHDOG_S)


def main():
    if not nginxconf.find_nginx():
        print("skipping: nginx is not installed (Debian: nginx-light)")
        return 77
    if not os.access(BINARY, os.X_OK):
        print("FAIL: no daemon binary at %s (meson compile first)" % BINARY)
        return 1
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(WATCHDOG_S)
    tmp = tempfile.mkdtemp(prefix="sparsed-lb-")
    ok = False
    try:
        run(tmp)
        ok = True
    except (AssertionError, TimeoutError, OSError) as e:
        print("FAIL: %s" % e)
    finally:
        signal.alarm(0)
        cleanup()
        if not ok:
            for name in sorted(os.listdir(tmp)):
                if name.endswith(".log") or name == "nginx.out":
                    text = open(os.path.join(tmp, name), errors="replace").read()
                    print("---- %s (last 40 lines)\n%s" % (name, "\n".join(text.splitlines()[-40:])))
        else:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    print("1 passed, 0 failed" if ok else "0 passed, 1 failed")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
