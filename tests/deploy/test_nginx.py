"""deploy/nginx/sparsed.conf: `nginx -t` accepts it (upstream names that
only resolve inside compose are pointed at loopback, nothing else changes),
a broken copy is rejected (so the check can fail), and the directives the
load-balancing behaviour depends on are there."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checks  # noqa: E402
import nginxconf  # noqa: E402

NGINX = nginxconf.find_nginx()
TEXT = open(nginxconf.CONF).read()
# Directives outside comments.
CODE = "\n".join(l.split("#", 1)[0] for l in TEXT.splitlines())


def nginx_t(text):
    if not NGINX:
        raise checks.Skip("nginx is not installed (Debian: nginx-light)")
    tmp = tempfile.mkdtemp(prefix="sparsed-nginx-t-")
    try:
        shipped = [a for a, _ in nginxconf.upstream_params(text)]
        # Same ports as shipped; only the compose service names become loopback.
        ups = ["127.0.0.1:" + a.rsplit(":", 1)[1] for a in shipped]
        main = nginxconf.write(tmp, ups, "127.0.0.1:8080", text)
        p = subprocess.run(nginxconf.command(NGINX, tmp, main, "-t", "-q"),
                           capture_output=True, text=True, timeout=30)
        return p.returncode, p.stderr
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def directive(name):
    """Arguments of every `name ...;` outside comments."""
    return [m.group(1).split() for m in re.finditer(r"^\s*%s\s+([^;]*);" % re.escape(name), CODE, re.M)]


def test_nginx_t_accepts_shipped_config():
    rc, err = nginx_t(TEXT)
    assert rc == 0, "nginx -t rejected deploy/nginx/sparsed.conf:\n" + err


def test_nginx_t_rejects_broken_config():
    rc, err = nginx_t(TEXT.replace("least_conn;", "least_conn bogus;", 1))
    assert rc != 0, "nginx -t accepted a broken copy: the check proves nothing"
    assert "least_conn" in err, err


def test_two_upstreams_with_passive_health_checks():
    ups = nginxconf.upstream_params(TEXT)
    assert len(ups) == 2, ups
    for addr, params in ups:
        assert re.search(r"\bmax_fails=[1-9]", params), "%s has no max_fails" % addr
        assert "fail_timeout=" in params, "%s has no fail_timeout" % addr
    assert nginxconf.fail_timeout(TEXT) >= 1
    body = nginxconf.upstream_block(TEXT).group(1)
    assert re.search(r"^\s*least_conn;", body, re.M), "upstream is not least_conn"
    assert re.search(r"^\s*zone\s", body, re.M), "no shared zone: workers would not share failures"
    assert re.search(r"^\s*keepalive\s+\d+;", body, re.M)


def test_retries_only_before_a_response():
    nu = directive("proxy_next_upstream")
    assert len(nu) == 1, nu
    nu = set(nu[0])
    assert {"error", "timeout", "http_503", "non_idempotent"} <= nu, nu
    # A 504 is the daemon's request timeout and a 500 may be deterministic:
    # resending either only doubles the damage.
    assert not nu & {"http_500", "http_502", "http_504", "http_429", "off"}, nu
    assert directive("proxy_next_upstream_timeout"), "retry window unbounded"
    assert directive("proxy_next_upstream_tries"), "retry count unbounded"
    # The body must be buffered for a retry to be able to resend it.
    assert ["off"] not in directive("proxy_request_buffering")


def test_streams_flow_unbuffered():
    assert directive("proxy_buffering") == [["off"]]
    assert directive("proxy_http_version") == [["1.1"]]
    secs = lambda v: int(v[:-1]) * {"s": 1, "m": 60, "h": 3600}[v[-1]] if v[-1] in "smh" else int(v)  # noqa: E731
    rt = directive("proxy_read_timeout")
    assert len(rt) == 1 and secs(rt[0][0]) > 600, \
        "proxy_read_timeout %s must exceed the daemon's --request-timeout (600 s)" % rt


if __name__ == "__main__":
    sys.exit(checks.run([test_nginx_t_accepts_shipped_config, test_nginx_t_rejects_broken_config,
                         test_two_upstreams_with_passive_health_checks,
                         test_retries_only_before_a_response, test_streams_flow_unbuffered]))
