"""The one event vocabulary of a rerank run, shared by the page, the command line and the API.

For each candidate a run emits ``Started``, any number of ``Reasoning`` deltas, then exactly one ``Judged``
or ``Failed``. Events of different candidates interleave; the order within one candidate is fixed.
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


def event_to_json(event: RerankEvent) -> dict[str, Any]:
    """A JSON object with the event's ``type`` first, for JSON lines and the API."""
    return {"type": event.type, **dataclasses.asdict(event)}
