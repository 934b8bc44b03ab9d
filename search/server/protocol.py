"""The rerank API's wire format: Cohere's v2 rerank request and response, with what vLLM's and Jina's answers add
(``model``, ``usage``) and Infinity's variant (``document`` a string), our fields beside them where no client
validates them, and errors in the peers' shape. Pure logic: no server here."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.api import RerankRequest, RerankResult, as_documents
from search.rerank.base import Reranker, Summary
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


MODEL_SETTINGS = {"reranker": str, "budget": int, "evidence": bool, "instruction": str}
"""The request fields a ``model`` name may carry after ``?``, for clients that send no fields of their own."""
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")


def model_settings(model: str) -> tuple[str, dict[str, Any]]:
    """``rank1-7b?reranker=assessor&budget=256`` → ``("rank1-7b", {"reranker": "assessor", "budget": 256})``: the
    model's name (empty: the one served) and the settings after ``?``, as URL query parameters."""
    name, _, query = model.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ApiError(422, f"model: {model!r}: after '?' write settings as name=value&name=value") from None
    settings: dict[str, Any] = {}
    for key, value in pairs:
        kind = MODEL_SETTINGS.get(key)
        if kind is None:
            raise ApiError(422, f"model: {model!r}: unknown setting {key!r}; a model name may carry "
                                f"{', '.join(MODEL_SETTINGS)}")
        if key in settings:
            raise ApiError(422, f"model: {model!r}: {key} is given twice")
        settings[key] = _setting(model, key, value, kind)
    return name, settings


def _setting(model: str, key: str, value: str, kind: type) -> Any:
    if kind is int:
        if not value.isdigit():
            raise ApiError(422, f"model: {model!r}: {key}={value!r} is not a whole number")
        return int(value)
    if kind is bool:
        if value.lower() not in TRUE + FALSE:
            raise ApiError(422, f"model: {model!r}: {key}={value!r} is not true or false")
        return value.lower() in TRUE
    return value


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
    if isinstance(data.get("model"), str):
        data["model"], settings = model_settings(data["model"])
        for key, value in settings.items():
            if data.get(key) is not None and data[key] != value:
                raise ApiError(422, f"model: asks for {key}={value!r}, the body's {key} for {data[key]!r}")
            data[key] = value
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
    return ParsedRequest(request=request, model=body.model or None, return_documents=body.return_documents,
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


def response(results: list[RerankResult], parsed: ParsedRequest, *, failed: int, model: str, reranker: Reranker,
             summary: Summary, seconds: float, documents_as_text: bool = False) -> dict[str, Any]:
    """Cohere's v2 response (``id``, ``results`` best first, ``meta`` as its SDK's ``ApiMeta``), with vLLM's and
    Jina's ``model`` and ``usage``; what we add to ``meta`` sits under ``explainable_search``, a name no client
    validates. ``documents_as_text``: each ``document`` is its text, as Infinity answers."""
    count = len(parsed.request.documents)
    warnings = [f"{failed} of {count} documents failed: each has relevance_score 0 and says why in failure"] * bool(
        failed)
    tokens = {"input_tokens": summary.prompt_tokens, "output_tokens": summary.tokens}
    answers = [result.to_json(return_documents=parsed.return_documents) for result in results]
    if documents_as_text and parsed.return_documents:
        answers = [{**answer, "document": result.document.text} for answer, result in zip(answers, results,
                                                                                           strict=True)]
    request = parsed.request
    ours = {"model": model, "reranker": reranker.name, "relevance_score": type(reranker).relevance_meaning,
            "budget": reranker.budget, "evidence": reranker.settings.evidence, "instruction": request.instruction,
            "seconds": round(seconds, 3)}
    return {"id": uuid.uuid4().hex, "model": model, "results": answers,
            "usage": {"prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.tokens,
                      "total_tokens": summary.prompt_tokens + summary.tokens},
            "meta": {"api_version": {"version": "2"}, "billed_units": dict(tokens), "tokens": tokens,
                     "warnings": warnings, "explainable_search": ours}}


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

