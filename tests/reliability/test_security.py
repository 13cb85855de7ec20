"""Security properties of the real daemon: it listens on loopback unless
told otherwise, takes API keys from a file and never writes them out,
bounds the tokens a request may ask for, takes no file or model path from
a request, and drops root for --user after binding and loading the model."""
import json
import os
import pwd
import socket
import subprocess

import pytest

from conftest import BINARY_PATH, ROOT, make_daemon, open_files, proc_status, request  # noqa: F401

KEYS = ["sk-first-8b1c0e2f9a7d4c3b", "sk-second-51f0aa93c6de0b77"]


def run_serve(*args):
    """`sparsed serve ARGS` to its exit (for options that stop it early)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPARSED_")}
    return subprocess.run([BINARY_PATH, "serve", "--port", "0"] + list(args), capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=env)


def test_default_host_is_loopback(make_daemon):
    d = make_daemon()
    assert "listening on http://127.0.0.1:%d" % d.port in d.log
    # the listening socket is bound to 127.0.0.1, not to any address
    want = "0100007F:%04X" % d.port
    with open("/proc/net/tcp") as f:
        rows = [l.split() for l in f.readlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and r[1].endswith(":%04X" % d.port)]
    assert listening == [want]
    # from another address of this machine, if it has one, nothing answers
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.connect(("192.0.2.1", 9))   # no packet is sent; picks the outgoing address
        ip = u.getsockname()[0]
    except OSError:
        ip = None
    finally:
        u.close()
    if ip and not ip.startswith("127."):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((ip, d.port), timeout=5).close()


def test_api_keys_from_a_file_are_never_written_out(make_daemon, tmp_path):
    kf = tmp_path / "keys"
    kf.write_text("# operators\n%s\n\n  %s  \n" % (KEYS[0], KEYS[1]))
    d = make_daemon("--api-key-file", str(kf))
    body = {"prompt": "Once", "max_tokens": 2}
    for k in KEYS:
        status, _, _ = request(d.port, "POST", "/v1/completions", body,
                               headers={"Authorization": "Bearer " + k})
        assert status == 200
    near = [KEYS[0][:-1], KEYS[0] + "x", KEYS[1].upper(), "# operators", ""]
    bodies = []
    for k in near:
        status, _, b = request(d.port, "POST", "/v1/completions", body,
                               headers={"Authorization": "Bearer " + k})
        assert status == 401, k
        bodies.append(b.decode())
    status, _, b = request(d.port, "POST", "/v1/completions", body)
    assert status == 401
    bodies.append(b.decode())
    assert request(d.port, "GET", "/health")[0] == 200   # open route
    status, _, metrics = request(d.port, "GET", "/metrics", headers={"Authorization": "Bearer " + KEYS[1]})
    assert status == 200
    assert d.stop() == 0
    for k in KEYS:
        assert k not in d.log and k not in metrics.decode()
        assert not any(k in b for b in bodies)
    # an empty key file is an error, and says which file
    empty = tmp_path / "none"
    empty.write_text("# no keys\n")
    p = run_serve("--api-key-file", str(empty))
    assert p.returncode == 2 and "holds no keys" in p.stderr
    # a bad config file line names the option, never the key beside it
    cf = tmp_path / "c.json"
    cf.write_text(json.dumps({"api_key": KEYS[0], "max_running": "lots"}))
    p = run_serve("--config", str(cf))
    assert p.returncode == 2 and "max-running" in p.stderr and KEYS[0] not in p.stderr


def test_request_token_limits(make_daemon):
    d = make_daemon("--max-tokens", "8")
    C, CH = "/v1/completions", "/v1/chat/completions"
    msgs = [{"role": "user", "content": "Hi"}]

    def err(path, body):
        status, _, b = request(d.port, "POST", path, body)
        return status, json.loads(b)["error"] if status != 200 else json.loads(b)

    s, e = err(C, {"prompt": "Once", "max_tokens": 9})
    assert s == 400 and e["code"] == "integer_above_max_value" and e["param"] == "max_tokens"
    s, e = err(CH, {"messages": msgs, "max_completion_tokens": 9})
    assert s == 400 and e["param"] == "max_completion_tokens"
    # left out, max_tokens becomes the cap
    s, r = err(CH, {"messages": msgs, "ignore_eos": True})
    assert s == 200 and r["usage"]["completion_tokens"] == 8
    s, r = err(C, {"prompt": "Once", "max_tokens": 8, "ignore_eos": True, "n": 2})
    assert s == 200 and r["usage"]["completion_tokens"] == 16
    # choices per request, prompts per request, and the context bound
    s, e = err(C, {"prompt": "Once", "n": 129})
    assert s == 400 and e["param"] == "n"
    s, e = err(C, {"prompt": ["a"] * 129})
    assert s == 400 and e["param"] == "prompt"
    s, e = err(C, {"prompt": [1] * 2048, "max_tokens": 1})
    assert s == 400 and e["code"] == "context_length_exceeded"


def test_no_path_is_taken_from_a_request(make_daemon):
    d = make_daemon()
    # files only: a client's connection may still be closing on the daemon's side
    files = lambda: sorted(f for f in open_files(d.proc.pid) if not f.startswith("socket:"))
    before = files()
    for model in ["/etc/passwd", "../../etc/passwd", "models/stories260K.gguf",
                  os.path.join(ROOT, "models/stories260K.gguf"), "stories260K.gguf", "file:///etc/passwd"]:
        for path, body in (("/v1/completions", {"model": model, "prompt": "Once", "max_tokens": 1}),
                           ("/v1/chat/completions", {"model": model, "max_tokens": 1,
                                                     "messages": [{"role": "user", "content": "x"}]})):
            status, _, b = request(d.port, "POST", path, body)
            assert status == 404 and json.loads(b)["error"]["code"] == "model_not_found", (model, b)
    for p in ["/v1/models/%2Fetc%2Fpasswd", "/v1/models/../../etc/passwd", "/../../etc/passwd",
              "/v1/models//etc/passwd", "/etc/passwd"]:
        status, _, b = request(d.port, "GET", p)
        assert status in (400, 404), p
        assert b"root:" not in b
    # the daemon opened no file for any of it
    assert files() == before
    assert request(d.port, "POST", "/v1/completions", {"prompt": "Once", "max_tokens": 1})[0] == 200


def leak_check_off():
    """LeakSanitizer cannot stop the world in a process that changed its uid
    (the kernel makes it non-dumpable, so it may not ptrace itself)."""
    a = os.environ.get("ASAN_OPTIONS")
    return {"ASAN_OPTIONS": a + ":detect_leaks=0"} if a else None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_user_drops_root_after_binding_and_loading(make_daemon):
    nobody = pwd.getpwnam("nobody")
    d = make_daemon("--user", "nobody", env=leak_check_off())
    pid = d.proc.pid
    assert "running as user nobody" in d.log
    uid = proc_status(pid, "Uid")
    gid = proc_status(pid, "Gid")
    groups = proc_status(pid, "Groups")
    assert uid == [str(nobody.pw_uid)] * 4, uid     # real, effective, saved, fs
    assert gid == [str(nobody.pw_gid)] * 4, gid
    assert "0" not in groups
    status, _, b = request(d.port, "POST", "/v1/completions", {"prompt": "Once", "max_tokens": 4})
    assert status == 200 and json.loads(b)["usage"]["completion_tokens"] == 4
    # every thread changed, not only the main one
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
            assert "Uid:\t%d\t%d\t%d\t%d" % ((nobody.pw_uid,) * 4) in f.read()
    assert d.stop() == 0


def test_user_errors():
    p = run_serve("--user", "no-such-user-x")
    assert p.returncode == 2 and "no user named 'no-such-user-x'" in p.stderr
    if os.geteuid() != 0:
        p = run_serve("--user", "root")
        assert p.returncode == 2 and "only root" in p.stderr
