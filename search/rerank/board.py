"""The state of one rerank run as its events arrive: what the page shows, what the API returns and what the
exports contain. Pure logic: it folds ``RerankEvent``s and renders nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from search.evaluation import format_trec_run
from search.rerank.events import Failed, Judged, Reasoning, RerankEvent, Started
from search.retrieval.ranking import Candidate

Status = Literal["waiting", "reasoning", "judged", "failed"]


@dataclass(kw_only=True, slots=True)
class DocumentState:
    """One candidate document: its first-stage place and what the reranker has said so far."""

    candidate: Candidate
    status: Status = "waiting"
    reasoning: str = ""
    judged: Judged | None = None
    failure: str = ""

    @property
    def doc_id(self) -> str:
        return self.candidate.passage.doc_id

    @property
    def first_stage_rank(self) -> int:
        return self.candidate.rank


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    total: int
    judged: int
    failed: int
    tokens: int
    elapsed_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def finished(self) -> bool:
        return self.judged + self.failed == self.total


@dataclass(kw_only=True, slots=True)
class Board:
    """Every candidate's state for one query, updated event by event."""

    query: str
    instruction: str
    candidates: Sequence[Candidate]
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    documents: dict[str, DocumentState] = field(init=False)

    def __post_init__(self) -> None:
        self.documents = {candidate.passage.doc_id: DocumentState(candidate=candidate)
                          for candidate in self.candidates}

    def apply(self, event: RerankEvent) -> None:
        state = self.documents[event.doc_id]
        if isinstance(event, Started):
            state.status = "reasoning"
        elif isinstance(event, Reasoning):
            state.reasoning += event.text
        elif isinstance(event, Judged):
            state.status, state.judged, state.reasoning = "judged", event, event.reasoning
        elif isinstance(event, Failed):
            state.status, state.failure, state.reasoning = "failed", event.reason, event.reasoning or state.reasoning
        if self.finished_at is None and self.summary().finished:
            self.finished_at = time.monotonic()

    def ordered(self, *, by_probability: bool = True) -> list[DocumentState]:
        """Judged documents by P(true) (ties in first-stage order), then those still reasoning or waiting, then
        failures, each group in first-stage order; or simply first-stage order."""
        states = sorted(self.documents.values(), key=lambda state: state.first_stage_rank)
        if not by_probability:
            return states
        group = {"judged": 0, "reasoning": 1, "waiting": 1, "failed": 2}
        return sorted(states, key=lambda state: (group[state.status],
                                                 -(state.judged.p_true if state.judged else 0.0)))

    def reranked_positions(self) -> dict[str, int]:
        """Each judged document's place among the judged, from 1."""
        judged = [state for state in self.ordered() if state.judged is not None]
        return {state.doc_id: position for position, state in enumerate(judged, start=1)}

    def summary(self) -> Summary:
        states = self.documents.values()
        end = self.finished_at or time.monotonic()
        return Summary(
            total=len(self.documents), judged=sum(state.status == "judged" for state in states),
            failed=sum(state.status == "failed" for state in states),
            tokens=sum(state.judged.tokens for state in states if state.judged and not state.judged.from_cache),
            elapsed_s=end - self.started_at,
        )

    def rows(self) -> list[dict[str, Any]]:
        """The current list, best first, as plain data (the API's answer and the JSONL export)."""
        rows = []
        for position, state in enumerate(self.ordered(), start=1):
            judged = state.judged
            rows.append({
                "rank": position, "doc_id": state.doc_id, "passage_id": state.candidate.passage.passage_id,
                "first_stage_rank": state.first_stage_rank, "status": state.status,
                "p_true": judged.p_true if judged else None, "verdict": judged.verdict if judged else None,
                "forced": judged.forced if judged else None, "end_reason": judged.end_reason if judged else None,
                "truncated_passage": judged.truncated_passage if judged else None,
                "from_cache": judged.from_cache if judged else None, "tokens": judged.tokens if judged else None,
                "failure": state.failure or None, "reasoning": state.reasoning,
            })
        return rows

    def jsonl(self, *, query_id: str | None = None) -> str:
        head = {**({"query_id": query_id} if query_id is not None else {}), "query": self.query,
                "instruction": self.instruction}
        return "".join(json.dumps({**head, **row}, ensure_ascii=False) + "\n" for row in self.rows())

    def scores(self) -> dict[str, float]:
        """Judged documents scored by P(true); documents without a verdict follow in first-stage order with
        score -(first-stage rank), which no probability can be mistaken for."""
        return {state.doc_id: state.judged.p_true if state.judged else -float(state.first_stage_rank)
                for state in self.ordered()}

    def trec_run(self, *, query_id: str = "query", tag: str = "explainable-search-rank1") -> str:
        return format_trec_run({query_id: self.scores()}, tag)
