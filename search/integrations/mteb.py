"""MTEB: ``MtebReranker``, our reranker as one of MTEB's cross-encoders (its ``CrossEncoderProtocol``), so a
reranking or retrieval task with top-ranked candidates runs through it as through MTEB's own rerankers:

    import mteb
    from search import open_reranker
    from search.integrations.mteb import MtebReranker

    with open_reranker("rank1-7b", engine="vllm") as reranker:
        results = mteb.evaluate(MtebReranker(reranker), mteb.get_tasks(["NevIR"]))

MTEB hands over (query, document) pairs; each query's documents are reranked together, streaming off and the
judgment cache on (a second run replays), and each pair's score is its ``relevance_score``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from search.api import ReasoningReranker
from search.integrations.source import HttpReranker, RerankOptions, Reranks, reranks

try:
    from mteb.models.model_meta import ModelMeta
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("search.integrations.mteb needs MTEB: pip install 'explainable-search[mteb]'") from error

REFERENCE = "https://github.com/orionw/rank1"


class MtebReranker:
    """A reasoning reranker (in process, or our API's URL) as an MTEB cross-encoder."""

    def __init__(self, reranker: Reranks | str, *, options: RerankOptions | None = None, name: str = "") -> None:
        self.reranker = reranks(reranker)
        self.options = options or RerankOptions()
        self.name = name or _name(self.reranker)

    @property
    def mteb_model_meta(self) -> ModelMeta:
        """What MTEB files results under: the model, and the settings that change its scores."""
        return ModelMeta(
            loader=None, name=f"explainable-search/{self.name}", revision=None, release_date=None, languages=None,
            n_parameters=None, memory_usage_mb=None, max_tokens=None, embed_dim=None, license=None,
            open_weights=None, public_training_code=None, public_training_data=None, framework=["PyTorch"],
            reference=REFERENCE, similarity_fn_name=None, use_instructions=True, training_datasets=None,
            model_type=["cross-encoder"],
            experiment_kwargs={key: value for key, value in self.options.asdict().items() if value not in (None, "")})

    def predict(self, inputs1: Iterable[dict[str, Any]], inputs2: Iterable[dict[str, Any]], *, task_metadata: Any,
                hf_split: str, hf_subset: str, prompt_type: Any = None, **kwargs: Any) -> np.ndarray:
        """Each pair's ``relevance_score`` (0 for a document that failed), the pairs' queries in ``inputs1`` and
        documents in ``inputs2``, batch by batch. A task's per-query instruction is the reranker's ``instruction``
        (the options' one otherwise)."""
        queries = [_query(batch, row) for batch in inputs1 for row in range(len(batch["text"]))]
        documents = [text for batch in inputs2 for text in batch["text"]]
        if len(queries) != len(documents):
            raise ValueError(f"MTEB gave {len(queries)} queries for {len(documents)} documents")
        pairs: dict[tuple[str, str], list[int]] = {}
        for index, query in enumerate(queries):
            pairs.setdefault(query, []).append(index)
        scores = np.zeros(len(queries), dtype=np.float64)
        for (query, instruction), indices in pairs.items():
            options = self.options.asdict() | ({"instruction": instruction} if instruction else {})
            for result in self.reranker.rerank(query, [documents[index] for index in indices], **options):
                scores[indices[result.index]] = result.relevance_score
        return scores


def _query(batch: dict[str, Any], row: int) -> tuple[str, str]:
    """The query's text (MTEB's ``query`` column when it has one) and its instruction ("" when none)."""
    text = (batch.get("query") or batch["text"])[row]
    instructions = batch.get("instruction")
    return text, (instructions[row] or "") if instructions else ""


def _name(reranker: Reranks) -> str:
    if isinstance(reranker, ReasoningReranker):
        return reranker.model
    if isinstance(reranker, HttpReranker):
        return reranker.model or reranker.base_url
    return type(reranker).__name__
