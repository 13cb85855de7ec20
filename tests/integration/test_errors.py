"""Malformed and hostile requests: each gets the right status and an
OpenAI error object, and the daemon serves normally afterwards.  Also API
keys (flag, file, environment), body limits and a full queue."""
import json
import socket
import threading

import pytest
import requests

from conftest import MODEL_NAME
import schemas

KEY = "sk-test-0123456789"
AUTH = {"Authorization": "Bearer " + KEY}

C = "/v1/completions"
CH = "/v1/chat/completions"
MSG = [{"role": "user", "content": "hi"}]


def cmpl(**kw):
    b = {"prompt": "Once upon", "max_tokens": 4}
    b.update(kw)
    return b


def chat(**kw):
    b = {"messages": MSG, "max_tokens": 4}
    b.update(kw)
    return b


def drop(d, key):
    d = dict(d)
    del d[key]
    return d


# (name, method, path, body, headers, status, param, code)
# body: dict/list -> JSON; str/bytes -> sent as is; None -> no body
CASES = [
    ("bad json", "POST", C, '{"prompt": ', AUTH, 400, None, None),
    ("json array", "POST", C, [1, 2], AUTH, 400, None, None),
    ("json string", "POST", C, '"hello"', AUTH, 400, None, None),
    ("empty body", "POST", C, "", AUTH, 400, None, None),
    ("trailing garbage", "POST", C, '{"prompt": "a"} x', AUTH, 400, None, None),
    ("NaN literal", "POST", C, '{"prompt": "a", "max_tokens": NaN}', AUTH, 400, None, None),
    ("deep nesting", "POST", C, "[" * 5000 + "]" * 5000, AUTH, 400, None, None),
    ("missing prompt", "POST", C, {"max_tokens": 3}, AUTH, 400, "prompt", "missing_required_parameter"),
    ("prompt number", "POST", C, cmpl(prompt=5), AUTH, 400, "prompt", "invalid_type"),
    ("prompt empty list", "POST", C, cmpl(prompt=[]), AUTH, 400, "prompt", "invalid_value"),
    ("prompt mixed list", "POST", C, cmpl(prompt=["a", 1]), AUTH, 400, "prompt", "invalid_type"),
    ("prompt token out of range", "POST", C, cmpl(prompt=[1, 99999]), AUTH, 400, "prompt", "invalid_value"),
    ("prompt negative token", "POST", C, cmpl(prompt=[-1]), AUTH, 400, "prompt", "invalid_value"),
    ("prompt fractional token", "POST", C, cmpl(prompt=[1.5]), AUTH, 400, "prompt", "invalid_type"),
    ("prompt empty token list", "POST", C, cmpl(prompt=[[]]), AUTH, 400, "prompt", "invalid_value"),
    ("prompt invalid utf-8", "POST", C, b'{"prompt": "\xff\xfe", "max_tokens": 2}', AUTH, 400, "prompt", "invalid_value"),
    ("max_tokens string", "POST", C, cmpl(max_tokens="10"), AUTH, 400, "max_tokens", "invalid_type"),
    ("max_tokens zero", "POST", C, cmpl(max_tokens=0), AUTH, 400, "max_tokens", "integer_below_min_value"),
    ("max_tokens negative", "POST", C, cmpl(max_tokens=-5), AUTH, 400, "max_tokens", "integer_below_min_value"),
    ("max_tokens fractional", "POST", C, cmpl(max_tokens=1.5), AUTH, 400, "max_tokens", "invalid_type"),
    ("max_tokens huge literal", "POST", C, '{"prompt": "a", "max_tokens": 1e400}', AUTH, 400, "max_tokens", None),
    ("temperature too high", "POST", C, cmpl(temperature=3), AUTH, 400, "temperature", "decimal_above_max_value"),
    ("temperature negative", "POST", C, cmpl(temperature=-1), AUTH, 400, "temperature", "decimal_below_min_value"),
    ("temperature string", "POST", C, cmpl(temperature="hot"), AUTH, 400, "temperature", "invalid_type"),
    ("top_p above one", "POST", C, cmpl(top_p=1.5), AUTH, 400, "top_p", "decimal_above_max_value"),
    ("min_p negative", "POST", C, cmpl(min_p=-0.1), AUTH, 400, "min_p", "decimal_below_min_value"),
    ("top_k below -1", "POST", C, cmpl(top_k=-2), AUTH, 400, "top_k", "integer_below_min_value"),
    ("presence_penalty", "POST", C, cmpl(presence_penalty=5), AUTH, 400, "presence_penalty", "decimal_above_max_value"),
    ("frequency_penalty", "POST", C, cmpl(frequency_penalty=-3), AUTH, 400, "frequency_penalty", "decimal_below_min_value"),
    ("repetition_penalty zero", "POST", C, cmpl(repetition_penalty=0), AUTH, 400, "repetition_penalty", "decimal_below_min_value"),
    ("n zero", "POST", C, cmpl(n=0), AUTH, 400, "n", "integer_below_min_value"),
    ("n too large", "POST", C, cmpl(n=1000), AUTH, 400, "n", "integer_above_max_value"),
    ("too many choices", "POST", C, cmpl(prompt=["a", "b", "c"], n=128), AUTH, 400, "n", "invalid_value"),
    ("seed string", "POST", C, cmpl(seed="x"), AUTH, 400, "seed", "invalid_type"),
    ("stop number", "POST", C, cmpl(stop=5), AUTH, 400, "stop", "invalid_type"),
    ("stop too many", "POST", C, cmpl(stop=["s%d" % i for i in range(20)]), AUTH, 400, "stop", "array_above_max_length"),
    ("stop empty string", "POST", C, cmpl(stop=[""]), AUTH, 400, "stop", "invalid_value"),
    ("stop list of numbers", "POST", C, cmpl(stop=[1]), AUTH, 400, "stop", "invalid_type"),
    ("logprobs too many", "POST", C, cmpl(logprobs=50), AUTH, 400, "logprobs", "integer_above_max_value"),
    ("logprobs boolean (completions)", "POST", C, cmpl(logprobs=True), AUTH, 400, "logprobs", "invalid_type"),
    ("logit_bias list", "POST", C, cmpl(logit_bias=[1]), AUTH, 400, "logit_bias", "invalid_type"),
    ("logit_bias bad key", "POST", C, cmpl(logit_bias={"abc": 1}), AUTH, 400, "logit_bias", "invalid_value"),
    ("logit_bias bad value", "POST", C, cmpl(logit_bias={"5": 500}), AUTH, 400, "logit_bias", "invalid_value"),
    ("stream string", "POST", C, cmpl(stream="yes"), AUTH, 400, "stream", "invalid_type"),
    ("echo string", "POST", C, cmpl(echo="yes"), AUTH, 400, "echo", "invalid_type"),
    ("stream_options without stream", "POST", C, cmpl(stream_options={"include_usage": True}), AUTH, 400, "stream_options", "invalid_value"),
    ("user number", "POST", C, cmpl(user=5), AUTH, 400, "user", "invalid_type"),
    ("model number", "POST", C, cmpl(model=5), AUTH, 400, "model", "invalid_type"),
    ("unknown model", "POST", C, cmpl(model="gpt-17"), AUTH, 404, "model", "model_not_found"),
    ("prompt too long", "POST", C, cmpl(prompt=[5] * 3000), AUTH, 400, "prompt", "context_length_exceeded"),
    ("prompt + max_tokens too long", "POST", C, cmpl(prompt=[5] * 2000, max_tokens=100), AUTH, 400, "prompt", "context_length_exceeded"),
    ("chat missing messages", "POST", CH, {"max_tokens": 2}, AUTH, 400, "messages", "missing_required_parameter"),
    ("chat empty messages", "POST", CH, chat(messages=[]), AUTH, 400, "messages", "empty_array"),
    ("chat messages string", "POST", CH, chat(messages="hi"), AUTH, 400, "messages", "invalid_type"),
    ("chat message not object", "POST", CH, chat(messages=["hi"]), AUTH, 400, "messages[0]", "invalid_type"),
    ("chat bad role", "POST", CH, chat(messages=[{"role": "wizard", "content": "x"}]), AUTH, 400, "messages[0].role", "invalid_value"),
    ("chat missing role", "POST", CH, chat(messages=[{"content": "x"}]), AUTH, 400, "messages[0].role", "missing_required_parameter"),
    ("chat content number", "POST", CH, chat(messages=[{"role": "user", "content": 5}]), AUTH, 400, "messages[0].content", "invalid_type"),
    ("chat image part", "POST", CH, chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), AUTH, 400, "messages[0].content", "invalid_value"),
    ("chat top_logprobs without logprobs", "POST", CH, chat(top_logprobs=2), AUTH, 400, "top_logprobs", "invalid_value"),
    ("chat logprobs not bool", "POST", CH, chat(logprobs=3), AUTH, 400, "logprobs", "invalid_type"),
    ("chat too long", "POST", CH, chat(messages=[{"role": "user", "content": "hello " * 1500}]), AUTH, 400, "messages", "context_length_exceeded"),
    ("chat max_completion_tokens zero", "POST", CH, chat(max_completion_tokens=0), AUTH, 400, "max_completion_tokens", "integer_below_min_value"),
    ("chat tools", "POST", CH, chat(tools=[{"type": "function", "function": {"name": "f"}}]), AUTH, 400, "tools", "unsupported_parameter"),
    ("chat functions", "POST", CH, chat(functions=[{"name": "f"}]), AUTH, 400, "functions", "unsupported_parameter"),
    ("chat tool_choice required", "POST", CH, chat(tool_choice="required"), AUTH, 400, "tool_choice", "unsupported_value"),
    ("chat tool_choice object", "POST", CH, chat(tool_choice={"type": "function", "function": {"name": "f"}}), AUTH, 400, "tool_choice", "unsupported_value"),
    ("chat json mode", "POST", CH, chat(response_format={"type": "json_object"}), AUTH, 400, "response_format.type", "unsupported_value"),
    ("chat json schema", "POST", CH, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), AUTH, 400, "response_format.type", "unsupported_value"),
    ("response_format string", "POST", C, cmpl(response_format="json"), AUTH, 400, "response_format", "invalid_type"),
    ("suffix", "POST", C, cmpl(suffix="The end."), AUTH, 400, "suffix", "unsupported_parameter"),
    ("best_of above n", "POST", C, cmpl(best_of=3), AUTH, 400, "best_of", "unsupported_value"),
    ("best_of zero", "POST", C, cmpl(best_of=0), AUTH, 400, "best_of", "integer_below_min_value"),
    ("detokenize bad tokens", "POST", "/detokenize", {"tokens": "x"}, AUTH, 400, "tokens", "invalid_type"),
    ("detokenize out of range", "POST", "/detokenize", {"tokens": [100000]}, AUTH, 400, "tokens", "invalid_value"),
    ("tokenize nothing", "POST", "/tokenize", {}, AUTH, 400, "prompt", "missing_required_parameter"),
    ("unknown route", "GET", "/v1/nothing", None, AUTH, 404, None, "not_found"),
    ("unknown model id", "GET", "/v1/models/nope", None, AUTH, 404, "model", "model_not_found"),
    ("GET completions", "GET", C, None, AUTH, 405, None, "method_not_allowed"),
    ("PUT chat", "PUT", CH, chat(), AUTH, 405, None, "method_not_allowed"),
    ("POST models", "POST", "/v1/models", {}, AUTH, 405, None, "method_not_allowed"),
    ("DELETE health", "DELETE", "/health", None, {}, 405, None, "method_not_allowed"),
    ("no API key", "POST", C, cmpl(), {}, 401, None, "invalid_api_key"),
    ("wrong API key", "POST", C, cmpl(), {"Authorization": "Bearer sk-wrong"}, 401, None, "invalid_api_key"),
    ("key prefix only", "POST", C, cmpl(), {"Authorization": "Bearer " + KEY[:-1]}, 401, None, "invalid_api_key"),
    ("basic auth", "POST", C, cmpl(), {"Authorization": "Basic " + KEY}, 401, None, "invalid_api_key"),
    ("metrics need a key", "GET", "/metrics", None, {}, 401, None, "invalid_api_key"),
    ("body over the limit", "POST", C, cmpl(prompt="x" * 70000), AUTH, 413, None, "request_too_large"),
]


@pytest.fixture(scope="module")
def keyed(request):
    from conftest import Daemon, need_binary
    need_binary()
    d = Daemon("--api-key", KEY, "--body-limit", "65536")
    yield d
    assert d.stop() == 0


def send(d, method, path, body, headers):
    h = dict(headers)
    data = body
    if isinstance(body, (dict, list)):
        data = json.dumps(body)
        h["Content-Type"] = "application/json"
    return requests.request(method, d.url + path, data=data, headers=h, timeout=60)


def test_table_size():
    assert len(CASES) >= 40


@pytest.mark.parametrize("name,method,path,body,headers,status,param,code", CASES, ids=[c[0] for c in CASES])
def test_bad_request(keyed, name, method, path, body, headers, status, param, code):
    r = send(keyed, method, path, body, headers)
    assert r.status_code == status, (name, r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    e = r.json()
    schemas.check("ErrorResponse", e)
    err = e["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["param"] == param, err
    if code is not None:
        assert err["code"] == code, err
    if code == "context_length_exceeded":
        assert err["message"].startswith("This model's maximum context length is 2048 tokens. However, you requested ")
    if status == 401:
        assert KEY not in r.text
    if status == 405:
        assert r.headers.get("Allow")


def test_open_routes_and_recovery(keyed):
    assert requests.get(keyed.url + "/health", timeout=10).status_code == 200
    assert requests.get(keyed.url + "/ready", timeout=10).status_code == 200
    r = send(keyed, "POST", C, cmpl(max_tokens=5, temperature=0), AUTH)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    assert KEY not in keyed.log, "API keys must never be logged"
    # every failed request above left nothing behind
    m = keyed.metrics(headers=AUTH)
    assert m["sparsed_kv_pages_used"] == 0 and m["vllm:num_requests_running"] == 0


def test_fields_asking_nothing_more_pass(keyed):
    # what SDKs and frameworks send by default must not be refused
    for extra in ({"tools": []}, {"tool_choice": "none"}, {"tool_choice": "auto"},
                  {"response_format": {"type": "text"}}, {"tools": None, "response_format": None}):
        r = send(keyed, "POST", CH, chat(**extra), AUTH)
        assert r.status_code == 200, (extra, r.text)
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    for extra in ({"suffix": ""}, {"suffix": None}, {"best_of": 2, "n": 2}, {"best_of": 1}):
        r = send(keyed, "POST", C, cmpl(**extra), AUTH)
        assert r.status_code == 200, (extra, r.text)
        assert len(r.json()["choices"]) == extra.get("n", 1)


def test_chunked_body_over_limit(keyed):
    def gen():
        yield b'{"prompt": "'
        for _ in range(100):
            yield b"x" * 1000
        yield b'"}'
    r = requests.post(keyed.url + C, data=gen(), headers=dict(AUTH, **{"Content-Type": "application/json"}),
                      timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"


def test_garbage_on_the_socket(keyed):
    """Raw bytes that are not HTTP get an error or a closed socket, never a crash."""
    for payload in (b"\x00\x01\x02garbage\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                    b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{",
                    b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"):
        s = socket.create_connection(("127.0.0.1", keyed.port), timeout=10)
        try:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            while s.recv(65536):
                pass
        except OSError:
            pass
        finally:
            s.close()
    assert requests.get(keyed.url + "/health", timeout=10).status_code == 200


def test_key_file_and_env(make_daemon, tmp_path):
    f = tmp_path / "keys"
    f.write_text("# comment\nsk-one\n\n  sk-two  \n")
    d = make_daemon("--api-key-file", str(f))
    for k, ok in (("sk-one", 200), ("sk-two", 200), ("sk-three", 401)):
        r = requests.get(d.url + "/v1/models", headers={"Authorization": "Bearer " + k}, timeout=10)
        assert r.status_code == ok
    e = make_daemon(env={"SPARSED_API_KEY": "sk-env"})
    assert requests.get(e.url + "/v1/models", timeout=10).status_code == 401
    assert requests.get(e.url + "/v1/models", headers={"Authorization": "Bearer sk-env"},
                        timeout=10).status_code == 200
    assert "sk-env" not in e.log and "sk-one" not in d.log


def test_queue_full_503(make_daemon):
    d = make_daemon("--max-running", "1", "--max-queue", "1")
    body = {"prompt": "Once", "max_tokens": 600, "ignore_eos": True, "temperature": 0}
    results = []

    def run():
        results.append(requests.post(d.url + C, json=body, timeout=300))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(r.status_code for r in results)
    assert 200 in codes and 503 in codes, codes
    for r in results:
        if r.status_code == 503:
            assert r.headers.get("Retry-After")
            schemas.check("ErrorResponse", r.json())
            assert r.json()["error"]["code"] == "queue_full"
    assert requests.get(d.url + "/v1/models", timeout=10).json()["data"][0]["id"] == MODEL_NAME


# ---- request heads over --header-limit ------------------------------------

def check_error(r, status, code):
    """r is an OpenAI error object with this status and code, sent as JSON."""
    assert r.status_code == status, (r.status_code, r.headers, r.text[:200])
    assert r.headers.get("Content-Type") == "application/json", r.headers
    e = r.json()
    schemas.check("ErrorResponse", e)
    assert set(e["error"]) == {"message", "type", "param", "code"}
    assert e["error"]["code"] == code and e["error"]["type"] == "invalid_request_error"
    assert e["error"]["param"] is None and "8192 bytes" in e["error"]["message"]


def test_oversized_head_gets_json_431_and_414(make_daemon):
    """A request line plus headers over --header-limit is refused with our JSON
    error, not libmicrohttpd's HTML page, whatever the route and before the
    API key is looked at; the daemon serves normally afterwards."""
    d = make_daemon("--header-limit", "8K", "--api-key", KEY)
    code = "request_headers_too_large"
    # one big header (an oversized cookie or token), on every kind of route
    big = {"X-Big": "a" * 9000}
    check_error(requests.get(d.url + "/health", headers=big, timeout=30), 431, code)
    check_error(requests.get(d.url + "/v1/models", headers=dict(AUTH, **big), timeout=30), 431, code)
    check_error(requests.get(d.url + "/v1/models", headers=big, timeout=30), 431, code)   # not 401
    check_error(requests.get(d.url + "/no/such/route", headers=big, timeout=30), 431, code)
    r = send(d, "POST", C, cmpl(), dict(AUTH, **big))
    check_error(r, 431, code)
    # three times the limit in one header, and many ordinary header lines
    check_error(requests.get(d.url + "/health", headers={"X-Big": "b" * 24000}, timeout=30), 431, code)
    many = {"X-Forwarded-Item-%03d" % i: "v" * 40 for i in range(150)}   # about 10 KB
    check_error(requests.get(d.url + "/health", headers=many, timeout=30), 431, code)
    # a request line over the limit by itself: 414
    r = requests.get(d.url + "/v1/models?q=" + "q" * 9000, headers=AUTH, timeout=30)
    check_error(r, 414, "uri_too_long")
    # just under the limit: served
    assert requests.get(d.url + "/health", headers={"X-Fine": "c" * 7000}, timeout=30).status_code == 200
    r = send(d, "POST", C, cmpl(max_tokens=3, temperature=0), dict(AUTH, **{"X-Fine": "c" * 7000}))
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    # the OpenAI SDK sees a status error carrying our code
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=d.url + "/v1", api_key=KEY, max_retries=0, timeout=60,
                           default_headers={"X-Big": "d" * 12000})
    with pytest.raises(openai.APIStatusError) as ei:
        client.completions.create(model=MODEL_NAME, prompt="Once", max_tokens=2)
    assert ei.value.status_code == 431 and ei.value.code == code, ei.value
    # and the daemon goes on serving; the refusals were counted as 4xx
    ok = openai.OpenAI(base_url=d.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    out = ok.completions.create(model=MODEL_NAME, prompt="Once", max_tokens=3, temperature=0)
    assert out.usage.completion_tokens >= 1
    m = d.metrics(headers=AUTH)
    assert m['sparsed_http_responses_total{code="4xx"}'] == 9
    assert m["sparsed_kv_pages_used"] == 0


def test_errors_libmicrohttpd_answers_itself_are_logged(make_daemon):
    """What never reaches our handler with its headers parsed stays
    libmicrohttpd's reply (server/README.md lists these); one that it sends
    after our handler has the request (a malformed chunked body) is still
    counted and logged with its real status, and nothing is left behind."""
    d = make_daemon()
    for payload, status in ((b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
                            (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: close\r\n\r\n" + b"f" * 24 + b"\r\n{}\r\n0\r\n\r\n", 413)):
        s = socket.create_connection(("127.0.0.1", d.port), timeout=30)
        try:
            s.sendall(payload)
            got = b""
            while True:
                k = s.recv(65536)
                if not k:
                    break
                got += k
        finally:
            s.close()
        assert got.startswith(b"HTTP/1.1 %d " % status), got[:200]
    assert requests.get(d.url + "/health", timeout=10).status_code == 200
    m = d.metrics()
    assert m['sparsed_http_responses_total{code="4xx"}'] == 2
    assert d.stop() == 0
    logged = [l for l in d.lines if "access id=cmpl-" in l]
    assert len(logged) == 2 and "status=400 " in logged[0] and "status=413 " in logged[1], logged
