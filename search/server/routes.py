"""The rerank API over HTTP: Cohere's ``POST /v1/rerank`` (also at ``/v2/rerank``, where the cohere SDK's
``ClientV2`` posts, and ``/rerank``, as vLLM's server has them; Infinity's shape under ``/infinity``; a body with
``texts`` in Text Embeddings Inference's shape), streamed as Server-Sent Events with ``"stream": true``;
``GET /v1/models`` and ``GET /health``. Each request ends by its deadline (``api_request_seconds``), which
``/health`` publishes for clients to wait as long. The same routes serve beside the page (app.py) and alone
(``python -m search serve``)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute

from search.api import ReasoningReranker, Reranking
from search.engines import EngineError
from search.rerank.events import Event, event_to_json
from search.rerank.registry import RERANKERS
from search.server.protocol import ApiError, ParsedRequest, parse_request, response, sse, tei_response
from search.settings import ApiSettings, SettingsError

RERANK_PATHS = ("/v1/rerank", "/v2/rerank", "/rerank")
INFINITY_PATHS = ("/infinity/rerank", "/infinity/v1/rerank")
"""Where Infinity's clients (LiteLLM's ``infinity/`` provider) post: the same answer, each ``document`` a string."""
logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiState:
    """What the routes serve: the model (None, with ``problem`` saying why, when none could be opened), the limits,
    and the slots that bound rerank runs at once (shared with the page when it is served beside it)."""

    reranker: ReasoningReranker | None
    limits: ApiSettings
    slots: asyncio.Semaphore
    problem: str = ""


def api_routes(state: ApiState) -> list[BaseRoute]:
    """The API's routes, for ``FastAPI(routes=…)`` or beside Gradio's (``launch(app_kwargs={"routes": …})``)."""
    router = APIRouter()

    async def rerank(request: Request) -> Response:
        started = time.monotonic()
        deadline = started + state.limits.api_request_seconds
        documents_as_text = request.url.path in INFINITY_PATHS
        try:
            _check_key(request, state.limits.api_key)
            raw = await _body(request, state.limits.api_max_request_bytes)
            # Reading JSON and tokenizing take seconds on megabytes of text: off the loop, which serves the others
            parsed = await asyncio.to_thread(parse_request, raw, state.limits)
            reranking = await asyncio.to_thread(_reranking, state, parsed)
        except ApiError as error:
            return _refusal(error)
        logger.info("%s %s", request.url.path, _described(reranking, parsed))
        answer = _Answer(reranking=reranking, parsed=parsed, model=_served(state).model, started=started,
                         documents_as_text=documents_as_text)
        if parsed.stream:
            return StreamingResponse(_streamed(state, reranking, answer, deadline), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        async with contextlib.aclosing(_within(state, reranking, deadline)) as events:
            async for _ in events:
                if await request.is_disconnected():
                    return Response(status_code=499)  # closing the events ends the engine requests
        try:
            return JSONResponse(answer.body())
        except ApiError as error:
            return _refusal(error)

    for path in RERANK_PATHS + INFINITY_PATHS:
        router.add_api_route(path, rerank, methods=["POST"], summary="Rerank documents for a query, with reasoning")

    @router.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            _check_key(request, state.limits.api_key)
        except ApiError as error:
            return _refusal(error)
        served = state.reranker
        cards = [] if served is None else [{
            "id": served.model, "object": "model", "owned_by": "explainable-search", "rerankers": list(RERANKERS),
            "reranker": served.settings.reranker, "max_model_len": served.loaded.engine.max_model_len}]
        return JSONResponse({"object": "list", "data": cards})

    @router.get("/health")
    async def health() -> Response:
        """200 when a request would be served now; 503 with the reason when not (no model, servers out). Both say
        how long a request may take (``request_seconds``), for clients to wait as long."""
        promised = {"request_seconds": state.limits.api_request_seconds}
        if (problem := _not_ready(state)) is not None:
            return JSONResponse({"status": "unavailable", "reason": problem, **promised}, status_code=503)
        served = _served(state)
        return JSONResponse({"status": "ok", "model": served.model, "engine": served.loaded.engine.description,
                             **promised})

    return router.routes


def headless_app(state: ApiState) -> FastAPI:
    """The API alone, for RAG back ends: no page. The interactive docs (``/docs``, ``/redoc``, ``/openapi.json``)
    are served only when no API key is asked for: they cannot send one."""
    documented = {} if not state.limits.api_key else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    return FastAPI(title="Explainable Search rerank API", routes=api_routes(state), **documented)


def _refusal(error: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.status == 503:
        headers["Retry-After"] = "2"
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _check_key(request: Request, key: str) -> None:
    """401 unless the request carries ``Authorization: Bearer <key>`` (when a key is set), compared in constant
    time."""
    if not key:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise ApiError(401, "missing or wrong API key: send Authorization: Bearer <key>",
                       kind="authentication_error")


async def _body(request: Request, limit: int) -> bytes:
    """The body, or 413 as soon as it passes ``limit`` bytes (announced or not)."""
    too_big = ApiError(413, f"the request body is over {limit:,} bytes (api_max_request_bytes)")
    if int(request.headers.get("content-length") or 0) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _not_ready(state: ApiState) -> str | None:
    """Why no request can be served now, or None."""
    if state.reranker is None:
        return f"no model is loaded: {state.problem or 'none was configured'}"
    engine = state.reranker.loaded.engine
    return engine.unhealthy() or engine.waiting() or engine.unavailable()


def _served(state: ApiState) -> ReasoningReranker:
    """The model, once ``_not_ready`` has said there is one."""
    if state.reranker is None:
        raise ApiError(503, state.problem or "no model is loaded", kind="service_unavailable")
    return state.reranker


def _reranking(state: ApiState, parsed: ParsedRequest) -> Reranking:
    if (problem := _not_ready(state)) is not None:
        raise ApiError(503, problem, kind="service_unavailable")
    served = _served(state)
    if parsed.model is not None and parsed.model not in served.names():
        raise ApiError(404, f"model: {parsed.model!r} is not served here; this server serves {served.model!r}",
                       kind="not_found_error")
    try:
        reranking = served.reranking(parsed.request)
    except EngineError as error:  # the budget does not fit the context
        raise ApiError(400, f"budget: {error}") from None
    except SettingsError as error:  # no belief to probe
        raise ApiError(422, f"{'belief' if parsed.request.belief else 'early_verdict'}: {error}") from None
    request = parsed.request
    problem = reranking.reranker.query_problem(request.query, instruction=request.instruction,
                                               candidates=len(request.documents))
    if problem is not None:
        raise ApiError(400, f"query: too long for this model: {problem}")
    return reranking


def _described(reranking: Reranking, parsed: ParsedRequest) -> str:
    """What a request asked for, as the log records it: the settings it reached us with."""
    reranker, request = reranking.reranker, parsed.request
    return (f"model={parsed.model or ''!r} reranker={reranker.name} budget={reranker.budget} "
            f"evidence={reranker.settings.evidence} belief={reranker.settings.belief} "
            f"early_verdict={reranker.settings.early_verdict} instruction={request.instruction!r} "
            f"top_n={request.top_n} "
            f"documents={len(request.documents)} return_documents={parsed.return_documents} stream={parsed.stream}")


@dataclass(frozen=True, kw_only=True, slots=True)
class _Answer:
    """How to answer one request once its run is done."""

    reranking: Reranking
    parsed: ParsedRequest
    model: str
    started: float
    documents_as_text: bool

    def body(self) -> dict[str, Any] | list[dict[str, Any]]:
        """The response (a bare list for Text Embeddings Inference's clients), or 503 when every document failed
        (the engine's reason). Failures are counted in documents, whatever the reranker's unit of work (a listwise
        one fails windows)."""
        reranking, run = self.reranking, self.reranking.run
        failed, count = run.documents_failed(), len(self.parsed.request.documents)
        if failed and failed == count:
            reason = run.failure(run.candidates[0].passage.doc_id)
            raise ApiError(503, f"every document failed: {reason}", kind="service_unavailable")
        if reranking.stopped_because and failed + reranking.unfinished() == count:
            raise ApiError(503, f"no document was judged: {reranking.stopped_because}", kind="service_unavailable")
        if self.parsed.tei:
            return tei_response(reranking.results(), self.parsed)
        return response(reranking.results(), self.parsed, failed=failed, unfinished=reranking.unfinished(),
                        cut_short=reranking.stopped_because, model=self.model, reranker=reranking.reranker,
                        summary=run.summary(), seconds=time.monotonic() - self.started,
                        documents_as_text=self.documents_as_text)


async def _within(state: ApiState, reranking: Reranking, deadline: float) -> AsyncIterator[Event]:
    """The run's events once it holds a slot, until ``deadline`` (``time.monotonic``): then the engine's work on
    it is aborted and the run is cut short with what is judged so far. The deadline bounds only the waits, never
    holds a ``yield``, so no cancellation lands in the reader's code."""
    late = (f"the request's deadline of {state.limits.api_request_seconds:g} s (api_request_seconds) passed "
            "first")
    try:
        await asyncio.wait_for(state.slots.acquire(), deadline - time.monotonic())
    except TimeoutError:
        reranking.cut_short(late)
        return
    try:
        async with contextlib.aclosing(reranking.events()) as events:
            while True:
                try:  # in this task: ``wait_for`` would read them in a task of its own, which a client that goes
                    # away (a cancel scope cancelling again and again) could leave running while they are closed
                    async with asyncio.timeout(deadline - time.monotonic()):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError:  # the events are closed: cancelling them aborted the engine's work
                    reranking.cut_short(late)
                    return
                yield event
    finally:
        state.slots.release()


async def _streamed(state: ApiState, reranking: Reranking, answer: _Answer, deadline: float
                    ) -> AsyncIterator[bytes]:
    """Every event as the model writes it, then ``results`` (the response) or ``error``: a stream that breaks
    ends with an ``error`` event, never cut without one."""
    try:
        async with contextlib.aclosing(_within(state, reranking, deadline)) as events:
            async for event in events:
                yield sse(event.type, event_to_json(event))
        yield sse("results", answer.body())
    except ApiError as error:
        yield sse("error", error.body())
    except Exception as error:
        logger.exception("a streamed rerank failed")
        yield sse("error", ApiError(500, f"the rerank failed: {type(error).__name__}: {error}",
                                    kind="internal_error").body())
