"""The model registry and the automatic choice of model and engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from search.engines import EngineError, close_engines
from search.engines.models import DEFAULTS, DEMO, REGISTRY, choose, resolve_model
from search.pipeline import open_reranker
from search.settings import RerankSettings, Settings, SettingsError


def test_registry_names_every_rank1_model_reasonrank_and_the_demo() -> None:
    sizes = ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "mistral-24b", "llama3-8b")
    awq = ("7b", "14b", "32b", "mistral-24b", "llama3-8b")
    expected = {f"rank1-{size}" for size in sizes} | {f"rank1-{size}-awq" for size in awq} | {DEMO}
    assert set(REGISTRY) == expected | {"reasonrank-7b", "reasonrank-32b"}
    assert REGISTRY["reasonrank-32b"].source == "liuwenhan/reasonrank-32B"
    assert (REGISTRY["reasonrank-7b"].budget, REGISTRY["reasonrank-7b"].family) == (3072, "reasonrank")
    assert REGISTRY["rank1-7b"].source == "jhu-clsp/rank1-7b"
    assert REGISTRY["rank1-mistral-24b-awq"].source == "jhu-clsp/rank1-mistral-2501-24b-awq"
    assert all(spec.size_gb > 0 and spec.hardware for spec in REGISTRY.values())


def test_offline_without_a_cached_model_runs_the_demo_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    choice = choose(RerankSettings())
    assert choice.engine == "transformers"  # no GPU here
    assert choice.model.is_demo and choice.model.budget == REGISTRY[DEMO].budget
    cpu_default = DEFAULTS["rank1"][1]
    assert any("demo model" in note and "not meaningful" in note and cpu_default in note for note in choice.notes)


def test_forced_model_and_engine_are_taken_as_given() -> None:
    choice = choose(RerankSettings(model="rank1-7b", engine="vllm", budget=1024))
    assert (choice.engine, choice.model.location, choice.model.key) == ("vllm", "jhu-clsp/rank1-7b",
                                                                         "jhu-clsp/rank1-7b")
    assert (choice.model.budget, choice.model.max_model_len) == (1024, 16000)


def test_endpoints_select_the_openai_engine_and_any_id_or_folder_works(demo_model: Path) -> None:
    assert choose(RerankSettings(endpoints="http://a:8000, http://b:8000")).engine == "openai"
    assert RerankSettings(endpoints="http://a:8000, http://b:8000,").endpoint_urls == ("http://a:8000",
                                                                                       "http://b:8000")
    folder = resolve_model(str(demo_model), RerankSettings())
    assert folder.location == str(demo_model.resolve()) and folder.max_model_len == 16000
    assert resolve_model("someone/rank1-custom", RerankSettings()).location == "someone/rank1-custom"


def test_reranker_settings_come_from_flags_and_environment() -> None:
    settings = Settings.from_env({"EXPLAINABLE_SEARCH_ENGINE": "openai", "EXPLAINABLE_SEARCH_TOP_K": "5"})
    assert (settings.rerank.engine, settings.rerank.top_k) == ("openai", 5)
    with pytest.raises(SettingsError, match="EXPLAINABLE_SEARCH_ENGINE must be one of auto, vllm, openai"):
        Settings.from_env({"EXPLAINABLE_SEARCH_ENGINE": "tgi"})
    with pytest.raises(SettingsError, match="top_k must be at least 1"):
        RerankSettings(top_k=0)


def test_a_budget_the_context_cannot_hold_is_refused(demo_model: Path) -> None:
    settings = RerankSettings(model=DEMO, engine="transformers", budget=4096, judgment_cache=False)
    try:
        with pytest.raises(EngineError, match=r"4096 tokens\) leaves no room .* 2048-token context; lower --budget"):
            open_reranker(settings)
    finally:
        close_engines()
