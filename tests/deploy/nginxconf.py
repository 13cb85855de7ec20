"""Turns deploy/nginx/sparsed.conf into a runnable nginx configuration for the
tests: the upstream server addresses, the listen address and the access log
path are substituted, nothing else.  Each substitution must match exactly as
many times as expected, so the tests fail loudly when the shipped file
changes shape instead of silently testing something else.

The shipped file is an http{}-context include; main() wraps it in a main
configuration whose pid, logs and temp paths live in a private directory.
"""
import os
import re
import shutil

ROOT = os.path.abspath(os.environ.get("SPARSED_ROOT",
                                      os.path.join(os.path.dirname(__file__), "..", "..")))
CONF = os.path.join(ROOT, "deploy", "nginx", "sparsed.conf")

SERVER_RE = re.compile(r"^(\s*server\s+)(\S+)(\s[^;]*)?;", re.M)


def find_nginx():
    """The nginx binary: $NGINX, PATH, or Debian's /usr/sbin/nginx; None if absent."""
    cand = os.environ.get("NGINX") or shutil.which("nginx")
    if not cand and os.access("/usr/sbin/nginx", os.X_OK):
        cand = "/usr/sbin/nginx"
    return cand


def upstream_block(text):
    m = re.search(r"^upstream\s+sparsed\s*\{(.*?)^\}", text, re.M | re.S)
    if not m:
        raise ValueError("%s: no 'upstream sparsed { ... }' block" % CONF)
    return m


def upstream_params(text=None):
    """[(address, params)] of the shipped upstream servers."""
    text = open(CONF).read() if text is None else text
    body = upstream_block(text).group(1)
    return [(m.group(2), (m.group(3) or "").strip()) for m in SERVER_RE.finditer(body)]


def fail_timeout(text=None):
    """The fail_timeout (seconds) shared by every upstream server."""
    vals = set()
    for _, params in upstream_params(text):
        m = re.search(r"fail_timeout=(\d+)s?\b", params)
        vals.add(int(m.group(1)) if m else 10)   # nginx's default is 10 s
    if len(vals) != 1:
        raise ValueError("upstream servers disagree on fail_timeout: %s" % sorted(vals))
    return vals.pop()


def render(upstreams, listen, access_log, text=None):
    """The shipped server configuration with `upstreams` ["host:port", ...]
    (same count as shipped), `listen` ("127.0.0.1:PORT") and the access log
    path put in."""
    text = open(CONF).read() if text is None else text
    m = upstream_block(text)
    body = m.group(1)
    shipped = SERVER_RE.findall(body)
    if len(shipped) != len(upstreams):
        raise ValueError("%s has %d upstream servers, the test expects %d"
                         % (CONF, len(shipped), len(upstreams)))
    it = iter(upstreams)
    body = SERVER_RE.sub(lambda s: "%s%s%s;" % (s.group(1), next(it), s.group(3) or ""), body)
    text = text[:m.start(1)] + body + text[m.end(1):]

    text, n = re.subn(r"^(\s*listen\s+)[^;]+;", lambda s: s.group(1) + listen + ";", text,
                      flags=re.M)
    if n != 1:
        raise ValueError("%s: expected one listen directive, found %d" % (CONF, n))
    text, n = re.subn(r"^(\s*access_log\s+)(?!off\b)(\S+)(\s+\w+)?;",
                      lambda s: "%s%s%s;" % (s.group(1), access_log, s.group(3) or ""),
                      text, flags=re.M)
    if n != 1:
        raise ValueError("%s: expected one access_log with a path, found %d" % (CONF, n))
    return text


def main_conf(tmp, server_conf_path):
    """A main configuration that runs in the foreground with everything
    under `tmp` and includes the rendered server configuration."""
    t = lambda name: os.path.join(tmp, name)  # noqa: E731
    return """\
daemon off;
master_process on;
worker_processes 1;
pid {pid};
error_log {err} info;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {t}/client_body;
    proxy_temp_path {t}/proxy;
    fastcgi_temp_path {t}/fastcgi;
    uwsgi_temp_path {t}/uwsgi;
    scgi_temp_path {t}/scgi;
    include {conf};
}}
""".format(pid=t("nginx.pid"), err=t("error.log"), t=tmp, conf=server_conf_path)


def write(tmp, upstreams, listen, text=None):
    """Writes tmp/sparsed.conf and tmp/nginx.conf; returns the main config's
    path.  nginx's workers may run as another user when the test is root, so
    the directory must be traversable."""
    os.chmod(tmp, 0o755)
    server_conf = os.path.join(tmp, "sparsed.conf")
    with open(server_conf, "w") as f:
        f.write(render(upstreams, listen, os.path.join(tmp, "access.log"), text))
    main = os.path.join(tmp, "nginx.conf")
    with open(main, "w") as f:
        f.write(main_conf(tmp, server_conf))
    return main


def command(nginx, tmp, main, *extra):
    return [nginx, "-p", tmp + "/", "-c", main, "-e", os.path.join(tmp, "error.log")] + list(extra)
