"""A document's belief as it reasons, drawn from its measured probes (``search.rerank.belief``): a small line chart
over reasoning tokens with the verdict line and the judgment as its last point, a badge when reasoning changed the
verdict or when it was decided early, and the stretch of reasoning that moved the belief most. Numbers only reach
the HTML as formatted numbers; reasoning text goes through escape()."""

from __future__ import annotations

from html import escape

from search.rerank.belief import BeliefPath
from ui.evidence import ScoreScale

WIDTH, HEIGHT = 80, 18
"""The chart's size in pixels: it sits on the card's toggles line, so that it costs the grid no height."""
MOVED = 0.05
"""The least move (on 0–1) of the belief worth marking in the reasoning: smaller ones are the probes' noise."""

BELIEF_CSS = """
.es-belief { flex: none; width: 80px; height: 18px; }
.es-belief polyline { fill: none; stroke: var(--color-accent); stroke-width: 1.5; }
.es-belief line { stroke: var(--body-text-color-subdued); stroke-width: 1; stroke-dasharray: 2 2; }
.es-belief circle { fill: var(--color-accent); }
.es-belief circle.es-final { fill: #1a7f37; }
.es-beliefs { margin-left: auto; display: flex; gap: 6px; align-items: center; min-width: 0; overflow: hidden; }
.es-now { font-size: var(--text-sm); color: var(--body-text-color-subdued); white-space: nowrap; }
.es-flag.es-changed { border-color: #bf8700; }
.es-rcard:has(details.es-all[open]) .es-moved, .es-all-open .es-moved { background: rgba(191, 135, 0, 0.22);
    border-radius: 2px; }
.es-rcard:has(details.es-all[open]) .es-moved::before, .es-all-open .es-moved::before { content: attr(data-note);
    font-weight: 600; font-size: 0.85em; background: rgba(191, 135, 0, 0.35); border-radius: 3px; padding: 0 3px;
    margin-right: 3px; }
"""


def _y(score: float, scale: ScoreScale) -> float:
    return HEIGHT - 2 - (HEIGHT - 4) * min(max(score / scale.factor, 0.0), 1.0)


def _shown(score: float, scale: ScoreScale) -> str:
    """A score on the reranker's own scale (P(true); the expected grade of 3), as the page writes it."""
    return scale.show(score / scale.factor)


def _tip(path: BeliefPath, scale: ScoreScale) -> str:
    """Every point's numbers, for the chart's tooltip."""
    readings = [f"{'before reasoning' if point.tokens == 0 else f'token {point.tokens}'}: "
                f"{_shown(point.score, scale)}" for point in path.points[:-1 if path.judged else None]]
    if path.judged:
        readings.append(f"verdict (token {path.last.tokens}): {_shown(path.last.score, scale)}")
    return f"{scale.name} if the reasoning ended here, measured — " + "; ".join(readings)


def belief_chart(path: BeliefPath, scale: ScoreScale, *, tokens_now: int = 0) -> str:
    """The belief over reasoning tokens (x up to the reasoning so far), the verdict line, and the judgment's point
    in green once judged; the tooltip gives every number."""
    extent = max(path.last.tokens, tokens_now, 1)
    coordinates = [(2 + (WIDTH - 4) * point.tokens / extent, _y(point.score, scale)) for point in path.points]
    line = " ".join(f"{x:.1f},{y:.1f}" for x, y in coordinates)
    threshold = _y(scale.threshold * scale.factor, scale)
    x, y = coordinates[-1]
    tip = _tip(path, scale)
    return (f'<svg class="es-belief" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-label="{escape(tip, quote=True)}"><title>{escape(tip)}</title>'
            f'<line x1="0" x2="{WIDTH}" y1="{threshold:.1f}" y2="{threshold:.1f}"></line>'
            f'<polyline points="{line}"></polyline>'
            f'<circle class="{"es-final" if path.judged else ""}" cx="{x:.1f}" cy="{y:.1f}" r="2.5"></circle></svg>')


def belief_now(path: BeliefPath, scale: ScoreScale) -> str:
    """While reasoning: the latest probe's reading (when it was taken in the tooltip)."""
    point = path.last
    when = "before any reasoning" if point.tokens == 0 else f"after {point.tokens} tokens of reasoning"
    return (f'<span class="es-now" title="{escape(scale.name, quote=True)} if the reasoning ended {when}, measured">'
            f"{escape(scale.name)} {_shown(point.score, scale)}</span>")


def belief_badge(path: BeliefPath, scale: ScoreScale) -> str:
    """"reasoning changed the verdict" or "decided early (by token N)" once judged, with the numbers."""
    if not path.judged or path.first.tokens != 0:
        return ""
    first, last = _shown(path.first.score, scale), _shown(path.last.score, scale)
    numbers = (f"{scale.name} before reasoning {first}, verdict {last}; the verdict held from token "
               f"{path.settled_at} of {path.last.tokens}")
    if path.changed:
        return (f'<span class="es-flag es-changed" title="{escape(numbers, quote=True)}">reasoning changed the '
                "verdict</span>")
    if path.settled_at == 0:
        return f'<span class="es-flag" title="{escape(numbers, quote=True)}">decided before reasoning</span>'
    if path.settled_at < path.last.tokens:
        return (f'<span class="es-flag" title="{escape(numbers, quote=True)}">decided early '
                f"(by token {path.settled_at})</span>")
    return ""


def reasoning_with_shift(reasoning: str, path: BeliefPath | None, scale: ScoreScale) -> str:
    """The reasoning, escaped, with the stretch that moved the belief most marked and its change noted (shown when
    the reader opens all of the reasoning; the note is drawn by CSS, so the text stays the model's own)."""
    steepest = path.steepest() if path is not None else None
    if (steepest is None or steepest[0].offset >= steepest[1].offset
            or abs(steepest[1].score - steepest[0].score) < MOVED * scale.factor):
        return escape(reasoning)
    before, after = steepest
    start, end = before.offset, min(after.offset, len(reasoning))
    note = (f"{scale.name} {_shown(before.score, scale)} → {_shown(after.score, scale)} "
            "here")
    return (f'{escape(reasoning[:start])}<span class="es-moved" data-note="{escape(note, quote=True)}" '
            f'title="{escape(note, quote=True)}: the belief moved most over this stretch of the reasoning">'
            f"{escape(reasoning[start:end])}</span>{escape(reasoning[end:])}")
