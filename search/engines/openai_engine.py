"""One or several OpenAI-compatible servers (``/v1/completions`` streaming): ``vllm serve`` replicas on other
machines, or a hosted rank1 API.

Each request goes to the least busy endpoint that has room (at most ``max_in_flight`` requests each). An
endpoint that refuses, fails or breaks off a stream is taken out, and the request moves on to another endpoint.
A stream broken mid-way continues there from the tokens already received (prompt + those tokens as token ids),
so readers see the same text as from an unbroken stream, never any twice.

Servers come and go: every ``PROBE_EVERY_S`` a background task asks each endpoint that is out (or, before any
has answered, every endpoint) for its model list, and takes it back in when it answers. The engine starts even
when no server is up yet; it reads the served model, its context length and tokenizer from the first that
answers, so reranking works from then on without a restart. When every endpoint is out, a request fails at once
with the reason (``unavailable``) instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest

API_KEY_VARIABLES = ("EXPLAINABLE_SEARCH_ENDPOINT_API_KEY", "OPENAI_API_KEY")
"""Where the key the servers ask for comes from (EXPLAINABLE_SEARCH_API_KEY is the key our own API asks for)."""
TOKEN_ID_PREFIX = "token_id:"
ATTEMPTS_PER_ENDPOINT = 2
"""A request fails after this many failed attempts per endpoint, or at once when every endpoint is out."""
PROBE_EVERY_S = 2.0
PROBE_TIMEOUT_S = 2.0
WAIT_FOR_ROOM_S = 0.02


class _EndpointFailedError(Exception):
    """This attempt failed in a way another endpoint (or this one, later) may not."""


@dataclass(kw_only=True, slots=True)
class Endpoint:
    """One server: its load, what it has served, and whether it is out (failed, until a probe answers)."""

    base_url: str
    in_flight: int = 0
    served: int = 0
    outages: int = 0
    out: bool = False
    problems: list[str] = field(default_factory=list)

    def failed(self, problem: str) -> None:
        self.outages += not self.out
        self.out = True
        self.problems = [*self.problems[-4:], problem]


def auth_headers() -> dict[str, str]:
    key = next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)
    return {"Authorization": f"Bearer {key}"} if key else {}


def served_model(endpoints: Sequence[str], wanted: str = "") -> str | None:
    """The model the first endpoint that answers serves (``wanted`` if it is among them), read without starting
    an engine; None when none answers."""
    for url in endpoints:
        try:
            response = httpx.get(f"{url.rstrip('/').removesuffix('/v1')}/v1/models", headers=auth_headers(),
                                 timeout=PROBE_TIMEOUT_S)
            response.raise_for_status()
            names = [card["id"] for card in response.json()["data"]]
        except (httpx.HTTPError, KeyError, ValueError):
            continue
        return wanted if wanted in names else names[0] if names and not wanted else None
    return None


def spanning_stop(delivered: str, new_text: str, stops: Sequence[str]) -> str | None:
    """The stop string that starts in ``delivered`` and ends in ``new_text``: after a continuation the server
    sees only the new part, so a stop string across the seam is ours to find."""
    for stop in stops:
        for cut in range(1, len(stop)):
            if delivered.endswith(stop[:cut]) and new_text.startswith(stop[cut:]):
                return stop
    return None


class OpenAIEngine(Engine):
    kind = "openai"
    retry_every_s = PROBE_EVERY_S

    def __init__(self, *, endpoints: Sequence[str], model: str = "", tokenizer_location: str = "",
                 served_model: str = "", max_model_len: int = 0, timeout_s: float = 600.0,
                 max_in_flight: int = 64) -> None:
        if not endpoints:
            raise EngineError("the openai engine needs at least one endpoint URL (--endpoints)")
        super().__init__()
        self.endpoints = [Endpoint(base_url=url.rstrip("/").removesuffix("/v1"), out=True,
                                   problems=["not reached yet"]) for url in endpoints]
        self.max_in_flight = max_in_flight
        self.capacity = max_in_flight * len(self.endpoints)
        self.decoding_together = self.capacity
        self.device = f"{len(self.endpoints)} endpoint{'s' if len(self.endpoints) > 1 else ''}"
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._wanted_model = served_model
        self._tokenizer_location = tokenizer_location
        self.served_model = ""
        self.model = model or served_model or "the served model"
        self.max_model_len = max_model_len
        self._probes = 0
        self._client: httpx.AsyncClient = self._on_loop(self._make_client(auth_headers()))
        try:
            self._on_loop(self._probe())
        except EngineError:
            self.close()
            raise
        self._prober = self._on_loop(self._start_probing())

    def waiting(self) -> str | None:
        return None if self.served_model else self.unavailable()

    def unavailable(self) -> str | None:
        """Why no request can go anywhere now (every endpoint out), or None."""
        if all(endpoint.out for endpoint in self.endpoints):
            problems = "; ".join(f"{endpoint.base_url}: {endpoint.problems[-1]}" for endpoint in self.endpoints)
            return f"no server reachable: {problems}"
        return None

    async def _make_client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, timeout=self._timeout)

    async def _start_probing(self) -> asyncio.Task[None]:
        async def forever() -> None:
            while True:
                await asyncio.sleep(PROBE_EVERY_S)
                with contextlib.suppress(EngineError):  # a wrong model or context: said by unavailable()
                    await self._probe()

        return asyncio.create_task(forever())

    async def _next_probe(self) -> None:
        """Until the background probe has asked every endpoint that is out once more."""
        seen = self._probes
        deadline = asyncio.get_running_loop().time() + PROBE_EVERY_S + PROBE_TIMEOUT_S * len(self.endpoints) + 1
        while self._probes == seen and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)

    async def _probe(self) -> None:
        """Ask every endpoint that is out for its models; take back in those that answer with the wanted model,
        and read the model's card from the first such answer. Raises ``EngineError`` when a server answers but
        cannot serve (another model, no context length, no tokenizer): a setting to fix, not a server to wait
        for."""
        for endpoint in [endpoint for endpoint in self.endpoints if endpoint.out]:
            try:
                response = await self._client.get(f"{endpoint.base_url}/v1/models", timeout=PROBE_TIMEOUT_S)
                response.raise_for_status()
                cards = response.json()["data"]
            except (httpx.HTTPError, KeyError, ValueError) as error:
                endpoint.problems = [*endpoint.problems[-4:], str(error) or type(error).__name__]
                continue
            wanted = self._wanted_model or self.served_model
            card = next((card for card in cards if not wanted or card["id"] == wanted), None)
            try:
                if card is None:
                    raise EngineError(f"{endpoint.base_url} serves {[card['id'] for card in cards]}, not {wanted!r}")
                if not self.served_model:
                    await self._read_card(card, endpoint.base_url)
            except EngineError as error:
                endpoint.problems = [*endpoint.problems[-4:], str(error)]
                raise
            endpoint.out = False
        self._probes += 1

    async def _read_card(self, card: dict[str, Any], base_url: str) -> None:
        """The served model's name, context length and tokenizer, from the first server's card (vLLM's has
        ``root`` and ``max_model_len``)."""
        from transformers import AutoTokenizer

        max_model_len = self.max_model_len or int(card.get("max_model_len") or 0)
        if not max_model_len:
            raise EngineError(f"{base_url} does not report max_model_len; pass --max-model-len")
        location = self._tokenizer_location or card.get("root") or card["id"]
        try:
            self.tokenizer = await asyncio.to_thread(AutoTokenizer.from_pretrained, location)
        except (OSError, ValueError) as error:
            raise EngineError(f"no tokenizer for {location!r} (the served model); pass --model with its hub id "
                              f"or folder: {error}") from error
        self.max_model_len = max_model_len
        if self.model == "the served model":
            self.model = card["id"]
        self.served_model = card["id"]

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.served_model, "prompt": request.prompt, "max_tokens": request.max_tokens,
            "temperature": 0.0, "stream": True, "skip_special_tokens": False, "return_tokens_as_token_ids": True,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.watch_token_ids:
            # vLLM returns exactly these tokens' log-probabilities at every position.
            body["logprobs"] = len(request.watch_token_ids)
            body["logprob_token_ids"] = list(request.watch_token_ids)
        if request.allowed_token_ids:
            body["allowed_token_ids"] = list(request.allowed_token_ids)
        return body

    async def _endpoint(self, tried: set[str]) -> Endpoint:
        """The least busy endpoint that is in and has room (one not yet tried for this request first), once
        there is one; its slot is taken. When every endpoint is out, waits for the next probe (a server that
        hiccuped is back by then) and raises ``EngineError`` with the reason if none is back."""
        while True:
            if self.unavailable() is not None:
                await self._next_probe()
            if (problem := self.unavailable()) is not None:
                raise EngineError(f"{problem}; retrying every {self.retry_every_s:g} s")
            room = [endpoint for endpoint in self.endpoints if not endpoint.out
                    and endpoint.in_flight < self.max_in_flight]
            if room:
                endpoint = min(room, key=lambda endpoint: (endpoint.base_url in tried, endpoint.in_flight))
                endpoint.in_flight += 1
                return endpoint
            await asyncio.sleep(WAIT_FOR_ROOM_S)

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        delivered_ids: list[int] = []
        delivered_text = ""
        tried: set[str] = set()
        for _ in range(ATTEMPTS_PER_ENDPOINT * len(self.endpoints)):
            endpoint = await self._endpoint(tried)
            tried.add(endpoint.base_url)
            try:
                async for chunk in self._attempt(endpoint, request, delivered_ids, delivered_text):
                    delivered_ids += chunk.token_ids
                    delivered_text += chunk.text
                    yield chunk
                    if chunk.finish_reason is not None:
                        break
                return
            except _EndpointFailedError as error:
                endpoint.failed(str(error))
            finally:
                endpoint.in_flight -= 1
        raise EngineError("every endpoint failed: " + "; ".join(
            f"{endpoint.base_url}: {endpoint.problems[-1]}" for endpoint in self.endpoints if endpoint.problems))

    async def _attempt(self, endpoint: Endpoint, request: GenerationRequest, delivered_ids: list[int],
                       delivered_text: str) -> AsyncIterator[GenerationChunk]:
        """One try on one endpoint, continuing after ``delivered_ids`` when an earlier try broke off."""
        body = self._body(request)
        if delivered_ids:
            # With stop strings, vLLM holds back the text of the last few tokens (it could be a stop string's
            # start); the broken stream never sent it, so it is ours to give.
            decoded = self.tokenizer.decode(delivered_ids, skip_special_tokens=False)
            if decoded.startswith(delivered_text) and len(decoded) > len(delivered_text):
                yield GenerationChunk(text=decoded[len(delivered_text):], token_ids=(), logprobs=())
                delivered_text = decoded
            if len(delivered_ids) >= request.max_tokens:  # broken off just before its last chunk
                yield GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason="length")
                return
            body["prompt"] = self.tokenizer(request.prompt).input_ids + delivered_ids
            body["max_tokens"] = request.max_tokens - len(delivered_ids)
        try:
            async with self._client.stream("POST", f"{endpoint.base_url}/v1/completions", json=body) as response:
                if response.status_code != 200:
                    detail = (await response.aread()).decode(errors="replace")[:500]
                    problem = f"answered {response.status_code}: {detail}"
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _EndpointFailedError(problem)
                    raise EngineError(f"{endpoint.base_url} {problem}")
                endpoint.served += 1
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = self._chunk(json.loads(line[len("data: "):]), request)
                    if delivered_ids and (stop := spanning_stop(delivered_text, chunk.text, request.stop)):
                        yield GenerationChunk(text="", token_ids=chunk.token_ids, logprobs=chunk.logprobs,
                                              finish_reason="stop", stop_reason=stop)
                        return
                    yield chunk
        except httpx.HTTPError as error:
            raise _EndpointFailedError(str(error) or type(error).__name__) from error

    def _chunk(self, data: dict[str, Any], request: GenerationRequest) -> GenerationChunk:
        if "error" in data:
            raise EngineError(f"server error: {data['error']}")
        choice = data["choices"][0]
        logprobs = choice.get("logprobs") or {}
        tokens = tuple(self._token_id(token) for token in logprobs.get("tokens") or ())
        watched = tuple(
            {token_id: value for key, value in (entry or {}).items()
             if (token_id := self._token_id(key)) in request.watch_token_ids}
            for entry in logprobs.get("top_logprobs") or ()
        )
        finish = choice.get("finish_reason")
        stop = choice.get("stop_reason")
        return GenerationChunk(
            text=choice.get("text") or "", token_ids=tokens, logprobs=watched,
            finish_reason=None if finish is None else "length" if finish == "length" else "stop",
            stop_reason=stop if isinstance(stop, str) else None,
        )

    def _token_id(self, token: str) -> int:
        """vLLM names tokens ``token_id:N`` when asked; other servers give the token's text."""
        if token.startswith(TOKEN_ID_PREFIX):
            return int(token[len(TOKEN_ID_PREFIX):])
        ids = self.tokenizer(token, add_special_tokens=False).input_ids
        return ids[0] if len(ids) == 1 else -1

    def report(self) -> list[str]:
        total = sum(endpoint.served for endpoint in self.endpoints) or 1
        return [f"{endpoint.base_url}: {endpoint.served} requests ({endpoint.served / total:.0%})"
                + (f", taken out {endpoint.outages} time(s), last because {endpoint.problems[-1]}"
                   if endpoint.outages else "") for endpoint in self.endpoints]

    def active_requests(self) -> int:
        return sum(endpoint.in_flight for endpoint in self.endpoints)

    async def _shutdown(self) -> None:
        prober = getattr(self, "_prober", None)
        if prober is not None:
            prober.cancel()
        client = getattr(self, "_client", None)
        if client is not None:
            await client.aclose()
