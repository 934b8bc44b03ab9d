"""The page in a real browser (Debian Chromium driven by Playwright): live reasoning in several cards at once,
probabilities and the re-sorted list, Stop, expanded traces that stay open, exports, and hostile text that
shows as text. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from conftest import BELIEF_SCREENSHOT, COMPARE_SCREENSHOT, README_SCREENSHOT, shoot, write
from gradio.utils import get_upload_folder
from gradio_client import Client
from playwright.sync_api import Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from search.engines import close_engines
from search.pipeline import LoadedModel, open_model
from search.retrieval.first_stage import open_first_stage
from search.settings import SAMPLE_CORPUS, EngineSettings, Settings
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
def cats(tmp_path_factory: pytest.TempPathFactory, index_dir: Path) -> tuple[Settings, CorpusLibrary]:
    """Three long cat stories and one hostile document; uploads kept in a folder of their own."""
    folder = tmp_path_factory.mktemp("browser")
    records = [{"_id": f"story-{index}", "title": f"Cat story {index}", "text": text}
               for index, text in enumerate(STORIES)]
    records.append({"_id": "hostile", "title": HOSTILE_TITLE, "text": HOSTILE_TEXT})
    corpus = write(folder / "corpus.jsonl", "".join(json.dumps(record) + "\n" for record in records))
    # ReasonRank windows of 3 sliding by 2: two windows over the four documents.
    settings = Settings().replace(corpus=corpus, index_dir=index_dir, model="demo", engine="transformers",
                                  budget=160, judgment_cache=False, top_k=4, window=3, step=2,
                                  uploads=folder / "uploads")
    library = CorpusLibrary(settings, ("hybrid",), store=settings.uploads)
    library.add("cats", open_first_stage(settings, ("hybrid",)))
    return settings, library


def serve(library: CorpusLibrary, settings: Settings, loaded: LoadedModel) -> tuple[Any, str]:
    app = build_app(library, ModelStatus(loaded=loaded, settings=settings))
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    return app, url


@pytest.fixture(scope="module")
def page_url(cats: tuple[Settings, CorpusLibrary], loaded: LoadedModel) -> Iterator[str]:
    app, url = serve(cats[1], cats[0], loaded)
    yield url
    app.close()


@pytest.fixture(scope="module")
def sample_url(library: CorpusLibrary, index_dir: Path, loaded: LoadedModel) -> Iterator[str]:
    """The sample corpus with 20 candidates, as a new user meets it."""
    settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=index_dir, model="demo", engine="transformers",
                                  budget=160, judgment_cache=False, top_k=20)
    app, url = serve(library, settings, loaded)
    yield url
    app.close()


def open_panel(page: Page) -> None:
    """The side panel with the corpus, settings, model and exports."""
    page.get_by_role("button", name="Corpus, settings and model").click()
    # the panel opens once the server answers the click, which a busy machine takes seconds to do
    expect(page.get_by_label("Reasoning budget (tokens)")).to_be_visible(timeout=30_000)


def elapsed_s(page: Page) -> float:
    return float(re.search(r"([0-9.]+) s ·", page.locator(".es-summary").inner_text()).group(1))


# Characters of reasoning in each card whose reasoning area lies wholly inside the viewport, by document id.
REASONING_IN_VIEW = """() => Object.fromEntries([...document.querySelectorAll('.es-rcard')].filter((card) => {
  const box = card.querySelector('.es-tail').getBoundingClientRect();
  return box.top >= 0 && box.bottom <= innerHeight && box.left >= 0 && box.right <= innerWidth;
}).map((card) => [card.dataset.doc, card.querySelector('.es-trace').textContent.length]))"""
# Characters of reasoning in every card, in view or not, by document id.
REASONING_BY_DOC = """() => Object.fromEntries([...document.querySelectorAll('.es-rcard')].map((card) =>
  [card.dataset.doc, card.querySelector('.es-trace').textContent.length]))"""
WORKING = ".es-rcard.es-s-thinking, .es-rcard.es-s-queued"
# Counts the animations cards start (FLIP moves).
COUNT_MOVES = """() => { window.moves = 0; const animate = Element.prototype.animate;
  Element.prototype.animate = function (...args) { window.moves += 1; return animate.apply(this, args); }; }"""


def test_a_new_user_watches_reasoning_grow_in_view_without_scrolling_or_clicking(
        page: Page, sample_url: str, loaded: LoadedModel) -> None:
    page.goto(sample_url)
    query = page.get_by_label("Query")
    query.fill("what are the health effects of caffeine")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=10_000)  # the first-stage list, at once
    page.wait_for_function(f"Object.values(({REASONING_IN_VIEW})()).filter((length) => length > 0).length >= 8",
                           timeout=90_000)
    before = page.evaluate(REASONING_IN_VIEW)
    # At least two of those cards grow while we watch, without a scroll or a click (how soon is the machine's
    # speed: a decoding step of the 20-row batch takes seconds on a busy 2-core machine).
    page.wait_for_function(f"""(before) => {{ const after = ({REASONING_IN_VIEW})();
        return Object.keys(before).filter((doc) => (after[doc] ?? 0) > before[doc]).length >= 2; }}""",
                           arg=before, timeout=60_000)
    assert page.evaluate("window.scrollY") == 0
    expect(page.locator(".es-summary")).not_to_contain_text(" 0.0 tokens/s")
    # The README's screenshot: the live page while it streams.
    page.screenshot(path=str(README_SCREENSHOT))

    seen = page.evaluate(REASONING_BY_DOC)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary")).to_contain_text("stopped", timeout=10_000)
    expect(page.locator(WORKING)).to_have_count(0)  # no card is left thinking or queued
    expect(page.locator(".es-rcard.es-s-stopped").first).to_contain_text("stopped")
    # Stop keeps every card's reasoning, by document id wherever the card now is: a card stopped mid-reasoning
    # its partial reasoning, one judged before Stop landed its whole reasoning. The cards in view are not the
    # measure: the list Stop re-sorts puts the cards judged meanwhile first (on a fast machine, those the demo
    # model judged within a few tokens, with little or no text of reasoning), and re-sorted cards slide (FLIP).
    kept = page.evaluate(REASONING_BY_DOC)
    assert all(kept[doc] >= length for doc, length in seen.items()), (seen, kept)
    deadline = time.monotonic() + 20
    while loaded.engine.active_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded.engine.active_requests() == 0  # Stop freed the engine's requests
    shoot(page, "stopped")


@pytest.mark.parametrize("delay_ms", [0, 250, 600, 1000])
def test_stop_at_any_moment_after_enter_shows_the_run_stopped_and_frees_the_engine(
        page: Page, sample_url: str, loaded: LoadedModel, delay_ms: int) -> None:
    """A new user's walk pressed Stop 0.2-0.8 s after Enter: the page stayed queued, the run went on, or the
    results went blank. Whenever Stop lands once the server has the run asked for, before the run began or after,
    the run shows itself stopped."""
    page.goto(sample_url)
    query = page.get_by_label("Query")
    query.fill("what are the health effects of caffeine")
    query.press("Enter")
    expect(page.locator("#es-examples")).to_be_hidden()  # the server has the run asked for (``started``)
    page.wait_for_timeout(delay_ms)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary")).to_contain_text("stopped", timeout=30_000)
    expect(page.locator(".es-rcard")).to_have_count(20)
    expect(page.locator(WORKING)).to_have_count(0)
    deadline = time.monotonic() + 20
    while loaded.engine.active_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded.engine.active_requests() == 0
    stopped = page.locator(".es-summary").inner_text()
    page.wait_for_timeout(1000)  # nothing goes on behind the stopped line
    assert page.locator(".es-summary").inner_text() == stopped and loaded.engine.active_requests() == 0
    shoot(page, f"stopped-{delay_ms}ms")


def test_a_query_at_the_limit_is_counted_and_refused_never_cut(page: Page, page_url: str) -> None:
    page.goto(page_url)
    query = page.get_by_label("Query")
    query.fill("cat " * 500)
    query.press("End")
    query.type("s")
    expect(page.locator(".es-counter")).to_have_text("2,001 / 2,000 characters: 1 over the limit. Shorten the query; "
                                                     "nothing is cut.")
    query.press("Enter")
    expect(page.locator("#es-summary")).to_contain_text("The query is 2,001 characters long", timeout=10_000)
    assert len(query.input_value()) == 2001
    query.fill("cat " * 500)
    expect(page.locator(".es-counter")).to_have_text("2,000 / 2,000 characters")


def test_live_reasoning_stop_sorting_motion_exports_and_escaping(page: Page, page_url: str) -> None:
    page.goto(page_url)
    page.get_by_text("demo model: verdicts not meaningful").click()
    expect(page.get_by_text("verdicts are not meaningful. For real rank1")).to_be_visible()
    query = page.get_by_label("Query")
    query.fill("cat story")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(4, timeout=10_000)

    # Reasoning grows in at least two cards at the same time.
    page.wait_for_function("document.querySelectorAll('.es-trace:not(:empty)').length >= 2", timeout=60_000)
    before = page.evaluate(REASONING_IN_VIEW)
    time.sleep(2)
    after = page.evaluate(REASONING_IN_VIEW)
    assert sum(after[doc] > before.get(doc, 0) for doc in after) >= 2, (before, after)

    # "all reasoning", opened by the reader, stays open while the reasoning keeps streaming.
    growing = next(doc for doc in after if after[doc] > before.get(doc, 0))
    toggle = page.locator(f".es-rcard[data-doc='{growing}'] details.es-all")
    toggle.locator("summary").click()
    time.sleep(1.5)
    assert toggle.evaluate("element => element.open")
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
    expect(page.locator(WORKING)).to_have_count(0)

    # A short budget to the end: verdicts, probabilities, the re-sorted list.
    open_panel(page)
    budget = page.get_by_label("Reasoning budget (tokens)")
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
    expect(page.locator(".es-rcard .es-state")).to_have_text([re.compile("judged|forced")] * 4)
    shoot(page, "judged")

    # Re-sorting moves the cards to their new places (FLIP); toggles the reader opened stay open.
    reranked = [card.get_attribute("data-doc") for card in page.locator(".es-rcard").all()]
    page.locator(".es-rcard[data-doc='hostile'] details.es-open summary").click()
    page.evaluate(COUNT_MOVES)
    first_stage = [doc for _, doc in sorted(
        (int(re.search(r"first stage #(\d+)", card.locator(".es-move").get_attribute("title") or "").group(1)),
         card.get_attribute("data-doc")) for card in page.locator(".es-rcard").all())]
    assert first_stage != reranked  # the demo model's verdicts re-sort these four (greedy, so always the same)
    page.get_by_label("Sort by the reranker (off: first-stage order)").uncheck()
    expect(page.locator(".es-rcard").first).to_have_attribute("data-doc", first_stage[0])
    page.wait_for_function("window.moves > 0", timeout=5_000)
    assert page.locator(".es-rcard[data-doc='hostile'] details.es-open").evaluate("element => element.open")
    # A reader who asks for reduced motion gets the new order without the slide.
    page.emulate_media(reduced_motion="reduce")
    moved = page.evaluate("window.moves")
    page.get_by_label("Sort by the reranker (off: first-stage order)").check()
    expect(page.locator(".es-rcard").first).to_have_attribute("data-doc", reranked[0])
    time.sleep(0.5)
    assert page.evaluate("window.moves") == moved

    # Hostile text is shown as text and runs nothing.
    assert page.evaluate("window.hacked") is None
    expect(page.locator(".es-rcard[data-doc='hostile'] .es-title")).to_contain_text(
        "<script>window.hacked = 1</script>")
    expect(page.locator(".es-rcard[data-doc='hostile'] .es-passage")).to_contain_text(HOSTILE_TEXT)

    export_traces(page)
    contents = exported(page)
    assert len(contents[".trec"].splitlines()) == 4 and all(len(line.split()) == 6
                                                            for line in contents[".trec"].splitlines())
    records = [json.loads(line) for line in contents[".jsonl"].splitlines()]
    assert {record["doc_id"] for record in records} == {"story-0", "story-1", "story-2", "hostile"}
    assert all(record["status"] == "judged" and record["tokens"] <= 6 for record in records)
    shoot(page, "exported")


def export_traces(page: Page) -> None:
    """Export from the side panel (opened when it is not)."""
    export = page.get_by_role("button", name="Export TREC run and JSONL traces")
    if not export.is_visible():
        if not page.get_by_label("Reasoning budget (tokens)").is_visible():
            open_panel(page)
        page.get_by_role("button", name=re.compile("^Export this run")).filter(has_text="▼").first.click()
    export.click()


def exported(page: Page) -> dict[str, str]:
    """The exported files' contents by suffix."""
    links = page.locator("a[download]")
    expect(links).to_have_count(2, timeout=10_000)
    return {Path(link.get_attribute("download") or "").suffix: page.request.get(link.get_attribute("href")).text()
            for link in links.all()}


def test_uploads_list_their_problems_load_the_good_documents_and_persist(
        page: Page, page_url: str, cats: tuple[Settings, CorpusLibrary], loaded: LoadedModel,
        tmp_path_factory: pytest.TempPathFactory) -> None:
    folder = tmp_path_factory.mktemp("uploads")
    bad = write(folder / "bad.jsonl", '{"_id": "a", "title": "Fine", "text": "fine owls"}\n{"_id": "b", "text": \n')
    good = write(folder / "good.jsonl", '{"_id": "owl", "title": "Owls", "text": "Owls hunt mice at night."}\n'
                                        '{"_id": "bat", "title": "Bats", "text": "Bats hunt insects at night."}\n')
    page.goto(page_url)
    open_panel(page)
    upload = page.locator("#es-panel input[type=file]")
    upload.set_input_files(str(bad))
    problems = page.locator(".es-notice.es-error li")
    expect(problems).to_have_text([re.compile(r"^bad\.jsonl:2 — malformed JSON")], timeout=30_000)
    expect(page.locator(".es-notice.es-error")).not_to_contain_text("--skip-bad")
    expect(page.get_by_label("Corpus")).to_have_value("cats")  # what the user had stays
    page.get_by_role("button", name="Load the 1 good document").click()
    expect(page.get_by_text("Loaded bad.jsonl: 1 documents, 1 passages. 1 bad record(s) were dropped.")).to_be_visible(
        timeout=60_000)
    expect(page.get_by_role("button", name=re.compile("Load the"))).to_be_hidden()
    # A new upload replaces the old message, even a rejected one.
    refused = f"notes-{uuid.uuid4().hex[:8]}.pdf"
    upload.set_input_files(str(write(folder / refused, "%PDF")))
    expect(page.locator("#es-panel")).to_contain_text(f"{refused} was not loaded: {refused}: unsupported type",
                                                      timeout=30_000)
    assert not list(Path(get_upload_folder()).rglob(refused))  # a refused upload is not left in Gradio's folder
    expect(page.get_by_text("Loaded bad.jsonl")).to_have_count(0)
    upload.set_input_files(str(good))
    expect(page.get_by_text("Loaded good.jsonl: 2 documents, 2 passages.")).to_be_visible(timeout=60_000)
    expect(page.get_by_label("Corpus")).to_have_value("good.jsonl")
    shoot(page, "uploaded")

    # Every session, after a reload, lists it; the API takes it; so does a restarted app.
    page.reload()
    open_panel(page)
    page.get_by_label("Corpus").click()
    expect(page.get_by_role("option", name="good.jsonl")).to_be_visible()
    page.keyboard.press("Escape")
    client = Client(page_url, verbose=False)
    job = client.submit("night hunters", "", "hybrid", 2, 4, True, "good.jsonl", api_name="/rerank")
    job.result()
    assert {row["doc_id"] for row in job.outputs()[-1][2]} == {"owl", "bat"}
    settings = cats[0]
    restarted = CorpusLibrary(settings, ("hybrid",), store=settings.uploads)
    restarted.add("cats", cats[1].get("cats"))
    restarted.restore()
    assert restarted.names() == ["cats", "bad.jsonl", "good.jsonl"]
    app, url = serve(restarted, settings, loaded)
    try:
        answer = Client(url, verbose=False).predict("night hunters", "hybrid", 2, "good.jsonl", api_name="/search")
        assert "Owls" in answer and "Bats" in answer
    finally:
        app.close()

    # Removing it on the page forgets it for everyone.
    page.locator("h1").click()  # the picker loses focus, so that a click opens it again
    page.get_by_label("Corpus").click()
    page.get_by_role("option", name="good.jsonl").click()
    page.get_by_role("button", name="Remove this uploaded corpus").click()
    expect(page.get_by_text("Removed good.jsonl.")).to_be_visible(timeout=10_000)
    assert "good.jsonl" not in cats[1].names()
    cats[1].remove("bad.jsonl")


def test_model_picker_reports_a_model_it_cannot_load_and_keeps_the_current_one(page: Page,
                                                                                page_url: str) -> None:
    page.goto(page_url)
    open_panel(page)
    page.get_by_role("button", name=re.compile("^Model")).filter(has_text="▼").first.click()
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
    open_panel(page)
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


def test_reasonrank_streams_window_by_window_and_exports_its_traces(page: Page, page_url: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1600})
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
    export_traces(page)
    contents = exported(page)
    records = [json.loads(line) for line in contents[".jsonl"].splitlines()]
    assert [record["type"] for record in records] == ["window", "window"] + ["document"] * 4
    assert all(record["status"] in ("ok", "repaired", "truncated") for record in records[:2])
    assert [line.split()[4] for line in contents[".trec"].splitlines()] == ["4.0", "3.0", "2.0", "1.0"]


def test_the_assessor_shows_each_grade_distribution_and_sorts_by_expected_grade(page: Page,
                                                                               page_url: str) -> None:
    page.set_viewport_size({"width": 1280, "height": 1600})
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
    export_traces(page)
    jsonl = exported(page)[".jsonl"]
    records = [json.loads(line) for line in jsonl.splitlines()]
    assert all(record["reranker"] == "assessor" and len(record["distribution"]) == 4 for record in records)
    assert [f"{record['expected_grade']:.2f}" for record in records] == [f"{shown:.2f}" for shown in expected]


# Points of each thinking card's belief chart, by document id.
LIVE_BELIEF = """() => Object.fromEntries([...document.querySelectorAll('.es-rcard.es-s-thinking')].map((card) =>
  [card.dataset.doc, (card.querySelector('svg.es-belief polyline')?.getAttribute('points') || '').trim()
    .split(/\\s+/).filter(Boolean).length]))"""


def expected_badge(record: dict) -> str:
    """The badge a judged card must show, from the exported row's measured probes and judgment alone."""
    def verdict(distribution: list[float]) -> int:
        return max(range(len(distribution)), key=lambda index: (distribution[index], -index))

    points = [*record["belief"], {"tokens": record["tokens"], "distribution": record["distribution"]}]
    final = verdict(points[-1]["distribution"])
    if verdict(points[0]["distribution"]) != final:
        return "reasoning changed the verdict"
    settled = points[-1]["tokens"]
    for point in reversed(points):
        if verdict(point["distribution"]) != final:
            break
        settled = point["tokens"]
    if settled == 0:
        return "decided before reasoning"
    return f"decided early (by token {settled})" if settled < points[-1]["tokens"] else ""


def test_belief_charts_fill_in_live_and_the_badges_say_what_the_measured_probes_say(page: Page,
                                                                                    page_url: str) -> None:
    page.goto(page_url)
    search_with(page, "Assessor (UMBRELA): graded 0–3, expected grade per document", 160)
    # While a card is still thinking its chart gains points: the verdict before any reasoning, then every 64 tokens.
    page.wait_for_function(f"Object.values(({LIVE_BELIEF})()).some((points) => points >= 2)", timeout=120_000)
    shoot(page, "belief-live")
    expect(page.locator(".es-summary")).to_contain_text("4/4 judged", timeout=180_000)
    expect(page.locator(".es-rcard svg.es-belief circle.es-final")).to_have_count(4)  # the judgment, last
    export_traces(page)
    records = {record["doc_id"]: record for record in map(json.loads, exported(page)[".jsonl"].splitlines())}
    assert all(record["belief"][0]["tokens"] == 0 for record in records.values())
    for doc_id, record in records.items():
        card = page.locator(f".es-rcard[data-doc='{doc_id}']")
        badge = expected_badge(record)
        for text in ("reasoning changed the verdict", "decided before reasoning", "decided early"):
            expect(card.locator(".es-flag", has_text=text)).to_have_count(int(badge.startswith(text)))
        if badge:
            expect(card.locator(".es-flag", has_text=badge)).to_have_attribute("title", re.compile(
                rf"^expected grade before reasoning {record['belief'][0]['score']:.2f}, verdict "
                rf"{record['expected_grade']:.2f}"))
    # Opening all of the reasoning marks the stretch that moved the belief most, with the measured change.
    moved = page.locator(".es-rcard .es-moved")
    if moved.count():
        page.locator(".es-rcard:has(.es-moved)").first.locator("details.es-all > summary").click()
        expect(moved.first).to_be_visible()
        assert re.fullmatch(r"expected grade \d\.\d\d → \d\.\d\d here", moved.first.get_attribute("data-note"))
    assert page.evaluate("window.hacked") is None
    page.locator("#es-panel .toggle-button").click()  # the side panel, opened to choose the reranker, closes
    expect(page.get_by_label("Reasoning budget (tokens)")).not_to_be_visible()
    page.screenshot(path=str(BELIEF_SCREENSHOT))  # the README's tour


# Characters of reasoning in each half of each compare card whose halves' reasoning areas lie wholly in the
# viewport, by document id: [A's, B's].
HALVES_IN_VIEW = """() => Object.fromEntries([...document.querySelectorAll('.es-pair-card')].filter((card) =>
  [...card.querySelectorAll('.es-tail')].every((tail) => { const box = tail.getBoundingClientRect();
    return box.top >= 0 && box.bottom <= innerHeight && box.left >= 0 && box.right <= innerWidth; })
).map((card) => [card.dataset.doc,
                  [...card.querySelectorAll('.es-trace')].map((trace) => trace.textContent.length)]))"""
SLEEP = "how to sleep better"
SLEEP_INSTRUCTION = "Exclude passages that recommend pills, medication or supplements; only habits and therapy count."


def test_a_comparison_streams_both_halves_in_view_filters_disagreements_stops_both_and_exports_both(
        page: Page, sample_url: str, loaded: LoadedModel) -> None:
    page.goto(sample_url)
    # In first-stage order the cards in view stay the top six while both sides stream: sorted, A's judgments (its
    # demo verdicts come in a few tokens) bring up documents that B, behind on a busy machine, has not reached yet.
    open_panel(page)
    page.get_by_label("Sort by the reranker (off: first-stage order)").uncheck()
    page.get_by_role("button", name="Toggle Sidebar").click()
    page.get_by_label("Compare: two judges side by side").check()
    expect(page.locator("#es-b-instruction textarea")).to_be_focused()  # B starts as A; its instruction is next
    page.get_by_label("Query").fill(SLEEP)
    page.locator("#es-a-instruction textarea").fill(SLEEP_INSTRUCTION)
    page.get_by_label("B · reranker").click()
    page.get_by_role("option", name="Assessor (UMBRELA): graded 0–3, expected grade per document").click()
    page.locator("#es-b-instruction textarea").press("Enter")
    expect(page.locator(".es-pair-card")).to_have_count(20, timeout=10_000)
    # Both halves of at least 6 cards stream text in view, at 1280×800, without a scroll: each side's first requests
    # are the top documents'. How soon is the machine's speed, which benchmarks/page.py --compare measures: a
    # fresh-clone CI run beside other work took over 15 s.
    try:
        page.wait_for_function(f"Object.values(({HALVES_IN_VIEW})()).filter(([a, b]) => a > 0 && b > 0).length >= 6",
                               timeout=90_000)
    except PlaywrightTimeout:
        shoot(page, "compare-halves-timeout")
        pytest.fail(f"cards with both tails in view and their traces' lengths: {page.evaluate(HALVES_IN_VIEW)}; "
                    f"summary: {page.locator('.es-pair-summary').inner_text()!r}")
    assert page.evaluate("window.scrollY") == 0
    expect(page.locator(".es-summary", has_text="assessor · demo")).to_be_visible()
    page.screenshot(path=str(COMPARE_SCREENSHOT))  # docs' and README's picture of a comparison streaming

    # rank1's P(true) and the assessor's expected grade ÷ 3 on the demo model lie far apart: disagreements.
    # B's first judgment comes once one of its documents is reasoned to the end: on a busy machine, minutes in
    expect(page.locator(".es-pair-card.es-disagree").first).to_be_visible(timeout=240_000)
    page.get_by_label("Only disagreements").check()
    disagreeing = page.locator(".es-pair-card.es-disagree").count()
    expect(page.locator(".es-pair-card:visible")).to_have_count(disagreeing)
    expect(page.locator(".es-pair-card.es-disagree .es-disagree-badge").first).to_contain_text("relevance")
    page.get_by_label("Only disagreements").uncheck()

    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary", has_text="stopped")).to_have_count(2, timeout=10_000)  # A's line and B's
    expect(page.locator(".es-half.es-s-thinking, .es-half.es-s-queued")).to_have_count(0)
    deadline = time.monotonic() + 20
    while loaded.engine.active_requests() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert loaded.engine.active_requests() == 0  # Stop ended both sides' requests
    shoot(page, "compare-stopped")

    page.set_viewport_size({"width": 1280, "height": 1600})  # the side panel's Export section in view
    open_panel(page)
    page.get_by_label("Sort by the reranker (off: first-stage order)").check()  # the default: A's order
    expect(page.locator(".es-pair-card").first.locator(".es-move").first).to_have_attribute(
        "title", re.compile(r"^A: reranked #1, first stage #\d+$"))
    export_traces(page)
    links = page.locator("a[download]")
    expect(links).to_have_count(3, timeout=10_000)
    files = {link.get_attribute("download"): page.request.get(link.get_attribute("href")).text()
             for link in links.all()}
    assert set(files) == {"rerank-A.trec", "rerank-B.trec", "compare.jsonl"}
    assert "explainable-search-rank1-A" in files["rerank-A.trec"]
    assert "explainable-search-assessor-B" in files["rerank-B.trec"]
    lines = [json.loads(line) for line in files["compare.jsonl"].splitlines()]
    assert {(line["side"], line["reranker"], line["instruction"]) for line in lines} == {
        ("A", "rank1", SLEEP_INSTRUCTION), ("B", "assessor", "")}


def test_a_link_restores_and_runs_a_comparison_and_copy_link_writes_it(page: Page, sample_url: str) -> None:
    params = {"q": SLEEP, "corpus": "sample_corpus", "reranker": "rank1", "budget": "24",
              "instruction": SLEEP_INSTRUCTION, "compare": "1", "b_instruction": ""}
    page.goto(f"{sample_url}?{urlencode(params)}")
    expect(page.locator(".es-pair-card")).to_have_count(20, timeout=20_000)  # it runs without a click
    expect(page.get_by_label("Compare: two judges side by side")).to_be_checked()
    expect(page.get_by_label("Query")).to_have_value(SLEEP)
    expect(page.locator(".es-summary", has_text="instruction: Exclude passages")).to_be_visible()
    expect(page.locator(".es-summary", has_text="no instruction")).to_be_visible()
    expect(page.locator(".es-summary", has_text="done")).to_have_count(2, timeout=120_000)
    expect(page.locator(".es-pair-line")).to_contain_text("nDCG@10 first stage")  # the sample corpus judges q24

    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="Copy link").click()
    link = page.get_by_label("Link to this search (copied)")
    expect(link).to_have_value(re.compile(r"^http://127\.0\.0\.1:\d+/\?q="), timeout=10_000)
    copied = dict(parse_qsl(urlsplit(link.input_value()).query, keep_blank_values=True))
    assert {name: copied[name] for name in params} == params
    assert page.evaluate("navigator.clipboard.readText()") == link.input_value()

    page.goto(f"{sample_url}?q=x&b_budget=many")
    expect(page.get_by_text("This link cannot be opened: link parameter b_budget must be int; got 'many'")
           ).to_be_visible(timeout=10_000)
    expect(page.locator(".es-rcard")).to_have_count(0)


def test_examples_from_the_corpus_run_with_one_click_as_searches_or_comparisons(page: Page, sample_url: str) -> None:
    page.goto(f"{sample_url}?q=which+planets+have+no+moons&reranker=assessor&budget=16")  # a single search's link
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=20_000)
    expect(page.locator(".es-pair-card")).to_have_count(0)
    expect(page.locator(".es-grades").first).to_be_visible(timeout=60_000)  # the assessor's grades
    page.get_by_role("button", name="Stop").click()

    page.get_by_role("button", name="Examples").click()
    page.get_by_text("how to sleep better · with vs without its instruction").click()
    expect(page.locator(".es-pair-card")).to_have_count(20, timeout=20_000)
    expect(page.locator(".es-summary", has_text="instruction: Exclude passages")).to_be_visible()
    expect(page.locator(".es-summary", has_text="no instruction")).to_be_visible()
    expect(page.get_by_label("Query")).to_have_value(SLEEP)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".es-summary", has_text="stopped")).to_have_count(2, timeout=10_000)

    page.get_by_role("button", name="Examples").click()
    page.get_by_text("which migraine treatments do NOT involve medication · negation").click()
    # A plain search: the comparison's cards (also .es-rcard) are gone, then 20 single cards. Waited for in that
    # order: the old pair cards alone already count 20 (a fresh-clone CI run failed on the 5 s check after).
    expect(page.locator(".es-pair-card")).to_have_count(0, timeout=20_000)
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=20_000)
    expect(page.get_by_label("Compare: two judges side by side")).not_to_be_checked()
    page.get_by_role("button", name="Stop").click()
