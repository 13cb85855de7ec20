#!/usr/bin/env bash
# Installs what building and testing sparsed needs on Debian: system
# packages, a Python venv for the integration tests (.venv), and the
# SmolLM2 model into .cache/models; with --tests also llama.cpp for the
# conformance suite (minutes to compile the first time, so not for a user
# who only runs the daemon).  Idempotent.
#     bash tools/deps.sh [--tests]
set -euo pipefail
cd "$(dirname "$0")/.."
tests=0
case "${1:-}" in
    --tests) tests=1 ;;
    "") ;;
    *) echo "usage: tools/deps.sh [--tests]" >&2; exit 2 ;;
esac

pkgs=(build-essential meson ninja-build pkg-config libmicrohttpd-dev libcjson-dev
      libuv1-dev check clang libclang-rt-14-dev python3 python3-venv curl nginx-light)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if [ -f tests/integration/requirements.txt ] &&
   ! cmp -s tests/integration/requirements.txt .venv/.requirements 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check -r tests/integration/requirements.txt
    cp tests/integration/requirements.txt .venv/.requirements
fi
if [ -f tests/deploy/requirements.txt ] &&
   ! cmp -s tests/deploy/requirements.txt .venv/.requirements-deploy 2>/dev/null; then
    .venv/bin/pip install -q --disable-pip-version-check -r tests/deploy/requirements.txt
    cp tests/deploy/requirements.txt .venv/.requirements-deploy
fi

# llama.cpp for the conformance suite, compiled from the sdist (PyPI has
# no CPU wheel): ~5 minutes on two cores, once per machine: the wheel is
# kept in ~/.cache/sparsed-wheels under a key of its version and options.
# Only the library (no multimodal part, tools or network code), for AVX2
# rather than -march=native: a native build uses AMX where the CPU has it,
# and a container may not grant it (SIGILL).
if [ $tests = 1 ] && [ -f tests/conformance/requirements.txt ] &&
   ! cmp -s tests/conformance/requirements.txt .venv/.requirements-conformance 2>/dev/null; then
    cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAVA_BUILD=OFF"
    cmake_args+=" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF"
    cmake_args+=" -DLLAMA_BUILD_SERVER=OFF"
    lcp=$(grep -E '^llama-cpp-python==' tests/conformance/requirements.txt)
    key=$(printf '%s %s' "$lcp" "$cmake_args" | sha256sum | cut -c1-16)
    wheels="${XDG_CACHE_HOME:-$HOME/.cache}/sparsed-wheels/$key"
    if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
        mkdir -p "$wheels"
        CMAKE_ARGS="$cmake_args" .venv/bin/pip wheel -q --disable-pip-version-check --no-cache-dir \
            --no-deps -w "$wheels" "$lcp"
    fi
    .venv/bin/pip install -q --disable-pip-version-check --find-links "$wheels" \
        -r tests/conformance/requirements.txt
    cp tests/conformance/requirements.txt .venv/.requirements-conformance
fi

if [ -x tools/fetch-models.sh ]; then
    bash tools/fetch-models.sh
fi
