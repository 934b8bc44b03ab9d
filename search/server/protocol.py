"""The rerank API's wire format: Cohere's v2 rerank request and response (what vLLM, Jina, Voyage, Infinity and TEI
also speak), our fields beside them, and errors in the peers' shape. Pure logic: no server here."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.api import RerankRequest, RerankResult, as_documents
from search.rerank.base import Reranker
from search.rerank.registry import reranker_class
from search.settings import ApiSettings, SettingsError


class ApiError(Exception):
    """A request refused: the HTTP status and a message that names the field."""

    def __init__(self, status: int, message: str, *, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind

    def body(self) -> dict[str, Any]:
        """Cohere's ``message`` and, for OpenAI-style clients (vLLM's server answers so), ``error``."""
        return {"message": self.message, "error": {"message": self.message, "type": self.kind, "code": self.status}}


class RerankBody(BaseModel):
    """The request as it arrives; fields other clients send that we do not use (``max_tokens_per_doc``,
    ``rank_fields``) are ignored."""

    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    query: str
    documents: list[Any]
    top_n: int | None = Field(default=None, ge=1)
    return_documents: bool = False
    instruction: str = ""
    reranker: str | None = None
    budget: int | None = Field(default=None, ge=1)
    evidence: bool | None = None
    stream: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedRequest:
    """A valid request: what to rerank, and how to answer."""

    request: RerankRequest
    model: str | None
    return_documents: bool
    stream: bool


def parse_request(raw: bytes, limits: ApiSettings) -> ParsedRequest:
    """The request in ``raw`` (a JSON body), or ``ApiError``: 400 for JSON that does not parse or asks for nothing,
    422 for a field of the wrong type or missing, 413 past the limits."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body nests JSON too deeply to read") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    try:
        body = RerankBody.model_validate(data)
    except ValidationError as error:
        raise ApiError(422, "; ".join(_field_error(problem) for problem in error.errors()[:5])) from None
    if not body.query.strip():
        raise ApiError(400, "query: empty")
    if body.reranker is not None:
        try:
            reranker_class(body.reranker)
        except SettingsError as error:
            raise ApiError(422, str(error)) from None
    if not body.documents:
        raise ApiError(400, "documents: empty; send at least one")
    if len(body.documents) > limits.api_max_documents:
        raise ApiError(413, f"documents: {len(body.documents):,} documents; the limit is {limits.api_max_documents:,} "
                            "per request (api_max_documents)")
    try:
        documents = as_documents(body.documents)
    except TypeError as error:
        raise ApiError(422, str(error)) from None
    _check_text("query", body.query)
    _check_text("instruction", body.instruction)
    for index, document in enumerate(documents):
        for name in ("text", "title", "id"):
            _check_text(f"documents[{index}].{name}", getattr(document, name) or "")
        size = len(document.title.encode()) + len(document.text.encode())
        if size > limits.api_max_document_bytes:
            raise ApiError(413, f"documents[{index}]: {size:,} bytes; the limit is {limits.api_max_document_bytes:,} "
                                "bytes per document (api_max_document_bytes)")
    request = RerankRequest(query=body.query, documents=documents, top_n=body.top_n, instruction=body.instruction,
                            reranker=body.reranker, budget=body.budget, evidence=body.evidence)
    return ParsedRequest(request=request, model=body.model, return_documents=body.return_documents,
                         stream=body.stream)


def _check_text(field: str, text: str) -> None:
    """400 for text that is not Unicode (a lone surrogate, which JSON's \\u escapes can carry)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"{field}: a lone surrogate {text[error.start]!r} at character {error.start} is not "
                            "Unicode text") from None


def _field_error(problem: Any) -> str:
    """``documents[3].text: Input should be a valid string`` from one of pydantic's errors."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in problem["loc"]).lstrip(".")
    return f"{where or 'body'}: {problem['msg']}"


def response(results: list[RerankResult], parsed: ParsedRequest, *, failed: int, model: str,
             reranker: type[Reranker], seconds: float, tokens: int) -> dict[str, Any]:
    """Cohere's v2 response: ``id``, ``results`` best first, ``meta``; ours beside them in ``meta``."""
    count = len(parsed.request.documents)
    warnings = [f"{failed} of {count} documents failed: each has relevance_score 0 and says why in failure"] * bool(
        failed)
    return {"id": uuid.uuid4().hex,
            "results": [result.to_json(return_documents=parsed.return_documents) for result in results],
            "meta": {"api_version": {"version": "2"}, "warnings": warnings, "model": model, "reranker": reranker.name,
                     "relevance_score": reranker.relevance_meaning, "seconds": round(seconds, 3), "tokens": tokens}}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

