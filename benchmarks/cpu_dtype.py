"""The two local engines on a CPU in bf16 (the demo model's own weights) and in float32 (what ``--dtype auto``
means on a CPU): seconds for rank1 and the assessor to judge the same sample-corpus passages, each case in a
fresh process with its own engine, after a warm-up run.

    .venv/bin/python benchmarks/cpu_dtype.py [--passages 8] [--budget 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from common import in_fresh_process, print_table, sample_workload

from search.pipeline import collect, open_model
from search.rerank.registry import RERANKERS
from search.settings import EngineSettings, RerankSettings

RERANKER_NAMES = ("rank1", "assessor")


def case(engine_kind: str, dtype: str, passages: int, budget: int) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    engine = open_model(EngineSettings(model="demo", engine=engine_kind, dtype=dtype), "assessor").engine
    query, candidates = sample_workload(passages)
    row: dict = {"engine": engine_kind, "dtype": dtype}
    try:
        for name in RERANKER_NAMES:
            reranker = RERANKERS[name](engine, model_key="demo", budget=budget, settings=RerankSettings())
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
    arguments = parser.parse_args()
    rows = [in_fresh_process(case, engine_kind, dtype, arguments.passages, arguments.budget)
            for engine_kind in ("transformers", "vllm") for dtype in ("bfloat16", "float32")]
    print(f"{arguments.passages} sample-corpus passages at once, budget {arguments.budget}, CPU")
    print_table(rows, ["engine", "dtype", *(f"{name} s" for name in RERANKER_NAMES)])


if __name__ == "__main__":
    main()
