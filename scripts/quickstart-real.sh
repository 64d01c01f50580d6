#!/usr/bin/env bash
# `make quickstart-real`: baseline against DAC on the real Fashion-MNIST (studies/real_quickstart.yaml),
# 3 seeds each, two workers of one thread, then the comparison. Needs `make real-data` first.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-.venv/bin}"
if ! "$BIN/biasbench" data check fashion_mnist --root data/fashion_mnist >/dev/null 2>&1; then
    echo "quickstart-real needs the real Fashion-MNIST under data/fashion_mnist: run 'make real-data' first" \
         "(or 'make quickstart' for the bundled digits)" >&2
    exit 2
fi
"$BIN/biasbench" sweep studies/real_quickstart.yaml --jobs 2 --out runs/quickstart_real
"$BIN/biasbench" compare runs/quickstart_real
