"""Spans of the passage that the reasoning quotes or closely paraphrases, found by fuzzy alignment (rapidfuzz):
each quoted string and each clause of the reasoning is aligned to its best-matching stretch of the passage."""

from __future__ import annotations

import re
from collections.abc import Sequence

from search.evidence.sentences import Span
from search.rerank.events import Quote

MIN_CHARS = 16
"""Shorter fragments match too much by chance ("the passage", "caffeine")."""
MIN_SCORE = 85.0
"""rapidfuzz's partial ratio (0–100) a fragment must reach: small edits (a changed word, a plural) pass."""
QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”")
"""Double-quoted strings (single quotes are mostly apostrophes)."""
CLAUSES = re.compile(r"[^.!?;:,\n]+")


def fragments(reasoning: str) -> list[str]:
    """What the reasoning might have taken from the passage: its quoted strings, then the clauses of the rest."""
    quoted = [next(group for group in match.groups() if group) for match in QUOTED.finditer(reasoning)]
    clauses = CLAUSES.findall(QUOTED.sub("\n", reasoning))
    return [text.strip() for text in [*quoted, *clauses] if len(text.strip()) >= MIN_CHARS]


def find_quotes(passage: str, reasoning: str, sentences: Sequence[Span] = ()) -> tuple[Quote, ...]:
    """The passage spans the reasoning quotes or closely paraphrases, in passage order, overlapping ones merged;
    each widened to whole words. Two ways round: each quoted string or clause of the reasoning found in the
    passage, and each of the passage's ``sentences`` found in the reasoning (a clause that wraps a quote in words
    of its own scores too low the first way)."""
    from rapidfuzz import fuzz

    spans: list[tuple[int, int]] = []
    for fragment in fragments(reasoning):
        if len(fragment) > len(passage):
            continue
        found = fuzz.partial_ratio_alignment(fragment, passage, processor=str.lower, score_cutoff=MIN_SCORE)
        if found is not None:
            spans.append(_matched(fragment, passage, found.dest_start, found.dest_end))
    for sentence in sentences:
        if MIN_CHARS <= len(sentence.text) <= len(reasoning):
            found = fuzz.partial_ratio_alignment(sentence.text, reasoning, processor=str.lower,
                                                 score_cutoff=MIN_SCORE)
            if found is not None:
                start, end = _matched(reasoning[found.dest_start:found.dest_end], sentence.text, found.src_start,
                                      found.src_end)
                spans.append((sentence.start + start, sentence.start + end))
    spans = [_whole_words(passage, start, end) for start, end in spans if end - start >= MIN_CHARS]
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return tuple(Quote(start=start, end=end, text=passage[start:end]) for start, end in merged)


def _matched(fragment: str, passage: str, start: int, end: int) -> tuple[int, int]:
    """The aligned window narrowed to where the fragment's text actually matches (its first to last run of three
    or more equal characters): a clause with words of the reasoning's own around a paraphrase must not pull in
    the passage text beside it."""
    from rapidfuzz.distance import Indel

    equal = [block for block in Indel.opcodes(fragment.lower(), passage[start:end].lower())
             if block.tag == "equal" and block.dest_end - block.dest_start >= 3]
    return (start + equal[0].dest_start, start + equal[-1].dest_end) if equal else (start, start)


def _whole_words(passage: str, start: int, end: int) -> tuple[int, int]:
    """The span widened to the words it cuts into, then trimmed of whitespace and punctuation at its edges."""
    while start > 0 and passage[start - 1].isalnum() and passage[start].isalnum():
        start -= 1
    while end < len(passage) and passage[end - 1].isalnum() and passage[end].isalnum():
        end += 1
    while start < end and not passage[start].isalnum():
        start += 1
    while end > start and not passage[end - 1].isalnum():
        end -= 1
    return start, end
