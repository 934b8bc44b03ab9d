"""Escaped HTML for a pointwise rerank run: one compact card per candidate that shows, without being opened, its
state, the latest lines of its reasoning as they stream, and a two-line passage excerpt with the query's terms
marked; rank1's verdict and P(true), or the assessor's grade distribution, once judged; with evidence, the
sentences shaded by their measured effect, a "why" line and a badge when the reasoning fails the faithfulness
check (ui/evidence.py). Document text and model
output are untrusted: every piece of them goes through escape()."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from search.rerank.base import Summary
from search.rerank.belief import BeliefPath
from search.rerank.events import Graded, Judged
from search.rerank.pointwise import DocumentState, PointwiseRun
from search.retrieval.highlight import snippet_start, term_spans
from ui.belief import belief_badge, belief_chart, belief_now, reasoning_with_shift
from ui.evidence import ScoreScale, excerpt_start, faithfulness_badge, highlighted, legend, why_line
from ui.results import STAGE_LABELS

SNIPPET_CHARS = 240
"""About two lines of a card: the excerpt shown before the passage is opened."""

CARDS_CSS = """
.es-board { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(360px, 100%), 1fr)); gap: 8px;
            align-items: start; }
.es-rcard { border: 1px solid var(--border-color-primary); border-radius: 8px; padding: 6px 10px;
            background: var(--block-background-fill); font-size: var(--text-md); line-height: 1.35; }
.es-rcard.es-s-failed { border-color: var(--error-border-color, #d33); }
.es-rcard.es-s-thinking { border-color: var(--color-accent); }
.es-head { display: flex; gap: 6px; align-items: baseline; font-size: var(--text-md); }
.es-title { font-weight: 600; flex: 1; min-width: 0; overflow: hidden; text-overflow: ellipsis;
            white-space: nowrap; }
.es-move { font-size: var(--text-sm); font-variant-numeric: tabular-nums; white-space: nowrap; }
.es-up { color: #1a7f37; } .es-down { color: #cf222e; }
.dark .es-up { color: #4ac26b; } .dark .es-down { color: #ff8182; }
.es-state { font-size: var(--text-sm); white-space: nowrap; padding: 0 6px; border-radius: 10px;
            background: var(--background-fill-secondary); }
.es-s-thinking .es-state { color: var(--color-accent); }
.es-s-failed .es-state, .es-s-stopped .es-state { color: var(--body-text-color-subdued); }
.es-verdict { font-size: var(--text-sm); display: flex; gap: 8px; align-items: center; }
.es-verdict:empty { display: none; }
.es-bar { height: 8px; background: var(--background-fill-secondary); border-radius: 4px; flex: 1; }
.es-bar > div { height: 8px; border-radius: 4px; background: var(--color-accent); }
.es-snippet { font-size: var(--text-sm); color: var(--body-text-color-subdued); margin: 2px 0;
              display: -webkit-box; -webkit-line-clamp: 2; -webkit-box-orient: vertical; overflow: hidden; }
.es-snippet mark, .es-passage mark { background: #fde68a; color: #1f2937; padding: 0 1px; border-radius: 2px; }
.dark .es-snippet mark, .dark .es-passage mark { background: #854d0e; color: #fef9c3; }
.es-tail { height: 4.2em; overflow: hidden; display: flex; flex-direction: column-reverse;
           font-size: var(--text-sm); line-height: 1.4; background: var(--background-fill-secondary);
           border-radius: 4px; padding: 2px 6px; }
.es-trace { white-space: pre-wrap; overflow-wrap: anywhere; }
.es-tail .es-trace:empty::before { content: "no reasoning yet"; color: var(--body-text-color-subdued); }
.es-rcard:has(details.es-all[open]) .es-tail { height: auto; max-height: 24em; overflow-y: auto;
                                                 flex-direction: column; }
.es-toggles { display: flex; gap: 4px; font-size: var(--text-sm); color: var(--body-text-color-subdued);
              margin-top: 2px; white-space: nowrap; }
.es-toggles details > summary { cursor: pointer; list-style: none; padding: 0 6px; border-radius: 4px; }
.es-toggles details > summary::-webkit-details-marker { display: none; }
.es-toggles details > summary:hover { background: var(--background-fill-secondary); }
.es-toggles details[open] > summary { font-weight: 600; }
.es-passage { display: none; font-size: var(--text-sm); white-space: pre-wrap; margin: 4px 0; max-height: 20em;
              overflow-y: auto; }
.es-rcard:has(details.es-open[open]) .es-passage { display: block; }
.es-meta { font-size: var(--text-sm); color: var(--body-text-color-subdued); }
.es-flag { display: inline-block; border-radius: 4px; padding: 0 6px; margin-left: 4px; font-size: var(--text-sm);
           border: 1px solid var(--border-color-primary); }
.es-summary { font-size: var(--text-sm); display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
.es-summary .es-progress { flex: 1; min-width: 120px; height: 6px; border-radius: 3px;
                           background: var(--background-fill-secondary); }
.es-summary .es-progress > div { height: 6px; border-radius: 3px; background: var(--color-accent); }
.es-grades { display: inline-flex; gap: 3px; align-items: flex-end; height: 24px; vertical-align: middle; }
.es-grades > span { display: flex; flex-direction: column; justify-content: flex-end; align-items: center;
                    width: 16px; height: 24px; font-size: 0.7em; font-family: var(--font-mono); }
.es-grades > span > i { display: block; width: 12px; background: var(--color-accent); border-radius: 2px 2px 0 0; }
.es-grades > span.es-top > i { background: #1a7f37; }
@media (max-width: 480px) {
  .es-toggles { flex-wrap: wrap; }
  .es-rcard { padding: 6px 8px; }
}
"""

# Run on page load. The page replaces the cards' HTML on every update. This keeps the <details> the reader opened
# (by click) open while their card keeps streaming, and shows which cards a re-sort moved, unless the reader asked
# for reduced motion: a moved card fades in at its new place from a nudge toward where it came from (up or down),
# under half the board's gap. Not a slide from its old place (FLIP): sliding cards cross each other, and when the
# grid changed its columns mid-slide they were drawn over one another; a nudge inside the gap covers no card
# whatever the re-sort or re-layout. Where a card was is its index in its board, not a measured position (a
# measure taken mid-animation, or across a change of columns, is not where the card was).
KEEP_OPEN_JS = """
() => {
  const open = new Set();
  document.addEventListener("click", (event) => {
    const summary = event.target.closest && event.target.closest("details[data-keep] > summary");
    if (!summary) return;
    const details = summary.parentElement;
    if (details.open) open.delete(details.dataset.keep); else open.add(details.dataset.keep);
  }, true);
  const still = window.matchMedia("(prefers-reduced-motion: reduce)");
  const places = new Map();
  const showMoves = () => {
    document.querySelectorAll(".es-board").forEach((board) => {
      const style = getComputedStyle(board);
      // Under half the gap: two neighbours nudged toward each other still leave a gap between them.
      const nudge = 0.4 * Math.min(parseFloat(style.rowGap) || 0, parseFloat(style.columnGap) || 0);
      board.querySelectorAll(":scope > .es-rcard[data-doc]").forEach((card, place) => {
        const before = places.get(card.dataset.doc);
        places.set(card.dataset.doc, place);
        if (before === undefined || before === place || still.matches || !nudge) return;
        const from = before > place ? nudge : -nudge;  // moved up: it rises into its place from just below
        card.animate([{transform: `translateY(${from}px)`, opacity: 0.4}, {transform: "none", opacity: 1}],
                     {duration: 350, easing: "ease-out"});
      });
    });
  };
  let pending = false;
  new MutationObserver(() => {
    document.querySelectorAll("details[data-keep]").forEach((element) => {
      if (open.has(element.dataset.keep) && !element.open) element.open = true;
    });
    if (!pending) { pending = true; requestAnimationFrame(() => { pending = false; showMoves(); }); }
  }).observe(document.documentElement,
    {childList: true, subtree: true, attributes: true, attributeFilter: ["open"]});
}
"""

FLAG_TEXT = {
    "truncated_passage": ("passage truncated", "The passage was cut to fit the model's context."),
    "from_cache": ("from cache", "Replayed from an earlier identical judgment."),
}
FORCED_TIP = ("The model gave no verdict or grade of its own; it was read in one extra step after closing its "
              "reasoning.")


def _movement(state: DocumentState, position: int | None) -> str:
    """The card's rank among the judged with its move from the first stage; "–" before it is judged, so that a
    card's first-stage rank is never read as a reranked one (only judged cards hold a "#n")."""
    first = state.first_stage_rank
    if position is None:
        return f'<span class="es-move" title="not judged yet · first stage #{first}">–</span>'
    shift = first - position
    arrow = f'<span class="es-up">▲{shift}</span>' if shift > 0 else (
        f'<span class="es-down">▼{-shift}</span>' if shift < 0 else "=")
    return f'<span class="es-move" title="first stage #{first}, reranked #{position}">#{position} {arrow}</span>'


def card_state(state: DocumentState, *, stopped: bool) -> tuple[str, str, str]:
    """The card's state: (css name, label, tooltip): queued, thinking (tokens so far), judged, forced, failed
    (why) or stopped."""
    tokens = f"{state.tokens} token{'s' if state.tokens != 1 else ''}" if state.tokens else ""
    if state.status == "failed":
        return "failed", "failed", state.failure
    if state.outcome is not None:
        if state.outcome.end_reason == "early":
            return "judged", f"early verdict · token {state.outcome.tokens}", (
                f"Early verdict: the belief had settled (the early-verdict rule), so the reasoning was stopped after "
                f"{state.outcome.tokens} tokens and the verdict read there in one extra step. {state.outcome.how()}")
        if state.outcome.forced and state.outcome.end_reason == "budget":
            return "judged", "forced · budget reached", (
                f"The reasoning used its whole budget ({state.outcome.tokens} tokens) before answering: the answer "
                "was read in one extra step after closing it. A larger reasoning budget (☰ settings) lets the model "
                f"finish. {state.outcome.how()}")
        if state.outcome.forced:
            return "judged", "forced", f"{FORCED_TIP} {state.outcome.how()}"
        return "judged", "judged", state.outcome.how()
    if stopped:
        return "stopped", f"stopped{' · ' + tokens if tokens else ''}", "Stopped before a judgment; the reasoning " \
                                                                         "so far is kept."
    if state.status == "reasoning" and state.tokens:
        return "thinking", f"thinking · {tokens}", "The model is writing its reasoning."
    if state.status == "reasoning":
        return "thinking", "thinking…", "The engine is reading the prompt."
    return "queued", "queued", "Waiting for the engine."


def rank1_verdict(judged: Judged) -> str:
    percent = judged.p_true * 100
    return (f'<b>{"relevant" if judged.verdict else "not relevant"}</b><span>P(true) {judged.p_true:.3f}</span>'
            f'<div class="es-bar" title="P(true) {percent:.1f}%"><div style="width: {percent:.1f}%"></div></div>')


def grade_verdict(graded: Graded) -> str:
    """The grade distribution as a small 0–3 bar chart, with the expected grade the list is sorted by."""
    bars = "".join(
        f'<span class="{"es-top" if grade == graded.grade else ""}" title="grade {grade}: {share:.1%}">'
        f'<i style="height: {max(share * 18, 1):.1f}px"></i>{grade}</span>'
        for grade, share in enumerate(graded.distribution))
    return (f"<b>grade {graded.grade}</b> (p {graded.distribution[graded.grade]:.2f})"
            f'<span class="es-grades" title="P(grade), renormalised over the four grade tokens">{bars}</span>'
            f"<span>expected grade <b>{graded.expected_grade:.2f}</b> / 3</span>")


Verdict = Callable[..., str]
"""How a card shows its judgment: ``rank1_verdict`` or ``grade_verdict``."""


def marked(text: str, spans: list[tuple[int, int]], start: int = 0, end: int | None = None) -> str:
    """``text[start:end]`` escaped, with the ``spans`` inside it in <mark>."""
    end = len(text) if end is None else end
    pieces, at = [], start
    for span_start, span_end in spans:
        if span_start < at or span_end > end:
            continue
        pieces += [escape(text[at:span_start]), f"<mark>{escape(text[span_start:span_end])}</mark>"]
        at = span_end
    pieces.append(escape(text[at:end]))
    return "".join(pieces)


def snippet(query: str, text: str) -> tuple[str, str]:
    """(the two-line excerpt, the whole passage), both with the query's BM25 terms marked."""
    spans = term_spans(query, text)
    start = snippet_start(text, spans, SNIPPET_CHARS)
    excerpt = ("… " if start else "") + marked(text, spans, start, min(len(text), start + SNIPPET_CHARS * 2))
    return excerpt, marked(text, spans)


def verdict_line(state: DocumentState, verdict: Verdict, kind: str, scale: ScoreScale
                 ) -> tuple[str, str, str, str]:
    """(the verdict line's HTML, its flags, the belief chart's, the reasoning's): the judgment or failure; the
    belief chart while it forms and after (with the latest reading while reasoning) and its badge once judged; the
    reasoning with the stretch that moved the belief most marked."""
    path = BeliefPath.of(state.belief, state.outcome)
    shown = verdict(state.outcome) if state.outcome is not None else (
        f'<span class="es-meta">{escape(state.failure)}</span>' if kind == "failed" else "")
    flags = "".join(f'<span class="es-flag" title="{escape(text)}">{escape(name)}</span>'
                    for field, (name, text) in FLAG_TEXT.items()
                    if state.outcome is not None and getattr(state.outcome, field))
    if path is None:
        return shown, flags, "", escape(state.reasoning)
    chart = ("" if path.judged else belief_now(path, scale)) + belief_chart(path, scale, tokens_now=state.tokens)
    return shown, belief_badge(path, scale) + flags, chart, reasoning_with_shift(state.reasoning, path, scale)


def render_card(state: DocumentState, position: int | None, verdict: Verdict, *, query: str, stopped: bool,
                scale: ScoreScale) -> str:
    passage = state.candidate.passage
    key = escape(passage.doc_id, quote=True)
    kind, label, tip = card_state(state, stopped=stopped)
    provenance = " ".join(f"{escape(STAGE_LABELS.get(stage, stage))} #{hit.rank}"
                          for stage, hit in state.candidate.provenance.items())
    shown, flags, chart, reasoning = verdict_line(state, verdict, kind, scale)
    excerpt, whole = snippet(query, passage.text)
    evidence = state.evidence
    why = ""
    if evidence is not None:
        flags += faithfulness_badge(evidence, scale)
        why = why_line(evidence, scale)
        start = excerpt_start(evidence, SNIPPET_CHARS)
        excerpt = ("… " if start else "") + highlighted(evidence, scale, start=start,
                                                       end=min(len(evidence.passage), start + SNIPPET_CHARS * 2))
        whole = highlighted(evidence, scale)
    return (
        f'<div class="es-rcard es-s-{kind}" data-doc="{key}">'
        f'<div class="es-head">{_movement(state, position)}'
        f'<span class="es-title" title="{escape(passage.title or passage.doc_id, quote=True)}">'
        f'{escape(passage.title or passage.doc_id)}</span>'
        f'<span class="es-state" title="{escape(tip, quote=True)}">{escape(label)}</span></div>'
        f'<div class="es-verdict">{shown}{flags}</div>{why}'
        f'<div class="es-snippet">{excerpt}</div>'
        f'<div class="es-tail"><div class="es-trace">{reasoning}</div></div>'
        f'<div class="es-toggles"><details class="es-all" data-keep="trace:{key}"><summary>all reasoning '
        f'({len(state.reasoning)} characters)</summary></details>'
        f'<details class="es-open" data-keep="passage:{key}"><summary>passage</summary></details>'
        f'<span class="es-beliefs">{chart}</span></div>'
        f'<div class="es-passage"><div class="es-meta">{escape(passage.passage_id)} · {provenance}</div>{whole}'
        "</div></div>"
    )


def render_half(run: PointwiseRun, doc_id: str, *, verdict: Verdict, scale: ScoreScale) -> str:
    """One side's half of a compare card: its state, verdict or grade, flags, evidence line, the latest lines of
    its reasoning, and the passage shaded by its own evidence (shown when the card's passage is opened)."""
    state = run.documents[doc_id]
    kind, label, tip = card_state(state, stopped=run.stopped)
    shown, flags, chart, reasoning = verdict_line(state, verdict, kind, scale)
    passage, why = snippet(run.query, state.candidate.passage.text)[1], ""
    if state.evidence is not None:
        flags += faithfulness_badge(state.evidence, scale)
        why, passage = why_line(state.evidence, scale), highlighted(state.evidence, scale)
    return (f'<div class="es-half es-s-{kind}"><div class="es-verdict"><span class="es-state" '
            f'title="{escape(tip, quote=True)}">{escape(label)}</span>{shown}{chart}{flags}</div>{why}'
            f'<div class="es-tail"><div class="es-trace">{reasoning}</div></div>'
            f'<div class="es-passage">{passage}</div></div>')


def render_board(run: PointwiseRun, *, reranked: bool, verdict: Verdict, scale: ScoreScale) -> str:
    """The cards, under the evidence legend once any card has evidence."""
    if not run.documents:
        return '<p class="es-notice">No passage matches this query.</p>'
    positions = run.reranked_positions()
    states = run.states(reranked=reranked)
    cards = "".join(render_card(state, positions.get(state.doc_id), verdict, query=run.query, stopped=run.stopped,
                                scale=scale) for state in states)
    explained = any(state.evidence is not None for state in states)
    return f'{legend(scale) if explained else ""}<div class="es-board">{cards}</div>'


def _clock(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def render_summary(summary: Summary, *, budget: int, unit: str = "judged", lead: str = "") -> str:
    """Done/total, the live token rate, elapsed time, the estimated time left to judge (``Summary.eta_s``; once
    done, how far off the estimates shown were: ``Summary.estimate_error``), and a progress bar, after ``lead``
    (escaped HTML: a comparison's side and its settings). "done" only once evidence has ended too; until then the
    run is "explaining"."""
    state = ("stopped" if summary.stopped else "done" if summary.done else "explaining" if summary.finished
             else "reasoning")
    failed = f", {summary.failed} failed" if summary.failed else ""
    failed += (f" · evidence {summary.explained}/{summary.judged}" if summary.explained or summary.explaining
               else "")
    done = summary.judged + (summary.failed if unit == "windows" else 0)
    eta = summary.eta_s(budget)
    left = "" if summary.finished or summary.stopped else (
        " · time left: estimating…" if eta is None else f" · about {_clock(max(eta, 1.0))} left")
    if (error := summary.estimate_error()) is not None:
        left = (f" · time-left estimates were off by at most {_clock(error.worst_s)} (median "
                f"{_clock(error.median_s)})")
    share = summary.progress(budget)
    return (f'<div class="es-summary">{lead}<span><b>{done}/{summary.total}</b> {unit}{failed} · '
            f"{summary.tokens_per_s:.1f} tokens/s · {summary.elapsed_s:.1f} s{left} · {state}</span>"
            f'<div class="es-progress" title="{share:.0%} of the most the run can write">'
            f'<div style="width: {share * 100:.1f}%"></div></div></div>')
