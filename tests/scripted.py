"""A scripted engine, candidates, and a scripted model for each reranker, for the rerankers' pure-logic tests; the
real engines run the same code in test_engines.py and test_rerankers.py."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator, Callable, Sequence

from search.corpus import Passage
from search.engines.base import Engine, EngineError, GenerationChunk, GenerationRequest
from search.rerank.assessor import ANSWER, AssessorReranker, GradeTokens
from search.rerank.base import Reranker
from search.rerank.rank1 import STOP_FALSE, STOP_TRUE, Rank1Reranker, VerdictTokens
from search.rerank.reasonrank import ReasonRankReranker
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate, Hit

Script = Callable[[GenerationRequest], Sequence[GenerationChunk] | Exception]


class ScriptedEngine(Engine):
    """Answers each request from a script, one chunk per loop turn, and records what it was asked."""

    kind = "scripted"
    model = "scripted"

    def __init__(self, tokenizer: object, script: Script, *, max_model_len: int = 2048, pause_s: float = 0.0):
        super().__init__()
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.script = script
        self.pause_s = pause_s
        self.requests: list[GenerationRequest] = []
        self.aborted: list[GenerationRequest] = []
        self.running = 0

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        self.running += 1
        try:
            result = self.script(request)
            if isinstance(result, Exception):
                raise result
            for chunk in result:
                await asyncio.sleep(self.pause_s)
                yield chunk
        except asyncio.CancelledError:
            self.aborted.append(request)
            raise
        finally:
            self.running -= 1

    def active_requests(self) -> int:
        return self.running

    async def _shutdown(self) -> None:
        return None


def candidate(doc_id: str, text: str, rank: int = 1, title: str = "") -> Candidate:
    passage = Passage(passage_id=f"{doc_id}#0", doc_id=doc_id, index=0, title=title, text=text)
    return Candidate(passage=passage, stage="bm25", provenance={"bm25": Hit(rank=rank, score=10.0 - rank)})


def tokens_of(tokenizer: object, text: str, logprobs: dict[int, dict[int, float]] | None = None
              ) -> list[GenerationChunk]:
    """``text`` as a real model streams it: one chunk per token of ``tokenizer`` (ids and text that agree), with
    ``logprobs[position]`` at the positions given."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    chunks, shown = [], ""
    for position in range(len(ids)):
        decoded = tokenizer.decode(ids[: position + 1])
        chunks.append(GenerationChunk(text=decoded[len(shown):], token_ids=(ids[position],),
                                      logprobs=((logprobs or {}).get(position, {}),)))
        shown = decoded
    return chunks


def rank1_judge(tokenizer: object) -> Script:
    """A scripted rank1: reasons a sentence, then answers true with P(true) 0.8 (the stop string ends there)."""
    verdict = VerdictTokens.of(tokenizer)
    logprobs = {verdict.true_id: math.log(0.8), verdict.false_id: math.log(0.2)}

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            return [GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs,),
                                    finish_reason="length")]
        return [*tokens_of(tokenizer, "The passage names the moons."),
                GenerationChunk(text="", token_ids=(verdict.true_id,), logprobs=(logprobs,), finish_reason="stop",
                                stop_reason=STOP_TRUE)]

    return script


GRADE_SHARES = (0.1, 0.2, 0.6, 0.1)
"""What the scripted assessor answers: grade 2 most likely, expected grade 1.7."""


def grading(tokenizer: object) -> Script:
    """A scripted assessor: reasons a line, then writes ``##final score: 2`` with the grade tokens'
    log-probabilities at the grade position, and would go on writing (the assessor stops reading there)."""
    grades = GradeTokens.of(tokenizer)
    logprobs = {token: math.log(share) for token, share in zip(grades.bare, GRADE_SHARES, strict=True)}

    def script(request: GenerationRequest) -> list[GenerationChunk]:
        if request.allowed_token_ids:
            return [GenerationChunk(text="", token_ids=(grades.bare[2],), logprobs=(logprobs,),
                                    finish_reason="length")]
        text = f"M: the passage answers it.\n{ANSWER} 2"
        at = len(tokenizer(text, add_special_tokens=False).input_ids) - 1
        return [*tokens_of(tokenizer, text, {at: logprobs}), *tokens_of(tokenizer, "\nMore text."),
                GenerationChunk(text="", token_ids=(), logprobs=(), finish_reason="stop")]

    return script

def reversing(request: GenerationRequest) -> list[GenerationChunk]:
    """A scripted ReasonRank: reasons briefly, then answers its window reversed; the answer's end is the stop
    string, as vLLM ends."""
    count = len(re.findall(r"^\[\d+\] ", request.prompt, re.MULTILINE))
    answer = " > ".join(f"[{number}]" for number in range(count, 0, -1))
    return [GenerationChunk(text="<think>reversing", token_ids=(1,), logprobs=({},)),
            GenerationChunk(text=f"</think> <answer>{answer}", token_ids=(2,), logprobs=({},), finish_reason="stop",
                            stop_reason="</answer>")]


SCRIPTS: dict[type[Reranker], Callable[[object], Script]] = {
    Rank1Reranker: rank1_judge, AssessorReranker: grading, ReasonRankReranker: lambda tokenizer: reversing}
"""A scripted model for every registered reranker, by its class."""


def scripted_model(name: str, tokenizer: object) -> Script:
    """The scripted model of the reranker called ``name``."""
    return SCRIPTS[reranker_class(name)](tokenizer)


class Judge:
    """A scripted rank1: "good" passages get P(true) 0.8 (a verdict), others 0.2 (forced); passages named in
    ``failing`` make the engine fail."""

    def __init__(self, verdict: VerdictTokens, failing: tuple[str, ...] = ()) -> None:
        self.verdict = verdict
        self.failing = failing

    def __call__(self, request: GenerationRequest) -> list[GenerationChunk] | Exception:
        if any(f"text of {doc_id}\n" in request.prompt for doc_id in self.failing):
            return EngineError("server gone")
        good = "good" in request.prompt.split("Passage:")[-1]
        logprobs = {self.verdict.true_id: math.log(0.8 if good else 0.2),
                    self.verdict.false_id: math.log(0.2 if good else 0.8)}
        token = self.verdict.true_id if good else self.verdict.false_id
        if request.allowed_token_ids:  # the forced verdict step
            return [GenerationChunk(text="", token_ids=(token,), logprobs=(logprobs,), finish_reason="length")]
        thinking = GenerationChunk(text="thinking.", token_ids=(11,), logprobs=({},))
        if not good:
            return [thinking, GenerationChunk(text="", token_ids=(12,), logprobs=({},), finish_reason="length")]
        return [thinking, GenerationChunk(text="", token_ids=(token,), logprobs=(logprobs,), finish_reason="stop",
                                          stop_reason=STOP_TRUE if good else STOP_FALSE)]
