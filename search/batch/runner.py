"""Rerank every query of a batch, recording each judgment as it lands, with progress.

Each query's run keeps what it must (``Run.durable``); on a restart those events are folded back and only what
the run still lacks is sent again (``Run.unfinished``). What a killed run finished but did not keep comes back
from the judgment cache (a ReasonRank query cut off mid-way replays its finished windows from it; on Ray the
driver keeps the entries its workers wrote, search/batch/cluster.py). Up to ``concurrency`` engine requests are
in flight at once, across queries.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from search.batch.inputs import BatchInputs, BatchQuery
from search.batch.store import BatchStore
from search.rerank.base import Reranker, Run
from search.rerank.events import Event
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


Report = Callable[[BatchProgress], None]



@dataclass(frozen=True, kw_only=True, slots=True)
class Work:
    """One query still to rerank: its run (with what the batch kept folded in) and the candidates to send."""

    item: BatchQuery
    run: Run
    todo: tuple[Candidate, ...]
    counted: int = 0
    """Documents of this query the progress has already counted (by an earlier try): not counted again."""

    def again(self, store: BatchStore, new_run: Callable[[BatchQuery], Run]) -> Work:
        """The same query after a lost worker: a fresh run with what the batch kept of it (the lost stream's
        half-told events are dropped, so the next stream's are not folded on top of them), sending only what that
        run lacks; what the lost try counted stays counted, once."""
        run = kept_run(self.item, store.kept_by_query().get(self.item.query.query_id, []), new_run)
        return Work(item=self.item, run=run, todo=run.unfinished(),
                    counted=max(self.counted, self.run.documents_done()))


def kept_run(item: BatchQuery, kept: list[Event], new_run: Callable[[BatchQuery], Run]) -> Run:
    """A fresh run of ``item`` (``new_run``) with the events the batch kept of it folded in."""
    run = new_run(item)
    for event in kept:
        run.apply(event)
    return run


def plan_batch(inputs: BatchInputs, store: BatchStore, new_run: Callable[[BatchQuery], Run]
               ) -> tuple[list[Work], BatchProgress]:
    """Each query with what the batch kept folded into a fresh run (``new_run``), those with anything left to do,
    and the progress so far."""
    kept = store.kept_by_query()
    work = []
    done = failed = 0
    for item in inputs.queries:
        run = kept_run(item, kept.get(item.query.query_id, []), new_run)
        done, failed = done + run.documents_done(), failed + run.documents_failed()
        if todo := run.unfinished():
            work.append(Work(item=item, run=run, todo=todo))
    progress = BatchProgress(queries=len(inputs.queries), documents=inputs.document_count, documents_done=done,
                             resumed=done, failed=failed, queries_done=len(inputs.queries) - len(work))
    return work, progress


async def run_batch(inputs: BatchInputs, store: BatchStore, reranker: Reranker, *, concurrency: int,
                    report: Report) -> BatchProgress:
    """Rerank what is not yet done; ``report`` is called after every kept event (and query). At most
    ``concurrency`` engine requests are in flight, across as many queries as it takes to keep them busy."""
    work, progress = plan_batch(inputs, store, lambda item: reranker.start_run(
        item.query.text, item.candidates, instruction=item.query.instruction))
    report(progress)
    slots = asyncio.Semaphore(concurrency)
    waiting = iter(work)

    async def worker() -> None:
        for item in waiting:  # shared by the workers: each takes the next query not yet taken
            query = item.item.query
            await rerank_query(item, store, reranker.stream(query.text, item.todo, instruction=query.instruction,
                                                            slots=slots), progress, report)
            progress.queries_done += 1
            report(progress)

    lanes = query_lanes(concurrency, max((reranker.requests_per_query(len(item.todo)) for item in work), default=1))
    await asyncio.gather(*(worker() for _ in range(min(lanes, len(work)))))
    return progress


def query_lanes(concurrency: int, widest: int) -> int:
    """How many queries to stream at once to keep ``concurrency`` requests busy when one query sends at most
    ``widest`` at a time: one more than fill them, so the next query is ready when one ends."""
    return math.ceil(concurrency / widest) + 1


async def rerank_query(work: Work, store: BatchStore, events: AsyncIterator[Event], progress: BatchProgress,
                       report: Report) -> None:
    """Fold one query's ``events`` into its run, keeping (and counting) what the run says to keep as it lands."""
    query, run = work.item.query, work.run
    async for event in events:
        before = (run.documents_done(), run.documents_failed(), run.summary().tokens)
        run.apply(event)
        kept = run.durable(event)
        for item in kept:
            store.record(query.query_id, item)
        after = (run.documents_done(), run.documents_failed(), run.summary().tokens)
        progress.documents_done += max(after[0], work.counted) - max(before[0], work.counted)
        progress.failed += after[1] - before[1]
        progress.tokens += after[2] - before[2]
        progress.replayed += sum(bool(getattr(item, "from_cache", False)) for item in kept)
        if kept:
            report(progress)
