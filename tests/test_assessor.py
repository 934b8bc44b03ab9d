"""The graded assessor's logic over a scripted engine that streams the demo model's real tokens: UMBRELA's prompt
byte for byte, the grade distribution from the four grade tokens' log-probabilities, the grade read at the
model's own answer, forced answers and failures. What every reranker must do is checked in test_rerankers.py,
also on real vLLM; test_cli.py runs it on the command line and test_browser.py on the page."""

from __future__ import annotations

import asyncio
import math
import time

import pytest
from scripted import GRADE_SHARES, ScriptedEngine, candidate, grading, tokens_of

from search.engines.base import GenerationChunk, GenerationRequest
from search.rerank.assessor import (
    ANSWER,
    AssessorReranker,
    GradeTokens,
    render_prompt,
    user_message,
)
from search.rerank.events import Event, Failed, Graded, Reasoning
from search.rerank.pointwise import clean_reasoning
from search.settings import RerankSettings

REFERENCE = """Given a query and a passage, you must provide a score on an integer scale of 0 to 3 with the following meanings:
0 = represent that the passage has nothing to do with the query, 
1 = represents that the passage seems related to the query but does not answer it, 
2 = represents that the passage has some answer for the query, but the answer may be a bit unclear, or hidden amongst extraneous information and 
3 = represents that the passage is dedicated to the query and contains the exact answer.

Important Instruction: Assign category 1 if the passage is somewhat related to the topic but not completely, category 2 if passage presents something very important related to the entire topic but also has some extra information and category 3 if the passage only and entirely refers to the topic. If none of the above satisfies give it category 0.

Query: {query}
Passage: {passage}

Split this problem into steps:
Consider the underlying intent of the search.
Measure how well the content matches a likely intent of the query (M).
Measure how trustworthy the passage is (T).
Consider the aspects above and the relative importance of each, and decide on a final score (O). Final score must be an integer value only.
Do not provide any code in result. Provide each score in the format of: ##final score: score without providing any reasoning."""  # noqa: E501, W291
"""``qrel_zeroshot_bing`` as ../shared/reference/umbrela.md gives it, trailing spaces and all."""


@pytest.fixture(scope="module")
def grades(tokenizer: object) -> GradeTokens:
    return GradeTokens.of(tokenizer)


def assess(engine: ScriptedEngine, text: str = "Phobos and Deimos orbit Mars.") -> list[Event]:
    reranker = AssessorReranker(engine, model_key="scripted", budget=64, settings=RerankSettings())

    async def events() -> list[Event]:
        return [event async for event in reranker.stream("moons of mars", [candidate("mars", text, title="Mars")])]

    return asyncio.run(events())


def shares(values: tuple[float, ...]) -> dict[int, float]:
    return dict(enumerate(values))


def test_prompt_matches_umbrela_byte_for_byte(tokenizer: object) -> None:
    assert user_message("what is BM25", "Okapi BM25 A ranking function.") == REFERENCE.format(
        query="what is BM25", passage="Okapi BM25 A ranking function.")
    assert user_message("{query}", "{x}").count("{query}") == 1  # braces in the text are text
    assert render_prompt(tokenizer, "q", "p") == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        f"<|im_start|>user\n{REFERENCE.format(query='q', passage='p')}<|im_end|>\n<|im_start|>assistant\n"
    )  # one user turn through the demo model's template (it adds its own default system turn); no prefill


def test_grade_tokens_are_the_digits_as_the_tokenizer_writes_them(tokenizer: object, grades: GradeTokens) -> None:
    assert [tokenizer.decode([token]) for token in grades.bare] == ["0", "1", "2", "3"]
    assert grades.spaced is None and tokenizer.decode([grades.space]) == " "  # SmolLM2 and Qwen: " 2" is " ", "2"
    assert grades.forced == (" ", grades.bare)


def test_the_distribution_is_the_four_grade_probabilities_renormalised() -> None:
    logprobs = (math.log(0.05), math.log(0.1), math.log(0.3), math.log(0.05))  # 0.5 of the mass elsewhere
    graded = Graded.measured(logprobs, reranker="assessor", doc_id="d", passage_id="d", reasoning="", tokens=1,
                             end_reason="grade", forced=False, truncated_passage=False)
    assert graded.distribution == pytest.approx((0.1, 0.2, 0.6, 0.1))
    assert graded.grade == 2 and graded.expected_grade == pytest.approx(1.7) and graded.score == graded.expected_grade
    assert graded.logprobs == logprobs
    extreme = Graded.measured((-2000.0, -1.0, -3000.0, -1.0), reranker="assessor", doc_id="d", passage_id="d",
                              reasoning="", tokens=1, end_reason="grade", forced=False, truncated_passage=False)
    assert extreme.distribution == pytest.approx((0.0, 0.5, 0.0, 0.5)) and extreme.grade == 1


def test_the_grade_is_read_at_the_model_s_own_answer(tokenizer: object, grades: GradeTokens) -> None:
    engine = ScriptedEngine(tokenizer, grading(tokenizer), pause_s=0.01)
    events = assess(engine)
    graded = events[-1]
    assert isinstance(graded, Graded) and not graded.forced and graded.end_reason == "grade"
    assert graded.distribution == pytest.approx(GRADE_SHARES) and graded.grade == 2
    assert graded.expected_grade == pytest.approx(1.7)
    assert graded.reasoning == "M: the passage answers it.\n"  # everything before the answer line, nothing after
    assert "".join(event.text for event in events if isinstance(event, Reasoning)) == graded.reasoning
    (request,) = engine.requests
    assert request.prompt == render_prompt(tokenizer, "moons of mars", "Mars Phobos and Deimos orbit Mars.")
    assert request.watch_token_ids == grades.watched and not request.stop and request.max_tokens == 64
    deadline = time.monotonic() + 5
    while not engine.aborted and time.monotonic() < deadline:  # the abort lands on the engine's own thread
        time.sleep(0.01)
    assert engine.aborted == [request]  # the rest of the output was not waited for


@pytest.mark.parametrize("answer", [f"{ANSWER}2", f"{ANSWER} 2"])
def test_the_grade_is_read_with_or_without_a_space(tokenizer: object, grades: GradeTokens, answer: str) -> None:
    at = len(tokenizer(f"Fine.\n{answer}", add_special_tokens=False).input_ids) - 1
    logprobs = {token: math.log(share) for token, share in zip(grades.bare, GRADE_SHARES, strict=True)}

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        return [*tokens_of(tokenizer, f"Fine.\n{answer}", {at: logprobs}),
                GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason="stop")]

    graded = assess(ScriptedEngine(tokenizer, script))[-1]
    assert isinstance(graded, Graded) and graded.end_reason == "grade" and graded.grade == 2
    # Evidence re-scores exactly where the judgment was read: the same text before the grade, the same tokens.
    probe = AssessorReranker(ScriptedEngine(tokenizer, script), model_key="scripted", budget=64,
                             settings=RerankSettings()).probe("moons of mars", graded)
    passage = "Mars Phobos and Deimos orbit Mars."
    assert probe.prompt(passage) == render_prompt(tokenizer, "moons of mars", passage) + f"Fine.\n{answer[:-1]}"
    assert probe.token_ids == grades.bare


def forced_script(tokenizer: object, grades: GradeTokens, output: list[GenerationChunk],
                  forced: dict[int, float] | None = None):
    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            logprobs = forced if forced is not None else {token: math.log(0.25) for token in grades.bare}
            return [GenerationChunk(text="", token_ids=(grades.bare[1],), logprobs=(logprobs,),
                                    finish_reason="length")]
        return output

    return script


@pytest.mark.parametrize(("ending", "end_reason"), [("length", "budget"), ("stop", "end_of_sequence")])
def test_no_answer_line_gets_a_measured_forced_grade(tokenizer: object, grades: GradeTokens, ending: str,
                                                     end_reason: str) -> None:
    output = [*tokens_of(tokenizer, "\n\nM: it is about Mars. T: trustworthy? O: I would say"),
              GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason=ending)]
    engine = ScriptedEngine(tokenizer, forced_script(tokenizer, grades, output))
    graded = assess(engine)[-1]
    assert isinstance(graded, Graded) and graded.forced and graded.end_reason == end_reason
    assert graded.distribution == pytest.approx((0.25,) * 4) and graded.expected_grade == pytest.approx(1.5)
    first, forced = engine.requests
    # The reference's cleaning: leading and trailing whitespace off, cut after the last "?" (the text ends
    # mid-sentence), then the answer line's prefix and the space this tokenizer writes before a digit.
    assert forced.prompt == first.prompt + "M: it is about Mars. T: trustworthy?\n##final score: "
    assert forced.max_tokens == 1 and forced.allowed_token_ids == grades.bare == forced.watch_token_ids


def test_an_answer_line_without_a_grade_is_forced_too(tokenizer: object, grades: GradeTokens) -> None:
    output = [*tokens_of(tokenizer, f"It fits.\n{ANSWER} **two**"),
              GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason="stop")]
    engine = ScriptedEngine(tokenizer, forced_script(tokenizer, grades, output))
    graded = assess(engine)[-1]
    assert isinstance(graded, Graded) and graded.forced and graded.end_reason == "not_a_grade"
    assert graded.reasoning == "It fits.\n" and engine.requests[1].prompt.endswith("It fits.\n##final score: ")


def test_an_answer_without_the_grade_log_probabilities_is_forced(tokenizer: object, grades: GradeTokens) -> None:
    text = f"Yes.\n{ANSWER} 3"
    at = len(tokenizer(text, add_special_tokens=False).input_ids) - 1
    output = [*tokens_of(tokenizer, text, {at: {grades.bare[3]: -0.1}}),
              GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason="stop")]
    graded = assess(ScriptedEngine(tokenizer, forced_script(tokenizer, grades, output)))[-1]
    assert isinstance(graded, Graded) and graded.forced and graded.end_reason == "missing_logprobs"


def test_a_grade_that_cannot_be_measured_fails_and_is_never_zero(tokenizer: object, grades: GradeTokens) -> None:
    output = [*tokens_of(tokenizer, "Unsure"), GenerationChunk(text="", token_ids=(), logprobs=(),
                                                              finish_reason="length")]
    failed = assess(ScriptedEngine(tokenizer, forced_script(tokenizer, grades, output,
                                                            forced={grades.bare[1]: -0.2})))[-1]
    assert isinstance(failed, Failed) and "not all four grade tokens" in failed.reason
    assert "after budget" in failed.reason and failed.reasoning == "Unsure"


def test_reasoning_streams_without_ever_showing_part_of_the_answer_line(tokenizer: object) -> None:
    events = assess(ScriptedEngine(tokenizer, grading(tokenizer)))
    shown = ""
    for event in events:
        if isinstance(event, Reasoning):
            shown += event.text
            assert "#" not in shown  # "##final score:" arrives in pieces; none of them is shown as reasoning


@pytest.mark.parametrize(("text", "cleaned"), [
    ("\n\nIt is about Mars.", "It is about Mars."),  # leading newlines go
    ("It is about Mars.   \n ", "It is about Mars."),  # trailing spaces go
    ("  no sentence end at all  ", "no sentence end at all"),  # kept whole, stripped
    ("Is it Mars? It is about Ma", "Is it Mars?"),  # ends mid-sentence after an earlier "?"
    ("One. Two! Three?", "One. Two! Three?"),  # already ends a sentence
    ("", ""),
])
def test_reasoning_is_cleaned_as_the_reference_does(text: str, cleaned: str) -> None:
    assert clean_reasoning(text) == cleaned
