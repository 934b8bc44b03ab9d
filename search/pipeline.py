"""The product's spine: query → first-stage candidates → the reranker's one stream of events. The page, the
command line and the API all read this stream; ``rerank`` is the synchronous form for scripts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

from search.engines import Choice, EngineError, choose, open_engine
from search.engines.base import Engine
from search.engines.models import hub_cached, hub_offline
from search.rerank.board import Board
from search.rerank.cache import JudgmentCache
from search.rerank.events import Failed, Judged
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker
from search.retrieval.first_stage import FirstStage
from search.retrieval.ranking import Candidate, Hit, Ranking
from search.settings import RerankSettings, RetrievalMethod


def document_candidates(ranking: Ranking, top_k: int) -> tuple[Candidate, ...]:
    """The best passage of each of the ``top_k`` best documents (MaxP): one judgment per document."""
    seen: dict[str, Candidate] = {}
    for candidate in ranking.candidates:
        if candidate.passage.doc_id not in seen:
            seen[candidate.passage.doc_id] = candidate
            if len(seen) == top_k:
                break
    return tuple(seen.values())


def _open_engine(settings: RerankSettings, choice: Choice | None) -> tuple[Engine, Choice]:
    """The engine chosen for this machine (or forced by the settings), refused early when it cannot work."""
    choice = choice or choose(settings)
    location = choice.model.location
    if location and not Path(location).is_dir() and not hub_cached(location) and hub_offline():
        raise EngineError(f"{location} is not in the local Hugging Face cache and the Hub cannot be reached; "
                          "choose the demo model or a local folder")
    engine = open_engine(choice, settings)
    if choice.model.budget >= engine.max_model_len:
        raise EngineError(f"the reasoning budget ({choice.model.budget} tokens) leaves no room for the prompt in "
                          f"{engine.description}'s {engine.max_model_len}-token context; lower --budget")
    return engine, choice


def _settings_cache(settings: RerankSettings) -> JudgmentCache | None:
    return JudgmentCache(settings.judgment_cache_path) if settings.judgment_cache else None


def open_reranker(settings: RerankSettings, choice: Choice | None = None) -> tuple[Rank1Reranker, Choice]:
    """rank1 on the engine chosen for this machine (or forced by the settings)."""
    engine, choice = _open_engine(settings, choice)
    return _rank1(engine, choice, _settings_cache(settings)), choice


def _rank1(engine: Engine, choice: Choice, cache: JudgmentCache | None) -> Rank1Reranker:
    return Rank1Reranker(engine, model_key=choice.model.key or engine.model, budget=choice.model.budget, cache=cache)


def open_batch_reranker(settings: RerankSettings, choice: Choice, cache: JudgmentCache
                        ) -> Rank1Reranker | ReasonRankReranker:
    """The reranker the settings name, for a batch run, keeping its outputs in the batch's own cache."""
    engine, choice = _open_engine(settings, choice)
    if settings.reranker == "reasonrank":
        return _reasonrank(engine, choice, settings, cache)
    return _rank1(engine, choice, cache)


def open_listwise_reranker(settings: RerankSettings, choice: Choice | None = None
                           ) -> tuple[ReasonRankReranker, Choice]:
    """ReasonRank on the engine chosen for this machine (or forced by the settings)."""
    engine, choice = _open_engine(settings, choice)
    return _reasonrank(engine, choice, settings, _settings_cache(settings)), choice


def _reasonrank(engine: Engine, choice: Choice, settings: RerankSettings, cache: JudgmentCache | None
                ) -> ReasonRankReranker:
    return ReasonRankReranker(engine, model_key=choice.model.key or engine.model, budget=choice.model.budget,
                              window=settings.window, step=settings.step, passage_tokens=settings.passage_tokens,
                              cache=cache)


def rerank_candidates(first_stage: FirstStage, query: str, top_k: int, method: RetrievalMethod | None = None
                      ) -> tuple[Candidate, ...]:
    """What the reranker judges for ``query``: the best passage of each of the ``top_k`` best documents, from a
    first-stage search deep enough that long documents split into many passages still fill ``top_k``."""
    return document_candidates(first_stage.search(query, max(top_k * 5, 100), method), top_k)


def reranked(query: str, candidates: Sequence[Candidate], judgments: dict[str, Judged | Failed]) -> Ranking:
    """Candidates by P(true), ties in first-stage order; those without a verdict keep their first-stage order
    at the end, with no rank1 score."""
    board = Board(query=query, instruction="", candidates=candidates)
    for event in judgments.values():
        board.apply(event)
    positions = board.reranked_positions()
    ordered = []
    for state in board.ordered():
        candidate = state.candidate
        if state.judged is not None:
            hit = Hit(rank=positions[state.doc_id], score=state.judged.p_true)
            candidate = Candidate(passage=candidate.passage, stage=Rank1Reranker.name,
                                  provenance={**candidate.provenance, Rank1Reranker.name: hit})
        ordered.append(candidate)
    return Ranking(query=query, stage=Rank1Reranker.name, candidates=tuple(ordered))


async def collect(reranker: Rank1Reranker, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                  template: str = "") -> tuple[Ranking, dict[str, Judged | Failed]]:
    judgments: dict[str, Judged | Failed] = {}
    async for event in reranker.stream(query, candidates, instruction=instruction, template=template):
        if isinstance(event, Judged | Failed):
            judgments[event.doc_id] = event
    return reranked(query, candidates, judgments), judgments


def rerank(reranker: Rank1Reranker, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
           template: str = "") -> Ranking:
    """The final reranked ranking, for scripts that do not watch the stream."""
    return asyncio.run(collect(reranker, query, candidates, instruction=instruction, template=template))[0]
