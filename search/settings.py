"""One typed settings object for every entry point.

Values come from the defaults below, then environment variables (``EXPLAINABLE_SEARCH_<FIELD>``), then
command-line flags (``--field-name``). Flags and variables are derived from the field names, so a new
setting is one line here and nowhere else.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import typing
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "EXPLAINABLE_SEARCH_"
REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CORPUS = REPO_ROOT / "sample_corpus"
if not SAMPLE_CORPUS.is_dir():  # installed (pip install .): the folder is the package data search/sample_corpus
    SAMPLE_CORPUS = Path(__file__).resolve().parent / "sample_corpus"
DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"

FusionMethod = Literal["rrf", "weighted"]
RetrievalMethod = Literal["bm25", "dense", "hybrid"]
BM25Backend = Literal["auto", "numba", "numpy"]
EngineKind = Literal["vllm", "openai", "transformers"]
"""The engines, listed once (``search.engines`` opens them)."""
EngineChoice = Literal["auto", EngineKind]
DEFAULT_RERANKER = "rank1"
"""The reranker used unless one is named (the names: ``search.rerank.registry``)."""


Choices = Mapping[str, Iterable[str]]
"""Valid values of settings whose type does not list them, by setting (the rerankers' names: their registry has
them, ``search.rerank.registry.SETTING_CHOICES``)."""


class SettingsError(ValueError):
    """A setting has a value that cannot work; the message names the setting."""


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


PERSISTENT_STORAGE = Path(os.environ.get("EXPLAINABLE_SEARCH_PERSISTENT_STORAGE") or "/data")
"""Where Hugging Face Spaces mounts persistent storage (another mounted volume elsewhere, named by the variable)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Storage:
    """Where the app keeps what it builds (``cache``: indexes, converted models, cached judgments) and what must
    not be lost (``data``: annotation projects, uploaded corpora, batch runs)."""

    cache: Path
    data: Path
    persistent_root: Path | None
    """Mounted persistent storage (Spaces' ``/data``) when there is some: ``cache`` and ``data`` are in it."""
    on_space: bool
    """On Hugging Face Spaces, whose disk is reset on every restart except for persistent storage."""

    @classmethod
    def find(cls, persistent_root: Path = PERSISTENT_STORAGE) -> Storage:
        """Persistent storage when it is mounted and writable, else the XDG folders (``~/.cache``,
        ``~/.local/share``)."""
        on_space = bool(os.environ.get("SPACE_ID"))
        if persistent_root.is_dir() and os.access(persistent_root, os.W_OK | os.X_OK):
            home = persistent_root / "explainable-search"
            return cls(cache=home / "cache", data=home, persistent_root=persistent_root, on_space=on_space)
        return cls(cache=Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "explainable-search",
                   data=Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") /
                   "explainable-search", persistent_root=None, on_space=on_space)

    def outlives_restart(self, path: Path) -> bool:
        """Whether what is kept at ``path`` is still there after a restart: anywhere off Spaces; on a Space only on
        its persistent storage."""
        return not self.on_space or (self.persistent_root is not None
                                     and path.resolve().is_relative_to(self.persistent_root.resolve()))


STORAGE = Storage.find()
"""This process's storage: every default path below is in it."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CorpusSettings:
    """Where the corpus is and how its records are read."""

    corpus: Path = _setting(SAMPLE_CORPUS, "corpus: a BEIR folder, a JSONL/CSV/TSV file, a folder of .txt/.md, or "
                                           "irds:<ir_datasets id>")
    id_field: str = _setting("", "record field holding the document id (default: _id, id, docid or doc_id)")
    title_field: str = _setting("", "record field holding the title (default: title, if present)")
    text_field: str = _setting("", "record field holding the text (default: text, contents or body)")
    skip_bad: bool = _setting(False, "load the good records of a corpus with bad ones, and report what was dropped")


@dataclass(frozen=True, kw_only=True, slots=True)
class PassageSettings:
    """How long documents are split into passages."""

    passage_window: int = _setting(256, "passage length in units (0: never split)")
    passage_overlap: int = _setting(32, "units shared by consecutive passages of one document")
    passage_unit: str = _setting("words", "'words', or a tokenizer (hub id or folder) whose tokens are counted")

    def __post_init__(self) -> None:
        if self.passage_window < 0:
            raise SettingsError(f"passage_window must be 0 or more, got {self.passage_window}")
        if self.passage_window and not 0 <= self.passage_overlap < self.passage_window:
            raise SettingsError(
                f"passage_overlap must be at least 0 and smaller than passage_window ({self.passage_window}), "
                f"got {self.passage_overlap}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class BM25Settings:
    """Lexical retrieval (Lucene BM25 as in bm25s)."""

    bm25_k1: float = _setting(1.2, "BM25 term-frequency saturation")
    bm25_b: float = _setting(0.75, "BM25 length normalisation")
    bm25_stemmer: str = _setting("english", "Snowball stemmer language ('' for none)")
    bm25_stopwords: str = _setting("en", "stopword list language ('' for none)")
    bm25_backend: BM25Backend = _setting("auto", "scoring backend: numba (fast, compiled), numpy, or auto")

    def __post_init__(self) -> None:
        if self.bm25_k1 < 0 or not 0 <= self.bm25_b <= 1:
            raise SettingsError(f"bm25_k1 must be >= 0 and bm25_b in [0, 1], got {self.bm25_k1} and {self.bm25_b}")


@dataclass(frozen=True, kw_only=True, slots=True)
class DenseSettings:
    """Dense retrieval: a sentence-transformers encoder over a FAISS index."""

    encoder: str = _setting(DEFAULT_ENCODER, "sentence-transformers model: hub id or local folder")
    exact_max_passages: int = _setting(100_000, "exact inner-product search up to this many passages, HNSW above")
    hnsw_m: int = _setting(32, "HNSW graph degree")
    hnsw_ef_construction: int = _setting(80, "HNSW candidate list size while building")
    hnsw_ef_search: int = _setting(128, "HNSW candidate list size while searching")
    encode_batch_size: int = _setting(64, "passages encoded per batch")

    def __post_init__(self) -> None:
        for name in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "encode_batch_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class FusionSettings:
    """How the BM25 and dense rankings are combined."""

    method: RetrievalMethod = _setting("hybrid", "first stage: bm25, dense, or hybrid (both, fused)")
    fusion: FusionMethod = _setting("rrf", "rrf: reciprocal rank fusion; weighted: weighted min-max scores")
    rrf_k: int = _setting(60, "RRF constant k in 1 / (k + rank)")
    bm25_weight: float = _setting(0.5, "weighted fusion: weight of BM25 (dense gets 1 - this)")
    fusion_depth: int = _setting(100, "passages taken from each retriever before fusing")

    def __post_init__(self) -> None:
        if self.rrf_k < 0 or not 0 <= self.bm25_weight <= 1 or self.fusion_depth < 1:
            raise SettingsError(
                f"rrf_k must be >= 0, bm25_weight in [0, 1] and fusion_depth >= 1; "
                f"got {self.rrf_k}, {self.bm25_weight}, {self.fusion_depth}"
            )


@dataclass(frozen=True, kw_only=True, slots=True)
class EngineSettings:
    """Which weights, on which engine, and how that engine runs; nothing here knows about relevance."""

    model: str = _setting("auto", "model: a registry name (rank1-7b, reasonrank-7b, qwen2.5-7b-instruct, demo, ...), "
                                  "hub id or local folder (auto: the reranker's default for this machine)")
    engine: EngineChoice = _setting("auto", "engine: vllm (in process), openai (remote servers), transformers")
    max_model_len: int = _setting(0, "context length in tokens (0: what the model and reranker need)")
    endpoints: str = _setting("", "comma-separated base URLs of OpenAI-compatible servers (openai engine)")
    served_model: str = _setting("", "model name to request from the servers (default: the one they serve)")
    request_timeout: float = _setting(600.0, "seconds before a request to a server is given up")
    endpoint_concurrency: int = _setting(64, "openai engine: most requests in flight on one server at once")
    dtype: str = _setting("auto", "weights' data type for vllm and transformers (auto: the model's own; on a CPU, "
                                  "bfloat16 where it has native bf16, else float32)")
    gpu_memory_utilization: float = _setting(0.9, "share of GPU memory vLLM may take")
    batch_size: int = _setting(20, "transformers engine: most requests decoding together (more wait to join)")
    models: str = _setting("", "comma-separated models the page's visitors may load by a link, the Model panel or "
                               "Compare (registry names, hub ids or folders; empty: the model started and the "
                               "registry models that fit this machine's memory)")
    model_idle_seconds: float = _setting(600.0, "a model the page opened for a visitor is closed after this many "
                                                "seconds unused (0: only when another needs its room)")

    def __post_init__(self) -> None:
        for name in ("batch_size", "endpoint_concurrency"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_model_len < 0:
            raise SettingsError(f"max_model_len must be 0 (the model's default) or more, got {self.max_model_len}")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise SettingsError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if not 0 <= self.model_idle_seconds < float("inf"):
            raise SettingsError(f"model_idle_seconds must be 0 or more and finite, got {self.model_idle_seconds}")

    @property
    def endpoint_urls(self) -> tuple[str, ...]:
        return tuple(url.strip() for url in self.endpoints.split(",") if url.strip())

    @property
    def model_names(self) -> tuple[str, ...]:
        """``models`` as a list (empty: the default, ``search.pipeline.model_access``)."""
        return tuple(dict.fromkeys(name.strip() for name in self.models.split(",") if name.strip()))


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelAccess:
    """The models visitors of the page may load, by name, and the engines they may load them on (the page's own:
    a visitor never starts another kind of engine, such as a vLLM server on a CPU Space): anything else is
    refused before it is opened."""

    names: tuple[str, ...]
    engines: tuple[str, ...]

    def refusal(self, name: str, engine: str) -> str | None:
        if name not in self.names:
            return (f"{name!r} is not one of the models this page may load ({', '.join(self.names)}); its operator "
                    "lists them with --models or EXPLAINABLE_SEARCH_MODELS")
        if engine not in self.engines:
            return (f"the {engine} engine: this page loads models on {' or '.join(self.engines)} only (the engine "
                    "its operator started it with)")
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankSettings:
    """The reasoning reranker: which one, over how many candidates, with how much room to think."""

    reranker: str = _setting(DEFAULT_RERANKER, "the reranker, by its name in search/rerank/registry.py")
    top_k: int = _setting(20, "first-stage candidates (documents) reranked per query")
    budget: int = _setting(0, "reasoning budget in new tokens (0: the reranker's default for the hardware)")
    concurrency: int = _setting(0, "rerank-run: documents judged at once (0: what the engine can keep busy)")
    window: int = _setting(20, "reasonrank: passages per window")
    step: int = _setting(10, "reasonrank: how far each window slides (back of the list to the front)")
    passage_tokens: int = _setting(512, "reasonrank: each passage cut to its first this many tokens")
    evidence: bool = _setting(False, "rank1 and assessor: after each judgment, measure which passage sentences it "
                                     "rests on (one re-score per sentence) and check the reasoning's faithfulness")
    belief: bool = _setting(False, "rank1 and assessor: while the model reasons, measure the verdict it would give if "
                                   "its reasoning ended there (the forced verdict step at the reasoning so far), "
                                   "before any reasoning and every belief_every tokens")
    belief_every: int = _setting(0, "belief probes: reasoning tokens between probes (0: the reranker's measured "
                                    "default)")
    page_belief: bool = _setting(True, "the page probes the belief of every rank1 and assessor judgment (its chart and "
                                       "badge) at the measured default interval; the API and batch runs ask for it "
                                       "with belief")
    early_verdict: bool = _setting(False, "rank1 and assessor: stop the reasoning once the belief has settled (the "
                                          "reranker's early-verdict rule) and take the last probe's verdict, marked "
                                          "early; implies belief")
    judgment_cache: bool = _setting(True, "keep judgments on disk and replay them for repeated queries")
    judgment_cache_path: Path = _setting(STORAGE.cache / "judgments.sqlite3", "SQLite file of cached judgments")

    @property
    def probes_belief(self) -> bool:
        """Belief probes run: asked for, or needed by early verdicts."""
        return self.belief or self.early_verdict

    def __post_init__(self) -> None:
        if self.window < 2 or not 1 <= self.step <= self.window or self.passage_tokens < 1:
            raise SettingsError(f"window must be at least 2, step 1 to window ({self.window}) and passage_tokens at "
                                f"least 1; got {self.window}, {self.step} and {self.passage_tokens}")
        if self.top_k < 1:
            raise SettingsError(f"top_k must be at least 1, got {self.top_k}")
        for name in ("budget", "concurrency", "belief_every"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 (the reranker's default) or more, got {getattr(self, name)}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClusterSettings:
    """Past one machine: the Ray cluster rerank-run runs on."""

    ray: str = _setting("", "rerank-run: run on a Ray cluster: auto (the one this machine is part of) or its "
                            "address, e.g. ray://head:10001 (empty: this machine only)")
    ray_workers: int = _setting(0, "rerank-run --ray: workers, each with the model on its engine (0: one per GPU; "
                                   "on a cluster without GPUs, one per node)")

    def __post_init__(self) -> None:
        if self.ray_workers < 0:
            raise SettingsError(f"ray_workers must be 0 (one per GPU, or per node) or more, got {self.ray_workers}")


@dataclass(frozen=True, kw_only=True, slots=True)
class ApiSettings:
    """The rerank API (``/v1/rerank``, beside the page and in ``python -m search serve``): who may call it and
    how much one request may ask."""

    api_key: str = _setting("", "bearer token the rerank API asks for (empty: none asked)")
    api_max_documents: int = _setting(1000, "rerank API: most documents in one request")
    api_max_document_bytes: int = _setting(100_000, "rerank API: most bytes of one document (UTF-8, title and text)")
    api_max_request_bytes: int = _setting(16 * 2**20, "rerank API: most bytes of one request body")
    api_max_text_bytes: int = _setting(4 * 2**20, "rerank API: most bytes of text in one request (the query, "
                                                  "instruction and every document's title and text, UTF-8)")
    api_request_seconds: float = _setting(600.0, "rerank API: a request's deadline, from its arrival; past it the "
                                                 "answer holds what is judged so far, the rest marked unfinished")

    def __post_init__(self) -> None:
        for name in ("api_max_documents", "api_max_document_bytes", "api_max_request_bytes", "api_max_text_bytes"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.api_request_seconds < float("inf"):
            raise SettingsError(f"api_request_seconds must be more than 0 and finite, got {self.api_request_seconds}")


@dataclass(frozen=True, kw_only=True, slots=True)
class Settings:
    """Every setting, grouped by the component that reads it."""

    loading: CorpusSettings = field(default_factory=CorpusSettings)
    passages: PassageSettings = field(default_factory=PassageSettings)
    bm25: BM25Settings = field(default_factory=BM25Settings)
    dense: DenseSettings = field(default_factory=DenseSettings)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    rerank: RerankSettings = field(default_factory=RerankSettings)
    serving: EngineSettings = field(default_factory=EngineSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    index_dir: Path = _setting(STORAGE.cache / "indexes", "where built indexes are kept, keyed by fingerprint")
    annotations: Path = _setting(STORAGE.data / "annotations.sqlite3", "SQLite file of annotation projects")
    batches: Path = _setting(STORAGE.data / "batches", "folder whose rerank-run outputs (one folder each) the "
                                                      "Evaluation tab shows")
    uploads: Path = _setting(STORAGE.data / "corpora", "folder where corpora uploaded on the page are kept, so that "
                                                      "every session sees them after reloads and restarts")
    upload_max_passages: int = _setting(2000, "most passages an uploaded corpus may have, refused before indexing: "
                                              "uploads are indexed one at a time (on a CPU, 5,315 passages took 308 s)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, choices: Choices | None = None) -> Settings:
        """Defaults overridden by ``EXPLAINABLE_SEARCH_*`` variables (``choices``: as for ``add_arguments``)."""
        environ = os.environ if environ is None else environ
        values = {}
        for option in options():
            raw = environ.get(option.env_name)
            if raw is not None:
                values[option.name] = option.parse(raw, source=option.env_name, choices=choices)
        return cls().replace(**values)

    def replace(self, **values: Any) -> Settings:
        """A copy with the named fields changed, wherever in the groups they live; text given for a setting of
        another type (a path, a number) is read as its flag would be."""
        sections: dict[str, dict[str, Any]] = {}
        top: dict[str, Any] = {}
        by_name = {option.name: option for option in options()}
        for name, value in values.items():
            if name not in by_name:
                raise SettingsError(f"unknown setting {name!r}")
            option = by_name[name]
            if isinstance(value, str) and isinstance(option.type, type) and option.type is not str:
                value = option.parse(value, source=f"setting {name}")
            section = option.section
            if section:
                sections.setdefault(section, {})[name] = value
            else:
                top[name] = value
        for section, changes in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **top)


@dataclass(frozen=True, kw_only=True, slots=True)
class Option:
    """One setting as the command line and the environment see it."""

    section: str | None
    name: str
    type: Any
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env_name(self) -> str:
        return ENV_PREFIX + self.name.upper()

    def valid(self, choices: Choices | None = None) -> tuple[str, ...] | None:
        """The values it may take: its type's, else those ``choices`` gives for it; None when any will do."""
        if typing.get_origin(self.type) is Literal:
            return typing.get_args(self.type)
        return tuple((choices or {})[self.name]) if self.name in (choices or {}) else None

    def parse(self, raw: str, *, source: str, choices: Choices | None = None) -> Any:
        """Convert text from a flag or variable, or say which one was wrong."""
        if (valid := self.valid(choices)) is not None:
            if raw not in valid:
                raise SettingsError(f"{source} must be one of {', '.join(valid)}; got {raw!r}")
            return raw
        if self.type is bool:
            lowered = raw.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off", ""}:
                return False
            raise SettingsError(f"{source} must be true or false; got {raw!r}")
        try:
            return self.type(raw)
        except ValueError:
            raise SettingsError(f"{source} must be {self.type.__name__}; got {raw!r}") from None


def _fields_of(cls: type, section: str | None) -> Iterator[Option]:
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if "help" in item.metadata:
            yield Option(section=section, name=item.name, type=hints[item.name], default=item.default,
                         help=item.metadata["help"])
        else:
            yield from _fields_of(hints[item.name], item.name)


def options() -> list[Option]:
    """Every leaf setting, in declaration order."""
    return list(_fields_of(Settings, None))


def add_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (),
                  sections: tuple[str, ...] | None = None, choices: Choices | None = None) -> None:
    """Add one flag per setting (of ``sections`` only, when given), grouped by section; all default to None so
    unset flags keep the environment's value. ``choices``: the valid values of settings whose type does not list
    them (the rerankers' names, which their registry knows)."""
    groups: dict[str | None, argparse._ArgumentGroup] = {}
    for option in options():
        if option.name in skip or (sections is not None and option.section not in sections):
            continue
        if option.section not in groups:
            title = f"{option.section} settings" if option.section else "storage settings"
            groups[option.section] = parser.add_argument_group(title)
        group = groups[option.section]
        default = f"; default {option.default}" if option.default not in ("", None) else ""
        help_text = f"{option.help} (env {option.env_name}{default})"
        listed = option.valid(choices)
        if option.type is bool:
            group.add_argument(option.flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            group.add_argument(
                option.flag, default=None, choices=listed, metavar=None if listed else "VALUE",
                help=help_text,
            )


def from_arguments(namespace: argparse.Namespace, base: Settings | None = None, *, choices: Choices | None = None
                   ) -> Settings:
    """Settings from the environment, overridden by every flag the user gave."""
    base = Settings.from_env(choices=choices) if base is None else base
    values = {}
    for option in options():
        raw = getattr(namespace, option.name, None)
        if raw is None:
            continue
        values[option.name] = raw if isinstance(raw, bool) else option.parse(raw, source=option.flag, choices=choices)
    return base.replace(**values)
