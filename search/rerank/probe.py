"""``Probe``: how evidence re-scores a judgment, a value type shared by the pointwise rerankers (which make one) and
``search.evidence`` (which uses it); and ``EarlyRule``, when a pointwise reranker's belief has settled. It imports
nothing of the project."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Probe:
    """How to re-score one verdict on a changed passage, the reasoning held fixed: ``prompt(passage)`` ends where
    the verdict is read, ``token_ids`` are read there, ``score`` maps their log-probabilities to 0–1."""

    prompt: Callable[[str], str]
    token_ids: tuple[int, ...]
    score: Callable[[tuple[float, ...]], float]


@dataclass(frozen=True, kw_only=True, slots=True)
class EarlyRule:
    """When a reranker's belief has settled: the last ``streak`` probes all lie on one side of ``threshold`` by at
    least ``margin``, on the reranker's score (P(true); the expected grade)."""

    threshold: float
    margin: float
    streak: int

    def settled(self, scores: Sequence[float]) -> bool:
        last = scores[-self.streak:]
        return len(last) == self.streak and (all(score >= self.threshold + self.margin for score in last)
                                             or all(score <= self.threshold - self.margin for score in last))

    def key(self) -> str:
        """The rule in a judgment cache's recipe: an early judgment depends on it."""
        return f"early{self.threshold:g}/{self.margin:g}/{self.streak}"
