"""Slow and abusive clients against the real daemon, over real sockets:
slow-header (slowloris) clients, connection caps per client address and
in all, idle timeouts, header and body size limits, and stalled SSE
readers.  Each test is bounded: every wait has a deadline."""
import json
import threading
import time

from conftest import (closed_by_peer, connect, make_daemon, read_response, request,  # noqa: F401
                      sse_events, still_open)

CMPL = {"prompt": "Once upon a time", "max_tokens": 4, "temperature": 0}


def metric(d, name):
    return d.metrics().get(name, 0.0)


def retry_status(port, method, path, body=None, src="127.0.0.1", within=10):
    """Status of a request retried while the connection is refused (a slot
    frees a moment after its socket closes)."""
    end = time.time() + within
    while True:
        status = request(port, method, path, body, src=src)[0]
        if status or time.time() > end:
            return status
        time.sleep(0.2)


def test_slowloris_cannot_starve_other_clients(make_daemon):
    d = make_daemon("--max-connections-per-client", "4", "--header-timeout", "3",
                    "--connection-timeout", "30")
    # four connections from one address dribble a request head, a byte at a time
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"z" * 60
    slow = [connect(d.port, "127.0.0.1") for _ in range(4)]
    stop = threading.Event()

    def dribble():
        for i in range(len(head)):
            for s in slow:
                s.send(head[i:i + 1])
            if stop.wait(0.5):
                return

    t = threading.Thread(target=dribble)
    t.start()
    try:
        time.sleep(0.5)
        # a fifth connection from that address is refused: closed at once
        extra = connect(d.port, "127.0.0.1")
        assert closed_by_peer(extra, 10)
        extra.close()
        # other addresses are served meanwhile, generation included
        for src in ("127.0.0.2", "127.0.0.3"):
            status, _, body = request(d.port, "GET", "/health", src=src)
            assert status == 200, body
            status, _, body = request(d.port, "POST", "/v1/completions", CMPL, src=src)
            assert status == 200 and json.loads(body)["usage"]["completion_tokens"] == 4, body
        # a byte every half second keeps resetting the idle timer
        time.sleep(4)
        assert all(still_open(s) for s in slow)
    finally:
        stop.set()
        t.join()
    # silent now: the header timeout closes every one of them
    for s in slow:
        assert closed_by_peer(s, 15)
        s.close()
    # and the address may connect again (once the daemon has reaped them)
    assert retry_status(d.port, "GET", "/health", src="127.0.0.1") == 200


def test_global_connection_cap_and_recovery(make_daemon):
    d = make_daemon("--max-connections", "6", "--http-threads", "1",
                    "--max-connections-per-client", "0", "--header-timeout", "2")
    # six idle connections, each from its own address, fill the server
    idle = [connect(d.port, "127.0.0.%d" % (10 + i)) for i in range(6)]
    time.sleep(0.3)
    assert all(still_open(s) for s in idle)
    late = connect(d.port, "127.0.0.30")
    assert closed_by_peer(late, 10), "a seventh connection was accepted"
    late.close()
    # idle connections that never send a request go at the header timeout
    for s in idle:
        assert closed_by_peer(s, 15)
        s.close()
    assert retry_status(d.port, "POST", "/v1/completions", CMPL, src="127.0.0.30") == 200


def test_idle_connection_and_stalled_body_time_out(make_daemon):
    d = make_daemon("--connection-timeout", "2", "--header-timeout", "2")
    # keep-alive: a finished request, then silence
    s = connect(d.port)
    s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    s.settimeout(10)
    assert s.recv(4096).startswith(b"HTTP/1.1 200")
    assert closed_by_peer(s, 15)
    s.close()
    # a body that stops halfway
    s = connect(d.port)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: 200\r\n\r\n{\"prompt\": \"Once")
    assert closed_by_peer(s, 15)
    s.close()
    assert request(d.port, "GET", "/health")[0] == 200


def test_header_and_body_size_limits(make_daemon):
    d = make_daemon("--header-limit", "8K", "--body-limit", "4K")
    # over the limit: our JSON error, not libmicrohttpd's HTML page
    status, headers, body = request(d.port, "GET", "/health", headers={"X-Big": "a" * 9000})
    assert status == 431 and headers.get("content-type") == "application/json", (headers, body)
    assert json.loads(body)["error"]["code"] == "request_headers_too_large"
    status, headers, body = request(d.port, "GET", "/health?" + "q" * 9000)
    assert status == 414 and headers.get("content-type") == "application/json", (headers, body)
    assert json.loads(body)["error"]["code"] == "uri_too_long"
    # within the limit: fine
    assert request(d.port, "GET", "/health", headers={"X-Fine": "a" * 2000})[0] == 200
    big = {"prompt": "x" * 5000, "max_tokens": 1}
    status, _, body = request(d.port, "POST", "/v1/completions", big)
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    # chunked, no length up front: cut off when it passes the limit
    s = connect(d.port)
    data = json.dumps(big).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    for i in range(0, len(data), 1000):
        part = data[i:i + 1000]
        s.sendall(b"%x\r\n%s\r\n" % (len(part), part))
    s.sendall(b"0\r\n\r\n")
    status, _, body = read_response(s)
    s.close()
    assert status == 413, body
    assert request(d.port, "POST", "/v1/completions", CMPL)[0] == 200




def story_tokens():
    """Tokens per choice for a stream of twice what the kernel may buffer
    for one socket (tcp_wmem's maximum; 4 MiB by default) at 1.5 KB per
    token, over 8 choices."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as f:
            wmem = int(f.read().split()[2])
    except (OSError, ValueError, IndexError):
        wmem = 4 << 20
    return max(200, min(2000, 2 * wmem // 1500 // 8))


# A stream far bigger than every socket buffer on the way: chat chunks with
# 20 alternatives each (about 1.6 KB per token).
STORY = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": story_tokens(),
         "n": 8, "stream": True, "ignore_eos": True, "logprobs": True, "top_logprobs": 20,
         "temperature": 0}
TOTAL = STORY["n"] * STORY["max_tokens"]


def open_stalled_stream(d):
    """Starts STORY on a socket with a tiny receive buffer that is not read."""
    s = connect(d.port, rcvbuf=4096, timeout=120)
    body = json.dumps(STORY).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    return s


def wait_generation_still(d, deadline=90):
    """Waits until no token has been generated for a second; the total."""
    prev, end = -1.0, time.time() + deadline
    while time.time() < end:
        v = metric(d, "vllm:generation_tokens_total")
        if v == prev:
            return v
        prev = v
        time.sleep(1.0)
    raise AssertionError("generation never paused")


def test_stalled_sse_reader_is_paused_and_others_go_on(make_daemon):
    d = make_daemon("--max-running", "8", "--connection-timeout", "120")
    s = open_stalled_stream(d)
    try:
        paused_at = wait_generation_still(d)
        # held back well before the end, and still in flight
        assert 0 < paused_at < TOTAL
        m = d.metrics()
        assert m["vllm:num_requests_running"] + m["vllm:num_requests_waiting"] == 1
        # its running slots are not lost to it: another request is served
        status, _, body = request(d.port, "POST", "/v1/completions", CMPL, timeout=60)
        assert status == 200, body
        assert metric(d, "vllm:generation_tokens_total") == paused_at + 4
        # the reader comes back: the whole stream, every token, then [DONE]
        status, headers, body = read_response(s, timeout=120)
    finally:
        s.close()
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [b for b in body.split(b"\n\n") if b]
    assert events[-1] == b"data: [DONE]"
    n = [0] * STORY["n"]
    for e in events[:-1]:
        if e.startswith(b":"):
            continue
        ch = json.loads(e[6:])["choices"][0]
        n[ch["index"]] += len(ch["logprobs"]["content"]) if ch["logprobs"] else 0
    assert n == [STORY["max_tokens"]] * STORY["n"]
    assert metric(d, "vllm:generation_tokens_total") == TOTAL + 4
    m = d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0)
    assert metric(d, "vllm:num_requests_running") == 0


def test_stalled_sse_reader_is_cut_off_by_the_idle_timeout(make_daemon):
    d = make_daemon("--connection-timeout", "2")
    s = open_stalled_stream(d)
    try:
        wait_generation_still(d)
        # nothing moves on the socket for 2 s: the daemon hangs up and the
        # request is cancelled, its pages freed
        d.wait_metric("vllm:num_requests_running", lambda v: v == 0, timeout=30)
        d.wait_metric("sparsed_kv_pages_used", lambda v: v == 0, timeout=10)
        aborted = sum(v for k, v in d.metrics().items() if 'finished_reason="abort"' in k)
        assert aborted == 1
    finally:
        s.close()
    assert request(d.port, "POST", "/v1/completions", CMPL)[0] == 200
