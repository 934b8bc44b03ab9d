"""rank1's logic over a scripted engine: prompt, scores, forced verdicts, failures and truncation. What every
reranker must do (event order, cancellation, cache replay, exports) is checked in test_rerankers.py; the real
engines run the same code in test_engines.py."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from scripted import ScriptedEngine, candidate

from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.pipeline import collect
from search.rerank.base import query_text
from search.rerank.cache import JudgmentCache
from search.rerank.events import Event, Failed, Judged
from search.rerank.pointwise import PreparedPrompt
from search.rerank.rank1 import (
    STOP_FALSE,
    STOP_TRUE,
    Rank1Reranker,
    VerdictTokens,
    forced_prompt,
    p_true,
    render_prompt,
)
from search.retrieval.ranking import Candidate
from search.settings import RerankSettings


@pytest.fixture(scope="module")
def verdict(tokenizer: object) -> VerdictTokens:
    return VerdictTokens.of(tokenizer)


def reasoning(text: str) -> GenerationChunk:
    return GenerationChunk(text=text, token_ids=(11,), logprobs=({},))


def ending(token: int, logprobs: dict[int, float], *, finish: str = "stop", stop: str | None = None
           ) -> GenerationChunk:
    return GenerationChunk(text="", token_ids=(token,), logprobs=(logprobs,), finish_reason=finish, stop_reason=stop)


def rank1(engine: Engine, *, budget: int = 64, cache: JudgmentCache | None = None) -> Rank1Reranker:
    return Rank1Reranker(engine, model_key="scripted", budget=budget, settings=RerankSettings(), cache=cache)


def run(engine: Engine, candidates: Sequence[Candidate], *, cache: JudgmentCache | None = None,
        instruction: str = "", budget: int = 64) -> list[Event]:
    reranker = rank1(engine, budget=budget, cache=cache)

    async def events() -> list[Event]:
        return [event async for event in reranker.stream("moons of mars", candidates, instruction=instruction)]

    return asyncio.run(events())


def test_prompt_matches_the_reference_byte_for_byte() -> None:
    assert render_prompt("what is BM25", "Okapi BM25 A ranking function.") == (
        "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
        "Query: what is BM25\nPassage: Okapi BM25 A ranking function.\n<think>"
    )


def test_query_takes_the_instruction_and_the_template() -> None:
    assert query_text("moons of mars", "Only count natural moons.") == "moons of mars Only count natural moons."
    assert query_text("  moons ", "") == "moons"
    template = "Can you find background information about the concepts used to answer the question: FILL_QUERY_HERE"
    assert query_text("why is the sky blue", "", template).endswith("the question: why is the sky blue")


def test_verdict_tokens_are_the_first_token_of_the_words_with_a_leading_space(tokenizer: object) -> None:
    tokens = VerdictTokens.of(tokenizer)
    assert tokenizer.decode([tokens.true_id]) == " true" and tokenizer.decode([tokens.false_id]) == " false"


def test_probability_is_the_normalised_verdict_likelihood() -> None:
    assert p_true(-0.1, -2.5) == pytest.approx(math.exp(-0.1) / (math.exp(-0.1) + math.exp(-2.5)), abs=1e-15)
    assert p_true(-3000.0, -1.0) == pytest.approx(0.0) and p_true(-1.0, -3000.0) == pytest.approx(1.0)


@pytest.mark.parametrize(("reasoning", "forced"), [
    # rank1's reasoning starts with a newline after <think>: the reference strips it before re-adding one
    ("\nThe passage is about Mars. It fits.", "P<think>\nThe passage is about Mars. It fits.\n</think>"),
    ("\n\nIt fits.\n", "P<think>\nIt fits.\n</think>"),
    ("It fits.   ", "P<think>\nIt fits.\n</think>"),  # trailing spaces
    ("It fits.  but then  ", "P<think>\nIt fits.\n</think>"),  # trailing spaces after a cut-off sentence
    ("\n no sentence end  ", "P<think>\nno sentence end\n</think>"),  # kept whole, stripped both sides
    ("It orbits. Is it a moon? Yes! but then", "P<think>\nIt orbits. Is it a moon? Yes!\n</think>"),
    ("\nIs it a moon? It orbits Mar", "P<think>\nIs it a moon?\n</think>"),  # mid-sentence after an earlier ?
    ("", "P<think>\n\n</think>"),
])
def test_forced_prompt_is_the_references_to_the_letter(reasoning: str, forced: str) -> None:
    assert forced_prompt("P<think>", reasoning) == forced


def test_a_verdict_reads_both_logprobs_at_the_verdict_position(tokenizer: object, verdict: VerdictTokens) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk]:
        verdict_logprobs = {verdict.true_id: -0.2, verdict.false_id: -1.9}
        return [reasoning("Mars has two moons."), ending(verdict.true_id, verdict_logprobs, stop=STOP_TRUE)]

    engine = ScriptedEngine(tokenizer, script)
    events = run(engine, [candidate("mars", "Phobos and Deimos orbit Mars.", title="Mars")],
                 instruction="Natural moons only.")
    judged = events[-1]
    assert isinstance(judged, Judged) and judged.verdict and not judged.forced and judged.end_reason == "verdict"
    assert judged.p_true == p_true(-0.2, -1.9) and (judged.logprob_true, judged.logprob_false) == (-0.2, -1.9)
    assert judged.reasoning == "Mars has two moons." and judged.tokens == 2
    (request,) = engine.requests
    assert request.prompt == render_prompt("moons of mars Natural moons only.", "Mars Phobos and Deimos orbit Mars.")
    assert request.stop == (STOP_TRUE, STOP_FALSE) and request.watch_token_ids == verdict.ids
    assert not request.allowed_token_ids


@pytest.mark.parametrize(("last", "end_reason"), [
    ("budget", "budget"), ("eos", "end_of_sequence"), ("no_logprob", "missing_logprobs"),
])
def test_incomplete_outputs_get_a_measured_forced_verdict(tokenizer: object, verdict: VerdictTokens, last: str,
                                                          end_reason: str) -> None:
    endings = {
        "budget": ending(11, {}, finish="length"),
        "eos": ending(tokenizer.eos_token_id, {}),
        "no_logprob": ending(verdict.false_id, {verdict.false_id: -0.01}, stop=STOP_FALSE),
    }

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            return [ending(verdict.false_id, {verdict.true_id: -4.0, verdict.false_id: -0.5}, finish="length")]
        return [reasoning("Phobos is a moon. It orbits Mars and"), endings[last]]

    engine = ScriptedEngine(tokenizer, script)
    judged = run(engine, [candidate("mars", "Phobos orbits Mars.")])[-1]
    assert isinstance(judged, Judged) and judged.forced and judged.end_reason == end_reason
    assert not judged.verdict and judged.p_true == p_true(-4.0, -0.5)
    first, forced = engine.requests
    assert forced.prompt == first.prompt + "\nPhobos is a moon.\n</think>"
    assert forced.max_tokens == 1 and forced.allowed_token_ids == verdict.ids == forced.watch_token_ids


def test_an_unmeasurable_verdict_fails_instead_of_scoring_one_half(tokenizer: object, verdict: VerdictTokens) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            return [ending(verdict.true_id, {verdict.true_id: -0.1}, finish="length")]
        return [reasoning("Unsure"), ending(11, {}, finish="length")]

    failed = run(ScriptedEngine(tokenizer, script), [candidate("mars", "Phobos orbits Mars.")])[-1]
    assert isinstance(failed, Failed) and "forced verdict step" in failed.reason and failed.reasoning == "Unsure"


def test_an_engine_error_fails_that_document_only(tokenizer: object, verdict: VerdictTokens) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk] | Exception:
        if "Deimos" in request.prompt:
            return EngineError("server answered 500")
        return [reasoning("ok."), ending(verdict.true_id, {verdict.true_id: -0.3, verdict.false_id: -2.0},
                                         stop=STOP_TRUE)]

    events = run(ScriptedEngine(tokenizer, script), [candidate("a", "Phobos."), candidate("b", "Deimos.", 2)])
    ends = {event.doc_id: event for event in events if isinstance(event, Judged | Failed)}
    assert isinstance(ends["a"], Judged) and isinstance(ends["b"], Failed) and "500" in ends["b"].reason


def test_a_long_passage_is_cut_by_tokens_to_fit_the_context(tokenizer: object, verdict: VerdictTokens) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk]:
        return [ending(verdict.true_id, {verdict.true_id: -0.3, verdict.false_id: -2.0}, stop=STOP_TRUE)]

    engine = ScriptedEngine(tokenizer, script, max_model_len=256)
    events = run(engine, [candidate("long", "moons " * 1000), candidate("short", "moons", 2)], budget=64)
    ends = {event.doc_id: event for event in events if isinstance(event, Judged)}
    assert ends["long"].truncated_passage and not ends["short"].truncated_passage
    long_prompt = next(request.prompt for request in engine.requests if "moons moons" in request.prompt)
    assert long_prompt.endswith("moons\n<think>")
    assert len(tokenizer(long_prompt).input_ids) <= 256 - 64 - 8


def test_a_query_that_leaves_no_room_fails_with_the_reason(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, lambda request: [], max_model_len=64)
    failed = run(engine, [candidate("a", "moons")], budget=64)[-1]
    assert isinstance(failed, Failed) and "no room for the passage" in failed.reason and not engine.requests


def test_a_cached_judgment_replays_only_for_the_same_budget(tokenizer: object, verdict: VerdictTokens,
                                                           tmp_path: Path) -> None:
    def script(request: GenerationRequest) -> list[GenerationChunk]:
        return [reasoning("Two moons."), ending(verdict.true_id, {verdict.true_id: -0.3, verdict.false_id: -2.0},
                                                stop=STOP_TRUE)]

    cache = JudgmentCache(tmp_path / "judgments.sqlite3")
    first = run(ScriptedEngine(tokenizer, script), [candidate("mars", "Phobos.")], cache=cache)[-1]
    again = run(ScriptedEngine(tokenizer, script), [candidate("mars", "Phobos.")], cache=cache)[-1]
    assert again == dataclasses.replace(first, from_cache=True)
    other_budget = ScriptedEngine(tokenizer, script)
    run(other_budget, [candidate("mars", "Phobos.")], cache=cache, budget=32)
    assert other_budget.requests  # another budget is another judgment


def test_reranked_order_is_by_probability_with_failures_last(tokenizer: object, verdict: VerdictTokens) -> None:
    scores = {"Passage: weak": -3.0, "Passage: strong": -0.1}

    def script(request: GenerationRequest) -> list[GenerationChunk] | Exception:
        for name, value in scores.items():
            if name in request.prompt:
                return [ending(verdict.true_id, {verdict.true_id: value, verdict.false_id: -1.0}, stop=STOP_TRUE)]
        return EngineError("down")

    candidates = [candidate("a", "weak", 1), candidate("b", "broken", 2), candidate("c", "strong", 3)]
    folded = asyncio.run(collect(rank1(ScriptedEngine(tokenizer, script)), "q", candidates))
    ranking = folded.ranking()
    assert [item.passage.doc_id for item in ranking.candidates] == ["c", "a", "b"]
    assert ranking.candidates[0].provenance["rank1"].rank == 1 and "rank1" not in ranking.candidates[2].provenance
    assert folded.status("b") == "failed" and folded.score("b") is None


def test_a_reader_that_raises_closes_the_engine_stream_at_once(tokenizer: object) -> None:
    """An exception while reading (here from the reasoning callback) aborts the engine request then, not when the
    garbage collector finalises the stream."""
    closed = []

    class Recorded(ScriptedEngine):
        async def generate(self, request: GenerationRequest) -> Any:
            try:
                async for chunk in super().generate(request):
                    yield chunk
            finally:
                closed.append(request)

    engine = Recorded(tokenizer, lambda request: [GenerationChunk(text="so ", token_ids=(11,), logprobs=({},))] * 50)
    reranker = Rank1Reranker(engine, model_key="m", budget=64, settings=RerankSettings(judgment_cache=False))

    def refuse(text: str, tokens: int) -> None:
        raise RuntimeError("the reader failed")

    async def judge() -> int:
        with pytest.raises(RuntimeError):
            prepared = PreparedPrompt(prompt="p", passage="p", truncated_passage=False, prompt_tokens=1)
            await reranker.judge(prepared, {}, refuse)
        return len(closed)  # before any other task runs

    assert asyncio.run(judge()) == 1


def test_a_stream_that_ends_unfinished_fails_and_keeps_the_partial_reasoning(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, lambda request: [reasoning("Half a thought")])
    failed = run(engine, [candidate("a", "Phobos.")])[-1]
    assert isinstance(failed, Failed) and "ended unfinished" in failed.reason and failed.reasoning == "Half a thought"
