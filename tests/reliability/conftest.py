"""Helpers for the reliability tests: the integration suite's Daemon and
fixtures (one real `sparsed serve` per test on a free loopback port), plus
raw sockets from chosen loopback source addresses (127.0.0.0/8 is all
local on Linux, so each address is a different client to the daemon)."""
import importlib.util
import json
import os
import socket
import time

_here = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location(
    "integration_conftest", os.path.join(_here, "..", "integration", "conftest.py"))
_itest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_itest)

Daemon = _itest.Daemon
BINARY_PATH = _itest.BINARY
ROOT = _itest.ROOT
make_daemon = _itest.make_daemon   # a fixture: daemons stopped at the end, exit 0 checked
sse_events = _itest.sse_events


def connect(port, src="127.0.0.1", rcvbuf=None, timeout=10):
    """A TCP connection to the daemon from loopback address src."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def closed_by_peer(s, timeout):
    """Whether the daemon closes s (EOF or reset) within timeout seconds;
    whatever it sends first is read and dropped."""
    deadline = time.time() + timeout
    while True:
        left = deadline - time.time()
        if left <= 0:
            return False
        s.settimeout(left)
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False


def still_open(s):
    """Open, with nothing to read right now."""
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) not in (b"",)  # data waiting: open too
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        s.setblocking(True)


def read_response(s, timeout=60):
    """Reads one HTTP/1.1 response (Connection: close) to EOF: (status,
    headers dict with lower-case names, body bytes with chunking undone)."""
    s.settimeout(timeout)
    buf = bytearray()
    while True:
        try:
            k = s.recv(1 << 20)
        except ConnectionResetError:
            break
        if not k:
            break
        buf += k
    head, _, body = bytes(buf).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/1.") else 0
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("transfer-encoding") == "chunked":
        out, i = bytearray(), 0
        while i < len(body):
            j = body.index(b"\r\n", i)
            n = int(body[i:j].split(b";")[0], 16)
            if n == 0:
                break
            out += body[j + 2:j + 2 + n]
            i = j + 2 + n + 2
        body = bytes(out)
    return status, headers, body


def request(port, method, path, body=None, src="127.0.0.1", headers=None, timeout=60):
    """One request on a fresh connection from src: (status, headers, body)."""
    data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    h = {"Host": "127.0.0.1", "Connection": "close"}
    if body is not None:
        h["Content-Type"] = "application/json"
        h["Content-Length"] = str(len(data))
    h.update(headers or {})
    s = connect(port, src, timeout=timeout)
    try:
        s.sendall(("%s %s HTTP/1.1\r\n" % (method, path)).encode() +
                  "".join("%s: %s\r\n" % kv for kv in h.items()).encode() + b"\r\n" + data)
        return read_response(s, timeout)
    finally:
        s.close()


def proc_status(pid, field):
    """A line of /proc/PID/status, e.g. VmRSS (kB) or Uid (a list)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return line.split(":", 1)[1].split()
    return None


def open_files(pid):
    """Targets of the daemon's file descriptors."""
    out = []
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            out.append(os.readlink(os.path.join(d, fd)))
        except OSError:
            pass
    return out
