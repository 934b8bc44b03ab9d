"""Escaped HTML for a rerank run: one card per candidate with its streaming reasoning, verdict and probability.
Document text and model output are untrusted: every piece of them goes through escape()."""

from __future__ import annotations

from html import escape

from search.rerank.board import Board, DocumentState, Summary
from ui.results import STAGE_LABELS

CARDS_CSS = """
.es-rcard { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 8px 12px; margin: 6px 0; }
.es-rcard.es-failed { border-color: var(--error-border-color, #d33); }
.es-rcard h4 { margin: 0 0 2px 0; }
.es-move { font-family: var(--font-mono); margin-right: 8px; }
.es-up { color: #1a7f37; } .es-down { color: #cf222e; }
.es-bar { height: 8px; background: var(--background-fill-secondary); border-radius: 4px; margin: 4px 0; }
.es-bar > div { height: 8px; border-radius: 4px; background: var(--color-accent); }
.es-flag { display: inline-block; border-radius: 4px; padding: 0 6px; margin-right: 6px; font-size: 0.85em;
           border: 1px solid var(--border-color-primary); }
.es-trace { white-space: pre-wrap; font-family: var(--font-mono); font-size: 0.85em; max-height: 16em;
            overflow-y: auto; background: var(--background-fill-secondary); padding: 6px; border-radius: 4px; }
.es-summary { font-family: var(--font-mono); }
"""

# Run on page load. The page replaces the cards' HTML on every update; this remembers which <details> the reader
# opened (by click) and keeps them open while their trace keeps streaming.
KEEP_OPEN_JS = """
() => {
  const open = new Set();
  document.addEventListener("click", (event) => {
    const summary = event.target.closest && event.target.closest("details[data-keep] > summary");
    if (!summary) return;
    const details = summary.parentElement;
    if (details.open) open.delete(details.dataset.keep); else open.add(details.dataset.keep);
  }, true);
  const reopen = () => document.querySelectorAll("details[data-keep]").forEach((element) => {
    if (open.has(element.dataset.keep) && !element.open) element.open = true;
  });
  new MutationObserver(reopen).observe(document.documentElement,
    {childList: true, subtree: true, attributes: true, attributeFilter: ["open"]});
}
"""

FLAG_TEXT = {
    "forced": ("forced verdict", "The model gave no verdict of its own; P(true) was read after closing its reasoning."),
    "truncated_passage": ("passage truncated", "The passage was cut to fit the model's context."),
    "from_cache": ("from cache", "Replayed from an earlier identical judgment."),
}


def _movement(state: DocumentState, position: int | None) -> str:
    first = state.first_stage_rank
    if position is None:
        return f'<span class="es-move">#{first}</span>'
    shift = first - position
    arrow = f'<span class="es-up">▲{shift}</span>' if shift > 0 else (
        f'<span class="es-down">▼{-shift}</span>' if shift < 0 else "=")
    return f'<span class="es-move">#{first} → #{position} {arrow}</span>'


def _flags(state: DocumentState) -> str:
    judged = state.judged
    flags = [f'<span class="es-flag" title="{escape(tip)}">{escape(label)}</span>'
             for name, (label, tip) in FLAG_TEXT.items() if judged is not None and getattr(judged, name)]
    if state.status == "failed":
        flags.append(f'<span class="es-flag" title="{escape(state.failure)}">failed: {escape(state.failure)}</span>')
    return "".join(flags)


def _verdict(state: DocumentState) -> str:
    judged = state.judged
    if judged is None:
        return {"waiting": "waiting", "reasoning": "reasoning…", "failed": "no verdict"}.get(state.status, "")
    percent = judged.p_true * 100
    return (f'<b>{"relevant" if judged.verdict else "not relevant"}</b> · P(true) {judged.p_true:.3f}'
            f'<div class="es-bar" title="P(true) {percent:.1f}%"><div style="width: {percent:.1f}%"></div></div>')


def render_card(state: DocumentState, position: int | None) -> str:
    passage = state.candidate.passage
    key = escape(passage.doc_id, quote=True)
    provenance = "".join(
        f'<span class="es-badge">{escape(STAGE_LABELS.get(stage, stage))} #{hit.rank}</span>'
        for stage, hit in state.candidate.provenance.items()
    )
    return (
        f'<div class="es-rcard es-{state.status}" data-doc="{key}">'
        f"<h4>{_movement(state, position)}{escape(passage.title or passage.doc_id)}</h4>"
        f'<div class="es-meta">{escape(passage.passage_id)} {provenance} {_flags(state)}</div>'
        f"<div>{_verdict(state)}</div>"
        f'<details data-keep="passage:{key}"><summary>passage</summary><p>{escape(passage.text)}</p></details>'
        f'<details data-keep="trace:{key}"><summary>reasoning ({len(state.reasoning)} characters)</summary>'
        f'<div class="es-trace">{escape(state.reasoning)}</div></details>'
        "</div>"
    )


def render_board(board: Board, *, by_probability: bool) -> str:
    if not board.documents:
        return '<p class="es-notice">No passage matches this query.</p>'
    positions = board.reranked_positions()
    return "".join(render_card(state, positions.get(state.doc_id))
                   for state in board.ordered(by_probability=by_probability))


def render_summary(summary: Summary, *, stopped: bool = False) -> str:
    state = "stopped" if stopped else ("done" if summary.finished else "reasoning")
    failed = f", {summary.failed} failed" if summary.failed else ""
    return (f'<div class="es-summary">{summary.judged}/{summary.total} judged{failed} · '
            f"{summary.tokens_per_s:.1f} tokens/s · {summary.elapsed_s:.1f} s · {state}</div>")
