"""Early verdicts against the full reasoning, measured: a pointwise reranker (rank1, or the assessor) on a
collection's first queries × their first-stage top k, once with belief probes and the whole reasoning, once with
``--early-verdict``, on the same engine, compared by (query, document): tokens saved, verdict agreement (rank1's
true/false; the assessor's grade), |Δscore| (P(true); the expected grade), and nDCG@10 of both rankings. Then every
candidate rule (the class's margin × 2/3, 1, 4/3 × streak 2, 3, 4) replayed on the full run's probes: probes never
feed back into the reasoning, so the run a rule would have made stops at the first probe where it fires and takes
that probe's verdict; the measured early run checks that replay for the default rule.

    .venv/bin/python benchmarks/early_verdict.py ../shared/data/cranfield [--reranker rank1] [--queries 20]
        [--top-k 10] [--budget 256] [--model demo] [--engine transformers] [--method hybrid]

With the demo model (135M, not trained to judge relevance) the numbers prove the mechanism, not rank1's behaviour:
run it with ``--model rank1-7b`` on a GPU (benchmarks/gpu.sh) for the real model's.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from search.engines import close_engines
from search.evaluation import evaluate
from search.pipeline import build_reranker, open_model
from search.progress import console_progress
from search.rerank.belief import verdict_of
from search.rerank.events import Measured
from search.rerank.probe import EarlyRule
from search.rerank.registry import reranker_class
from search.retrieval.first_stage import open_first_stage
from search.settings import Settings

MARGIN_FACTORS = (2 / 3, 1.0, 4 / 3)
STREAKS = (2, 3, 4)


def judge_all(reranker: Any, work: list[tuple[str, str, list]], label: str
              ) -> tuple[dict[tuple[str, str], Measured], float]:
    """Every query's candidates judged, one query after another (the page's and the API's unit of work)."""
    judged: dict[tuple[str, str], Measured] = {}

    async def one(query_id: str, text: str, candidates: list) -> None:
        async for event in reranker.stream(text, candidates):
            if isinstance(event, Measured):
                judged[query_id, event.doc_id] = event

    start = time.perf_counter()
    for done, (query_id, text, candidates) in enumerate(work, 1):
        asyncio.run(one(query_id, text, candidates))
        print(f"{label}: {done}/{len(work)} queries judged, {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return judged, time.perf_counter() - start


def replay(full: Measured, rule: EarlyRule) -> tuple[int, float, int]:
    """(tokens, score, verdict) the rule would have given on ``full``'s probes (the full judgment when it never
    fires)."""
    scores = []
    for point in full.belief:
        scores.append(point.score)
        if point.tokens < full.tokens and rule.settled(scores):
            return point.tokens, point.score, verdict_of(point)
    return full.tokens, full.score, full.verdict_index()


def compare(full: dict[tuple[str, str], Measured], early: dict[tuple[str, str], tuple[int, float, int]], qrels: dict
            ) -> dict[str, str]:
    keys = sorted(set(full) & set(early))
    tokens_full = sum(full[key].tokens for key in keys)
    tokens_early = sum(early[key][0] for key in keys)
    run_full: dict[str, dict[str, float]] = {}
    run_early: dict[str, dict[str, float]] = {}
    for query_id, doc_id in keys:
        run_full.setdefault(query_id, {})[doc_id] = full[query_id, doc_id].score
        run_early.setdefault(query_id, {})[doc_id] = early[query_id, doc_id][1]
    judged_qrels = {query_id: qrels[query_id] for query_id in run_full if query_id in qrels}
    deltas = [abs(full[key].score - early[key][1]) for key in keys]
    return {"judgments": str(len(keys)), "stopped early": str(sum(early[key][0] < full[key].tokens for key in keys)),
            "tokens saved": f"{1 - tokens_early / max(tokens_full, 1):.1%}",
            "verdict agreement": f"{sum(full[key].verdict_index() == early[key][2] for key in keys) / len(keys):.1%}",
            "mean |Δscore|": f"{statistics.fmean(deltas):.4f}", "max |Δscore|": f"{max(deltas):.4f}",
            "nDCG@10 full": f"{evaluate(judged_qrels, run_full)['nDCG@10']:.4f}",
            "nDCG@10 early": f"{evaluate(judged_qrels, run_early)['nDCG@10']:.4f}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", type=Path, help="a BEIR folder with queries and qrels")
    parser.add_argument("--reranker", default="rank1", choices=["rank1", "assessor"])
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--engine", default="transformers")
    parser.add_argument("--method", default="hybrid", choices=["bm25", "dense", "hybrid"],
                        help="the first stage (bm25 where the dense encoder is not installed)")
    arguments = parser.parse_args()
    settings = Settings.from_env().replace(corpus=arguments.dataset, skip_bad=True, model=arguments.model,
                                           engine=arguments.engine, reranker=arguments.reranker,
                                           budget=arguments.budget, judgment_cache=False)
    first_stage = open_first_stage(settings, (arguments.method,), console_progress())
    corpus = first_stage.corpus
    queries = [query for query in corpus.queries if query.query_id in corpus.qrels][:arguments.queries]
    work = [(query.query_id, query.text,
             list(first_stage.search(query.text, arguments.top_k, arguments.method).candidates)) for query in queries]
    loaded = open_model(settings.serving, arguments.reranker)
    cls = reranker_class(arguments.reranker)
    rows, figures = [], {}
    try:
        base = settings.rerank
        full, full_s = judge_all(build_reranker(dataclasses.replace(base, belief=True), loaded), work,
                                  "full reasoning")
        early, early_s = judge_all(build_reranker(dataclasses.replace(base, early_verdict=True), loaded), work,
                                    "early verdict")
    finally:
        close_engines()
    measured = {key: (event.tokens, event.score, event.verdict_index()) for key, event in early.items()}
    default = cls.early_rule
    figures["measured"] = {"rule": f"{default.key()} (measured run)", **compare(full, measured, corpus.qrels),
                           "seconds": f"{early_s:.0f} vs {full_s:.0f}"}
    replayed_default = {key: replay(event, default) for key, event in full.items()}
    agree = sum(replayed_default[key][0] == measured[key][0] for key in measured if key in replayed_default)
    for factor in MARGIN_FACTORS:
        for streak in STREAKS:
            rule = EarlyRule(threshold=default.threshold, margin=round(default.margin * factor, 3), streak=streak)
            rows.append({"rule": rule.key() + (" (default)" if rule == default else ""),
                         **compare(full, {key: replay(event, rule) for key, event in full.items()}, corpus.qrels)})
    columns = ["rule", "judgments", "stopped early", "tokens saved", "verdict agreement", "mean |Δscore|",
               "max |Δscore|", "nDCG@10 full", "nDCG@10 early"]
    print(f"{cls.name} on {arguments.model} ({arguments.engine}), {arguments.dataset.name}: first {len(work)} judged "
          f"queries × {arguments.method} top {arguments.top_k}, budget {arguments.budget}, probes every "
          f"{cls.probe_interval(base)} tokens; score: {cls.score_name}")
    print("| " + " | ".join([*columns, "seconds (early vs full)"]) + " |")
    print("|" + "---|" * (len(columns) + 1))
    for row in [figures["measured"], *rows]:
        print("| " + " | ".join([*(row.get(column, "") for column in columns), row.get("seconds", "")]) + " |")
    print(f"the default rule replayed on the full run's probes stops where the measured early run stopped on "
          f"{agree} of {len(measured)} judgments")
    return 0


if __name__ == "__main__":
    sys.exit(main())
