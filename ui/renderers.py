"""How a run shows on the page (its cards and its summary line), by renderer family: a reranker names its family
(``Reranker.renderer``) and gives its score's name and scale; the page asks ``renderer_for`` and never asks which
reranker it holds. A new reranker reuses a family, or adds one here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from search.rerank.base import Reranker, Run, Summary
from search.rerank.registry import reranker_class
from ui.cards import Verdict, grade_verdict, rank1_verdict, render_board, render_half, render_summary
from ui.evidence import ScoreScale
from ui.window_cards import render_list_summary, render_window_half, render_windows


class SummaryLine(Protocol):
    def __call__(self, summary: Summary, budget: int, lead: str = "") -> str:
        """(summary, reasoning budget, escaped HTML to lead the line with) → the summary line's HTML."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Renderer:
    cards: Callable[[Any, bool], str]
    """(run, reranked order?) → the cards' HTML."""
    summary: SummaryLine
    """The summary line's HTML, with progress and time left; a comparison leads it with the side's name."""
    half: Callable[[Any, str], str]
    """(run, document id) → the run's half of that document's compare card."""


def score_scale(reranker: type[Reranker]) -> ScoreScale:
    """How a pointwise reranker's scores read on its own scale, and where its verdict turns (its early rule's
    threshold, on 0–1)."""
    return ScoreScale(name=reranker.score_name, factor=reranker.score_max,
                      threshold=reranker.early_rule.threshold / reranker.score_max)


def _board(verdict: Verdict) -> Callable[[type[Reranker]], Renderer]:
    """A pointwise family: one card per document, its verdict read by ``verdict``, scores on the reranker's scale."""

    def renderer(reranker: type[Reranker]) -> Renderer:
        scale = score_scale(reranker)
        return Renderer(cards=lambda run, reranked: render_board(run, reranked=reranked, verdict=verdict, scale=scale),
                        summary=lambda summary, budget, lead="": render_summary(summary, budget=budget, lead=lead),
                        half=lambda run, doc_id: render_half(run, doc_id, verdict=verdict, scale=scale))

    return renderer


FAMILIES: dict[str, Callable[[type[Reranker]], Renderer]] = {
    "verdicts": _board(rank1_verdict),
    "grades": _board(grade_verdict),
    "windows": lambda reranker: Renderer(cards=lambda run, reranked: render_windows(run, reranked=reranked),
                                         summary=lambda summary, budget, lead="": render_list_summary(
                                             summary, budget=budget, lead=lead),
                                         half=render_window_half),
}
"""The renderer families, by the names rerankers give in ``Reranker.renderer``."""


def renderer_of(reranker: type[Reranker]) -> Renderer:
    return FAMILIES[reranker.renderer](reranker)


def renderer_for(run: Run) -> Renderer:
    """The renderer of ``run``'s reranker."""
    return renderer_of(reranker_class(run.reranker))
