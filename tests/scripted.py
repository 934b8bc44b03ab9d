"""A scripted engine and candidates for the rerankers' pure-logic tests; the real engines run the same code in
test_engines.py."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Sequence

from search.corpus import Passage
from search.engines.base import Engine, GenerationChunk, GenerationRequest
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




def reversing(request: GenerationRequest) -> list[GenerationChunk]:
    """A scripted ReasonRank: reasons briefly, then answers its window reversed; the answer's end is the stop
    string, as vLLM ends."""
    count = len(re.findall(r"^\[\d+\] ", request.prompt, re.MULTILINE))
    answer = " > ".join(f"[{number}]" for number in range(count, 0, -1))
    return [GenerationChunk(text="<think>reversing", token_ids=(1,), logprobs=({},)),
            GenerationChunk(text=f"</think> <answer>{answer}", token_ids=(2,), logprobs=({},), finish_reason="stop",
                            stop_reason="</answer>")]
