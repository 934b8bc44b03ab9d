"""What every integration reranks with: a model in process (``open_reranker``) or our HTTP API
(``HttpReranker``), both answering ``rerank``/``arerank`` with ``RerankResult``s; and the metadata each framework's
documents carry from a result."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from search.api import RerankDocument, RerankResult, as_documents

DocumentInput = str | RerankDocument | Mapping[str, Any]


class Reranks(Protocol):
    """``ReasoningReranker`` (in process) and ``HttpReranker`` (over HTTP) alike."""

    def rerank(self, query: str, documents: Sequence[DocumentInput], **options: Any) -> list[RerankResult]: ...

    async def arerank(self, query: str, documents: Sequence[DocumentInput], **options: Any) -> list[RerankResult]: ...


class RerankApiError(RuntimeError):
    """The rerank API refused a request or could not be reached; the message says which URL and why."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankOptions:
    """How to rerank, per call; None: the server's (or the open model's) setting."""

    instruction: str = ""
    reranker: str | None = None
    budget: int | None = None
    evidence: bool | None = None

    def asdict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


@dataclass(frozen=True, kw_only=True, slots=True)
class HttpReranker:
    """Our rerank API at ``base_url`` (``python -m search serve`` or app.py), with a ``ReasoningReranker``'s
    ``rerank`` and ``arerank``: the results come back whole, reasoning and the reranker's fields included."""

    base_url: str
    api_key: str = dataclasses.field(default_factory=lambda: os.environ.get("EXPLAINABLE_SEARCH_API_KEY", ""),
                                     repr=False)
    """The server's ``--api-key``; by default the ``EXPLAINABLE_SEARCH_API_KEY`` variable, as the server reads it."""
    model: str | None = None
    timeout_s: float = 600.0

    def _post(self, query: str, documents: Sequence[DocumentInput], top_n: int | None, options: dict[str, Any]
              ) -> tuple[str, dict[str, Any], dict[str, str], tuple[RerankDocument, ...]]:
        sent = as_documents(documents)
        body = {"query": query, "top_n": top_n, "model": self.model,
                "documents": [{"text": document.text, "title": document.title} for document in sent],
                **{name: value for name, value in options.items() if value not in (None, "")}}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return f"{self.base_url.rstrip('/')}/v1/rerank", body, headers, sent

    def rerank(self, query: str, documents: Sequence[DocumentInput], *, top_n: int | None = None,
               **options: Any) -> list[RerankResult]:
        url, body, headers, sent = self._post(query, documents, top_n, options)
        try:
            answer = httpx.post(url, json=body, headers=headers, timeout=self.timeout_s)
        except httpx.HTTPError as error:
            raise RerankApiError(f"{url}: {error}") from error
        return _results(url, answer, sent)

    async def arerank(self, query: str, documents: Sequence[DocumentInput], *, top_n: int | None = None,
                      **options: Any) -> list[RerankResult]:
        url, body, headers, sent = self._post(query, documents, top_n, options)
        try:
            async with httpx.AsyncClient(timeout=self.timeout_s) as client:
                answer = await client.post(url, json=body, headers=headers)
        except httpx.HTTPError as error:
            raise RerankApiError(f"{url}: {error}") from error
        return _results(url, answer, sent)


def _results(url: str, answer: httpx.Response, sent: tuple[RerankDocument, ...]) -> list[RerankResult]:
    if answer.status_code != 200:
        try:
            message = answer.json()["message"]
        except (ValueError, KeyError, TypeError):
            message = answer.text[:500]
        raise RerankApiError(f"{url}: {answer.status_code}: {message}")
    return [RerankResult.from_json(result, sent) for result in answer.json()["results"]]


def reranks(reranker: Reranks | str) -> Reranks:
    """``reranker`` itself, or our API at the URL it is."""
    return HttpReranker(base_url=reranker) if isinstance(reranker, str) else reranker


def result_metadata(result: RerankResult) -> dict[str, Any]:
    """What a reranked document's metadata gains: ``relevance_score``, ``reasoning``, ``status``, ``failure``, and
    the reranker's own fields (rank1's ``verdict`` and ``p_true``, the assessor's ``grade``…; ``evidence``, its
    sentences and quoted spans, when asked for)."""
    return {"relevance_score": result.relevance_score, "reasoning": result.reasoning, "status": result.status,
            "failure": result.failure, **result.details}
