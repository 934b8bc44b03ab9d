"""Grounded explanations of pointwise verdicts: which passage sentences the score rests on (ablation with the
reasoning held fixed), which spans the reasoning quotes, and whether the attribution beats random removals."""

from search.evidence.attribution import evidence_by_default, explain
from search.evidence.quotes import find_quotes
from search.evidence.sentences import Span, split_sentences, without

__all__ = ["Span", "evidence_by_default", "explain", "find_quotes", "split_sentences", "without"]
