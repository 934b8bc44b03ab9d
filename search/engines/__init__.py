"""Engines that run the reasoning models, one file each behind ``search.engines.base.Engine``, and the one
place that opens them. Heavy libraries are imported only by the engine that needs them."""

from __future__ import annotations

import threading

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.engines.models import Choice, choose
from search.settings import RerankSettings

__all__ = ["Choice", "Engine", "EngineError", "GenerationChunk", "GenerationRequest", "choose", "close_engines",
           "open_engine"]

_open: dict[tuple[object, ...], Engine] = {}
_lock = threading.Lock()


def open_engine(choice: Choice, settings: RerankSettings) -> Engine:
    """The engine for ``choice``, started once per process and shared by every caller after that."""
    model = choice.model
    key = (choice.engine, model.location, model.max_model_len, settings.dtype, settings.endpoint_urls,
           settings.served_model, settings.endpoint_concurrency)
    with _lock:
        engine = _open.get(key)
        if engine is None:
            engine = _open[key] = _start(choice, settings)
        return engine


def _start(choice: Choice, settings: RerankSettings) -> Engine:
    model = choice.model
    if choice.engine == "vllm":
        from search.engines.vllm_engine import VLLMEngine

        return VLLMEngine(model=model.key, location=model.location, max_model_len=model.max_model_len,
                          dtype=settings.dtype, gpu_memory_utilization=settings.gpu_memory_utilization)
    if choice.engine == "openai":
        from search.engines.openai_engine import OpenAIEngine

        return OpenAIEngine(endpoints=settings.endpoint_urls, model=model.key, tokenizer_location=model.location,
                            served_model=settings.served_model, max_model_len=model.max_model_len,
                            timeout_s=settings.request_timeout, max_in_flight=settings.endpoint_concurrency)
    from search.engines.hf_engine import TransformersEngine

    return TransformersEngine(model=model.key, location=model.location, max_model_len=model.max_model_len,
                              dtype=settings.dtype, batch_size=settings.batch_size)


def close_engines() -> None:
    """Stop every engine this process started (vLLM's workers are separate processes)."""
    with _lock:
        for engine in _open.values():
            engine.close()
        _open.clear()
