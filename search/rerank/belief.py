"""Belief probes: the verdict a pointwise reranker's model would give if its reasoning ended at a point, measured
while it reasons, with the reranker's own forced verdict step over the reasoning so far (a separate engine request:
nothing feeds back into the reasoning). One probe before any reasoning (the no-thinking verdict), then one each time
the reasoning reaches a multiple of ``every`` tokens (its end too, when it ends on one); one probe at a time per
document, in order of tokens. With an ``EarlyRule``, a settled belief stops the reasoning and its probe is the
verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from search.engines.base import EngineError
from search.rerank.events import BeliefPoint, Failed, Measured
from search.rerank.probe import EarlyRule

logger = logging.getLogger(__name__)

SENTENCE_ENDS = (".", "!", "?")


def cleaned_end(text: str) -> int:
    """Where the text a forced step keeps of ``text`` ends in it (``clean_reasoning``: trailing whitespace off, then
    cut after the last sentence end unless it ends with one): what a forced step reads of it."""
    kept = len(text.rstrip())
    if not text[:kept].endswith(SENTENCE_ENDS):
        end = max(text.rfind(mark, 0, kept) for mark in SENTENCE_ENDS)
        if end >= 0:
            return end + 1
    return kept


def verdict_of(point: BeliefPoint) -> int:
    """The verdict a belief stands for: the most likely of the reranker's verdicts (rank1: 1 true, 0 false) or
    grades (ties to the lower, as a greedy step at exactly 0.5 reads)."""
    return max(range(len(point.distribution)), key=lambda index: (point.distribution[index], -index))


@dataclass(frozen=True, kw_only=True, slots=True)
class BeliefPath:
    """A document's belief from before its reasoning to its verdict: the probes, then (once judged) the judgment
    itself, which read the whole reasoning. Every figure is the model's own, measured."""

    points: tuple[BeliefPoint, ...]
    judged: bool
    verdict: int | None = None
    """The judgment's own verdict (rank1: 1 true, 0 false; the assessor: its grade) once judged: at an exact tie of
    the two probabilities the model's greedy token decides, not ``verdict_of``."""

    @classmethod
    def of(cls, probes: Sequence[BeliefPoint], outcome: Measured | None) -> BeliefPath | None:
        """The path of ``probes`` and, when judged, ``outcome``; None without probes."""
        if not probes:
            return None
        if outcome is None:
            return cls(points=tuple(probes), judged=False)
        read = cleaned_end(outcome.reasoning) if outcome.forced else len(outcome.reasoning)
        final = BeliefPoint(tokens=outcome.tokens, offset=read, score=outcome.score, distribution=outcome.shares())
        return cls(points=(*probes, final), judged=True, verdict=outcome.verdict_index())

    def verdict_at(self, index: int) -> int:
        """The verdict of ``points[index]``: the judgment's own for the last point once judged."""
        if self.judged and self.verdict is not None and index in (-1, len(self.points) - 1):
            return self.verdict
        return verdict_of(self.points[index])

    @property
    def first(self) -> BeliefPoint:
        """The earliest probe: the no-thinking verdict when it was taken before any reasoning (``tokens`` 0)."""
        return self.points[0]

    @property
    def last(self) -> BeliefPoint:
        return self.points[-1]

    @property
    def changed(self) -> bool:
        """Reasoning changed the verdict: the judgment's differs from the no-thinking one."""
        return self.judged and self.first.tokens == 0 and verdict_of(self.first) != self.verdict_at(-1)

    @property
    def settled_at(self) -> int:
        """The reasoning tokens from which every later probe, and the judgment, gave the final verdict."""
        final = self.verdict_at(-1)
        settled = self.last.tokens
        for index in range(len(self.points) - 1, -1, -1):
            if self.verdict_at(index) != final:
                break
            settled = self.points[index].tokens
        return settled

    def steepest(self) -> tuple[BeliefPoint, BeliefPoint] | None:
        """The two neighbouring points between which the score moved most (the reasoning between their offsets
        moved it), or None with fewer than two."""
        pairs = list(zip(self.points, self.points[1:], strict=False))
        return max(pairs, key=lambda pair: abs(pair[1].score - pair[0].score), default=None)

Measure = Callable[[str, int], Awaitable[Measured | Failed]]
"""The forced verdict after the reasoning's text so far and its tokens (``PointwiseReranker.forced``); ``reads``
says how much of that text it reads (``cleaned_end``)."""


class BeliefProbes:
    """One document's probes while its reasoning streams: ``reasoned`` with each piece of it, then ``finish``."""

    def __init__(self, *, every: int, measure: Measure, reads: Callable[[str], int],
                 emit: Callable[[BeliefPoint], None], rule: EarlyRule | None = None) -> None:
        self.every = every
        self.points: list[BeliefPoint] = []
        self.settled: Measured | None = None
        """The early verdict, once the rule has found the belief settled (its probe's forced verdict)."""
        self._measure, self._reads, self._emit, self._rule = measure, reads, emit, rule
        self._text, self._tokens, self._next = "", 0, 0
        self._stop: Callable[[], None] = lambda: None
        self._running: Callable[[], bool] = lambda: False
        self._queue: asyncio.Queue[tuple[str, int] | None] = asyncio.Queue()
        self._worker: asyncio.Task | None = None

    def start(self, stop: Callable[[], None], running: Callable[[], bool]) -> None:
        """Probe the no-thinking verdict now; ``stop`` ends the reasoning when the belief settles while it is
        ``running`` (a reasoning that has ended is judged in full)."""
        self._stop, self._running = stop, running
        self._worker = asyncio.create_task(self._work())
        self._probe()

    def reasoned(self, text: str, tokens: int) -> None:
        self._text += text
        self._tokens += tokens
        if self._tokens >= self._next:
            self._probe()

    def _probe(self) -> None:
        self._queue.put_nowait((self._text, self._tokens))
        self._next = (self._tokens // self.every + 1) * self.every

    async def finish(self) -> tuple[BeliefPoint, ...]:
        """Every probe, once those still queued have been measured: all of them when the reasoning ended by itself;
        up to the settled one after an early verdict (the probing stopped there)."""
        self._queue.put_nowait(None)
        if self._worker is not None:
            await self._worker
        return tuple(self.points)

    async def close(self) -> None:
        """End the probes now (the judgment failed or was cancelled). A cancellation of the caller meanwhile is not
        swallowed: it is raised once the worker has ended."""
        if self._worker is not None and not self._worker.done():
            self._worker.cancel()
            await asyncio.wait({self._worker})

    async def _work(self) -> None:
        while (probe := await self._queue.get()) is not None:
            text, tokens = probe
            try:
                outcome = await self._measure(text, tokens)
            except EngineError as error:
                logger.warning("belief probe at %d tokens failed: %s", tokens, error)
                continue
            if isinstance(outcome, Failed):
                logger.warning("belief probe at %d tokens: %s", tokens, outcome.reason)
                continue
            point = BeliefPoint(tokens=tokens, offset=self._reads(text), score=outcome.score,
                                distribution=outcome.shares())
            self.points.append(point)
            self._emit(point)
            if (self._rule is not None and self._running()
                    and self._rule.settled([point.score for point in self.points])):
                self.settled = dataclasses.replace(outcome, belief=())
                self._stop()
                return  # the probes after the settled one would only delay the early verdict
