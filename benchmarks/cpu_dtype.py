"""The local engines on a CPU in bf16 (the demo model's own weights) and in float32: seconds for rank1 and the
assessor to judge the same sample-corpus passages, each case in a fresh process with its own engine, after a
warm-up run. First it prints the CPU's native-bf16 flags and what ``--dtype auto`` chose from them.

    .venv/bin/python benchmarks/cpu_dtype.py [--passages 8] [--budget 32] [--engines transformers vllm] [--model demo]

``--model`` takes a catalogue name or a local folder (benchmarks/gpu.sh passes a random-weight rank1-0.5b shape,
benchmarks/real_shape.py, on a machine without the demo model). A short run: ``--passages 2 --budget 8
--engines transformers``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from common import in_fresh_process, print_table, sample_workload

from search.engines.base import NATIVE_BF16, auto_cpu_dtype, native_bf16_flags
from search.pipeline import collect, open_model
from search.rerank.registry import RERANKERS
from search.settings import EngineSettings, RerankSettings

RERANKER_NAMES = ("rank1", "assessor")


def case(model: str, engine_kind: str, dtype: str, passages: int, budget: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    loaded = open_model(EngineSettings(model=model, engine=engine_kind, dtype=dtype), "assessor")
    engine = loaded.engine
    query, candidates = sample_workload(passages)
    row: dict = {"engine": engine_kind, "dtype": dtype}
    try:
        for name in RERANKER_NAMES:
            reranker = RERANKERS[name](engine, model_key=loaded.key, budget=budget, settings=RerankSettings())
            asyncio.run(collect(reranker, "how do engines warm up", candidates[:2]))
            start = time.monotonic()
            asyncio.run(collect(reranker, query, candidates))
            row[f"{name} s"] = f"{time.monotonic() - start:.2f}"
    finally:
        engine.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=8)
    parser.add_argument("--budget", type=int, default=32)
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--model", default="demo", help="a catalogue name or a local folder (default: demo)")
    arguments = parser.parse_args()
    flags = native_bf16_flags()
    print(f"CPU native-bf16 flags: {', '.join(flags) or 'none'} (looked for {', '.join(NATIVE_BF16)}); "
          f"--dtype auto here: {auto_cpu_dtype()}", flush=True)
    rows = [in_fresh_process(case, arguments.model, engine_kind, dtype, arguments.passages, arguments.budget)
            for engine_kind in arguments.engines for dtype in ("bfloat16", "float32")]
    print(f"{arguments.model}: {arguments.passages} sample-corpus passages at once, budget {arguments.budget}, "
          f"CPU, {os.cpu_count()} cores")
    print_table(rows, ["engine", "dtype", *(f"{name} s" for name in RERANKER_NAMES)])


if __name__ == "__main__":
    main()
