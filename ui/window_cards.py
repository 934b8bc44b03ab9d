"""Escaped HTML for a listwise (ReasonRank) run: one panel per window with its live reasoning and outcome, and
the list as the windows have left it, the passages of the active window highlighted and each document's
trajectory across windows. Document text and model output are untrusted: every piece goes through escape()."""

from __future__ import annotations

import re
from html import escape

from search.rerank.base import Summary
from search.rerank.listwise import ListwiseRun, WindowState
from search.retrieval.ranking import Candidate
from ui.cards import render_summary, snippet

WINDOW_CSS = """
.es-window { border: 1px dashed var(--border-color-primary); border-radius: 8px; padding: 6px 10px; margin: 4px 0;
             font-size: var(--text-sm); }
.es-window.es-active { border-style: solid; border-color: var(--color-accent); }
.es-rcard.es-in-window { border-color: var(--color-accent); box-shadow: 0 0 0 1px var(--color-accent); }
.es-ref { font-weight: 600; text-decoration: none; color: var(--color-accent); }
.es-rcard:target { outline: 2px solid var(--color-accent); }
"""

STATUS_TEXT = {
    "ok": "ranked",
    "repaired": "repaired",
    "truncated": "no answer: order kept",
    "failed": "failed: order kept",
}


def _outcome(state: WindowState) -> str:
    ranked = state.ranked
    if ranked is None:
        return "reasoning…"
    details = [f"{label} {', '.join(f'[{number}]' for number in getattr(ranked, name))}"
               for name, label in (("missing", "missing (appended)"), ("duplicates", "duplicates dropped"),
                                   ("out_of_range", "out of range dropped")) if getattr(ranked, name)]
    failure = f": {ranked.failure}" if ranked.failure else ""
    extra = f" ({'; '.join(details)})" if details else ""
    return f"<b>{escape(STATUS_TEXT[ranked.status])}</b>{escape(failure)}{escape(extra)} · {ranked.tokens} tokens"


REFERENCE = re.compile(r"\[(\d{1,3})\]")
"""How ReasonRank's reasoning names a passage of its window: [n], numbered as in the window's prompt."""


def card_id(candidate: Candidate) -> str:
    """The card's anchor: by first-stage rank, unique in a run and safe in an id whatever the document id."""
    return f"es-card-{candidate.rank}"


def linked_reasoning(state: WindowState, run: ListwiseRun) -> str:
    """The window's reasoning, escaped, each [n] that names one of its passages a link to that document's card."""
    pieces, at = [], 0
    for match in REFERENCE.finditer(state.reasoning):
        number = int(match.group(1))
        if not 1 <= number <= len(state.started.doc_ids):
            continue
        candidate = run.by_id[state.started.doc_ids[number - 1]]
        title = candidate.passage.title or candidate.passage.doc_id
        pieces += [escape(state.reasoning[at:match.start()]),
                   f'<a class="es-ref" href="#{card_id(candidate)}" title="{escape(title, quote=True)}">'
                   f"{escape(match.group(0))}</a>"]
        at = match.end()
    pieces.append(escape(state.reasoning[at:]))
    return "".join(pieces)


def render_window(state: WindowState, run: ListwiseRun, *, active: bool) -> str:
    return (f'<div class="es-window{" es-active" if active else ""}" data-window="{state.window}" '
            f'id="es-window-{state.window}">'
            f"<b>Window {state.window + 1}</b> · positions {state.start + 1}–{state.end} · {_outcome(state)}"
            f'<div class="es-tail"><div class="es-trace">{linked_reasoning(state, run)}</div></div>'
            f'<div class="es-toggles"><details class="es-all" data-keep="window:{state.window}"><summary>show all '
            f"reasoning ({len(state.reasoning)} characters)</summary></details></div></div>")


def _trajectory(positions: list[int]) -> str:
    return " → ".join(f"#{position}" for position in positions)


def _moves(run: ListwiseRun, doc_id: str) -> str:
    """Each window that moved the document, linked to its panel: where it was, what it was called there, where
    the window put it."""
    moves = [f'<a href="#es-window-{move.window}">window {move.window + 1}</a> (as [{move.label}]): '
             f"#{move.before} → #{move.after}" for move in run.moves(doc_id)]
    return f'<div class="es-meta es-moves">{" · ".join(moves)}</div>' if moves else ""


def render_windows(run: ListwiseRun, *, reranked: bool) -> str:
    if not run.candidates:
        return '<p class="es-notice">No passage matches this query.</p>'
    active = run.active()
    in_window = set(run.order[active.start:active.end]) if active else set()
    windows = "".join(render_window(state, run, active=state is active) for state in run.windows)
    cards = []
    for candidate in run.ordered(reranked=reranked):
        passage = candidate.passage
        key = escape(passage.doc_id, quote=True)
        status = run.status(passage.doc_id)
        highlight = " es-in-window" if passage.doc_id in in_window else (" es-s-failed" if status == "failed" else "")
        state = "in window" if passage.doc_id in in_window else (
            "stopped" if run.stopped and status != "judged" else {"judged": "ranked"}.get(status, "queued"))
        excerpt, whole = snippet(run.query, passage.text)
        cards.append(
            f'<div class="es-rcard{highlight}" data-doc="{key}" id="{card_id(candidate)}">'
            f'<div class="es-head"><span class="es-move">{escape(_trajectory(run.trajectory[passage.doc_id]))}</span>'
            f'<span class="es-title">{escape(passage.title or passage.doc_id)}</span>'
            f'<span class="es-state">{escape(state)}</span></div>'
            f'<div class="es-snippet">{excerpt}</div>{_moves(run, passage.doc_id)}'
            f'<div class="es-toggles"><details class="es-open" data-keep="passage:{key}"><summary>passage</summary>'
            f'</details><span class="es-meta">{escape(passage.passage_id)} · first stage #{candidate.rank}</span>'
            f'</div><div class="es-passage">{whole}</div></div>')
    note = ('<p class="es-meta">ReasonRank ranks passages in windows of the list, from the back to the front; it '
            "gives ranks, not probabilities. Each card shows its place at the start and after every window that "
            "held it, and which windows moved it; a window's [n] links to the card it names.</p>")
    return f'{note}{windows}<div class="es-board">{"".join(cards)}</div>'


def render_window_half(run: ListwiseRun, doc_id: str) -> str:
    """One side's half of a compare card: where the windows have put the document, how it got there, and the
    reasoning of the latest window that held it."""
    status = run.status(doc_id)
    holding = run.holding(doc_id)
    active = run.active()
    label = ("in window" if holding is not None and holding is active else
             "stopped" if run.stopped and status != "judged" else {"judged": "ranked"}.get(status, "queued"))
    kind = {"in window": "thinking", "ranked": "judged"}.get(label, label)
    return (f'<div class="es-half es-s-{kind}"><div class="es-verdict"><span class="es-state">{escape(label)}</span>'
            f'<span class="es-move">{escape(_trajectory(run.trajectory[doc_id]))}</span></div>'
            f'{_moves(run, doc_id)}<div class="es-tail"><div class="es-trace">'
            f'{escape(holding.reasoning) if holding is not None else ""}</div></div>'
            f'<div class="es-passage">{snippet(run.query, run.by_id[doc_id].passage.text)[1]}</div></div>')


def render_list_summary(summary: Summary, *, budget: int, lead: str = "") -> str:
    return render_summary(summary, budget=budget, unit="windows", lead=lead)
