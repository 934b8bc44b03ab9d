"""LangChain: ``ReasoningCompressor``, a document compressor (for ``ContextualCompressionRetriever``) whose
documents keep the reasoning, verdict or grade, ``relevance_score`` and evidence in their ``metadata``.

    from search.integrations.langchain import ReasoningCompressor

    compressor = ReasoningCompressor(reranker="http://127.0.0.1:8080", top_n=3)   # or open_reranker(...)
    documents = compressor.compress_documents(documents, "which planets have no moons")
    documents[0].metadata["reasoning"]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from search.integrations.source import RerankOptions, Reranks, reranks, result_metadata

try:
    from langchain_core.callbacks import Callbacks
    from langchain_core.documents import BaseDocumentCompressor, Document
    from pydantic import ConfigDict, field_validator
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("search.integrations.langchain needs LangChain: pip install 'explainable-search[langchain]'"
                      ) from error


class ReasoningCompressor(BaseDocumentCompressor):
    """Reranks LangChain documents with a reasoning reranker, best ``top_n`` first (None: all)."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    reranker: Any
    """A ``ReasoningReranker`` (in process), an ``HttpReranker``, or our API's base URL."""
    top_n: int | None = 3
    options: RerankOptions = RerankOptions()

    @field_validator("reranker")
    @classmethod
    def _reranks(cls, reranker: Reranks | str) -> Reranks:
        return reranks(reranker)

    def _reranked(self, documents: Sequence[Document], results: list) -> list[Document]:
        return [Document(page_content=documents[result.index].page_content, id=documents[result.index].id,
                         metadata={**documents[result.index].metadata, **result_metadata(result)})
                for result in results]

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
                           ) -> Sequence[Document]:
        if not documents:
            return []
        results = self.reranker.rerank(query, [document.page_content for document in documents], top_n=self.top_n,
                                       **self.options.asdict())
        return self._reranked(documents, results)

    async def acompress_documents(self, documents: Sequence[Document], query: str,
                                  callbacks: Callbacks | None = None) -> Sequence[Document]:
        if not documents:
            return []
        results = await self.reranker.arerank(query, [document.page_content for document in documents],
                                              top_n=self.top_n, **self.options.asdict())
        return self._reranked(documents, results)
