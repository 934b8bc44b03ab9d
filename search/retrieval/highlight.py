"""Where a query's terms occur in a passage, as BM25 matches them (same token pattern, stopwords and stemmer),
and the stretch of a passage worth showing first: the page marks these, so a mark means a term BM25 scored."""

from __future__ import annotations

import functools
import re

from search.retrieval.bm25 import tokenizer_options
from search.settings import BM25Settings

TOKEN = re.compile(r"(?u)\b\w\w+\b")
"""bm25s's default token pattern."""


_options = functools.lru_cache(maxsize=8)(tokenizer_options)


@functools.lru_cache(maxsize=256)
def _query_stems(query: str, settings: BM25Settings) -> frozenset[str]:
    import bm25s

    return frozenset(bm25s.tokenize([query], return_ids=False, show_progress=False, **_options(settings))[0])


def term_spans(query: str, text: str, settings: BM25Settings | None = None) -> list[tuple[int, int]]:
    """Character spans of ``text`` holding a word whose BM25 token is one of the query's."""
    settings = settings or BM25Settings()
    stems = _query_stems(query, settings)
    if not stems:
        return []
    stem = _options(settings)["stemmer"]
    spans = []
    for match in TOKEN.finditer(text):
        word = match.group().lower()
        if (stem.stemWord(word) if stem is not None else word) in stems:
            spans.append(match.span())
    return spans


def snippet_start(text: str, spans: list[tuple[int, int]], width: int) -> int:
    """Where to start a ``width``-character excerpt of ``text`` so that it holds the most marked terms; at a word
    boundary, and 0 when the opening already holds as many."""
    best, best_count = 0, sum(end <= width for _, end in spans)
    for start, _ in spans:
        begin = max(0, start - width // 6)
        count = sum(begin <= other and end <= begin + width for other, end in spans)
        if count > best_count:
            best, best_count = begin, count
    if best:
        space = text.rfind(" ", 0, best)
        best = space + 1 if space >= 0 else best
    return best
