"""Rerankers: pure logic over an Engine behind one interface (``search.rerank.base``), speaking the event
vocabulary of ``search.rerank.events``. ``RERANKERS`` is the one place that maps names to reranker classes."""

from __future__ import annotations

from search.rerank.assessor import AssessorReranker
from search.rerank.base import Reranker, RerankerDefaults, Run, Summary
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker

__all__ = ["RERANKERS", "Reranker", "RerankerDefaults", "Run", "Summary"]

RERANKERS: dict[str, type[Reranker]] = {cls.name: cls for cls in (Rank1Reranker, ReasonRankReranker,
                                                                    AssessorReranker)}
