"""Escaped HTML for a comparison: one list of cards, each with two halves (A | B) that stream their own reasoning
and show their own verdict, grade or window move (each run's renderer draws its half); the card's rank under A
and under B, and a disagreement badge that says why (the rule is the reranker's: ``Comparison.disagreement``).
Above them, a summary line per side and one for the pair. Document text and model output are untrusted: every
piece of them goes through escape()."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from search.compare import SIDES, Comparison, SideName
from search.retrieval.ranking import Candidate
from ui.cards import SNIPPET_CHARS, snippet
from ui.renderers import renderer_for

COMPARE_CSS = """
.es-pair-board { grid-template-columns: repeat(auto-fill, minmax(min(380px, 100%), 1fr)); }
.es-halves { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
.es-half { min-width: 0; border-top: 2px solid var(--background-fill-secondary); padding-top: 2px; }
.es-half.es-s-thinking { border-top-color: var(--color-accent); }
.es-half.es-s-failed { border-top-color: var(--error-border-color, #d33); }
.es-half .es-verdict { flex-wrap: wrap; gap: 4px 8px; min-height: 1.4em; }
.es-half .es-state { font-size: var(--text-xs); }
.es-half.es-s-thinking .es-state { color: var(--color-accent); }
.es-pair-board .es-tail { height: 3.4em; }
.es-pair-board .es-snippet { -webkit-line-clamp: 1; }
.es-side { font-weight: 700; font-family: var(--font-mono); }
.es-pair-card.es-disagree { border-color: #d4a72c; box-shadow: 0 0 0 1px #d4a72c; }
.es-disagree-badge { background: #fff3cd; border-color: #d4a72c; color: #7a4d00; font-weight: 600; }
.dark .es-disagree-badge { background: #4d3800; color: #ffe08a; }
.es-disagree-line { margin: 2px 0; }
.es-disagree-line .es-disagree-badge { margin-left: 0; overflow-wrap: anywhere; }
#es-results.es-only-disagree .es-pair-card:not(.es-disagree) { display: none; }
.es-pair-summary { display: flex; flex-direction: column; gap: 2px; }
.es-pair-summary .es-summary > span:first-child { white-space: nowrap; }
.es-side-name { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-width: 40em; }
#es-toolbar { gap: 4px 12px; align-items: center; flex-wrap: wrap; }
#es-toolbar > #es-compare, #es-toolbar > #es-only-disagreements { flex: 0 1 auto; width: auto; margin: 0; }
#es-toolbar > #es-counter { flex: 1 1 12em; }
#es-toolbar label > span { white-space: nowrap; }
#es-sides .block { padding: 2px 6px; }
#es-sides .block:has(> label > input[type=checkbox]) { flex: 1 0 auto; width: auto; }
#es-sides label > input[type=checkbox] + span { white-space: nowrap; }
#es-sides .block label > span, #es-sides .block > label > span { margin-bottom: 2px; font-size: var(--text-xs); }
@media (max-width: 480px) {
  .es-pair-summary .es-summary > span:first-child { white-space: normal; }
  .es-halves { gap: 6px; }
}
"""


def _place(side: SideName, position: int | None, first: int) -> str:
    """The side's rank of the document with an arrow from its first-stage rank ("–" before it has judged it)."""
    if position is None:
        return f'<span class="es-move"><span class="es-side">{side}</span> –</span>'
    shift = first - position
    arrow = f'<span class="es-up">▲{shift}</span>' if shift > 0 else (
        f'<span class="es-down">▼{-shift}</span>' if shift < 0 else "=")
    return (f'<span class="es-move" title="{side}: reranked #{position}, first stage #{first}">'
            f'<span class="es-side">{side}</span> #{position} {arrow}</span>')


def render_pair_card(pair: Comparison, candidate: Candidate, positions: Mapping[SideName, Mapping[str, int]],
                     reason: str | None) -> str:
    passage = candidate.passage
    doc_id = passage.doc_id
    key = escape(doc_id, quote=True)
    places = "".join(_place(side, positions[side].get(doc_id), candidate.rank) for side in SIDES)
    # The badge has a line of its own under the head: beside the title it cut the title to a few letters.
    badge = (f'<div class="es-disagree-line"><span class="es-flag es-disagree-badge" '
             f'title="{escape(reason, quote=True)}">disagree: {escape(reason)}</span></div>' if reason else "")
    halves = "".join(renderer_for(run).half(run, doc_id) for run in pair.runs.values())
    excerpt = snippet(pair.runs["A"].query, passage.text[:SNIPPET_CHARS * 2])[0]
    return (f'<div class="es-rcard es-pair-card{" es-disagree" if reason else ""}" data-doc="{key}">'
            f'<div class="es-head">{places}<span class="es-title" '
            f'title="{escape(passage.title or doc_id, quote=True)}">{escape(passage.title or doc_id)}</span>'
            f"</div>{badge}"
            f'<div class="es-snippet">{excerpt}</div><div class="es-halves">{halves}</div>'
            f'<div class="es-toggles"><details class="es-all" data-keep="trace:{key}"><summary>both reasonings in '
            f'full</summary></details><details class="es-open" data-keep="passage:{key}"><summary>passage'
            f'</summary></details><span class="es-meta">{escape(passage.passage_id)} · first stage '
            f"#{candidate.rank}</span></div></div>")


def render_pair_board(pair: Comparison, *, reranked: bool) -> str:
    """The cards in A's order (or first-stage order), each with both halves."""
    if not pair.candidates:
        return '<p class="es-notice">No passage matches this query.</p>'
    positions = {side: {doc_id: place for doc_id, place in pair.positions(side).items()
                        if run.status(doc_id) == "judged"} for side, run in pair.runs.items()}
    reasons = pair.disagreements()
    cards = "".join(render_pair_card(pair, candidate, positions, reasons.get(candidate.passage.doc_id))
                    for candidate in pair.runs["A"].ordered(reranked=reranked))
    return f'<div class="es-board es-pair-board">{cards}</div>'


def render_pair_summary(pair: Comparison, *, budgets: Mapping[SideName, int], names: Mapping[SideName, str]) -> str:
    """A line per side (its settings, progress, tokens/s, time left) and one for the pair (rank correlation,
    disagreements, nDCG@10 where the corpus judges the query)."""
    lines = []
    for side, run in pair.runs.items():
        shared = " (A's settings: A's work, reasoned once)" if pair.shared and side == "B" else ""
        lead = (f'<span class="es-side">{side}</span><span class="es-side-name" '
                f'title="{escape(names[side], quote=True)}">{escape(names[side])}{shared}</span>')
        lines.append(renderer_for(run).summary(run.shown_summary(budgets[side]), budgets[side], lead))
    stats = pair.stats()
    tau = "–" if stats.kendall_tau is None else f"{stats.kendall_tau:.2f}"
    ndcg = "" if stats.ndcg is None else " · nDCG@10 " + " · ".join(
        f"{escape(name)} <b>{'–' if value is None else f'{value:.3f}'}</b>" for name, value in stats.ndcg.items())
    so_far = "" if stats.final else " so far"
    lines.append(f'<div class="es-summary es-pair-line"><span><b>A vs B</b>{so_far}: Kendall\'s τ <b>{tau}</b> · '
                 f"RBO <b>{'–' if stats.rbo is None else f'{stats.rbo:.2f}'}</b> · <b>{stats.disagreements}</b> "
                 "disagreement"
                 f"{'s' if stats.disagreements != 1 else ''} among {stats.judged_by_both} judged by both"
                 f"{ndcg}</span></div>")
    return f'<div class="es-pair-summary">{"".join(lines)}</div>'
