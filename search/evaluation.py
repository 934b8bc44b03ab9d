"""Runs, judgments and metrics. Measures come from ir-measures; nothing here re-implements one.

Rankings are over passages and judgments over documents, so a document scores as its best passage (MaxP).
Every judged query counts: a query the run has nothing for scores 0 rather than vanishing from the mean,
and no document is ever dropped from a run because its id equals the query id.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import ir_measures
from ir_measures import RR, R, nDCG

from search.corpus import Qrels, Query
from search.retrieval.ranking import Ranking, Retriever

MEASURES = (nDCG @ 10, R @ 100, RR @ 10)
MEASURE_NAMES = dict(zip(map(str, MEASURES), ("nDCG@10", "Recall@100", "MRR@10"), strict=True))

Run = dict[str, dict[str, float]]


def passage_depth(k: int, passage_count: int, document_count: int) -> int:
    """How many passages to retrieve so that, after MaxP, about ``k`` distinct documents remain."""
    return k * max(1, math.ceil(passage_count / max(document_count, 1)))


def run_from_rankings(query_ids: Sequence[str], rankings: Sequence[Ranking], k: int) -> Run:
    """The top ``k`` documents of each ranking, scored by their best passage."""
    return {
        query_id: dict(ranking.documents()[:k])
        for query_id, ranking in zip(query_ids, rankings, strict=True)
    }


def retrieve_run(retriever: Retriever, queries: Sequence[Query], k: int, depth: int, batch_size: int = 64) -> Run:
    """Search every query (in batches) and keep the top ``k`` documents of each."""
    run: Run = {}
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        rankings = retriever.search_many([query.text for query in batch], depth)
        run.update(run_from_rankings([query.query_id for query in batch], rankings, k))
    return run


def evaluate(qrels: Qrels, run: Run, measures: Iterable = MEASURES) -> dict[str, float]:
    """Mean of each measure over every judged query (graded gains for nDCG, relevance >= 1 otherwise)."""
    measures = tuple(measures)
    per_query: dict[str, dict[str, float]] = {str(measure): {} for measure in measures}
    qrels_input = {query_id: dict(judged) for query_id, judged in qrels.items()}
    for metric in ir_measures.iter_calc(measures, qrels_input, run):
        per_query[str(metric.measure)][metric.query_id] = metric.value
    judged = list(qrels)
    return {
        MEASURE_NAMES.get(name, name): sum(values.get(query_id, 0.0) for query_id in judged) / max(len(judged), 1)
        for name, values in per_query.items()
    }


def format_trec_run(run: Mapping[str, Mapping[str, float]], tag: str) -> str:
    """The standard six-column TREC run format, in the run's order."""
    return "".join(
        f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}\n"
        for query_id, scored in run.items()
        for rank, (doc_id, score) in enumerate(scored.items(), start=1)
    )


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str) -> None:
    path.write_text(format_trec_run(run, tag), encoding="utf-8")
