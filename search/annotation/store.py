"""Annotation projects and human relevance judgments, kept in SQLite so that nothing is ever lost.

Every change is one transaction, committed (write-ahead log, synchronous) before the call returns: a
judgment the caller was told about survives the process being killed. Each change also appends to an edit
history with its time. Candidates are stored when a query is first opened, so every annotator of a query
judges the same passages even if the corpus index changes later.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from search.rerank.events import (
    Evidence,
    Failed,
    Graded,
    Judged,
    Outcome,
    event_from_json,
    event_to_json,
    expected_grade,
)
from search.rerank.registry import RERANKERS

DEFAULT_GRADES = ("not relevant", "related", "highly relevant", "perfectly relevant")
"""The TREC Deep Learning scale, 0 to 3."""
MAX_GRADES = 10
"""One keyboard digit per grade."""
MAX_DEPTH = 100

SCHEMA = """
CREATE TABLE IF NOT EXISTS projects (
    name TEXT PRIMARY KEY, corpus TEXT NOT NULL, guideline TEXT NOT NULL,
    guideline_as_instruction INTEGER NOT NULL, grades TEXT NOT NULL, depth INTEGER NOT NULL,
    created_at TEXT NOT NULL, reranker TEXT NOT NULL DEFAULT 'rank1', blind INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS queries (
    project TEXT NOT NULL, query_id TEXT NOT NULL, position INTEGER NOT NULL, text TEXT NOT NULL,
    PRIMARY KEY (project, query_id));
CREATE TABLE IF NOT EXISTS reference_qrels (
    project TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL, grade INTEGER NOT NULL,
    PRIMARY KEY (project, query_id, doc_id));
CREATE TABLE IF NOT EXISTS candidates (
    project TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL, rank INTEGER NOT NULL,
    passage_id TEXT NOT NULL, title TEXT NOT NULL, passage TEXT NOT NULL,
    PRIMARY KEY (project, query_id, doc_id));
CREATE TABLE IF NOT EXISTS model_outcomes (
    project TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL, model TEXT NOT NULL, event TEXT NOT NULL,
    PRIMARY KEY (project, query_id, doc_id));
CREATE TABLE IF NOT EXISTS model_evidence (
    project TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL, model TEXT NOT NULL,
    sentences TEXT NOT NULL, PRIMARY KEY (project, query_id, doc_id));
CREATE TABLE IF NOT EXISTS judgments (
    project TEXT NOT NULL, annotator TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    grade INTEGER NOT NULL, note TEXT NOT NULL, span_start INTEGER, span_end INTEGER, judged_at TEXT NOT NULL,
    PRIMARY KEY (project, annotator, query_id, doc_id));
CREATE TABLE IF NOT EXISTS judgment_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT, project TEXT NOT NULL, annotator TEXT NOT NULL,
    query_id TEXT NOT NULL, doc_id TEXT NOT NULL, grade INTEGER, note TEXT NOT NULL,
    span_start INTEGER, span_end INTEGER, changed_at TEXT NOT NULL, action TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    project TEXT NOT NULL, annotator TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL,
    PRIMARY KEY (project, annotator));
"""
ADDED_COLUMNS = {
    "projects": ("reranker TEXT NOT NULL DEFAULT 'rank1'", "blind INTEGER NOT NULL DEFAULT 0"),
}
"""Columns added after the first release, which an older file gains when it is opened."""
LEGACY_RERANKER = "rank1"
"""The reranker of projects and model judgments written before files named one (rank1 was the only one)."""
MODEL_COLUMNS = ("project", "query_id", "doc_id", "model", "event")
PROJECT_COLUMNS = ("name", "corpus", "guideline", "guideline_as_instruction", "grades", "depth", "created_at",
                   "reranker", "blind")


def _insert(table: str, columns: Sequence[str], *, ignore: bool = False, replace: bool = False) -> str:
    verb = "INSERT OR IGNORE" if ignore else "INSERT OR REPLACE" if replace else "INSERT"
    return f"{verb} INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})"


class AnnotationError(ValueError):
    """A request the store refuses; the message says which field or line and why."""


def now() -> str:
    """UTC time with microseconds: judgments made in one burst still order."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass(frozen=True, kw_only=True, slots=True)
class Project:
    name: str
    corpus: str
    guideline: str = ""
    guideline_as_instruction: bool = False
    grades: tuple[str, ...] = DEFAULT_GRADES
    """Grade ``i`` is labelled ``grades[i]``; 0 is not relevant."""
    depth: int = 20
    """Candidates (documents) judged per query."""
    created_at: str = ""
    reranker: str = LEGACY_RERANKER
    """The reranker whose judgments annotators see beside their own (one that judges each document)."""
    blind: bool = False
    """The model's judgment of a document stays hidden until the annotator has graded it."""

    @property
    def instruction(self) -> str:
        """What the model is told besides the query."""
        return self.guideline if self.guideline_as_instruction else ""


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnotationQuery:
    query_id: str
    text: str
    position: int


@dataclass(frozen=True, kw_only=True, slots=True)
class StoredCandidate:
    """A passage as it was shown for a query: what spans point into."""

    query_id: str
    doc_id: str
    rank: int
    passage_id: str
    title: str
    passage: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelJudgment:
    """A reranker's judgment of one candidate, kept as the outcome event it streamed (so that a new reranker or a
    new field needs no new column): rank1's ``verdict`` and ``p_true``, or the assessor's ``grade`` and
    ``distribution`` over the grades 0–3, read from it; None (or empty) when it failed."""

    query_id: str
    doc_id: str
    model: str
    outcome: Outcome

    @property
    def reranker(self) -> str:
        return self.outcome.reranker

    @property
    def reasoning(self) -> str:
        return self.outcome.reasoning

    @property
    def forced(self) -> bool:
        return not isinstance(self.outcome, Failed) and self.outcome.forced

    @property
    def end_reason(self) -> str:
        return "failed" if isinstance(self.outcome, Failed) else self.outcome.end_reason

    @property
    def failure(self) -> str:
        return self.outcome.reason if isinstance(self.outcome, Failed) else ""

    @property
    def verdict(self) -> bool | None:
        return self.outcome.verdict if isinstance(self.outcome, Judged) else None

    @property
    def p_true(self) -> float | None:
        return self.outcome.p_true if isinstance(self.outcome, Judged) else None

    @property
    def grade(self) -> int | None:
        return self.outcome.grade if isinstance(self.outcome, Graded) else None

    @property
    def distribution(self) -> tuple[float, ...]:
        return self.outcome.distribution if isinstance(self.outcome, Graded) else ()

    @property
    def measured(self) -> bool:
        return self.p_true is not None or self.grade is not None

    @property
    def graded(self) -> bool:
        return self.grade is not None

    @property
    def expected_grade(self) -> float | None:
        return expected_grade(self.distribution) if self.graded else None

    @property
    def score(self) -> float | None:
        """What the reranker ranks by: P(true), or the expected grade."""
        return self.expected_grade if self.graded else self.p_true

    def p_relevant(self, relevant_from: int) -> float | None:
        """The measured probability that the document is relevant: P(true), or P(grade ≥ ``relevant_from``)."""
        return sum(self.distribution[relevant_from:]) if self.graded else self.p_true

    def describe(self) -> str:
        """The judgment in words (plain text)."""
        if self.grade is not None and self.expected_grade is not None:
            return (f"grade {self.grade} (p {self.distribution[self.grade]:.2f}) · expected grade "
                    f"{self.expected_grade:.2f}")
        if self.p_true is not None:
            return f"{'relevant' if self.verdict else 'not relevant'} · P(true) {self.p_true:.3f}"
        return f"no judgment: {self.failure}"

    def short(self) -> str:
        """The judgment in a list column."""
        if self.grade is not None and self.expected_grade is not None:
            return f"{self.grade} ({self.expected_grade:.2f})"
        return "failed" if self.p_true is None else f"{self.p_true:.2f}"


@dataclass(frozen=True, kw_only=True, slots=True)
class Span:
    """Characters ``start`` to ``end`` of the candidate's passage."""

    start: int
    end: int


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceSentence:
    """A sentence of a candidate's passage (offsets into the stored passage) and the model's measured delta."""

    start: int
    end: int
    delta: float


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelEvidence:
    """The model's evidence for its judgment of one candidate, in the stored passage's offsets (the title, which
    the model read as a sentence of its own, is not part of that passage and is left out)."""

    query_id: str
    doc_id: str
    model: str
    sentences: tuple[EvidenceSentence, ...]

    @property
    def strongest(self) -> EvidenceSentence | None:
        """The sentence that supports the score most; None when none supports it."""
        best = max(self.sentences, key=lambda sentence: sentence.delta, default=None)
        return best if best is not None and best.delta > 0 else None

    @property
    def span(self) -> Span | None:
        """The model's evidence as one span, like an annotator's: its strongest sentence."""
        best = self.strongest
        return Span(start=best.start, end=best.end) if best is not None else None


def model_evidence(query_id: str, model: str, event: Evidence, candidate: StoredCandidate) -> ModelEvidence:
    """What is kept of an evidence event: its sentences moved into the stored passage's offsets (the reranker
    read title, space, passage)."""
    shift = len(candidate.title) + 1 if candidate.title and event.passage.startswith(f"{candidate.title} ") else 0
    sentences = tuple(EvidenceSentence(start=sentence.start - shift, end=sentence.end - shift, delta=sentence.delta)
                      for sentence in event.sentences
                      if sentence.start >= shift and candidate.passage[sentence.start - shift:sentence.end - shift]
                      == sentence.text)
    return ModelEvidence(query_id=query_id, doc_id=event.doc_id, model=model, sentences=sentences)


@dataclass(frozen=True, kw_only=True, slots=True)
class HumanJudgment:
    annotator: str
    query_id: str
    doc_id: str
    grade: int
    note: str = ""
    span: Span | None = None
    judged_at: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Position:
    query_id: str
    doc_id: str


def _model_row(row: sqlite3.Row) -> ModelJudgment:
    outcome = event_from_json(json.loads(row["event"]))
    if not isinstance(outcome, Judged | Graded | Failed):
        raise AnnotationError(f"model judgment of {row['doc_id']!r}: a {outcome.type} event is not an outcome")
    return ModelJudgment(query_id=row["query_id"], doc_id=row["doc_id"], model=row["model"], outcome=outcome)


def legacy_outcome(fields: Mapping[str, Any], *, doc_id: str, passage_id: str) -> Outcome:
    """The outcome event of a model judgment kept as columns (files and exports of earlier versions): what they
    kept, with the log-probabilities of the kept probabilities (normalised over the verdict or grade tokens, as
    the probabilities were) and 0 tokens (not kept)."""
    ids = {"reranker": str(fields.get("reranker") or LEGACY_RERANKER), "doc_id": doc_id, "passage_id": passage_id,
           "reasoning": str(fields.get("reasoning") or "")}
    measured = {"tokens": 0, "end_reason": str(fields.get("end_reason") or "verdict"),
                "forced": bool(fields.get("forced")), "truncated_passage": False}
    distribution = tuple(float(p) for p in fields.get("distribution") or ())
    if fields.get("grade") is not None and distribution:
        return Graded(**ids, **measured, grade=int(fields["grade"]), distribution=distribution,
                      expected_grade=expected_grade(distribution), logprobs=tuple(_log(p) for p in distribution))
    if fields.get("p_true") is not None:
        p_true = float(fields["p_true"])
        verdict = bool(fields["verdict"]) if fields.get("verdict") is not None else p_true >= 0.5
        return Judged(**ids, **measured, verdict=verdict, p_true=p_true, logprob_true=_log(p_true),
                      logprob_false=_log(1 - p_true))
    return Failed(**ids, reason=str(fields.get("failure") or "no judgment was kept"))


def _columns(row: sqlite3.Row) -> dict[str, Any]:
    """A legacy ``model_judgments`` row as fields (files from before graded models lack the graded columns)."""
    fields = dict(row)
    fields["distribution"] = json.loads(fields.get("distribution") or "[]")
    return fields


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _human_row(row: sqlite3.Row) -> HumanJudgment:
    span = None if row["span_start"] is None else Span(start=row["span_start"], end=row["span_end"])
    return HumanJudgment(annotator=row["annotator"], query_id=row["query_id"], doc_id=row["doc_id"],
                         grade=row["grade"], note=row["note"], span=span, judged_at=row["judged_at"])


def _model_values(project: str, item: ModelJudgment) -> tuple[object, ...]:
    return (project, item.query_id, item.doc_id, item.model, json.dumps(event_to_json(item.outcome)))


def _candidate_values(project: str, item: StoredCandidate) -> tuple[object, ...]:
    return (project, item.query_id, item.doc_id, item.rank, item.passage_id, item.title, item.passage)


def model_judgment(query_id: str, model: str, event: Outcome) -> ModelJudgment:
    """What is kept of a pointwise reranker's outcome: the event itself (replayed ones as fresh)."""
    outcome = event if isinstance(event, Failed) else dataclasses.replace(event, from_cache=False)
    return ModelJudgment(query_id=query_id, doc_id=event.doc_id, model=model, outcome=outcome)


def _check(judgment: HumanJudgment, grades: Sequence[str],
           candidates: dict[tuple[str, str], StoredCandidate]) -> None:
    """Refuse a judgment with no annotator, off the scale, of an unknown candidate or with a span outside it."""
    if not judgment.annotator.strip():
        raise AnnotationError("annotator: give your name before judging")
    if not 0 <= judgment.grade < len(grades):
        raise AnnotationError(f"grade: {judgment.grade} is not on this project's scale 0–{len(grades) - 1}")
    candidate = candidates.get((judgment.query_id, judgment.doc_id))
    if candidate is None:
        raise AnnotationError(f"doc_id: {judgment.doc_id!r} is not a candidate of query {judgment.query_id!r}")
    span = judgment.span
    if span is not None and not 0 <= span.start < span.end <= len(candidate.passage):
        raise AnnotationError(f"span: {span.start}–{span.end} is not within the passage "
                              f"(0–{len(candidate.passage)} characters)")


class AnnotationStore:
    """One SQLite file of projects; safe to share between threads."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        for table, columns in ADDED_COLUMNS.items():
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column in columns:
                if column.split()[0] not in present:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        self._migrate_model_columns()

    def _migrate_model_columns(self) -> None:
        """An older file kept model judgments as one column per field (``model_judgments``): each becomes its
        outcome event in ``model_outcomes``, once, in one transaction."""
        if not self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'model_judgments'"
                                ).fetchone():
            return
        with self._transaction() as db:
            rows = db.execute("SELECT m.*, c.passage_id AS candidate_passage FROM model_judgments m LEFT JOIN "
                              "candidates c ON c.project = m.project AND c.query_id = m.query_id AND "
                              "c.doc_id = m.doc_id").fetchall()
            db.executemany(_insert("model_outcomes", MODEL_COLUMNS, ignore=True), [
                _model_values(row["project"], ModelJudgment(
                    query_id=row["query_id"], doc_id=row["doc_id"], model=row["model"],
                    outcome=legacy_outcome(_columns(row), doc_id=row["doc_id"],
                                           passage_id=row["candidate_passage"] or row["doc_id"])))
                for row in rows])
            db.execute("DROP TABLE model_judgments")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _rows(self, sql: str, *parameters: object) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, parameters).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Projects and their queries -------------------------------------------------------------------------

    def create_project(self, project: Project, queries: Sequence[tuple[str, str]],
                       reference: dict[str, dict[str, int]] | None = None) -> Project:
        """A new project over ``queries`` (id, text); ``reference`` are existing qrels to compare against."""
        name = project.name.strip()
        if not name:
            raise AnnotationError("project name: give the project a name")
        if not queries:
            raise AnnotationError("queries: the project needs at least one query")
        if not 1 <= project.depth <= MAX_DEPTH:
            raise AnnotationError(f"candidates per query: choose 1 to {MAX_DEPTH}, got {project.depth}")
        if not 2 <= len(project.grades) <= MAX_GRADES:
            raise AnnotationError(f"grades: give 2 to {MAX_GRADES} grade labels, got {len(project.grades)}")
        ids = [query_id for query_id, _ in queries]
        duplicate = next((query_id for query_id in ids if ids.count(query_id) > 1), None)
        if duplicate is not None:
            raise AnnotationError(f"queries: query id {duplicate!r} appears more than once")
        reranker = RERANKERS.get(project.reranker)
        if reranker is None or not reranker.judges_documents:
            raise AnnotationError(f"model: choose a reranker that judges each document "
                                  f"({', '.join(name for name, cls in RERANKERS.items() if cls.judges_documents)}), "
                                  f"got {project.reranker!r}")
        if reranker.grades and len(project.grades) != reranker.grades:
            raise AnnotationError(f"grades: the {project.reranker} grades on a scale of {reranker.grades} grades (0–"
                                  f"{reranker.grades - 1}); give the project that many, not {len(project.grades)}")
        created = dataclasses.replace(project, name=name, created_at=project.created_at or now())
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM projects WHERE name = ?", (name,)).fetchone():
                raise AnnotationError(f"project name: a project called {name!r} already exists")
            self._insert_project(db, created)
            db.executemany("INSERT INTO queries VALUES (?, ?, ?, ?)",
                           [(name, query_id, position, text) for position, (query_id, text) in enumerate(queries)])
            db.executemany("INSERT INTO reference_qrels VALUES (?, ?, ?, ?)",
                           [(name, query_id, doc_id, grade) for query_id, graded in (reference or {}).items()
                            for doc_id, grade in graded.items()])
        return created

    @staticmethod
    def _insert_project(db: sqlite3.Connection, project: Project) -> None:
        db.execute(_insert("projects", PROJECT_COLUMNS),
                   (project.name, project.corpus, project.guideline, int(project.guideline_as_instruction),
                    json.dumps(list(project.grades)), project.depth, project.created_at, project.reranker,
                    int(project.blind)))

    def project_names(self) -> list[str]:
        return [row["name"] for row in self._rows("SELECT name FROM projects ORDER BY created_at, name")]

    def project(self, name: str) -> Project:
        rows = self._rows("SELECT * FROM projects WHERE name = ?", name)
        if not rows:
            raise AnnotationError(f"project: there is no project called {name!r}")
        row = rows[0]
        return Project(name=row["name"], corpus=row["corpus"], guideline=row["guideline"],
                       guideline_as_instruction=bool(row["guideline_as_instruction"]),
                       grades=tuple(json.loads(row["grades"])), depth=row["depth"], created_at=row["created_at"],
                       reranker=row["reranker"], blind=bool(row["blind"]))

    def queries(self, project: str) -> list[AnnotationQuery]:
        return [AnnotationQuery(query_id=row["query_id"], text=row["text"], position=row["position"])
                for row in self._rows("SELECT * FROM queries WHERE project = ? ORDER BY position", project)]

    def reference(self, project: str) -> dict[str, dict[str, int]]:
        qrels: dict[str, dict[str, int]] = {}
        for row in self._rows("SELECT * FROM reference_qrels WHERE project = ? ORDER BY query_id, doc_id", project):
            qrels.setdefault(row["query_id"], {})[row["doc_id"]] = row["grade"]
        return qrels

    # Candidates and the model's judgments ---------------------------------------------------------------

    def add_candidates(self, project: str, candidates: Iterable[StoredCandidate]) -> None:
        """Keep the candidates shown for a query; ones already kept stay as they were."""
        with self._transaction() as db:
            db.executemany("INSERT OR IGNORE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [_candidate_values(project, item) for item in candidates])

    def candidates(self, project: str, query_id: str | None = None) -> list[StoredCandidate]:
        """In query order, then first-stage rank."""
        rows = self._rows(
            "SELECT c.* FROM candidates c JOIN queries q ON q.project = c.project AND q.query_id = c.query_id "
            "WHERE c.project = ? AND (? IS NULL OR c.query_id = ?) ORDER BY q.position, c.rank",
            project, query_id, query_id)
        return [StoredCandidate(query_id=row["query_id"], doc_id=row["doc_id"], rank=row["rank"],
                                passage_id=row["passage_id"], title=row["title"], passage=row["passage"])
                for row in rows]

    def put_model_judgment(self, project: str, judgment: ModelJudgment) -> None:
        with self._transaction() as db:
            db.execute(_insert("model_outcomes", MODEL_COLUMNS, replace=True), _model_values(project, judgment))

    def model_judgments(self, project: str, query_id: str | None = None) -> dict[tuple[str, str], ModelJudgment]:
        """By (query id, doc id)."""
        rows = self._rows("SELECT * FROM model_outcomes WHERE project = ? AND (? IS NULL OR query_id = ?)",
                          project, query_id, query_id)
        return {(row["query_id"], row["doc_id"]): _model_row(row) for row in rows}

    def put_model_evidence(self, project: str, evidence: ModelEvidence) -> None:
        sentences = json.dumps([[item.start, item.end, item.delta] for item in evidence.sentences])
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO model_evidence VALUES (?, ?, ?, ?, ?)",
                       (project, evidence.query_id, evidence.doc_id, evidence.model, sentences))

    def model_evidence(self, project: str, query_id: str | None = None) -> dict[tuple[str, str], ModelEvidence]:
        """By (query id, doc id)."""
        rows = self._rows("SELECT * FROM model_evidence WHERE project = ? AND (? IS NULL OR query_id = ?)",
                          project, query_id, query_id)
        return {(row["query_id"], row["doc_id"]): ModelEvidence(
            query_id=row["query_id"], doc_id=row["doc_id"], model=row["model"],
            sentences=tuple(EvidenceSentence(start=start, end=end, delta=delta)
                            for start, end, delta in json.loads(row["sentences"]))) for row in rows}

    # Human judgments ------------------------------------------------------------------------------------

    def judge(self, project: str, judgment: HumanJudgment) -> HumanJudgment:
        """Record (or change) one annotator's judgment of one candidate; committed when this returns."""
        candidates = {(item.query_id, item.doc_id): item for item in self.candidates(project, judgment.query_id)}
        _check(judgment, self.project(project).grades, candidates)
        stored = HumanJudgment(annotator=judgment.annotator.strip(), query_id=judgment.query_id,
                               doc_id=judgment.doc_id, grade=judgment.grade, note=judgment.note, span=judgment.span,
                               judged_at=judgment.judged_at or now())
        with self._transaction() as db:
            self._write_judgment(db, project, stored, action="judge")
        return stored

    @staticmethod
    def _write_judgment(db: sqlite3.Connection, project: str, judgment: HumanJudgment, *, action: str) -> None:
        start, end = (judgment.span.start, judgment.span.end) if judgment.span else (None, None)
        db.execute("INSERT OR REPLACE INTO judgments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (project, judgment.annotator, judgment.query_id, judgment.doc_id, judgment.grade,
                    judgment.note, start, end, judgment.judged_at))
        db.execute("INSERT INTO judgment_history (project, annotator, query_id, doc_id, grade, note, span_start, "
                   "span_end, changed_at, action) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (project, judgment.annotator, judgment.query_id, judgment.doc_id, judgment.grade,
                    judgment.note, start, end, judgment.judged_at, action))

    def merge(self, project: Project, queries: Sequence[tuple[str, str]], reference: dict[str, dict[str, int]],
              candidates: Sequence[StoredCandidate], models: Sequence[ModelJudgment],
              judgments: Sequence[HumanJudgment]) -> None:
        """Add an imported project, or continue the stored one of that name (same grades): queries, reference
        qrels, candidates and model judgments it lacks are added; each judgment replaces the stored one when it
        is newer. All or nothing."""
        known = {(item.query_id, item.doc_id): item for item in candidates}
        stored = project.name in self.project_names()
        if stored:
            if self.project(project.name).grades != project.grades:
                raise AnnotationError(f"grades: project {project.name!r} exists here with other grades")
            known |= {(item.query_id, item.doc_id): item for item in self.candidates(project.name)}
        for judgment in judgments:
            _check(judgment, project.grades, known)
        with self._transaction() as db:
            if not stored:
                self._insert_project(db, project)
            first = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM queries WHERE project = ?",
                               (project.name,)).fetchone()[0]
            db.executemany("INSERT OR IGNORE INTO queries VALUES (?, ?, ?, ?)",
                           [(project.name, query_id, first + offset, text)
                            for offset, (query_id, text) in enumerate(queries)])
            db.executemany("INSERT OR IGNORE INTO reference_qrels VALUES (?, ?, ?, ?)",
                           [(project.name, query_id, doc_id, grade) for query_id, graded in reference.items()
                            for doc_id, grade in graded.items()])
            db.executemany("INSERT OR IGNORE INTO candidates VALUES (?, ?, ?, ?, ?, ?, ?)",
                           [_candidate_values(project.name, item) for item in candidates])
            db.executemany(_insert("model_outcomes", MODEL_COLUMNS, ignore=True),
                           [_model_values(project.name, item) for item in models])
            for judgment in judgments:
                row = db.execute("SELECT judged_at FROM judgments WHERE project = ? AND annotator = ? AND "
                                 "query_id = ? AND doc_id = ?", (project.name, judgment.annotator,
                                                                 judgment.query_id, judgment.doc_id)).fetchone()
                if row is None or row["judged_at"] < judgment.judged_at:
                    self._write_judgment(db, project.name, judgment, action="import")

    def clear(self, project: str, annotator: str, query_id: str, doc_id: str) -> None:
        """Take a judgment back (the history keeps it)."""
        with self._transaction() as db:
            db.execute("DELETE FROM judgments WHERE project = ? AND annotator = ? AND query_id = ? AND doc_id = ?",
                       (project, annotator, query_id, doc_id))
            db.execute("INSERT INTO judgment_history (project, annotator, query_id, doc_id, grade, note, "
                       "changed_at, action) VALUES (?, ?, ?, ?, NULL, '', ?, 'clear')",
                       (project, annotator, query_id, doc_id, now()))

    def judgments(self, project: str, *, annotator: str | None = None,
                  query_id: str | None = None) -> list[HumanJudgment]:
        """In query order, candidate rank, then annotator."""
        rows = self._rows(
            "SELECT j.* FROM judgments j JOIN candidates c ON c.project = j.project AND c.query_id = j.query_id "
            "AND c.doc_id = j.doc_id JOIN queries q ON q.project = j.project AND q.query_id = j.query_id "
            "WHERE j.project = ? AND (? IS NULL OR j.annotator = ?) AND (? IS NULL OR j.query_id = ?) "
            "ORDER BY q.position, c.rank, j.annotator",
            project, annotator, annotator, query_id, query_id)
        return [_human_row(row) for row in rows]

    def annotators(self, project: str) -> list[str]:
        return [row["annotator"] for row in
                self._rows("SELECT DISTINCT annotator FROM judgments WHERE project = ? ORDER BY annotator", project)]

    def history(self, project: str, annotator: str, query_id: str, doc_id: str) -> list[tuple[str, int | None]]:
        """(time, grade) of every change to one judgment, oldest first; None where it was cleared."""
        rows = self._rows("SELECT changed_at, grade FROM judgment_history WHERE project = ? AND annotator = ? "
                          "AND query_id = ? AND doc_id = ? ORDER BY id", project, annotator, query_id, doc_id)
        return [(row["changed_at"], row["grade"]) for row in rows]

    # Where each annotator is ----------------------------------------------------------------------------

    def set_position(self, project: str, annotator: str, position: Position) -> None:
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO positions VALUES (?, ?, ?, ?)",
                       (project, annotator, position.query_id, position.doc_id))

    def position(self, project: str, annotator: str) -> Position | None:
        rows = self._rows("SELECT * FROM positions WHERE project = ? AND annotator = ?", project, annotator)
        return Position(query_id=rows[0]["query_id"], doc_id=rows[0]["doc_id"]) if rows else None
