"""Belief probes and early verdicts over a scripted engine: when probes are taken, what they read, that they never
change the reasoning, that the last one at a budget-ended reasoning is the forced verdict itself, the early rule,
the cache and the rows. The real engines run the same code in test_engines.py."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from scripted import ScriptedEngine, candidate

from search.engines.base import GenerationChunk, GenerationRequest
from search.rerank.assessor import AssessorReranker, GradeTokens
from search.rerank.belief import BeliefPath, cleaned_end
from search.rerank.cache import JudgmentCache
from search.rerank.events import (
    Belief,
    BeliefPoint,
    Event,
    Graded,
    Judged,
    Reasoning,
    event_from_json,
    event_to_json,
)
from search.rerank.pointwise import PointwiseReranker
from search.rerank.probe import EarlyRule
from search.rerank.rank1 import STOP_TRUE, Rank1Reranker, VerdictTokens, forced_prompt, p_true
from search.rerank.reasonrank import ReasonRankReranker
from search.settings import RerankSettings
from ui.renderers import renderer_of

STEP = "Yes. "
"""One scripted reasoning token: each one the forced step reads raises P(true) by 0.08 from 0.1."""


def belief_after(steps: int) -> float:
    return min(0.1 + 0.08 * steps, 0.98)


def growing(tokenizer: object, *, steps: int, finish: str = "stop") -> tuple[ScriptedEngine, VerdictTokens]:
    """A scripted rank1 that reasons ``steps`` tokens of ``STEP`` and then answers true (or runs out of budget with
    ``finish="length"``); its forced step's P(true) grows with the steps it reads."""
    verdict = VerdictTokens.of(tokenizer)

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            read = request.prompt.split("<think>")[-1].count(STEP.strip())
            p = belief_after(read)
            logprobs = {verdict.true_id: math.log(p), verdict.false_id: math.log(1 - p)}
            chosen = verdict.true_id if p >= 0.5 else verdict.false_id
            return [GenerationChunk(text="", token_ids=(chosen,), logprobs=(logprobs,), finish_reason="length")]
        chunks = [GenerationChunk(text=STEP, token_ids=(11,), logprobs=({},)) for _ in range(steps)]
        if finish == "length":
            return [*chunks[:-1], dataclasses.replace(chunks[-1], finish_reason="length")]
        logprobs = {verdict.true_id: math.log(0.9), verdict.false_id: math.log(0.1)}
        return [*chunks, GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs,),
                                         finish_reason="stop", stop_reason=STOP_TRUE)]

    return ScriptedEngine(tokenizer, script, pause_s=0.002), verdict


def rerank(reranker: PointwiseReranker, doc_ids: Sequence[str] = ("mars",)) -> list[Event]:
    async def events() -> list[Event]:
        candidates = [candidate(doc_id, f"Phobos orbits {doc_id}.", rank) for rank, doc_id in
                      enumerate(doc_ids, start=1)]
        return [event async for event in reranker.stream("moons of mars", candidates)]

    return asyncio.run(events())


def rank1(engine: ScriptedEngine, *, budget: int = 64, cache: JudgmentCache | None = None, **settings: object
          ) -> Rank1Reranker:
    return Rank1Reranker(engine, model_key="scripted", budget=budget, settings=RerankSettings(**settings),
                         cache=cache)


def test_probes_come_before_reasoning_and_every_n_tokens_and_the_judgment_carries_them(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=10)
    events = rerank(rank1(engine, belief=True, belief_every=4))
    beliefs = [event.point for event in events if isinstance(event, Belief)]
    judged = events[-1]
    assert isinstance(judged, Judged) and judged.end_reason == "verdict" and judged.belief == tuple(beliefs)
    assert [point.tokens for point in beliefs] == [0, 4, 8]
    assert [point.score for point in beliefs] == [pytest.approx(belief_after(steps)) for steps in (0, 4, 8)]
    assert all(point.distribution == pytest.approx((1 - point.score, point.score)) for point in beliefs)
    # Each probe reads the reasoning so far, cleaned as a forced verdict is: the offset is where that text ends.
    assert [point.offset for point in beliefs] == [0, cleaned_end(STEP * 4), cleaned_end(STEP * 8)]
    prompt = engine.requests[0].prompt
    probes = [request.prompt for request in engine.requests if request.allowed_token_ids]
    assert probes == [forced_prompt(prompt, STEP * steps) for steps in (0, 4, 8)]
    assert probes[0] == f"{prompt}\n\n</think>"  # the no-thinking verdict
    # Every belief follows the reasoning it read.
    order = [(type(event).__name__, event.point.tokens if isinstance(event, Belief) else None) for event in events]
    assert order.index(("Belief", 8)) > [index for index, (kind, _) in enumerate(order) if kind == "Reasoning"][7]


def test_probes_never_change_the_reasoning_and_off_sends_none(tokenizer: object) -> None:
    on, _ = growing(tokenizer, steps=10)
    off, _ = growing(tokenizer, steps=10)
    with_probes, without = rerank(rank1(on, belief=True, belief_every=3)), rerank(rank1(off))
    assert [event for event in with_probes if isinstance(event, Reasoning)] == \
        [event for event in without if isinstance(event, Reasoning)]
    assert with_probes[0].doc_id == without[0].doc_id and not any(isinstance(event, Belief) for event in without)
    assert dataclasses.replace(with_probes[-1], belief=()) == without[-1]
    assert [request.prompt for request in off.requests] == [on.requests[0].prompt]  # off: zero probe requests
    assert on.requests[0] == off.requests[0]


def test_the_last_probe_at_a_budget_ended_reasoning_is_the_forced_verdict(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=8, finish="length")
    events = rerank(rank1(engine, budget=8, belief=True, belief_every=4))
    judged = events[-1]
    assert isinstance(judged, Judged) and judged.forced and judged.end_reason == "budget"
    assert [point.tokens for point in judged.belief] == [0, 4, 8]
    assert judged.belief[-1].score == judged.p_true
    assert judged.belief[-1].distribution == (1 - judged.p_true, judged.p_true)


def test_an_early_verdict_stops_the_reasoning_at_the_settled_probe_and_says_so(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=60)
    rule = Rank1Reranker.early_rule
    events = rerank(rank1(engine, belief_every=1, early_verdict=True))
    judged = events[-1]
    # P(true) reaches 0.5 + margin after 8 tokens (0.74 after 8, 0.82 after 9): settled at the third such probe.
    first = next(steps for steps in range(60) if belief_after(steps) >= rule.threshold + rule.margin)
    settled = first + rule.streak - 1
    assert isinstance(judged, Judged) and judged.end_reason == "early" and judged.forced
    assert judged.tokens == settled and judged.reasoning == STEP * settled
    assert judged.p_true == pytest.approx(belief_after(settled)) and judged.verdict
    assert [point.tokens for point in judged.belief] == list(range(settled + 1))
    assert engine.aborted == [engine.requests[0]]  # the reasoning request itself was stopped
    reasoned = sum(event.tokens for event in events if isinstance(event, Reasoning))
    assert settled <= reasoned < 60


def test_the_rule_wants_a_streak_on_one_side_by_the_margin() -> None:
    rule = EarlyRule(threshold=0.5, margin=0.3, streak=3)
    assert rule.settled([0.5, 0.85, 0.9, 0.81]) and rule.settled([0.1, 0.2, 0.05])
    assert not rule.settled([0.9, 0.9]) and not rule.settled([0.9, 0.1, 0.9, 0.9])
    assert not rule.settled([0.85, 0.79, 0.9]) and not rule.settled([0.9, 0.1, 0.9])


def test_the_assessor_probes_its_grade_distribution(tokenizer: object) -> None:
    grades = GradeTokens.of(tokenizer)
    suffix, grade_ids = grades.forced

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            read = request.prompt.count(STEP.strip())
            shares = (0.7, 0.1, 0.1, 0.1) if read < 3 else (0.1, 0.1, 0.2, 0.6)
            logprobs = {token: math.log(share) for token, share in zip(grade_ids, shares, strict=True)}
            return [GenerationChunk(text="", token_ids=(grade_ids[0],), logprobs=(logprobs,), finish_reason="length")]
        return [GenerationChunk(text=STEP, token_ids=(11,), logprobs=({},)) for _ in range(5)] + [
            GenerationChunk(text="", token_ids=(12,), logprobs=({},), finish_reason="length")]

    engine = ScriptedEngine(tokenizer, script, pause_s=0.002)
    assessor = AssessorReranker(engine, model_key="scripted", budget=6,
                                settings=RerankSettings(belief=True, belief_every=3))
    graded = rerank(assessor)[-1]
    assert isinstance(graded, Graded) and [point.tokens for point in graded.belief] == [0, 3]
    assert graded.belief[0].distribution == pytest.approx((0.7, 0.1, 0.1, 0.1))
    assert graded.belief[1].score == pytest.approx(0.1 + 0.4 + 1.8) and graded.belief[1].distribution[3] == \
        pytest.approx(0.6)
    probes = [request.prompt for request in engine.requests if request.allowed_token_ids]
    assert probes[0] == f"{engine.requests[0].prompt}\n##final score:{suffix}"  # the no-thinking grade
    assert probes[1] == f"{engine.requests[0].prompt}{STEP * 3}".rstrip() + f"\n##final score:{suffix}"


def test_a_judgment_with_probes_is_cached_apart_and_replays_them(tokenizer: object, tmp_path: Path) -> None:
    cache = JudgmentCache(tmp_path / "judgments.sqlite3")
    plain_engine, _ = growing(tokenizer, steps=6)
    plain = rerank(rank1(plain_engine, cache=cache))[-1]
    probed_engine, _ = growing(tokenizer, steps=6)
    probed = rerank(rank1(probed_engine, cache=cache, belief=True, belief_every=2))[-1]
    assert probed_engine.requests and probed.belief and not plain.belief  # not replayed from the plain one
    replay_engine, _ = growing(tokenizer, steps=6)
    again = rerank(rank1(replay_engine, cache=cache, belief=True, belief_every=2))[-1]
    assert not replay_engine.requests and again == dataclasses.replace(probed, from_cache=True)


def test_rows_and_json_carry_the_probes_only_when_asked(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=4)
    reranker = rank1(engine, belief=True, belief_every=2)
    events = rerank(reranker)
    run = reranker.start_run("moons of mars", [candidate("mars", "Phobos orbits mars.", 1)])
    for event in events:
        run.apply(event)
        assert event_from_json(event_to_json(event)) == event
    [row] = run.rows()
    assert row["belief"] == [dataclasses.asdict(point) for point in events[-1].belief]
    assert isinstance(BeliefPoint.from_fields(row["belief"][0]), BeliefPoint)
    plain = rank1(growing(tokenizer, steps=4)[0])
    plain_run = plain.start_run("moons of mars", [candidate("mars", "Phobos orbits mars.", 1)])
    for event in rerank(plain):
        plain_run.apply(event)
    assert "belief" not in plain_run.rows()[0]


def test_only_rerankers_with_a_verdict_per_document_probe_belief() -> None:
    assert Rank1Reranker.probes_belief and AssessorReranker.probes_belief and not ReasonRankReranker.probes_belief


def test_p_true_of_a_probe_is_the_reference_formula(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=2)
    judged = rerank(rank1(engine, belief=True, belief_every=1))[-1]
    first = judged.belief[0]
    assert first.score == p_true(math.log(belief_after(0)), math.log(1 - belief_after(0)))


def path_of(*scores: float, final: float, tokens: int = 192) -> BeliefPath:
    probes = [BeliefPoint(tokens=64 * index, offset=40 * index, score=score, distribution=(1 - score, score))
              for index, score in enumerate(scores)]
    judged = Judged(reranker="rank1", doc_id="d", passage_id="d", reasoning="x" * 200, tokens=tokens,
                    end_reason="verdict", forced=False, truncated_passage=False, verdict=final >= 0.5, p_true=final,
                    logprob_true=math.log(final), logprob_false=math.log(1 - final))
    return BeliefPath.of(probes, judged)


def test_the_path_says_whether_reasoning_changed_the_verdict_and_when_it_settled() -> None:
    changed = path_of(0.3, 0.45, 0.7, final=0.9)
    assert changed.changed and changed.settled_at == 128 and changed.steepest()[0].tokens == 64
    held = path_of(0.8, 0.4, 0.9, final=0.95)
    assert not held.changed and held.settled_at == 128
    known = path_of(0.9, 0.9, final=0.95)
    assert not known.changed and known.settled_at == 0
    assert BeliefPath.of([], None) is None and not path_of(0.2, final=0.1).changed


def test_a_card_draws_the_belief_its_badge_and_the_stretch_that_moved_it_all_escaped(tokenizer: object) -> None:
    engine, _ = growing(tokenizer, steps=10)
    reranker = rank1(engine, belief=True, belief_every=4)
    run = reranker.start_run("moons", [candidate("<b>x</b>", "Phobos.", 1)])
    events = rerank(reranker, ("<b>x</b>",))
    for event in events:
        run.apply(event)
    board = renderer_of(Rank1Reranker).cards(run, True)
    assert board.count('<svg class="es-belief"') == 1 and "<b>x</b>" not in board
    # The scripted verdict (0.9) is the no-thinking one's opposite (0.1): reasoning changed it.
    assert "reasoning changed the verdict" in board and "P(true) before reasoning 0.10" in board
    assert 'data-note="P(true) 0.10 → 0.42 here"' in board  # the steepest stretch: 0 to 4 tokens
    midway = reranker.start_run("moons", [candidate("<b>x</b>", "Phobos.", 1)])
    for event in events[:next(index for index, event in enumerate(events) if isinstance(event, Belief)) + 1]:
        midway.apply(event)
    assert "P(true) 0.10</span>" in renderer_of(Rank1Reranker).cards(midway, True)
