"""Two judges on the same candidates: side A and side B each name a reranker, model, instruction, budget and
evidence (``Side``); ``stream_pair`` runs both at once on the session's engines as one stream of events tagged
with their side (with the same settings, B is A's work, not a second reasoning); ``Comparison`` folds them into
two runs and says where they disagree and how alike their rankings are (``PairStats``). The page, the command line
(``search compare``) and links (``link_query`` / ``parse_link``) all read the same sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal
from urllib.parse import urlencode

from ir_measures import nDCG

from search.corpus import Corpus
from search.evaluation import per_query
from search.rerank.base import Reranker, Run
from search.rerank.events import Event
from search.rerank.registry import SETTING_CHOICES, reranker_class
from search.retrieval.ranking import Candidate
from search.settings import DEFAULT_RERANKER, RerankSettings, SettingsError, options
from search.trec import UNNAMED_QUERY_ID

SideName = Literal["A", "B"]
SIDES: tuple[SideName, SideName] = ("A", "B")
RBO_PERSISTENCE = 0.9
"""RBO's p: the first 10 ranks carry about 86% of the weight (Webber et al. 2010), where a reader looks."""
MAX_INSTRUCTION_CHARS = 2_000


@dataclass(frozen=True, kw_only=True, slots=True)
class Side:
    """What one side of a comparison runs: the text form of each field is what links and ``--a``/``--b`` give."""

    reranker: str = DEFAULT_RERANKER
    model: str = ""
    """The model's name (a catalogue name, hub id or folder); empty: the session's model."""
    instruction: str = ""
    budget: int = 0
    """Reasoning budget in new tokens; 0: the reranker's default on the model."""
    evidence: bool = False

    def with_text(self, values: Mapping[str, str], *, source: str) -> Side:
        """A copy with the fields given as text changed; a bad name or value is refused naming ``source`` and
        the field."""
        known = {field.name for field in fields(Side)}
        by_name = {option.name: option for option in options()}
        changes: dict[str, Any] = {}
        for name, raw in values.items():
            where = f"{source}{name}"
            if name not in known:
                raise SettingsError(f"{where}: unknown; a side has {', '.join(sorted(known))}")
            if name in ("reranker", "budget", "evidence"):
                value = by_name[name].parse(raw.strip(), source=where, choices=SETTING_CHOICES)
            else:
                value = raw.strip()
            if name == "budget" and value < 0:
                raise SettingsError(f"{where} must be 0 (the reranker's default) or more; got {raw!r}")
            if name == "instruction" and len(value) > MAX_INSTRUCTION_CHARS:
                raise SettingsError(f"{where} is {len(value):,} characters long; the limit is "
                                    f"{MAX_INSTRUCTION_CHARS:,}")
            changes[name] = value
        return replace(self, **changes)

    @classmethod
    def of(cls, settings: RerankSettings) -> Side:
        """Side A by default: the settings' reranker, budget and evidence on the session's model."""
        return cls(reranker=settings.reranker, budget=settings.budget, evidence=settings.evidence)

    def rerank_settings(self, base: RerankSettings) -> RerankSettings:
        """``base`` with this side's reranker, budget and evidence: what its reranker is built with."""
        return replace(base, reranker=self.reranker, budget=self.budget, evidence=self.evidence)

    def text(self) -> dict[str, str]:
        """Each field as its link parameter carries it."""
        return {field.name: str(getattr(self, field.name)).lower() if isinstance(getattr(self, field.name), bool)
                else str(getattr(self, field.name)) for field in fields(Side)}


@dataclass(frozen=True, kw_only=True, slots=True)
class Link:
    """A search a link reproduces: the query on a corpus, side A, and side B when it is a comparison."""

    query: str
    corpus: str = ""
    a: Side
    b: Side | None = None


B_PREFIX = "b_"


def link_query(link: Link) -> str:
    """``?q=…&corpus=…&reranker=…`` with every field of A (``false`` and ``0`` too: a field left out would take the
    opener's page's value, ``parse_link``; only empty text is left out, which the opener has no value for), then B's
    fields that differ from A's (``b_…``) and ``compare=1``: short links a person can read and edit."""
    params = {"q": link.query, **({"corpus": link.corpus} if link.corpus else {})}
    params |= {name: value for name, value in link.a.text().items() if value}
    if link.b is not None:
        params["compare"] = "1"
        params |= {B_PREFIX + name: value for name, value in link.b.text().items() if value != link.a.text()[name]}
    return "?" + urlencode(params)


def parse_link(params: Mapping[str, str], base: Side) -> Link | None:
    """The search a page address asks for (None when it names no query); parameters not given keep ``base``'s
    values, and B's those of A. Refused with the parameter named when one is unknown or wrong."""
    query = params.get("q", "").strip()
    if not query:
        return None
    own = {"q", "corpus", "compare"}
    a_values = {name: value for name, value in params.items() if name not in own and not name.startswith(B_PREFIX)}
    b_values = {name[len(B_PREFIX):]: value for name, value in params.items() if name.startswith(B_PREFIX)}
    a = base.with_text(a_values, source="link parameter ")
    compare = params.get("compare", "") not in ("", "0", "false") or bool(b_values)
    b = a.with_text(b_values, source=f"link parameter {B_PREFIX}") if compare else None
    return Link(query=query, corpus=params.get("corpus", "").strip(), a=a, b=b)


def side_values(pairs: Sequence[str], *, flag: str) -> dict[str, str]:
    """``["reranker=rank1", "budget=64"]`` (from ``--a``/``--b``) as a mapping, refused naming the flag."""
    values = {}
    for pair in pairs:
        name, equals, value = pair.partition("=")
        if not equals or not name.strip():
            raise SettingsError(f"{flag} {pair!r}: write name=value (reranker, model, instruction, budget, evidence)")
        values[name.strip()] = value
    return values


async def stream_pair(a: Reranker, b: Reranker | None, query: str, candidates: Sequence[Candidate], *,
                      instructions: tuple[str, str]) -> AsyncIterator[tuple[SideName, Event]]:
    """Both sides' events as they happen, tagged with their side, from the two rerankers at once. On one engine
    their requests batch together, each side keeping at most half of what the engine decodes together in flight
    (else one side's requests would fill the batch and the other's wait), every request counted, evidence's
    re-scores too. ``b`` None means B has A's settings: each
    of A's events is B's too. Closing the stream closes both sides' engine requests."""
    if b is None:
        async with contextlib.aclosing(a.stream(query, candidates, instruction=instructions[0])) as events:
            async for event in events:
                yield "A", event
                yield "B", event
        return
    from aiostream import stream

    def slots() -> asyncio.Semaphore | None:
        return asyncio.Semaphore(max(1, a.engine.decoding_together // 2)) if a.engine is b.engine else None

    tagged = [stream.map(reranker.stream(query, candidates, instruction=instruction, slots=slots()), _tagger(side))
              for side, reranker, instruction in zip(SIDES, (a, b), instructions, strict=True)]
    async with stream.merge(*tagged).stream() as merged:
        async for item in merged:
            yield item


def _tagger(side: SideName) -> Any:
    return lambda event: (side, event)


def kendall_tau(a: Sequence[str], b: Sequence[str]) -> float | None:
    """Kendall's tau between two orders of the same documents (None for fewer than two). The orders have no ties:
    each run breaks ties in score by first-stage rank before SciPy sees them, so SciPy's tau-b tie correction never
    applies (here tau-b is tau-a), and documents tied in score count as ordered by their first-stage rank."""
    if len(a) < 2:
        return None
    from scipy.stats import kendalltau

    position = {doc_id: rank for rank, doc_id in enumerate(b)}
    return float(kendalltau(range(len(a)), [position[doc_id] for doc_id in a]).statistic)


def rank_biased_overlap(a: Sequence[str], b: Sequence[str], p: float = RBO_PERSISTENCE) -> float:
    """Extrapolated rank-biased overlap (Webber, Moffat and Zobel 2010, eq. 32; for lists of the same length eq.
    30): 1 for identical lists, weighted to the top by ``p``. With S the shorter list (``s`` long), L the longer
    (``l``) and X_d = |S[:min(d, s)] ∩ L[:d]|, it is (1−p)/p · (Σ_{d≤l} X_d/d·p^d + Σ_{s<d≤l} X_s·(d−s)/(s·d)·p^d)
    + ((X_l − X_s)/l + X_s/s)·p^l: past its end, S is taken to go on agreeing as it did at depth s. Written here
    because the one package for it (``rbo``) pins numpy below 2 (and ``ranked-overlap`` 0.1.0 extrapolates uneven
    lists otherwise than eq. 32)."""
    short, long_ = sorted((a, b), key=len)
    s, depth = len(short), len(long_)
    if s == 0:
        return 1.0 if depth == 0 else 0.0
    seen_short: set[str] = set()
    seen_long: set[str] = set()
    overlap = 0
    weighted = 0.0
    overlap_at_s = 0
    for d in range(1, depth + 1):
        y = long_[d - 1]
        if d <= s:
            x = short[d - 1]
            overlap += (x == y) + (x in seen_long) + (y in seen_short)
            seen_short.add(x)
            overlap_at_s = overlap
        else:
            overlap += y in seen_short
            weighted += overlap_at_s * (d - s) / (s * d) * p**d
        seen_long.add(y)
        weighted += overlap / d * p**d
    return (1 - p) / p * weighted + ((overlap - overlap_at_s) / depth + overlap_at_s / s) * p**depth


@dataclass(frozen=True, kw_only=True, slots=True)
class PairStats:
    """How alike the two sides' rankings are so far: Kendall's tau and RBO over the candidates both have judged
    (None before two, and one), in each side's order."""

    kendall_tau: float | None
    rbo: float | None
    disagreements: int
    judged_by_both: int
    ndcg: dict[str, float | None] | None = None
    """nDCG@10 of the first stage, A and B, where the corpus judges this query (None elsewhere); a side's is None
    until it has judged a document (before, its order is the first stage's, and so would its value be)."""
    final: bool = False
    """Both sides are done (or stopped): these are the numbers, not the numbers so far."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Example:
    """A query the page offers as one click: a plain search, or (``compare``) the query with its instruction on
    side A against the same without it on side B."""

    label: str
    query: str
    instruction: str = ""
    compare: bool = False


MAX_EXAMPLES = 9


def examples(corpus: Corpus) -> list[Example]:
    """The corpus's own examples, from its queries: those it marks ``showcase`` and every query with an
    instruction, as a ready comparison with and without it; a corpus that marks none offers its queries with
    instructions, then its first others."""
    queries = corpus.queries
    if any(query.showcase for query in queries):
        chosen = [query for query in queries if query.showcase or query.instruction]
    else:
        chosen = [query for query in queries if query.instruction] + [query for query in queries
                                                                       if not query.instruction]
    return [Example(label=f"{query.text} · with vs without its instruction" if query.instruction else
                    f"{query.text}{' · ' + query.showcase if query.showcase else ''}", query=query.text,
                    instruction=query.instruction, compare=bool(query.instruction)) for query in chosen[:MAX_EXAMPLES]]


def corpus_query_id(corpus: Corpus, query: str) -> str | None:
    """The id of the corpus's query with ``query``'s text (a judged one first, where several share it), or None:
    what a run of it is filed under, so that it joins with the corpus's judgments."""
    text = query.strip()
    same = [item.query_id for item in corpus.queries if item.text.strip() == text]
    return next((query_id for query_id in same if corpus.qrels.get(query_id)), same[0] if same else None)


def judgments_for(corpus: Corpus, query: str) -> dict[str, int] | None:
    """The corpus's judgments of ``query``, when it is one of the corpus's queries (by text) and has some."""
    query_id = corpus_query_id(corpus, query)
    return dict(corpus.qrels[query_id]) if query_id is not None and corpus.qrels.get(query_id) else None


def ndcg_at_10(judged: Mapping[str, int], scores: Mapping[str, float]) -> float:
    return per_query({"q": dict(judged)}, {"q": dict(scores)}, (nDCG @ 10,))["nDCG@10"]["q"]


class Comparison:
    """Two runs of one query over the same candidates, folded event by event: the state every consumer of a
    comparison reads. Pure logic; it renders nothing."""

    def __init__(self, a: Run, b: Run, *, shared: bool = False, judged: Mapping[str, int] | None = None) -> None:
        self.runs: dict[SideName, Run] = {"A": a, "B": b}
        self.shared = shared
        """B has A's settings and shows A's work."""
        self.judged = dict(judged) if judged else None

    @property
    def candidates(self) -> tuple[Candidate, ...]:
        return self.runs["A"].candidates

    def apply(self, side: SideName, event: Event) -> None:
        self.runs[side].apply(event)

    def stop(self) -> None:
        for run in self.runs.values():
            run.stop()

    def end(self) -> None:
        """Both sides' events have all come (``Run.end``)."""
        for run in self.runs.values():
            run.end()

    @property
    def finished(self) -> bool:
        return all(run.finished or run.stopped for run in self.runs.values())

    def positions(self, side: SideName) -> dict[str, int]:
        """Each candidate's place (from 1) in the side's order so far."""
        return {candidate.passage.doc_id: place for place, candidate in enumerate(self.runs[side].ordered(), 1)}

    def disagreement(self, doc_id: str) -> str | None:
        """Why the sides disagree about ``doc_id`` (both have judged it), or None: by the rule of their rerankers
        (``Reranker.disagreement_with``)."""
        a, b = self.runs["A"], self.runs["B"]
        if self.shared:
            return None
        return reranker_class(a.reranker).disagreement_with(reranker_class(b.reranker), a, b, doc_id)

    def disagreements(self) -> dict[str, str]:
        """Every disagreement so far, by document: the reason shown on its badge."""
        return {candidate.passage.doc_id: reason for candidate in self.candidates
                if (reason := self.disagreement(candidate.passage.doc_id)) is not None}

    def stats(self) -> PairStats:
        a, b = self.runs["A"], self.runs["B"]
        both = {candidate.passage.doc_id for candidate in self.candidates
                if a.status(candidate.passage.doc_id) == "judged" and b.status(candidate.passage.doc_id) == "judged"}
        orders = [[candidate.passage.doc_id for candidate in run.ordered() if candidate.passage.doc_id in both]
                  for run in (a, b)]
        ndcg = None
        if self.judged is not None:
            first = {candidate.passage.doc_id: 1.0 / candidate.rank for candidate in self.candidates}
            ndcg = {"first stage": ndcg_at_10(self.judged, first),
                    **{side: ndcg_at_10(self.judged, run.scores()) if run.documents_done() else None
                       for side, run in self.runs.items()}}
        return PairStats(kendall_tau=kendall_tau(*orders), rbo=rank_biased_overlap(*orders) if both else None,
                         disagreements=len(self.disagreements()), judged_by_both=len(both), ndcg=ndcg,
                         final=self.finished)

    def jsonl(self, *, query_id: str | None = None) -> str:
        """Both runs' traces, each line with its ``side`` (and ``query_id`` when the query is the corpus's)."""
        return "".join(json.dumps({"side": side, **json.loads(line)}, ensure_ascii=False) + "\n"
                       for side, run in self.runs.items() for line in run.jsonl(query_id=query_id).splitlines())

    def trec_runs(self, *, query_id: str = UNNAMED_QUERY_ID) -> dict[SideName, str]:
        """Each side's TREC run under ``query_id``, tagged with its reranker and side."""
        return {side: run.trec_run(query_id=query_id, tag=f"explainable-search-{run.reranker}-{side}")
                for side, run in self.runs.items()}
