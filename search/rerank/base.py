"""The one interface every reranker implements, and the run state every consumer reads.

A ``Reranker`` streams the shared events (``search.rerank.events``) for a query's candidates; its ``start_run``
gives the ``Run`` that folds those events into what the page shows, the API returns, the command line prints
and a batch stores: the summary, the rows, the JSONL traces, the TREC run and the final ranking. Consumers hold
a ``Reranker`` and a ``Run`` and never ask which reranker they are.
"""

from __future__ import annotations

import asyncio
import json
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from statistics import median
from time import monotonic
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from search.rerank.events import Event
from search.retrieval.ranking import Candidate, Hit, Ranking
from search.settings import RerankSettings
from search.trec import UNNAMED_QUERY_ID, format_trec_run

if TYPE_CHECKING:
    from search.engines.base import Engine
    from search.rerank.belief import BeliefPath
    from search.rerank.cache import JudgmentCache

Status = Literal["waiting", "reasoning", "judged", "failed"]


@dataclass(frozen=True, kw_only=True, slots=True)
class RerankerDefaults:
    """What a reranker needs unless the user says otherwise: new tokens to reason in, the context that holds its
    prompts, and the model it runs on a GPU with vLLM and anywhere else (catalogue names)."""

    budget: int
    """The reference's budget, the default where the model runs on a GPU (or on servers)."""
    max_model_len: int
    model_on_gpu: str
    model_elsewhere: str
    cpu_budget: int = 0
    """The default where the model computes on a CPU (0: ``budget``). The rule: the most tokens each of a query's 20
    candidates may write for the whole query to take at most ``CPU_QUERY_MINUTES`` at the rate the reranker's CPU
    model (``model_elsewhere``, at its real size) judges 20 candidates at budget 256 on the transformers engine on
    a 2-core CPU (tokens written ÷ seconds, prefill and forced steps included), measured by
    benchmarks/real_shape.py, rounded down to a multiple of 64 (the numbers: docs/benchmarks.md)."""

    def budget_on(self, *, cpu: bool) -> int:
        return self.cpu_budget if cpu and self.cpu_budget else self.budget


CPU_QUERY_MINUTES = 10
"""The longest a query of 20 candidates should take on a 2-core CPU when every candidate writes its whole budget
(a free CPU Space): the rule behind ``RerankerDefaults.cpu_budget``."""


PACE_WINDOW_S = 10.0
"""The stretch of writing the time-left estimate's token rate is measured over: long enough to smooth the engine's
steps, short enough to follow the rate down as units finish and fewer decode together."""
PACE_MIN_S = 1.0
"""The least writing measured before the rate counts (the first tokens come in bursts)."""
ESTIMATE_EVERY_S = 1.0
"""The time-left estimates shown are noted at most once in this many seconds of the run (``Run.shown_summary``):
what the accuracy of the estimates is measured on, one per stretch of time however often the page draws, and
bounded in memory."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Estimate:
    """A time-left estimate the reader was shown: ``at_s`` seconds into the run, it said ``left_s`` seconds were
    left (``Summary.eta_s``)."""

    at_s: float
    left_s: float


@dataclass(frozen=True, kw_only=True, slots=True)
class EstimateError:
    """How far off the time-left estimates a run showed were, measured once it has finished: each one against the
    moment every unit had actually ended."""

    worst_s: float
    median_s: float
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Summary:
    """How far a run has come, counted in ``unit`` (documents for pointwise rerankers, windows for listwise)."""

    total: int
    judged: int
    failed: int
    tokens: int
    """New tokens generated so far, finished or still streaming (replayed ones not counted)."""
    elapsed_s: float
    writing: tuple[int, ...] = ()
    """New tokens so far of each unfinished unit that has written any."""
    lengths: tuple[int, ...] = ()
    """New tokens of each unit judged here (replayed ones not counted): how long a unit's reasoning runs."""
    recent_tokens_per_s: float = 0.0
    """The run's token rate over its last ``PACE_WINDOW_S`` of writing (0 before ``PACE_MIN_S`` of it)."""
    unit_tokens_per_s: float = 0.0
    """The same tokens per second of one writing unit: over the time each unit spent writing (units that decode
    together share the engine)."""
    stopped: bool = False
    unit: str = "documents"
    explained: int = 0
    """Judged documents whose evidence has arrived (evidence follows its judgment)."""
    explaining: int = 0
    """Judged documents whose evidence is still to come."""
    prompt_tokens: int = 0
    """Prompt tokens sent to the engine for finished units (replayed ones not counted)."""
    estimates: tuple[Estimate, ...] = ()
    """The time-left estimates shown so far (``Run.shown_summary``)."""
    finished_s: float | None = None
    """Seconds from the start until every unit had ended (None before): what the estimates were of."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def pending_tokens(self) -> int:
        """Of ``tokens``, those written for units not finished yet."""
        return sum(self.writing)

    @property
    def finished(self) -> bool:
        """Every unit is judged or failed (evidence may still be coming: see ``done``)."""
        return self.unfinished == 0

    @property
    def done(self) -> bool:
        """Everything the run started has ended: every unit finished and every awaited evidence arrived."""
        return self.finished and not self.explaining

    @property
    def unfinished(self) -> int:
        return self.total - self.judged - self.failed

    def progress(self, budget: int) -> float:
        """The share of the work done, 0–1: finished units, plus each unfinished one's tokens out of ``budget``
        (the most it may write)."""
        if not self.total:
            return 1.0
        done = self.total - self.unfinished + min(self.pending_tokens / max(budget, 1), self.unfinished)
        return done / self.total

    def expected_left(self, written: int, budget: int) -> float:
        """The tokens a unit that has written ``written`` is likely still to write: it ends at the mean of the
        lengths of the units judged here that ran at least as long, and of halfway from ``written`` to its
        ``budget`` (what is known before any unit ends; it counts for one unit, so the measured lengths soon
        outweigh it, and the first units to end, often the short ones, do not set the estimate alone)."""
        longer = [length for length in self.lengths if length >= written]
        whole = (sum(longer) + (written + budget) / 2) / (len(longer) + 1)
        return max(whole - written, 0.0)

    def eta_s(self, budget: int) -> float | None:
        """About how many seconds are left to judge (an estimate, not a bound): the tokens every unfinished unit is
        likely still to write (``expected_left``) at the run's recent rate, or, when longer, the most one writing
        unit has left at one unit's rate (units that decode together finish with the slowest). None while there is
        nothing to base it on: no unit judged here yet, or too little writing measured. Evidence, which writes no
        tokens, is not counted."""
        if self.finished or self.stopped:
            return 0.0
        if not self.lengths or self.recent_tokens_per_s <= 0 or self.unit_tokens_per_s <= 0:
            return None
        left = [self.expected_left(written, budget) for written in self.writing]
        total = sum(left) + (self.unfinished - len(self.writing)) * self.expected_left(0, budget)
        return max(total / self.recent_tokens_per_s, max(left, default=0.0) / self.unit_tokens_per_s)

    def estimate_error(self) -> EstimateError | None:
        """Once the run is done (not stopped): how far the time-left estimates it showed were from the time every
        unit actually ended; None before, or when it showed none ("estimating…" until it finished)."""
        if not self.done or self.stopped or self.finished_s is None or not self.estimates:
            return None
        errors = [abs(estimate.at_s + estimate.left_s - self.finished_s) for estimate in self.estimates]
        return EstimateError(worst_s=max(errors), median_s=median(errors), count=len(errors))


def query_text(query: str, instruction: str = "", template: str = "", slot: str = "FILL_QUERY_HERE") -> str:
    """The query as a reranker reads it: the instruction appended (mFollowIR style), then put into a dataset
    prompt template at ``FILL_QUERY_HERE`` when one is given (as in rank1's BRIGHT runs)."""
    text = f"{query} {instruction}".strip()
    return template.replace(slot, text) if template else text


class Run(ABC):
    """The state of one rerank run of one query, updated event by event. Pure logic; it renders nothing."""

    score_name: ClassVar[str]
    """What ``score`` is, for labels ("P(true)", "expected grade", …)."""

    def __init__(self, *, reranker: str, query: str, instruction: str, candidates: Sequence[Candidate]) -> None:
        self.reranker = reranker
        self.query = query
        self.instruction = instruction
        self.candidates = tuple(candidates)
        self.started_at = monotonic()
        self.finished_at: float | None = None
        self.judged_at: float | None = None
        """When every unit had ended (evidence may follow): the moment the time-left estimates were of."""
        self.estimates: list[Estimate] = []
        """The time-left estimates shown (``shown_summary``), at most one per ``ESTIMATE_EVERY_S``."""
        self.stopped = False
        """The reader stopped the run: what is unfinished stays so, its partial reasoning kept."""
        self.ended = False
        """Its stream has ended: whatever is still awaited will not come (``end``)."""
        self._pace: deque[tuple[float, int, int]] = deque()
        """(when, new tokens so far, units writing) at each event that changed either since the first token, over
        the last ``PACE_WINDOW_S`` and the one before it: the rate now, the slow first seconds left out."""

    @abstractmethod
    def apply(self, event: Event) -> None:
        """Fold one event of this run."""

    @abstractmethod
    def summary(self) -> Summary: ...

    @property
    def finished(self) -> bool:
        return self.summary().finished

    def elapsed_s(self) -> float:
        """Seconds since the run started, until it was done or stopped."""
        return (self.finished_at or monotonic()) - self.started_at

    def shown_summary(self, budget: int) -> Summary:
        """The summary as the reader is shown it: the time-left estimate it shows now (``Summary.eta_s``) is noted,
        so that once the run is done its summary says how good the estimates were (``Summary.estimate_error``)."""
        summary = self.summary()
        left = summary.eta_s(budget)
        if (left is not None and not summary.finished and not summary.stopped
                and (not self.estimates or summary.elapsed_s - self.estimates[-1].at_s >= ESTIMATE_EVERY_S)):
            self.estimates.append(Estimate(at_s=summary.elapsed_s, left_s=left))
        finished_s = None if self.judged_at is None else self.judged_at - self.started_at
        return replace(summary, estimates=tuple(self.estimates), finished_s=finished_s)

    def settle(self, *, tokens: int, writing: int, finished: bool, done: bool) -> None:
        """After each event: note the new tokens so far and the units ``writing`` (unfinished, with tokens) for
        the rates, when every unit had ended (``finished``), and stop the clock once the run is done
        (``Summary.done``: evidence too)."""
        now = monotonic()
        if finished and self.judged_at is None:
            self.judged_at = now
        if tokens and (not self._pace or (tokens, writing) != self._pace[-1][1:]):
            self._pace.append((now, tokens, writing))
            while len(self._pace) > 2 and self._pace[1][0] <= now - PACE_WINDOW_S:
                self._pace.popleft()
        if done and self.finished_at is None:
            self.finished_at = now

    def pace(self) -> tuple[float, float]:
        """New tokens per second since the oldest sample ``settle`` kept, and per second of one unit's writing
        (0, 0 before ``PACE_MIN_S`` of writing): ``Summary.recent_tokens_per_s`` and ``unit_tokens_per_s``."""
        now = self.finished_at or monotonic()
        if not self._pace or now - self._pace[0][0] < PACE_MIN_S:
            return 0.0, 0.0
        samples = [*self._pace, (now, self._pace[-1][1], 0)]
        written = samples[-1][1] - samples[0][1]
        unit_seconds = sum((after[0] - before[0]) * before[2] for before, after in pairwise(samples))
        return written / (now - samples[0][0]), written / unit_seconds if unit_seconds > 0 else 0.0

    def end(self) -> None:
        """Its stream has ended of itself: nothing more will come, so evidence still awaited never will (the engine
        failed it; the terminal said why) and a finished run is done, its clock stopped."""
        self.ended = True
        if self.summary().done and self.finished_at is None:
            self.finished_at = monotonic()

    def stop(self) -> None:
        """Mark the run stopped (its stream has been closed); the clock stops too."""
        if not self.summary().done:
            self.stopped = True
            self.finished_at = self.finished_at or monotonic()

    @abstractmethod
    def ordered(self, *, reranked: bool = True) -> list[Candidate]:
        """The candidates as the reranker has ordered them so far (failures last), or in first-stage order."""

    @abstractmethod
    def status(self, doc_id: str) -> Status: ...

    @abstractmethod
    def score(self, doc_id: str) -> float | None:
        """The document's score so far (``score_name``), None when it has none (waiting, or failed)."""

    @abstractmethod
    def relevance(self, doc_id: str) -> float | None:
        """The score on 0–1, the rerank API's ``relevance_score`` (None without a score)."""

    @abstractmethod
    def details(self, doc_id: str) -> dict[str, Any]:
        """The reranker's own fields of a document's row."""

    def failure(self, doc_id: str) -> str:
        """Why the document has no score, when it failed."""
        return ""

    @abstractmethod
    def reasoning_about(self, doc_id: str) -> str:
        """The model's reasoning behind the document's place so far: its own chain, or the latest window's that
        held it."""

    def grades(self) -> dict[str, int]:
        """The grades on the TREC 0–3 scale that a graded reranker gave, by document (none for the others)."""
        return {}

    def belief_path(self, doc_id: str) -> BeliefPath | None:
        """The document's belief as the model reasoned, probed (None without probes, or for a listwise run)."""
        return None

    def rows(self) -> list[dict[str, Any]]:
        """The current list, best first, as plain data (the API's answer and the JSONL export): one shape for
        every reranker, then the reranker's own fields."""
        return [{"rank": position, "doc_id": candidate.passage.doc_id, "passage_id": candidate.passage.passage_id,
                 "first_stage_rank": candidate.rank, "status": self.status(candidate.passage.doc_id),
                 "score": self.score(candidate.passage.doc_id), "failure": self.failure(candidate.passage.doc_id)
                 or None, **self.details(candidate.passage.doc_id)}
                for position, candidate in enumerate(self.ordered(), start=1)]

    def trace_records(self) -> list[dict[str, Any]]:
        """Records the JSONL export carries besides one per document (a listwise run's windows)."""
        return []

    def jsonl(self, *, query_id: str | None = None) -> str:
        head = {**({"query_id": query_id} if query_id is not None else {}), "query": self.query,
                "instruction": self.instruction, "reranker": self.reranker}
        lines = [*self.trace_records(), *({"type": "document", **row} for row in self.rows())]
        return "".join(json.dumps({**head, **line}, ensure_ascii=False) + "\n" for line in lines)

    def scores(self) -> dict[str, float]:
        """Scored documents by their score; documents without one follow in the reranked order with score
        -(first-stage rank), which no score can be mistaken for."""
        return {candidate.passage.doc_id: score if (score := self.score(candidate.passage.doc_id)) is not None
                else -float(candidate.rank) for candidate in self.ordered()}

    def trec_run(self, *, query_id: str = UNNAMED_QUERY_ID, tag: str = "") -> str:
        return format_trec_run({query_id: self.scores()}, tag or f"explainable-search-{self.reranker}")

    def ranking(self) -> Ranking:
        """The final ranking: each scored candidate gains this reranker's hit in its provenance."""
        ordered = []
        position = 0
        for candidate in self.ordered():
            score = self.score(candidate.passage.doc_id)
            if score is not None:
                position += 1
                candidate = Candidate(passage=candidate.passage, stage=self.reranker,
                                      provenance={**candidate.provenance,
                                                  self.reranker: Hit(rank=position, score=score)})
            ordered.append(candidate)
        return Ranking(query=self.query, stage=self.reranker, candidates=tuple(ordered))

    @abstractmethod
    def describe(self, event: Event) -> str | None:
        """One line for the terminal about an event worth one (an outcome), else None."""

    @abstractmethod
    def durable(self, event: Event) -> tuple[Event, ...]:
        """After ``apply(event)``: the events a batch keeps so that a killed run resumes (each document's outcome as
        it lands; a listwise query's windows once its ranking is done)."""

    @abstractmethod
    def unfinished(self) -> tuple[Candidate, ...]:
        """After folding a batch's kept events: the candidates still to send, in order."""

    def documents_done(self) -> int:
        """Documents with a final judgment so far."""
        return sum(self.status(candidate.passage.doc_id) == "judged" for candidate in self.candidates)

    def documents_failed(self) -> int:
        """Documents that failed (for a listwise run: those no window could rank, once it is over)."""
        return sum(self.status(candidate.passage.doc_id) == "failed" for candidate in self.candidates)


RELEVANCE_GAP = 0.3
"""Two judgments disagree when their 0–1 relevance (the rerank API's ``relevance_score``) differs by this much:
the rule between different rerankers, whose own scores are on different scales."""


def relevance_disagreement(a: Run, b: Run, doc_id: str) -> str | None:
    """Why ``a`` and ``b`` disagree about ``doc_id`` on the 0–1 relevance, or None."""
    one, other = a.relevance(doc_id), b.relevance(doc_id)
    if one is None or other is None or abs(one - other) < RELEVANCE_GAP:
        return None
    return f"relevance {one:.2f} → {other:.2f}"


RANK_GAP = 3
"""Two rankings disagree about a document when its places among the documents both have judged are this far
apart: the rule wherever a side gives ranks only."""


def rank_disagreement(a: Run, b: Run, doc_id: str) -> str | None:
    """Why ``a`` and ``b`` disagree about ``doc_id`` by its place (from 1) among the documents both have judged, each
    in its own order, or None (also while either has not judged it)."""
    if a.status(doc_id) != "judged" or b.status(doc_id) != "judged":
        return None
    one, other = ([candidate.passage.doc_id for candidate in run.ordered()
                   if a.status(candidate.passage.doc_id) == b.status(candidate.passage.doc_id) == "judged"
                   ].index(doc_id) + 1 for run in (a, b))
    return f"rank #{one} → #{other}" if abs(one - other) >= RANK_GAP else None


class Reranker(ABC):
    """A reasoning reranker over an engine. Subclasses are pure logic: they build prompts, read the engine's
    tokens and log-probabilities, and speak the shared events."""

    name: ClassVar[str]
    label: ClassVar[str]
    """One line for pickers: the name and what it gives."""
    defaults: ClassVar[RerankerDefaults]
    score_name: ClassVar[str]
    """What a document's score is, for labels ("P(true)", "expected grade", …)."""
    score_max: ClassVar[float] = 1.0
    """The highest score (the assessor's expected grade reaches 3)."""
    relevance_meaning: ClassVar[str]
    """What the rerank API's ``relevance_score`` (``Run.relevance``, 0–1) is and how it is computed, for readers of
    its answers."""
    renderer: ClassVar[str]
    """The family of page renderers that shows its runs (``ui.renderers``): ``verdicts``, ``grades``, ``windows``."""
    judges_documents: ClassVar[bool] = False
    """Whether it judges each document on its own (then annotators can see its judgments beside theirs)."""
    grades: ClassVar[int] = 0
    """How many grades its judgments come on (4 for the TREC 0–3 scale; 0 when it does not grade)."""
    probes_belief: ClassVar[bool] = False
    """Whether its belief can be probed while it reasons (a verdict per document, read at any point of the
    reasoning: ``settings.belief``)."""
    ranks_only: ClassVar[bool] = False
    """Whether it gives ranks and no judgment of each document (listwise): its relevance is derived from the rank,
    so its runs are compared with any reranker's by rank."""

    def __init__(self, engine: Engine, *, model_key: str, budget: int, settings: RerankSettings,
                 cache: JudgmentCache | None = None) -> None:
        self.engine = engine
        self.model_key = model_key
        self.budget = budget
        self.settings = settings
        self.cache = cache

    @classmethod
    def budget_for(cls, *, asked: int = 0, model_needs: int = 0, on_cpu: bool) -> int:
        """The reasoning budget: what the user asked for, else what the model needs (a catalogue entry may say),
        else this reranker's default for the hardware the model computes on."""
        return asked or model_needs or cls.defaults.budget_on(cpu=on_cpu)

    @abstractmethod
    def stream(self, query: str, candidates: Sequence[Candidate], *, instruction: str = "", template: str = "",
               slots: asyncio.Semaphore | None = None) -> AsyncIterator[Event]:
        """Every event of reranking ``candidates`` for ``query``, as they happen. Closing the stream early cancels
        the engine requests. ``slots`` bounds the engine requests in flight, shared by every stream given the
        same one (a batch's many queries): each request holds one while it runs (a judgment keeps its one through
        the forced step that follows it at once; each of evidence's re-scores holds its own); replayed judgments do
        not wait for one."""

    @classmethod
    @abstractmethod
    def new_run(cls, query: str, candidates: Sequence[Candidate], *, instruction: str = "",
                settings: RerankSettings) -> Run:
        """An empty run of this kind of reranker, for folding its events (also without an engine: a stored
        batch is read this way)."""

    def start_run(self, query: str, candidates: Sequence[Candidate], *, instruction: str = "") -> Run:
        """An empty run of this reranker, for folding the events of ``stream``."""
        return self.new_run(query, candidates, instruction=instruction, settings=self.settings)

    def query_problem(self, query: str, *, instruction: str = "", candidates: int = 1) -> str | None:
        """Why no candidate of this query could be reranked whatever its text (the query and instruction alone
        leave no room in the context), or None. Known before any engine request."""
        return None

    @abstractmethod
    def requests_per_query(self, candidates: int) -> int:
        """At most how many engine requests one query's stream keeps in flight."""

    @classmethod
    def disagreement(cls, a: Run, b: Run, doc_id: str) -> str | None:
        """Why two runs of this reranker disagree about ``doc_id`` (shown on its badge), or None: they agree, or
        one has not judged it yet. By default, by rank when it gives ranks only, else by the 0–1 relevance."""
        return (rank_disagreement if cls.ranks_only else relevance_disagreement)(a, b, doc_id)

    @classmethod
    def disagreement_with(cls, other: type[Reranker], a: Run, b: Run, doc_id: str) -> str | None:
        """Why a run of this reranker (``a``) and a run of ``other`` (``b``) disagree about ``doc_id``, or None: by
        this reranker's own rule when ``other`` is the same one; by rank among the documents both have judged when
        either gives ranks only (a rank-derived relevance is no judgment to set beside a probability or a grade);
        else by the 0–1 relevance."""
        if other is cls:
            return cls.disagreement(a, b, doc_id)
        if cls.ranks_only or other.ranks_only:
            return rank_disagreement(a, b, doc_id)
        return relevance_disagreement(a, b, doc_id)

    @classmethod
    def belief_problem(cls, settings: RerankSettings) -> str | None:
        """Why the belief probes or early verdicts ``settings`` ask for cannot be had from this reranker, or None."""
        if settings.probes_belief and not cls.probes_belief:
            return (f"{cls.name} gives no verdict per document (it ranks windows of them), so there is no belief to "
                    "probe and no early verdict; rank1 and the assessor have them")
        return None

    @classmethod
    def fingerprint(cls, settings: RerankSettings) -> dict[str, Any]:
        """The settings of this reranker's own (besides model and budget) that change its outputs, by their
        ``RerankSettings`` names: what a batch must keep the same to resume. Known before any engine starts."""
        return {}

    def describe(self) -> str:
        return f"{self.name} on {self.engine.description}, budget {self.budget} tokens"
