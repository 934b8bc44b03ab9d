"""Rerank every query of a batch, recording each judgment as it lands, with progress.

Each query's run keeps what it must (``Run.durable``); on a restart those events are folded back and only what
the run still lacks is sent again (``Run.unfinished``). What a killed run finished but did not keep comes back
from the judgment cache (a ReasonRank query cut off mid-way replays its finished windows from it). Up to
``concurrency`` engine requests are in flight at once, across queries.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from search.batch.inputs import BatchInputs, BatchQuery
from search.batch.store import BatchStore
from search.rerank.base import Reranker, Run
from search.retrieval.ranking import Candidate


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
    """Documents whose last try failed (they are tried again on the next start)."""
    replayed: int = 0
    """Kept outcomes (judgments, windows) read from the judgment cache instead of reasoned again."""
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


@dataclass(frozen=True, kw_only=True, slots=True)
class _Work:
    """One query still to rerank: its run (with what the batch kept folded in) and the candidates to send."""

    item: BatchQuery
    run: Run
    todo: tuple[Candidate, ...]


async def run_batch(inputs: BatchInputs, store: BatchStore, reranker: Reranker, *, concurrency: int,
                    report: Report) -> BatchProgress:
    """Rerank what is not yet done; ``report`` is called after every kept event (and query). At most
    ``concurrency`` engine requests are in flight, across as many queries as it takes to keep them busy."""
    kept = store.kept_by_query()
    work = []
    done = failed = 0
    for item in inputs.queries:
        run = reranker.start_run(item.query.text, item.candidates, instruction=item.query.instruction)
        for event in kept.get(item.query.query_id, []):
            run.apply(event)
        done, failed = done + run.documents_done(), failed + run.documents_failed()
        if todo := run.unfinished():
            work.append(_Work(item=item, run=run, todo=todo))
    progress = BatchProgress(queries=len(inputs.queries), documents=inputs.document_count, documents_done=done,
                             resumed=done, failed=failed, queries_done=len(inputs.queries) - len(work))
    report(progress)
    widest = max((reranker.requests_per_query(len(item.todo)) for item in work), default=1)
    slots = asyncio.Semaphore(concurrency)
    waiting = iter(work)

    async def worker() -> None:
        for item in waiting:  # shared by the workers: each takes the next query not yet taken
            await _rerank_query(item, store, reranker, slots, progress, report)
            progress.queries_done += 1
            report(progress)

    await asyncio.gather(*(worker() for _ in range(min(math.ceil(concurrency / widest) + 1, len(work)))))
    return progress


async def _rerank_query(work: _Work, store: BatchStore, reranker: Reranker, slots: asyncio.Semaphore,
                        progress: BatchProgress, report: Report) -> None:
    query, run = work.item.query, work.run
    async for event in reranker.stream(query.text, work.todo, instruction=query.instruction, slots=slots):
        before = (run.documents_done(), run.documents_failed(), run.summary().tokens)
        run.apply(event)
        kept = run.durable(event)
        for item in kept:
            store.record(query.query_id, item)
        after = (run.documents_done(), run.documents_failed(), run.summary().tokens)
        progress.documents_done += after[0] - before[0]
        progress.failed += after[1] - before[1]
        progress.tokens += after[2] - before[2]
        progress.replayed += sum(bool(getattr(item, "from_cache", False)) for item in kept)
        if kept:
            report(progress)
