"""The product's spine: query → first-stage candidates → a reranker's one stream of events. The page, the command
line, the API and batch runs all go through here: ``open_model`` starts the engine the settings ask for (or the
best this machine can run), ``build_reranker`` builds any reranker on it, and ``collect`` / ``rerank`` are the
forms for scripts that do not watch the stream."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from search.engines import Engine, EngineError, cuda_available, engine_kind, on_zero_gpu, open_engine
from search.engines.base import GenerationRequest, cpu_dtype
from search.models import DEMO, REGISTRY, ResolvedModel, Weights, hub_cached, hub_offline, model_weights, resolve_model
from search.rerank.base import Reranker, Run
from search.rerank.cache import JudgmentCache
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate, Ranking
from search.settings import (
    DEFAULT_RERANKER,
    EngineKind,
    EngineSettings,
    ModelAccess,
    RerankSettings,
    SettingsError,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class Choice:
    """The model and engine picked, the context to open it with, and why (shown to the user)."""

    model: ResolvedModel
    engine: EngineKind
    max_model_len: int
    on_cpu: bool
    """Whether the engine will compute on this machine's CPU (``Engine.on_cpu`` before it starts)."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadedModel:
    """A started engine with the model it serves, as the catalogue knows it: what every reranker is built on."""

    engine: Engine
    model: ResolvedModel
    notes: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        """The weights' identity in caches and stored judgments."""
        return self.model.key or self.engine.model


def choose(serving: EngineSettings, reranker: str = DEFAULT_RERANKER) -> Choice:
    """Model and engine for this machine unless the settings force them: the reranker's own default model (its
    GPU model with vLLM on a GPU and with transformers on ZeroGPU, its small one elsewhere); with no hub and no
    cached copy, the demo model."""
    defaults = reranker_class(reranker).defaults
    kind = engine_kind(serving)
    notes = []
    name = serving.model
    if name == "auto" and kind == "openai":
        name = ""  # whatever the servers serve
    elif name == "auto":
        zero_gpu = kind == "transformers" and on_zero_gpu()
        on_gpu = (kind == "vllm" and cuda_available()) or zero_gpu
        name = defaults.model_on_gpu if on_gpu else defaults.model_elsewhere
        if not hub_cached(REGISTRY[name].source) and hub_offline():
            notes.append(f"the Hugging Face Hub is unreachable and {name} is not cached, so the demo model runs: "
                         "its verdicts are not meaningful")
            name = DEMO
        else:
            notes.append(f"{name} on {kind} ({'ZeroGPU' if zero_gpu else 'GPU' if on_gpu else 'CPU'})")
    model = resolve_model(name) if name else ResolvedModel(name="", location="", key="", is_demo=False)
    on_cpu = kind != "openai" and not (cuda_available() or (kind == "transformers" and on_zero_gpu()))
    return Choice(model=model, engine=kind, notes=tuple(notes), on_cpu=on_cpu,
                  max_model_len=serving.max_model_len or model.max_model_len or defaults.max_model_len)


def open_model(serving: EngineSettings, reranker: str = DEFAULT_RERANKER, choice: Choice | None = None
               ) -> LoadedModel:
    """The engine chosen for this machine (or forced by the settings), with a context that holds ``reranker``'s
    prompts; refused early when its weights cannot be had."""
    choice = choice or choose(serving, reranker)
    location = choice.model.location
    if location and not Path(location).is_dir() and not hub_cached(location) and hub_offline():
        raise EngineError(f"{location} is not in the local Hugging Face cache and the Hub cannot be reached; "
                          "choose the demo model or a local folder")
    engine = open_engine(choice.engine, model=choice.model.key, location=location,
                         max_model_len=choice.max_model_len, settings=serving)
    return LoadedModel(engine=engine, model=choice.model, notes=choice.notes)


@dataclass(frozen=True, kw_only=True, slots=True)
class MemoryNeed:
    """What loading a model beside those already loaded would take from this machine, measured before loading."""

    needed_gb: float | None
    """Its weights as the engine holds them (on a CPU in what ``--dtype auto`` means there: float32 takes twice the
    catalogue's bf16 size); None: unknown, and then it is not loaded."""
    free_gb: float | None
    """Memory free now where it would load (GPU memory on a GPU, RAM on a CPU); None: it runs on servers."""
    where: str
    unknown_because: str = ""
    """Why ``needed_gb`` is None."""

    @property
    def fits(self) -> bool:
        """Known and no more than what is free (a model whose need is unknown could take any amount)."""
        return self.free_gb is None or (self.needed_gb is not None and self.needed_gb <= self.free_gb)

    def describe(self, name: str, *, room: bool = False) -> str:
        """The need against what is free; ``room``: closing models opened earlier would make it fit."""
        if self.free_gb is None:
            return f"{name} runs on the servers; it needs no memory here."
        if self.needed_gb is None:
            return (f"{name}: how much memory it needs is unknown ({self.unknown_because}), so it is not loaded; "
                    f"{self.free_gb:.1f} GB of {self.where} is free now.")
        verdict = ("" if self.fits else " The least recently used models opened earlier are closed to make room."
                   if room else " It does not fit: choose a smaller model, or serve it elsewhere (the openai engine).")
        return (f"{name} needs about {self.needed_gb:.1f} GB of {self.where}; {self.free_gb:.1f} GB is free now."
                f"{verdict}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Memory:
    """The memory where models load on this machine: GPU memory on a GPU, RAM (in the CPU's dtype) elsewhere."""

    free_gb: float
    total_gb: float
    where: str
    bytes_per_parameter: int
    """What one parameter takes there on a CPU (float32 or bfloat16); 0 on a GPU, where weights load as stored."""

    def need_gb(self, weights: Weights) -> float:
        return weights.parameters * self.bytes_per_parameter / 1e9 if self.bytes_per_parameter else weights.stored_gb


def memory_here() -> Memory:
    if cuda_available():
        import torch

        free, total = torch.cuda.mem_get_info()
        return Memory(free_gb=free / 1e9, total_gb=total / 1e9, where="GPU memory", bytes_per_parameter=0)
    import psutil

    dtype = cpu_dtype("auto", "cpu")
    memory = psutil.virtual_memory()
    return Memory(free_gb=memory.available / 1e9, total_gb=memory.total / 1e9, where=f"memory ({dtype} on the CPU)",
                  bytes_per_parameter=4 if dtype == "float32" else 2)


def memory_need(name: str, engine: EngineKind) -> MemoryNeed:
    """What ``name`` on ``engine`` needs and what is free, before anything loads: a second model is loaded beside
    the first only when its need is known and fits."""
    if engine == "openai":
        return MemoryNeed(needed_gb=None, free_gb=None, where="")
    memory = memory_here()
    try:
        needed: float | None = memory.need_gb(model_weights(name))
        unknown = ""
    except (ValueError, OSError) as error:
        needed, unknown = None, str(error)
    return MemoryNeed(needed_gb=needed, free_gb=memory.free_gb, where=memory.where, unknown_because=unknown)


def model_access(serving: EngineSettings, started: str = "", engine: str = "") -> ModelAccess:
    """``--models`` when given; else the model started (``started``) and the catalogue models that fit this
    machine's memory (all of it, not what is free now: ``memory_need`` checks that when one is chosen). On the
    engine started (``engine``); with none started, the engine asked for, transformers for ``auto``."""
    engines = (engine or (serving.engine if serving.engine != "auto" else "transformers"),)
    if serving.model_names:
        return ModelAccess(names=serving.model_names, engines=engines)
    memory = memory_here()
    fitting = [name for name in REGISTRY if memory.need_gb(model_weights(name)) <= memory.total_gb]
    return ModelAccess(names=tuple(dict.fromkeys([started, *fitting] if started else fitting)), engines=engines)


_caches: dict[Path, JudgmentCache] = {}
_caches_lock = threading.Lock()


def judgment_cache(settings: RerankSettings) -> JudgmentCache | None:
    """The judgment cache the settings name (one connection per file, shared), or None when it is off."""
    if not settings.judgment_cache:
        return None
    with _caches_lock:
        cache = _caches.get(settings.judgment_cache_path)
        if cache is None:
            cache = _caches[settings.judgment_cache_path] = JudgmentCache(settings.judgment_cache_path)
        return cache


def reranker_budget(settings: RerankSettings, model: ResolvedModel | None, *, on_cpu: bool) -> int:
    """The reasoning budget of the settings' reranker (``Reranker.budget_for``) on ``model`` (None: none loaded)."""
    return reranker_class(settings.reranker).budget_for(asked=settings.budget, model_needs=model.budget if model else 0,
                                                        on_cpu=on_cpu)


def planned_model_key(serving: EngineSettings, choice: Choice) -> str | None:
    """The key ``open_model`` will give the weights, before any engine starts: the chosen model's, or for
    servers that pick it, the model the first one that answers serves (None when none answers yet)."""
    if choice.model.key:
        return choice.model.key
    from search.engines.openai_engine import served_model

    return served_model(serving.endpoint_urls, serving.served_model)


def build_reranker(settings: RerankSettings, loaded: LoadedModel, cache: JudgmentCache | None = None) -> Reranker:
    """The reranker the settings name, on ``loaded``'s engine, keeping its judgments in ``cache`` (default: the
    settings' judgment cache). Its budget: ``reranker_budget``. Raises ``SettingsError`` for belief probes or early
    verdicts from a reranker that has none."""
    cls = reranker_class(settings.reranker)
    if (problem := cls.belief_problem(settings)) is not None:
        raise SettingsError(problem)
    budget = reranker_budget(settings, loaded.model, on_cpu=loaded.engine.on_cpu)
    engine = loaded.engine
    if (problem := engine.waiting()) is not None:
        raise EngineError(problem)
    if budget >= engine.max_model_len:
        raise EngineError(f"the reasoning budget ({budget:,} tokens) must be below the context of "
                          f"{engine.description}, {engine.max_model_len:,} tokens, which also holds the prompt; "
                          "lower the budget")
    return cls(engine, model_key=loaded.key, budget=budget, settings=settings,
               cache=cache if cache is not None else judgment_cache(settings))


async def collect(reranker: Reranker, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                  template: str = "") -> Run:
    """The whole run of ``reranker`` over ``candidates``, folded."""
    run = reranker.start_run(query, candidates, instruction=instruction)
    async for event in reranker.stream(query, candidates, instruction=instruction, template=template):
        run.apply(event)
    return run


def rerank(reranker: Reranker, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
           template: str = "") -> Ranking:
    """The final reranked ranking, for scripts that do not watch the stream."""
    return asyncio.run(collect(reranker, query, candidates, instruction=instruction, template=template)).ranking()


logger = logging.getLogger(__name__)
WARM_UP = GenerationRequest(prompt="Is the sky blue? Answer in one word.", max_tokens=4)
"""The one short request ``warm_up`` sends: a tiny prompt, a few new tokens."""


def warm_up(engine: Engine) -> threading.Thread:
    """Send ``WARM_UP`` to ``engine`` on a background thread, so that the first visitor's first query does not pay
    for the engine's first request (measured on the page: first text 15.5 s after a start, 1.5 s warm). The caller
    goes on at once; visitors' requests are served beside it. A failure is logged, never raised: the page serves
    on, and the first query meets the same problem with its own message."""

    async def generate() -> int:
        return sum([len(chunk.token_ids) async for chunk in engine.generate(WARM_UP)])

    def run() -> None:
        started = time.monotonic()
        try:
            tokens = asyncio.run(generate())
        except Exception as error:  # any failure: the page must not fall with its warm-up
            logger.warning("the engine's warm-up failed: %s", error)
            return
        logger.info("engine warmed up: %d tokens in %.1f s", tokens, time.monotonic() - started)

    thread = threading.Thread(target=run, name="engine-warm-up", daemon=True)
    thread.start()
    return thread
