"""The value every stage takes and gives: a ranking of candidate passages that remembers where each came from."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from search.corpus import Passage


@dataclass(frozen=True, kw_only=True, slots=True)
class Hit:
    """A passage's place in one stage's ranking: rank from 1, and that stage's score."""

    rank: int
    score: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Candidate:
    """A passage with its hit in every stage it went through; ``stage`` names the one that ranked it last."""

    passage: Passage
    stage: str
    provenance: Mapping[str, Hit]

    @property
    def rank(self) -> int:
        return self.provenance[self.stage].rank

    @property
    def score(self) -> float:
        return self.provenance[self.stage].score


@dataclass(frozen=True, kw_only=True, slots=True)
class Ranking:
    """Candidates for one query, best first."""

    query: str
    stage: str
    candidates: tuple[Candidate, ...]

    def documents(self) -> list[tuple[str, float]]:
        """Document ids with the score of their best passage (MaxP), best first."""
        best: dict[str, float] = {}
        for candidate in self.candidates:
            best.setdefault(candidate.passage.doc_id, candidate.score)
        return list(best.items())


def ranking_from_scores(query: str, stage: str, scored: Sequence[tuple[Passage, float]]) -> Ranking:
    """A ranking of ``scored`` (already best first) as produced by a first-stage retriever."""
    return Ranking(query=query, stage=stage, candidates=tuple(
        Candidate(passage=passage, stage=stage, provenance={stage: Hit(rank=rank, score=float(score))})
        for rank, (passage, score) in enumerate(scored, start=1)
    ))


class Retriever(ABC):
    """A first-stage retriever: queries in, one ranking per query out."""

    name: str

    @abstractmethod
    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        """The top ``k`` passages for each query; batched because every backend is faster that way."""

    def search(self, query: str, k: int) -> Ranking:
        return self.search_many([query], k)[0]
