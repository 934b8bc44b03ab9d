"""The graded assessor: UMBRELA's relevance judgment on the TREC 0–3 scale, with visible reasoning and a measured
grade distribution.

The prompt is UMBRELA's default (``qrel_zeroshot_bing``) byte for byte, sent as one user turn through the model's
chat template; decoding is greedy. Whatever the model writes before ``##final score:`` streams as reasoning.
Where the reference reads a digit from the text with regular expressions and silently gives 0 when none matches,
we measure: at the position after ``##final score:`` the log-probabilities of the four grade tokens, renormalised
over them, give the distribution, the most likely grade and the expected grade Σ g·p(g), which ranks. Without an
answer line (the budget ran out, the model stopped, or the line holds no grade) one forced step appends
``\\n##final score:`` to the cleaned reasoning and reads the next token over the four grades, flagged ``forced``;
a grade that cannot be measured is ``Failed`` with the reason, never 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from search.engines.base import Engine, EngineError, GenerationRequest, measured
from search.rerank.base import RerankerDefaults, Run
from search.rerank.events import EndReason, Failed, Graded, Measured, expected_grade, grade_distribution
from search.rerank.pointwise import PointwiseReranker, PreparedPrompt, clean_reasoning
from search.rerank.probe import EarlyRule, Probe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from search.rerank.cache import JudgmentCache
    from search.settings import RerankSettings

ANSWER = "##final score:"
GRADES = (0, 1, 2, 3)


def user_message(query: str, passage: str) -> str:
    """UMBRELA's ``qrel_zeroshot_bing`` prompt with the query and passage filled in (the trailing spaces after
    "query," are the original's; the text ends after "reasoning." with no newline)."""
    return (
        "Given a query and a passage, you must provide a score on an integer scale of 0 to 3 with the following "
        "meanings:\n"
        "0 = represent that the passage has nothing to do with the query, \n"
        "1 = represents that the passage seems related to the query but does not answer it, \n"
        "2 = represents that the passage has some answer for the query, but the answer may be a bit unclear, or "
        "hidden amongst extraneous information and \n"
        "3 = represents that the passage is dedicated to the query and contains the exact answer.\n"
        "\n"
        "Important Instruction: Assign category 1 if the passage is somewhat related to the topic but not "
        "completely, category 2 if passage presents something very important related to the entire topic but also "
        "has some extra information and category 3 if the passage only and entirely refers to the topic. If none "
        "of the above satisfies give it category 0.\n"
        "\n"
        f"Query: {query}\n"
        f"Passage: {passage}\n"
        "\n"
        "Split this problem into steps:\n"
        "Consider the underlying intent of the search.\n"
        "Measure how well the content matches a likely intent of the query (M).\n"
        "Measure how trustworthy the passage is (T).\n"
        "Consider the aspects above and the relative importance of each, and decide on a final score (O). Final "
        "score must be an integer value only.\n"
        "Do not provide any code in result. Provide each score in the format of: ##final score: score without "
        "providing any reasoning."
    )


def render_prompt(tokenizer: PreTrainedTokenizerBase, query: str, passage: str) -> str:
    """The prompt as one user turn through the model's chat template, ready for the assistant's answer."""
    return tokenizer.apply_chat_template([{"role": "user", "content": user_message(query, passage)}],
                                         tokenize=False, add_generation_prompt=True)


def held_back(text: str) -> int:
    """How many characters at the end of ``text`` could be the start of the answer line (not shown yet)."""
    return next((size for size in range(min(len(ANSWER) - 1, len(text)), 0, -1) if text.endswith(ANSWER[:size])), 0)


@dataclass(frozen=True, kw_only=True, slots=True)
class GradeTokens:
    """The token ids of the grades 0–3 for one tokenizer. ``bare`` are the digits themselves; ``spaced`` the digits
    with a leading space where the tokenizer has them as single tokens (otherwise the space is a token of its own
    and the digit follows it bare)."""

    bare: tuple[int, ...]
    spaced: tuple[int, ...] | None
    space: int | None
    """The token of a lone space, when the tokenizer writes " 2" as a space and a digit."""

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> GradeTokens:
        def single(text: str) -> int | None:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            return ids[0] if len(ids) == 1 else None

        bare = tuple(single(str(grade)) for grade in GRADES)
        if None in bare:
            raise EngineError(f"the tokenizer writes a grade 0–3 as several tokens ({bare}); the assessor reads one")
        spaced = tuple(single(f" {grade}") for grade in GRADES)
        return cls(bare=bare, spaced=None if None in spaced else spaced, space=single(" "))  # type: ignore[arg-type]

    @property
    def watched(self) -> tuple[int, ...]:
        return self.bare + (self.spaced or ())

    @property
    def forced(self) -> tuple[str, tuple[int, ...]]:
        """What a forced answer appends after ``##final score:`` and which tokens it reads next."""
        return ("", self.spaced) if self.spaced else (" ", self.bare)

    def at(self, token_ids: Sequence[int], start: int) -> tuple[int, tuple[int, ...]] | bool | None:
        """Where the model wrote its grade, reading from ``start`` (the first token after the answer line's
        prefix): (position, the grade token ids there); None while more tokens are needed; False when what it
        wrote there is not a grade."""
        if start >= len(token_ids):
            return None
        token = token_ids[start]
        for ids in (self.spaced or (), self.bare):
            if token in ids:
                return start, ids
        if token == self.space:
            if start + 1 >= len(token_ids):
                return None
            if token_ids[start + 1] in self.bare:
                return start + 1, self.bare
        return False


def answer_start(tokenizer: PreTrainedTokenizerBase, token_ids: Sequence[int]) -> int | bool:
    """The index of the first token after ``##final score:`` in ``token_ids`` (which contain it), or False when the
    line's prefix does not end on a token boundary (then no grade token follows it)."""
    low, high = 1, len(token_ids)
    while low < high:
        middle = (low + high) // 2
        if ANSWER in tokenizer.decode(token_ids[:middle], skip_special_tokens=False):
            high = middle
        else:
            low = middle + 1
    prefix = tokenizer.decode(token_ids[:low], skip_special_tokens=False)
    return low if prefix.index(ANSWER) + len(ANSWER) == len(prefix) else False


class AssessorReranker(PointwiseReranker):
    name = "assessor"
    label = "Assessor (UMBRELA): graded 0–3, expected grade per document"
    defaults = RerankerDefaults(budget=1024, max_model_len=8192, model_on_gpu="qwen2.5-7b-instruct",
                                model_elsewhere="qwen2.5-1.5b-instruct", cpu_budget=256)
    recipe = "umbrela-v2"  # v2: a grade records where it was read (answer_suffix, spaced_grade), for evidence
    outcome = Graded
    row_fields = ("grade", "expected_grade", "distribution", "forced", "end_reason", "truncated_passage",
                  "from_cache", "tokens")
    score_name = "expected grade"
    score_max = float(len(GRADES) - 1)
    relevance_meaning = "the expected grade ÷ 3 (UMBRELA's 0–3 scale)"
    renderer = "grades"
    grades = len(GRADES)
    reserve = 16
    answer = ("grade", "all four grade tokens")
    early_rule = EarlyRule(threshold=1.5, margin=0.9, streak=3)

    @classmethod
    def disagreement(cls, a: Run, b: Run, doc_id: str) -> str | None:
        """Two runs disagree about a document when their grades differ (by one or more)."""
        one, other = a.details(doc_id)["grade"], b.details(doc_id)["grade"]
        if one is None or other is None or one == other:
            return None
        return f"grade {one} → {other}"

    def __init__(self, engine: Engine, *, model_key: str, budget: int, settings: RerankSettings,
                 cache: JudgmentCache | None = None) -> None:
        super().__init__(engine, model_key=model_key, budget=budget, settings=settings, cache=cache)
        self.grade_tokens = GradeTokens.of(engine.tokenizer)

    def render_prompt(self, query: str, passage: str) -> str:
        return render_prompt(self.engine.tokenizer, query, passage)

    def probe(self, query: str, outcome: Measured) -> Probe:
        """The grade position after the model's own reasoning and answer line; the forced one's for a forced grade.
        The score is the expected grade ÷ 3."""
        if not isinstance(outcome, Graded):
            raise TypeError(f"the assessor probes its own grades, not {type(outcome).__name__}")
        grade_ids = self.grade_tokens.spaced if outcome.spaced_grade else self.grade_tokens.bare
        thought = f"{clean_reasoning(outcome.reasoning)}\n" if outcome.forced else outcome.reasoning

        def prompt(passage: str) -> str:
            return f"{render_prompt(self.engine.tokenizer, query, passage)}{thought}{ANSWER}{outcome.answer_suffix}"

        return Probe(prompt=prompt, token_ids=grade_ids,
                     score=lambda values: expected_grade(grade_distribution(values)) / GRADES[-1])

    async def judge(self, prepared: PreparedPrompt, ids: dict[str, str], reasoning: Callable[[str, int], None]
                    ) -> Graded | Failed:
        request = GenerationRequest(prompt=prepared.prompt, max_tokens=self.budget,
                                    watch_token_ids=self.grade_tokens.watched)
        text, shown, answer_at, unshown_tokens = "", 0, -1, 0
        token_ids: list[int] = []
        logprobs: list[Mapping[int, float]] = []
        start: int | bool | None = None
        place: tuple[int, tuple[int, ...]] | bool | None = None
        finish = None
        async with contextlib.aclosing(self.engine.generate(request)) as chunks:
            async for chunk in chunks:
                text += chunk.text
                token_ids += chunk.token_ids
                unshown_tokens += len(chunk.token_ids)
                logprobs += [*chunk.logprobs, *({} for _ in range(len(chunk.token_ids) - len(chunk.logprobs)))]
                finish = chunk.finish_reason or finish
                if answer_at < 0:
                    answer_at = text.find(ANSWER)
                    visible = answer_at if answer_at >= 0 else len(text) - held_back(text)
                    if visible > shown:
                        reasoning(text[shown:visible], unshown_tokens)
                        shown, unshown_tokens = visible, 0
                if answer_at >= 0 and ANSWER in self.engine.tokenizer.decode(token_ids, skip_special_tokens=False):
                    start = answer_start(self.engine.tokenizer, token_ids) if start is None else start
                    place = False if start is False else self.grade_tokens.at(token_ids, start)
                    if place is not None:
                        break  # the grade is read: the rest of the output is not needed
        if place is None and finish in (None, "abort"):
            raise EngineError("the engine aborted the request" if finish else "the stream ended unfinished")
        if answer_at < 0 and len(text) > shown:
            reasoning(text[shown:], unshown_tokens)
        thought = text[:answer_at] if answer_at >= 0 else text
        end_reason: EndReason
        if place:
            position, grade_ids = place
            if (values := measured(logprobs[position], grade_ids)) is not None:
                return self._graded(ids, prepared, values, thought, len(token_ids), end_reason="grade",
                                    answer_suffix=" " if position > start else "",
                                    spaced_grade=grade_ids == self.grade_tokens.spaced)
            end_reason = "missing_logprobs"
        elif place is False:
            end_reason = "not_a_grade"
        else:
            end_reason = "budget" if finish == "length" else "end_of_sequence"
        return await self.forced(ids, prepared, thought, len(token_ids), end_reason=end_reason)

    @property
    def forced_tokens(self) -> tuple[int, ...]:
        return self.grade_tokens.forced[1]

    def forced_prompt(self, prepared: PreparedPrompt, reasoning: str) -> str:
        return f"{prepared.prompt}{clean_reasoning(reasoning)}\n{ANSWER}{self.grade_tokens.forced[0]}"

    def forced_outcome(self, ids: dict[str, str], prepared: PreparedPrompt, values: tuple[float, ...], token: int,
                       reasoning: str, tokens: int, *, end_reason: EndReason) -> Graded:
        suffix, grade_ids = self.grade_tokens.forced
        return self._graded(ids, prepared, values, reasoning, tokens, end_reason=end_reason, forced=True,
                            answer_suffix=suffix, spaced_grade=grade_ids == self.grade_tokens.spaced)

    @staticmethod
    def _graded(ids: dict[str, str], prepared: PreparedPrompt, logprobs: tuple[float, ...], reasoning: str,
                tokens: int, *, end_reason: EndReason, answer_suffix: str, spaced_grade: bool, forced: bool = False
                ) -> Graded:
        return Graded.measured(logprobs, **ids, reasoning=reasoning, tokens=tokens, end_reason=end_reason,
                               forced=forced, truncated_passage=prepared.truncated_passage,
                               answer_suffix=answer_suffix, spaced_grade=spaced_grade)
