"""What belief probes cost, at the real model's size through our own engines: rank1 over one query's candidates with
probes off, then on at several intervals, in one process per engine (the same warm engine for every row, so that
the ratios compare like with like). The rank1-0.5b shape has random weights (benchmarks/real_shape.py), so every
judgment runs to its budget: at budget 256 and an interval of 64, five probes per document (before reasoning, after
64, 128, 192 and 256 tokens).

    .venv/bin/python benchmarks/belief.py [--shape rank1-0.5b] [--engines transformers vllm] [--candidates 20]
        [--budget 256] [--intervals 32 64 128]

Each row asks the query with its row's number appended, so that no row's prompts are in the prefix cache from
another's, as with a new query on the page. Each row: the seconds to judge every candidate (probes and forced steps
included), that ÷ the runs without probes (the mean of "off" and, with ``0`` among the intervals, "off again",
which bracket the others), the probes taken, the one-step requests sent (probes and forced verdicts) and their
prompt tokens the engine computed (not served from its prefix cache).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from pathlib import Path
from typing import Any

from common import in_fresh_process, print_table, sample_workload
from real_shape import SHAPES, _open_engine, build_shape, processor, shape_dir


def case(shape: str, kind: str, candidates: int, budget: int, intervals: list[int]) -> dict[str, Any]:
    """Every interval's row on one engine, in this (fresh) process."""
    from search.engines.base import GenerationChunk, GenerationRequest
    from search.rerank.events import Belief, Judged
    from search.rerank.rank1 import Rank1Reranker
    from search.settings import RerankSettings

    engine = _open_engine(kind, str(shape_dir(shape)))
    query, chosen = sample_workload(candidates)
    probes = {"requests": 0, "computed": 0}
    generate = engine.generate

    async def counted(request: GenerationRequest) -> Any:
        """The engine's stream, counting one-step requests (probes and forced verdicts) and their prompt tokens
        the engine computed (not served from its prefix cache)."""
        chunks: list[GenerationChunk] = []
        async for chunk in generate(request):
            chunks.append(chunk)
            yield chunk
        if request.allowed_token_ids and request.max_tokens == 1:
            probes["requests"] += 1
            prompt = len(engine.tokenizer(request.prompt).input_ids)
            probes["computed"] += prompt - sum(chunk.cached_tokens for chunk in chunks)

    engine.generate = counted  # type: ignore[method-assign]

    async def judge(every: int, documents: list, asked: str) -> tuple[float, int, int]:
        settings = RerankSettings(judgment_cache=False, belief=every > 0, belief_every=every)
        reranker = Rank1Reranker(engine, model_key="shape", budget=budget, settings=settings)
        start, judged, beliefs = time.perf_counter(), 0, 0
        async for event in reranker.stream(asked, documents):
            judged += isinstance(event, Judged)
            beliefs += isinstance(event, Belief)
        return time.perf_counter() - start, judged, beliefs

    rows = []
    try:
        asyncio.run(judge(64, chosen[:2], query))  # warm-up, probes included
        timed = []
        for row, every in enumerate([0, *intervals], 1):
            probes.update(requests=0, computed=0)
            # The query with the row's number: no row finds another's prompts in the prefix cache (as a new query
            # on the page would not), which made a later row look cheaper than an earlier one.
            seconds, judged, beliefs = asyncio.run(judge(every, chosen, f"{query} ({row})"))
            timed.append((every, seconds))
            rows.append({"engine": kind, "interval": f"every {every}" if every else "off" + " again" * bool(rows),
                         f"judge {candidates} s": f"{seconds:.1f}",
                         "probes": str(beliefs), "one-step requests": str(probes["requests"]),
                         "their tokens computed": f"{probes['computed']:,}", "judged": f"{judged}/{candidates}"})
        base = statistics.fmean(seconds for every, seconds in timed if not every)  # "off", and "off again" if run
        for printed, (_, seconds) in zip(rows, timed, strict=True):
            printed["÷ off"] = f"{seconds / base:.3f}"
    finally:
        engine.close()
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", default="rank1-0.5b", choices=list(SHAPES))
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--candidates", type=int, default=20)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--intervals", nargs="+", type=int, default=[32, 64, 128],
                        help="tokens between probes, each a row after the run without probes (0: without, again)")
    parser.add_argument("--tokenizer-from", type=Path, help="the shape's tokenizer files, made elsewhere "
                                                             "(real_shape.py --write-tokenizer)")
    arguments = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    build_shape(arguments.shape, arguments.tokenizer_from)
    rows = [row for kind in arguments.engines for row in in_fresh_process(
        case, arguments.shape, kind, arguments.candidates, arguments.budget, arguments.intervals)["rows"]]
    print(f"rank1 ({arguments.shape} shape, random weights) over {arguments.candidates} sample-corpus candidates at "
          f"budget {arguments.budget}; {os.cpu_count()} cores, {processor()}")
    print_table(rows, ["engine", "interval", f"judge {arguments.candidates} s", "÷ off", "probes", "one-step requests",
                       "their tokens computed", "judged"])


if __name__ == "__main__":
    main()
