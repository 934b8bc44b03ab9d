"""The page served for real by Gradio, queried through its API the way the browser does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from html import unescape
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from gradio.utils import get_upload_folder
from gradio_client import Client
from gradio_client.exceptions import AppError

from search.compare import Comparison
from search.corpus import Passage
from search.engines import close_engines
from search.pipeline import open_model
from search.rerank.events import (
    Graded,
    Judged,
    RankingDone,
    Reasoning,
    Started,
    WindowRanked,
    WindowReasoning,
    WindowStarted,
)
from search.rerank.listwise import ListwiseRun
from search.rerank.pointwise import PointwiseRun
from search.rerank.rank1 import Rank1Reranker
from search.rerank.registry import RERANKERS
from search.retrieval.ranking import Candidate, Hit, ranking_from_scores
from search.settings import Settings
from search.uploads import CorpusLibrary
from ui.app import CSS, JS, ModelStatus, SearchPage, build_app, forget_upload
from ui.compare import ComparePage
from ui.compare_cards import render_pair_board, render_pair_summary
from ui.live import LiveRuns
from ui.model_key import ModelKey, ModelKeyError
from ui.renderers import FAMILIES, renderer_of
from ui.results import render_ranking

BUDGET = 16


@pytest.fixture(scope="module")
def status(demo_model: object) -> Iterator[ModelStatus]:
    settings = Settings().replace(model="demo", engine="transformers", budget=BUDGET, judgment_cache=False, top_k=5)
    yield ModelStatus(loaded=open_model(settings.serving), settings=settings)
    close_engines()


@pytest.fixture(scope="module")
def client(library: CorpusLibrary, status: ModelStatus) -> Iterator[Client]:
    app = build_app(library, status)
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    yield Client(url, verbose=False)
    app.close()


def test_live_runs_hold_only_what_streams_and_at_most_their_capacity() -> None:
    live = LiveRuns(capacity=100)
    runs = {f"session-{number}": live_run() for number in range(5000)}
    for session, run in runs.items():  # visitors come, run a query each, and it ends
        live.start(session, run)
        assert live.current(session, run)
        live.end(session, run)
    assert len(live) == 0
    for session, run in runs.items():  # runs that never end (their visitors stay): the oldest are pushed out
        live.start(session, run)
    assert len(live) == 100 and not live.current("session-0", runs["session-0"])
    assert live.current("session-4999", runs["session-4999"])
    newer = live_run()
    live.start("session-4999", newer)  # a new query replaces the session's run; the old one's end keeps it
    live.end("session-4999", runs["session-4999"])
    assert live.current("session-4999", newer)
    for session in runs:  # they close the page
        live.forget(session)
    assert len(live) == 0
    for session in runs:  # they press Stop with nothing running: only the newest sessions' Stops are held
        live.stop(session)
    assert [live.halted(session, None) for session in ("session-0", "session-4900", "session-4999")] == [
        False, True, True]


def test_a_stop_pressed_before_the_run_begins_stops_it_and_the_next_query_runs() -> None:
    live = LiveRuns()
    early, later, replaced = live_run(), live_run(), live_run()
    live.begin("s")  # Enter
    live.stop("s")  # Stop, before the server got to the run
    assert not live.start("s", early) and len(live) == 0  # it begins stopped
    live.begin("s")
    assert live.start("s", later) and not live.halted("s", later)
    live.stop("s")
    assert live.halted("s", later) and not live.current("s", later)  # it shows itself stopped at its next event
    live.begin("s")
    assert live.start("s", replaced)
    live.begin("s")
    assert live.start("s", live_run()) and not live.halted("s", replaced)  # replaced by a newer query: unseen


def test_stop_at_any_moment_ends_the_run_shown_as_stopped(library: CorpusLibrary) -> None:
    """Stop before the run began, and Stop while it streams: either way its last update shows it stopped (drawn
    by the run's own loop: the Stop handler draws nothing)."""
    page = SearchPage(library, ModelStatus(loaded=None, problem="none"), slots=asyncio.Semaphore(1))
    request = gr.Request(session_hash="visitor")
    page.started(False, 0, 0, request)
    page.stopped(request)
    before = live_run()

    async def one_event() -> AsyncIterator[Started]:
        yield Started(reranker="rank1", doc_id="c", passage_id="c", first_stage_rank=3)

    async def drawn(run: PointwiseRun, events: Any) -> list[str]:
        return [shown async for shown in page.stream(run, events, run.apply, lambda: run.summary().stopped, request)]

    assert asyncio.run(drawn(before, one_event)) == [True]  # never began: one update, stopped

    page.started(False, 1, 0, request)
    during = live_run()

    async def stopped_mid_run() -> AsyncIterator[Started]:
        yield Started(reranker="rank1", doc_id="c", passage_id="c", first_stage_rank=3)
        page.stopped(request)  # pressed before the first update reached the page
        yield Started(reranker="rank1", doc_id="b", passage_id="b", first_stage_rank=2)

    assert asyncio.run(drawn(during, stopped_mid_run))[-1] is True and len(page.live) == 0


def test_stop_ends_a_run_waiting_for_a_slot_or_its_next_event_at_once(library: CorpusLibrary) -> None:
    """A Stop pressed while the run waits for its next event (on a CPU, a prefill seconds away) ends the wait at
    once, from the Stop handler's thread: the run shows itself stopped and its events are closed (their engine
    requests end), without the event ever coming. So does a Stop while the run waits for a slot, its events never
    opened. A newer query ends the older run the same way, unseen; a run cancelled (Gradio's cancel, or its queue
    closing) closes its events and ends cancelled."""
    slots = asyncio.Semaphore(1)
    page = SearchPage(library, ModelStatus(loaded=None, problem="none"), slots=slots)
    request = gr.Request(session_hash="visitor")
    closed: list[str] = []

    def prefill_forever(name: str) -> Any:
        async def events() -> AsyncIterator[Started]:
            try:
                yield Started(reranker="rank1", doc_id="c", passage_id="c", first_stage_rank=3)
                await asyncio.Event().wait()  # the next event never comes
                yield Started(reranker="rank1", doc_id="b", passage_id="b", first_stage_rank=2)
            finally:
                closed.append(name)
        return events

    async def drawn(name: str) -> list[bool]:
        run = live_run()
        return [shown async for shown in page.stream(run, prefill_forever(name), run.apply,
                                                     lambda: run.summary().stopped, request)]

    async def streaming() -> None:
        while not len(page.live):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # past its first event, the run now waits for its second (or for a slot)

    async def scenarios() -> None:
        page.started(False, 0, 0, request)
        drawing = asyncio.ensure_future(drawn("stopped"))
        await asyncio.wait_for(streaming(), 30)
        await asyncio.to_thread(page.stopped, request)
        assert (await asyncio.wait_for(drawing, 30))[-1] is True  # it would wait for the next event for ever
        assert closed == ["stopped"] and len(page.live) == 0

        await slots.acquire()  # another visitor's run holds the only slot
        page.started(False, 1, 0, request)
        waiting = asyncio.ensure_future(drawn("waiting"))
        await asyncio.wait_for(streaming(), 30)
        await asyncio.to_thread(page.stopped, request)
        assert (await asyncio.wait_for(waiting, 30))[-1] is True and closed == ["stopped"]  # never opened
        slots.release()

        page.started(False, 2, 0, request)
        older = asyncio.ensure_future(drawn("older"))
        await asyncio.wait_for(streaming(), 30)
        page.started(False, 3, 0, request)
        newer = asyncio.ensure_future(drawn("newer"))
        assert True not in await asyncio.wait_for(older, 30) and closed[-1] == "older"
        await asyncio.wait_for(streaming(), 30)
        newer.cancel()
        await asyncio.wait((newer,))
        assert newer.cancelled() and closed[-1] == "newer" and len(page.live) == 0

    asyncio.run(scenarios())


def test_the_page_forgets_each_session_s_run_when_it_ends_or_the_page_is_closed(
        library: CorpusLibrary, status: ModelStatus) -> None:
    live = LiveRuns()
    app = build_app(library, status, live=live)
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    try:
        for _ in range(6):  # six visitors, one query each
            visitor = Client(url, verbose=False)
            visitor.predict("which planets have no moons", "", "hybrid", 2, BUDGET, True, "sample_corpus",
                            api_name="/rerank")
            visitor.close()
        assert len(live) == 0
        leaving = Client(url, verbose=False)
        job = leaving.submit("which planets have no moons", "", "hybrid", 5, 512, True, "sample_corpus",
                             api_name="/rerank")
        deadline = time.monotonic() + 120
        while not len(live) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(live) == 1
        leaving.close()  # the page is closed mid-run: the run is cancelled and forgotten
        while len(live) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(live) == 0, job.status()
    finally:
        app.close()


def test_only_files_in_gradio_s_upload_folder_are_forgotten(tmp_path: Path) -> None:
    outside = tmp_path / "corpus.jsonl"
    outside.write_text("{}", encoding="utf-8")
    forget_upload(outside)
    assert outside.exists()
    inside = Path(get_upload_folder()) / f"test-{uuid.uuid4().hex}" / "corpus.jsonl"
    inside.parent.mkdir(parents=True)
    inside.write_text("{}", encoding="utf-8")
    forget_upload(inside)
    assert not inside.exists()
    inside.parent.rmdir()


def test_the_page_s_handlers_run_without_a_browser(library: CorpusLibrary, status: ModelStatus) -> None:
    """build_app only lays the page out and wires SearchPage's methods: each one is called here directly."""
    page = SearchPage(library, status, slots=asyncio.Semaphore(2))
    assert "es-card" in page.search("which planets have no moons", "bm25", 3, "sample_corpus")
    assert "Type a query" in page.search("  ", "bm25", 3, "sample_corpus")
    assert "no such corpus" in page.search("moons", "bm25", 3, "nowhere")
    assert page.budget_of("rank1", page.default_key) == BUDGET  # the settings' budget wins
    modelless = SearchPage(library, ModelStatus(loaded=None, problem="none"), slots=asyncio.Semaphore(1))
    assert modelless.budget_of("assessor", "") == RERANKERS["assessor"].defaults.cpu_budget  # the CPU default

    async def run_once() -> list[tuple[Any, ...]]:
        return [update async for update in page.rerank("which planets have no moons", "", "hybrid", 3, BUDGET, True,
                                                       "sample_corpus")]

    updates = asyncio.run(run_once())
    summary, cards, run, rows = updates[-1]
    assert "3/3" in summary or "3 / 3" in summary or "judged" in summary
    assert run is not None and run.finished and len(rows) == 3 and "es-rcard" in cards and len(page.live) == 0
    trec, traces = (Path(name) for name in page.export(run, "sample_corpus"))
    assert len(trec.read_text().splitlines()) == 3 and len(traces.read_text().splitlines()) == 3
    with pytest.raises(gr.Error, match="Run a query first"):
        page.export(None, "sample_corpus")
    assert page.resort(run, False, BUDGET) == page.shown(run, BUDGET, reranked=False)[1]


def test_search_returns_ranked_cards(client: Client) -> None:
    html = client.predict("how do bats find insects in the dark", "hybrid", 5, "sample_corpus",
                          api_name="/search")
    assert html.count('class="es-card"') == 5
    assert "How bats hunt in the dark" in html
    assert "BM25 #" in html and "fused #" in html


def test_empty_and_oversized_queries_get_a_message(client: Client) -> None:
    assert "Type a query" in client.predict("   ", "bm25", 5, "sample_corpus", api_name="/search")
    too_long = client.predict("word " * 500, "bm25", 5, "sample_corpus", api_name="/search")
    assert "2,499 characters long; the limit is 2,000" in too_long and "nothing was cut" in too_long


def test_document_text_is_escaped() -> None:
    hostile = Passage(passage_id="<b>id</b>", doc_id="d", index=0, title="<script>alert(1)</script>",
                      text="<img src=x onerror=alert(2)> & more")
    html = render_ranking(ranking_from_scores("q", "bm25", [(hostile, 1.0)]))
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&amp; more" in html


def test_rerank_streams_updates_and_ends_sorted_by_probability(client: Client) -> None:
    job = client.submit("which planets have no moons", "", "hybrid", 5, BUDGET, True, "sample_corpus",
                        api_name="/rerank")
    job.result()
    updates = job.outputs()
    assert len(updates) >= 2
    first_rows, final_rows = updates[0][2], updates[-1][2]
    assert [row["status"] for row in first_rows] == ["waiting"] * 5  # the first-stage list, before any verdict
    assert "astro-venus-no-moons" in updates[0][1]
    assert all(row["status"] == "judged" for row in final_rows) and len(final_rows) == 5
    probabilities = [row["p_true"] for row in final_rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all({"doc_id", "p_true", "verdict", "reasoning"} <= set(row) for row in final_rows)
    assert "<b>5/5</b> judged" in updates[-1][0] and "done" in updates[-1][0]


def test_the_header_line_names_model_engine_device_and_keeps_the_demo_warning_a_click_away(
        status: ModelStatus) -> None:
    header = status.header()
    assert "demo · transformers · cpu" in header
    assert "verdicts are not meaningful" in header and "GPU with vLLM" in header and "--endpoints" in header
    assert "silently gives 0" in header  # where UMBRELA's reference is sloppy, we say what we do instead
    assert header.count("<details") == 2  # the demo badge and "how scores are measured", closed
    assert "not available: engine down." in ModelStatus(loaded=None, problem="engine down.").header()


def test_the_header_says_when_the_engine_has_failed_for_good(status: ModelStatus,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """An unhealthy engine (its worker died) fails every request at once: the header says so, with the reason."""
    assert "engine failed" not in status.header()
    monkeypatch.setattr(status.loaded.engine, "_unhealthy", "the worker <stopped>: out of memory")
    header = status.header()
    assert "engine failed" in header and "the worker &lt;stopped&gt;: out of memory" in header


def test_every_reranker_has_a_renderer() -> None:
    assert {cls.renderer for cls in RERANKERS.values()} <= set(FAMILIES)


def hostile_run(reranker: str = "rank1") -> PointwiseRun:
    passage = Passage(passage_id="p", doc_id="evil", index=0, title="<script>alert(1)</script>",
                      text="${alert(1)} `tick` back\\slash <img src=x onerror=alert(2)>")
    candidate = ranking_from_scores("q", "bm25", [(passage, 1.0)]).candidates[0]
    run = RERANKERS[reranker].new_run("q", [candidate], settings=Settings().rerank)
    run.apply(Started(reranker=reranker, doc_id="evil", passage_id="p", first_stage_rank=1))
    run.apply(Reasoning(reranker=reranker, doc_id="evil", text="<b>bold</b> ${alert(3)}"))
    return run


@pytest.mark.parametrize("reranker", ["rank1", "assessor"])
def test_cards_escape_document_text_and_model_output(reranker: str) -> None:
    html = renderer_of(RERANKERS[reranker]).cards(hostile_run(reranker), True)
    assert "<script>" not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "back\\slash" in html


def test_exports_parse() -> None:
    run = hostile_run()
    run.apply(Judged(reranker="rank1", doc_id="evil", passage_id="p", verdict=False, p_true=0.25, logprob_true=-2.0,
                     logprob_false=-0.9, reasoning="<b>bold</b>", tokens=3, end_reason="budget", forced=True,
                     truncated_passage=False))
    (line,) = run.trec_run(query_id="q1").splitlines()
    assert line.split() == ["q1", "Q0", "evil", "1", "0.25", "explainable-search-rank1"]
    (record,) = [json.loads(text) for text in run.jsonl().splitlines()]
    assert (record["query"], record["doc_id"], record["p_true"], record["forced"]) == ("q", "evil", 0.25, True)
    assert (record["reasoning"], record["score"], record["reranker"]) == ("<b>bold</b>", 0.25, "rank1")
    assert list(record)[:12] == ["query", "instruction", "reranker", "type", "rank", "doc_id", "passage_id",
                                 "first_stage_rank", "status", "score", "failure", *Rank1Reranker.row_fields[:1]]


def test_an_assessor_card_shows_the_grade_distribution_and_the_expected_grade() -> None:
    run = hostile_run("assessor")
    run.apply(Graded.measured((-2.3, -1.6, -0.5, -2.3), reranker="assessor", doc_id="evil", passage_id="p",
                              reasoning="fine", tokens=4, end_reason="grade", forced=False, truncated_passage=False))
    html = renderer_of(RERANKERS["assessor"]).cards(run, True)
    assert html.count("<i style=\"height:") == 4 and "grade 2" in html and "expected grade <b>1.70</b> / 3" in html
    assert "P(true)" not in html
    (row,) = run.rows()
    assert row["score"] == row["expected_grade"] == pytest.approx(1.70, abs=0.01) and row["grade"] == 2


@pytest.mark.parametrize("k", [-1, 0, 2.5, 1001])
def test_search_refuses_a_result_count_that_is_not_1_to_1000(client: Client, k: float) -> None:
    html = client.predict("moons", "bm25", k, "sample_corpus", api_name="/search")
    assert "k (results) must be a whole number from 1 to 1,000" in html and 'class="es-card"' not in html


@pytest.mark.parametrize(("candidates", "budget", "message"), [
    (2.5, 8, "Candidates must be a whole number from 1 to 50; got 2.5"),
    (0, 8, "Value 0 is less than minimum value 1"),  # Gradio's own check of the slider's range
    (3, -4, "Value -4 is less than minimum value 1"),
    (3, 10**9, "The reasoning budget must be a whole number from 1 to 10,000,000"),
    (3, 10**6, "budget (1,000,000 tokens) must be below the context of demo"),
])
def test_rerank_refuses_counts_and_budgets_it_cannot_run(client: Client, candidates: float, budget: int,
                                                          message: str) -> None:
    job = client.submit("moons", "", "bm25", candidates, budget, True, "sample_corpus", api_name="/rerank")
    try:
        job.result()
    except AppError as error:
        assert message in str(error)
        return
    summary, cards, rows = job.outputs()[-1]
    assert message in summary and not rows and not cards
    assert budget != 10**6 or "2,048 tokens, which also holds the prompt" in summary


def test_an_unknown_corpus_is_named_in_the_answer(client: Client) -> None:
    html = client.predict("moons", "bm25", 5, "nope", api_name="/search")
    assert "corpus &#x27;nope&#x27;: no such corpus; choose one of sample_corpus" in html


def live_run() -> PointwiseRun:
    """Three candidates: one judged, one thinking (12 tokens so far), one queued."""
    passages = [Passage(passage_id=doc, doc_id=doc, index=0, title=doc, text=f"Sea levels rise {doc}.")
                for doc in ("a", "b", "c")]
    candidates = ranking_from_scores("q", "bm25", [(passage, 1.0) for passage in passages]).candidates
    run = RERANKERS["rank1"].new_run("why do sea levels rise", candidates, settings=Settings().rerank)
    for doc in ("a", "b"):
        run.apply(Started(reranker="rank1", doc_id=doc, passage_id=doc, first_stage_rank=1))
        run.apply(Reasoning(reranker="rank1", doc_id=doc, text="The passage says", tokens=12))
    run.apply(Judged(reranker="rank1", doc_id="a", passage_id="a", verdict=True, p_true=0.75, logprob_true=-0.3,
                     logprob_false=-1.4, reasoning="The passage says", tokens=20, end_reason="verdict", forced=False,
                     truncated_passage=False))
    return run


def test_the_summary_counts_tokens_while_they_stream_with_progress_and_time_left() -> None:
    run = live_run()
    summary = run.summary()
    assert (summary.judged, summary.tokens, summary.pending_tokens) == (1, 32, 12)
    assert (summary.writing, summary.lengths) == ((12,), (20,))
    assert summary.tokens_per_s > 0  # text is arriving, so the rate is not zero
    assert summary.progress(budget=24) == pytest.approx((1 + 12 / 24) / 3)
    # At 8 tokens/s (4 for one unit): b ends at the mean of a's 20 and halfway from its 12 to the budget (19), c at
    # the mean of 20 and 12 (16).
    paced = dataclasses.replace(summary, recent_tokens_per_s=8.0, unit_tokens_per_s=4.0)
    assert paced.eta_s(budget=24) == pytest.approx((7 + 16) / 8)
    assert dataclasses.replace(summary, recent_tokens_per_s=0.0).eta_s(budget=24) is None  # no pace measured yet
    html = renderer_of(RERANKERS["rank1"]).summary(paced, 24)
    assert "<b>1/3</b> judged" in html and "tokens/s" in html and "about 3 s left" in html and "es-progress" in html


def test_each_card_says_its_state_and_after_stop_none_is_left_working() -> None:
    run = live_run()
    html = renderer_of(RERANKERS["rank1"]).cards(run, True)
    assert ">judged<" in html and ">thinking · 12 tokens<" in html and ">queued<" in html
    assert "<mark>Sea</mark> <mark>levels</mark> <mark>rise</mark>" in html  # the query's BM25 terms, marked
    run.stop()
    stopped = renderer_of(RERANKERS["rank1"]).cards(run, True)
    assert "thinking" not in stopped and "queued" not in stopped
    assert ">stopped · 12 tokens<" in stopped and ">stopped<" in stopped and stopped.count("The passage says") == 2
    assert "stopped" in renderer_of(RERANKERS["rank1"]).summary(run.summary(), 24)


@pytest.mark.parametrize(("end_reason", "label"), [("budget", "forced · budget reached"),
                                                   ("end_of_sequence", "forced")])
def test_a_forced_card_says_when_the_budget_ran_out(end_reason: str, label: str) -> None:
    run = live_run()
    run.apply(Judged(reranker="rank1", doc_id="b", passage_id="b", verdict=False, p_true=0.4, logprob_true=-1.0,
                     logprob_false=-0.6, reasoning="The passage says", tokens=24, end_reason=end_reason, forced=True,
                     truncated_passage=False))
    html = renderer_of(RERANKERS["rank1"]).cards(run, True)
    assert f">{label}<" in html
    assert ("used its whole budget (24 tokens)" in html) == (end_reason == "budget")


def test_rerank_with_reasonrank_streams_windows_and_gives_ranks_not_probabilities(client: Client) -> None:
    job = client.submit("which planets have no moons", "", "hybrid", 4, 8, True, "sample_corpus", "reasonrank",
                        api_name="/rerank")
    job.result()
    updates = job.outputs()
    final_summary, final_cards, final_rows = updates[-1]
    assert "<b>1/1</b> windows" in final_summary and "done" in final_summary
    assert "Window 1" in final_cards and "P(true)" not in final_cards
    assert len(final_rows) == 4 and all("p_true" not in row for row in final_rows)
    assert all(row["trajectory"][0] == row["first_stage_rank"] for row in final_rows)


def test_a_listwise_run_folds_windows_and_derives_scores_from_ranks() -> None:
    candidates = [Candidate(passage=Passage(passage_id=f"{doc}#0", doc_id=doc, index=0, title="",
                                            text="<img src=x onerror=alert(1)>"), stage="bm25",
                            provenance={"bm25": Hit(rank=rank, score=1.0)})
                  for rank, doc in enumerate("abcd", start=1)]
    board = ListwiseRun(reranker="reasonrank", query="q", instruction="", candidates=candidates, window_count=2)
    board.apply(WindowStarted(reranker="reasonrank", window=0, start=1, end=4, doc_ids=("b", "c", "d")))
    board.apply(WindowReasoning(reranker="reasonrank", window=0, text="<b>think</b>"))
    assert board.active() is board.windows[0] and board.summary().judged == 0
    assert [board.status(doc) for doc in "abcd"] == ["waiting", "reasoning", "reasoning", "reasoning"]
    board.apply(WindowRanked(reranker="reasonrank", window=0, status="repaired", doc_ids=("d", "b", "c"),
                             answer="[3] > [3]", missing=(1, 2), duplicates=(3,), reasoning="<b>think</b>", tokens=5))
    board.apply(WindowStarted(reranker="reasonrank", window=1, start=0, end=3, doc_ids=("a", "d", "b")))
    board.apply(WindowRanked(reranker="reasonrank", window=1, status="truncated", doc_ids=("a", "d", "b"), answer="",
                             tokens=7))
    board.apply(RankingDone(reranker="reasonrank", window=2, doc_ids=("a", "d", "b", "c")))
    assert board.order == ["a", "d", "b", "c"] and board.trajectory["d"] == [4, 2, 2]
    assert (board.summary().judged, board.summary().tokens, board.summary().finished) == (2, 12, True)
    assert [line.split()[2:5] for line in board.trec_run().splitlines()] == [
        ["a", "1", "4.0"], ["d", "2", "3.0"], ["b", "3", "2.0"], ["c", "4", "1.0"]]
    records = [json.loads(line) for line in board.jsonl().splitlines()]
    assert [record["type"] for record in records] == ["window", "window", *["document"] * 4]
    assert records[0]["missing"] == [1, 2] and records[0]["duplicates"] == [3] and records[1]["status"] == "truncated"
    html = renderer_of(RERANKERS["reasonrank"]).cards(board, True)
    assert "<img" not in html and "<b>think" not in html and "missing (appended) [1], [2]" in html


def test_compare_handlers_run_both_sides_refuse_bad_sides_and_a_model_that_does_not_fit(
        library: CorpusLibrary, status: ModelStatus) -> None:
    page = SearchPage(library, status, slots=asyncio.Semaphore(2))
    sides = ComparePage(page)
    key = page.default_key
    a = ("rank1", key, "", BUDGET, False)

    def compare(b: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        async def run() -> list[tuple[Any, ...]]:
            return [(unescape(update[0]), *update[1:]) async for update in sides.compare(
                "which planets have no moons", "hybrid", 3, True, "sample_corpus", *a, *b)]
        return asyncio.run(run())

    summary, cards, view = compare(("assessor", key, "only gas giants count", BUDGET, False))[-1]
    assert view.pair.finished and cards.count('class="es-rcard es-pair-card') == 3
    assert summary.count("3/3") == 2 and "A vs B</b>: Kendall" in summary and "nDCG@10 first stage" in summary
    assert view.pair.runs["B"].instruction == "only gas giants count" and not view.pair.shared
    files = {Path(name).name: Path(name).read_text() for name in page.export(view, "sample_corpus")}
    assert set(files) == {"rerank-A.trec", "rerank-B.trec", "compare.jsonl"}
    assert page.resort(view, False, BUDGET) == view.shown(reranked=False)[1]
    view.pair.stop()
    assert "stopped" not in view.shown(reranked=True)[0]  # a finished pair stays done

    _, _, same = compare(a)[-1]
    assert same.pair.shared and "A's work, reasoned once" in same.shown(reranked=True)[0]

    assert "Side B's reasoning budget must be a whole number" in compare(("rank1", key, "", 2.5, False))[-1][0]
    assert "Side B's instruction is 2,001 characters long" in compare(("rank1", key, "x" * 2_001, BUDGET, False))[-1][0]
    # The largest catalogue model fits no CPU machine, so visitors may not load it: refused by name before loading
    # (tests/test_model_access.py: the memory check of a model they may load).
    note = unescape(asyncio.run(sides.memory_note("rank1-32b")))
    assert "'rank1-32b' is not one of the models this page may load" in note
    refused = compare(("rank1", "rank1-32b", "", BUDGET, False))[-1][0]
    assert "Side B's model: 'rank1-32b' is not one of the models this page may load" in refused
    assert "rank1-32b · transformers" not in page.models


def test_examples_links_and_pair_cards_escape_what_they_show(library: CorpusLibrary, status: ModelStatus) -> None:
    page = ComparePage(SearchPage(library, status, slots=asyncio.Semaphore(1)))
    labels = [sample[0] for sample in page.example_samples("sample_corpus")["samples"]]
    assert "how to sleep better · with vs without its instruction" in labels
    assert "which migraine treatments do NOT involve medication · negation" in labels
    with_instruction = labels.index("how to sleep better · with vs without its instruction")
    shown = page.run_example(with_instruction, "sample_corpus", "rank1", page.page.default_key, BUDGET, False, 0, 0)
    assert shown[0] == "how to sleep better" and shown[2] is True and shown[-3:-1] == [0, 1]  # runs a comparison
    assert shown[6].startswith("Exclude passages") and shown[11] == ""  # A with the instruction, B without
    key = page.page.default_key
    link = page.link("q <b>", "sample_corpus", True, "rank1", key, "", BUDGET, False,
                     *("rank1", key, "i", BUDGET, False), *("assessor", key, "i", 8, True))
    assert link == ("?q=q+%3Cb%3E&corpus=sample_corpus&reranker=rank1&model=demo&instruction=i&budget=16"
                    "&evidence=false&compare=1&b_reranker=assessor&b_budget=8&b_evidence=true")

    evil = hostile_run()
    pair = Comparison(evil, hostile_run())
    html = render_pair_board(pair, reranked=True) + render_pair_summary(
        pair, budgets={"A": 8, "B": 8}, names={"A": "<i>a</i>", "B": "b"})
    assert "<script>" not in html and "<img" not in html and "<b>bold" not in html and "<i>a" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html


@pytest.mark.parametrize(("text", "name", "engine"), [
    ("demo · transformers", "demo", "transformers"),
    (" · openai", "", "openai"),  # an OpenAI-compatible server's own model
])
def test_a_model_key_round_trips_through_its_text(text: str, name: str, engine: str) -> None:
    key = ModelKey.parse(text)
    assert (key.name, key.engine) == (name, engine)
    assert str(key) == text and ModelKey.parse(str(key)) == key == ModelKey(name=name, engine=engine)


@pytest.mark.parametrize("text", ["demo", "", "demo · ", "demo·transformers"])
def test_a_text_that_is_not_a_model_key_is_refused_naming_it(text: str) -> None:
    with pytest.raises(ModelKeyError, match=re.escape(f"{text!r} is not a model key: expected 'name · engine'")):
        ModelKey.parse(text)
    with pytest.raises(ModelKeyError, match="engine must be a name"):
        ModelKey(name="demo", engine="")


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_renderer_leads_its_summary_line_with_what_it_is_given(family: str) -> None:
    """A comparison names each side through the renderer's parameter, not by editing the line's markup."""
    renderer = FAMILIES[family](next(cls for cls in RERANKERS.values() if cls.renderer == family))
    summary = live_run().summary()
    lead = '<span class="es-side">B</span>'
    plain, led = renderer.summary(summary, 24), renderer.summary(summary, 24, lead)
    assert lead not in plain and led.count(lead) == 1 and led.replace(lead, "", 1) == plain
    assert led.index(lead) < led.index("<b>")  # before the counts


def test_the_pair_summary_names_each_side_whatever_its_reranker_draws() -> None:
    pair = Comparison(hostile_run(), hostile_run("assessor"))
    html = render_pair_summary(pair, budgets={"A": 8, "B": 8}, names={"A": "rank1 · demo", "B": "assessor · demo"})
    for side, name in (("A", "rank1 · demo"), ("B", "assessor · demo")):
        assert f'<span class="es-side">{side}</span><span class="es-side-name" title="{name}">{name}</span>' in html


def test_a_run_whose_corpus_was_switched_as_it_ended_draws_no_cards_afterwards(library: CorpusLibrary) -> None:
    """Switching the corpus clears the results (``cleared``); the run's events ended just then: its end must not
    draw the old corpus's cards again."""
    page = SearchPage(library, ModelStatus(loaded=None, problem="none"), slots=asyncio.Semaphore(1))
    request = gr.Request(session_hash="visitor")
    run = live_run()
    switched = False

    async def events() -> AsyncIterator[Started]:
        nonlocal switched
        yield Started(reranker="rank1", doc_id="c", passage_id="c", first_stage_rank=3)
        page.cleared(request)  # the reader picks another corpus as the last event is folded
        switched = True

    async def drawn() -> list[bool]:
        return [shown async for shown in page.stream(run, events, run.apply, lambda: switched, request)]

    shown = asyncio.run(drawn())
    assert shown and not any(shown)  # cards drawn before the switch (at least at the start), none after it
    assert len(page.live) == 0
