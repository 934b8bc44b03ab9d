"""The value every stage takes and gives: a ranking of candidate passages that remembers where each came from."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

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


def top_documents(ranking: Ranking, k: int) -> Ranking:
    """The ``k`` best documents of a passage ranking (MaxP): each document by its best passage, and every rank
    counted in documents: a stage's rank is the document's place among that stage's documents (its best passage
    there), so that "#3" means the third document, never the third passage."""
    documents: dict[str, dict[str, Hit]] = {}
    for stage in dict.fromkeys(stage for candidate in ranking.candidates for stage in candidate.provenance):
        hits = sorted((candidate.provenance[stage].rank, candidate.provenance[stage].score, candidate.passage.doc_id)
                      for candidate in ranking.candidates if stage in candidate.provenance)
        rank = 0
        for _, score, doc_id in hits:
            places = documents.setdefault(doc_id, {})
            if stage not in places:
                rank += 1
                places[stage] = Hit(rank=rank, score=score)
    best: dict[str, Candidate] = {}
    for candidate in ranking.candidates:
        best.setdefault(candidate.passage.doc_id, candidate)
    return Ranking(query=ranking.query, stage=ranking.stage, candidates=tuple(
        Candidate(passage=candidate.passage, stage=candidate.stage, provenance=documents[doc_id])
        for doc_id, candidate in list(best.items())[:k]))


def ranking_from_scores(query: str, stage: str, scored: Sequence[tuple[Passage, float]]) -> Ranking:
    """A ranking of ``scored`` (already best first) as produced by a first-stage retriever."""
    return Ranking(query=query, stage=stage, candidates=tuple(
        Candidate(passage=passage, stage=stage, provenance={stage: Hit(rank=rank, score=float(score))})
        for rank, (passage, score) in enumerate(scored, start=1)
    ))


class Retriever(ABC):
    """A first-stage retriever: queries in, one ranking per query out."""

    name: str

    @property
    @abstractmethod
    def passages(self) -> Sequence[Passage]:
        """Every passage the index holds, in index order."""

    @abstractmethod
    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        """The top ``k`` passages for each query; batched because every backend is faster that way."""

    def search(self, query: str, k: int) -> Ranking:
        return self.search_many([query], k)[0]

    @cached_property
    def passages_per_document(self) -> int:
        return math.ceil(len(self.passages) / max(len({passage.doc_id for passage in self.passages}), 1))

    def search_documents(self, queries: Sequence[str], k: int) -> list[Ranking]:
        """The top ``k`` documents for each query, each by its best passage (``top_documents``). One long document
        split into hundreds of passages must not crowd the others out, so a query whose passages name fewer than
        ``k`` documents is searched again 4× deeper, until they do or the index has nothing more to give: at
        most ⌈log4(passages / k)⌉ + 2 searches, the last one over the whole index."""
        found: dict[int, Ranking] = {}
        pending = list(range(len(queries)))
        depth = k * self.passages_per_document
        while pending:
            depth = min(depth, len(self.passages))
            rankings = self.search_many([queries[position] for position in pending], depth)
            deeper = []
            for position, ranking in zip(pending, rankings, strict=True):
                documents = top_documents(ranking, k)
                if len(documents.candidates) < k and len(ranking.candidates) == depth < len(self.passages):
                    deeper.append(position)
                else:
                    found[position] = documents
            pending, depth = deeper, depth * 4
        return [found[position] for position in range(len(queries))]
