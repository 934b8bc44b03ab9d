"""Which models a visitor of a public page may have the server open (a link, the Model panel, Compare's sides),
and what a model that cannot be opened looks like: one clear message naming the field and the value, never a
traceback or bare error badges. On the real transformers engine with the demo model."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from html import unescape
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, quote

import gradio as gr
import pytest

from search import pipeline
from search.annotation.store import AnnotationStore
from search.compare import Link, Side, link_query, parse_link
from search.engines import EngineError, GenerationRequest, close_engine, close_engines
from search.engines.hf_engine import TransformersEngine
from search.pipeline import Memory, MemoryNeed, memory_need, open_model
from search.settings import REPO_ROOT, Settings
from search.uploads import CorpusLibrary
from ui.annotate import AnnotateTab, AnnotationContext
from ui.app import ModelStatus, SearchPage
from ui.compare import ComparePage
from ui.model_key import Loading, ModelKey, ModelKeyError

BUDGET = 16
STORY = "Write a long story about a cat who sails around the world.\n\nOnce upon a time,"
NOTICE = 19
"""Where ``ComparePage.from_link``'s answer holds its notice."""
A_EVIDENCE, B_EVIDENCE, EVIDENCE = 8, 13, 16
"""Where it sets side A's, side B's and the settings' evidence."""


@pytest.fixture(scope="module")
def status(demo_model: Path) -> Iterator[ModelStatus]:
    settings = Settings().replace(model="demo", engine="transformers", budget=BUDGET, judgment_cache=False, top_k=3)
    yield ModelStatus(loaded=open_model(settings.serving), settings=settings)
    close_engines()


def page_for(library: CorpusLibrary, status: ModelStatus, models: str = "", idle_s: float = 600.0) -> ComparePage:
    """The Search tab's handlers over the demo model, visitors allowed ``models`` (empty: the default), a model
    they opened closed after ``idle_s`` unused."""
    settings = status.settings.replace(models=models, model_idle_seconds=idle_s)
    return ComparePage(SearchPage(library, ModelStatus(loaded=status.loaded, settings=settings),
                                  slots=asyncio.Semaphore(2)))


def open_link(page: ComparePage, query: str, *, evidence: bool = False) -> list[Any]:
    """The page opened at ``?<query>``, its evidence defaulting to ``evidence``."""
    request: Any = SimpleNamespace(session_hash="visitor", query_params=dict(parse_qsl(query, keep_blank_values=True)))
    return asyncio.run(page.from_link("rank1", page.page.default_key, BUDGET, evidence, 0, 0, request))


def text(html: object) -> str:
    """A notice's text, as the visitor reads it."""
    return unescape(re.sub(r"<[^>]+>", "", str(html)))


def notice(shown: list[Any]) -> str:
    return text(shown[NOTICE])


def compare_b(page: ComparePage, b_model: str) -> str:
    """A comparison whose side B names ``b_model``: its last message."""
    key = page.page.default_key

    async def run() -> list[tuple[Any, ...]]:
        return [update async for update in page.compare("which planets have no moons", "hybrid", 2, True,
                                                        "sample_corpus", "rank1", key, "", BUDGET, False,
                                                        "rank1", b_model, "", BUDGET, False)]
    return text(asyncio.run(run())[-1][0])


def load(page: ComparePage, name: str) -> str:
    """The Model panel's Load of ``name`` on transformers: its message."""
    return text(asyncio.run(page.page.load_model(name, "transformers", "rank1", progress=lambda *_, **__: None))[2])


def weights_file(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> Path:
    """A safetensors file holding zero-filled ``tensors`` (name: dtype, shape)."""
    sizes = {"F32": 4, "BF16": 2}
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = sizes[dtype]
        for extent in shape:
            size *= extent
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(text)) + text + bytes(offset))
    return path


def folder_with(tmp_path: Path, demo_model: Path, name: str, *, config: bool = True,
                weights: bytes | dict[str, tuple[str, list[int]]] | None = None) -> Path:
    """A model folder with the demo model's config.json (or none) and the given weights (or none)."""
    folder = tmp_path / name
    folder.mkdir()
    if config:
        (folder / "config.json").write_bytes((demo_model / "config.json").read_bytes())
    if isinstance(weights, bytes):
        (folder / "model.safetensors").write_bytes(weights)
    elif weights is not None:
        weights_file(folder / "model.safetensors", weights)
    return folder


# (a) A model that cannot be opened -------------------------------------------------------------------------------

def test_a_model_that_cannot_load_is_an_engine_error_naming_it() -> None:
    with pytest.raises(EngineError, match="transformers could not load /etc"):
        TransformersEngine(model="etc", location="/etc", max_model_len=512)


def test_the_command_line_says_in_one_line_why_a_model_cannot_load(index_dir: Path) -> None:
    environment = {**os.environ, "EXPLAINABLE_SEARCH_INDEX_DIR": str(index_dir)}
    result = subprocess.run([sys.executable, "-m", "search", "rerank", "--model", "/etc", "--engine", "transformers",
                             "--query", "moons", "--top-k", "2"], cwd=REPO_ROOT, env=environment,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "transformers could not load /etc" in errors[0], result.stderr


def test_a_model_that_cannot_load_is_named_by_the_model_panel_a_link_and_compare(
        library: CorpusLibrary, status: ModelStatus) -> None:
    page = page_for(library, status)
    assert "Model: '/etc' is not one of the models this page may load (demo, " in load(page, "/etc")
    assert "its model: '/etc' is not one of the models" in notice(open_link(page, "q=moons&model=/etc"))
    assert "Side B's model: '/etc' is not one of the models" in compare_b(page, "/etc")
    # Allowed by the operator, it is still refused before opening: nothing says what it needs.
    allowed = page_for(library, status, models="demo,/etc")
    refused = load(allowed, "/etc")
    assert refused.startswith("Model: /etc: how much memory it needs is unknown (it has no .safetensors weights)")
    assert list(allowed.page.models) == [allowed.page.default_key]


# (b) A name holding the page's separator -------------------------------------------------------------------------

def test_a_model_name_holding_the_separator_is_refused_by_name(library: CorpusLibrary, status: ModelStatus) -> None:
    page = page_for(library, status)
    for query, parameter in ((f"q=moons&model={quote('demo · vllm')}", "model"),
                             (f"q=moons&compare=1&b_model={quote('demo · vllm')}", "b_model")):
        shown = notice(open_link(page, query))
        assert (f"This link cannot be opened: its {parameter}: 'demo · vllm' is not a model name: '·' separates a "
                "model from its engine") in shown
    note = text(asyncio.run(page.memory_note("a · b · transformers")))
    assert "This side's model: 'a · b' is not a model name" in note
    assert "Side B's model: 'a · b' is not a model name" in compare_b(page, "a · b · transformers")
    assert "Model: 'demo · vllm' is not a model name" in load(page, "demo · vllm")
    with pytest.raises(ModelKeyError, match="'a · b' is not a model name"):
        page.side_key("a · b · transformers")
    assert list(page.page.models) == [page.page.default_key]


# (c) The models visitors may load --------------------------------------------------------------------------------

def test_links_and_the_model_panel_load_only_the_models_the_operator_allows(
        library: CorpusLibrary, status: ModelStatus) -> None:
    page = page_for(library, status)
    for query, parameter, name in (("q=moons&model=/etc/passwd", "model", "/etc/passwd"),
                                   ("q=moons&model=some-org/unknown-model", "model", "some-org/unknown-model"),
                                   ("q=moons&compare=1&b_model=rank1-32b", "b_model", "rank1-32b")):
        shown = open_link(page, query)
        assert f"This link cannot be opened: its {parameter}: {name!r} is not one of the models" in notice(shown)
        assert "EXPLAINABLE_SEARCH_MODELS" in notice(shown)
        # nothing runs, and the examples fold away so that the notice is in the first screen, on a phone too
        assert shown[NOTICE + 1:] == [gr.skip(), gr.skip(), gr.update(visible=False)]
        assert shown[0] == "moons"  # the link's query is kept
    assert "Model: 'some-org/unknown-model' is not one of the models" in load(page, "some-org/unknown-model")
    assert "'rank1-32b' is not one of the models" in text(asyncio.run(page.memory_note("rank1-32b")))
    assert list(page.page.models) == [page.page.default_key]  # nothing was opened

    listed = page_for(library, status, models="demo, rank1-0.5b")
    assert listed.page.access.names == ("demo", "rank1-0.5b")
    assert listed.model_choices() == [listed.page.default_key, "rank1-0.5b"]
    assert "'rank1-1.5b' is not one of the models this page may load (demo, rank1-0.5b)" in load(listed,
                                                                                                   "rank1-1.5b")
    assert Settings.from_env({"EXPLAINABLE_SEARCH_MODELS": "demo,rank1-3b"}).serving.model_names == ("demo",
                                                                                                      "rank1-3b")


def test_visitors_load_models_only_on_the_engine_the_page_started_with(
        library: CorpusLibrary, status: ModelStatus) -> None:
    """A Space started on transformers: no visitor starts a vLLM engine there, by the Model panel or Compare's
    side B, even for a model the page may load (a link names no engine: '·' is refused in its model)."""
    page = page_for(library, status)
    assert page.page.access.engines == ("transformers",)
    panel = text(asyncio.run(page.page.load_model("demo", "vllm", "rank1", progress=lambda *_, **__: None))[2])
    assert "the vllm engine: this page loads models on transformers only" in panel
    assert "the vllm engine: this page loads models on transformers only" in compare_b(page, "demo · vllm")
    assert list(page.page.models) == [page.page.default_key]  # nothing was opened


def test_by_default_visitors_may_load_the_model_started_and_the_catalogue_models_that_fit(
        library: CorpusLibrary, status: ModelStatus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "memory_here", lambda: Memory(free_gb=8, total_gb=16, where="memory",
                                                                bytes_per_parameter=4))
    names = page_for(library, status).page.access.names
    assert names[0] == "demo" and {"rank1-0.5b", "rank1-1.5b", "rank1-3b"} <= set(names)
    assert not {"rank1-7b", "rank1-14b-awq", "rank1-32b", "reasonrank-32b"} & set(names)  # 30 GB and more


# (d) No model opened without a known memory need -----------------------------------------------------------------

def test_a_model_the_operator_allows_is_still_refused_when_it_does_not_fit_the_memory_free(
        library: CorpusLibrary, status: ModelStatus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "memory_here", lambda: Memory(free_gb=8, total_gb=16, where="memory (float32)",
                                                                bytes_per_parameter=4))
    page = page_for(library, status, models="demo,rank1-32b")
    assert "rank1-32b needs about 131.0 GB of memory (float32); 8.0 GB is free now. It does not fit" in text(
        asyncio.run(page.memory_note("rank1-32b")))
    assert "Side B's model: rank1-32b needs about 131.0 GB" in compare_b(page, "rank1-32b")
    assert "This link cannot be opened: its b_model: rank1-32b needs about 131.0 GB" in notice(
        open_link(page, "q=moons&compare=1&b_model=rank1-32b"))
    assert "Model: rank1-32b needs about 131.0 GB" in load(page, "rank1-32b")  # the Model panel too
    assert list(page.page.models) == [page.page.default_key]


def test_a_model_whose_memory_need_is_unknown_does_not_fit() -> None:
    assert not MemoryNeed(needed_gb=None, free_gb=100.0, where="memory", unknown_because="no weights").fits
    assert MemoryNeed(needed_gb=None, free_gb=None, where="").fits  # on the servers: nothing here


def test_a_folder_s_need_is_read_from_its_weights_headers_and_must_match_its_config(
        tmp_path: Path, demo_model: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for item in demo_model.iterdir():
        (copy / item.name).symlink_to(item)
    bytes_per_parameter = pipeline.memory_here().bytes_per_parameter or 2
    assert memory_need(str(copy), "transformers").needed_gb == pytest.approx(134_515_008 * bytes_per_parameter / 1e9)
    cases = {
        "config only": (folder_with(tmp_path, demo_model, "config-only"), "it has no .safetensors weights"),
        "120 bytes": (folder_with(tmp_path, demo_model, "tiny", weights=b"\0" * 120),
                      "model.safetensors is not a safetensors file"),
        "too few": (folder_with(tmp_path, demo_model, "few", weights={"w": ("F32", [10, 10])}),
                    "its weights hold 100 parameters where its config.json describes 134,515,008"),
        "no config": (folder_with(tmp_path, demo_model, "no-config", config=False,
                                  weights={"w": ("F32", [10, 10])}), "it has no config.json"),
    }
    for case, (folder, why) in cases.items():
        need = memory_need(str(folder), "transformers")
        assert need.needed_gb is None and not need.fits and why in need.unknown_because, (case, need)
        assert f"{folder}: how much memory it needs is unknown ({why}" in need.describe(str(folder)), case


def test_a_hub_model_s_need_is_unknown_when_its_headers_cannot_be_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    need = memory_need("some-org/unknown-model", "transformers")
    assert not need.fits and "the Hugging Face Hub cannot be reached" in need.unknown_because


def test_a_folder_allowed_by_the_operator_is_still_refused_everywhere_when_its_weights_do_not_make_its_model(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path) -> None:
    folder = str(folder_with(tmp_path, demo_model, "random", weights=b"\0" * 120))
    page = page_for(library, status, models=f"demo,{folder}")
    why = f"{folder}: how much memory it needs is unknown"
    assert load(page, folder).startswith(f"Model: {why}")
    assert why in notice(open_link(page, f"q=moons&model={quote(folder)}"))
    assert why in notice(open_link(page, f"q=moons&compare=1&b_model={quote(folder)}"))
    assert why in compare_b(page, folder)
    assert list(page.page.models) == [page.page.default_key]


# (e) Loaded models released -------------------------------------------------------------------------------------

def demo_copy(tmp_path: Path, demo_model: Path, name: str) -> str:
    """The demo model's files in a folder of their own: another model to the page, on an engine of its own."""
    folder = tmp_path / name
    folder.mkdir()
    for item in demo_model.iterdir():
        (folder / item.name).symlink_to(item)
    return str(folder)


def test_a_model_unused_for_a_while_is_closed_when_the_next_loads_and_the_page_says_so(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path) -> None:
    first, second = demo_copy(tmp_path, demo_model, "first"), demo_copy(tmp_path, demo_model, "second")
    page = page_for(library, status, models=f"demo,{first},{second}", idle_s=1e-6)
    shown = load(page, first)
    assert shown.startswith(f"Reranking with {first}") and "Closed" not in shown
    first_key = f"{first} · transformers"
    engine = page.page.models[first_key].engine
    shown = load(page, second)
    assert shown.startswith(f"Reranking with {second}") and f"Closed {first_key} (unused for 1e-06 s)." in shown
    assert first_key not in page.page.models and "closed" in (engine.unhealthy() or "")
    with pytest.raises(EngineError, match=f"{first_key} was closed to free its memory"):
        page.page.reranker_for(first_key, "rank1")  # a session still on it is told, not silently left unranked
    assert page.page.models[page.page.default_key].engine.unhealthy() is None  # the page's own model stays
    asyncio.run(page.page.release(f"{second} · transformers"))


def test_the_least_recently_used_model_makes_room_unless_it_is_serving(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = demo_copy(tmp_path, demo_model, "first"), demo_copy(tmp_path, demo_model, "second")
    free = {"gb": 1.0}  # each copy needs 0.54 GB as float32
    monkeypatch.setattr(pipeline, "memory_here", lambda: Memory(free_gb=free["gb"], total_gb=16, where="memory",
                                                                bytes_per_parameter=4))
    page = page_for(library, status, models=f"demo,{first},{second}", idle_s=0)
    first_key, second_key = f"{first} · transformers", f"{second} · transformers"
    assert "Closed" not in load(page, first)
    free["gb"] = 0.3
    assert asyncio.run(page.page.model_refusal(second, "transformers")) is None  # it fits once the first makes room
    assert "0.3 GB is free now. The least recently used models opened earlier are closed to make room." in text(
        asyncio.run(page.memory_note(second)))
    shown = load(page, second)
    assert f"Closed {first_key} (the least recently used, to make room)." in shown
    assert set(page.page.models) == {page.page.default_key, second_key}

    async def while_second_serves() -> str:
        request = GenerationRequest(prompt=STORY, max_tokens=4000)
        chunks = page.page.models[second_key].engine.generate(request)
        await anext(chunks)  # the second model is serving a request
        try:
            return text((await page.page.load_model(first, "transformers", "rank1",
                                                    progress=lambda *_, **__: None))[2])
        finally:
            await chunks.aclose()

    refused = asyncio.run(while_second_serves())
    assert refused.startswith(f"Model: {first} needs about 0.5 GB of memory; 0.3 GB is free now. It does not fit")
    assert set(page.page.models) == {page.page.default_key, second_key}  # the one serving was kept
    asyncio.run(page.page.release(second_key))


# (f) A link's values are the sender's ----------------------------------------------------------------------------

def test_a_link_s_values_stay_the_sender_s_wherever_the_opener_s_page_differs(
        library: CorpusLibrary, status: ModelStatus) -> None:
    single = Link(query="moons", a=Side(reranker="rank1", evidence=False))
    assert parse_link(dict(parse_qsl(link_query(single)[1:])), Side(evidence=True)) == single
    page = page_for(library, status)
    key = page.page.default_key
    sides = (*("rank1", key, "", BUDGET, False), *("assessor", key, "", BUDGET, False))
    link = page.link("moons", "sample_corpus", True, "rank1", key, "", BUDGET, False, *sides)
    shown = open_link(page, link[1:], evidence=True)  # the opener's page has evidence on
    assert (shown[A_EVIDENCE], shown[B_EVIDENCE], shown[EVIDENCE]) == (False, False, False)
    single_link = page.link("moons", "sample_corpus", False, "rank1", key, "", BUDGET, False, *sides)
    assert open_link(page, single_link[1:], evidence=True)[EVIDENCE] is False


# (g) Opening models beside visitors ------------------------------------------------------------------------------

def test_two_visitors_loading_at_once_never_open_more_than_the_memory_free(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = demo_copy(tmp_path, demo_model, "first"), demo_copy(tmp_path, demo_model, "second")
    page = page_for(library, status, models=f"demo,{first},{second}", idle_s=0)
    keys = (f"{first} · transformers", f"{second} · transformers")
    # 1 GB free before either opens; each copy needs 0.54 GB as float32 and takes it once open
    monkeypatch.setattr(pipeline, "memory_here", lambda: Memory(
        free_gb=1.0 - sum(page.page.shelf.need_gb(key) for key in keys), total_gb=16, where="memory",
        bytes_per_parameter=4))

    async def both() -> list[Loading]:
        return list(await asyncio.gather(*(page.page.ensure_model(key, "rank1") for key in keys)))

    loadings = dict(zip(keys, asyncio.run(both()), strict=True))
    opened = [key for key in keys if key in page.page.models]
    assert len(opened) == 1, loadings  # never both over the 1 GB
    closed = next(key for key in keys if key not in opened)
    assert loadings[opened[0]].problem is None
    assert f"Closed {closed} (the least recently used, to make room)." in loadings[opened[0]].released
    asyncio.run(page.page.release(opened[0]))


def test_a_memory_check_does_not_hold_up_the_page_s_other_work(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder = demo_copy(tmp_path, demo_model, "slow")
    page = page_for(library, status, models=f"demo,{folder}")
    entered, go = threading.Event(), threading.Event()
    answered: list[bool] = []
    measured = pipeline.memory_here()

    def held() -> Memory:
        """A slow measure (the Hub's headers over a slow network): it waits for a coroutine of the page's loop."""
        entered.set()
        answered.append(go.wait(timeout=5))  # the timeout only ends a check that holds the loop up (the bug)
        return measured

    monkeypatch.setattr(pipeline, "memory_here", held)

    async def meanwhile(check: Callable[[], Awaitable[object]]) -> None:
        entered.clear()
        go.clear()
        task = asyncio.ensure_future(check())
        await asyncio.to_thread(entered.wait, 5)
        go.set()  # another coroutine on the loop proceeds while the check is held
        await task

    link = parse_link({"q": "moons", "model": folder}, Side(reranker="rank1"))
    assert link is not None
    for check in (lambda: page.page.model_refusal(folder, "transformers"), lambda: page.memory_note(folder),
                  lambda: page.link_model_problem(link)):
        answered.clear()
        asyncio.run(meanwhile(check))
        assert answered and all(answered), answered


def test_a_model_left_unused_is_closed_without_another_load_and_lets_go_of_its_weights(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path) -> None:
    folder = demo_copy(tmp_path, demo_model, "left")
    page = page_for(library, status, models=f"demo,{folder}", idle_s=0.05)
    key = f"{folder} · transformers"

    async def left_alone() -> tuple[Any, weakref.ref[Any]]:
        assert (await page.page.ensure_model(key, "rank1")).problem is None
        engine = page.page.models[key].engine
        weights = weakref.ref(engine._model)
        deadline = time.monotonic() + 60
        while key in page.page.models and time.monotonic() < deadline:  # polled: no one loads another model
            await asyncio.sleep(0.01)
        return engine, weights

    engine, weights = asyncio.run(left_alone())
    assert key not in page.page.models and "closed" in (engine.unhealthy() or "")
    gc.collect()
    assert engine._model is None and engine._batch is None and weights() is None
    assert page.page.models[page.page.default_key].engine.unhealthy() is None  # the page's own model stays


def test_a_hub_model_s_need_is_unknown_when_the_hub_cannot_be_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx2
    import huggingface_hub

    from search import models

    def unreachable(repo_id: str) -> None:
        raise httpx2.ConnectError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(models, "hub_offline", lambda: False)
    monkeypatch.setattr(models, "hub_cached", lambda repo_id: False)
    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", unreachable)
    need = memory_need("some-org/unknown-model", "transformers")
    assert not need.fits and "Network is unreachable" in need.unknown_because
    assert "its safetensors headers cannot be read from the Hub" in need.unknown_because


def test_a_released_model_s_annotate_tab_and_a_wrong_b_model_in_a_link_get_a_clear_message(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path) -> None:
    page = page_for(library, status)
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    tab = AnnotateTab(AnnotationContext(store=store, library=library, reranker_for=page.page.reranker_for,
                                        top_k=3))
    tab.create_project("moons", "sample_corpus", None, "q1\twhich planets have no moons", None, "", False,
                       "no, yes", 3, "rank1", False)
    gone = "gone · transformers"  # a model this session opened, closed since
    ada = gr.Request(session_hash="ada")
    with pytest.raises(gr.Error, match=f"{gone} was closed to free its memory"):
        tab.open_project("ada", "moons", gone, "rank1", ada)
    tab.open_project("ada", "moons", page.page.default_key, "rank1", ada)
    with pytest.raises(gr.Error, match=f"{gone} was closed to free its memory"):
        asyncio.run(tab.judge_with_model(gone, ada))
    store.close()
    key = page.page.default_key
    sides = (*("rank1", key, "", BUDGET, False), *("rank1", "x · nosuch", "", BUDGET, False))
    with pytest.raises(gr.Error, match="Side B's model: 'x · nosuch': 'nosuch' is not an engine"):
        page.link("moons", "sample_corpus", True, "rank1", key, "", BUDGET, False, *sides)


def test_the_operator_s_own_folder_may_hold_the_separator_in_its_name(
        library: CorpusLibrary, status: ModelStatus, tmp_path: Path, demo_model: Path) -> None:
    folder = demo_copy(tmp_path, demo_model, "demo · copy")
    settings = status.settings.replace(model=folder)
    loaded = open_model(settings.serving)
    try:
        page = SearchPage(library, ModelStatus(loaded=loaded, settings=settings), slots=asyncio.Semaphore(2))
        assert ModelKey.parse(page.default_key) == ModelKey(name=folder, engine="transformers")
        assert ComparePage(page).model_name(page.default_key) == folder
        assert "Model: 'demo · vllm' is not a model name" in load(ComparePage(page), "demo · vllm")  # a visitor's
    finally:
        close_engine(loaded.engine)
