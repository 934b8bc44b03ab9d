"""Rerank every query of a batch, recording each judgment as it lands, with progress.

Judgments already recorded are not sent again; those a killed run finished but did not record come back
from the judgment cache (a ReasonRank query cut off mid-way replays its finished windows from it). Up to
``concurrency`` judgments reason at once across queries (rank1); ReasonRank runs that many queries at once,
each window after the previous.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from search.batch.inputs import BatchInputs, BatchQuery
from search.batch.store import BatchStore
from search.rerank.events import Failed, Judged, ListwiseEvent, RankingDone, WindowRanked
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker


@dataclass(kw_only=True, slots=True)
class BatchProgress:
    """Where a batch stands; ``tokens`` and the rate count only what this process reasoned."""

    queries: int
    documents: int
    queries_done: int = 0
    documents_done: int = 0
    resumed: int = 0
    """Documents already judged when this process started."""
    failed: int = 0
    replayed: int = 0
    tokens: int = 0
    started_at: float = field(default_factory=time.monotonic)

    @property
    def tokens_per_s(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.tokens / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at this process's pace so far, or None before it has judged anything."""
        new = self.documents_done - self.resumed
        if new <= 0:
            return None
        return (time.monotonic() - self.started_at) / new * (self.documents - self.documents_done)


Report = Callable[[BatchProgress], None]


def _pending(inputs: BatchInputs, store: BatchStore) -> tuple[list[BatchQuery], int]:
    """Each query still to rerank with only its documents not yet judged, and how many documents are judged."""
    judged = {(outcome.query_id, outcome.event.doc_id) for outcome in store.outcomes()
              if isinstance(outcome.event, Judged)}
    ranked = set(store.rankings())
    pending = []
    done = 0
    for item in inputs.queries:
        query_id = item.query.query_id
        if query_id in ranked:
            done += len(item.candidates)
            continue
        left = tuple(candidate for candidate in item.candidates if (query_id, candidate.passage.doc_id) not in judged)
        done += len(item.candidates) - len(left)
        if left:
            pending.append(BatchQuery(query=item.query, candidates=left))
    return pending, done


async def run_batch(inputs: BatchInputs, store: BatchStore, reranker: Rank1Reranker | ReasonRankReranker, *,
                    concurrency: int, report: Report) -> BatchProgress:
    """Rerank what is not yet done; ``report`` is called after every recorded judgment (or query)."""
    pending, done = _pending(inputs, store)
    progress = BatchProgress(queries=len(inputs.queries), documents=inputs.document_count, documents_done=done,
                             resumed=done, queries_done=len(inputs.queries) - len(pending))
    report(progress)
    if isinstance(reranker, ReasonRankReranker):
        parallel_queries = concurrency
        judge = _listwise_query
        slots = None
    else:
        top_k = max((len(item.candidates) for item in pending), default=1)
        parallel_queries = math.ceil(concurrency / top_k) + 1
        judge = _pointwise_query
        slots = asyncio.Semaphore(concurrency)
    waiting = iter(pending)

    async def worker() -> None:
        for item in waiting:  # shared by the workers: each takes the next query not yet taken
            await judge(item, store, reranker, slots, progress)
            progress.queries_done += 1
            report(progress)

    await asyncio.gather(*(worker() for _ in range(min(parallel_queries, len(pending)))))
    return progress


async def _pointwise_query(item: BatchQuery, store: BatchStore, reranker: Rank1Reranker,
                           slots: asyncio.Semaphore | None, progress: BatchProgress) -> None:
    query = item.query
    async for event in reranker.stream(query.text, item.candidates, instruction=query.instruction, slots=slots):
        if not isinstance(event, Judged | Failed):
            continue
        store.record(query.query_id, event)
        if isinstance(event, Judged):
            progress.documents_done += 1
            progress.replayed += event.from_cache
            progress.tokens += 0 if event.from_cache else event.tokens
        else:
            progress.failed += 1


async def _listwise_query(item: BatchQuery, store: BatchStore, reranker: ReasonRankReranker,
                          slots: asyncio.Semaphore | None, progress: BatchProgress) -> None:
    query = item.query
    events: list[ListwiseEvent] = []
    async for event in reranker.stream(query.text, item.candidates, instruction=query.instruction):
        events.append(event)
        if isinstance(event, WindowRanked) and not event.from_cache:
            progress.tokens += event.tokens
    if events and isinstance(events[-1], RankingDone):
        store.record_ranking(query.query_id, events)
        progress.documents_done += len(item.candidates)
