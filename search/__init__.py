"""Explainable Search: retrieval, reranking and evaluation, with no UI code.

The first stage in three lines::

    from pathlib import Path
    from search import Settings, open_first_stage
    first_stage = open_first_stage(Settings().replace(corpus=Path("my_corpus")))
    ranking = first_stage.search("which treatments do not need medication?", k=10)
"""

from search.corpus import Corpus, CorpusError, Document, LoadProblem, Passage, Query, load_corpus, split_documents
from search.evaluation import evaluate
from search.retrieval.first_stage import FirstStage, open_first_stage
from search.retrieval.ranking import Candidate, Hit, Ranking, Retriever
from search.settings import Settings, SettingsError

__all__ = [
    "Candidate", "Corpus", "CorpusError", "Document", "FirstStage", "Hit", "LoadProblem", "Passage", "Query",
    "Ranking", "Retriever", "Settings", "SettingsError", "evaluate", "load_corpus", "open_first_stage",
    "split_documents",
]
