"""The page in a real browser (Debian Chromium driven by Playwright): live reasoning in several cards at once,
probabilities and the re-sorted list, Stop, expanded traces that stay open, exports, and hostile text that
shows as text. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shoot, write
from playwright.sync_api import Browser, Page, expect

from search.engines import close_engines
from search.pipeline import LoadedModel, open_model
from search.retrieval.first_stage import open_first_stage
from search.settings import EngineSettings, Settings
from search.uploads import CorpusLibrary
from ui.app import CSS, JS, ModelStatus, build_app

HOSTILE_TITLE = "<script>window.hacked = 1</script> cat story"
HOSTILE_TEXT = "${window.hacked = 2} `cat` story with a back\\slash <img src=x onerror=\"window.hacked = 3\">"
# The demo model keeps writing after these for hundreds of tokens: long enough to watch and to stop.
STORIES = [f"Write a long story about a cat named {name}." for name in ("Tom", "Mia", "Leo")]


@pytest.fixture(scope="module")
def loaded(demo_model: Path) -> Iterator[LoadedModel]:
    yield open_model(EngineSettings(model="demo", engine="transformers"))
    close_engines()


@pytest.fixture(scope="module")
def page_url(tmp_path_factory: pytest.TempPathFactory, index_dir: Path, loaded: LoadedModel) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("browser")
    records = [{"_id": f"story-{index}", "title": f"Cat story {index}", "text": text}
               for index, text in enumerate(STORIES)]
    records.append({"_id": "hostile", "title": HOSTILE_TITLE, "text": HOSTILE_TEXT})
    corpus = write(folder / "corpus.jsonl", "".join(json.dumps(record) + "\n" for record in records))
    # ReasonRank windows of 3 sliding by 2: two windows over the four documents.
    settings = Settings().replace(corpus=corpus, index_dir=index_dir, model="demo", engine="transformers",
                                  budget=160, judgment_cache=False, top_k=4, window=3, step=2)
    library = CorpusLibrary(settings, ("hybrid",))
    library.add("cats", open_first_stage(settings, ("hybrid",)))
    app = build_app(library, ModelStatus(loaded=loaded, settings=settings))
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    yield url
    app.close()


def trace_lengths(page: Page) -> dict[str, int]:
    """Characters of reasoning shown in each card, by document id."""
    lengths = {}
    for card in page.locator(".es-rcard").all():
        summary = card.locator("details[data-keep^='trace:'] summary").inner_text()
        lengths[card.get_attribute("data-doc")] = int(re.search(r"\((\d+) characters\)", summary).group(1))
    return lengths


def elapsed_s(page: Page) -> float:
    return float(re.search(r"([0-9.]+) s ·", page.locator(".es-summary").inner_text()).group(1))


def test_live_reasoning_stop_sorting_exports_and_escaping(browser: Browser, page_url: str,
                                                          loaded: LoadedModel) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(page_url)
    expect(page.get_by_text("verdicts are not meaningful")).to_be_visible()
    query = page.get_by_label("Query")
    query.fill("cat story")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(4, timeout=10_000)  # the first-stage list, at once

    # Reasoning grows in at least two cards at the same time.
    page.wait_for_function("document.querySelectorAll('.es-trace:not(:empty)').length >= 2", timeout=60_000)
    before = trace_lengths(page)
    time.sleep(2)
    after = trace_lengths(page)
    assert sum(after[doc] > before[doc] for doc in after) >= 2, (before, after)

    # A trace opened by the reader stays open while it keeps streaming.
    growing = next(doc for doc in after if after[doc] > before[doc])
    trace = page.locator(f".es-rcard[data-doc='{growing}'] details[data-keep^='trace:']")
    trace.locator("summary").click()
    time.sleep(1.5)
    assert trace.evaluate("element => element.open")
    shoot(page, "streaming")

    # A new query cancels the running one at once: the elapsed time starts again while the stories, which
    # take far longer than this, would still be running.
    running_for = elapsed_s(page)
    query.fill("a cat story")
    query.press("Enter")
    page.wait_for_function(f"(() => {{ const match = document.querySelector('.es-summary')?.textContent"
                           f".match(/([0-9.]+) s ·/); return match && parseFloat(match[1]) < {running_for}; }})()",
                           timeout=10_000)

    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary")).to_contain_text("stopped", timeout=10_000)
    deadline = time.monotonic() + 20
    while loaded.engine.active_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded.engine.active_requests() == 0  # Stop freed the engine's requests
    shoot(page, "stopped")

    # A short budget to the end: verdicts, probabilities, the re-sorted list.
    page.get_by_role("button", name=re.compile("Settings")).filter(has_text="▼").first.click()
    budget = page.get_by_label("Reasoning budget (tokens)")
    expect(budget).to_be_visible()
    for _ in range(3):  # seen: right after Stop the field sometimes keeps its old value; type again then
        budget.fill("6")
        budget.press("Tab")
        time.sleep(0.5)
        if budget.input_value() == "6":
            break
    assert budget.input_value() == "6"
    page.get_by_role("button", name="Search and rerank").click()
    expect(page.locator(".es-summary")).to_contain_text("done", timeout=120_000)
    cards = " ".join(page.locator(".es-rcard").all_inner_texts())
    probabilities = [float(text) for text in re.findall(r"P\(true\) ([0-9.]+)", cards)]
    assert len(probabilities) == 4 and probabilities == sorted(probabilities, reverse=True)
    shoot(page, "judged")

    # Hostile text is shown as text and runs nothing.
    assert page.evaluate("window.hacked") is None
    expect(page.locator(".es-rcard[data-doc='hostile'] h4")).to_contain_text("<script>window.hacked = 1</script>")
    page.locator(".es-rcard[data-doc='hostile'] details[data-keep^='passage:'] summary").click()
    expect(page.locator(".es-rcard[data-doc='hostile'] details[data-keep^='passage:'] p")).to_have_text(HOSTILE_TEXT)

    page.get_by_role("button", name="Export TREC run and JSONL traces").click()
    links = page.locator("a[download]")
    expect(links).to_have_count(2, timeout=10_000)
    contents = {Path(link.get_attribute("download") or "").suffix: page.request.get(link.get_attribute("href")).text()
                for link in links.all()}
    assert len(contents[".trec"].splitlines()) == 4 and all(len(line.split()) == 6
                                                            for line in contents[".trec"].splitlines())
    records = [json.loads(line) for line in contents[".jsonl"].splitlines()]
    assert {record["doc_id"] for record in records} == {"story-0", "story-1", "story-2", "hostile"}
    assert all(record["status"] == "judged" and record["tokens"] <= 6 for record in records)
    shoot(page, "exported")


def test_uploads_add_a_corpus_and_bad_ones_say_where(browser: Browser, page_url: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("uploads")
    bad = write(folder / "bad.jsonl", '{"_id": "a", "text": "fine"}\n{"_id": "b", "text": \n')
    good = write(folder / "good.jsonl", '{"_id": "owl", "title": "Owls", "text": "Owls hunt mice at night."}\n'
                                        '{"_id": "bat", "title": "Bats", "text": "Bats hunt insects at night."}\n')
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(page_url)
    upload = page.locator("input[type=file]")
    upload.set_input_files(str(bad))
    message = page.get_by_text(re.compile(r"Upload not loaded: bad\.jsonl: [\s\S]*bad\.jsonl:2: malformed JSON"))
    expect(message).to_be_visible(timeout=30_000)
    expect(page.get_by_label("Corpus")).to_have_value("cats")  # what the user had stays
    page.get_by_role("button", name=re.compile("Clear")).first.click()
    upload.set_input_files(str(good))
    expect(page.get_by_text("good.jsonl: 2 documents, 2 passages.")).to_be_visible(timeout=120_000)
    expect(page.get_by_label("Corpus")).to_have_value("good.jsonl")
    query = page.get_by_label("Query")
    query.fill("night hunters")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(2, timeout=10_000)
    expect(page.locator(".es-rcard[data-doc='owl']")).to_be_visible()
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary")).to_contain_text("stopped", timeout=10_000)
    shoot(page, "uploaded")


def test_model_picker_reports_a_model_it_cannot_load_and_keeps_the_current_one(browser: Browser,
                                                                                page_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(page_url)
    page.get_by_role("button", name=re.compile("Model")).filter(has_text="▼").first.click()
    model = page.get_by_label("Model (registry name, hub id or local folder)")
    model.fill("rank1-0.5b")
    model.press("Enter")
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.get_by_text(re.compile(r"Could not load rank1-0\.5b on transformers: jhu-clsp/rank1-0\.5b is not "
                                       r"in the local Hugging Face cache"))).to_be_visible(timeout=30_000)
    model.fill("demo")
    model.press("Enter")
    page.get_by_role("button", name="Load", exact=True).click()
    expect(page.get_by_text(re.compile(r"Reranking with demo:.* on transformers \(cpu\)\. Its verdicts are not "
                                       r"meaningful"))).to_be_visible(timeout=30_000)


def search_with(page: Page, reranker: str, budget: int, query: str = "cat story") -> None:
    """Choose ``reranker`` (its label) and ``budget`` in Settings, then search. Choosing a reranker sets the budget
    field to that reranker's default from the server, so the budget is typed once that has landed."""
    page.get_by_role("button", name=re.compile("Settings")).filter(has_text="▼").first.click()
    page.get_by_label(reranker).check()
    field = page.get_by_label("Reasoning budget (tokens)")
    for _ in range(5):
        time.sleep(1)
        field.fill(str(budget))
        field.press("Tab")
        time.sleep(0.5)
        if field.input_value() == str(budget):
            break
    assert field.input_value() == str(budget)
    box = page.get_by_label("Query")
    box.fill(query)
    box.press("Enter")


def test_reasonrank_streams_window_by_window_and_exports_its_traces(browser: Browser, page_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(page_url)
    search_with(page, "ReasonRank: listwise windows, ranks only", 24)
    # The first window (the back of the list) streams, its passages highlighted.
    expect(page.locator(".es-window.es-active")).to_contain_text("positions 2–4", timeout=30_000)
    expect(page.locator(".es-rcard.es-in-window")).to_have_count(3)
    expect(page.locator(".es-summary")).to_contain_text("windows", timeout=5_000)
    shoot(page, "reasonrank-streaming")
    expect(page.locator(".es-summary")).to_contain_text("2/2 windows", timeout=120_000)
    expect(page.locator(".es-summary")).to_contain_text("done")
    expect(page.locator(".es-window")).to_have_count(2)
    assert "P(true)" not in page.locator(".es-rcard").first.inner_text()  # ranks, never made-up probabilities
    expect(page.locator(".es-rcard").first.locator(".es-move")).to_contain_text("#")
    assert page.evaluate("window.hacked") is None
    shoot(page, "reasonrank-done")
    page.get_by_role("button", name="Export TREC run and JSONL traces").click()
    links = page.locator("a[download]")
    expect(links).to_have_count(2, timeout=10_000)
    contents = {Path(link.get_attribute("download") or "").suffix: page.request.get(link.get_attribute("href")).text()
                for link in links.all()}
    records = [json.loads(line) for line in contents[".jsonl"].splitlines()]
    assert [record["type"] for record in records] == ["window", "window"] + ["document"] * 4
    assert all(record["status"] in ("ok", "repaired", "truncated") for record in records[:2])
    assert [line.split()[4] for line in contents[".trec"].splitlines()] == ["4.0", "3.0", "2.0", "1.0"]


def test_the_assessor_shows_each_grade_distribution_and_sorts_by_expected_grade(browser: Browser,
                                                                               page_url: str) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1600})
    page.goto(page_url)
    search_with(page, "Assessor (UMBRELA): graded 0–3, expected grade per document", 6)
    expect(page.locator(".es-summary")).to_contain_text("4/4 judged", timeout=120_000)
    expect(page.locator(".es-summary")).to_contain_text("done")
    expect(page.locator(".es-rcard .es-grades")).to_have_count(4)  # a 0–3 bar chart on every card
    expect(page.locator(".es-rcard").first.locator(".es-grades > span")).to_have_count(4)
    cards = " ".join(page.locator(".es-rcard").all_inner_texts())
    expected = [float(text) for text in re.findall(r"expected grade ([0-9.]+) / 3", cards)]
    assert len(expected) == 4 and expected == sorted(expected, reverse=True) and "P(true)" not in cards
    assert page.evaluate("window.hacked") is None
    shoot(page, "assessor-done")
    page.get_by_role("button", name="Export TREC run and JSONL traces").click()
    links = page.locator("a[download]")
    expect(links).to_have_count(2, timeout=10_000)
    jsonl = next(page.request.get(link.get_attribute("href")).text() for link in links.all()
                 if (link.get_attribute("download") or "").endswith(".jsonl"))
    records = [json.loads(line) for line in jsonl.splitlines()]
    assert all(record["reranker"] == "assessor" and len(record["distribution"]) == 4 for record in records)
    assert [f"{record['expected_grade']:.2f}" for record in records] == [f"{shown:.2f}" for shown in expected]
