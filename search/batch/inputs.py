"""What a batch reranks: each query of a first-stage run file with its top-k documents, read from the corpus,
and the fingerprint of everything that decides the results (so a restart with other arguments is refused
rather than mixed into the same output)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from search.corpus import Corpus, CorpusError, LoadProblem, Passage, Query, load_queries
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate, Hit
from search.settings import RerankSettings
from search.trec import load_run

if TYPE_CHECKING:
    from search.rerank.base import Reranker

RUN_STAGE = "run"
"""The stage name of the first-stage run's hits in each candidate's provenance."""
LEGACY_OPTIONS = ("window", "step", "passage_tokens")


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchSpec:
    """Everything that decides a batch's judgments: what is reranked (a digest of every query and candidate
    document's text, so moved files still match and edited ones do not) and how (the reranker, its model, budget
    and the settings of its own that change its outputs, e.g. ReasonRank's windows). Engines, endpoints,
    concurrency and qrels are not here: a batch may resume on other machines, and be evaluated against other
    judgments."""

    inputs: str
    top_k: int
    reranker: str
    model: str
    budget: int
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, inputs: str, settings: RerankSettings, reranker: Reranker) -> BatchSpec:
        return cls.planned(inputs, settings, model=reranker.model_key, budget=reranker.budget)

    @classmethod
    def planned(cls, inputs: str, settings: RerankSettings, *, model: str, budget: int) -> BatchSpec:
        """The spec of a batch before its engine starts (``model``: the weights' key, ``budget``: the one the
        reranker will get), so that a folder holding another batch is refused before minutes of loading."""
        return cls(inputs=inputs, top_k=settings.top_k, reranker=settings.reranker, model=model, budget=budget,
                   options=reranker_class(settings.reranker).fingerprint(settings))

    def rerank_settings(self) -> RerankSettings:
        """The reranker settings the batch ran with, as far as they decide its outputs."""
        return RerankSettings(reranker=self.reranker, top_k=self.top_k, budget=self.budget, **self.options)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BatchSpec:
        record = json.loads(text)
        # Batches written before options existed kept ReasonRank's settings as fields of their own (0: unused).
        legacy = {name: record.pop(name) for name in LEGACY_OPTIONS if name in record}
        options = record.pop("options", {}) or {name: value for name, value in legacy.items() if value}
        return cls(**record, options=options)

    def differences(self, other: BatchSpec) -> list[str]:
        """``field: stored → asked`` for every field that differs (compare inputs cut at the same top_k, or a
        changed top_k alone reads as changed inputs too)."""
        mine, theirs = self._flat(), other._flat()
        return ["inputs: the queries, run or documents differ" if name == "inputs"
                else f"{name}: {mine.get(name)!r} → {theirs.get(name)!r}"
                for name in dict.fromkeys([*mine, *theirs]) if mine.get(name) != theirs.get(name)]

    def _flat(self) -> dict[str, Any]:
        fields = {item.name: getattr(self, item.name) for item in dataclasses.fields(self) if item.name != "options"}
        return {**fields, **self.options}


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchQuery:
    """One query and its first-stage candidates (whole documents, title and text), best first."""

    query: Query
    candidates: tuple[Candidate, ...]


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchInputs:
    queries: tuple[BatchQuery, ...]
    problems: tuple[LoadProblem, ...] = ()
    """What was left out (with ``--skip-bad``): documents or queries the run names that are not loaded."""

    @property
    def document_count(self) -> int:
        return sum(len(query.candidates) for query in self.queries)

    def digest(self) -> str:
        """SHA-256 of every query (id, text, instruction) and its candidates (id, title, text), in order."""
        digest = hashlib.sha256()
        for item in self.queries:
            query = item.query
            records = [[query.query_id, query.text, query.instruction],
                       *([c.passage.doc_id, c.passage.title, c.passage.text] for c in item.candidates)]
            digest.update(json.dumps(records).encode())
        return digest.hexdigest()


def _refuse_or_keep(problems: list[LoadProblem], what: str, skip_bad: bool) -> None:
    if problems and not skip_bad:
        raise CorpusError(f"{len(problems)} {what}; fix the inputs, or pass --skip-bad to leave them out", problems)


def load_batch(corpus: Corpus, queries_path: Path | None, run_path: Path, top_k: int, *, skip_bad: bool = False
               ) -> BatchInputs:
    """The run's queries in file order, each with its ``top_k`` best documents. A query or document the run
    names but the queries file or corpus lacks is refused (or left out with ``skip_bad``), naming its line."""
    if queries_path is not None:
        queries, query_problems = load_queries(queries_path)
        _refuse_or_keep([problem for problem in query_problems if problem.fatal], "bad line(s) in the queries",
                        skip_bad)
    elif corpus.queries:
        queries = corpus.queries
    else:
        raise CorpusError(f"{corpus.source} has no queries.jsonl: give the queries with --queries FILE")
    run, run_problems = load_run(run_path)
    _refuse_or_keep(run_problems, "bad line(s) in the run", skip_bad)
    if not run:
        raise CorpusError(f"{run_path}: no run lines (query Q0 doc rank score tag)")
    documents = {document.doc_id: document for document in corpus.documents}
    by_id = {query.query_id: query for query in queries}
    problems: list[LoadProblem] = []
    batch: list[BatchQuery] = []
    for query_id, scored in run.items():
        query = by_id.get(query_id)
        if query is None:
            problems.append(LoadProblem(path=run_path, line=None, message=f"query {query_id!r} is not in the queries"))
            continue
        candidates: list[Candidate] = []
        for doc_id, score in list(scored.items())[:top_k]:
            document = documents.get(doc_id)
            if document is None:
                problems.append(LoadProblem(path=run_path, line=None,
                                            message=f"query {query_id!r}: document {doc_id!r} is not in the corpus"))
                continue
            passage = Passage(passage_id=doc_id, doc_id=doc_id, index=0, title=document.title, text=document.text)
            candidates.append(Candidate(passage=passage, stage=RUN_STAGE, provenance={
                RUN_STAGE: Hit(rank=len(candidates) + 1, score=score)}))
        if candidates:
            batch.append(BatchQuery(query=query, candidates=tuple(candidates)))
    _refuse_or_keep(problems, "run entries that the queries or corpus lack", skip_bad)
    return BatchInputs(queries=tuple(batch), problems=tuple(problems))

