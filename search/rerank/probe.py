"""``Probe``: how evidence re-scores a judgment, a value type shared by the pointwise rerankers (which make one) and
``search.evidence`` (which uses it). It imports nothing of the project."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Probe:
    """How to re-score one verdict on a changed passage, the reasoning held fixed: ``prompt(passage)`` ends where
    the verdict is read, ``token_ids`` are read there, ``score`` maps their log-probabilities to 0–1."""

    prompt: Callable[[str], str]
    token_ids: tuple[int, ...]
    score: Callable[[tuple[float, ...]], float]
