"""rank1, the pointwise reasoning reranker: one reasoning chain and one measured P(true) per candidate.

Prompt, stop strings, greedy decoding, verdict tokens and score follow the reference implementation exactly
(see ``tests/test_rank1.py`` for the pinned prompt). Where the reference is sloppy we are exact instead: an
output without a verdict gets the reference's forced verdict, flagged ``forced`` with its probability
measured from both verdict log-probabilities; a judgment that cannot be measured is ``Failed``, never 0.5.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from search.engines.base import Engine, EngineError, GenerationRequest, measured
from search.rerank.base import RerankerDefaults, Run
from search.rerank.events import EndReason, Failed, Judged, Measured
from search.rerank.pointwise import PointwiseReranker, PreparedPrompt, clean_reasoning
from search.rerank.probe import EarlyRule, Probe

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from search.rerank.cache import JudgmentCache
    from search.settings import RerankSettings

INSTRUCTION = "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
STOP_TRUE = "</think> true"
STOP_FALSE = "</think> false"


def render_prompt(query: str, passage: str) -> str:
    """The raw completion prompt (no chat template); it ends right after ``<think>``."""
    return f"{INSTRUCTION}Query: {query}\nPassage: {passage}\n<think>"


def forced_prompt(prompt: str, reasoning: str) -> str:
    """The reference's recovery prompt, to the letter: the prompt, a newline, the cleaned reasoning
    (``clean_reasoning``), a newline and the closed think tag, so that the next token is the verdict."""
    return f"{prompt}\n{clean_reasoning(reasoning)}\n</think>"


def p_true(logprob_true: float, logprob_false: float) -> float:
    """exp(lp_true) / (exp(lp_true) + exp(lp_false)), computed without overflow."""
    margin = logprob_true - logprob_false
    if margin >= 0:
        return 1.0 / (1.0 + math.exp(-margin))
    odds = math.exp(margin)
    return odds / (1.0 + odds)


@dataclass(frozen=True, kw_only=True, slots=True)
class VerdictTokens:
    true_id: int
    false_id: int

    @classmethod
    def of(cls, tokenizer: PreTrainedTokenizerBase) -> VerdictTokens:
        """The first token of " true" and of " false" (leading space), as the reference reads them."""
        return cls(true_id=tokenizer(" true", add_special_tokens=False).input_ids[0],
                   false_id=tokenizer(" false", add_special_tokens=False).input_ids[0])

    @property
    def ids(self) -> tuple[int, int]:
        return (self.true_id, self.false_id)


def _verdict_word(verdict: bool) -> str:
    return "relevant" if verdict else "not relevant"


class Rank1Reranker(PointwiseReranker):
    name = "rank1"
    label = "rank1: pointwise, P(true) per document"
    defaults = RerankerDefaults(budget=8192, max_model_len=16000, model_on_gpu="rank1-7b",
                                model_elsewhere="rank1-0.5b", cpu_budget=1024)
    recipe = "rank1-v2"
    outcome = Judged
    row_fields = ("p_true", "verdict", "forced", "end_reason", "truncated_passage", "from_cache", "tokens")
    score_name = "P(true)"
    relevance_meaning = "P(true): the probability of the verdict true"
    renderer = "verdicts"
    answer = ("verdict", "both verdict tokens")
    early_rule = EarlyRule(threshold=0.5, margin=0.3, streak=3)
    p_true_gap: ClassVar[float] = 0.3
    """Two runs disagree about a document when its verdict flips or its P(true) moves by this much."""

    @classmethod
    def disagreement(cls, a: Run, b: Run, doc_id: str) -> str | None:
        one, other = a.details(doc_id), b.details(doc_id)
        if one["p_true"] is None or other["p_true"] is None:
            return None
        if one["verdict"] != other["verdict"]:
            return f"verdict flipped: {_verdict_word(one['verdict'])} → {_verdict_word(other['verdict'])}"
        if abs(one["p_true"] - other["p_true"]) >= cls.p_true_gap:
            return f"P(true) {one['p_true']:.2f} → {other['p_true']:.2f}"
        return None

    def __init__(self, engine: Engine, *, model_key: str, budget: int, settings: RerankSettings,
                 cache: JudgmentCache | None = None) -> None:
        super().__init__(engine, model_key=model_key, budget=budget, settings=settings, cache=cache)
        self.verdict_tokens = VerdictTokens.of(engine.tokenizer)

    def render_prompt(self, query: str, passage: str) -> str:
        return render_prompt(query, passage)

    def probe(self, query: str, outcome: Measured) -> Probe:
        """The verdict position after the model's own reasoning and ``</think>``; the forced one's for a forced
        verdict."""

        def prompt(passage: str) -> str:
            rendered = render_prompt(query, passage)
            if outcome.forced:
                return forced_prompt(rendered, outcome.reasoning)
            return f"{rendered}{outcome.reasoning}</think>"

        return Probe(prompt=prompt, token_ids=self.verdict_tokens.ids, score=lambda values: p_true(*values))

    async def judge(self, prepared: PreparedPrompt, ids: dict[str, str], reasoning: Callable[[str, int], None]
                    ) -> Judged | Failed:
        """The model's own verdict when it gives one; else the reference's forced verdict, measured."""
        request = GenerationRequest(prompt=prepared.prompt, max_tokens=self.budget, stop=(STOP_TRUE, STOP_FALSE),
                                    watch_token_ids=self.verdict_tokens.ids)
        parts: list[str] = []
        tokens = 0
        last_token: int | None = None
        last_logprobs: dict[int, float] = {}
        finish, stop = None, None
        unshown = 0  # tokens whose text the engine holds back (it could start a stop string) until a later chunk
        async with contextlib.aclosing(self.engine.generate(request)) as chunks:  # an early exit aborts it now
            async for chunk in chunks:
                unshown += len(chunk.token_ids)
                if chunk.text:
                    parts.append(chunk.text)
                    reasoning(chunk.text, unshown)
                    unshown = 0
                tokens += len(chunk.token_ids)
                if chunk.token_ids:
                    last_token = chunk.token_ids[-1]
                    last_logprobs = dict(chunk.logprobs[-1]) if chunk.logprobs else {}
                finish, stop = chunk.finish_reason or finish, chunk.stop_reason or stop
        if finish is None or finish == "abort":
            raise EngineError("the engine aborted the request" if finish else "the stream ended unfinished")
        text = "".join(parts)
        end_reason: EndReason
        if finish == "length":
            end_reason = "budget"
        elif stop not in (STOP_TRUE, STOP_FALSE) or last_token not in self.verdict_tokens.ids:
            end_reason = "end_of_sequence"
        elif (verdict := measured(last_logprobs, self.verdict_tokens.ids)) is None:
            end_reason = "missing_logprobs"
        else:
            return self._judged(ids, prepared, verdict, last_token == self.verdict_tokens.true_id, text, tokens,
                                end_reason="verdict")
        return await self.forced(ids, prepared, text, tokens, end_reason=end_reason)

    @property
    def forced_tokens(self) -> tuple[int, ...]:
        return self.verdict_tokens.ids

    def forced_prompt(self, prepared: PreparedPrompt, reasoning: str) -> str:
        return forced_prompt(prepared.prompt, reasoning)

    def forced_outcome(self, ids: dict[str, str], prepared: PreparedPrompt, values: tuple[float, ...], token: int,
                       reasoning: str, tokens: int, *, end_reason: EndReason) -> Judged:
        return self._judged(ids, prepared, values, token == self.verdict_tokens.true_id, reasoning, tokens,
                            end_reason=end_reason, forced=True)

    @staticmethod
    def _judged(ids: dict[str, str], prepared: PreparedPrompt, logprobs: tuple[float, ...], verdict: bool,
                reasoning: str, tokens: int, *, end_reason: EndReason, forced: bool = False) -> Judged:
        lp_true, lp_false = logprobs
        return Judged(**ids, verdict=verdict, p_true=p_true(lp_true, lp_false), logprob_true=lp_true,
                      logprob_false=lp_false, reasoning=reasoning, tokens=tokens, end_reason=end_reason,
                      forced=forced, truncated_passage=prepared.truncated_passage)
