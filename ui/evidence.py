"""Escaped HTML for a judgment's evidence: passage sentences shaded by their measured delta (blue where the
sentence supports the score, orange where it counts against it: a pair colour-blind readers tell apart), quotes
underlined, the one-line "why", the faithfulness badge, and the legend. Every number shown is the evidence's
own; passage text and model output are untrusted and go through escape()."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from html import escape

from search.rerank.events import Evidence, SentenceEffect

SHOWN_DELTA = 0.01
"""Sentences whose removal moves the score less than this are left unshaded."""
QUOTE_CHARS = 60
"""How much of a sentence the "why" line quotes."""

EVIDENCE_CSS = """
.es-ev-legend { font-size: var(--text-sm); display: flex; gap: 14px; flex-wrap: wrap; align-items: center;
                margin: 0 0 6px; color: var(--body-text-color-subdued); }
.es-ev-legend i { display: inline-block; width: 12px; height: 12px; border-radius: 2px; vertical-align: -1px;
                  margin-right: 4px; }
.es-ev-legend u, .es-ev u { text-decoration: underline; text-decoration-thickness: 2px;
                            text-underline-offset: 2px; }
.es-why { font-size: var(--text-sm); }
.es-why q { font-style: italic; }
.es-flag.es-unfaithful { border-color: #e66101; color: #b54a00; font-weight: 600; }
.dark .es-flag.es-unfaithful { color: #fdb863; }
"""


@dataclass(frozen=True, kw_only=True, slots=True)
class ScoreScale:
    """How a reranker's evidence scores (0–1) read on its own scale: P(true) as is, expected grade × 3."""

    name: str
    factor: float = 1.0
    threshold: float = 0.5
    """Where the verdict turns, on 0–1 (P(true) 0.5; expected grade 1.5 of 3): the belief chart's line."""

    def show(self, value: float) -> str:
        return f"{value * self.factor:.2f}"


SUPPORT, COUNTER = (33, 102, 172), (230, 97, 1)
"""Blue and orange (ColorBrewer's PuOr/RdBu ends): distinct under the common colour-vision deficiencies."""


def _shade(sentence: SentenceEffect, strongest: float) -> str:
    if abs(sentence.delta) < SHOWN_DELTA or strongest <= 0:
        return ""
    red, green, blue = SUPPORT if sentence.delta > 0 else COUNTER
    alpha = 0.12 + 0.4 * abs(sentence.delta) / strongest  # at most 0.52: dark text stays readable
    return f"background: rgba({red}, {green}, {blue}, {alpha:.2f})"


def _tip(sentence: SentenceEffect, evidence: Evidence, scale: ScoreScale) -> str:
    about = "≈ " if evidence.method == "surrogate" else ""
    return (f"Δ {sentence.delta * scale.factor:+.2f}: without this sentence {scale.name} would be "
            f"{about}{scale.show(evidence.score - sentence.delta)} (with it {scale.show(evidence.score)})")


def highlighted(evidence: Evidence, scale: ScoreScale, *, start: int = 0, end: int | None = None) -> str:
    """``evidence.passage[start:end]``, each sentence shaded by its delta with its numbers as a tooltip, and the
    quoted spans underlined."""
    text = evidence.passage
    end = len(text) if end is None else end
    strongest = max((abs(sentence.delta) for sentence in evidence.sentences), default=0.0)
    cuts = sorted({start, end, *(point for item in (*evidence.sentences, *evidence.quotes)
                                 for point in (item.start, item.end) if start < point < end)})
    pieces = []
    for left, right in itertools.pairwise(cuts):
        piece = escape(text[left:right])
        if any(quote.start <= left and right <= quote.end for quote in evidence.quotes):
            piece = f"<u>{piece}</u>"
        sentence = next((item for item in evidence.sentences if item.start <= left and right <= item.end), None)
        if sentence is not None and (shade := _shade(sentence, strongest)):
            piece = (f'<span style="{shade}" title="{escape(_tip(sentence, evidence, scale), quote=True)}">'
                     f"{piece}</span>")
        pieces.append(piece)
    return f'<span class="es-ev">{"".join(pieces)}</span>'


def why_line(evidence: Evidence, scale: ScoreScale) -> str:
    """The verdict in one line with the sentence that moves it most, e.g. "P(true) 0.91 — without 'Caffeine blocks
    adenosine…' it would be 0.22"."""
    top = evidence.strongest()
    lead = f"{scale.name} {scale.show(evidence.score)}"
    if top is None or abs(top.delta) < SHOWN_DELTA:
        return f'<div class="es-why">{escape(lead)} — no single sentence moves it by {SHOWN_DELTA:g} or more</div>'
    quoted = top.text if len(top.text) <= QUOTE_CHARS else top.text[:QUOTE_CHARS].rstrip() + "…"
    about = "≈ " if evidence.method == "surrogate" else ""
    return (f'<div class="es-why">{escape(lead)} — without <q>{escape(quoted)}</q> it would be '
            f"{about}{scale.show(evidence.score - top.delta)}</div>")


def faithfulness_badge(evidence: Evidence, scale: ScoreScale) -> str:
    """A badge when the sentences ranked highest move the score no more than random ones."""
    check = evidence.faithfulness
    if check.supported is not False:
        return ""
    removed = check.sentences_removed
    tip = (f"Removing the {removed} sentence{'s' if removed != 1 else ''} with the largest effect gives "
           f"{scale.name} {scale.show(check.top_removed)}; removing {removed} random ones gives "
           f"{scale.show(check.random_removed)} on average (with all of them: {scale.show(evidence.score)}). The "
           "reasoning's verdict does not rest on particular sentences of the passage.")
    return f'<span class="es-flag es-unfaithful" title="{escape(tip, quote=True)}">reasoning not supported</span>'


def excerpt_start(evidence: Evidence, chars: int) -> int:
    """Where a short excerpt starts so that it shows the strongest sentence."""
    top = evidence.strongest()
    return 0 if top is None or top.end <= chars else top.start


def legend(scale: ScoreScale) -> str:
    return ('<div class="es-ev-legend"><b>Evidence</b>'
            f'<span><i style="background: rgb{SUPPORT}"></i>supports the score</span>'
            f'<span><i style="background: rgb{COUNTER}"></i>counts against it</span>'
            f"<span>shade: how much {escape(scale.name)} changes without the sentence</span>"
            "<span><u>underlined</u>: quoted in the reasoning</span></div>")
