"""Explainable Search: retrieval, reranking and evaluation, with no UI code.

The first stage in three lines::

    from pathlib import Path
    from search import Settings, open_first_stage
    first_stage = open_first_stage(Settings().replace(corpus=Path("my_corpus")))
    ranking = first_stage.search("which treatments do not need medication?", k=10)

and any documents reranked with their reasoning (``search.api``)::

    from search import open_reranker
    with open_reranker("demo") as reranker:
        results = reranker.rerank("which planets have no moons", ["Mercury has none.", "Mars has two."], top_n=1)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_exports

if TYPE_CHECKING:
    from search.api import ReasoningReranker, RerankDocument, RerankResult, open_reranker
    from search.corpus import Corpus, CorpusError, Document, LoadProblem, Passage, Query, load_corpus
    from search.evaluation import evaluate
    from search.passages import split_documents
    from search.retrieval.first_stage import FirstStage, open_first_stage
    from search.retrieval.ranking import Candidate, Hit, Ranking, Retriever
    from search.settings import Settings, SettingsError

_EXPORTS = {
    "search.api": ("ReasoningReranker", "RerankDocument", "RerankResult", "open_reranker"),
    "search.corpus": ("Corpus", "CorpusError", "Document", "LoadProblem", "Passage", "Query", "load_corpus"),
    "search.passages": ("split_documents",),
    "search.evaluation": ("evaluate",),
    "search.retrieval.first_stage": ("FirstStage", "open_first_stage"),
    "search.retrieval.ranking": ("Candidate", "Hit", "Ranking", "Retriever"),
    "search.settings": ("Settings", "SettingsError"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = [
    "Candidate", "Corpus", "CorpusError", "Document", "FirstStage", "Hit", "LoadProblem", "Passage", "Query",
    "Ranking", "ReasoningReranker", "RerankDocument", "RerankResult", "Retriever", "Settings", "SettingsError",
    "evaluate", "load_corpus", "open_first_stage", "open_reranker", "split_documents",
]
