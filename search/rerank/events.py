"""The one event vocabulary of a rerank run, shared by the page, the command line, the API and batch runs.

Every event carries the same envelope: ``type`` (a tag no two events share), ``reranker`` (the name of the
reranker that emitted it) and what it is about, ``doc_id`` (pointwise rerankers) or ``window`` (listwise).

Pointwise (rank1, the assessor): for each candidate ``Started``, any number of ``Reasoning`` deltas, then exactly
one outcome: ``Judged`` (rank1's verdict and P(true)), ``Graded`` (the assessor's 0–3 grade distribution) or
``Failed``. Events of different candidates interleave; the order within one candidate is fixed.

Listwise (ReasonRank): for each window in turn ``WindowStarted``, ``WindowReasoning`` deltas and one
``WindowRanked``; then one ``RankingDone``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

EndReason = Literal["verdict", "grade", "budget", "end_of_sequence", "not_a_grade", "missing_logprobs"]
"""Why a pointwise judgment ended: the model's own verdict (rank1) or grade (assessor); or, for a forced one,
what went wrong: the budget ran out, the model stopped, its answer line held no grade, or the engine returned
no log-probabilities for the answer tokens."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Started:
    """The candidate's request went to the engine (or its judgment was found in the cache)."""

    type: ClassVar[str] = "started"
    reranker: str
    doc_id: str
    passage_id: str
    first_stage_rank: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Reasoning:
    """New reasoning text about one candidate, as the model writes it."""

    type: ClassVar[str] = "reasoning"
    reranker: str
    doc_id: str
    text: str
    tokens: int = 0
    """New tokens the text came from (0 when replayed from the judgment cache): the live tokens/s."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Measured:
    """What every measured pointwise judgment carries besides its own numbers.

    ``forced`` means the model did not answer on its own (``end_reason`` says why) and the answer was read from
    one extra step after closing its reasoning. ``truncated_passage`` means the passage was cut to fit the
    context window. ``from_cache`` means the same prompt was judged before and the judgment was replayed."""

    reranker: str
    doc_id: str
    passage_id: str
    reasoning: str
    tokens: int
    end_reason: EndReason
    forced: bool
    truncated_passage: bool
    from_cache: bool = False

    @property
    def score(self) -> float:
        """What the reranker ranks by."""
        raise NotImplementedError

    def how(self) -> str:
        """How the judgment came about: tokens, why it ended, and its flags."""
        flags = ", ".join(name for name in ("forced", "truncated_passage", "from_cache") if getattr(self, name))
        return f"{self.tokens} tokens, {self.end_reason.replace('_', ' ')}{', ' + flags if flags else ''}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Judged(Measured):
    """rank1's verdict and P(true) = exp(lp_true) / (exp(lp_true) + exp(lp_false)), both log-probabilities
    measured at the verdict position (a forced verdict: one step restricted to the two verdict tokens, after
    cutting the reasoning at its last sentence end)."""

    type: ClassVar[str] = "judged"
    verdict: bool
    p_true: float
    logprob_true: float
    logprob_false: float

    @property
    def score(self) -> float:
        return self.p_true

    def describe(self) -> str:
        return f"{'true ' if self.verdict else 'false'} P(true)={self.p_true:.3f}  {self.doc_id}  ({self.how()})"


@dataclass(frozen=True, kw_only=True, slots=True)
class Graded(Measured):
    """The assessor's grade on the 0–3 scale, measured: ``logprobs`` are the log-probabilities of the four grade
    tokens at the grade position, ``distribution`` the same renormalised over them, ``grade`` the most likely
    one and ``expected_grade`` Σ g·p(g), which ranks (a forced grade: one step after the cleaned reasoning and
    the answer line's prefix)."""

    type: ClassVar[str] = "graded"
    grade: int
    expected_grade: float
    distribution: tuple[float, ...]
    logprobs: tuple[float, ...]

    @property
    def score(self) -> float:
        return self.expected_grade

    def describe(self) -> str:
        shares = " ".join(f"{p:.2f}" for p in self.distribution)
        return f"grade {self.grade} E={self.expected_grade:.2f} [{shares}]  {self.doc_id}  ({self.how()})"

    @classmethod
    def measured(cls, logprobs: tuple[float, ...], **fields: Any) -> Graded:
        """The grade, distribution and expected grade from the grade tokens' log-probabilities."""
        top = max(logprobs)
        weights = [math.exp(value - top) for value in logprobs]
        total = sum(weights)
        distribution = tuple(weight / total for weight in weights)
        return cls(grade=max(range(len(distribution)), key=distribution.__getitem__), distribution=distribution,
                   expected_grade=sum(grade * p for grade, p in enumerate(distribution)), logprobs=logprobs,
                   **fields)


@dataclass(frozen=True, kw_only=True, slots=True)
class Failed:
    """No judgment could be measured; ``reason`` says why. Nothing is made up in its place."""

    type: ClassVar[str] = "failed"
    reranker: str
    doc_id: str
    passage_id: str
    reason: str
    reasoning: str = ""

    def describe(self) -> str:
        return f"failed  {self.doc_id}  {self.reason}"


Outcome = Judged | Graded | Failed
"""How a pointwise judgment of one candidate ends."""

WindowStatus = Literal["ok", "repaired", "truncated", "failed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowStarted:
    """A listwise window went to the engine: ``doc_ids`` in their current order, positions ``start`` to
    ``end`` (0-based, end excluded) of the list being reranked. Windows are numbered in processing order."""

    type: ClassVar[str] = "window_started"
    reranker: str
    window: int
    start: int
    end: int
    doc_ids: tuple[str, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class WindowReasoning:
    """New reasoning text of one window, as the model writes it."""

    type: ClassVar[str] = "window_reasoning"
    reranker: str
    window: int
    text: str
    tokens: int = 0
    """New tokens the text came from (0 when replayed from the judgment cache)."""


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
    reranker: str
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
    """Every window has been ranked: the final order of the candidates, best first (ranks only; ReasonRank gives
    no probabilities). ``window`` is the number of windows: the event follows the last of them."""

    type: ClassVar[str] = "ranking_done"
    reranker: str
    window: int
    doc_ids: tuple[str, ...]


Event = Started | Reasoning | Judged | Graded | Failed | WindowStarted | WindowReasoning | WindowRanked | RankingDone
EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    Started, Reasoning, Judged, Graded, Failed, WindowStarted, WindowReasoning, WindowRanked, RankingDone)}


def event_to_json(event: Event) -> dict[str, Any]:
    """A JSON object with the envelope first (``type``, ``reranker``, then ``doc_id`` or ``window``)."""
    return {"type": event.type, **dataclasses.asdict(event)}


def event_from_json(record: dict[str, Any]) -> Event:
    """The event ``event_to_json`` wrote (lists back to tuples)."""
    fields = {name: tuple(value) if isinstance(value, list) else value for name, value in record.items()
              if name != "type"}
    return EVENT_TYPES[record["type"]](**fields)


def subject(event: Event) -> str:
    """What the event is about: its document, or its window and kind (the envelope has one or the other)."""
    return event.doc_id if hasattr(event, "doc_id") else f"{event.type} {event.window}"
