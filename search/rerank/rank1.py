"""rank1, the pointwise reasoning reranker: one reasoning chain and one measured P(true) per candidate.

Prompt, stop strings, greedy decoding, verdict tokens and score follow the reference implementation exactly
(see ``tests/test_rank1.py`` for the pinned prompt). Where the reference is sloppy we are exact instead: an
output without a verdict gets the reference's forced verdict, flagged ``forced`` with its probability
measured from both verdict log-probabilities; a judgment that cannot be measured is ``Failed``, never 0.5.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from search.engines.base import Engine, EngineError, GenerationRequest
from search.rerank.cache import JudgmentCache, judgment_key
from search.rerank.events import EndReason, Failed, Judged, Reasoning, RerankEvent, Started
from search.retrieval.ranking import Candidate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

RECIPE = "rank1-v1"
"""Changes whenever the prompt, decoding or scoring changes, so cached judgments of another recipe are not
replayed."""
INSTRUCTION = "Determine if the following passage is relevant to the query. Answer only with 'true' or 'false'.\n"
STOP_TRUE = "</think> true"
STOP_FALSE = "</think> false"
QUERY_SLOT = "FILL_QUERY_HERE"
SENTENCE_ENDS = ".!?"
FORCED_STEP_TOKENS = 8
"""Room kept in the context for the forced verdict step's additions ("\\n", "\\n</think>", the verdict)."""


def query_text(query: str, instruction: str = "", template: str = "") -> str:
    """The query as rank1 reads it: the instruction appended (mFollowIR style), then put into a dataset
    prompt template at ``FILL_QUERY_HERE`` when one is given."""
    text = f"{query} {instruction}".strip()
    return template.replace(QUERY_SLOT, text) if template else text


def render_prompt(query: str, passage: str) -> str:
    """The raw completion prompt (no chat template); it ends right after ``<think>``."""
    return f"{INSTRUCTION}Query: {query}\nPassage: {passage}\n<think>"


def forced_prompt(prompt: str, reasoning: str) -> str:
    """The reference's recovery prompt: the reasoning cut back to its last sentence end, then the think tag
    closed, so that the next token is the verdict."""
    end = max(reasoning.rfind(mark) for mark in SENTENCE_ENDS)
    cut = reasoning[: end + 1] if end >= 0 else reasoning
    return f"{prompt}\n{cut}\n</think>"


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


@dataclass(frozen=True, kw_only=True, slots=True)
class PreparedPrompt:
    prompt: str
    truncated_passage: bool


def prepare_prompt(tokenizer: PreTrainedTokenizerBase, query: str, passage: str, *, max_model_len: int,
                   budget: int) -> PreparedPrompt:
    """The prompt for one passage, its passage cut by tokens when prompt + reasoning budget would overflow
    the context. Raises ValueError when even an empty passage does not fit."""
    prompt = render_prompt(query, passage)
    room = max_model_len - budget - FORCED_STEP_TOKENS

    def length(text: str) -> int:
        return len(tokenizer(text).input_ids)

    excess = length(prompt) - room
    if excess <= 0:
        return PreparedPrompt(prompt=prompt, truncated_passage=False)
    passage_ids = tokenizer(passage, add_special_tokens=False).input_ids
    keep = len(passage_ids) - excess
    while keep > 0:
        prompt = render_prompt(query, tokenizer.decode(passage_ids[:keep]))
        excess = length(prompt) - room
        if excess <= 0:
            return PreparedPrompt(prompt=prompt, truncated_passage=True)
        keep -= excess
    raise ValueError(
        f"the query leaves no room for the passage: max model length {max_model_len} tokens minus reasoning "
        f"budget {budget} is less than the prompt without its passage"
    )


def _measured(logprobs: dict[int, float], tokens: VerdictTokens) -> tuple[float, float] | None:
    if tokens.true_id in logprobs and tokens.false_id in logprobs:
        return logprobs[tokens.true_id], logprobs[tokens.false_id]
    return None


class Rank1Reranker:
    """Judges every candidate of a query at once on one engine and merges their events into one stream."""

    name = "rank1"

    def __init__(self, engine: Engine, *, model_key: str, budget: int, cache: JudgmentCache | None = None) -> None:
        self.engine = engine
        self.model_key = model_key
        self.budget = budget
        self.cache = cache
        self.verdict_tokens = VerdictTokens.of(engine.tokenizer)

    def with_budget(self, budget: int) -> Rank1Reranker:
        """The same reranker (engine, cache) with another reasoning budget."""
        return self if budget == self.budget else Rank1Reranker(self.engine, model_key=self.model_key, budget=budget,
                                                                cache=self.cache)

    async def stream(self, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                     template: str = "", slots: asyncio.Semaphore | None = None) -> AsyncIterator[RerankEvent]:
        """Every candidate's events as they happen. Closing the stream early cancels the engine requests.

        ``slots`` bounds the judgments reasoning at once, shared by every stream given the same one (a batch
        run's many queries); cached judgments replay without waiting for a slot."""
        text = query_text(query, instruction, template)
        queue: asyncio.Queue[RerankEvent | None] = asyncio.Queue()
        tasks = [asyncio.create_task(self._judge_into(queue.put_nowait, text, candidate, slots))
                 for candidate in candidates]
        try:
            remaining = len(tasks)
            while remaining:
                event = await queue.get()
                if event is None:
                    remaining -= 1
                else:
                    yield event
            for task in tasks:
                task.result()  # a crash in our own code must not pass silently
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _judge_into(self, emit: Callable[[RerankEvent | None], None], query: str, candidate: Candidate,
                          slots: asyncio.Semaphore | None) -> None:
        try:
            await self._judge(emit, query, candidate, slots or contextlib.nullcontext())
        finally:
            emit(None)

    async def _judge(self, emit: Callable[[RerankEvent | None], None], query: str, candidate: Candidate,
                     slot: contextlib.AbstractAsyncContextManager) -> None:
        passage = candidate.passage
        ids = {"doc_id": passage.doc_id, "passage_id": passage.passage_id}
        emit(Started(**ids, first_stage_rank=candidate.rank))
        try:
            prepared = prepare_prompt(self.engine.tokenizer, query, passage.contents,
                                      max_model_len=self.engine.max_model_len, budget=self.budget)
        except ValueError as error:
            emit(Failed(**ids, reason=str(error)))
            return
        key = judgment_key(model=self.model_key, recipe=RECIPE, budget=self.budget, prompt=prepared.prompt)
        cached = self.cache.get(key) if self.cache is not None else None
        if cached is not None:
            if cached.reasoning:
                emit(Reasoning(doc_id=passage.doc_id, text=cached.reasoning))
            emit(dataclasses.replace(cached, **ids, from_cache=True))
            return
        parts: list[str] = []
        try:
            async with slot:
                outcome = await self._reason(emit, passage.doc_id, prepared.prompt, parts)
                judged = outcome.judged(ids, prepared.truncated_passage) if outcome.measured else await self._force(
                    ids, prepared, outcome)
        except EngineError as error:
            emit(Failed(**ids, reason=f"engine error: {error}", reasoning="".join(parts)))
            return
        if isinstance(judged, Failed):
            emit(judged)
            return
        if self.cache is not None:
            self.cache.put(key, judged, model=self.model_key, recipe=RECIPE, budget=self.budget,
                           prompt=prepared.prompt)
        emit(judged)

    async def _reason(self, emit: Callable[[RerankEvent | None], None], doc_id: str, prompt: str,
                      parts: list[str]) -> _Outcome:
        """Generate the reasoning (collected into ``parts`` as it streams) and read the verdict if the model
        gave one."""
        request = GenerationRequest(prompt=prompt, max_tokens=self.budget, stop=(STOP_TRUE, STOP_FALSE),
                                    watch_token_ids=self.verdict_tokens.ids)
        tokens = 0
        last_token: int | None = None
        last_logprobs: dict[int, float] = {}
        finish, stop = None, None
        async for chunk in self.engine.generate(request):
            if chunk.text:
                parts.append(chunk.text)
                emit(Reasoning(doc_id=doc_id, text=chunk.text))
            tokens += len(chunk.token_ids)
            if chunk.token_ids:
                last_token = chunk.token_ids[-1]
                last_logprobs = dict(chunk.logprobs[-1]) if chunk.logprobs else {}
            finish, stop = chunk.finish_reason or finish, chunk.stop_reason or stop
        if finish is None or finish == "abort":
            raise EngineError("the engine aborted the request" if finish else "the stream ended unfinished")
        outcome = _Outcome(reasoning="".join(parts), tokens=tokens)
        if finish == "length":
            outcome.end_reason = "budget"
        elif stop not in (STOP_TRUE, STOP_FALSE) or last_token not in self.verdict_tokens.ids:
            outcome.end_reason = "end_of_sequence"
        elif (measured := _measured(last_logprobs, self.verdict_tokens)) is None:
            outcome.end_reason = "missing_logprobs"
        else:
            outcome.end_reason = "verdict"
            outcome.verdict = last_token == self.verdict_tokens.true_id
            outcome.logprobs = measured
        return outcome

    async def _force(self, ids: dict[str, str], prepared: PreparedPrompt, outcome: _Outcome) -> Judged | Failed:
        request = GenerationRequest(prompt=forced_prompt(prepared.prompt, outcome.reasoning), max_tokens=1,
                                    watch_token_ids=self.verdict_tokens.ids, allowed_token_ids=self.verdict_tokens.ids)
        chunks = [chunk async for chunk in self.engine.generate(request)]
        token_ids = [token for chunk in chunks for token in chunk.token_ids]
        logprobs = [entry for chunk in chunks for entry in chunk.logprobs]
        measured = _measured(dict(logprobs[-1]), self.verdict_tokens) if logprobs else None
        if not token_ids or token_ids[-1] not in self.verdict_tokens.ids or measured is None:
            return Failed(**ids, reasoning=outcome.reasoning, reason=(
                f"no verdict after {outcome.end_reason.replace('_', ' ')}: the forced verdict step returned "
                f"token {token_ids[-1] if token_ids else None} and log-probabilities for "
                f"{sorted(logprobs[-1]) if logprobs else 'no tokens'}, not both verdict tokens"))
        outcome.verdict = token_ids[-1] == self.verdict_tokens.true_id
        outcome.logprobs = measured
        return outcome.judged(ids, prepared.truncated_passage, forced=True)


@dataclass(kw_only=True, slots=True)
class _Outcome:
    """What one generation gave; ``logprobs`` is set once the verdict is measured."""

    reasoning: str
    tokens: int
    end_reason: EndReason = "verdict"
    verdict: bool = False
    logprobs: tuple[float, float] | None = None

    @property
    def measured(self) -> bool:
        return self.logprobs is not None

    def judged(self, ids: dict[str, str], truncated_passage: bool, *, forced: bool = False) -> Judged:
        assert self.logprobs is not None
        lp_true, lp_false = self.logprobs
        return Judged(**ids, verdict=self.verdict, p_true=p_true(lp_true, lp_false), logprob_true=lp_true,
                      logprob_false=lp_false, reasoning=self.reasoning, tokens=self.tokens,
                      end_reason=self.end_reason, forced=forced, truncated_passage=truncated_passage)
