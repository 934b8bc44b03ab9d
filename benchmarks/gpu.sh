#!/usr/bin/env bash
# The transformers engine (the ZeroGPU path) on a random-weight rank1-7b in bf16, on a lent GPU machine: engine
# start, first reasoning text and the time to judge 20 candidates at budget 1,024, 20 streams' tokens/s, peak
# memory (benchmarks/real_shape.py). The device machine has PyTorch (CUDA), transformers and sentence-transformers
# but no network: first, here, put what else the project imports and the shape's tokenizer into .gpu-wheels/
# (about 40 MB; the device runs Python 3.12), then run this script there with that folder carried:
#
#   bash benchmarks/gpu.sh prepare                  # here
#   bash benchmarks/gpu.sh                          # on the device (the device tool: carry [".gpu-wheels"])
#
# It takes about 5 minutes on an H200 (building 15 GB of random weights included); results go to standard output
# and, on the device, to $OUT/gpu.txt. Record them in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PACKAGES=(faiss-cpu ir-measures pytrec-eval-terrier PyStemmer)
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
    PY=.venv/bin/python
    mkdir -p "$WHEELS"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
    (cd benchmarks && "../$PY" real_shape.py --shapes rank1-7b --write-tokenizer "../$WHEELS/rank1-7b-tokenizer")
    du -sh "$WHEELS"
    exit 0
fi

[ -d "$WHEELS" ] || { echo "error: $WHEELS is missing: run 'bash benchmarks/gpu.sh prepare' first and carry it" >&2; exit 1; }
"$PYTHON" -m venv --system-site-packages /tmp/gpu-venv
/tmp/gpu-venv/bin/python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${PACKAGES[@]}"
export PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 XDG_CACHE_HOME=/tmp/gpu-cache
cd benchmarks
/tmp/gpu-venv/bin/python real_shape.py --shapes rank1-7b --engines transformers --candidates 20 --budget 1024 \
    --tokenizer-from "../$WHEELS/rank1-7b-tokenizer" | tee "${OUT:-/tmp}/gpu.txt"
