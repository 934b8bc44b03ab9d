"""The transformers engine on CPU in bf16 (the demo model's own weights) and in float32 (what ``--dtype auto``
means on a CPU): seconds for rank1 and the assessor to judge the same four passages, budget 6, each in a fresh
engine after a warm-up run.

    .venv/bin/python benchmarks/cpu_dtype.py
"""

from __future__ import annotations

import asyncio
import os
import time

from search.corpus import Passage
from search.engines.demo_model import ensure_demo_model
from search.engines.hf_engine import TransformersEngine
from search.pipeline import collect
from search.rerank import RERANKERS
from search.retrieval.ranking import Candidate, Hit
from search.settings import RerankSettings

PASSAGES = 4
BUDGET = 6


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    candidates = [Candidate(passage=Passage(passage_id=f"s{number}", doc_id=f"s{number}", index=0,
                                            title=f"Cat story {number}", text="A long story about a cat named Tom."),
                            stage="bm25", provenance={"bm25": Hit(rank=number + 1, score=1.0)})
                  for number in range(PASSAGES)]
    print(f"{'dtype':<10} {'reranker':<10} {'seconds':>8}   ({PASSAGES} passages, budget {BUDGET}, transformers, CPU)")
    for dtype in ("bfloat16", "float32"):
        engine = TransformersEngine(model="demo", location=str(ensure_demo_model()), max_model_len=2048, dtype=dtype)
        try:
            for name in ("rank1", "assessor"):
                reranker = RERANKERS[name](engine, model_key="demo", budget=BUDGET, settings=RerankSettings())
                asyncio.run(collect(reranker, "cat story", candidates))  # warm-up
                start = time.monotonic()
                asyncio.run(collect(reranker, "cat story", candidates))
                print(f"{dtype:<10} {name:<10} {time.monotonic() - start:>8.2f}")
        finally:
            engine.close()


if __name__ == "__main__":
    main()
