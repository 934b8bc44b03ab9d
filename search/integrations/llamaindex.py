"""LlamaIndex: ``ReasoningPostprocessor``, a node postprocessor (``node_postprocessors=[…]`` of a query engine)
whose nodes keep the reasoning, verdict or grade, ``relevance_score`` and evidence in their ``metadata``. Those keys
stay out of the text embedded and sent to the LLM (``excluded_*_metadata_keys``), so prompts stay short, unless
``show_to_llm``.

    from search.integrations.llamaindex import ReasoningPostprocessor

    postprocessor = ReasoningPostprocessor(reranker="http://127.0.0.1:8080", top_n=3)   # or open_reranker(...)
    nodes = postprocessor.postprocess_nodes(nodes, query_str="which planets have no moons")
    nodes[0].node.metadata["reasoning"]
"""

from __future__ import annotations

from typing import Any

from search.integrations.source import RerankOptions, Reranks, reranks, result_metadata

try:
    from llama_index.core.bridge.pydantic import ConfigDict, Field, field_validator
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("search.integrations.llamaindex needs LlamaIndex: "
                      "pip install 'explainable-search[llamaindex]'") from error


class ReasoningPostprocessor(BaseNodePostprocessor):
    """Reranks nodes with a reasoning reranker, best ``top_n`` first (None: all); each node's score is the
    ``relevance_score``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    reranker: Any = Field(description="A ReasoningReranker, an HttpReranker, or our API's base URL.")
    top_n: int | None = 3
    options: RerankOptions = Field(default_factory=RerankOptions)
    show_to_llm: bool = Field(default=False, description="Show the reranker's metadata to the embedder and LLM too.")

    @field_validator("reranker")
    @classmethod
    def _reranks(cls, reranker: Reranks | str) -> Reranks:
        return reranks(reranker)

    @classmethod
    def class_name(cls) -> str:
        return "ReasoningPostprocessor"

    def _texts(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[str]]:
        if query_bundle is None:
            raise ValueError("ReasoningPostprocessor needs the query: pass query_str or query_bundle")
        return query_bundle.query_str, [node.node.get_content(metadata_mode=MetadataMode.EMBED) for node in nodes]

    def _reranked(self, nodes: list[NodeWithScore], results: list) -> list[NodeWithScore]:
        reranked = []
        for result in results:
            node = nodes[result.index].node.model_copy()
            added = result_metadata(result)
            node.metadata = {**node.metadata, **added}
            if not self.show_to_llm:
                node.excluded_embed_metadata_keys = [*node.excluded_embed_metadata_keys, *added]
                node.excluded_llm_metadata_keys = [*node.excluded_llm_metadata_keys, *added]
            reranked.append(NodeWithScore(node=node, score=result.relevance_score))
        return reranked

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
                           ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._texts(nodes, query_bundle)
        return self._reranked(nodes, self.reranker.rerank(query, texts, top_n=self.top_n, **self.options.asdict()))

    async def _apostprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
                                  ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, texts = self._texts(nodes, query_bundle)
        results = await self.reranker.arerank(query, texts, top_n=self.top_n, **self.options.asdict())
        return self._reranked(nodes, results)
