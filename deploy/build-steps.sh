#!/usr/bin/env bash
# The container images' build steps, in one script that both Dockerfiles RUN
# and that CI runs too (tests/deploy/test_build_steps.sh, CPU variant), so the
# images cannot drift from what CI checks.  CI has no Docker engine.
#
#   build-steps.sh packages build|runtime cpu|cuda   print the apt packages
#   build-steps.sh install-deps build|runtime cpu|cuda
#                                                    apt-get install them (image builds)
#   build-steps.sh build SRC BUILDDIR PREFIX cpu|cuda
#                                                    release build of the sparsed binary,
#                                                    staged as PREFIX/bin/sparsed and
#                                                    PREFIX/models/ (the embedded default model)
#   build-steps.sh smoke PREFIX                      start PREFIX/bin/sparsed on a free
#                                                    loopback port with the embedded model:
#                                                    /health, /ready, one completion,
#                                                    SIGTERM, exit status 0
#   build-steps.sh user NAME                         create the non-root runtime user
#
# Package names differ between Debian releases and Ubuntu (libuv1 vs
# libuv1t64); where apt's lists are present, the first alternative apt knows
# is taken.
set -euo pipefail

die() { echo "build-steps.sh: $*" >&2; exit 1; }

# First of the given names that apt knows; the first one without apt lists.
pick() {
    if command -v apt-cache >/dev/null 2>&1; then
        local p
        for p in "$@"; do
            if apt-cache show --no-all-versions "$p" >/dev/null 2>&1; then
                echo "$p"
                return
            fi
        done
    fi
    echo "$1"
}

packages() {
    local what=$1 variant=$2
    case "$variant" in cpu|cuda) ;; *) die "variant must be cpu or cuda, not '$variant'" ;; esac
    case "$what" in
    build)
        # The CUDA devel image brings nvcc and cuBLAS; meson finds nvcc on PATH.
        echo build-essential meson ninja-build pkg-config \
             libmicrohttpd-dev libcjson-dev libuv1-dev
        ;;
    runtime)
        # curl: the HEALTHCHECK and the smoke step.  The CUDA runtime image
        # brings cuBLAS itself.
        echo "$(pick libmicrohttpd12t64 libmicrohttpd12)" "$(pick libcjson1)" \
             "$(pick libuv1t64 libuv1)" curl ca-certificates
        ;;
    *) die "packages: expected build or runtime, not '$what'" ;;
    esac
}

install_deps() {
    [ "$(id -u)" -eq 0 ] || die "install-deps must run as root (it is an image build step)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # shellcheck disable=SC2046
    apt-get install -y -qq --no-install-recommends $(packages "$1" "$2")
    rm -rf /var/lib/apt/lists/*
}

build() {
    local src=$1 bdir=$2 prefix=$3 variant=$4 cuda
    case "$variant" in
    cpu) cuda=disabled ;;
    cuda) cuda=enabled ;;
    *) die "variant must be cpu or cuda, not '$variant'" ;;
    esac
    [ -f "$src/meson.build" ] || die "no meson.build in $src"
    [ -f "$src/models/stories260K.gguf" ] || die "no models/stories260K.gguf in $src"
    meson setup "$bdir" "$src" --buildtype=release -Dtests=false -Dcuda="$cuda"
    # Only the daemon: the tools and benchmarks are not part of the image.
    meson compile -C "$bdir" sparsed
    install -D -m 0755 "$bdir/sparsed" "$prefix/bin/sparsed"
    install -D -m 0644 "$src/models/stories260K.gguf" "$prefix/models/stories260K.gguf"
    install -D -m 0644 "$src/models/PROVENANCE.md" "$prefix/models/PROVENANCE.md"
    if [ -d "$src/configs" ]; then
        install -d "$prefix/configs"
        find "$src/configs" -maxdepth 1 -name '*.json' -exec install -m 0644 {} "$prefix/configs/" \;
    fi
}

smoke() {
    local prefix=$1 bin=$1/bin/sparsed
    [ -x "$bin" ] || die "no executable $bin"
    local dir log pid port="" url i
    dir=$(mktemp -d)
    log=$dir/serve.log
    # Outside any source tree and with no SPARSED_* settings, so the binary
    # must find the embedded model beside itself.
    (cd "$dir" && exec env -i PATH="$PATH" \
        "$bin" serve --host 127.0.0.1 --port 0 --threads 1 --kv-memory 64M) \
        >"$log" 2>&1 &
    pid=$!
    # shellcheck disable=SC2064
    trap "kill -9 $pid 2>/dev/null || true; rm -rf '$dir'" EXIT
    for i in $(seq 1 300); do
        port=$(sed -n 's/.*listening on http:\/\/[^ ]*:\([0-9][0-9]*\).*/\1/p' "$log" | head -n 1)
        [ -n "$port" ] && break
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "sparsed exited before listening"; }
        sleep 0.1
    done
    [ -n "$port" ] || { cat "$log" >&2; die "sparsed did not listen within 30 s"; }
    # The model the daemon chose must be the one staged beside the binary.
    local model want
    model=$(sed -n 's/^sparsed: model \(.*\) (.*/\1/p' "$log" | head -n 1)
    want=$(readlink -f "$prefix/models/stories260K.gguf")
    case "$model" in /*) ;; *) model=$dir/$model ;; esac
    [ "$(readlink -f "$model")" = "$want" ] || die "sparsed loaded '$model', not the embedded $want"
    url=http://127.0.0.1:$port
    curl -fsS --max-time 10 "$url/health" >/dev/null || die "/health failed"
    curl -fsS --max-time 10 "$url/ready" >/dev/null || die "/ready failed"
    local out
    out=$(curl -fsS --max-time 30 "$url/v1/completions" -H 'Content-Type: application/json' \
        -d '{"prompt":"Once upon a time","max_tokens":8}') || die "completion failed"
    case "$out" in *'"text"'*) ;; *) die "unexpected completion: $out" ;; esac
    kill -TERM "$pid"
    local rc=0
    wait "$pid" || rc=$?
    trap - EXIT
    if [ "$rc" -ne 0 ]; then
        cat "$log" >&2
        rm -rf "$dir"
        die "sparsed exited with status $rc after SIGTERM"
    fi
    rm -rf "$dir"
    echo "smoke: $bin served a completion on port $port and stopped cleanly"
}

add_user() {
    local name=$1
    [ "$(id -u)" -eq 0 ] || die "user must run as root"
    id "$name" >/dev/null 2>&1 && return 0
    # A fixed uid lets Kubernetes check runAsNonRoot and match volume owners.
    useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin "$name"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
packages)     [ $# -eq 2 ] || die "usage: packages build|runtime cpu|cuda"; packages "$@" ;;
install-deps) [ $# -eq 2 ] || die "usage: install-deps build|runtime cpu|cuda"; install_deps "$@" ;;
build)        [ $# -eq 4 ] || die "usage: build SRC BUILDDIR PREFIX cpu|cuda"; build "$@" ;;
smoke)        [ $# -eq 1 ] || die "usage: smoke PREFIX"; smoke "$@" ;;
user)         [ $# -eq 1 ] || die "usage: user NAME"; add_user "$@" ;;
*) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
