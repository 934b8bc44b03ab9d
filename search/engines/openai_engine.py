"""One or several OpenAI-compatible servers (``/v1/completions`` streaming): ``vllm serve`` replicas on other
machines, or a hosted rank1 API. Each request goes to the endpoint with the fewest requests in flight; a
request that cannot connect is retried on the next endpoint."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest

API_KEY_VARIABLES = ("EXPLAINABLE_SEARCH_API_KEY", "OPENAI_API_KEY")
TOKEN_ID_PREFIX = "token_id:"


@dataclass(kw_only=True, slots=True)
class Endpoint:
    base_url: str
    in_flight: int = 0
    served: int = 0


def api_key() -> str | None:
    return next((os.environ[name] for name in API_KEY_VARIABLES if os.environ.get(name)), None)


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, *, endpoints: Sequence[str], model: str = "", tokenizer_location: str = "",
                 served_model: str = "", max_model_len: int = 0, timeout_s: float = 600.0) -> None:
        from transformers import AutoTokenizer

        if not endpoints:
            raise EngineError("the openai engine needs at least one endpoint URL (--endpoints)")
        super().__init__()
        self.endpoints = [Endpoint(base_url=url.rstrip("/").removesuffix("/v1")) for url in endpoints]
        self.device = f"{len(self.endpoints)} endpoint{'s' if len(self.endpoints) > 1 else ''}"
        headers = {"Authorization": f"Bearer {key}"} if (key := api_key()) else {}
        self._timeout = httpx.Timeout(timeout_s, connect=10.0)
        self._client: httpx.AsyncClient = self._on_loop(self._make_client(headers))
        card = self._on_loop(self._model_card(served_model))
        self.served_model = card["id"]
        self.model = model or self.served_model
        self.max_model_len = max_model_len or int(card.get("max_model_len") or 0)
        if not self.max_model_len:
            self.close()
            raise EngineError(f"{self.endpoints[0].base_url} does not report max_model_len; pass --max-model-len")
        location = tokenizer_location or card.get("root") or self.served_model
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(location)
        except (OSError, ValueError) as error:
            self.close()
            raise EngineError(f"no tokenizer for {location!r} (the served model); pass --model with its hub id "
                              f"or folder: {error}") from error

    async def _make_client(self, headers: dict[str, str]) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=headers, timeout=self._timeout)

    async def _model_card(self, wanted: str) -> dict[str, Any]:
        """The served model's card from the first endpoint that answers (vLLM's has ``root`` and
        ``max_model_len``)."""
        problems = []
        for endpoint in self.endpoints:
            try:
                response = await self._client.get(f"{endpoint.base_url}/v1/models", timeout=10.0)
                response.raise_for_status()
                cards = response.json()["data"]
            except (httpx.HTTPError, KeyError, ValueError) as error:
                problems.append(f"{endpoint.base_url}: {error or type(error).__name__}")
                continue
            for card in cards:
                if not wanted or card["id"] == wanted:
                    return card
            problems.append(f"{endpoint.base_url} serves {[card['id'] for card in cards]}, not {wanted!r}")
        raise EngineError("no OpenAI-compatible endpoint is usable: " + "; ".join(problems))

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

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        body = self._body(request)
        failures = []
        for endpoint in sorted(self.endpoints, key=lambda endpoint: endpoint.in_flight):
            endpoint.in_flight += 1
            started = False
            try:
                async with self._client.stream("POST", f"{endpoint.base_url}/v1/completions", json=body) as response:
                    if response.status_code != 200:
                        detail = (await response.aread()).decode(errors="replace")[:500]
                        raise EngineError(f"{endpoint.base_url} answered {response.status_code}: {detail}")
                    endpoint.served += 1
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        started = True
                        yield self._chunk(json.loads(line[len("data: "):]), request)
                return
            except (httpx.ConnectError, httpx.ConnectTimeout) as error:
                failures.append(f"{endpoint.base_url}: {error or type(error).__name__}")
            except httpx.HTTPError as error:
                if started:
                    raise EngineError(f"{endpoint.base_url} broke off the stream: {error}") from error
                failures.append(f"{endpoint.base_url}: {error or type(error).__name__}")
            finally:
                endpoint.in_flight -= 1
        raise EngineError("every endpoint failed: " + "; ".join(failures))

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

    def active_requests(self) -> int:
        return sum(endpoint.in_flight for endpoint in self.endpoints)

    async def _shutdown(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            await client.aclose()
