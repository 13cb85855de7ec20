#!/usr/bin/env bash
# Installs what building and testing sparsed needs on Debian: system
# packages, a Python venv for the integration tests (.venv), and the
# SmolLM2 model into .cache/models.  Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

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

if [ -x tools/fetch-models.sh ]; then
    bash tools/fetch-models.sh
fi
