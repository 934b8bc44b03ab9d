"""Grounded explanations of pointwise verdicts: which passage sentences the score rests on (ablation with the
reasoning held fixed), which spans the reasoning quotes, and whether the attribution beats random removals."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.lazy import lazy_exports

if TYPE_CHECKING:
    from search.evidence.attribution import evidence_by_default, explain
    from search.evidence.quotes import find_quotes
    from search.evidence.sentences import Span, split_sentences, without

_EXPORTS = {
    "search.evidence.attribution": ("evidence_by_default", "explain"),
    "search.evidence.quotes": ("find_quotes",),
    "search.evidence.sentences": ("Span", "split_sentences", "without"),
}
__getattr__ = lazy_exports(__name__, _EXPORTS)
__all__ = ["Span", "evidence_by_default", "explain", "find_quotes", "split_sentences", "without"]
