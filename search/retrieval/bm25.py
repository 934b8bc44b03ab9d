"""Lexical retrieval with bm25s (Lucene BM25 over a sparse matrix), chosen over rank-bm25 by benchmark."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import bm25s
import numpy as np
import Stemmer

from search.corpus import Passage
from search.progress import Progress, no_progress
from search.retrieval.ranking import Ranking, Retriever, ranking_from_scores
from search.settings import BM25Settings


def _backend(settings: BM25Settings) -> str:
    """numba scores queries far faster on large corpora (see benchmarks/bm25_engines.py); numpy needs nothing."""
    if settings.bm25_backend != "auto":
        return settings.bm25_backend
    return "numba" if importlib.util.find_spec("numba") is not None else "numpy"


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, model: bm25s.BM25, passages: Sequence[Passage], settings: BM25Settings) -> None:
        self._model = model
        self._passages = passages
        self._stemmer = Stemmer.Stemmer(settings.bm25_stemmer) if settings.bm25_stemmer else None
        self._stopwords = settings.bm25_stopwords or None

    def _tokenize(self, texts: Sequence[str], *, ids: bool) -> bm25s.tokenization.Tokenized | list[list[str]]:
        return bm25s.tokenize(list(texts), stopwords=self._stopwords, stemmer=self._stemmer, return_ids=ids,
                              show_progress=False)

    @classmethod
    def build(cls, passages: Sequence[Passage], settings: BM25Settings,
              progress: Progress = no_progress) -> BM25Retriever:
        progress("BM25 index", 0, 1)
        model = bm25s.BM25(k1=settings.bm25_k1, b=settings.bm25_b, method="lucene", backend=_backend(settings))
        retriever = cls(model, passages, settings)
        model.index(retriever._tokenize([passage.contents for passage in passages], ids=True), show_progress=False)
        progress("BM25 index", 1, 1)
        return retriever

    def save(self, folder: Path) -> None:
        self._model.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path, passages: Sequence[Passage], settings: BM25Settings) -> BM25Retriever:
        model = bm25s.BM25.load(str(folder), show_progress=False, override_params={"backend": _backend(settings)})
        return cls(model, passages, settings)

    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        k = min(k, len(self._passages))
        tokens = self._tokenize(queries, ids=False)
        known = [[token for token in query if token in self._model.vocab_dict] for query in tokens]
        rankings = [ranking_from_scores(query, self.name, []) for query in queries]
        asked = [index for index, query_tokens in enumerate(known) if query_tokens]
        if asked:
            documents, scores = self._model.retrieve([known[index] for index in asked], k=k, show_progress=False,
                                                     n_threads=1)
            for row, index in enumerate(asked):
                matched = np.flatnonzero(scores[row] > 0)
                rankings[index] = ranking_from_scores(
                    queries[index], self.name,
                    [(self._passages[documents[row, column]], scores[row, column]) for column in matched],
                )
        return rankings
