"""One annotator's place in a project: which query and document they are on, the filter they work through,
and the model's live reasoning for the query on screen. Every move and grade is written to the store at once,
so reopening the project returns the annotator to where they were. Pure logic; the page renders it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from search.annotation.store import (
    AnnotationError,
    AnnotationQuery,
    AnnotationStore,
    HumanJudgment,
    ModelEvidence,
    ModelJudgment,
    Position,
    Project,
    Span,
    StoredCandidate,
    model_evidence,
    model_judgment,
)
from search.corpus import Passage
from search.rerank.events import Event, Evidence, Failed, Measured, Reasoning
from search.retrieval.ranking import Candidate, Hit

Filter = Literal["all", "unjudged", "disagree"]
FILTERS: dict[Filter, str] = {"all": "all documents", "unjudged": "not yet judged by me",
                              "disagree": "model and I disagree"}
FindCandidates = Callable[[str, str, int], Sequence[Candidate]]
"""(corpus, query text, depth) → the first-stage candidates, the best passage of each document."""
FIRST_STAGE = "first-stage"


def stored(query_id: str, candidates: Sequence[Candidate]) -> list[StoredCandidate]:
    return [StoredCandidate(query_id=query_id, doc_id=item.passage.doc_id, rank=rank,
                            passage_id=item.passage.passage_id, title=item.passage.title, passage=item.passage.text)
            for rank, item in enumerate(candidates, start=1)]


def rerank_candidate(item: StoredCandidate) -> Candidate:
    """A stored candidate in the form the reranker reads."""
    passage = Passage(passage_id=item.passage_id, doc_id=item.doc_id, index=0, title=item.title, text=item.passage)
    return Candidate(passage=passage, stage=FIRST_STAGE, provenance={FIRST_STAGE: Hit(rank=item.rank, score=0.0)})


def default_relevant_from(grades: Sequence[str]) -> int:
    """The lowest grade that counts as relevant when judgments are made binary: 2 on the 0–3 scale, as in TREC
    Deep Learning; 1 on a 0–1 scale."""
    return max(1, len(grades) // 2)


@dataclass(kw_only=True, slots=True)
class Workbench:
    store: AnnotationStore
    project: Project
    annotator: str
    find_candidates: FindCandidates
    model: str = ""
    """The model that judges, by its cache key: stored judgments by another model are judged again."""
    circularity: str = ""
    """Why the project's model judging the reranker under evaluation would be circular ("" when nothing says
    so)."""
    queries: list[AnnotationQuery] = field(default_factory=list)
    query_index: int = 0
    doc_id: str = ""
    filter: Filter = "all"
    threshold: float = 0.5
    relevant_from: int = 1
    show_others: bool = False
    has_reference: bool = False
    """Whether the project started with existing qrels (read once, when the workbench opens)."""
    live: dict[str, str] = field(default_factory=dict)
    """Reasoning so far of documents the model is judging now."""

    @classmethod
    def open(cls, store: AnnotationStore, project: str, annotator: str, find_candidates: FindCandidates, *,
             model: str = "") -> Workbench:
        """The annotator's workbench, where they left it (or at the first document)."""
        annotator = annotator.strip()
        if not annotator:
            raise AnnotationError("annotator: give your name to start judging")
        bench = cls(store=store, project=store.project(project), annotator=annotator,
                    find_candidates=find_candidates, model=model, queries=store.queries(project))
        bench.relevant_from = default_relevant_from(bench.project.grades)
        bench.has_reference = bool(store.reference(project))
        position = store.position(project, annotator)
        ids = [query.query_id for query in bench.queries]
        if position is not None and position.query_id in ids:
            bench.query_index = ids.index(position.query_id)
        bench._enter_query(position.doc_id if position else "")
        return bench

    # What is on screen -----------------------------------------------------------------------------------

    @property
    def query(self) -> AnnotationQuery:
        return self.queries[self.query_index]

    def candidates(self) -> list[StoredCandidate]:
        return self.store.candidates(self.project.name, self.query.query_id)

    def current(self) -> StoredCandidate | None:
        return next((item for item in self.candidates() if item.doc_id == self.doc_id), None)

    def model_judgments(self) -> dict[str, ModelJudgment]:
        """The project's reranker's judgments (on the current model) of this query's documents, by doc id."""
        return {doc_id: judgment for (_, doc_id), judgment in
                self.store.model_judgments(self.project.name, self.query.query_id).items()
                if (not self.model or judgment.model == self.model) and judgment.reranker == self.project.reranker}

    def model_evidence(self) -> dict[str, ModelEvidence]:
        """The current model's evidence for its judgments of this query's documents, by doc id."""
        return {doc_id: evidence for (_, doc_id), evidence in
                self.store.model_evidence(self.project.name, self.query.query_id).items()
                if not self.model or evidence.model == self.model}

    def shows_model(self, doc_id: str) -> bool:
        """Whether the model's judgment of ``doc_id`` may be shown: always, or in a blind project only once this
        annotator has graded it (so that it cannot anchor their grade)."""
        return not self.project.blind or doc_id in self.judgments()

    def judgments(self) -> dict[str, HumanJudgment]:
        """This annotator's judgments of this query's documents, by doc id."""
        return {item.doc_id: item for item in self.store.judgments(self.project.name, annotator=self.annotator,
                                                                   query_id=self.query.query_id)}

    def reference(self) -> dict[str, int]:
        """The grades the project's existing qrels give this query's documents, by doc id."""
        return dict(self.store.reference(self.project.name).get(self.query.query_id, {}))

    def others(self) -> dict[str, list[HumanJudgment]]:
        """Other annotators' judgments of this query's documents, by doc id."""
        found: dict[str, list[HumanJudgment]] = {}
        for item in self.store.judgments(self.project.name, query_id=self.query.query_id):
            if item.annotator != self.annotator:
                found.setdefault(item.doc_id, []).append(item)
        return found

    def disagrees(self, human: HumanJudgment | None, model: ModelJudgment | None) -> bool:
        """A graded model disagrees when its most likely grade is not the annotator's; rank1 when one says relevant
        (P(true) ≥ the threshold, grade ≥ relevant_from) and the other does not."""
        if human is None or model is None or not model.measured:
            return False
        if model.graded:
            return human.grade != model.grade
        return (human.grade >= self.relevant_from) != (model.p_relevant(self.relevant_from) >= self.threshold)

    def shown(self, item: StoredCandidate, judgments: dict[str, HumanJudgment],
              models: dict[str, ModelJudgment]) -> bool:
        """Whether the filter keeps ``item``."""
        if self.filter == "unjudged":
            return item.doc_id not in judgments
        if self.filter == "disagree":
            return self.disagrees(judgments.get(item.doc_id), models.get(item.doc_id))
        return True

    def progress(self) -> tuple[int, int, int]:
        """(documents this annotator judged, candidates of the queries opened so far, queries opened)."""
        judged = len(self.store.judgments(self.project.name, annotator=self.annotator))
        candidates = self.store.candidates(self.project.name)
        return judged, len(candidates), len({item.query_id for item in candidates})

    # Moving ----------------------------------------------------------------------------------------------

    def _enter_query(self, doc_id: str = "") -> None:
        """Open the current query: its candidates are found and kept the first time."""
        if not self.candidates():
            found = self.find_candidates(self.project.corpus, self.query.text, self.project.depth)
            self.store.add_candidates(self.project.name, stored(self.query.query_id, found))
        self.live = {}
        ids = [item.doc_id for item in self.candidates()]
        self.doc_id = doc_id if doc_id in ids else (ids[0] if ids else "")
        self._remember()

    def _remember(self) -> None:
        self.store.set_position(self.project.name, self.annotator,
                                Position(query_id=self.query.query_id, doc_id=self.doc_id))

    def move_query(self, step: int) -> None:
        index = min(max(self.query_index + step, 0), len(self.queries) - 1)
        if index != self.query_index:
            previous, self.query_index = self.query_index, index
            try:
                self._enter_query()
            except AnnotationError:
                self.query_index = previous  # stay on the query that works
                raise

    def move(self, step: int) -> None:
        """To the next (``step`` 1) or previous (-1) document the filter keeps; stays put at either end."""
        items = self.candidates()
        judgments, models = self.judgments(), self.model_judgments()
        ids = [item.doc_id for item in items]
        index = ids.index(self.doc_id) if self.doc_id in ids else -1
        while 0 <= index + step < len(items):
            index += step
            if self.shown(items[index], judgments, models):
                self.doc_id = items[index].doc_id
                self._remember()
                return

    @property
    def position(self) -> Position:
        """The document on screen."""
        return Position(query_id=self.query.query_id, doc_id=self.doc_id)

    def target(self, doc: Position | None) -> Position:
        """The document an edit is for: ``doc``, the one the page showed when the annotator typed it (it may no
        longer be the current one), or the current one when none is named (scripts and tests)."""
        doc = doc or self.position
        if not doc.doc_id:
            raise AnnotationError("doc_id: this query has no candidates to judge")
        if not any(item.doc_id == doc.doc_id for item in self.store.candidates(self.project.name, doc.query_id)):
            raise AnnotationError(f"doc_id: {doc.doc_id!r} is not a candidate of query {doc.query_id!r}")
        return doc

    def judgment(self, doc: Position) -> HumanJudgment | None:
        """This annotator's judgment of ``doc``, of any query."""
        return next((item for item in self.store.judgments(self.project.name, annotator=self.annotator,
                                                           query_id=doc.query_id) if item.doc_id == doc.doc_id), None)

    def grade(self, grade: int, *, doc: Position | None = None, note: str = "", span: Span | None = None
              ) -> HumanJudgment:
        """Judge ``doc`` (see ``target``), then, when it is the current document, move on to the next one the
        filter keeps. A grade for a document already left lands on that document and moves nothing: the page has
        moved on from it already."""
        doc = self.target(doc)
        saved = self.store.judge(self.project.name, HumanJudgment(
            annotator=self.annotator, query_id=doc.query_id, doc_id=doc.doc_id, grade=grade, note=note, span=span))
        if doc == self.position:
            self.move(1)
        return saved

    def annotate(self, *, doc: Position | None = None, note: str, span: Span | None) -> HumanJudgment:
        """Change the note and span of ``doc``'s judgment (see ``target``), keeping its grade."""
        doc = self.target(doc)
        mine = self.judgment(doc)
        if mine is None:
            raise AnnotationError("grade: give this document a grade first; the note and span go with it")
        return self.store.judge(self.project.name, HumanJudgment(
            annotator=self.annotator, query_id=doc.query_id, doc_id=doc.doc_id, grade=mine.grade, note=note,
            span=span))

    def keep(self, *, doc: Position | None = None, note: str, span: Span | None) -> HumanJudgment | None:
        """Before moving away from ``doc`` (see ``target``): save a changed note or span of a graded document
        (the judgment saved; None when nothing changed); refuse to leave an ungraded one with a note or span,
        which would be lost."""
        if not (doc or self.position).doc_id:
            return None  # a query without candidates: nothing was shown, nothing to keep
        doc = self.target(doc)
        mine = self.judgment(doc)
        if mine is None and (note.strip() or span is not None):
            raise AnnotationError("note: grade this document to keep its note and evidence, or clear them, "
                                  "before moving on")
        if mine is not None and (note != mine.note or span != mine.span):
            return self.annotate(doc=doc, note=note, span=span)
        return None

    def clear(self, *, doc: Position | None = None) -> None:
        """Take back the judgment of ``doc`` (see ``target``)."""
        doc = self.target(doc)
        self.store.clear(self.project.name, self.annotator, doc.query_id, doc.doc_id)

    # The model -------------------------------------------------------------------------------------------

    def unjudged_by_model(self) -> list[Candidate]:
        """This query's candidates the current model has not judged yet, or failed to (it may pass this time)."""
        models = self.model_judgments()
        return [rerank_candidate(item) for item in self.candidates()
                if item.doc_id not in models or not models[item.doc_id].measured]

    def apply(self, query_id: str, event: Event) -> None:
        """Fold one reranker event of ``query_id``; final judgments are stored at once."""
        if isinstance(event, Reasoning) and query_id == self.query.query_id:
            self.live[event.doc_id] = self.live.get(event.doc_id, "") + event.text
        elif isinstance(event, Measured | Failed):
            self.store.put_model_judgment(self.project.name, model_judgment(query_id, self.model, event))
            if query_id == self.query.query_id:
                self.live.pop(event.doc_id, None)
        elif isinstance(event, Evidence):
            candidate = next((item for item in self.store.candidates(self.project.name, query_id)
                              if item.doc_id == event.doc_id), None)
            if candidate is not None:
                self.store.put_model_evidence(self.project.name,
                                              model_evidence(query_id, self.model, event, candidate))
