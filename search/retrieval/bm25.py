"""Lexical retrieval with bm25s (Lucene BM25 over a sparse matrix), chosen over rank-bm25 by benchmark."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import Stemmer

from search.corpus import Passage
from search.progress import Progress, no_progress
from search.retrieval.ranking import Ranking, Retriever, ranking_from_scores
from search.settings import BM25Settings

if TYPE_CHECKING:
    import bm25s

NUMBA_MIN_PASSAGES = 50_000


def _bm25s() -> ModuleType:
    """bm25s, imported on first use: it loads numba and llvmlite at import, and vLLM's CPU engine processes
    (spawned, re-importing the main script) fail to register their kernels when llvmlite is loaded."""
    import bm25s

    return bm25s


def _backend(settings: BM25Settings, passage_count: int) -> str:
    """At 200k passages numba answers a query in about 1 ms where numpy takes about 30, but it compiles for
    several seconds in every new process; "auto" pays that only on large corpora (benchmarks/bm25_engines.py)."""
    if settings.bm25_backend != "auto":
        return settings.bm25_backend
    large = passage_count >= NUMBA_MIN_PASSAGES
    return "numba" if large and importlib.util.find_spec("numba") is not None else "numpy"


def tokenizer_options(settings: BM25Settings) -> dict[str, object]:
    """The same stopwords and stemmer for passages and queries."""
    return {"stopwords": settings.bm25_stopwords or None,
            "stemmer": Stemmer.Stemmer(settings.bm25_stemmer) if settings.bm25_stemmer else None}


class BM25Retriever(Retriever):
    name = "bm25"

    def __init__(self, model: bm25s.BM25, passages: Sequence[Passage], settings: BM25Settings) -> None:
        self._model = model
        self._passages = passages
        self._tokenizer_options = tokenizer_options(settings)
        if model.backend == "numba" and model.vocab_dict:
            model.retrieve([[next(iter(model.vocab_dict))]], k=1, show_progress=False, n_threads=1)  # compile now

    @classmethod
    def build(cls, passages: Sequence[Passage], settings: BM25Settings,
              progress: Progress = no_progress) -> BM25Retriever:
        progress("BM25 index", 0, 1)
        model = _bm25s().BM25(k1=settings.bm25_k1, b=settings.bm25_b, method="lucene",
                           backend=_backend(settings, len(passages)))
        tokens = _bm25s().tokenize([passage.contents for passage in passages], show_progress=False,
                                **tokenizer_options(settings))
        model.index(tokens, show_progress=False)
        progress("BM25 index", 1, 1)
        return cls(model, passages, settings)

    def save(self, folder: Path) -> None:
        self._model.save(str(folder), show_progress=False)

    @classmethod
    def load(cls, folder: Path, passages: Sequence[Passage], settings: BM25Settings) -> BM25Retriever:
        model = _bm25s().BM25.load(str(folder), show_progress=False,
                                override_params={"backend": _backend(settings, len(passages))})
        return cls(model, passages, settings)

    @property
    def passages(self) -> Sequence[Passage]:
        return self._passages

    def search_many(self, queries: Sequence[str], k: int) -> list[Ranking]:
        k = min(k, len(self._passages))
        tokens = _bm25s().tokenize(list(queries), return_ids=False, show_progress=False, **self._tokenizer_options)
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
