"""The annotator workbench tab: layout and wiring only; projects, judgments and agreement live in
search/annotation/.

Each grade is committed to SQLite before the page hears back, so closing the tab, restarting or killing the
app loses nothing, and reopening the project returns the annotator to the document they were on. Every edit
names the document it was typed for (the one on screen when the key was pressed or the button clicked) and its
place in the page's order of typing, so a grade lands on that document whatever the server's current one, and an
older edit of a document that arrives after a newer one does not undo it.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from search.annotation.agreement import (
    REFERENCE,
    ModelAgreement,
    annotator_agreement,
    evidence_overlap,
    model_agreement,
    reference_judgments,
)
from search.annotation.exchange import import_jsonl, jsonl_text, qrels_text
from search.annotation.store import (
    DEFAULT_GRADES,
    MAX_DEPTH,
    MAX_GRADES,
    AnnotationError,
    AnnotationStore,
    HumanJudgment,
    Position,
    Project,
    Span,
)
from search.annotation.workbench import FILTERS, Filter, Workbench
from search.corpus import load_qrels, load_queries
from search.engines import EngineError
from search.models import shared_lineage
from search.rerank.base import Reranker
from search.rerank.registry import RERANKERS
from search.retrieval.ranking import Candidate
from search.uploads import CorpusLibrary
from ui.annotation_cards import (
    SELECTION_JS,
    answered_marker,
    render_document,
    render_list,
    render_model,
    render_progress,
    typed_for_js,
)
from ui.results import render_notice

REFRESH_EVERY_S = 0.3
MODEL_AHEAD = 4
"""Documents the model reasons about at once in the workbench."""
"""How often the model panel and the list are brought up to date (sent only when they changed)."""
EDITS = "annotation-edits"
"""The concurrency group of every change: one at a time."""
MAX_IMPORT_BYTES = 200 * 2**20


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnotationContext:
    """What the tab needs from the app."""

    store: AnnotationStore
    library: CorpusLibrary
    reranker_for: Callable[[str, str], Reranker | None]
    """(the session's model, by its key in the Model panel; a reranker name) → that reranker on that model, or
    None when no model is loaded."""
    top_k: int
    ephemeral: bool = False
    """The store is lost when the app restarts (a Space without persistent storage)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TypedFor:
    """What the page says of an edit: the document on screen when the key was pressed or the button clicked, and
    the edit's number in the page's order of typing (requests can reach the server in another order)."""

    doc: Position
    seq: int

    @classmethod
    def read(cls, value: Any) -> TypedFor:
        """From the hidden field the page's script fills in; refused when it names no document, so that an edit
        is never applied to whichever document happens to be current."""
        try:
            return cls(doc=Position(query_id=str(value["query_id"]), doc_id=str(value["doc_id"])),
                       seq=int(value["seq"]))
        except (TypeError, KeyError, ValueError):
            raise gr.Error("This edit does not say which document it is for: reload the page.") from None


def render_storage(path: Path, *, ephemeral: bool) -> str:
    """Where annotations are kept, and a warning when that does not outlive a restart."""
    where = f"Annotations are kept in <code>{escape(str(path))}</code>."
    if not ephemeral:
        return f'<div class="es-notice">{where}</div>'
    return (f'<div class="es-notice es-error"><b>Annotations are lost when this Space restarts: they are not on '
            f"persistent storage.</b> {where} Export each project (JSONL) before the Space restarts, or turn on "
            "persistent storage in the Space's settings (docs/spaces.md).</div>")


def _format_kappa(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _typed_queries(text: str) -> list[tuple[str, str]]:
    """One query per line; ``id<TAB>text`` keeps an id, otherwise queries are numbered q1, q2, …"""
    queries = []
    for number, line in enumerate((line for line in text.splitlines() if line.strip()), start=1):
        query_id, tab, rest = line.partition("\t")
        queries.append((query_id.strip(), rest.strip()) if tab else (f"q{number}", line.strip()))
    return queries


def _file_safe(name: str) -> str:
    """A project or annotator name as part of an export's file name."""
    return "".join(char if char.isalnum() or char in "-_" else "_" for char in name)


def _shown_name(error: Exception, path: Path) -> str:
    """An error about an uploaded file, naming the file as the user knows it."""
    return str(error).replace(str(path), path.name)


def remembered_state(secret: str) -> gr.BrowserState:
    """What the browser remembers (annotator and project) across reloads and restarts. Render it outside the
    tabs: a component in a tab not yet shown is not mounted, and would read as empty when the page loads."""
    return gr.BrowserState({}, storage_key="explainable-search-annotator", secret=secret)


def circularity(bench: Workbench, search_reranker: Reranker | None) -> str:
    """Why the project's model judging what the Search tab's reranker ranks would be circular, or ""."""
    if search_reranker is None or search_reranker.name == bench.project.reranker:
        return ""
    reason = shared_lineage(bench.model, search_reranker.model_key)
    return (f"the {bench.project.reranker} judging here and the Search tab's {search_reranker.name} run on models "
            f"where {reason}: a model's judgments of its own family's rankings flatter them (Clarke & Dietz 2024). "
            "To evaluate that reranker with these judgments, load another model for one of them."
            ) if reason else ""


GRADE, SCORE = "grade", "mean model score"
P_RELEVANT, SHARE_RELEVANT = "mean P(relevant)", "share you judged relevant"
"""The agreement plots' columns: one name each for the frame that fills a plot and the plot that reads it."""


def agreement_frames(versus: ModelAgreement) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The model's mean score by the annotator's grade, and its calibration (P(relevant) bins against the share the
    annotator judged relevant), as the agreement plots read them."""
    by_grade = pd.DataFrame([{GRADE: str(grade), "documents": count, SCORE: mean}
                             for grade, count, mean in versus.score_by_grade], columns=[GRADE, "documents", SCORE])
    calibration = pd.DataFrame([{P_RELEVANT: item.mean_p_relevant, SHARE_RELEVANT: item.share_relevant,
                                 "documents": item.count} for item in versus.calibration],
                               columns=[P_RELEVANT, SHARE_RELEVANT, "documents"])
    return by_grade, calibration


def agreement_plots() -> tuple[gr.BarPlot, gr.ScatterPlot]:
    """The plots ``agreement_frames`` fills (the score is P(true) or the expected grade: the reranker's scale)."""
    return (gr.BarPlot(x=GRADE, y=SCORE, y_lim=[0, None],  # from 0: a grade's low mean must not look like none
                       label="The model's mean score (P(true) or expected grade) by your grade"),
            gr.ScatterPlot(x=P_RELEVANT, y=SHARE_RELEVANT, x_lim=[0, 1], y_lim=[0, 1],
                           label="Calibration: P(relevant) bins vs your judgments"))

class AnnotateTab:
    """The Annotate tab's handlers, one method each, over the store, the corpora and each browser session's open
    workbench. Each can be called without a browser; ``build_annotate_tab`` lays the tab out and wires them."""

    def __init__(self, context: AnnotationContext, *, auth: bool = False) -> None:
        self.context = context
        self.store, self.library = context.store, context.library
        self.auth = auth
        self.benches: dict[str, Workbench] = {}
        """Each browser session's open workbench."""
        self.last_shown: dict[str, tuple[str, str]] = {}
        """What the refresh timer last sent each session (it sends nothing when that has not changed)."""
        self.latest: dict[str, dict[Position, int]] = {}
        """Each session's latest edit written to each document, by the page's count."""
        self.exports = Path(tempfile.mkdtemp(prefix="explainable-search-annotations-"))

    def find_candidates(self, corpus: str, query: str, depth: int) -> list[Candidate]:
        if corpus not in self.library.names():
            raise AnnotationError(f"corpus: this project is over {corpus!r}, which is not loaded now; upload it "
                                  "again on the Search tab or start the app with --corpus")
        return list(self.library.get(corpus).search(query, depth).candidates)

    def bench_of(self, request: gr.Request) -> Workbench:
        bench = self.benches.get(request.session_hash or "")
        if bench is None:
            raise gr.Error("Open a project first (name and project at the top of this tab).")
        return bench

    def who(self, annotator: str, request: gr.Request) -> str:
        return request.username if self.auth and request.username else annotator

    def views(self, bench: Workbench, span: Span | None = None, *, answered: TypedFor | None = None
              ) -> tuple[str, str, str, int, int]:
        """What an edit answers with: progress, the document (with ``span`` marked, else the stored one, and the
        number of the edit it ``answered``, which the page's keys wait for) and the note and span fields holding
        the current document's stored ones. The model panel and the list follow on the next tick of the refresh
        timer."""
        mine = bench.judgments().get(bench.doc_id)
        span = span or (mine.span if mine else None)
        document = render_document(bench, span) + (answered_marker(answered.seq) if answered else "")
        return (render_progress(bench), document, mine.note if mine else "", span.start if span else -1,
                span.end if span else -1)

    @staticmethod
    def refusing(action: Callable[[], object]) -> None:
        """Run ``action``; a refused edit is shown on the page."""
        try:
            action()
        except AnnotationError as error:
            raise gr.Error(str(error)) from None

    def fresh(self, typed: TypedFor, request: gr.Request) -> bool:
        """Whether no later edit of the same document has been written: requests can reach the server in another
        order than they were typed, and the later edit stands."""
        return self.latest.get(request.session_hash or "", {}).get(typed.doc, -1) < typed.seq

    def wrote(self, typed: TypedFor, request: gr.Request) -> None:
        """Remember ``typed`` as the latest edit written to its document."""
        self.latest.setdefault(request.session_hash or "", {})[typed.doc] = typed.seq

    def edit(self, change: Callable[[Workbench, Position], object]) -> Callable[..., tuple]:
        """A handler that writes ``change`` to the document the edit was typed for (``TypedFor``), unless a later
        edit of it was written already; it answers with the current document."""
        def handler(typed: Any, request: gr.Request) -> tuple:
            bench, edit = self.bench_of(request), TypedFor.read(typed)
            if self.fresh(edit, request):
                self.refusing(lambda: change(bench, edit.doc))
                self.wrote(edit, request)
            return self.views(bench, answered=edit)
        return handler

    def grade(self, value: int) -> Callable[..., tuple]:
        """The handler of grade ``value``'s button and key, with the note and evidence typed for the document."""
        def handler(note: str, start: float, end: float, typed: Any, request: gr.Request) -> tuple:
            return self.edit(lambda bench, doc: bench.grade(value, doc=doc, note=note,
                                                            span=self.pending_span(start, end)))(typed, request)
        return handler

    @staticmethod
    def pending_span(start: float | None, end: float | None) -> Span | None:
        """The span in the hidden fields, or None when they hold none (-1) or an empty one."""
        return Span(start=int(start), end=int(end)) if start is not None and end is not None and start >= 0 \
            and end > start else None

    # Projects ------------------------------------------------------------------------------------------

    def restore(self, remembered: dict[str, str] | None, request: gr.Request) -> tuple[Any, ...]:
        remembered = remembered or {}
        name = request.username if self.auth and request.username else remembered.get("annotator", "")
        project = remembered.get("project") if remembered.get("project") in self.store.project_names() else None
        return (gr.update(value=name, interactive=not self.auth),
                gr.update(choices=self.store.project_names(), value=project))

    def open_project(self, annotator: str, project: str | None, key: str, search: str, request: gr.Request
                     ) -> tuple[Any, ...]:
        annotator = self.who(annotator, request)
        if not project:
            raise gr.Error("project: choose a project, or start one under “New project”.")
        try:
            chosen = self.context.reranker_for(key, self.store.project(project).reranker)
            bench = Workbench.open(self.store, project, annotator, self.find_candidates,
                                   model=chosen.model_key if chosen else "")
            searching = self.context.reranker_for(key, search)
        except (AnnotationError, EngineError) as error:  # EngineError: the session's model was closed since
            raise gr.Error(str(error)) from None
        bench.circularity = circularity(bench, searching)
        self.benches[request.session_hash or ""] = bench
        grades = bench.project.grades
        buttons = [gr.update(visible=index < len(grades), value=f"{index} · {grades[index]}" if index < len(grades)
                             else str(index)) for index in range(MAX_GRADES)]
        guideline = render_notice(f"Guideline: {bench.project.guideline}") if bench.project.guideline else ""
        relevant = gr.update(maximum=len(grades) - 1, value=bench.relevant_from)
        return (*self.views(bench), *buttons, guideline, relevant, {"annotator": annotator, "project": project},
                gr.update(visible=True), gr.update(open=False), gr.Timer(active=True))

    def create_project(self, name: str, corpus: str, queries_file: str | None, typed: str, qrels_file: str | None,
                       guideline: str, to_model: bool, grades: str, depth: float, reranker: str, blind: bool) -> Any:
        if queries_file:
            path = Path(queries_file)
            loaded, problems = load_queries(path)
            if problems:
                raise gr.Error(f"Queries not loaded: {_shown_name(problems[0], path)}")
            queries = [(query.query_id, query.text) for query in loaded]
        else:
            queries = _typed_queries(typed)
        reference: dict[str, dict[str, int]] = {}
        if qrels_file:
            path = Path(qrels_file)
            reference, problems = load_qrels(path)
            if problems:
                raise gr.Error(f"Qrels not loaded: {_shown_name(problems[0], path)}")
        labels = tuple(label.strip() for label in grades.split(",") if label.strip())
        try:
            project = Project(name=name, corpus=corpus, guideline=guideline.strip(), guideline_as_instruction=to_model,
                              grades=labels, depth=int(depth), reranker=reranker, blind=blind)
            created = self.store.create_project(project, queries, reference)
        except AnnotationError as error:
            raise gr.Error(str(error)) from None
        return gr.update(choices=self.store.project_names(), value=created.name)

    def import_project(self, file: str | None) -> tuple[Any, str]:
        if not file:
            return gr.update(), ""
        path = Path(file)
        if path.suffix.lower() not in {".jsonl", ".ndjson"} or path.stat().st_size > MAX_IMPORT_BYTES:
            raise gr.Error(f"{path.name}: import a .jsonl export of at most {MAX_IMPORT_BYTES // 2**20} MB")
        try:
            name = import_jsonl(self.store, path.read_text(encoding="utf-8"), source=path.name)
        except (AnnotationError, UnicodeDecodeError) as error:
            raise gr.Error(f"Not imported: {error}") from None
        return (gr.update(choices=self.store.project_names(), value=name),
                render_notice(f"Imported project {name!r} from {path.name}; open it to go on."))

    # The model -----------------------------------------------------------------------------------------

    async def judge_with_model(self, key: str, request: gr.Request) -> None:
        """The project's reranker's reasoning about this query's documents it has not judged, stored as each
        judgment lands; the refresh timer shows it. Ends when the annotator opens another query."""
        session = request.session_hash or ""
        bench = self.benches.get(session)
        try:
            chosen = self.context.reranker_for(key, bench.project.reranker) if bench is not None else None
        except EngineError as error:  # the session's model was closed since
            raise gr.Error(str(error)) from None
        if bench is None or chosen is None or bench.live:
            return
        query = bench.query
        pending = bench.unjudged_by_model()
        if not pending:
            return
        bench.live = {item.passage.doc_id: "" for item in pending}
        # A few at a time, in rank order: the annotator grades from the top, so the model's judgments of the first
        # documents land early instead of all together at the end (seen: none of 20 judged after a minute).
        events = chosen.stream(query.text, pending, instruction=bench.project.instruction,
                               slots=asyncio.Semaphore(MODEL_AHEAD))
        try:
            async for event in events:
                if self.benches.get(session) is not bench or bench.query != query:
                    return
                bench.apply(query.query_id, event)
        finally:
            await events.aclose()
            if bench.query == query:
                bench.live = {}  # whatever was not judged is judged again the next time the query opens


    def refresh(self, request: gr.Request) -> tuple[Any, Any]:
        """The model panel and the candidate list, re-rendered on every tick and sent only when they changed.
        They have this one writer, so an update computed before an edit cannot arrive after it and stay."""
        session = request.session_hash or ""
        bench = self.benches.get(session)
        if bench is None:
            return gr.skip(), gr.skip()
        shown_now = (render_model(bench), render_list(bench))
        if self.last_shown.get(session) == shown_now:
            return gr.skip(), gr.skip()
        self.last_shown[session] = shown_now
        return shown_now

    # Agreement and export ------------------------------------------------------------------------------

    def agreement(self, threshold: float, relevant_from: float, request: gr.Request) -> tuple[Any, ...]:
        bench = self.bench_of(request)
        project = bench.project.name
        judgments = self.store.judgments(project)
        models = self.store.model_judgments(project)
        versus = model_agreement(judgments, models, annotator=bench.annotator, threshold=threshold,
                                 relevant_from=int(relevant_from))
        between = annotator_agreement(judgments, relevant_from=int(relevant_from))
        # The qrels the project started with are compared like one more annotator, but not counted in alpha.
        reference = reference_judgments(self.store.reference(project))
        with_reference = annotator_agreement([*judgments, *reference], relevant_from=int(relevant_from))
        confusion = pd.DataFrame([[f"you: {label}", *row] for label, row in zip(versus.labels, versus.confusion,
                                                                                 strict=True)],
                                 columns=["", *(f"model: {label}" for label in versus.labels)])
        per_query = pd.DataFrame([{"query": item.query_id, "documents": item.items,
                                   "agreement": round(item.agreement or 0.0, 3), "kappa": _format_kappa(item.kappa)}
                                  for item in versus.per_query], columns=["query", "documents", "agreement", "kappa"])
        by_grade, calibration = agreement_frames(versus)
        pairs = pd.DataFrame([{"annotators": f"{item.first} · {item.second}", "documents": item.items,
                               "kappa (grades)": _format_kappa(item.kappa),
                               "kappa (relevant or not)": _format_kappa(item.binary_kappa)}
                              for item in with_reference.pairs],
                             columns=["annotators", "documents", "kappa (grades)", "kappa (relevant or not)"])
        alpha_by_query = pd.DataFrame([{"query": item.query_id, "documents": item.items,
                                        "Krippendorff's alpha": _format_kappa(item.agreement)}
                                       for item in between.per_query],
                                      columns=["query", "documents", "Krippendorff's alpha"])
        compared = versus.describe(threshold=threshold, relevant_from=int(relevant_from))
        summary = (f"You vs the model ({bench.project.reranker}) {compared}. "
                   f"Annotators ({', '.join(between.annotators) or 'none yet'}): Krippendorff's alpha (ordinal) "
                   f"{_format_kappa(between.alpha)}. Undefined means the statistic has no value on these "
                   "judgments (too few, or one grade throughout).")
        if reference:
            model_reference = model_agreement(reference, models, annotator=REFERENCE, threshold=threshold,
                                              relevant_from=int(relevant_from))
            summary += (f" The model vs the existing qrels on {model_reference.items} documents: Cohen's kappa "
                        f"{_format_kappa(model_reference.kappa)}.")
        passages = {(item.query_id, item.doc_id): item.passage for item in self.store.candidates(project)}
        overlap_by_annotator, overlap_by_query = evidence_overlap(judgments, self.store.model_evidence(project),
                                                                  passages)
        overlap = pd.DataFrame([{"annotator or query": f"{kind}: {item.who}", "documents": item.documents,
                                 "token F1": round(item.f1, 3)}
                                for kind, rows in (("annotator", overlap_by_annotator), ("query", overlap_by_query))
                                for item in rows], columns=["annotator or query", "documents", "token F1"])
        if pairs.empty:
            summary += (" The between-annotator tables are empty: they need two annotators' grades of the same "
                        "documents.")
        elif alpha_by_query.empty:
            summary += (" The between-annotators per-query table is empty: it needs two annotators' grades of the "
                        "same documents (the existing qrels are not counted in alpha).")
        if overlap.empty:
            summary += (" The evidence table is empty: it needs an annotator's evidence span on a document the model "
                        "gave evidence for.")
        return render_notice(summary), confusion, per_query, by_grade, calibration, pairs, alpha_by_query, overlap


    def export(self, request: gr.Request) -> list[str]:
        bench = self.bench_of(request)
        folder = Path(tempfile.mkdtemp(dir=self.exports))
        stem = _file_safe(bench.project.name)
        qrels = folder / f"{stem}.{_file_safe(bench.annotator)}.qrels"
        qrels.write_text(qrels_text(self.store, bench.project.name, bench.annotator), encoding="utf-8")
        records = folder / f"{stem}.jsonl"
        records.write_text(jsonl_text(self.store, bench.project.name), encoding="utf-8")
        return [str(qrels), str(records)]

    def judge_api(self, project: str, annotator: str, query_id: str, doc_id: str, grade: int, note: str = "",
                  request: gr.Request | None = None) -> dict[str, Any]:
        """Record one judgment (committed before this returns); with authentication, as the signed-in user."""
        if self.auth and request is not None and request.username:
            annotator = request.username
        try:
            saved = self.store.judge(project, HumanJudgment(annotator=annotator, query_id=query_id, doc_id=doc_id,
                                                       grade=int(grade), note=note))
        except AnnotationError as error:
            raise gr.Error(str(error)) from None
        return {"project": project, "annotator": saved.annotator, "query_id": saved.query_id,
                "doc_id": saved.doc_id, "grade": saved.grade, "note": saved.note, "judged_at": saved.judged_at}

    # Layout ------------------------------------------------------------------------------------------------

    def navigate(self, move: Callable[[Workbench], object]) -> Callable[..., tuple]:
        """A move from the current document that first keeps the note and evidence typed for the document the
        page showed (unless a later edit of it was written already)."""
        def handler(note: str, start: float, end: float, typed: Any, request: gr.Request) -> tuple:
            bench, edit = self.bench_of(request), TypedFor.read(typed)

            def keep_then_move() -> None:
                if self.fresh(edit, request) and bench.keep(doc=edit.doc, note=note,
                                                            span=self.pending_span(start, end)):
                    self.wrote(edit, request)
                move(bench)
            self.refusing(keep_then_move)
            return self.views(bench, answered=edit)
        return handler

    def take_model_evidence(self, note: str, typed: Any, request: gr.Request) -> tuple:
        """The model's evidence (its strongest supporting sentence) for the document the page showed, as the
        annotator's evidence span."""
        bench, doc = self.bench_of(request), TypedFor.read(typed).doc
        evidence = (bench.model_evidence().get(doc.doc_id)
                    if doc.query_id == bench.query.query_id and bench.shows_model(doc.doc_id) else None)
        span = evidence.span if evidence is not None else None
        if span is None:
            raise gr.Error("The model has no evidence for this document (yet).")
        return self.mark(note, span.start, span.end, typed, request)

    def save(self, note: str, start: float, end: float, typed: Any, request: gr.Request) -> tuple:
        return self.edit(lambda bench, doc: bench.annotate(doc=doc, note=note, span=self.pending_span(start, end))
                         )(typed, request)

    def mark(self, note: str, start: float, end: float, typed: Any, request: gr.Request) -> tuple:
        """Show the marked evidence on the document the page showed; it is saved at once when that document
        already has a grade (an ungraded one keeps it until its grade, unless the page has moved on)."""
        bench, doc = self.bench_of(request), TypedFor.read(typed).doc
        span = self.pending_span(start, end)
        if span is None:
            raise gr.Error("Select some text of the passage first, then mark it.")
        if bench.judgment(doc) is not None:
            return self.save(note, start, end, typed, request)
        if doc != bench.position:
            return self.views(bench)
        return (*self.views(bench, span)[:2], note, span.start, span.end)

    def set_view(self, choice: Filter, at: float, relevant: float, others: bool, request: gr.Request) -> str:
        bench = self.bench_of(request)
        bench.filter, bench.threshold, bench.relevant_from, bench.show_others = choice, at, int(relevant), others
        return render_document(bench)

    def forget(self, request: gr.Request) -> None:
        self.benches.pop(request.session_hash or "", None)
        self.last_shown.pop(request.session_hash or "", None)
        self.latest.pop(request.session_hash or "", None)


def build_annotate_tab(app: gr.Blocks, context: AnnotationContext, model_key: gr.State, search_kind: gr.Radio,
                       remembered: gr.BrowserState, *, auth: bool = False, concurrency: int = 8) -> None:
    """The tab's components and events, inside ``app``; ``model_key`` is the session's model choice and
    ``search_kind`` its reranker on the Search tab, ``remembered`` from ``remembered_state``."""
    tab = AnnotateTab(context, auth=auth)
    store, library = context.store, context.library
    gr.HTML(render_storage(store.path, ephemeral=context.ephemeral), elem_id="annotate-storage")

    with gr.Row():
        annotator = gr.Textbox(label="Annotator" + (" (signed in)" if auth else " (your name)"), scale=1,
                               max_length=100, interactive=not auth)
        project = gr.Dropdown(store.project_names(), value=None, label="Project", scale=2)
        open_button = gr.Button("Open", scale=0, variant="primary")
    with gr.Accordion("New project", open=not store.project_names()) as new_project:
        with gr.Row():
            new_name = gr.Textbox(label="Project name", max_length=100)
            new_corpus = gr.Dropdown(library.names(), value=library.names()[0], label="Corpus to annotate")
            depth = gr.Slider(1, MAX_DEPTH, value=context.top_k, step=1, label="Candidates per query")
        with gr.Row():
            queries_file = gr.File(label="Queries (queries.jsonl or id<TAB>text .tsv)",
                                   file_types=[".jsonl", ".tsv"])
            typed = gr.Textbox(label="… or type queries, one per line (id<TAB>text keeps an id)", lines=4,
                               max_length=200_000)
            qrels_file = gr.File(label="Existing qrels to compare against (optional)",
                                 file_types=[".tsv", ".txt", ".qrels"], elem_id="annotate-qrels")
        guideline = gr.Textbox(label="Annotation guideline (shown to annotators)", lines=3, max_length=10_000)
        with gr.Row():
            to_model = gr.Checkbox(label="Give the guideline to the model as its instruction")
            grades = gr.Textbox(value=", ".join(DEFAULT_GRADES), label="Grades from 0 up (comma-separated labels)")
        with gr.Row():
            judging = [(cls.label, name) for name, cls in RERANKERS.items() if cls.judges_documents]
            model_reranker = gr.Radio(judging, value=judging[0][1], label="The model's judgments beside yours", scale=2,
                                      elem_id="annotate-reranker")
            blind = gr.Checkbox(label="Blind: hide the model's judgment of a document until you have graded it",
                                scale=1)
            create_button = gr.Button("Create project", scale=0)
    with gr.Accordion("Import a project (an earlier JSONL export)", open=False):
        import_file = gr.File(label=f"JSONL export (up to {MAX_IMPORT_BYTES // 2**20} MB)",
                              file_types=[".jsonl", ".ndjson"], elem_id="annotate-import")
    message = gr.HTML()
    with gr.Column(visible=False, elem_id="annotate-workbench") as workbench:
        guideline_view = gr.HTML()
        progress = gr.HTML()
        with gr.Row():
            prev_query = gr.Button("◀ Previous query (p)", elem_id="annotate-prev-query", size="sm")
            prev_doc = gr.Button("↑ Previous document (k)", elem_id="annotate-prev-doc", size="sm")
            next_doc = gr.Button("↓ Next document (j)", elem_id="annotate-next-doc", size="sm")
            next_query = gr.Button("Next query (n) ▶", elem_id="annotate-next-query", size="sm")
        with gr.Row():
            grade_buttons = [gr.Button(str(index), elem_id=f"annotate-grade-{index}", size="sm",
                                       visible=index < len(DEFAULT_GRADES)) for index in range(MAX_GRADES)]
            clear_button = gr.Button("Clear my grade (x)", elem_id="annotate-clear", size="sm", variant="stop")
        with gr.Row():
            with gr.Column(scale=3):
                document = gr.HTML(elem_id="annotate-document")
                with gr.Row():
                    note = gr.Textbox(label="Note (saved with the grade)", max_length=5_000, scale=3)
                    with gr.Column(scale=1, min_width=160):
                        span_button = gr.Button("Mark selected text as evidence (s)", elem_id="annotate-span",
                                                size="sm")
                        take_button = gr.Button("Take the model's evidence (e)", elem_id="annotate-take",
                                                size="sm")
                        save_button = gr.Button("Save note and evidence", elem_id="annotate-save", size="sm")
            with gr.Column(scale=2):
                model_panel = gr.HTML()
        with gr.Row():
            view_filter = gr.Radio([(label, key) for key, label in FILTERS.items()], value="all", label="Show")
            threshold = gr.Slider(0, 1, value=0.5, step=0.05, label="rank1 says relevant at P(true) ≥")
            relevant_from = gr.Slider(1, len(DEFAULT_GRADES) - 1, value=2, step=1,
                                      label="A grade counts as relevant from")
            show_others = gr.Checkbox(label="Show other annotators' grades")
        listing = gr.HTML()
        with gr.Accordion("Agreement", open=False):
            agreement_button = gr.Button("Compute agreement", size="sm")
            agreement_summary = gr.HTML()
            with gr.Row():
                confusion = gr.Dataframe(label="You vs the model: confusion matrix", interactive=False)
                per_query = gr.Dataframe(label="You vs the model, per query", interactive=False)
            with gr.Row():
                by_grade, calibration = agreement_plots()
            with gr.Row():
                pairs = gr.Dataframe(label="Between annotators: Cohen's kappa per pair", interactive=False,
                                     elem_id="annotate-pairs")
                alpha_by_query = gr.Dataframe(label="Between annotators, per query", interactive=False)
            overlap = gr.Dataframe(label="Evidence: annotators' spans vs the model's evidence (its strongest "
                                         "supporting sentence), token-level F1", interactive=False,
                                   elem_id="annotate-overlap")
        with gr.Accordion("Export", open=False):
            export_button = gr.Button("Export my qrels and the project's JSONL", size="sm")
            files = gr.File(label="Annotation exports", file_count="multiple", interactive=False)
    ticks = gr.Timer(REFRESH_EVERY_S, active=False)
    span_start = gr.Number(-1, visible=False, precision=0)
    span_end = gr.Number(-1, visible=False, precision=0)
    typed_for = gr.JSON(visible=False)  # filled in by each edit's script (typed_for_js): see TypedFor

    # Events ------------------------------------------------------------------------------------------------

    shown = [progress, document, note, span_start, span_end]
    edits: dict[str, Any] = {"concurrency_id": EDITS, "concurrency_limit": 1, "trigger_mode": "multiple",
                             "api_visibility": "private", "show_progress": "hidden"}
    model_run: dict[str, Any] = {"concurrency_limit": concurrency, "api_visibility": "private",
                                 "show_progress": "hidden"}

    opened = [*shown, *grade_buttons, guideline_view, relevant_from, remembered, workbench, new_project, ticks]
    gr.on([open_button.click, project.select], tab.open_project, inputs=[annotator, project, model_key, search_kind],
          outputs=opened, api_visibility="private").success(tab.judge_with_model, inputs=model_key,
                                                            **model_run)
    create_button.click(tab.create_project, inputs=[new_name, new_corpus, queries_file, typed, qrels_file, guideline,
                                                to_model, grades, depth, model_reranker, blind], outputs=project,
                        api_visibility="private").success(
        tab.open_project, inputs=[annotator, project, model_key, search_kind], outputs=opened,
        api_visibility="private").success(tab.judge_with_model, inputs=model_key, **model_run)
    import_file.upload(tab.import_project, inputs=import_file, outputs=[project, message], api_visibility="private")

    fields = [note, span_start, span_end, typed_for]
    for step, button in ((-1, prev_query), (1, next_query)):
        button.click(tab.navigate(lambda bench, step=step: bench.move_query(step)), inputs=fields, outputs=shown,
                     js=typed_for_js(button.elem_id), **edits).success(tab.judge_with_model, inputs=model_key,
                                                                       **model_run)
    for step, button in ((-1, prev_doc), (1, next_doc)):
        button.click(tab.navigate(lambda bench, step=step: bench.move(step)), inputs=fields, outputs=shown,
                     js=typed_for_js(button.elem_id), **edits)
    for value, button in enumerate(grade_buttons):
        button.click(tab.grade(value), inputs=fields, outputs=shown, js=typed_for_js(button.elem_id), **edits)
    clear_button.click(tab.edit(lambda bench, doc: bench.clear(doc=doc)), inputs=typed_for, outputs=shown,
                       js=typed_for_js(clear_button.elem_id), **edits)

    save_button.click(tab.save, inputs=fields, outputs=shown, js=typed_for_js(save_button.elem_id), **edits)
    take_button.click(tab.take_model_evidence, inputs=[note, typed_for], outputs=shown,
                      js=typed_for_js(take_button.elem_id), **edits)
    span_button.click(None, inputs=[span_start, span_end], outputs=[span_start, span_end], js=SELECTION_JS).then(
        tab.mark, inputs=fields, outputs=shown, js=typed_for_js(span_button.elem_id), **edits)

    gr.on([view_filter.change, threshold.change, relevant_from.change, show_others.change], tab.set_view,
          inputs=[view_filter, threshold, relevant_from, show_others], outputs=document,
          api_visibility="private")
    agreement_button.click(tab.agreement, inputs=[threshold, relevant_from],
                           outputs=[agreement_summary, confusion, per_query, by_grade, calibration, pairs,
                                    alpha_by_query, overlap], api_visibility="private")
    export_button.click(tab.export, outputs=files, api_visibility="private")
    gr.api(tab.judge_api, api_name="judge", concurrency_id=EDITS, concurrency_limit=1)

    def resume(annotator_name: str, project_name: str | None, key: str, search: str, request: gr.Request
               ) -> tuple[Any, ...]:
        """Back to work after a reload or restart, when the browser remembers who and which project."""
        if not annotator_name or not project_name:
            return tuple(gr.skip() for _ in opened)
        return tab.open_project(annotator_name, project_name, key, search, request)

    ticks.tick(tab.refresh, outputs=[model_panel, listing], concurrency_limit=None, api_visibility="private",
               show_progress="hidden")

    annotator.blur(lambda name, value: {**(value or {}), "annotator": name}, inputs=[annotator, remembered],
                   outputs=remembered, api_visibility="private")
    app.load(tab.restore, inputs=remembered, outputs=[annotator, project], api_visibility="private").then(
        resume, inputs=[annotator, project, model_key, search_kind], outputs=opened, api_visibility="private").then(
        tab.judge_with_model, inputs=model_key, **model_run)
    app.unload(tab.forget)
