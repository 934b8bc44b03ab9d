"""Escaped HTML for a pointwise rerank run: one card per candidate with its streaming reasoning and its
judgment (rank1's verdict and P(true), or the assessor's grade distribution). Document text and model output are
untrusted: every piece of them goes through escape()."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from search.rerank import Summary
from search.rerank.events import Graded, Judged
from search.rerank.pointwise import DocumentState, PointwiseRun
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
.es-grades { display: inline-flex; gap: 3px; align-items: flex-end; height: 28px; vertical-align: middle;
             margin: 0 8px; }
.es-grades > span { display: flex; flex-direction: column; justify-content: flex-end; align-items: center;
                    width: 18px; height: 28px; font-size: 0.7em; font-family: var(--font-mono); }
.es-grades > span > i { display: block; width: 14px; background: var(--color-accent); border-radius: 2px 2px 0 0; }
.es-grades > span.es-top > i { background: #1a7f37; }
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
    "forced": ("forced", "The model gave no verdict or grade of its own; it was read in one extra step after "
                         "closing its reasoning."),
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
    outcome = state.outcome
    flags = [f'<span class="es-flag" title="{escape(tip)}">{escape(label)}</span>'
             for name, (label, tip) in FLAG_TEXT.items() if outcome is not None and getattr(outcome, name)]
    if state.status == "failed":
        flags.append(f'<span class="es-flag" title="{escape(state.failure)}">failed: {escape(state.failure)}</span>')
    return "".join(flags)


WAITING_TEXT = {"waiting": "waiting", "reasoning": "reasoning…", "failed": "no judgment"}


def rank1_verdict(judged: Judged) -> str:
    percent = judged.p_true * 100
    return (f'<b>{"relevant" if judged.verdict else "not relevant"}</b> · P(true) {judged.p_true:.3f}'
            f'<div class="es-bar" title="P(true) {percent:.1f}%"><div style="width: {percent:.1f}%"></div></div>')


def grade_verdict(graded: Graded) -> str:
    """The grade distribution as a small 0–3 bar chart, with the expected grade the list is sorted by."""
    bars = "".join(
        f'<span class="{"es-top" if grade == graded.grade else ""}" title="grade {grade}: {share:.1%}">'
        f'<i style="height: {max(share * 20, 1):.1f}px"></i>{grade}</span>'
        for grade, share in enumerate(graded.distribution))
    return (f"<b>grade {graded.grade}</b> (p {graded.distribution[graded.grade]:.2f})"
            f'<span class="es-grades" title="P(grade), renormalised over the four grade tokens">{bars}</span>'
            f"expected grade <b>{graded.expected_grade:.2f}</b> / 3")


Verdict = Callable[..., str]
"""How a card shows its judgment: ``rank1_verdict`` or ``grade_verdict``."""


def render_card(state: DocumentState, position: int | None, verdict: Verdict) -> str:
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
        f"<div>{verdict(state.outcome) if state.outcome else WAITING_TEXT.get(state.status, '')}</div>"
        f'<details data-keep="passage:{key}"><summary>passage</summary><p>{escape(passage.text)}</p></details>'
        f'<details data-keep="trace:{key}"><summary>reasoning ({len(state.reasoning)} characters)</summary>'
        f'<div class="es-trace">{escape(state.reasoning)}</div></details>'
        "</div>"
    )


def render_board(run: PointwiseRun, *, reranked: bool, verdict: Verdict) -> str:
    if not run.documents:
        return '<p class="es-notice">No passage matches this query.</p>'
    positions = run.reranked_positions()
    return "".join(render_card(state, positions.get(state.doc_id), verdict)
                   for state in run.states(reranked=reranked))


def render_summary(summary: Summary, *, stopped: bool = False) -> str:
    state = "stopped" if stopped else ("done" if summary.finished else "reasoning")
    failed = f", {summary.failed} failed" if summary.failed else ""
    return (f'<div class="es-summary">{summary.judged}/{summary.total} judged{failed} · '
            f"{summary.tokens_per_s:.1f} tokens/s · {summary.elapsed_s:.1f} s · {state}</div>")
