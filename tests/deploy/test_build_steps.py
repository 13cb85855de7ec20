"""deploy/build-steps.sh, the steps both Dockerfiles RUN, with the CPU
options, as an image build would: the source tree copied without build
outputs (what the .dockerignore files leave), built into a staging prefix,
the source and build tree then removed (the runtime stage has neither), and
the smoke step run: the staged binary must find its embedded model, answer
/health, /ready and a completion, and exit 0 on SIGTERM.  Also: the
runtime packages the script installs own every shared library the binary
needs, and the Dockerfiles really call these steps."""
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checks  # noqa: E402

ROOT = os.path.abspath(os.environ.get("SPARSED_ROOT",
                                      os.path.join(os.path.dirname(__file__), "..", "..")))
SCRIPT = os.path.join(ROOT, "deploy", "build-steps.sh")
IGNORED = re.compile(r"^(\.git|\.venv|\.cache|\.whl|build[^/]*|builddir)(/|$)|(^|/)__pycache__/|\.pyc$")
# Always present in the base images (Debian slim, CUDA's Ubuntu).
BASE = {"libc6", "libgcc-s1", "libstdc++6"}

state = {}


def steps(*args, timeout=120):
    p = subprocess.run(["bash", SCRIPT] + list(args), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def source_files():
    """The build context: git's tracked and untracked-but-not-ignored files
    when this is a checkout, else everything; build outputs left out."""
    try:
        out = subprocess.run(["git", "-C", ROOT, "ls-files", "-z", "--cached", "--others",
                              "--exclude-standard"], capture_output=True, check=True,
                             timeout=60).stdout.decode()
        files = [f for f in out.split("\0") if f]
    except (OSError, subprocess.CalledProcessError):
        files = []
        for d, dirs, names in os.walk(ROOT):
            rel = os.path.relpath(d, ROOT)
            dirs[:] = [x for x in dirs if not IGNORED.search(os.path.normpath(os.path.join(rel, x)))]
            files += [os.path.normpath(os.path.join(rel, n)) for n in names]
    return [f for f in files if not IGNORED.search(f) and os.path.isfile(os.path.join(ROOT, f))]


def test_build_in_a_copy_of_the_tree():
    tmp = state["tmp"]
    src = os.path.join(tmp, "src")
    for f in source_files():
        dst = os.path.join(src, f)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, f), dst)
    rc, out, err = steps("build", src, os.path.join(tmp, "build"), os.path.join(tmp, "opt"), "cpu",
                         timeout=900)
    assert rc == 0, "build step failed:\n" + (out + err)[-4000:]
    state["bin"] = os.path.join(tmp, "opt", "bin", "sparsed")
    assert os.access(state["bin"], os.X_OK), "no staged binary"
    assert os.path.isfile(os.path.join(tmp, "opt", "models", "stories260K.gguf"))
    # The runtime stage has neither the source nor the build tree.
    shutil.rmtree(src)
    shutil.rmtree(os.path.join(tmp, "build"))


def test_smoke_step_starts_the_staged_binary():
    if "bin" not in state:
        raise AssertionError("nothing was built")
    rc, out, err = steps("smoke", os.path.join(state["tmp"], "opt"), timeout=120)
    assert rc == 0, "smoke step failed:\n" + (out + err)[-4000:]
    assert "stopped cleanly" in out, out


def test_cpu_binary_has_no_cuda():
    if "bin" not in state:
        raise AssertionError("nothing was built")
    needed = needed_libs(state["bin"])
    assert not [n for n in needed if "cuda" in n or "cublas" in n], needed


def needed_libs(path):
    out = subprocess.run(["readelf", "-d", path], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


def test_runtime_packages_own_every_needed_library():
    if "bin" not in state:
        raise AssertionError("nothing was built")
    if not shutil.which("dpkg-query"):
        raise checks.Skip("not a Debian system")
    rc, out, err = steps("packages", "runtime", "cpu")
    assert rc == 0, err
    pkgs = set(out.split())
    ldd = subprocess.run(["ldd", state["bin"]], capture_output=True, text=True, check=True).stdout
    paths = dict(re.findall(r"^\s*(\S+) => (/\S+)", ldd, re.M))
    # The dynamic loader is listed by its path alone.
    paths.update((os.path.basename(p), p) for p in re.findall(r"^\s*(/\S+) \(", ldd, re.M))
    missing = []
    for lib in needed_libs(state["bin"]):
        if lib not in paths:
            missing.append("%s (not found by ldd)" % lib)
            continue
        real = os.path.realpath(paths[lib])
        owner = None
        for p in (real, paths[lib]):
            q = subprocess.run(["dpkg-query", "-S", p], capture_output=True, text=True)
            if q.returncode == 0:
                owner = q.stdout.split(":")[0]
                break
        if owner is None:
            missing.append("%s (%s belongs to no package)" % (lib, real))
        elif owner not in pkgs | BASE:
            missing.append("%s (package %s)" % (lib, owner))
    assert not missing, "runtime packages %s miss: %s" % (sorted(pkgs), ", ".join(missing))
    for p in pkgs:
        q = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        assert "install ok installed" in q.stdout, "runtime package %s is not a known package here" % p


def test_dockerfiles_run_these_steps():
    for name, variant in (("Dockerfile", "cuda"), ("Dockerfile.cpu", "cpu")):
        text = open(os.path.join(ROOT, "deploy", name)).read()
        runs = " ".join(re.findall(r"^RUN (.*)$", text, re.M))
        for step in ("install-deps build %s" % variant, "install-deps runtime %s" % variant,
                     "build /src /tmp/build /opt/sparsed %s" % variant, "user sparsed"):
            assert "build-steps " + step in runs, "%s does not RUN build-steps %s" % (name, step)
        # Nothing built outside the script: every RUN is a build-steps call.
        for cmd in re.findall(r"^RUN (.*)$", text, re.M):
            for part in cmd.split("&&"):
                assert part.strip().startswith("build-steps "), "%s: RUN %s" % (name, cmd)
        assert "COPY deploy/build-steps.sh /usr/local/bin/build-steps" in text
        assert re.search(r"^USER sparsed", text, re.M), "%s runs as root" % name
        assert re.search(r"^HEALTHCHECK .*", text, re.M) and "/health" in text
        assert os.path.exists(os.path.join(ROOT, "deploy", name + ".dockerignore"))
    assert "build-steps smoke /opt/sparsed" in open(os.path.join(ROOT, "deploy", "Dockerfile.cpu")).read()


def test_bad_arguments_are_refused():
    rc, _, err = steps("build", "/nonexistent", "/tmp/x", "/tmp/y", "tpu")
    assert rc != 0 and "cpu or cuda" in err, err
    rc, _, err = steps("frobnicate")
    assert rc == 2 and "build-steps.sh build SRC" in err, (rc, err)


def main():
    state["tmp"] = tempfile.mkdtemp(prefix="sparsed-build-steps-")
    try:
        return checks.run([test_dockerfiles_run_these_steps, test_bad_arguments_are_refused,
                           test_build_in_a_copy_of_the_tree, test_smoke_step_starts_the_staged_binary,
                           test_cpu_binary_has_no_cuda, test_runtime_packages_own_every_needed_library])
    finally:
        shutil.rmtree(state["tmp"], ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
