"""The one event vocabulary of a rerank run, shared by the page, the command line and the API.

Pointwise (rank1): for each candidate a run emits ``Started``, any number of ``Reasoning`` deltas, then exactly
one ``Judged`` or ``Failed``. Events of different candidates interleave; the order within one candidate is fixed.

Listwise (ReasonRank): for each window in turn, ``WindowStarted``, ``WindowReasoning`` deltas and one
``WindowRanked``; then one ``RankingDone``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

EndReason = Literal["verdict", "budget", "end_of_sequence", "missing_logprobs", "cache"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Started:
    """The candidate's request went to the engine (or its judgment was found in the cache)."""

    type: ClassVar[str] = "started"
    doc_id: str
    passage_id: str
    first_stage_rank: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Reasoning:
    """New reasoning text, as the model writes it."""

    type: ClassVar[str] = "reasoning"
    doc_id: str
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Judged:
    """The model's verdict and P(true) = exp(lp_true) / (exp(lp_true) + exp(lp_false)), both log-probabilities
    measured at the verdict position.

    ``forced`` means the model did not give a verdict on its own (``end_reason`` says why) and the verdict
    was read from one extra step restricted to the two verdict tokens, after cutting the reasoning at its
    last sentence end. ``truncated_passage`` means the passage was cut to fit the context window.
    """

    type: ClassVar[str] = "judged"
    doc_id: str
    passage_id: str
    verdict: bool
    p_true: float
    logprob_true: float
    logprob_false: float
    reasoning: str
    tokens: int
    end_reason: EndReason
    forced: bool
    truncated_passage: bool
    from_cache: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed:
    """No verdict could be measured; ``reason`` says why. Nothing is made up in its place."""

    type: ClassVar[str] = "failed"
    doc_id: str
    passage_id: str
    reason: str
    reasoning: str = ""


RerankEvent = Started | Reasoning | Judged | Failed

WindowStatus = Literal["ok", "repaired", "truncated", "failed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowStarted:
    """A listwise window went to the engine: ``doc_ids`` in their current order, positions ``start`` to
    ``end`` (0-based, end excluded) of the list being reranked. Windows are numbered in processing order."""

    type: ClassVar[str] = "window_started"
    window: int
    start: int
    end: int
    doc_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowReasoning:
    """New reasoning text of one window, as the model writes it."""

    type: ClassVar[str] = "reasoning"
    window: int
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowRanked:
    """The window's new order, read only from the model's ``<answer>`` after ``</think>``.

    ``ok``: a full permutation. ``repaired``: ``duplicates`` and ``out_of_range`` identifiers (1-based, as the
    model wrote them) were dropped and ``missing`` ones appended in their prior order. ``truncated``: no answer
    (the budget ran out, or the model never answered), so the window keeps its order. ``failed``: the engine
    failed (``failure`` says why); the order is kept too. ``from_cache``: the same prompt was answered before
    and its response was read again, not generated.
    """

    type: ClassVar[str] = "window_ranked"
    window: int
    status: WindowStatus
    doc_ids: tuple[str, ...]
    answer: str
    missing: tuple[int, ...] = ()
    duplicates: tuple[int, ...] = ()
    out_of_range: tuple[int, ...] = ()
    reasoning: str = ""
    tokens: int = 0
    failure: str = ""
    from_cache: bool = False


@dataclass(frozen=True, kw_only=True, slots=True)
class RankingDone:
    """Every window has been ranked: the final order of the candidates, best first. Ranks only; ReasonRank
    gives no probabilities."""

    type: ClassVar[str] = "done"
    doc_ids: tuple[str, ...]


ListwiseEvent = WindowStarted | WindowReasoning | WindowRanked | RankingDone


def event_to_json(event: RerankEvent | ListwiseEvent) -> dict[str, Any]:
    """A JSON object with the event's ``type`` first, for JSON lines and the API."""
    return {"type": event.type, **dataclasses.asdict(event)}
