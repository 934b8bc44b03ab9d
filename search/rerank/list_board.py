"""The state of one listwise (ReasonRank) run as its events arrive: the windows with their reasoning and
outcome, the list as the last finished window left it, and each document's trajectory across windows. Pure
logic, the listwise counterpart of ``Board``: what the page shows, the API returns and the exports contain.
ReasonRank gives ranks only; the one score here (in the TREC run) is derived from the rank and says so."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from search.evaluation import format_trec_run
from search.rerank.board import Summary
from search.rerank.events import ListwiseEvent, RankingDone, WindowRanked, WindowReasoning, WindowStarted
from search.retrieval.ranking import Candidate


@dataclass(kw_only=True, slots=True)
class WindowState:
    window: int
    start: int
    end: int
    doc_ids: tuple[str, ...]
    """In the order the window was given."""
    reasoning: str = ""
    ranked: WindowRanked | None = None


@dataclass(kw_only=True, slots=True)
class ListBoard:
    query: str
    instruction: str
    candidates: Sequence[Candidate]
    window_count: int
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    order: list[str] = field(init=False)
    windows: list[WindowState] = field(default_factory=list)
    trajectory: dict[str, list[int]] = field(init=False)
    """Each document's place (from 1) at the start, then after every window that held it."""

    def __post_init__(self) -> None:
        self.order = [candidate.passage.doc_id for candidate in self.candidates]
        self.trajectory = {doc_id: [position] for position, doc_id in enumerate(self.order, start=1)}

    @property
    def by_id(self) -> dict[str, Candidate]:
        return {candidate.passage.doc_id: candidate for candidate in self.candidates}

    def apply(self, event: ListwiseEvent) -> None:
        if isinstance(event, WindowStarted):
            self.windows.append(WindowState(window=event.window, start=event.start, end=event.end,
                                            doc_ids=event.doc_ids))
        elif isinstance(event, WindowReasoning):
            self.windows[event.window].reasoning += event.text
        elif isinstance(event, WindowRanked):
            state = self.windows[event.window]
            state.ranked, state.reasoning = event, event.reasoning or state.reasoning
            self.order[state.start:state.end] = event.doc_ids
            for position, doc_id in enumerate(event.doc_ids, start=state.start + 1):
                self.trajectory[doc_id].append(position)
        elif isinstance(event, RankingDone):
            self.order = list(event.doc_ids)
            self.finished_at = time.monotonic()

    def active(self) -> WindowState | None:
        """The window the model is reasoning about now."""
        return next((state for state in self.windows if state.ranked is None), None)

    def ordered(self, *, reranked: bool = True) -> list[Candidate]:
        """The list as the windows have left it so far, or in first-stage order."""
        by_id = self.by_id
        return [by_id[doc_id] for doc_id in self.order] if reranked else list(self.candidates)

    def summary(self) -> Summary:
        """Counted in windows: ``judged`` the ranked ones, ``failed`` those the engine failed."""
        ranked = [state.ranked for state in self.windows if state.ranked is not None]
        end = self.finished_at or time.monotonic()
        return Summary(total=self.window_count, judged=sum(item.status != "failed" for item in ranked),
                       failed=sum(item.status == "failed" for item in ranked),
                       tokens=sum(item.tokens for item in ranked if not item.from_cache),
                       elapsed_s=end - self.started_at)

    def rows(self) -> list[dict[str, Any]]:
        """The current list, best first, as plain data: ranks and trajectories, no probabilities."""
        return [{"rank": position, "doc_id": candidate.passage.doc_id, "passage_id": candidate.passage.passage_id,
                 "first_stage_rank": candidate.rank, "trajectory": list(self.trajectory[candidate.passage.doc_id])}
                for position, candidate in enumerate(self.ordered(), start=1)]

    def window_rows(self) -> list[dict[str, Any]]:
        rows = []
        for state in self.windows:
            ranked = state.ranked
            rows.append({"window": state.window, "start": state.start, "end": state.end, "given": list(state.doc_ids),
                         "status": ranked.status if ranked else "reasoning",
                         "ranked": list(ranked.doc_ids) if ranked else None,
                         "answer": ranked.answer if ranked else None,
                         "missing": list(ranked.missing) if ranked else None,
                         "duplicates": list(ranked.duplicates) if ranked else None,
                         "out_of_range": list(ranked.out_of_range) if ranked else None,
                         "failure": (ranked.failure or None) if ranked else None,
                         "tokens": ranked.tokens if ranked else None, "reasoning": state.reasoning})
        return rows

    def jsonl(self, *, query_id: str | None = None) -> str:
        """One line per window (its trace and outcome), then one per document in the final order."""
        head = {**({"query_id": query_id} if query_id is not None else {}), "query": self.query,
                "instruction": self.instruction}
        lines = [{**head, "type": "window", **row} for row in self.window_rows()]
        lines += [{**head, "type": "document", **row} for row in self.rows()]
        return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)

    def scores(self) -> dict[str, float]:
        """The list in its reranked order; the score is derived from the rank (count − rank + 1), since
        ReasonRank gives no scores of its own."""
        count = len(self.order)
        return {doc_id: float(count - position) for position, doc_id in enumerate(self.order)}

    def trec_run(self, *, query_id: str = "query", tag: str = "explainable-search-reasonrank") -> str:
        return format_trec_run({query_id: self.scores()}, tag)
