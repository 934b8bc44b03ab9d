"""What every integration reranks with: a model in process (``open_reranker``) or our HTTP API
(``HttpReranker``), both answering ``rerank``/``arerank`` with ``RerankResult``s; and the metadata each framework's
documents carry from a result."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from search.api import RerankDocument, RerankResult, as_documents
from search.settings import ApiSettings

DocumentInput = str | RerankDocument | Mapping[str, Any]
GRACE_S = 30.0
"""How much longer than the server's deadline a client waits: for the answer to be written and sent."""
HEALTH_TIMEOUT_S = 10.0
"""How long asking the server for its deadline may take."""


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
    ``rerank`` and ``arerank``: the results come back whole, reasoning and the reranker's fields included. Each
    call waits as long as the server promises to take (its deadline, which ``/health`` publishes), not a fixed
    time that a slow deployment working as designed could pass."""

    base_url: str
    api_key: str = dataclasses.field(default_factory=lambda: os.environ.get("EXPLAINABLE_SEARCH_API_KEY", ""),
                                     repr=False)
    """The server's ``--api-key``; by default the ``EXPLAINABLE_SEARCH_API_KEY`` variable, as the server reads it."""
    model: str | None = None
    timeout_s: float | None = None
    """How long a call waits for its answer; None: the server's deadline and ``GRACE_S``."""

    def request_timeout_s(self) -> float:
        """``timeout_s``, or the server's deadline (its ``/health``'s ``request_seconds``) and ``GRACE_S``."""
        if self.timeout_s is not None:
            return self.timeout_s
        try:
            health = httpx.get(f"{self.base_url.rstrip('/')}/health", timeout=HEALTH_TIMEOUT_S)
        except httpx.HTTPError:
            health = None
        return _waited(health)

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
            answer = httpx.post(url, json=body, headers=headers, timeout=self.request_timeout_s())
        except httpx.HTTPError as error:
            raise RerankApiError(f"{url}: {error}") from error
        return _results(url, answer, sent)

    async def arerank(self, query: str, documents: Sequence[DocumentInput], *, top_n: int | None = None,
                      **options: Any) -> list[RerankResult]:
        url, body, headers, sent = self._post(query, documents, top_n, options)
        try:
            async with httpx.AsyncClient() as client:
                answer = await client.post(url, json=body, headers=headers,
                                           timeout=await asyncio.to_thread(self.request_timeout_s))
        except httpx.HTTPError as error:
            raise RerankApiError(f"{url}: {error}") from error
        return _results(url, answer, sent)


def _waited(health: httpx.Response | None) -> float:
    """How long to wait for an answer: the deadline ``health`` (the server's ``/health``) publishes, or the default
    deadline where it publishes none or could not be asked, and ``GRACE_S``."""
    try:
        seconds = health.json().get("request_seconds") if health is not None else None
    except (ValueError, AttributeError):  # not JSON, or not an object
        seconds = None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or not 0 < seconds < float("inf"):
        seconds = ApiSettings().api_request_seconds
    return seconds + GRACE_S


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
