"""The Kubernetes manifests and the compose file:
- every manifest validates against the Kubernetes 1.37 OpenAPI schemas
  (kubernetes-validate, strict: unknown fields are errors);
- the ConfigMap is configs/*.json byte for byte (gen-configmap.py --check);
- the pieces agree with each other and with the daemon: selectors, ports,
  probes on /ready and /health, the GPU request, SPARSED_* names that
  `sparsed serve --help` knows, SPARSED_CONFIG naming a ConfigMap key, a
  termination grace period covering preStop plus the daemon's effective
  --shutdown-timeout, the HPA metric that the prometheus-adapter rule makes;
- compose: two replicas whose service names and port are the nginx
  upstreams, stop_grace_period above the shutdown timeout.
Needs PyYAML and kubernetes-validate (tests/deploy/requirements.txt); exits
77 without them."""
import glob
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checks  # noqa: E402
import nginxconf  # noqa: E402

try:
    import yaml
    import kubernetes_validate
except ImportError as e:
    print("skipping: %s (pip install -r tests/deploy/requirements.txt)" % e)
    sys.exit(77)

ROOT = nginxconf.ROOT
BUILD = os.path.abspath(os.environ.get("SPARSED_BUILD", os.path.join(ROOT, "build")))
K8S = os.path.join(ROOT, "deploy", "k8s")
K8S_VERSION = "1.37.0"
NOT_MANIFESTS = {"kustomization.yaml", "prometheus-adapter-values.yaml"}
DEFAULT_SHUTDOWN = 30.0


def load(name):
    with open(os.path.join(K8S, name)) as f:
        return yaml.safe_load(f)


def manifests():
    kust = load("kustomization.yaml")
    return {name: load(name) for name in kust["resources"]}


def by_kind(kind):
    found = [d for d in manifests().values() if d["kind"] == kind]
    assert len(found) == 1, "expected one %s, found %d" % (kind, len(found))
    return found[0]


def daemon_env_names():
    """SPARSED_* names from `sparsed serve --help`; None without a binary."""
    binary = os.path.join(BUILD, "sparsed")
    if not os.access(binary, os.X_OK):
        return None
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True,
                         timeout=30).stdout
    names = set(re.findall(r"\[(SPARSED_[A-Z0-9_]+)", out))
    assert "SPARSED_SHUTDOWN_TIMEOUT" in names, "unexpected --help output:\n" + out
    return names


def secs(v):
    return float(v[:-1]) * {"s": 1, "m": 60, "h": 3600}[v[-1]] if str(v)[-1:] in "smh" else float(v)


def effective_shutdown(args, env, config_text):
    """The daemon's precedence: flag > env > config file > default."""
    for i, a in enumerate(args or []):
        if a.startswith("--shutdown-timeout="):
            return secs(a.split("=", 1)[1])
        if a == "--shutdown-timeout":
            return secs(args[i + 1])
    if "SPARSED_SHUTDOWN_TIMEOUT" in env:
        return secs(env["SPARSED_SHUTDOWN_TIMEOUT"])
    if config_text:
        cfg = json.loads(config_text)
        for k in ("shutdown_timeout", "shutdown-timeout"):
            if k in cfg:
                return secs(str(cfg[k]))
    return DEFAULT_SHUTDOWN


# ---- Kubernetes ---------------------------------------------------------------


def test_every_manifest_is_listed_and_validates():
    names = {os.path.basename(p) for p in glob.glob(os.path.join(K8S, "*.yaml"))}
    listed = set(load("kustomization.yaml")["resources"])
    assert names - NOT_MANIFESTS == listed, "kustomization.yaml lists %s, the folder has %s" % (
        sorted(listed), sorted(names - NOT_MANIFESTS))
    for name, doc in manifests().items():
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, True)
        except kubernetes_validate.ValidationError as e:
            raise AssertionError("%s: %s" % (name, str(e).splitlines()[0]))


def test_validator_rejects_a_bad_manifest():
    doc = load("deployment.yaml")
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    try:
        kubernetes_validate.validate(doc, K8S_VERSION, True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("an unknown field passed validation: the check proves nothing")


def test_configmap_is_configs_byte_for_byte():
    gen = os.path.join(K8S, "gen-configmap.py")
    p = subprocess.run([sys.executable, gen, "--check"], capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr + p.stdout
    data = load("configmap.yaml")["data"]
    files = {os.path.basename(f): open(f).read() for f in glob.glob(os.path.join(ROOT, "configs", "*.json"))}
    assert files and data == files, "ConfigMap keys %s vs configs %s" % (sorted(data), sorted(files))
    for text in data.values():
        json.loads(text)


def test_configmap_generator_round_trips_odd_text():
    import importlib.util
    spec = importlib.util.spec_from_file_location("gen_configmap", os.path.join(K8S, "gen-configmap.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for text in ("{}\n", "{}", "{}\n\n\n", "  {\n \"a\": 1}\n", "{\n\n  \"a\": \"x: y # z\"\n}\n"):
        doc = yaml.safe_load("data:\n  f: " + gen.block(text))
        assert doc["data"]["f"] == text, "%r came back as %r" % (text, doc["data"]["f"])


def test_deployment_probes_ports_and_gpu():
    dep = by_kind("Deployment")
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (c,) = pod["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert str(ports["http"]) == env.get("SPARSED_PORT", "8080"), (ports, env.get("SPARSED_PORT"))
    assert env.get("SPARSED_HOST") in ("0.0.0.0", "::"), "the daemon defaults to 127.0.0.1"
    probe = lambda k: c[k]["httpGet"]  # noqa: E731
    assert probe("readinessProbe")["path"] == "/ready"
    assert probe("livenessProbe")["path"] == "/health"
    assert probe("startupProbe")["path"] == "/health"
    for k in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert probe(k)["port"] in ("http", ports["http"]), k
    sp = c["startupProbe"]
    assert sp["periodSeconds"] * sp["failureThreshold"] >= 300, "startupProbe allows < 5 min to load"
    for k in ("requests", "limits"):
        assert str(c["resources"][k].get("nvidia.com/gpu")) == "1", "no nvidia.com/gpu " + k
    sc = pod["spec"]["securityContext"]
    assert sc["runAsNonRoot"] is True
    # The uid build-steps.sh gives the image's user.
    steps = open(os.path.join(ROOT, "deploy", "build-steps.sh")).read()
    assert "--uid %d " % sc["runAsUser"] in steps, "runAsUser is not the image's user"


def test_deployment_env_names_are_daemon_options():
    names = daemon_env_names()
    if names is None:
        raise checks.Skip("no built sparsed to ask for its options")
    (c,) = by_kind("Deployment")["spec"]["template"]["spec"]["containers"]
    unknown = [e["name"] for e in c["env"] if e["name"].startswith("SPARSED_") and e["name"] not in names]
    assert not unknown, "not options of sparsed serve: %s" % unknown


def test_config_file_comes_from_the_configmap():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    path = env["SPARSED_CONFIG"]
    cm = by_kind("ConfigMap")
    vols = {v["name"]: v for v in pod["volumes"]}
    mounts = [m for m in c["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, "SPARSED_CONFIG %s is on no mount" % path
    vol = vols[mounts[0]["name"]]
    assert vol.get("configMap", {}).get("name") == cm["metadata"]["name"], vol
    key = path[len(mounts[0]["mountPath"].rstrip("/")) + 1:]
    assert key in cm["data"], "%s is not a key of the ConfigMap (%s)" % (key, sorted(cm["data"]))


def test_grace_period_covers_prestop_and_drain():
    pod = by_kind("Deployment")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    cfg_key = env["SPARSED_CONFIG"].rsplit("/", 1)[1]
    shutdown = effective_shutdown(c.get("args"), env, by_kind("ConfigMap")["data"].get(cfg_key))
    cmd = c["lifecycle"]["preStop"]["exec"]["command"]
    assert cmd[0] == "sleep" and len(cmd) == 2, cmd
    pre = float(cmd[1])
    grace = pod["terminationGracePeriodSeconds"]
    # preStop, then SIGTERM and the drain, then a few seconds to flush.
    assert grace >= pre + shutdown + 5, "terminationGracePeriodSeconds %s < preStop %s + shutdown %s + 5" % (
        grace, pre, shutdown)
    assert pre >= 5, "preStop sleep %s s is too short for endpoint removal to propagate" % pre


def test_service_pdb_hpa_point_at_the_deployment():
    dep = by_kind("Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    svc = by_kind("Service")
    assert svc["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in c["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in names or p["targetPort"] in {q["containerPort"] for q in c["ports"]}
    pdb = by_kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"].get("maxUnavailable", 0) < dep["spec"]["replicas"] or \
        pdb["spec"].get("minAvailable", 0) >= 1
    hpa = by_kind("HorizontalPodAutoscaler")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot drain without an outage"


def test_hpa_metric_is_what_the_adapter_exposes():
    hpa = by_kind("HorizontalPodAutoscaler")
    (m,) = hpa["spec"]["metrics"]
    name = m["pods"]["metric"]["name"]
    rules = yaml.safe_load(open(os.path.join(K8S, "prometheus-adapter-values.yaml")))["rules"]["custom"]
    exposed = {r["name"]["as"]: r for r in rules}
    assert name in exposed, "HPA reads %s, the adapter exposes %s" % (name, sorted(exposed))
    assert "vllm:num_requests_waiting" in exposed[name]["seriesQuery"]
    # The daemon exports it (the load-balancer test reads it over HTTP too).
    src = open(os.path.join(ROOT, "scheduler", "metrics.c")).read()
    assert '"vllm:num_requests_waiting"' in src


# ---- compose ------------------------------------------------------------------


def expand(v):
    """${VAR:-default} -> default (the value with nothing set)."""
    return re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", str(v))


def test_compose_replicas_are_the_nginx_upstreams():
    comp = yaml.safe_load(open(os.path.join(ROOT, "deploy", "compose.yaml")))
    svcs = comp["services"]
    replicas = {k: v for k, v in svcs.items() if k != "nginx"}
    assert len(replicas) == 2, sorted(replicas)
    ups = [a for a, _ in nginxconf.upstream_params()]
    want = ["%s:%s" % (k, expand(v["environment"]["SPARSED_PORT"])) for k, v in sorted(replicas.items())]
    assert sorted(ups) == want, "nginx upstreams %s, compose replicas %s" % (ups, want)
    ng = svcs["nginx"]
    assert any(v.startswith("./nginx/sparsed.conf:/etc/nginx/conf.d/") for v in ng["volumes"])
    for k in replicas:
        assert ng["depends_on"][k]["condition"] == "service_healthy"
    names = daemon_env_names()
    for k, v in replicas.items():
        env = {e: expand(x) for e, x in v["environment"].items()}
        assert env["SPARSED_HOST"] == "0.0.0.0"
        if names is not None:
            bad = [e for e in env if e not in names]
            assert not bad, "not options of sparsed serve: %s" % bad
        cfg = env["SPARSED_CONFIG"]
        assert any(m.split(":")[1] == os.path.dirname(cfg) and m.startswith("../configs:")
                   for m in v["volumes"]), "SPARSED_CONFIG %s is not on the configs mount" % cfg
        local = os.path.join(ROOT, "configs", os.path.basename(cfg))
        assert os.path.exists(local), "default preset %s does not exist" % local
        shutdown = effective_shutdown([], env, open(local).read())
        assert secs(v["stop_grace_period"]) > shutdown, (v["stop_grace_period"], shutdown)
        context = os.path.normpath(os.path.join(ROOT, "deploy", v["build"]["context"]))
        df = os.path.join(context, expand(v["build"]["dockerfile"]))
        assert context == ROOT and os.path.exists(df), df


def test_compose_gpu_reservations_give_each_replica_its_own_card():
    # the commented GPU blocks, uncommented as the file tells: one card a
    # replica by device_ids (count: 1 would hand both the first GPU)
    text = open(os.path.join(ROOT, "deploy", "compose.yaml")).read()
    on = re.sub(r"^(\s+)# (\s*)((deploy|resources|reservations|devices):|- \{driver)", r"\1\2\3", text,
                flags=re.M)
    assert on != text, "no commented GPU reservation left to uncomment"
    svcs = yaml.safe_load(on)["services"]
    cards = []
    for k, v in svcs.items():
        if k == "nginx":
            continue
        devs = v["deploy"]["resources"]["reservations"]["devices"]
        assert len(devs) == 1 and "count" not in devs[0] and "gpu" in devs[0]["capabilities"], (k, devs)
        assert len(devs[0]["device_ids"]) == 1, (k, devs)
        cards.append(expand(devs[0]["device_ids"][0]))
    assert len(cards) == 2 and len(set(cards)) == 2, cards


if __name__ == "__main__":
    sys.exit(checks.run([
        test_every_manifest_is_listed_and_validates, test_validator_rejects_a_bad_manifest,
        test_compose_gpu_reservations_give_each_replica_its_own_card,
        test_configmap_is_configs_byte_for_byte, test_configmap_generator_round_trips_odd_text,
        test_deployment_probes_ports_and_gpu, test_deployment_env_names_are_daemon_options,
        test_config_file_comes_from_the_configmap, test_grace_period_covers_prestop_and_drain,
        test_service_pdb_hpa_point_at_the_deployment, test_hpa_metric_is_what_the_adapter_exposes,
        test_compose_replicas_are_the_nginx_upstreams]))
