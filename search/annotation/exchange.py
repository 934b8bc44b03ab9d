"""A project in and out of the store: graded TREC qrels, and JSONL that holds everything needed to go on
annotating elsewhere (importing an export and exporting again gives the same bytes).

The JSONL has one object per line, each with a ``type``: one ``project``, then its ``query`` lines, the
``reference`` qrels it was started with, every ``candidate`` with the model's judgment, and every human
``judgment`` with the query, passage, grade, note, span, model verdict, probability and reasoning.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any

from search.annotation.store import (
    LEGACY_RERANKER,
    AnnotationError,
    AnnotationStore,
    HumanJudgment,
    ModelJudgment,
    Project,
    Span,
    StoredCandidate,
    legacy_outcome,
)
from search.rerank.events import Failed, Graded, Judged, event_from_json, event_to_json


def qrels_text(store: AnnotationStore, project: str, annotator: str) -> str:
    """One annotator's grades as TREC qrels: ``query-id 0 doc-id grade``."""
    return "".join(f"{item.query_id} 0 {item.doc_id} {item.grade}\n"
                   for item in store.judgments(project, annotator=annotator))


def _model_json(judgment: ModelJudgment | None) -> dict[str, Any] | None:
    if judgment is None:
        return None
    return {"model": judgment.model, "reranker": judgment.reranker, "verdict": judgment.verdict,
            "p_true": judgment.p_true, "grade": judgment.grade, "distribution": list(judgment.distribution),
            "reasoning": judgment.reasoning, "forced": judgment.forced, "end_reason": judgment.end_reason,
            "failure": judgment.failure, "event": event_to_json(judgment.outcome)}


def _records(store: AnnotationStore, name: str) -> Iterator[dict[str, Any]]:
    project = store.project(name)
    yield {"type": "project", **asdict(project), "grades": list(project.grades)}
    texts = {}
    for query in store.queries(name):
        texts[query.query_id] = query.text
        yield {"type": "query", "query_id": query.query_id, "text": query.text}
    for query_id, graded in store.reference(name).items():
        for doc_id, grade in graded.items():
            yield {"type": "reference", "query_id": query_id, "doc_id": doc_id, "grade": grade}
    models = store.model_judgments(name)
    candidates = {}
    for candidate in store.candidates(name):
        candidates[candidate.query_id, candidate.doc_id] = candidate
        yield {"type": "candidate", "query_id": candidate.query_id, "doc_id": candidate.doc_id,
               "rank": candidate.rank, "passage_id": candidate.passage_id, "title": candidate.title,
               "passage": candidate.passage, "model": _model_json(models.get((candidate.query_id, candidate.doc_id)))}
    for judgment in store.judgments(name):
        candidate = candidates[judgment.query_id, judgment.doc_id]
        span = judgment.span
        yield {"type": "judgment", "query_id": judgment.query_id, "query": texts[judgment.query_id],
               "doc_id": judgment.doc_id, "title": candidate.title, "passage": candidate.passage,
               "annotator": judgment.annotator, "grade": judgment.grade, "note": judgment.note,
               "span": None if span is None else {"start": span.start, "end": span.end,
                                                  "text": candidate.passage[span.start:span.end]},
               "judged_at": judgment.judged_at,
               "model": _model_json(models.get((judgment.query_id, judgment.doc_id)))}


def jsonl_text(store: AnnotationStore, project: str) -> str:
    return "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in _records(store, project))


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], line: int) -> Any:
    value = record.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(item.__name__ for item in kind)
        raise AnnotationError(f"line {line}: field {name!r} must be {expected}, got {value!r}")
    return value


def _model(record: dict[str, Any], query_id: str, doc_id: str, line: int) -> ModelJudgment | None:
    model = record.get("model")
    if model is None:
        return None
    if not isinstance(model, dict):
        raise AnnotationError(f"line {line}: field 'model' must be an object or null")
    name = _field(model, "model", str, line)
    if isinstance(model.get("event"), dict):  # this version's exports: the outcome event itself
        try:
            outcome = event_from_json(model["event"])
        except (KeyError, TypeError, ValueError) as error:
            raise AnnotationError(f"line {line}: field 'model.event' is not an outcome event ({error})") from None
        if not isinstance(outcome, Judged | Graded | Failed) or outcome.doc_id != doc_id:
            raise AnnotationError(f"line {line}: field 'model.event' is not an outcome of document {doc_id!r}")
        return ModelJudgment(query_id=query_id, doc_id=doc_id, model=name, outcome=outcome)
    p_true = model.get("p_true")
    if p_true is not None and not isinstance(p_true, int | float):
        raise AnnotationError(f"line {line}: field 'model.p_true' must be a number or null")
    grade, distribution = model.get("grade"), model.get("distribution") or []
    if grade is not None and not isinstance(grade, int):
        raise AnnotationError(f"line {line}: field 'model.grade' must be an integer or null")
    if not isinstance(distribution, list) or not all(isinstance(p, int | float) for p in distribution):
        raise AnnotationError(f"line {line}: field 'model.distribution' must be a list of numbers")
    _field(model, "reasoning", str, line)
    _field(model, "end_reason", str, line)
    passage_id = str(record.get("passage_id") or doc_id)
    return ModelJudgment(query_id=query_id, doc_id=doc_id, model=name,
                         outcome=legacy_outcome(model, doc_id=doc_id, passage_id=passage_id))


def import_jsonl(store: AnnotationStore, text: str, *, source: str = "import") -> str:
    """Load an export into the store and return the project's name. A project of that name is created, or
    continued when it exists with the same grades: its missing queries and candidates are added, and each
    judgment replaces the stored one when it is newer. Nothing is written when any line is wrong."""
    project: Project | None = None
    queries: list[tuple[str, str]] = []
    reference: dict[str, dict[str, int]] = {}
    candidates: list[StoredCandidate] = []
    models: list[ModelJudgment] = []
    judgments: list[HumanJudgment] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as error:
            raise AnnotationError(f"{source}: line {line}: not JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise AnnotationError(f"{source}: line {line}: expected a JSON object")
        kind = record.get("type")
        try:
            if kind == "project":
                grades = _field(record, "grades", list, line)
                project = Project(name=_field(record, "name", str, line), corpus=_field(record, "corpus", str, line),
                                  guideline=_field(record, "guideline", str, line),
                                  guideline_as_instruction=bool(record.get("guideline_as_instruction")),
                                  grades=tuple(str(grade) for grade in grades),
                                  depth=_field(record, "depth", int, line),
                                  created_at=_field(record, "created_at", str, line),
                                  reranker=str(record.get("reranker", LEGACY_RERANKER)),
                                  blind=bool(record.get("blind")))
            elif project is None:
                raise AnnotationError(f"line {line}: the first line must be the project")
            elif kind == "query":
                queries.append((_field(record, "query_id", str, line), _field(record, "text", str, line)))
            elif kind == "reference":
                reference.setdefault(_field(record, "query_id", str, line), {})[
                    _field(record, "doc_id", str, line)] = _field(record, "grade", int, line)
            elif kind == "candidate":
                query_id, doc_id = _field(record, "query_id", str, line), _field(record, "doc_id", str, line)
                candidates.append(StoredCandidate(
                    query_id=query_id, doc_id=doc_id, rank=_field(record, "rank", int, line),
                    passage_id=_field(record, "passage_id", str, line), title=_field(record, "title", str, line),
                    passage=_field(record, "passage", str, line)))
                model = _model(record, query_id, doc_id, line)
                if model is not None:
                    models.append(model)
            elif kind == "judgment":
                span = record.get("span")
                if span is not None and not isinstance(span, dict):
                    raise AnnotationError(f"line {line}: field 'span' must be an object or null")
                judgments.append(HumanJudgment(
                    annotator=_field(record, "annotator", str, line), query_id=_field(record, "query_id", str, line),
                    doc_id=_field(record, "doc_id", str, line), grade=_field(record, "grade", int, line),
                    note=_field(record, "note", str, line),
                    span=None if span is None else Span(start=_field(span, "start", int, line),
                                                        end=_field(span, "end", int, line)),
                    judged_at=_field(record, "judged_at", str, line)))
            else:
                raise AnnotationError(f"line {line}: unknown type {kind!r} (project, query, reference, candidate "
                                      "or judgment)")
        except AnnotationError as error:
            message = str(error)
            raise AnnotationError(message if message.startswith(source) else f"{source}: {message}") from None
    if project is None:
        raise AnnotationError(f"{source}: no project line; is this an Explainable Search annotation export?")
    store.merge(project, queries, reference, candidates, models, judgments)
    return project.name
