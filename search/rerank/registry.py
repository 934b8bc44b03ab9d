"""The one registry of rerankers: their classes by name. Everything else asks the class (its name, label,
defaults, budget rule, score and scale, renderer family, what ``relevance_score`` means); a new reranker is its own
module and one line here."""

from __future__ import annotations

from collections.abc import Iterable

from search.rerank.assessor import AssessorReranker
from search.rerank.base import Reranker
from search.rerank.rank1 import Rank1Reranker
from search.rerank.reasonrank import ReasonRankReranker
from search.settings import SettingsError

RERANKERS: dict[str, type[Reranker]] = {cls.name: cls for cls in (Rank1Reranker, ReasonRankReranker,
                                                                    AssessorReranker)}


def reranker_class(name: str) -> type[Reranker]:
    """The reranker called ``name``, or ``SettingsError`` naming the setting and the choices."""
    try:
        return RERANKERS[name]
    except KeyError:
        raise SettingsError(f"reranker: {name!r} is not a reranker; choose one of {', '.join(RERANKERS)}") from None


SETTING_CHOICES: dict[str, Iterable[str]] = {"reranker": RERANKERS.keys()}
"""The valid values of the settings this registry decides, for the command line (``add_arguments(choices=…)``)."""
