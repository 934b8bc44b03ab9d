"""The rerank API's wire format: Cohere's v2 rerank request and response, with what vLLM's and Jina's answers add
(``model``, ``usage``), Infinity's variant (``document`` a string) and Text Embeddings Inference's shape (``texts``
in, a bare list out), our fields beside them where no client validates them, and errors in the peers' shape. Pure
logic: no server here."""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from search.api import RerankRequest, RerankResult, as_documents
from search.rerank.base import Reranker, Summary
from search.rerank.registry import RERANKERS, reranker_class
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
    belief: bool | None = None
    early_verdict: bool | None = None
    stream: bool = False


TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no")
MAX_DIGITS = 9
"""The most digits of a whole number in a model name: no model's context holds a billion tokens."""
WHOLE_NUMBER = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}")
"""ASCII digits only: ``str.isdigit`` also takes ``²`` and other scripts' digits, which ``int`` refuses."""
TEI_FIELDS = {"texts": "documents", "return_text": "return_documents"}
"""Text Embeddings Inference's request fields, by the name ours has (its ``raw_scores``, ``truncate`` and
``truncation_direction`` are ignored: scores are on 0–1, and the rerankers cut passages to the context)."""


def _whole_number(value: str) -> int:
    if not WHOLE_NUMBER.fullmatch(value):
        raise ValueError(f"is not a whole number of 1 to {MAX_DIGITS} digits 0-9")
    return int(value)


def _flag(value: str) -> bool:
    if value.lower() not in TRUE + FALSE:
        raise ValueError("is not true or false")
    return value.lower() in TRUE


def _reranker(value: str) -> str:
    if value not in RERANKERS:
        raise ValueError(f"is not a reranker; choose one of {', '.join(RERANKERS)}")
    return value


MODEL_SETTINGS: dict[str, Callable[[str], Any]] = {"reranker": _reranker, "budget": _whole_number,
                                                   "evidence": _flag, "belief": _flag, "early_verdict": _flag,
                                                   "instruction": str}
"""The request fields a ``model`` name may carry after ``?``, for clients that send no fields of their own, each
with what reads its value (or raises ``ValueError`` saying what is wrong with it)."""


def _shown(text: str, limit: int = 60) -> str:
    """``text`` as a message quotes it: whole when short, else its start and its length (escaped either way)."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}… ({len(text):,} characters)"


def model_settings(model: str) -> tuple[str, dict[str, Any]]:
    """``rank1-7b?reranker=assessor&budget=256`` → ``("rank1-7b", {"reranker": "assessor", "budget": 256})``: the
    model's name (empty: the one served) and the settings after ``?``, as URL query parameters."""
    name, _, query = model.partition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise ApiError(422, f"model: {_shown(model)}: after '?' write settings as name=value&name=value") from None
    settings: dict[str, Any] = {}
    for key, value in pairs:
        read = MODEL_SETTINGS.get(key)
        if read is None:
            raise ApiError(422, f"model: {_shown(model)}: unknown setting {_shown(key)}; a model name may carry "
                                f"{', '.join(MODEL_SETTINGS)}")
        if key in settings:
            raise ApiError(422, f"model: {_shown(model)}: {key} is given twice")
        try:
            settings[key] = read(value)
        except ValueError as error:
            raise ApiError(422, f"model: {_shown(model)}: {key}={_shown(value)} {error}") from None
    return name, settings


@dataclass(frozen=True, kw_only=True, slots=True)
class ParsedRequest:
    """A valid request: what to rerank, and how to answer."""

    request: RerankRequest
    model: str | None
    return_documents: bool
    stream: bool
    tei: bool = False
    """Sent in Text Embeddings Inference's shape (``texts``): answered in it, a bare list."""


def parse_request(raw: bytes, limits: ApiSettings) -> ParsedRequest:
    """The request in ``raw`` (a JSON body: Cohere's, or Text Embeddings Inference's with ``texts``), or
    ``ApiError``: 400 for JSON that does not parse or asks for nothing, 422 for a field of the wrong type or
    missing, 413 past the limits."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON: {error}") from None
    except RecursionError:
        raise ApiError(400, "the body nests JSON too deeply to read") from None
    except ValueError:  # an integer past int's digit limit, which json.loads reads with int()
        raise ApiError(400, f"the body holds a number of more than {sys.get_int_max_str_digits():,} digits, "
                            "past what JSON is read with") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, got {type(data).__name__}")
    tei = "texts" in data and "documents" not in data
    if tei:
        data = {TEI_FIELDS.get(key, key): value for key, value in data.items()}
    if isinstance(data.get("model"), str):
        data["model"], settings = model_settings(data["model"])
        for key, value in settings.items():
            if data.get(key) is not None and data[key] != value:
                raise ApiError(422, f"model: asks for {key}={value!r}, the body's {key} for {data[key]!r}")
            data[key] = value
    try:
        body = RerankBody.model_validate(data)
    except ValidationError as error:
        theirs = {ours: name for name, ours in TEI_FIELDS.items()} if tei else {}
        raise ApiError(422, "; ".join(_field_error(problem, theirs) for problem in error.errors()[:5])) from None
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
    text = len(body.query.encode()) + len(body.instruction.encode())
    for index, document in enumerate(documents):
        for name in ("text", "title", "id"):
            _check_text(f"documents[{index}].{name}", getattr(document, name) or "")
        size = len(document.title.encode()) + len(document.text.encode())
        if size > limits.api_max_document_bytes:
            raise ApiError(413, f"documents[{index}]: {size:,} bytes; the limit is {limits.api_max_document_bytes:,} "
                                "bytes per document (api_max_document_bytes)")
        text += size
    if text > limits.api_max_text_bytes:
        raise ApiError(413, f"{text:,} bytes of text (the query, instruction and every document's title and text); "
                            f"the limit is {limits.api_max_text_bytes:,} bytes of text per request "
                            "(api_max_text_bytes)")
    request = RerankRequest(query=body.query, documents=documents, top_n=body.top_n, instruction=body.instruction,
                            reranker=body.reranker, budget=body.budget, evidence=body.evidence, belief=body.belief,
                            early_verdict=body.early_verdict)
    return ParsedRequest(request=request, model=body.model or None, return_documents=body.return_documents,
                         stream=body.stream, tei=tei)


def _check_text(field: str, text: str) -> None:
    """400 for text that is not Unicode (a lone surrogate, which JSON's \\u escapes can carry)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ApiError(400, f"{field}: a lone surrogate {text[error.start]!r} at character {error.start} is not "
                            "Unicode text") from None


def _field_error(problem: Any, names: dict[str, str]) -> str:
    """``documents[3].text: Input should be a valid string`` from one of pydantic's errors, each field by the name
    the client gave it (``names``: ours to theirs)."""
    where = "".join(f"[{part}]" if isinstance(part, int) else f".{names.get(part, part)}"
                    for part in problem["loc"]).lstrip(".")
    return f"{where or 'body'}: {problem['msg']}"


def response(results: list[RerankResult], parsed: ParsedRequest, *, failed: int, unfinished: int, cut_short: str,
             model: str, reranker: Reranker, summary: Summary, seconds: float, documents_as_text: bool = False
             ) -> dict[str, Any]:
    """Cohere's v2 response (``id``, ``results`` best first, ``meta`` as its SDK's ``ApiMeta``), with vLLM's and
    Jina's ``model`` and ``usage``; what we add to ``meta`` sits under ``explainable_search``, a name no client
    validates. ``unfinished``: documents left unjudged when the run was cut short (``cut_short`` says why).
    ``documents_as_text``: each ``document`` is its text, as Infinity answers."""
    count = len(parsed.request.documents)
    warnings = [f"{failed} of {count} documents failed: each has relevance_score 0 and says why in failure"] * bool(
        failed) + [f"{unfinished} of {count} documents unfinished: {cut_short}"] * bool(unfinished)
    tokens = {"input_tokens": summary.prompt_tokens, "output_tokens": summary.tokens}
    answers = [result.to_json(return_documents=parsed.return_documents) for result in results]
    if documents_as_text and parsed.return_documents:
        answers = [{**answer, "document": result.document.text} for answer, result in zip(answers, results,
                                                                                           strict=True)]
    request = parsed.request
    ours = {"model": model, "reranker": reranker.name, "relevance_score": type(reranker).relevance_meaning,
            "budget": reranker.budget, "evidence": reranker.settings.evidence, "belief": reranker.settings.belief,
            "early_verdict": reranker.settings.early_verdict, "instruction": request.instruction,
            "seconds": round(seconds, 3), "unfinished": unfinished}
    return {"id": uuid.uuid4().hex, "model": model, "results": answers,
            "usage": {"prompt_tokens": summary.prompt_tokens, "completion_tokens": summary.tokens,
                      "total_tokens": summary.prompt_tokens + summary.tokens},
            "meta": {"api_version": {"version": "2"}, "billed_units": dict(tokens), "tokens": tokens,
                     "warnings": warnings, "explainable_search": ours}}


def tei_response(results: list[RerankResult], parsed: ParsedRequest) -> list[dict[str, Any]]:
    """Text Embeddings Inference's answer: a bare list, best first, of ``index``, ``score`` (the
    ``relevance_score``) and ``text`` when asked (``return_text``), with our fields after them."""
    return [{"index": result.index, "score": result.relevance_score,
             **({"text": result.document.text} if parsed.return_documents else {}),
             **{name: value for name, value in result.to_json().items() if name not in ("index", "relevance_score")}}
            for result in results]


def sse(event: str, data: dict[str, Any] | list[dict[str, Any]]) -> bytes:
    """One Server-Sent Event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()

