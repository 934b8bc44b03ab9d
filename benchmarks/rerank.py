"""Reranking throughput on the demo model: our streaming vLLM path against offline ``vllm.LLM.generate`` on the
same prompts (target: at least 0.9 of its throughput), transformers, and time to the first reasoning token (on
a CPU with and without vLLM's lead request, ``VLLMEngine.stagger``).

    .venv/bin/python benchmarks/rerank.py [--passages 24] [--budget 128]

Each case runs in a fresh process (one engine each, a warm-up on other prompts first). "engine" cases send
the same requests (greedy, rank1 stop strings, verdict log-probabilities) straight to the engine; "reranker"
cases run rank1 end to end, forced verdict steps included. The demo model often ends its reasoning early, so
compare cases by their ratio, not by absolute tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from typing import Any

from common import in_fresh_process, print_table, sample_workload

from search.engines import cuda_available
from search.engines.base import Engine, GenerationRequest, cpu_dtype
from search.engines.demo_model import ensure_demo_model
from search.rerank.events import Reasoning
from search.rerank.rank1 import STOP_FALSE, STOP_TRUE, Rank1Reranker, VerdictTokens, render_prompt
from search.retrieval.ranking import Candidate
from search.settings import RerankSettings

MAX_MODEL_LEN = 2048
WARMUP_QUERY = "how do engines warm up"


def _requests(tokenizer: Any, query: str, candidates: list[Candidate], budget: int) -> list[GenerationRequest]:
    watched = VerdictTokens.of(tokenizer).ids
    return [GenerationRequest(prompt=render_prompt(query, candidate.passage.contents), max_tokens=budget,
                              stop=(STOP_TRUE, STOP_FALSE), watch_token_ids=watched) for candidate in candidates]


def offline_case(count: int, budget: int) -> dict:
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    model = str(ensure_demo_model())
    dtype = cpu_dtype("auto", "cuda" if cuda_available() else "cpu")  # what our engine runs in
    llm = LLM(model=model, max_model_len=MAX_MODEL_LEN, dtype=dtype, enforce_eager=True, enable_prefix_caching=True,
              seed=0)
    query, candidates = sample_workload(count)
    requests = _requests(AutoTokenizer.from_pretrained(model), query, candidates, budget)
    params = SamplingParams(temperature=0.0, max_tokens=budget, stop=list(requests[0].stop), skip_special_tokens=False,
                            logprobs=2, logprob_token_ids=list(requests[0].watch_token_ids))
    llm.generate([render_prompt(WARMUP_QUERY, "warm-up passage")] * 2, params, use_tqdm=False)
    start = time.perf_counter()
    outputs = llm.generate([request.prompt for request in requests], params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(output.outputs[0].token_ids) for output in outputs)
    llm.llm_engine.engine_core.shutdown()
    return {"case": "vLLM offline LLM.generate", "requests": len(requests), "tokens": tokens, "seconds": seconds}


def _open(kind: str) -> Engine:
    model = str(ensure_demo_model())
    if kind.startswith("vllm"):
        from search.engines.vllm_engine import VLLMEngine

        # "vllm-together": every request sent at once, without the CPU path's lead request (``stagger``).
        return VLLMEngine(model="demo", location=model, max_model_len=MAX_MODEL_LEN,
                          stagger=False if kind == "vllm-together" else None)
    from search.engines.hf_engine import TransformersEngine

    return TransformersEngine(model="demo", location=model, max_model_len=MAX_MODEL_LEN)


async def _stream_all(engine: Engine, requests: list[GenerationRequest]) -> tuple[int, float | None]:
    """All requests at once; returns generated tokens and seconds to the first text delta."""
    start = time.perf_counter()
    first: list[float] = []

    async def one(request: GenerationRequest) -> int:
        tokens = 0
        async for chunk in engine.generate(request):
            tokens += len(chunk.token_ids)
            if chunk.text and not first:
                first.append(time.perf_counter() - start)
        return tokens

    counts = await asyncio.gather(*(one(request) for request in requests))
    return sum(counts), first[0] if first else None


def engine_case(kind: str, count: int, budget: int) -> dict:
    engine = _open(kind)
    query, candidates = sample_workload(count)
    asyncio.run(_stream_all(engine, _requests(engine.tokenizer, WARMUP_QUERY, candidates[:2], budget)))
    requests = _requests(engine.tokenizer, query, candidates, budget)
    start = time.perf_counter()
    tokens, first = asyncio.run(_stream_all(engine, requests))
    seconds = time.perf_counter() - start
    engine.close()
    return {"case": f"{kind} engine, streaming", "requests": len(requests), "tokens": tokens, "seconds": seconds,
            "first_text_s": first}


def reranker_case(kind: str, count: int, budget: int) -> dict:
    engine = _open(kind)
    query, candidates = sample_workload(count)
    reranker = Rank1Reranker(engine, model_key="demo", budget=budget, settings=RerankSettings())

    async def run(text: str, chosen: list[Candidate]) -> tuple[int, float | None, int]:
        start = time.perf_counter()
        first = None
        tokens = forced = 0
        async for event in reranker.stream(text, chosen):
            if isinstance(event, Reasoning) and first is None:
                first = time.perf_counter() - start
            if event.type == "judged":
                tokens += event.tokens
                forced += event.forced
        return tokens, first, forced

    asyncio.run(run(WARMUP_QUERY, candidates[:2]))
    start = time.perf_counter()
    tokens, first, forced = asyncio.run(run(query, candidates))
    seconds = time.perf_counter() - start
    engine.close()
    return {"case": f"{kind} rank1 reranker (+{forced} forced steps)", "requests": len(candidates),
            "tokens": tokens, "seconds": seconds, "first_text_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passages", type=int, default=24, help="candidates judged at once (default 24)")
    parser.add_argument("--budget", type=int, default=128, help="reasoning budget in tokens (default 128)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    ensure_demo_model()
    rows = [
        in_fresh_process(offline_case, args.passages, args.budget),
        in_fresh_process(engine_case, "vllm", args.passages, args.budget),
        in_fresh_process(reranker_case, "vllm", args.passages, args.budget),
        in_fresh_process(reranker_case, "vllm-together", args.passages, args.budget),
        in_fresh_process(engine_case, "transformers", args.passages, args.budget),
        in_fresh_process(reranker_case, "transformers", args.passages, args.budget),
    ]
    offline = rows[0]["tokens"] / rows[0]["seconds"]
    for row in rows:
        rate = row["tokens"] / row["seconds"]
        row["tokens/s"] = f"{rate:.0f}"
        row["judgments/s"] = f"{row['requests'] / row['seconds']:.2f}"
        row["vs offline"] = f"{rate / offline:.2f}"
        row["seconds"] = f"{row['seconds']:.2f}"
        first = row.get("first_text_s")
        row["first text (s)"] = "" if first is None else f"{first:.2f}"
    print(f"demo model, {args.passages} passages, budget {args.budget} tokens, {os.cpu_count()} CPU cores")
    print_table(rows, ["case", "requests", "tokens", "seconds", "tokens/s", "judgments/s", "vs offline",
                       "first text (s)"])


if __name__ == "__main__":
    main()
