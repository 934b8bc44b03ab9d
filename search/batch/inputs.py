"""What a batch reranks: each query of a first-stage run file with its top-k documents, read from the corpus,
and the fingerprint of everything that decides the results (so a restart with other arguments is refused
rather than mixed into the same output)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from search.corpus import Corpus, CorpusError, LoadProblem, Passage, Query, load_queries
from search.evaluation import load_run
from search.retrieval.ranking import Candidate, Hit

RUN_STAGE = "run"
"""The stage name of the first-stage run's hits in each candidate's provenance."""


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchSpec:
    """Everything that decides a batch's judgments: what is reranked (a digest of every query and candidate
    document's text, so moved files still match and edited ones do not) and how. Engines, endpoints,
    concurrency and qrels are not here: a batch may resume on other machines, and be evaluated against other
    judgments."""

    inputs: str
    top_k: int
    reranker: str
    model: str
    budget: int
    window: int = 0
    step: int = 0
    passage_tokens: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BatchSpec:
        return cls(**json.loads(text))

    def differences(self, other: BatchSpec) -> list[str]:
        """``field: stored → asked`` for every field that differs."""
        return ["inputs: the queries, run or documents differ" if name == "inputs"
                else f"{name}: {getattr(self, name)!r} → {getattr(other, name)!r}"
                for name in (item.name for item in dataclasses.fields(self))
                if getattr(self, name) != getattr(other, name)]


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

