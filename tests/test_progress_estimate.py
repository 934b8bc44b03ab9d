"""The summary line's time left and "done": an estimate from what was measured (never a "≤" bound that is then
exceeded, "estimating…" until there is data), and done only once everything the run started has ended, evidence
included. Runs are folded on a scripted clock with a scripted pace; the real transformers engine (demo model)
streams a run with evidence on. And the app warms its engine at start, in the background, so that the first
visitor's first query does not pay for the engine's first request."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import httpx
import pytest
from scripted import ScriptedEngine, candidate, rank1_judge
from servers import free_port

import search.rerank.base
from search.corpus import Passage
from search.engines import close_engines
from search.engines.base import EngineError, GenerationChunk, GenerationRequest
from search.engines.hf_engine import TransformersEngine
from search.pipeline import WARM_UP, LoadedModel, build_reranker, open_model, warm_up
from search.rerank.base import Run
from search.rerank.events import (
    Event,
    Evidence,
    EvidenceCost,
    Faithfulness,
    Judged,
    RankingDone,
    Reasoning,
    Started,
    WindowRanked,
    WindowReasoning,
    WindowStarted,
)
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import window_spans
from search.rerank.registry import RERANKERS
from search.retrieval.ranking import Candidate, ranking_from_scores
from search.settings import REPO_ROOT, SAMPLE_CORPUS, RerankSettings, Settings
from ui.renderers import renderer_for

BUDGET = 128
COLD_S = 8.0
"""The slow first seconds: no token at all (a cold engine, prompts being read)."""
STEP_S = 0.25
"""The scripted engine writes one token per writing unit per step once warm (4 tokens/s each); half that in the
two seconds after its first token."""
LENGTHS = {"a": 44, "b": 24, "c": 90, "d": 30, "e": 52, "f": 36}
"""How many tokens each document's reasoning runs to."""
TAIL_S = 8
"""Beside half the time actually left, how far off the estimate may be: the last unit, once it has written more
than any other, could end at any point up to its budget."""


class Clock:
    """The runs' clock in these tests: it moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(search.rerank.base, "monotonic", clock)
    return clock


def candidates(doc_ids: list[str]) -> tuple[Candidate, ...]:
    passages = [Passage(passage_id=doc, doc_id=doc, index=0, title=doc, text=f"Sea levels rise {doc}.")
                for doc in doc_ids]
    return ranking_from_scores("q", "bm25", [(passage, 1.0) for passage in passages]).candidates


def judged(doc: str, tokens: int) -> Judged:
    return Judged(reranker="rank1", doc_id=doc, passage_id=doc, verdict=True, p_true=0.75, logprob_true=-0.3,
                  logprob_false=-1.4, reasoning="x " * tokens, tokens=tokens, end_reason="verdict", forced=False,
                  truncated_passage=False)


def evidence(doc: str) -> Evidence:
    return Evidence(reranker="rank1", doc_id=doc, passage=f"{doc} Sea levels rise {doc}.", method="ablation",
                    score=0.75, sentences=(), quotes=(), cost=EvidenceCost(requests=2, prefill_tokens=40,
                                                                          cached_tokens=0, seconds=1.0),
                    faithfulness=Faithfulness(top_removed=0.5, random_removed=0.7, sentences_removed=1,
                                              supported=True))


def time_left(html: str) -> int | None:
    """The seconds of time left a summary line shows (as an estimate or as a bound), or None."""
    match = re.search(r"(?:about|≤) (?:(\d+) min )?(\d+) s left", html)
    return None if match is None else int(match.group(1) or 0) * 60 + int(match.group(2))


@dataclass(frozen=True, kw_only=True, slots=True)
class Shown:
    at_s: float
    """Seconds since the run started."""
    html: str
    judged: int
    left_s: float | None
    """The time left estimated then (``Summary.eta_s``), None while estimating."""


def scripted_pace(clock: Clock, run: Run, together: int) -> tuple[list[Shown], float]:
    """Fold a rank1 run whose engine writes nothing for ``COLD_S``, then one token per step for each of at most
    ``together`` documents at once (the rest wait their turn), half as fast in its first two seconds; render the
    summary line after every step (as the page does: ``Run.shown_summary``). Returns what was shown and when the run
    ended (seconds since its start)."""
    start = clock.now
    written = dict.fromkeys(LENGTHS, 0)
    shown = []
    for doc in LENGTHS:
        run.apply(Started(reranker="rank1", doc_id=doc, passage_id=doc, first_stage_rank=1))
    clock.now += COLD_S
    step = 0
    while not run.summary().finished:
        step += 1
        clock.now += STEP_S
        if clock.now - start - COLD_S > 2 or step % 2 == 0:
            for doc in [doc for doc, length in LENGTHS.items() if written[doc] < length][:together]:
                written[doc] += 1
                run.apply(Reasoning(reranker="rank1", doc_id=doc, text="x ", tokens=1))
                if written[doc] == LENGTHS[doc]:
                    run.apply(judged(doc, LENGTHS[doc]))
        summary = run.shown_summary(BUDGET)
        shown.append(Shown(at_s=clock.now - start, html=renderer_for(run).summary(summary, BUDGET),
                           judged=summary.judged, left_s=None if summary.finished else summary.eta_s(BUDGET)))
    return shown, clock.now - start


@pytest.mark.parametrize("together", [6, 2], ids=["all-at-once", "two-at-a-time"])
def test_time_left_is_an_estimate_from_the_measured_pace_and_says_estimating_until_there_is_data(
        clock: Clock, together: int) -> None:
    run = RERANKERS["rank1"].new_run("why do sea levels rise", candidates(list(LENGTHS)), settings=RerankSettings())
    assert "estimating" in renderer_for(run).summary(run.summary(), BUDGET)  # before any token
    shown, ended = scripted_pace(clock, run, together)
    assert all("≤" not in item.html for item in shown)  # no bound is claimed
    before = [item for item in shown if item.judged == 0]
    assert before and all("estimating" in item.html and "about" not in item.html for item in before)
    checked = []
    for item in shown[len(before):-1]:
        figure, actual = time_left(item.html), ended - item.at_s
        assert figure is not None and "about" in item.html, item.html
        checked.append(item)
        assert abs(figure - actual) <= 0.5 * actual + TAIL_S, (item.at_s, item.html, actual)
    assert checked and "done" in shown[-1].html and time_left(shown[-1].html) is None


def accuracy(html: str) -> tuple[int, int] | None:
    """(at most, median) seconds off that a done summary line says its time-left estimates were, or None."""
    match = re.search(r"time-left estimates were off by at most (\d+) s \(median (\d+) s\)", html)
    return None if match is None else (int(match.group(1)), int(match.group(2)))


@pytest.mark.parametrize("together", [6, 2], ids=["all-at-once", "two-at-a-time"])
def test_once_done_the_summary_says_how_far_off_the_time_left_estimates_it_showed_were(
        clock: Clock, together: int) -> None:
    """Each estimate shown (once "estimating…" has ended; at most one a second, however often the line is drawn)
    against the time the run actually ended."""
    run = RERANKERS["rank1"].new_run("why do sea levels rise", candidates(list(LENGTHS)), settings=RerankSettings())
    shown, ended = scripted_pace(clock, run, together)
    assert all(accuracy(item.html) is None for item in shown[:-1])  # only once done
    noted: list[Shown] = []
    for item in shown:
        if item.left_s is not None and (not noted or item.at_s - noted[-1].at_s >= 1.0):
            noted.append(item)
    errors = sorted(abs(item.at_s + item.left_s - ended) for item in noted if item.left_s is not None)
    assert len(errors) >= 10 and errors[-1] > 0
    median = (errors[(len(errors) - 1) // 2] + errors[len(errors) // 2]) / 2
    assert accuracy(shown[-1].html) == (round(errors[-1]), round(median)), shown[-1].html
    assert "done" in shown[-1].html
    error = run.shown_summary(BUDGET).estimate_error()
    assert error is not None and error.count == len(errors)


def test_a_run_that_showed_no_estimate_says_nothing_of_their_accuracy(clock: Clock) -> None:
    """Judged before there was anything to estimate from ("estimating…" throughout), and a run drawn only once done
    (its judgments replayed): no estimate was shown, so no accuracy is claimed."""
    run = RERANKERS["rank1"].new_run("q", candidates(["a", "b"]), settings=RerankSettings())
    for doc in "ab":
        run.apply(Started(reranker="rank1", doc_id=doc, passage_id=doc, first_stage_rank=1))
    assert "estimating" in renderer_for(run).summary(run.shown_summary(BUDGET), BUDGET)
    for doc in "ab":
        clock.now += 1
        run.apply(judged(doc, 10))
    html = renderer_for(run).summary(run.shown_summary(BUDGET), BUDGET)
    assert "done" in html and "estimates" not in html and run.shown_summary(BUDGET).estimate_error() is None


def test_a_stopped_run_claims_no_accuracy_for_its_estimates(clock: Clock) -> None:
    """Stopped, it never ended on its own: there is no end to measure the estimates against."""
    run = RERANKERS["rank1"].new_run("why do sea levels rise", candidates(list(LENGTHS)), settings=RerankSettings())
    for doc in LENGTHS:
        run.apply(Started(reranker="rank1", doc_id=doc, passage_id=doc, first_stage_rank=1))
    run.apply(judged("a", 10))
    for _ in range(20):
        clock.now += STEP_S
        run.apply(Reasoning(reranker="rank1", doc_id="b", text="x ", tokens=1))
    assert time_left(renderer_for(run).summary(run.shown_summary(BUDGET), BUDGET)) is not None
    run.stop()
    html = renderer_for(run).summary(run.shown_summary(BUDGET), BUDGET)
    assert "stopped" in html and "estimates" not in html


def test_the_first_seconds_do_not_make_the_estimate_huge(clock: Clock) -> None:
    """The "≤ 60–118 min" of a 56 s run: a rate measured over the cold start made the early figure huge."""
    run = RERANKERS["rank1"].new_run("why do sea levels rise", candidates(list(LENGTHS)), settings=RerankSettings())
    shown, ended = scripted_pace(clock, run, together=6)
    figures = [figure for item in shown if (figure := time_left(item.html)) is not None]
    assert figures and max(figures) <= ended


def test_a_listwise_run_estimates_its_windows_one_after_another(clock: Clock) -> None:
    settings = RerankSettings(window=4, step=2)
    run = RERANKERS["reasonrank"].new_run("q", candidates(list("abcdefgh")), settings=settings)
    spans = window_spans(8, settings.window, settings.step)
    assert run.summary().total == len(spans) >= 3
    start = clock.now
    seen = []
    for window, (first, end) in enumerate(spans):
        ids = tuple("abcdefgh"[first:end])
        run.apply(WindowStarted(reranker="reasonrank", window=window, start=first, end=end, doc_ids=ids))
        clock.now += 3.0  # the window's prompt is read
        for _ in range(40):
            clock.now += STEP_S
            run.apply(WindowReasoning(reranker="reasonrank", window=window, text="x ", tokens=1))
            seen.append((clock.now - start, renderer_for(run).summary(run.summary(), BUDGET), window))
        run.apply(WindowRanked(reranker="reasonrank", window=window, status="ok", doc_ids=ids, answer="",
                               reasoning="x " * 40, tokens=40))
    run.apply(RankingDone(reranker="reasonrank", window=len(spans), doc_ids=tuple("abcdefgh")))
    ended = clock.now - start
    assert all("≤" not in html for _, html, _ in seen)
    assert all("estimating" in html for _, html, window in seen if window == 0)
    for at, html, window in seen:
        if window:
            figure = time_left(html)
            assert figure is not None and abs(figure - (ended - at)) <= 0.5 * (ended - at) + TAIL_S, (at, html)
    assert "done" in renderer_for(run).summary(run.summary(), BUDGET)


def test_with_evidence_on_the_run_is_done_and_its_clock_stops_only_once_the_evidence_has_come(clock: Clock) -> None:
    run = RERANKERS["rank1"].new_run("q", candidates(["a", "b", "c"]), settings=RerankSettings(evidence=True))
    for doc in "abc":
        run.apply(Started(reranker="rank1", doc_id=doc, passage_id=doc, first_stage_rank=1))
        clock.now += 1
        run.apply(judged(doc, 10))
    run.apply(evidence("a"))
    run.apply(evidence("b"))
    html = renderer_for(run).summary(run.summary(), BUDGET)
    assert "3/3</b> judged" in html and "evidence 2/3" in html and "explaining" in html and "done" not in html
    assert not run.summary().done and run.finished  # judging is over; the run is not
    before = run.elapsed_s()
    clock.now += 5
    assert run.elapsed_s() == before + 5  # the clock runs while evidence goes on
    run.apply(evidence("c"))
    html = renderer_for(run).summary(run.summary(), BUDGET)
    assert run.summary().done and "evidence 3/3" in html and "done" in html
    ended = run.elapsed_s()
    clock.now += 5
    assert run.elapsed_s() == ended


def test_stop_while_evidence_is_pending_says_stopped(clock: Clock) -> None:
    run = RERANKERS["rank1"].new_run("q", candidates(["a"]), settings=RerankSettings(evidence=True))
    run.apply(Started(reranker="rank1", doc_id="a", passage_id="a", first_stage_rank=1))
    run.apply(judged("a", 10))
    run.stop()
    assert "stopped" in renderer_for(run).summary(run.summary(), BUDGET)


def test_evidence_the_engine_failed_is_awaited_only_until_the_stream_ends(tokenizer: object) -> None:
    """The run cannot tell a failed evidence from a late one; the end of its stream (``Run.end``, which the page
    calls) can."""
    judge = rank1_judge(tokenizer)
    engine = ScriptedEngine(tokenizer, lambda request: EngineError("server answered 500") if request.allowed_token_ids
                            else judge(request))  # the judgments stop on their own; every re-score fails
    reranker = Rank1Reranker(engine, model_key="scripted", budget=32, settings=RerankSettings(evidence=True))
    found = (candidate("d1", "Mars has two moons."), candidate("d2", "Venus has none.", 2))
    run = reranker.start_run("which planets have moons", found)

    async def fold() -> None:
        async for event in reranker.stream("which planets have moons", found):
            run.apply(event)

    asyncio.run(fold())
    assert run.finished and not run.summary().done and run.summary().explained == 0
    assert "explaining" in renderer_for(run).summary(run.summary(), 32)
    run.end()
    assert run.summary().done and "· done" in renderer_for(run).summary(run.summary(), 32)
    ended = run.elapsed_s()
    assert run.elapsed_s() == ended


# The real transformers engine, the demo model ---------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(demo_model: object) -> Iterator[LoadedModel]:
    settings = Settings().replace(model="demo", engine="transformers", budget=8, judgment_cache=False)
    yield open_model(settings.serving)
    close_engines()


def test_a_real_run_with_evidence_says_done_only_once_every_evidence_has_come(loaded: LoadedModel) -> None:
    reranker = build_reranker(RerankSettings(budget=8, evidence=True, judgment_cache=False), loaded)
    found = candidates(["a", "b"])
    run = reranker.start_run("why do sea levels rise", found)

    async def fold() -> list[tuple[Event, str]]:
        shown = []
        async for event in reranker.stream("why do sea levels rise", found):
            run.apply(event)
            shown.append((event, renderer_for(run).summary(run.summary(), reranker.budget)))
        return shown

    shown = asyncio.run(fold())
    evidence_seen: set[str] = set()
    for event, html in shown:
        if isinstance(event, Evidence):
            evidence_seen.add(event.doc_id)
        assert ("· done" in html) == (evidence_seen == {"a", "b"}), (event, html)
        assert "≤" not in html
    assert run.summary().done and run.summary().explained == 2


# Warm-up at start ------------------------------------------------------------------------------------------------

def test_the_app_warms_its_engine_in_the_background_and_serves_the_page_meanwhile(
        demo_model: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``app.py`` on the real transformers engine: its warm-up request reaches the engine, held there (the engine
    reads it only once told), while the page is served; let go, it writes its tokens."""
    spec = importlib.util.spec_from_file_location("app_entry", REPO_ROOT / "app.py")
    assert spec is not None and spec.loader is not None
    entry = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(entry)
    reached, release, ended = threading.Event(), threading.Event(), threading.Event()
    tokens: list[int] = []
    generate = TransformersEngine._generate

    async def held(self: TransformersEngine, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        warming = request == WARM_UP
        if warming:
            reached.set()
            await asyncio.to_thread(release.wait)
        async for chunk in generate(self, request):
            tokens.extend(chunk.token_ids if warming else ())
            yield chunk
        if warming:
            ended.set()

    launch = gr.Blocks.launch
    page: dict[str, object] = {}

    def serve_a_visitor(self: gr.Blocks, **options: object) -> None:
        """Gradio's launch, then one visitor's page while the warm-up is held, then the server closed."""
        assert reached.wait(timeout=120), "no warm-up request reached the engine"
        _, url, _ = launch(self, **{**options, "prevent_thread_lock": True, "quiet": True})
        try:
            page["status"] = httpx.get(url, timeout=120).status_code
            page["warm-up ended"] = ended.is_set()
        finally:
            release.set()
            self.close()

    monkeypatch.setattr(TransformersEngine, "_generate", held)
    monkeypatch.setattr(gr.Blocks, "launch", serve_a_visitor)
    try:
        assert entry.serve(["--corpus", str(SAMPLE_CORPUS), "--index-dir", str(tmp_path / "indexes"),
                            "--annotations", str(tmp_path / "annotations.sqlite3"), "--uploads",
                            str(tmp_path / "uploads"), "--model", "demo", "--engine", "transformers", "--budget", "12",
                            "--no-judgment-cache", "--top-k", "4", "--port", str(free_port())]) == 0
        assert ended.wait(timeout=120), "the warm-up did not end once let go"
    finally:
        release.set()
        close_engines()
    assert page == {"status": 200, "warm-up ended": False}  # served while the warm-up was still at the engine
    assert 0 < len(tokens) <= WARM_UP.max_tokens


def test_a_failed_warm_up_is_logged_and_raises_nothing(tokenizer: object, caplog: pytest.LogCaptureFixture) -> None:
    engine = ScriptedEngine(tokenizer, lambda request: EngineError("server answered 500"))
    with caplog.at_level(logging.WARNING, logger="search.pipeline"):
        warm_up(engine).join()
    assert engine.requests == [WARM_UP]
    assert "the engine's warm-up failed: server answered 500" in caplog.text
