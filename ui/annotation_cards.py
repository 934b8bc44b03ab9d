"""Escaped HTML for the annotator workbench: the document being judged, the model's reasoning about it, the
query's candidate list and the annotator's progress. Passages, notes, names and model output are untrusted:
every piece goes through escape()."""

from __future__ import annotations

import json
from html import escape

from search.annotation.store import HumanJudgment, ModelEvidence, ModelJudgment, Span, StoredCandidate
from search.annotation.workbench import FILTERS, Workbench
from search.rerank.belief import BeliefPath
from search.rerank.events import Measured
from search.rerank.registry import reranker_class
from ui.belief import belief_badge, belief_chart, reasoning_with_shift
from ui.evidence import ScoreScale
from ui.renderers import score_scale

ANNOTATION_CSS = """
#annotate-passage { white-space: pre-wrap; line-height: 1.5; padding: 8px; border-radius: 6px;
                    background: var(--background-fill-secondary); }
#annotate-passage mark { background: #fff3a0; color: inherit; }
.es-list { width: 100%; border-collapse: collapse; font-size: 0.9em; }
.es-list td, .es-list th { padding: 2px 6px; border-bottom: 1px solid var(--border-color-primary); text-align: left; }
.es-list tr.es-current { background: var(--background-fill-secondary); font-weight: 600; }
.es-grade { font-family: var(--font-mono); }
.es-disagree { color: #cf222e; }
.es-model-evidence { margin: 4px 0; padding: 4px 6px; border-left: 3px solid rgb(33, 102, 172);
                     background: rgba(33, 102, 172, 0.12); }
.es-model-evidence kbd, .es-keys kbd { border: 1px solid var(--border-color-primary); border-radius: 3px;
                                       padding: 0 4px; font-family: var(--font-mono); }
"""

TYPED_FOR = """
  const edits = (window.esAnnotateEdits ??= {count: 0, typed: {}});
  const typedFor = () => {
    const shown = document.querySelector("#annotate-document [data-doc-id]");
    return {query_id: shown?.dataset.queryId ?? "", doc_id: shown?.dataset.docId ?? "", seq: ++edits.count};
  };
"""
"""Script shared by the keys and each edit: ``typedFor()`` names the document on screen and numbers the edit in
the page's order of typing."""

# Run on page load: the workbench's keys. They act only while the Annotate tab shows the workbench and the
# focus is not in a text field, by clicking the same buttons a mouse would. Each key's edit names the document on
# screen when it is sent (kept for its button until the click's script reads it, see typed_for_js). A key that
# moves the page on (a grade, j/k, n/p) holds the keys typed after it until the server has answered it (the
# document carries the number of the edit it answers, ``answered_marker``) or refused it (an error toast): keys
# typed faster than the page shows the next document each act on the document they were typed for, in order.
# "s" takes the text selected in the passage as the evidence span (character offsets into the passage).
KEYS_JS = """
() => {""" + TYPED_FOR + """
  const keys = {j: "annotate-next-doc", ArrowDown: "annotate-next-doc", k: "annotate-prev-doc",
                ArrowUp: "annotate-prev-doc", n: "annotate-next-query", p: "annotate-prev-query",
                x: "annotate-clear", s: "annotate-span", e: "annotate-take"};
  const moving = ["annotate-next-doc", "annotate-prev-doc", "annotate-next-query", "annotate-prev-query"];
  const held = (edits.held ??= {keys: [], awaiting: 0, timer: 0});
  const answered = () => Number(document.querySelector("#annotate-document [data-answered]")?.dataset.answered ?? 0);
  const release = () => {
    held.awaiting = 0;
    clearTimeout(held.timer);
    while (!held.awaiting && held.keys.length) press(held.keys.shift());
  };
  const press = (id) => {
    const button = document.getElementById(id);
    if (!button) return;
    const typed = typedFor();
    (edits.typed[id] ??= []).push(typed);
    if (id.startsWith("annotate-grade-") || moving.includes(id)) {
      held.awaiting = typed.seq;
      held.timer = setTimeout(release, 60000);  // neither answered nor refused: the page gives the keys back
    }
    button.click();
  };
  new MutationObserver((records) => {
    if (!held.awaiting) return;
    const refused = records.some((record) => [...record.addedNodes].some(
      (node) => node.querySelector?.("[data-testid='toast-body']") || node.matches?.("[data-testid='toast-body']")));
    if (refused || answered() >= held.awaiting) release();
  }).observe(document.body, {childList: true, subtree: true});
  document.addEventListener("keydown", (event) => {
    const bench = document.getElementById("annotate-workbench");
    if (!bench || bench.offsetParent === null || event.ctrlKey || event.metaKey || event.altKey) return;
    const target = event.target;
    if (target && (target.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(target.tagName))) return;
    const id = /^[0-9]$/.test(event.key) ? `annotate-grade-${event.key}` : keys[event.key];
    if (!id || !document.getElementById(id)) return;
    event.preventDefault();
    if (held.awaiting) held.keys.push(id); else press(id);
  });
}
"""


def answered_marker(seq: int) -> str:
    """Appended to the document an edit answers with: the number of that edit, which the keys wait for."""
    return f'<span hidden data-answered="{int(seq)}"></span>'


def typed_for_js(button: str | None) -> str:
    """The script an edit's click runs before the server hears of it: it fills the last input (``TypedFor``) with
    what the key pressed for this button named, or, for a click, the document on screen now."""
    return ("(...inputs) => {" + TYPED_FOR + f"  const typed = edits.typed[{json.dumps(button)}]?.shift() ?? "
            "typedFor();\n  return [...inputs.slice(0, -1), typed];\n}")


SELECTION_JS = """
(start, end) => {
  const passage = document.getElementById("annotate-passage");
  const selection = window.getSelection();
  if (!passage || !selection || selection.rangeCount === 0 || selection.isCollapsed) return [-1, -1];
  const range = selection.getRangeAt(0);
  if (!passage.contains(range.startContainer) || !passage.contains(range.endContainer)) return [-1, -1];
  const before = document.createRange();
  before.selectNodeContents(passage);
  before.setEnd(range.startContainer, range.startOffset);
  const from = before.toString().length;
  return [from, from + range.toString().length];
}
"""
"""Character offsets of the selection inside the passage; [-1, -1] when nothing there is selected."""


def grade_label(grades: tuple[str, ...], grade: int) -> str:
    return f"{grade} · {grades[grade]}" if 0 <= grade < len(grades) else str(grade)


def _passage(candidate: StoredCandidate, span: Span | None) -> str:
    text = candidate.passage
    if span is None:
        return escape(text)
    start, end = span.start, span.end
    return f"{escape(text[:start])}<mark>{escape(text[start:end])}</mark>{escape(text[end:])}"


def _judgment_line(bench: Workbench, judgment: HumanJudgment, who: str) -> str:
    note = f" — {escape(judgment.note)}" if judgment.note else ""
    span = " · evidence marked" if judgment.span else ""
    label = grade_label(bench.project.grades, judgment.grade)
    return f'<div><b>{escape(who)}</b>: <span class="es-grade">{escape(label)}</span>{span}{note}</div>'


def render_document(bench: Workbench | None, evidence: Span | None = None) -> str:
    """The query and the passage being judged, with this annotator's judgment (and others' when asked); the
    ``evidence`` span marked, else the stored one."""
    if bench is None:
        return ""
    candidate = bench.current()
    query = f"<h3>Query {escape(bench.query.query_id)}: {escape(bench.query.text)}</h3>"
    if candidate is None:
        return query + "<p>This query has no candidates.</p>"
    mine = bench.judgments().get(candidate.doc_id)
    lines = [_judgment_line(bench, mine, "You")] if mine else ["<div><b>You</b>: not judged yet</div>"]
    if bench.show_others:
        others = bench.others().get(candidate.doc_id, [])
        lines += [_judgment_line(bench, item, item.annotator) for item in others] or [
            "<div>No other annotator has judged this document.</div>"]
    # What the page's edits name as the document they were typed for (typed_for_js).
    return (f'<div data-query-id="{escape(candidate.query_id)}" data-doc-id="{escape(candidate.doc_id)}">{query}'
            f"<h4>#{candidate.rank} · {escape(candidate.title or candidate.doc_id)} "
            f'<span class="es-meta">{escape(candidate.doc_id)}</span></h4>'
            f'<div id="annotate-passage">{_passage(candidate, evidence or (mine.span if mine else None))}</div>'
            f'{"".join(lines)}</div>')


def _model_summary(judgment: ModelJudgment | None, live: str | None) -> str:
    if judgment is None:
        return "reasoning…" if live is not None else "waiting for the model"
    forced = ' <span class="es-flag">forced</span>' if judgment.forced else ""
    return f"<b>{escape(judgment.describe())}</b>{forced}"


def render_model(bench: Workbench | None) -> str:
    """The model's reasoning about the current document, live while it thinks (in a blind project only once the
    annotator has graded the document), and a notice when judging with this model would be circular."""
    if bench is None or bench.current() is None:
        return ""
    circular = (f'<div class="es-notice">Circularity: {escape(bench.circularity)}</div>'
                if bench.circularity else "")
    name = f"<b>Model</b> ({escape(bench.project.reranker)})"
    if not bench.shows_model(bench.doc_id):
        return (f"{circular}<div>{name}: hidden until you grade this document (blind project: the model's judgment "
                "must not anchor yours)</div>")
    judgment = bench.model_judgments().get(bench.doc_id)
    live = bench.live.get(bench.doc_id)
    reasoning = judgment.reasoning if judgment is not None else (live or "")
    p_relevant = judgment.p_relevant(bench.relevant_from) if judgment is not None else None
    percent = f"{p_relevant * 100:.1f}" if p_relevant is not None else "0"
    evidence = bench.model_evidence().get(bench.doc_id)
    candidate = bench.current()
    belief, trace = _model_belief(judgment), escape(reasoning)
    if belief is not None:
        path, scale = belief
        belief_html = f'<div class="es-toggles">{belief_badge(path, scale)}{belief_chart(path, scale)}</div>'
        trace = reasoning_with_shift(reasoning, path, scale)
    return (f"{circular}<div>{name}: {_model_summary(judgment, live)}</div>"
            f'<div class="es-bar" title="measured probability of relevance {percent}%">'
            f'<div style="width: {percent}%"></div></div>{belief_html if belief is not None else ""}'
            f"{_model_evidence(evidence, candidate, judgment) if evidence and candidate else ''}"
            f'<div class="es-trace es-all-open">{trace}</div>')


def _model_belief(judgment: ModelJudgment | None) -> tuple[BeliefPath, ScoreScale] | None:
    """The model's belief path as it reasoned and its scale, when the judgment carries probes."""
    outcome = judgment.outcome if judgment is not None else None
    if not isinstance(outcome, Measured) or (path := BeliefPath.of(outcome.belief, outcome)) is None:
        return None
    return path, score_scale(reranker_class(outcome.reranker))


def _model_evidence(evidence: ModelEvidence, candidate: StoredCandidate, judgment: ModelJudgment | None) -> str:
    """The sentence of the passage the model's score rests on most, measured, and the key that takes it."""
    best = evidence.strongest
    if best is None:
        return ('<div class="es-model-evidence">Evidence: no sentence of the passage supports the model\'s score '
                "(removing any one does not lower it).</div>")
    graded = judgment is not None and judgment.graded
    name, factor = ("expected grade", 3.0) if graded else ("P(true)", 1.0)
    return (f'<div class="es-model-evidence">Evidence: <q>{escape(candidate.passage[best.start:best.end])}</q> '
            f"(without it {name} drops by {best.delta * factor:.2f}) · <kbd>e</kbd> takes it as your evidence"
            "</div>")


def render_list(bench: Workbench | None) -> str:
    """The query's candidates the filter keeps (and the current one), with model and human grades."""
    if bench is None:
        return ""
    judgments, models, others = bench.judgments(), bench.model_judgments(), bench.others()
    reference = bench.reference()
    compared = bench.has_reference
    headers = ["", "rank", "document", f"model ({escape(bench.project.reranker)})", "you", ""]
    headers += ["existing qrels"] * compared + ["others"] * bench.show_others
    rows = []
    for item in bench.candidates():
        if item.doc_id != bench.doc_id and not bench.shown(item, judgments, models):
            continue
        model, mine = models.get(item.doc_id), judgments.get(item.doc_id)
        if not bench.shows_model(item.doc_id):
            said = "hidden"
        elif model is None:
            said = "…" if item.doc_id in bench.live else "—"
        else:
            said = escape(model.short())
        flag = '<span class="es-disagree" title="model and you disagree">≠</span>' \
            if bench.disagrees(mine, model) else ""
        current = item.doc_id == bench.doc_id
        cells = ["▶" if current else "", f"#{item.rank}", escape(item.title or item.doc_id), said,
                 str(mine.grade) if mine else "", flag]
        cells += [str(reference.get(item.doc_id, "–"))] * compared
        cells += [", ".join(f"{escape(other.annotator)}: {other.grade}"
                            for other in others.get(item.doc_id, []))] * bench.show_others
        marked = ' class="es-current"' if current else ""
        rows.append(f'<tr{marked} data-doc="{escape(item.doc_id)}">' + "".join(f"<td>{cell}</td>" for cell in cells)
                    + "</tr>")
    header = "<tr>" + "".join(f"<th>{name}</th>" for name in headers) + "</tr>"
    empty = f"<p>No document left under “{escape(FILTERS[bench.filter])}”.</p>" if not rows else ""
    return f'<table class="es-list">{header}{"".join(rows)}</table>{empty}'


def render_progress(bench: Workbench | None) -> str:
    if bench is None:
        return ""
    judged, candidates, opened = bench.progress()
    here = len(bench.judgments())
    return (f'<div class="es-summary">{escape(bench.annotator)} · project {escape(bench.project.name)} · query '
            f"{bench.query_index + 1} of {len(bench.queries)} · {here} of {len(bench.candidates())} judged here · "
            f"{judged} of {candidates} in the {opened} queries opened</div>"
            '<div class="es-keys">Keys: <kbd>0</kbd>–<kbd>9</kbd> grade and go on · <kbd>j</kbd>/<kbd>k</kbd> '
            "next/previous document · <kbd>n</kbd>/<kbd>p</kbd> next/previous query · <kbd>s</kbd> mark the "
            "selected passage text as evidence · <kbd>e</kbd> take the model's evidence · <kbd>x</kbd> clear my "
            "grade</div>")
