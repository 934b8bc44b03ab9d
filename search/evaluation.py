"""Judgments and metrics over TREC runs (``search.trec``). Measures come from ir-measures; nothing here
re-implements one.

Rankings are over passages and judgments over documents, so a document scores as its best passage (MaxP).
Every judged query counts: a query the run has nothing for scores 0 rather than vanishing from the mean,
and no document is ever dropped from a run because its id equals the query id.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import ir_measures
from ir_measures import RR, R, nDCG

from search.corpus import CorpusError, Qrels, Query, load_qrels
from search.retrieval.ranking import Retriever
from search.trec import TrecRun

MEASURES = (nDCG @ 10, R @ 100, RR @ 10)

def measure_name(measure: object) -> str:
    """The name people read: nDCG@10, Recall@100, MRR@10 (ir-measures says R@100 and RR@10)."""
    name = str(measure)
    for short, long in (("RR@", "MRR@"), ("R@", "Recall@")):
        if name.startswith(short):
            return long + name[len(short):]
    return name


def retrieve_run(retriever: Retriever, queries: Sequence[Query], k: int, batch_size: int = 64) -> TrecRun:
    """The top ``k`` documents of every query (searched in batches), each scored by its best passage."""
    run: TrecRun = {}
    for start in range(0, len(queries), batch_size):
        batch = queries[start:start + batch_size]
        rankings = retriever.search_documents([query.text for query in batch], k)
        run.update({query.query_id: dict(ranking.documents()) for query, ranking in zip(batch, rankings, strict=True)})
    return run


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    """Judgments (BEIR TSV or TREC qrels), refused with every bad line named."""
    qrels, problems = load_qrels(path)
    if problems or not qrels:
        raise CorpusError(f"{path}: {len(problems)} bad line(s), {len(qrels)} judged queries; expected "
                          "query-id corpus-id score (BEIR) or query 0 doc grade (TREC)", problems)
    return qrels


def per_query(qrels: Qrels, run: TrecRun, measures: Iterable = MEASURES) -> dict[str, dict[str, float]]:
    """Each measure's value for every judged query (0 where the run has nothing for it), by measure name."""
    measures = tuple(measures)
    values: dict[str, dict[str, float]] = {measure_name(measure): dict.fromkeys(qrels, 0.0) for measure in measures}
    qrels_input = {query_id: dict(judged) for query_id, judged in qrels.items()}
    for metric in ir_measures.iter_calc(measures, qrels_input, run):
        values[measure_name(metric.measure)][metric.query_id] = metric.value
    return values


def evaluate(qrels: Qrels, run: TrecRun, measures: Iterable = MEASURES) -> dict[str, float]:
    """Mean of each measure over every judged query (graded gains for nDCG, relevance >= 1 otherwise)."""
    return {name: sum(by_query.values()) / max(len(by_query), 1)
            for name, by_query in per_query(qrels, run, measures).items()}


@dataclass(frozen=True, kw_only=True, slots=True)
class Comparison:
    """Two runs on the same judged queries: each measure's mean before and after, and per query."""

    measures: tuple[str, ...]
    before: dict[str, float]
    after: dict[str, float]
    per_query: dict[str, dict[str, tuple[float, float]]]
    """Query id → measure → (before, after)."""

    def delta(self, measure: str, query_id: str) -> float:
        before, after = self.per_query[query_id][measure]
        return after - before


def compare(qrels: Qrels, before: TrecRun, after: TrecRun, measures: Iterable = MEASURES) -> Comparison:
    """``before`` and ``after`` measured on every query of ``qrels``."""
    measures = tuple(measures)
    old, new = per_query(qrels, before, measures), per_query(qrels, after, measures)
    names = tuple(old)
    return Comparison(
        measures=names,
        before={name: sum(old[name].values()) / max(len(qrels), 1) for name in names},
        after={name: sum(new[name].values()) / max(len(qrels), 1) for name in names},
        per_query={query_id: {name: (old[name][query_id], new[name][query_id]) for name in names}
                   for query_id in qrels},
    )
