"""The one small interface every engine implements: stream a completion for a raw prompt, with the
log-probabilities of a few watched tokens at every generated position, and abort it when the reader leaves.

Engines know nothing about relevance. Each runs on its own event loop in a background thread, so one engine
serves every caller in the process (the page's sessions, the CLI, tests) whatever loop they run on.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

FinishReason = Literal["stop", "length", "abort"]
T = TypeVar("T")
_END = object()
log = logging.getLogger(__name__)


NATIVE_BF16 = ("avx512_bf16", "amx_bf16", "bf16")
"""CPU features that compute bf16 in hardware: x86's AVX512-BF16 and AMX-BF16, Arm's BF16 extension, named as
both ``torch.cpu.get_capabilities`` and /proc/cpuinfo name them. AVX-512 alone is not one (oneDNN emulates bf16
there), nor is ``amx_tile`` (AMX's tile registers, which ``amx_bf16`` computes bf16 with)."""


def native_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...]:
    """Which of ``NATIVE_BF16`` this CPU has: PyTorch's own reading of CPUID (``torch.cpu.get_capabilities``, in
    recent PyTorch), else the kernel's flags (x86) or Features (Arm) in ``cpuinfo``; none where neither is there.
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported`` will not do: it is true wherever oneDNN can emulate bf16.)"""
    try:
        import torch

        capabilities = dict(torch.cpu.get_capabilities())
    except (ImportError, AttributeError):
        try:
            lines = cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return ()
        capabilities = {feature: True for line in lines if line.partition(":")[0].strip() in ("flags", "Features")
                        for feature in line.partition(":")[2].split()}
    return tuple(flag for flag in NATIVE_BF16 if capabilities.get(flag) is True)


@functools.cache
def auto_cpu_dtype() -> str:
    """What ``auto`` means on this machine's CPU, decided and logged once: bfloat16 where the CPU computes bf16
    natively (oneDNN's bf16 kernels, the dtype rank1's reference runs use), float32 elsewhere, where bf16 computes
    3–5× slower (benchmarks/cpu_dtype.py, docs/benchmarks.md)."""
    flags = native_bf16_flags()
    chosen = "bfloat16" if flags else "float32"
    log.info("--dtype auto on the CPU: %s (%s)", chosen,
             f"native bf16: {', '.join(flags)}" if flags else f"no native bf16: none of {', '.join(NATIVE_BF16)}")
    return chosen


def cpu_dtype(dtype: str, device: str) -> str:
    """The dtype vLLM and transformers load the weights in: on a CPU, ``auto`` means ``auto_cpu_dtype()``.
    Elsewhere, and for any dtype given, that dtype (``auto``: the weights' own)."""
    return auto_cpu_dtype() if dtype == "auto" and device == "cpu" else dtype


class EngineError(RuntimeError):
    """The engine cannot serve: not installed, failed to start, or a request failed. The message says why."""


def missing_package(package: str, extra: str) -> EngineError:
    return EngineError(f"this engine needs the {package} package: pip install 'explainable-search[{extra}]'")


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationRequest:
    """Greedy decoding of ``prompt`` (raw text, no chat template) for at most ``max_tokens`` tokens."""

    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()
    watch_token_ids: tuple[int, ...] = ()
    allowed_token_ids: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class GenerationChunk:
    """New output since the previous chunk.

    ``logprobs`` has one mapping per new token: the log-probabilities (before any restriction to allowed
    tokens) of the watched tokens the engine returned at that position. ``finish_reason`` is set on the last
    chunk only; ``stop_reason`` is the stop string that ended the output, or None (end of sequence, budget).
    """

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[Mapping[int, float], ...]
    finish_reason: FinishReason | None = None
    stop_reason: str | None = None
    cached_tokens: int = 0
    """Of the prompt's tokens, those the engine's prefix cache served instead of computing them (on the last chunk;
    0 where the engine keeps no cache or does not say)."""


class Engine(ABC):
    """A text-generation engine on a private event loop in a background thread."""

    kind: str
    model: str
    device: str = ""
    tokenizer: PreTrainedTokenizerBase
    max_model_len: int
    capacity: int = 64
    """How many requests are worth keeping in flight at once (batch runs fill this many)."""
    decoding_together: int = 64
    """How many requests decode in one batch (more wait in the engine's queue, first come first served): two
    streams that share the engine each keep at most half this many in flight, so that both decode at once."""
    retry_every_s: float = 0.0
    """How often an engine whose servers are out looks for them again (0: it has no servers)."""
    on_cpu: bool = False
    """Whether the model computes on this machine's CPU, where rerankers default to shorter budgets
    (``RerankerDefaults.cpu_budget``); servers count as accelerated."""
    _unhealthy: str | None = None
    """Set once the engine can serve nothing more (``unhealthy``)."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{type(self).__name__}-loop",
                                        daemon=True)
        self._thread.start()
        self._request_ids = itertools.count()

    def _on_loop(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the engine's loop and wait for it (for start-up and shutdown)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def waiting(self) -> str | None:
        """Why the engine cannot take requests yet (no server has answered so far), or None once it can."""
        return None

    def unavailable(self) -> str | None:
        """Why no request can run now (every server out), or None."""
        return None

    def unhealthy(self) -> str | None:
        """Why the engine can serve no request any more (its worker failed beyond repair, or it was closed), or
        None. Unlike ``unavailable`` this does not pass: every request fails at once with it."""
        return self._unhealthy

    def report(self) -> list[str]:
        """Lines worth showing after a long run (how the work spread over servers); none by default."""
        return []

    def next_request_id(self) -> str:
        return f"{self.kind}-{next(self._request_ids)}"

    @property
    def description(self) -> str:
        return f"{self.model} on {self.kind}" + (f" ({self.device})" if self.device else "")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream ``request`` to the caller's loop. Closing this iterator early (or cancelling the task that
        reads it) aborts the request in the engine."""
        if (reason := self.unhealthy()) is not None:
            raise EngineError(reason)
        caller = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(item: object) -> None:
            with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
                caller.call_soon_threadsafe(queue.put_nowait, item)

        async def pump() -> None:
            try:
                async for chunk in self._generate(request):
                    deliver(chunk)
                deliver(_END)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                deliver(error)

        future = asyncio.run_coroutine_threadsafe(pump(), self._loop)
        try:
            while True:
                item = await queue.get()
                if item is _END:
                    return
                if isinstance(item, Exception):
                    raise item
                yield item
        finally:
            future.cancel()

    @abstractmethod
    def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Stream ``request`` on the engine's loop; must abort the request when cancelled."""

    @abstractmethod
    def active_requests(self) -> int:
        """Requests the engine is still working on (after a cancel this drops to 0)."""

    @abstractmethod
    async def _shutdown(self) -> None:
        """Release the model and any workers, on the engine's loop."""

    def close(self) -> None:
        if not self._loop.is_running():
            return
        self._unhealthy = self._unhealthy or f"the {self.kind} engine was closed"
        try:
            self._on_loop(self._shutdown())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)


@dataclass(frozen=True, kw_only=True, slots=True)
class Step:
    """One forced step: the token chosen, the watched tokens' log-probabilities at its position as the engine
    returned them (before the restriction), and the prompt tokens the engine's prefix cache served."""

    token: int | None
    logprobs: dict[int, float]
    cached_tokens: int = 0


async def one_step(engine: Engine, prompt: str, token_ids: tuple[int, ...]) -> Step:
    """One new token restricted to ``token_ids``: a forced answer."""
    request = GenerationRequest(prompt=prompt, max_tokens=1, watch_token_ids=token_ids, allowed_token_ids=token_ids)
    chunks = [chunk async for chunk in engine.generate(request)]
    generated = [token for chunk in chunks for token in chunk.token_ids]
    logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
    return Step(token=generated[-1] if generated else None, logprobs=dict(logprobs[-1]) if logprobs else {},
                cached_tokens=sum(chunk.cached_tokens for chunk in chunks))


def measured(logprobs: Mapping[int, float], token_ids: Sequence[int]) -> tuple[float, ...] | None:
    """The log-probabilities of every one of ``token_ids``, or None when the engine did not return them all."""
    if all(token in logprobs for token in token_ids):
        return tuple(logprobs[token] for token in token_ids)
    return None
