"""Fusion of several first-stage rankings into one, keeping each candidate's hit in every input."""

from __future__ import annotations

from collections.abc import Sequence

from search.corpus import Passage
from search.retrieval.ranking import Candidate, Hit, Ranking, Retriever
from search.settings import FusionSettings

STAGE = "fused"


def reciprocal_rank_fusion(rankings: Sequence[Ranking], k: int = 60) -> dict[str, float]:
    """Cormack et al. (2009): a passage scores the sum of 1 / (k + rank) over the rankings that hold it."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for candidate in ranking.candidates:
            key = candidate.passage.passage_id
            fused[key] = fused.get(key, 0.0) + 1.0 / (k + candidate.rank)
    return fused


def weighted_fusion(rankings: Sequence[Ranking], weights: Sequence[float]) -> dict[str, float]:
    """Weighted sum of min-max normalised scores; a passage missing from a ranking gets 0 there."""
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        scores = [candidate.score for candidate in ranking.candidates]
        low, span = min(scores, default=0.0), max(scores, default=0.0) - min(scores, default=0.0)
        for candidate in ranking.candidates:
            key = candidate.passage.passage_id
            fused[key] = fused.get(key, 0.0) + weight * ((candidate.score - low) / span if span else 1.0)
    return fused


def fuse(query: str, rankings: Sequence[Ranking], settings: FusionSettings, weights: Sequence[float]) -> Ranking:
    """One ranking of every passage in ``rankings``; equal scores keep the order of first appearance."""
    if settings.fusion == "rrf":
        scores = reciprocal_rank_fusion(rankings, settings.rrf_k)
    else:
        scores = weighted_fusion(rankings, weights)
    passages: dict[str, Passage] = {}
    history: dict[str, dict[str, Hit]] = {}
    for ranking in rankings:
        for candidate in ranking.candidates:
            passages.setdefault(candidate.passage.passage_id, candidate.passage)
            history.setdefault(candidate.passage.passage_id, {}).update(candidate.provenance)
    order = sorted(passages, key=lambda key: -scores[key])
    return Ranking(query=query, stage=STAGE, candidates=tuple(
        Candidate(passage=passages[key], stage=STAGE,
                  provenance={**history[key], STAGE: Hit(rank=rank, score=scores[key])})
        for rank, key in enumerate(order, start=1)
    ))


class FusedRetriever(Retriever):
    """Several retrievers (BM25 and dense) searched to ``fusion_depth`` each, then fused."""

    name = STAGE

    def __init__(self, retrievers: Sequence[Retriever], settings: FusionSettings) -> None:
        self._retrievers = retrievers
        self._settings = settings
        self._weights = [settings.bm25_weight if r.name == "bm25" else 1 - settings.bm25_weight for r in retrievers]

    @property
    def passages(self) -> Sequence[Passage]:
        return self._retrievers[0].passages

    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        depth = max(k, self._settings.fusion_depth)
        per_retriever = [retriever.search_many(queries, depth) for retriever in self._retrievers]
        fused = [
            fuse(query, [rankings[position] for rankings in per_retriever], self._settings, self._weights)
            for position, query in enumerate(queries)
        ]
        return [Ranking(query=r.query, stage=r.stage, candidates=r.candidates[:k]) for r in fused]
