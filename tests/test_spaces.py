"""Hugging Face Spaces: the front matter's pins, where the app keeps its work (persistent storage or not), the
transformers engine's path through ZeroGPU's ``spaces.GPU`` (exercised on this CPU: no ZeroGPU hardware here), and
a Space built the way Spaces builds one, from requirements.txt alone, serving the page's API."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import pickle
import shutil
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gradio
import httpx
import pytest
import spaces
import torch
import yaml
from gradio_client import Client
from servers import free_port

from search.engines import engine_kind
from search.engines.base import GenerationChunk, GenerationRequest
from search.engines.hf_engine import (
    GPU_CALL_BASE_S,
    GPU_CALL_MAX_S,
    GPU_SECONDS_PER_STEP,
    TransformersEngine,
    _Row,
    gpu_seconds,
)
from search.engines.zerogpu import gpu_function
from search.models import REGISTRY
from search.rerank.registry import RERANKERS
from search.settings import REPO_ROOT, EngineSettings, Storage

FRONT_MATTER = yaml.safe_load((REPO_ROOT / "README.md").read_text(encoding="utf-8").split("---")[1])
PROMPT = "The planets of the solar system, from the Sun outwards, are"


def test_the_space_runs_the_gradio_the_tests_run() -> None:
    pinned = [requirement for requirement in
              tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"][
                  "optional-dependencies"]["test"] if requirement.startswith("gradio==")]
    assert pinned == [f"gradio=={FRONT_MATTER['sdk_version']}"]
    assert gradio.__version__ == str(FRONT_MATTER["sdk_version"])


def test_the_front_matter_names_the_default_models_and_keeps_its_settings() -> None:
    defaults = [RERANKERS[name].defaults for name in ("rank1", "reasonrank")]
    expected = {REGISTRY[model].source for default in defaults
                for model in (default.model_on_gpu, default.model_elsewhere)}
    assert set(FRONT_MATTER["models"]) == expected
    assert FRONT_MATTER["sdk"] == "gradio" and FRONT_MATTER["app_file"] == "app.py"
    assert FRONT_MATTER["python_version"] == "3.11" and FRONT_MATTER["suggested_hardware"]
    assert 0 < len(FRONT_MATTER["short_description"]) <= 60  # the Hub's limit


# Storage ---------------------------------------------------------------------------------------------------------

DEFAULT_PATHS = """
import json
from search.engines.demo_model import demo_model_dir
from search.settings import STORAGE, Settings
settings = Settings.from_env()
print(json.dumps({"annotations": str(settings.annotations), "uploads": str(settings.uploads),
                  "indexes": str(settings.index_dir), "judgments": str(settings.rerank.judgment_cache_path),
                  "batches": str(settings.batches), "demo model": str(demo_model_dir()),
                  "persistent": STORAGE.persistent_root is not None,
                  "kept": STORAGE.outlives_restart(settings.annotations)}))
"""


def default_paths(tmp_path: Path, persistent_root: Path, **environ: str) -> dict[str, Any]:
    """Every default path of a new process whose persistent storage would be ``persistent_root``."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
           "XDG_DATA_HOME": str(tmp_path / "xdg-data"), "EXPLAINABLE_SEARCH_PERSISTENT_STORAGE": str(persistent_root),
           **environ}
    result = subprocess.run([sys.executable, "-c", DEFAULT_PATHS], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, check=True)
    return json.loads(result.stdout)


def test_with_writable_persistent_storage_everything_kept_goes_there(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    paths = default_paths(tmp_path, data, SPACE_ID="someone/explainable-search")
    assert paths.pop("persistent") is True and paths.pop("kept") is True
    home = data / "explainable-search"
    assert paths == {"annotations": str(home / "annotations.sqlite3"), "uploads": str(home / "corpora"),
                     "indexes": str(home / "cache" / "indexes"),
                     "judgments": str(home / "cache" / "judgments.sqlite3"), "batches": str(home / "batches"),
                     "demo model": str(home / "cache" / "models" / "smollm2-135m-instruct-0.1.2")}


@pytest.mark.parametrize("space_id", ["", "someone/explainable-search"])
def test_without_persistent_storage_the_xdg_folders_are_used(tmp_path: Path, space_id: str) -> None:
    paths = default_paths(tmp_path, tmp_path / "absent", SPACE_ID=space_id)
    assert paths.pop("persistent") is False
    assert paths.pop("kept") is (not space_id)  # a Space's disk goes with a restart; a machine's stays
    cache, data = tmp_path / "xdg-cache" / "explainable-search", tmp_path / "xdg-data" / "explainable-search"
    assert paths == {"annotations": str(data / "annotations.sqlite3"), "uploads": str(data / "corpora"),
                     "indexes": str(cache / "indexes"), "judgments": str(cache / "judgments.sqlite3"),
                     "batches": str(data / "batches"),
                     "demo model": str(cache / "models" / "smollm2-135m-instruct-0.1.2")}
    assert not (tmp_path / "absent").exists()


def test_a_persistent_root_that_is_a_file_is_not_storage(tmp_path: Path) -> None:
    (tmp_path / "data").write_text("not a folder", encoding="utf-8")
    assert Storage.find(tmp_path / "data").persistent_root is None


def test_on_a_space_only_persistent_storage_outlives_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    monkeypatch.setenv("SPACE_ID", "someone/explainable-search")
    storage = Storage.find(tmp_path)
    assert storage.outlives_restart(tmp_path / "annotations.sqlite3")
    assert not storage.outlives_restart(tmp_path.parent / "elsewhere.sqlite3")
    monkeypatch.delenv("SPACE_ID")
    assert Storage.find(tmp_path / "absent").outlives_restart(tmp_path.parent / "elsewhere.sqlite3")


# ZeroGPU ---------------------------------------------------------------------------------------------------------


class RecordingGPU:
    """``spaces.GPU`` as the engine meets it on ZeroGPU, on this CPU: it records each call's duration and the
    chunks the function yields; with ``copied`` the function gets a pickled copy of its arguments, as ZeroGPU's
    own GPU process does (so a row cancelled afterwards is not cancelled there)."""

    def __init__(self, *, copied: bool) -> None:
        self.copied = copied
        self.durations: list[int] = []
        self.yielded: list[int] = []
        self.ended = 0

    def __call__(self, function: Callable[..., Iterator[Any]], *, duration: Callable[..., int]
                 ) -> Callable[..., Iterator[Any]]:
        def decorated(*arguments: Any) -> Iterator[Any]:
            self.durations.append(duration(*arguments))
            self.yielded.append(0)
            if self.copied:
                arguments = pickle.loads(pickle.dumps(arguments))
            try:
                for item in function(*arguments):
                    self.yielded[-1] += 1
                    yield item
            finally:
                self.ended += 1

        return decorated


@pytest.fixture
def zero_gpu_engine(request: pytest.FixtureRequest, demo_model: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[tuple[TransformersEngine, RecordingGPU]]:
    recorder = RecordingGPU(copied=request.param)
    monkeypatch.setattr(spaces, "GPU", recorder)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048)
    assert not engine.continuous  # ZeroGPU's static batches, each one call of spaces.GPU
    yield engine, recorder
    engine.close()


def generate(engine: TransformersEngine, request: GenerationRequest) -> list[GenerationChunk]:
    async def chunks() -> list[GenerationChunk]:
        return [chunk async for chunk in engine.generate(request)]

    return asyncio.run(chunks())


@pytest.fixture(scope="module")
def undecorated(demo_model: Path) -> Iterator[TransformersEngine]:
    """The engine with the real ``spaces`` package installed and no ZeroGPU: continuous batching, no decorator."""
    engine = TransformersEngine(model="demo", location=str(demo_model), max_model_len=2048)
    assert engine.continuous
    yield engine
    engine.close()


def test_a_call_asks_for_what_its_budget_needs_up_to_zero_gpus_limit() -> None:
    def rows(*budgets: int) -> list[_Row]:
        return [_Row(request=GenerationRequest(prompt=PROMPT, max_tokens=budget)) for budget in budgets]

    assert gpu_seconds(rows(100, 2048)) == GPU_CALL_BASE_S + math.ceil(2048 * GPU_SECONDS_PER_STEP)
    assert gpu_seconds(rows(8192)) == GPU_CALL_MAX_S


def test_off_zero_gpu_the_real_decorator_leaves_generation_as_it_is() -> None:
    def batch(rows: list) -> Iterator[int]:
        yield len(rows)

    assert gpu_function(batch, gpu_seconds) is batch


@pytest.mark.parametrize("zero_gpu_engine", [False, True], ids=["in-process", "copied-like-zerogpu"],
                         indirect=True)
def test_the_transformers_engine_generates_inside_spaces_gpu(zero_gpu_engine: tuple[TransformersEngine, RecordingGPU],
                                                             undecorated: TransformersEngine) -> None:
    engine, recorder = zero_gpu_engine
    request = GenerationRequest(prompt=PROMPT, max_tokens=24)
    chunks = generate(engine, request)
    assert recorder.durations == [GPU_CALL_BASE_S + math.ceil(24 * GPU_SECONDS_PER_STEP)]  # one call, its budget
    assert recorder.yielded == [len(chunks)]
    assert chunks[-1].finish_reason in ("stop", "length")
    tokens = [token for chunk in chunks for token in chunk.token_ids]
    assert tokens == [token for chunk in generate(undecorated, request) for token in chunk.token_ids]


@pytest.mark.parametrize("zero_gpu_engine", [False, True], ids=["in-process", "copied-like-zerogpu"],
                         indirect=True)
def test_a_reader_that_leaves_stops_the_gpu_call(zero_gpu_engine: tuple[TransformersEngine, RecordingGPU]) -> None:
    engine, recorder = zero_gpu_engine
    budget = 400

    async def leave_early() -> None:
        stream = engine.generate(GenerationRequest(prompt=PROMPT, max_tokens=budget))
        async for _ in stream:
            if recorder.yielded and recorder.yielded[-1] >= 3:
                break
        await stream.aclose()

    asyncio.run(leave_early())
    deadline = time.monotonic() + 60
    while recorder.ended < len(recorder.durations):
        assert time.monotonic() < deadline, "the GPU call went on after its only reader left"
        time.sleep(0.05)
    assert engine.active_requests() == 0
    assert recorder.yielded[-1] < budget / 2
    assert generate(engine, GenerationRequest(prompt=PROMPT, max_tokens=4))[-1].finish_reason is not None


def test_on_zero_gpu_transformers_runs_the_gpu_models(monkeypatch: pytest.MonkeyPatch) -> None:
    from search import pipeline

    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(pipeline, "hub_offline", lambda: False)  # as on a Space, where the hub answers
    assert engine_kind(EngineSettings()) == "transformers"  # though vLLM is installed here
    choice = pipeline.choose(EngineSettings(), "rank1")
    assert (choice.model.name, choice.engine) == ("rank1-7b", "transformers")
    assert choice.notes == ("rank1-7b on transformers (ZeroGPU)",)
    monkeypatch.delenv("SPACES_ZERO_GPU")
    assert pipeline.choose(EngineSettings(engine="transformers"), "rank1").model.name == "rank1-0.5b"


# A Space-like install --------------------------------------------------------------------------------------------

SPACE_COPY_IGNORED = shutil.ignore_patterns(".git", ".venv", "test-artifacts", "__pycache__", "*.egg-info", "build",
                                            ".pytest_cache", ".ruff_cache", "results")


@pytest.mark.timeout(1800)
def test_a_space_built_from_requirements_alone_serves_search_and_rerank(fresh_venv: tuple[Path, dict[str, str]],
                                                                         tmp_path: Path) -> None:
    """What a CPU Space does: a new virtual environment with requirements.txt and the front matter's Gradio, then
    ``python app.py`` with Spaces' variables and no hub. torch is held to the build this suite runs (a CPU wheel:
    the CUDA one a Space would download is gigabytes and changes nothing on a CPU); everything else resolves
    afresh, from pip's cache where it has the files."""
    space = tmp_path / "space"
    shutil.copytree(REPO_ROOT, space, ignore=SPACE_COPY_IGNORED)
    (tmp_path / "constraints.txt").write_text(f"torch=={torch.__version__}\n", encoding="utf-8")
    venv_python, pip_env = fresh_venv
    python = str(venv_python)
    began = time.monotonic()
    installed = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "-r", "requirements.txt", f"gradio=={FRONT_MATTER['sdk_version']}",
         "-c", str(tmp_path / "constraints.txt")], cwd=space, env=pip_env, capture_output=True, text=True,
        check=False)
    assert installed.returncode == 0, installed.stderr[-3000:]
    install_s = time.monotonic() - began
    port = free_port()
    log = tmp_path / "space.log"
    env = {**pip_env, "GRADIO_SERVER_NAME": "0.0.0.0", "GRADIO_SERVER_PORT": str(port),
           "SPACE_ID": "someone/explainable-search", "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "XDG_DATA_HOME": str(tmp_path / "data"),
           "EXPLAINABLE_SEARCH_PERSISTENT_STORAGE": str(tmp_path / "no-persistent-storage")}
    with log.open("wb") as output:
        app = subprocess.Popen([python, "app.py"], cwd=space, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 600
        while not _answers(url):
            assert app.poll() is None, log.read_text(encoding="utf-8", errors="replace")[-3000:]
            assert time.monotonic() < deadline, "the Space did not start in 600 s"
            time.sleep(1)
        started_s = time.monotonic() - began - install_s
        client = Client(url, verbose=False)
        html = client.predict("which planets have no moons", "hybrid", 3, "sample_corpus", api_name="/search")
        assert html.count('class="es-card"') == 3
        job = client.submit("which planets have no moons", "", "hybrid", 3, 8, True, "sample_corpus",
                            api_name="/rerank")
        job.result()
        summary, _, rows = job.outputs()[-1]
        assert len(rows) == 3 and all(row["status"] == "judged" for row in rows), summary
        assert "not on persistent storage" in httpx.get(f"{url}config", timeout=30).text  # the page warns
        log_text = log.read_text(encoding="utf-8", errors="replace")
        assert "demo" in log_text  # no hub: the demo model, said so
        # No vLLM on a CPU Space: the continuous-batching transformers engine, float32 through oneDNN.
        engine = subprocess.run([python, "-c", "import importlib.util, sys; from search.engines import engine_kind, "
                                 "onednn; from search.settings import EngineSettings; "
                                 "print(engine_kind(EngineSettings()), importlib.util.find_spec('vllm') is None, "
                                 "onednn.available())"], cwd=space, env=env, capture_output=True, text=True,
                                check=True).stdout.split()
        assert engine == ["transformers", "True", "True"]
    finally:
        app.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            app.wait(timeout=60)
        if app.poll() is None:
            app.kill()
    artifacts = REPO_ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    timing = f"Space-like install: pip {install_s:.0f} s, app start {started_s:.0f} s\n"
    (artifacts / "space-install.txt").write_text(timing, encoding="utf-8")
    print(timing)


def _answers(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=2).status_code == 200
    return False
