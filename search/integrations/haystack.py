"""Haystack: ``ReasoningRanker``, a ranker component whose documents keep the reasoning, verdict or grade,
``relevance_score`` and evidence in their ``meta`` (and the score in ``score``).

    from search.integrations.haystack import ReasoningRanker

    ranker = ReasoningRanker(reranker="http://127.0.0.1:8080", top_k=3)   # or open_reranker(...)
    ranker.run(query="which planets have no moons", documents=documents)["documents"][0].meta["reasoning"]
"""

from __future__ import annotations

import dataclasses
from typing import Any

from search.integrations.source import HttpReranker, RerankOptions, Reranks, reranks, result_metadata

try:
    from haystack import Document, component, default_from_dict, default_to_dict
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("search.integrations.haystack needs Haystack: pip install 'explainable-search[haystack]'"
                      ) from error


@component
class ReasoningRanker:
    """Ranks Haystack documents with a reasoning reranker, best ``top_k`` first (None: all). Serialisable in a
    pipeline when it reranks over HTTP."""

    def __init__(self, reranker: Reranks | str, top_k: int | None = 3, options: RerankOptions | None = None) -> None:
        self.reranker = reranks(reranker)
        self.top_k = top_k
        self.options = options or RerankOptions()

    def to_dict(self) -> dict[str, Any]:
        if not isinstance(self.reranker, HttpReranker):
            raise TypeError("ReasoningRanker serialises only with an HTTP reranker (a model in process has no "
                            "address to save)")
        return default_to_dict(self, reranker=self.reranker.base_url, top_k=self.top_k,
                               options=self.options.asdict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReasoningRanker:
        parameters = data["init_parameters"]
        parameters["options"] = RerankOptions(**parameters.get("options") or {})
        return default_from_dict(cls, data)

    def _reranked(self, documents: list[Document], results: list) -> dict[str, list[Document]]:
        return {"documents": [
            dataclasses.replace(documents[result.index], score=result.relevance_score,
                                meta={**documents[result.index].meta, **result_metadata(result)})
            for result in results]}

    @component.output_types(documents=list[Document])
    def run(self, query: str, documents: list[Document], top_k: int | None = None) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        results = self.reranker.rerank(query, [document.content or "" for document in documents],
                                       top_n=top_k or self.top_k, **self.options.asdict())
        return self._reranked(documents, results)

    @component.output_types(documents=list[Document])
    async def run_async(self, query: str, documents: list[Document], top_k: int | None = None
                        ) -> dict[str, list[Document]]:
        if not documents:
            return {"documents": []}
        results = await self.reranker.arerank(query, [document.content or "" for document in documents],
                                              top_n=top_k or self.top_k, **self.options.asdict())
        return self._reranked(documents, results)
