"""The state of one listwise (ReasonRank) run as its events arrive: the windows with their reasoning and
outcome, the list as the last finished window left it, and each document's trajectory across windows. Pure
logic: what the page shows, the API returns and the exports contain. ReasonRank gives ranks only; the one
score here (in rows and the TREC run) is derived from the rank and says so."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from search.rerank.base import Run, Status, Summary
from search.rerank.events import Event, RankingDone, WindowRanked, WindowReasoning, WindowStarted
from search.retrieval.ranking import Candidate


@dataclass(kw_only=True, slots=True)
class WindowState:
    started: WindowStarted
    reasoning: str = ""
    tokens: int = 0
    """New tokens streamed so far (the ranking's count replaces it once ranked)."""
    ranked: WindowRanked | None = None

    @property
    def window(self) -> int:
        return self.started.window

    @property
    def start(self) -> int:
        return self.started.start

    @property
    def end(self) -> int:
        return self.started.end


@dataclass(frozen=True, kw_only=True, slots=True)
class Move:
    """What one window did to one document: it was passage ``[label]`` of the window's prompt (what the window's
    reasoning calls it), at place ``before`` in the list, and the window's answer put it at ``after``."""

    window: int
    label: int
    before: int
    after: int


class ListwiseRun(Run):
    """Windows, the current order and trajectories of one query."""

    score_name = "rank-derived score (count − rank + 1)"

    def __init__(self, *, reranker: str, query: str, instruction: str, candidates: Sequence[Candidate],
                 window_count: int) -> None:
        super().__init__(reranker=reranker, query=query, instruction=instruction, candidates=candidates)
        self.window_count = window_count
        self.by_id = {candidate.passage.doc_id: candidate for candidate in self.candidates}
        self.order = list(self.by_id)
        self.windows: list[WindowState] = []
        self.trajectory = {doc_id: [position] for position, doc_id in enumerate(self.order, start=1)}
        """Each document's place (from 1) at the start, then after every window that held it."""
        self.judged: set[str] = set()
        """Documents some window ranked (not failed)."""
        self.done = False

    def apply(self, event: Event) -> None:
        if isinstance(event, WindowStarted):
            self.windows.append(WindowState(started=event))
        elif isinstance(event, WindowReasoning):
            self.windows[event.window].reasoning += event.text
            self.windows[event.window].tokens += event.tokens
        elif isinstance(event, WindowRanked):
            state = self.windows[event.window]
            state.ranked, state.reasoning = event, event.reasoning or state.reasoning
            self.order[state.start:state.end] = event.doc_ids
            for position, doc_id in enumerate(event.doc_ids, start=state.start + 1):
                self.trajectory[doc_id].append(position)
            if event.status != "failed":
                self.judged.update(event.doc_ids)
        elif isinstance(event, RankingDone):
            self.order, self.done = list(event.doc_ids), True
        summary = self.summary()
        self.settle(tokens=summary.tokens, writing=len(summary.writing), finished=summary.finished,
                    done=summary.done)

    def moves(self, doc_id: str) -> list[Move]:
        """The windows that ranked ``doc_id``, in order: why it sits where it does."""
        moves = []
        for state in self.windows:
            if state.ranked is not None and doc_id in state.started.doc_ids:
                given = state.started.doc_ids.index(doc_id)
                moves.append(Move(window=state.window, label=given + 1, before=state.start + given + 1,
                                  after=state.start + state.ranked.doc_ids.index(doc_id) + 1))
        return moves

    def active(self) -> WindowState | None:
        """The window the model is reasoning about now."""
        return next((state for state in self.windows if state.ranked is None), None)

    def summary(self) -> Summary:
        """Counted in windows: ``judged`` the ranked ones, ``failed`` those the engine failed."""
        ranked = [state.ranked for state in self.windows if state.ranked is not None]
        writing = tuple(state.tokens for state in self.windows if state.ranked is None and state.tokens)
        recent, per_unit = self.pace()
        return Summary(total=self.window_count, judged=sum(item.status != "failed" for item in ranked),
                       failed=sum(item.status == "failed" for item in ranked),
                       tokens=sum(item.tokens for item in ranked if not item.from_cache) + sum(writing),
                       prompt_tokens=sum(item.prompt_tokens for item in ranked if not item.from_cache),
                       writing=writing, lengths=tuple(item.tokens for item in ranked
                                                      if not item.from_cache and item.status != "failed"),
                       recent_tokens_per_s=recent, unit_tokens_per_s=per_unit, stopped=self.stopped,
                       elapsed_s=self.elapsed_s(), unit="windows")

    def status(self, doc_id: str) -> Status:
        if doc_id in self.judged:
            return "judged"
        if self.finished:
            return "failed"
        active = self.active()
        return "reasoning" if active and doc_id in self.order[active.start:active.end] else "waiting"

    def documents_done(self) -> int:
        return len(self.judged)

    def documents_failed(self) -> int:
        return len(self.candidates) - len(self.judged) if self.finished else 0

    def ordered(self, *, reranked: bool = True) -> list[Candidate]:
        """The list as the windows have left it so far (documents no window could rank last), or in first-stage
        order."""
        if not reranked:
            return list(self.candidates)
        failed = [doc_id for doc_id in self.order if self.status(doc_id) == "failed"]
        return [self.by_id[doc_id] for doc_id in self.order if doc_id not in failed] + [
            self.by_id[doc_id] for doc_id in failed]

    def score(self, doc_id: str) -> float | None:
        """count − rank + 1 in the current order, since ReasonRank gives no scores of its own."""
        if doc_id not in self.judged:
            return None
        ordered = [candidate.passage.doc_id for candidate in self.ordered()]
        return float(len(ordered) - ordered.index(doc_id))

    def relevance(self, doc_id: str) -> float | None:
        """(count − rank + 1) ÷ count: 1 for the first, 1/count for the last."""
        score = self.score(doc_id)
        return None if score is None else score / len(self.candidates)

    def failure(self, doc_id: str) -> str:
        if self.status(doc_id) != "failed":
            return ""
        return "; ".join(f"window {state.window + 1}: {state.ranked.failure}" for state in self.windows
                         if state.ranked is not None and doc_id in state.started.doc_ids)

    def details(self, doc_id: str) -> dict[str, Any]:
        return {"trajectory": list(self.trajectory[doc_id])}

    def holding(self, doc_id: str) -> WindowState | None:
        """The latest window that held ``doc_id`` (the active one, when it does)."""
        return next((state for state in reversed(self.windows) if doc_id in state.started.doc_ids), None)

    def reasoning_about(self, doc_id: str) -> str:
        state = self.holding(doc_id)
        return state.reasoning if state is not None else ""

    def trace_records(self) -> list[dict[str, Any]]:
        """One record per window: its trace and outcome."""
        records = []
        for state in self.windows:
            ranked = state.ranked
            records.append({"type": "window", "window": state.window, "start": state.start, "end": state.end,
                            "given": list(state.started.doc_ids), "status": ranked.status if ranked else "reasoning",
                            "ranked": list(ranked.doc_ids) if ranked else None,
                            "answer": ranked.answer if ranked else None,
                            "missing": list(ranked.missing) if ranked else None,
                            "duplicates": list(ranked.duplicates) if ranked else None,
                            "out_of_range": list(ranked.out_of_range) if ranked else None,
                            "failure": (ranked.failure or None) if ranked else None,
                            "tokens": ranked.tokens if ranked else None, "reasoning": state.reasoning})
        return records

    def describe(self, event: Event) -> str | None:
        if isinstance(event, WindowStarted):
            return f"window {event.window + 1}: positions {event.start + 1}–{event.end}"
        if isinstance(event, WindowRanked):
            details = [f"{name.replace('_', ' ')} {list(getattr(event, name))}"
                       for name in ("missing", "duplicates", "out_of_range") if getattr(event, name)]
            reason = f": {event.failure}" if event.failure else (f" ({', '.join(details)})" if details else "")
            return f"window {event.window + 1}: {event.status}{reason} ({event.tokens} tokens)"
        return None

    def durable(self, event: Event) -> tuple[Event, ...]:
        """Nothing until the ranking is done, then every window's start and outcome and the final order: a query cut
        off mid-way starts again, its finished windows replayed from the judgment cache."""
        if not isinstance(event, RankingDone):
            return ()
        windows = [item for state in self.windows for item in (state.started, state.ranked) if item is not None]
        return (*windows, event)

    def unfinished(self) -> tuple[Candidate, ...]:
        return () if self.done else self.candidates
