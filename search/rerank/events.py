"""The one event vocabulary of a rerank run, shared by the page, the command line, the API and batch runs.

Every event carries the same envelope: ``type`` (a tag no two events share), ``reranker`` (the name of the
reranker that emitted it) and what it is about, ``doc_id`` (pointwise rerankers) or ``window`` (listwise).

Pointwise (rank1, the assessor): for each candidate ``Started``, any number of ``Reasoning`` deltas, then exactly
one outcome: ``Judged`` (rank1's verdict and P(true)), ``Graded`` (the assessor's 0–3 grade distribution) or
``Failed``; with belief probes on, ``Belief`` events interleave with the ``Reasoning`` (each after the reasoning it
read, in order of tokens) and the outcome carries them all; with evidence on, one ``Evidence`` follows each measured
outcome. Events of different candidates interleave; the order within one candidate is fixed.

Listwise (ReasonRank): for each window in turn ``WindowStarted``, ``WindowReasoning`` deltas and one
``WindowRanked``; then one ``RankingDone``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

EndReason = Literal["verdict", "grade", "budget", "end_of_sequence", "not_a_grade", "missing_logprobs", "early"]
"""Why a pointwise judgment ended: the model's own verdict (rank1) or grade (assessor); or, for a forced one,
what went wrong: the budget ran out, the model stopped, its answer line held no grade, or the engine returned
no log-probabilities for the answer tokens; or ``early``: the early-verdict rule stopped the reasoning once the
belief had settled (the verdict is the last probe's, read after ``tokens`` tokens)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BeliefPoint:
    """The verdict the model would give if its reasoning ended here, measured: the reranker's forced verdict step
    (rank1's ``</think>`` after the cleaned reasoning, the assessor's answer line) at the reasoning's first
    ``tokens`` tokens, which it reads up to ``offset`` characters (the cleaning cuts after the last sentence end).
    ``distribution`` is over the reranker's verdicts (rank1: false, true; the assessor: grades 0–3), ``score`` its
    score from the same log-probabilities (P(true), or the expected grade)."""

    tokens: int
    offset: int
    score: float
    distribution: tuple[float, ...]

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> BeliefPoint:
        return cls(**{**fields, "distribution": tuple(fields["distribution"])})


@dataclass(frozen=True, kw_only=True, slots=True)
class Belief:
    """One belief probe of one candidate while its reasoning streams (``BeliefPoint``); the judgment carries them
    all. Probes are separate engine requests over the reasoning so far: they never feed back into it."""

    type: ClassVar[str] = "belief"
    reranker: str
    doc_id: str
    point: BeliefPoint


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
    prompt_tokens: int = 0
    """Tokens of the prompt sent for the judgment (the forced step's second request re-reads prompt and reasoning
    from the prefix cache and is not counted); not new work when ``from_cache``."""
    belief: tuple[BeliefPoint, ...] = ()
    """The belief probes taken while the model reasoned, by tokens (none unless probes were asked for)."""

    @property
    def score(self) -> float:
        """What the reranker ranks by."""
        raise NotImplementedError

    @property
    def relevance(self) -> float:
        """``score`` on 0–1 (the rerank API's ``relevance_score``)."""
        raise NotImplementedError

    def shares(self) -> tuple[float, ...]:
        """The probabilities of the reranker's verdicts (rank1: false, true) or grades (0–3): a belief's
        distribution."""
        raise NotImplementedError

    def verdict_index(self) -> int:
        """The verdict given, as an index into ``shares()``."""
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

    @property
    def relevance(self) -> float:
        return self.p_true

    def shares(self) -> tuple[float, ...]:
        return (1.0 - self.p_true, self.p_true)

    def verdict_index(self) -> int:
        return int(self.verdict)

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
    answer_suffix: str = ""
    """What the model (or the forced step) wrote after the answer line's prefix before the grade token: "" or a
    space token. Evidence re-scores after exactly this text."""
    spaced_grade: bool = False
    """Whether the grade token read is the space-prefixed digit (" 2" as one token) rather than the bare one."""

    @property
    def score(self) -> float:
        return self.expected_grade

    @property
    def relevance(self) -> float:
        return self.expected_grade / (len(self.distribution) - 1)

    def shares(self) -> tuple[float, ...]:
        return self.distribution

    def verdict_index(self) -> int:
        return self.grade

    def describe(self) -> str:
        shares = " ".join(f"{p:.2f}" for p in self.distribution)
        return f"grade {self.grade} E={self.expected_grade:.2f} [{shares}]  {self.doc_id}  ({self.how()})"

    @classmethod
    def measured(cls, logprobs: tuple[float, ...], **fields: Any) -> Graded:
        """The grade, distribution and expected grade from the grade tokens' log-probabilities."""
        distribution = grade_distribution(logprobs)
        return cls(grade=max(range(len(distribution)), key=distribution.__getitem__), distribution=distribution,
                   expected_grade=expected_grade(distribution), logprobs=logprobs, **fields)


def grade_distribution(logprobs: tuple[float, ...]) -> tuple[float, ...]:
    """The grade tokens' log-probabilities renormalised over them (grades 0, 1, …)."""
    top = max(logprobs)
    weights = [math.exp(value - top) for value in logprobs]
    total = sum(weights)
    return tuple(weight / total for weight in weights)


def expected_grade(distribution: tuple[float, ...]) -> float:
    return sum(grade * p for grade, p in enumerate(distribution))


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


@dataclass(frozen=True, kw_only=True, slots=True)
class SentenceEffect:
    """One sentence of the passage (the title counts as one): ``passage[start:end]``, and ``delta``, the score with
    it minus the score without it, the reasoning held fixed (positive: it supports the verdict's score)."""

    start: int
    end: int
    delta: float
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Quote:
    """A span of the passage, ``passage[start:end]``, that the reasoning quotes or closely paraphrases."""

    start: int
    end: int
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Faithfulness:
    """Whether the sentences the attribution ranks highest move the score more than as many random ones.

    ``top_removed``: the score without the ``sentences_removed`` sentences of largest |delta|; ``random_removed``:
    the mean score without as many random sentences (a few fixed-seed draws). ``supported`` is False when the top
    ones move the score no further from the whole passage's than random ones do (|score − top_removed| ≤
    |score − random_removed|: "reasoning not supported by the passage"), None when the passage has too few
    sentences for the check to tell them apart."""

    top_removed: float
    random_removed: float
    sentences_removed: int
    supported: bool | None


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceCost:
    """What the evidence cost: engine requests, prompt tokens sent, those the prefix cache served, seconds."""

    requests: int
    prefill_tokens: int
    cached_tokens: int
    seconds: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Evidence:
    """Which sentences of the passage a pointwise verdict rests on, measured after the judgment: each sentence
    removed in turn (``method`` "ablation"), or for long passages random removals and a sparse linear fit
    ("surrogate"), every time re-scoring the verdict with the model's reasoning held fixed. ``passage`` is the
    text the model read (title, space, text, as in the prompt; cut when the prompt was cut), which every offset
    points into; ``score`` the verdict's score re-measured on it the same way (P(true), or expected grade ÷ 3)."""

    type: ClassVar[str] = "evidence"
    reranker: str
    doc_id: str
    passage: str
    method: Literal["ablation", "surrogate"]
    score: float
    sentences: tuple[SentenceEffect, ...]
    quotes: tuple[Quote, ...]
    faithfulness: Faithfulness
    cost: EvidenceCost
    from_cache: bool = False
    """The same judgment was explained before and its evidence replayed (``cost`` is what it cost then)."""

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> Evidence:
        """From ``event_to_json``'s nested objects."""
        return cls(**{**fields, "sentences": tuple(SentenceEffect(**item) for item in fields["sentences"]),
                      "quotes": tuple(Quote(**item) for item in fields["quotes"]),
                      "faithfulness": Faithfulness(**fields["faithfulness"]), "cost": EvidenceCost(**fields["cost"])})

    def strongest(self) -> SentenceEffect | None:
        """The sentence whose removal moves the score most."""
        return max(self.sentences, key=lambda sentence: abs(sentence.delta), default=None)

    def describe(self) -> str:
        check = {True: "supported", False: "NOT supported by the passage", None: "too short to check"}
        top = self.strongest()
        lead = f"strongest Δ{top.delta:+.2f} {top.text[:60]!r}" if top else "no sentences"
        return (f"evidence  {self.doc_id}  {lead}; {check[self.faithfulness.supported]} "
                f"({self.method}, {self.cost.requests} requests, {self.cost.seconds:.1f} s)")

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
    prompt_tokens: int = 0
    """Tokens of the window's prompt (0 when it never reached the engine); not new work when ``from_cache``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RankingDone:
    """Every window has been ranked: the final order of the candidates, best first (ranks only; ReasonRank gives
    no probabilities). ``window`` is the number of windows: the event follows the last of them."""

    type: ClassVar[str] = "ranking_done"
    reranker: str
    window: int
    doc_ids: tuple[str, ...]


Event = (Started | Reasoning | Belief | Judged | Graded | Failed | Evidence | WindowStarted | WindowReasoning
         | WindowRanked | RankingDone)
EVENT_TYPES: dict[str, type[Event]] = {cls.type: cls for cls in (
    Started, Reasoning, Belief, Judged, Graded, Failed, Evidence, WindowStarted, WindowReasoning, WindowRanked,
    RankingDone)}


def event_to_json(event: Event) -> dict[str, Any]:
    """A JSON object with the envelope first (``type``, ``reranker``, then ``doc_id`` or ``window``)."""
    return {"type": event.type, **dataclasses.asdict(event)}


def event_from_json(record: dict[str, Any]) -> Event:
    """The event ``event_to_json`` wrote (lists back to tuples)."""
    kind = EVENT_TYPES[record["type"]]
    if kind is Evidence:
        return Evidence.from_fields({name: value for name, value in record.items() if name != "type"})
    if kind is Belief:
        return Belief(reranker=record["reranker"], doc_id=record["doc_id"],
                      point=BeliefPoint.from_fields(record["point"]))
    fields = {name: tuple(value) if isinstance(value, list) else value for name, value in record.items()
              if name != "type"}
    if "belief" in fields:
        fields["belief"] = tuple(BeliefPoint.from_fields(point) for point in fields["belief"])
    return kind(**fields)


def subject(event: Event) -> str:
    """What the event is about, as a batch keeps one event per subject: a document's outcome, a document's
    evidence, or a window and kind (the envelope has a document or a window)."""
    if isinstance(event, Evidence):
        return f"evidence {event.doc_id}"
    return event.doc_id if hasattr(event, "doc_id") else f"{event.type} {event.window}"
