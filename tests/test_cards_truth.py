"""What the cards say is true (issue 38, section 2): only a judged card holds a "#n", a comparison's nDCG@10 is "–"
until a side has judged, the disagreement badge leaves the title whole, exports name the corpus's query id, and
the agreement panel starts its bars at 0 and says why an empty table is empty; another corpus clears the old
one's results."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from html import unescape
from pathlib import Path

import gradio as gr
import pytest
from conftest import write
from playwright.sync_api import Page, expect
from scripted import candidate
from test_browser import COUNT_MOVES, loaded, open_panel, serve  # noqa: F401  (loaded: the demo model)

from search.annotation.store import AnnotationStore, HumanJudgment
from search.compare import Comparison
from search.pipeline import LoadedModel
from search.rerank.events import Judged, Reasoning, Started
from search.rerank.rank1 import Rank1Reranker
from search.retrieval.first_stage import FirstStage
from search.settings import SAMPLE_CORPUS, RerankSettings, Settings
from search.uploads import CorpusLibrary
from ui.annotate import AnnotateTab, AnnotationContext, agreement_plots
from ui.app import ModelStatus, SearchPage, build_app
from ui.cards import rank1_verdict, render_board
from ui.compare import ComparePage, ShownPair
from ui.compare_cards import render_pair_card, render_pair_summary
from ui.evidence import ScoreScale

DOCS = [candidate(doc_id, f"passage {doc_id}", rank=rank, title=f"Venus and {doc_id}")
        for rank, doc_id in enumerate("abcd", start=1)]
MOONS = "which planets have no moons"
"""The sample corpus's query q02."""
P_TRUE = ScoreScale(name="P(true)")


def judged(doc_id: str, p_true: float) -> Judged:
    return Judged(reranker="rank1", doc_id=doc_id, passage_id=f"{doc_id}#0", verdict=p_true > 0.5, p_true=p_true,
                  logprob_true=math.log(p_true), logprob_false=math.log(1 - p_true), reasoning="r", tokens=3,
                  end_reason="answered", forced=False, truncated_passage=False)


def rank1_run(scores: dict[str, float], *, query: str = "q", thinking: str = "") -> Rank1Reranker:
    run = Rank1Reranker.new_run(query, DOCS, settings=RerankSettings())
    for doc_id, p_true in scores.items():
        run.apply(judged(doc_id, p_true))
    if thinking:
        first = next(item for item in DOCS if item.passage.doc_id == thinking)
        run.apply(Started(reranker="rank1", doc_id=thinking, passage_id=first.passage.passage_id,
                          first_stage_rank=first.rank))
        run.apply(Reasoning(reranker="rank1", doc_id=thinking, text="so far", tokens=2))
    return run


def moves(html: str) -> dict[str, tuple[str, str]]:
    """Each card's (state, text of its rank slot), by document id."""
    cards = re.findall(r'<div class="es-rcard es-s-(\w+)" data-doc="(\w+)"><div class="es-head">'
                       r'<span class="es-move[^"]*"[^>]*>(.*?)</span>(?=<span class="es-title")', html)
    return {doc: (state, re.sub(r"<[^>]+>", "", slot)) for state, doc, slot in cards}


@pytest.mark.parametrize("reranked", [True, False])
def test_only_judged_cards_hold_a_rank(reranked: bool) -> None:
    """b judged first (reranked #1) while a, first in the first stage, is thinking: one "#1" only."""
    run = rank1_run({"b": 0.9}, thinking="a")
    shown = moves(render_board(run, reranked=reranked, verdict=rank1_verdict, scale=P_TRUE))
    assert set(shown) == set("abcd")
    assert shown["b"][0] == "judged" and shown["b"][1].startswith("#1")
    for doc in "acd":
        assert "#" not in shown[doc][1], shown
    assert shown["a"][0] == "thinking"
    html = render_board(run, reranked=reranked, verdict=rank1_verdict, scale=P_TRUE)
    assert 'title="not judged yet · first stage #1"' in html  # the first-stage rank is still there to read


def test_the_pair_line_shows_no_ndcg_for_a_side_that_has_judged_nothing() -> None:
    grades = {"a": 0, "d": 2}
    pair = Comparison(rank1_run({}), rank1_run({}), judged=grades)
    stats = pair.stats()
    assert stats.ndcg is not None and stats.ndcg["A"] is None and stats.ndcg["B"] is None
    assert stats.ndcg["first stage"] == pytest.approx((3 / math.log2(5)) / 3)
    line = render_pair_summary(pair, budgets={"A": 8, "B": 8}, names={"A": "a", "B": "b"})
    assert "nDCG@10 first stage <b>0.431</b> · A <b>–</b> · B <b>–</b>" in line
    started = Comparison(rank1_run({"d": 0.9}), rank1_run({}), judged=grades)  # A has judged d: A's nDCG so far
    line = render_pair_summary(started, budgets={"A": 8, "B": 8}, names={"A": "a", "B": "b"})
    assert "A <b>1.000</b> · B <b>–</b>" in line


def test_the_disagreement_badge_leaves_the_title_its_line() -> None:
    pair = Comparison(rank1_run({"a": 0.9}), rank1_run({"a": 0.1}))
    reason = pair.disagreement("a")
    assert reason is not None
    html = render_pair_card(pair, DOCS[0], {"A": {"a": 1}, "B": {"a": 4}}, reason)
    head = re.search(r'<div class="es-head">(.*?)</div>', html).group(1)
    assert "es-title" in head and "disagree" not in head  # the title has the head's line to itself
    assert html.count("es-disagree-badge") == 1 and f"disagree: {reason}" in html


def test_exports_name_the_corpus_s_query_id_when_the_query_is_one_of_its_queries(
        library: CorpusLibrary, tmp_path: Path) -> None:
    page = SearchPage(library, ModelStatus(loaded=None), slots=asyncio.Semaphore(1))
    for query, query_id in ((MOONS, "q02"), (f"  {MOONS} ", "q02"), ("moons of mars", "query")):
        run = rank1_run({"a": 0.9}, query=query)
        trec = Path(page.export(run, "sample_corpus")[0]).read_text(encoding="utf-8")
        assert {line.split()[0] for line in trec.splitlines()} == {query_id}
        pair = ShownPair(pair=Comparison(run, rank1_run({"a": 0.2}, query=query)), budgets={"A": 8, "B": 8},
                         names={"A": "a", "B": "b"})
        written = [Path(name) for name in page.export(pair, "sample_corpus")]
        for path in written:
            if path.suffix == ".trec":
                assert {line.split()[0] for line in path.read_text(encoding="utf-8").splitlines()} == {query_id}
    trec = Path(page.export(rank1_run({}, query=MOONS), "gone.jsonl")[0]).read_text(encoding="utf-8")
    assert {line.split()[0] for line in trec.splitlines()} == {"query"}  # a corpus since removed: no id to give


def test_the_agreement_bars_start_at_zero() -> None:
    by_grade, calibration = agreement_plots()
    assert by_grade.y_lim == [0, None] and calibration.y_lim == [0, 1]


def test_empty_agreement_tables_say_why(library: CorpusLibrary, tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    tab = AnnotateTab(AnnotationContext(store=store, library=library, reranker_for=lambda key, kind: None, top_k=3))
    tab.create_project("moons", "sample_corpus", None, f"q1\t{MOONS}", None, "", False, "no, yes", 3, "rank1",
                       False)
    ada = gr.Request(session_hash="ada")
    tab.open_project("ada", "moons", "", "rank1", ada)
    first = tab.bench_of(ada).doc_id
    tab.grade(1)("", -1, -1, {"query_id": "q1", "doc_id": first, "seq": 1}, ada)
    html, *_, pairs, alpha_by_query, overlap = tab.agreement(0.5, 1, ada)
    summary = unescape(html)
    assert pairs.empty and alpha_by_query.empty and overlap.empty
    assert "The between-annotator tables are empty: they need two annotators' grades of the same documents." in summary
    assert "The evidence table is empty: it needs an annotator's evidence span on a document" in summary
    store.judge("moons", HumanJudgment(annotator="bob", query_id="q1", doc_id=first, grade=0))
    html, *_, pairs, alpha_by_query, overlap = tab.agreement(0.5, 1, ada)
    assert len(pairs) == 1 and len(alpha_by_query) == 1 and "between-annotator tables are empty" not in unescape(html)
    store.close()



def uploading(settings: Settings, first_stage: FirstStage, store: Path) -> CorpusLibrary:
    """The sample corpus, and uploads kept in ``store`` (BM25 only: quick to index)."""
    library = CorpusLibrary(settings, ("bm25",), store=store)
    library.add("sample_corpus", first_stage)
    return library


def test_another_corpus_clears_the_old_results_and_ends_their_run(settings: Settings, first_stage: FirstStage,
                                                                   tmp_path: Path) -> None:
    """An upload that loads, a corpus picked or the shown one removed: the old corpus's cards, summary and run go,
    and the examples come back; a refused upload leaves them."""
    page = SearchPage(uploading(settings, first_stage, tmp_path / "uploads"), ModelStatus(loaded=None),
                      slots=asyncio.Semaphore(1))
    ada = gr.Request(session_hash="ada")
    run = rank1_run({"a": 0.9})
    page.live.start("ada", run)
    refused = page.upload(str(write(tmp_path / "refused.pdf", "%PDF")), request=ada)
    assert all(value == gr.skip() for value in refused[-5:]) and page.live.current("ada", run)
    uploaded = page.upload(str(write(tmp_path / "tiny.jsonl", '{"_id": "a", "text": "owls hunt at night"}\n')),
                           request=ada)
    assert uploaded[0]["value"] == "tiny.jsonl"
    summary, results, shown, rows, examples_row = uploaded[-5:]
    assert (summary, results, shown, rows) == ("", "", None, None) and examples_row["visible"] is True
    assert not page.live.current("ada", run)  # the old corpus's run ends at its next event
    page.live.start("ada", run)
    assert page.cleared(ada)[:4] == ("", "", None, None) and not page.live.current("ada", run)
    page.live.start("ada", run)
    removed = page.remove_corpus("tiny.jsonl", ada)
    assert removed[-5:-1] == ("", "", None, None) and not page.live.current("ada", run)


def test_a_corpus_without_queries_shows_no_examples_box(settings: Settings, first_stage: FirstStage,
                                                        tmp_path: Path) -> None:
    library = uploading(settings, first_stage, tmp_path / "uploads")
    page = ComparePage(SearchPage(library, ModelStatus(loaded=None), slots=asyncio.Semaphore(1)))
    assert page.example_samples("sample_corpus")["visible"] is True
    library.upload(write(tmp_path / "plain.jsonl", '{"_id": "a", "text": "owls hunt at night"}\n'), "plain.jsonl")
    assert page.example_samples("plain.jsonl") == {"samples": [], "visible": False}


def test_the_page_clears_its_results_on_every_corpus_the_user_chooses(library: CorpusLibrary) -> None:
    """Picked in the list, uploaded, loaded as its good documents, or the shown one removed; never on a link's
    corpus (set on load together with the link's run)."""
    app = build_app(library, ModelStatus(loaded=None))
    blocks = app.blocks.values()
    picker = next(block for block in blocks if getattr(block, "label", None) == "Corpus")
    results = next(block for block in blocks if getattr(block, "elem_id", None) == "es-results")
    summary = next(block for block in blocks if getattr(block, "elem_id", None) == "es-summary")

    def cleared_by(event: str, target: object) -> bool:
        return any((target._id, event) in fn.targets and results in fn.outputs and summary in fn.outputs
                   for fn in app.fns.values())

    assert cleared_by("input", picker)
    upload = next(block for block in blocks if isinstance(block, gr.File) and block.interactive is not False)
    assert cleared_by("upload", upload)
    for name in ("Load the good documents", "Remove this uploaded corpus"):
        button = next(block for block in blocks if isinstance(block, gr.Button) and block.value == name)
        assert cleared_by("click", button)
    assert not cleared_by("change", picker)
    app.close()


# Every frame from now on: each pair of result cards whose boxes (as drawn, animations included) intersect by more
# than half a pixel both ways, and how many frames were looked at.
WATCH_OVERLAPS = """() => { window.overlaps = []; window.frames = 0;
  const look = () => {
    const boxes = [...document.querySelectorAll('.es-board > .es-rcard')].map((card) =>
      [card.dataset.doc, card.getBoundingClientRect()]);
    boxes.forEach(([one, a], index) => boxes.slice(index + 1).forEach(([other, b]) => {
      const wide = Math.min(a.right, b.right) - Math.max(a.left, b.left);
      const high = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (wide > 0.5 && high > 0.5 && window.overlaps.length < 20)
        window.overlaps.push(`${one} and ${other}: ${wide.toFixed(0)}×${high.toFixed(0)} px`);
    }));
    window.frames += 1;
    requestAnimationFrame(look);
  };
  requestAnimationFrame(look); }"""
SETTLED = "[...document.querySelectorAll('.es-rcard')].every((card) => card.getAnimations().length === 0)"


@pytest.fixture(scope="module")
def switchable_url(settings: Settings, first_stage: FirstStage, loaded: LoadedModel,  # noqa: F811
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The sample corpus with 20 candidates judged on a budget of 6 tokens (quick), uploads allowed."""
    library = CorpusLibrary(settings, ("bm25",), store=tmp_path_factory.mktemp("uploads"))
    library.add("sample_corpus", first_stage)
    page_settings = Settings().replace(corpus=SAMPLE_CORPUS, index_dir=settings.index_dir, model="demo",
                                       engine="transformers", budget=6, judgment_cache=False, top_k=20)
    app, url = serve(library, page_settings, loaded)
    yield url
    app.close()


def test_cards_never_cover_each_other_and_another_corpus_clears_them(
        page: Page, switchable_url: str, tmp_path: Path) -> None:
    """Watched every frame at 1280×800: while the list re-sorts as judgments land, on each re-sort by the toggle,
    and when the grid loses a column in the middle of one, no card is drawn over another; re-sorted cards still
    move (an animation each). Then an upload: the old corpus's cards and summary go, and no empty examples box."""
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto(switchable_url)
    page.evaluate(COUNT_MOVES)
    page.evaluate(WATCH_OVERLAPS)
    query = page.get_by_label("Query")
    query.fill("what are the health effects of caffeine")
    query.press("Enter")
    expect(page.locator(".es-rcard")).to_have_count(20, timeout=20_000)
    expect(page.locator(".es-summary")).to_contain_text("done", timeout=240_000)
    page.wait_for_function(SETTLED)
    open_panel(page)
    sort = page.get_by_label("Sort by the reranker (off: first-stage order)")
    reranked = page.locator(".es-rcard").first.get_attribute("data-doc")
    for check, width in ((False, 1280), (True, 1280), (False, 700), (True, 1280)):
        moved = page.evaluate("window.moves")
        sort.set_checked(check)
        page.wait_for_function("(moved) => window.moves > moved", arg=moved)
        if width != page.viewport_size["width"]:  # the grid changes its columns while the cards move
            page.set_viewport_size({"width": width, "height": 800})
        page.wait_for_function(SETTLED)
    expect(page.locator(".es-rcard").first).to_have_attribute("data-doc", reranked)
    assert page.evaluate("window.frames") > 20
    assert page.evaluate("window.overlaps") == []

    tiny = write(tmp_path / "tiny.jsonl", "".join(
        f'{{"_id": "t{number}", "text": "caffeine note {number}"}}\n' for number in range(5)))
    page.locator("#es-panel input[type=file]").set_input_files(str(tiny))
    expect(page.get_by_label("Corpus")).to_have_value("tiny.jsonl", timeout=60_000)
    expect(page.locator(".es-rcard")).to_have_count(0)
    expect(page.locator("#es-summary")).not_to_contain_text("judged")
    examples = page.locator("#es-examples")
    assert examples.is_hidden() or examples.evaluate("element => element.getBoundingClientRect().height") < 1
