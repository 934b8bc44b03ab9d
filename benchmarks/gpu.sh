#!/usr/bin/env bash
# The transformers engine (the ZeroGPU path) on a random-weight rank1-7b in bf16, on a lent GPU machine: engine
# start, first reasoning text and the time to judge 20 candidates at budget 1,024, 20 streams' tokens/s, peak
# memory (benchmarks/real_shape.py). Then, on the machine's host CPU (the GPU hidden), where native bf16 may be:
# the CPU's bf16 flags, what --dtype auto chose from them and bf16 against float32 (benchmarks/cpu_dtype.py, on a
# random-weight rank1-0.5b: the device has no demo model), and rank1 on that shape through the transformers engine
# in what auto chose (benchmarks/real_shape.py). The belief part: what belief probes cost on the rank1-7b shape
# (benchmarks/belief.py), early verdicts against the full reasoning on that shape over the sample corpus, and on
# the real rank1-7b over COLLECTION (a BEIR folder; default ../shared/data/cranfield) where its weights are in the
# Hugging Face cache: nDCG@10 with and without early verdicts and their agreement (benchmarks/early_verdict.py).
# The device machine has PyTorch (CUDA), transformers and
# sentence-transformers but no network: first, here, put what else the project imports and the shapes' tokenizers
# into .gpu-wheels/ (about 40 MB; the device runs Python 3.12), then run this script there with that folder carried:
#
#   bash benchmarks/gpu.sh prepare                  # here
#   bash benchmarks/gpu.sh [gpu|cpu|belief]         # on the device (the device tool: carry [".gpu-wheels"])
#
# The GPU part takes about 5 minutes on an H200 (building 15 GB of random weights included), the CPU part a few
# more; name one part to run only it. Results go to standard output and, on the device, to $OUT/gpu.txt. Record
# them in docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
WHEELS=.gpu-wheels
PACKAGES=(faiss-cpu ir-measures pytrec-eval-terrier PyStemmer bm25s)
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = prepare ]; then
    PY=.venv/bin/python
    mkdir -p "$WHEELS"
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 -d "$WHEELS" "${PACKAGES[@]}"
    for shape in rank1-7b rank1-0.5b; do
        (cd benchmarks && "../$PY" real_shape.py --shapes "$shape" --write-tokenizer "../$WHEELS/$shape-tokenizer")
    done
    du -sh "$WHEELS"
    exit 0
fi

PART=${1:-all}
case "$PART" in all | gpu | cpu | belief) ;; *) echo "error: unknown part '$PART': gpu, cpu, belief or none for all" >&2; exit 1 ;; esac
[ -d "$WHEELS" ] || { echo "error: $WHEELS is missing: run 'bash benchmarks/gpu.sh prepare' first and carry it" >&2; exit 1; }
"$PYTHON" -m venv --system-site-packages /tmp/gpu-venv
/tmp/gpu-venv/bin/python -m pip install --quiet --no-index --no-deps --find-links "$WHEELS" "${PACKAGES[@]}"
export PYTHONPATH="$PWD" HF_HUB_OFFLINE=1 XDG_CACHE_HOME=/tmp/gpu-cache
cd benchmarks
RESULTS=${OUT:-/tmp}/gpu.txt
: > "$RESULTS"
if [ "$PART" = all ] || [ "$PART" = gpu ]; then
    /tmp/gpu-venv/bin/python real_shape.py --shapes rank1-7b --engines transformers --candidates 20 --budget 1024 \
        --tokenizer-from "../$WHEELS/rank1-7b-tokenizer" | tee -a "$RESULTS"
fi
if [ "$PART" = all ] || [ "$PART" = belief ]; then
    /tmp/gpu-venv/bin/python belief.py --shape rank1-7b --engines transformers --candidates 20 --budget 1024 \
        --intervals 64 128 0 --tokenizer-from "../$WHEELS/rank1-7b-tokenizer" | tee -a "$RESULTS"
    SHAPE=$(/tmp/gpu-venv/bin/python -c 'from real_shape import shape_dir; print(shape_dir("rank1-7b"))')
    /tmp/gpu-venv/bin/python early_verdict.py ../sample_corpus --model "$SHAPE" --engine transformers --queries 10 \
        --budget 1024 --method bm25 | tee -a "$RESULTS"
    COLLECTION=${COLLECTION:-../../shared/data/cranfield}
    if [ -d "$COLLECTION" ] && /tmp/gpu-venv/bin/python -c 'from huggingface_hub import snapshot_download as s
s("jhu-clsp/rank1-7b", local_files_only=True)' 2>/dev/null; then
        /tmp/gpu-venv/bin/python early_verdict.py "$COLLECTION" --model rank1-7b --engine transformers --queries 20 \
            --budget 8192 --method bm25 | tee -a "$RESULTS"
    else
        echo "real rank1-7b: skipped here (needs $COLLECTION and the jhu-clsp/rank1-7b weights cached)" | tee -a "$RESULTS"
    fi
fi
if [ "$PART" = all ] || [ "$PART" = cpu ]; then
    export CUDA_VISIBLE_DEVICES=""  # the host CPU: the engines choose the CPU, and --dtype auto its flags' dtype
    /tmp/gpu-venv/bin/python real_shape.py --shapes rank1-0.5b --engines transformers --candidates 8 --budget 64 \
        --tokenizer-from "../$WHEELS/rank1-0.5b-tokenizer" | tee -a "$RESULTS"
    SHAPE=$(/tmp/gpu-venv/bin/python -c 'from real_shape import shape_dir; print(shape_dir("rank1-0.5b"))')
    /tmp/gpu-venv/bin/python cpu_dtype.py --model "$SHAPE" --engines transformers | tee -a "$RESULTS"
fi
