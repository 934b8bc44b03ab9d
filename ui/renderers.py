"""One renderer per reranker name: how a run of that reranker shows on the page (its cards and its summary
line). The page looks its reranker's renderer up here and never asks which reranker it holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from search.rerank import Summary
from ui.cards import grade_verdict, rank1_verdict, render_board, render_summary
from ui.evidence import ScoreScale
from ui.window_cards import render_list_summary, render_windows


@dataclass(frozen=True, kw_only=True, slots=True)
class Renderer:
    cards: Callable[[Any, bool], str]
    """(run, reranked order?) → the cards' HTML."""
    summary: Callable[[Summary, int], str]
    """(summary, reasoning budget) → the summary line's HTML, with progress and time left."""


RENDERERS: dict[str, Renderer] = {
    "rank1": Renderer(cards=lambda run, reranked: render_board(run, reranked=reranked, verdict=rank1_verdict,
                                                               scale=ScoreScale(name="P(true)")),
                      summary=lambda summary, budget: render_summary(summary, budget=budget)),
    "assessor": Renderer(cards=lambda run, reranked: render_board(run, reranked=reranked, verdict=grade_verdict,
                                                                  scale=ScoreScale(name="expected grade",
                                                                                   factor=3.0)),
                         summary=lambda summary, budget: render_summary(summary, budget=budget)),
    "reasonrank": Renderer(cards=lambda run, reranked: render_windows(run, reranked=reranked),
                           summary=lambda summary, budget: render_list_summary(summary, budget=budget)),
}
