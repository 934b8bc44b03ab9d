"""Sentences of a passage with their character offsets, and the passage with some of them removed.

pysbd splits (rule-based, with its abbreviation lists; installs from PyPI with everything it needs). Measured
against blingfire on the sample corpus and Cranfield (benchmarks/evidence.py --splitters): blingfire is faster
but splits "Dr. Smith" and does not split the lowercase sentences Cranfield is written in.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True, slots=True)
class Span:
    """``passage[start:end]``: one sentence, without the whitespace around it."""

    start: int
    end: int
    text: str


@functools.cache
def _segmenter() -> object:
    import pysbd

    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def split_sentences(passage: str, *, title: str = "") -> tuple[Span, ...]:
    """The sentences of ``passage`` in order. When it starts with ``title`` and a space (a passage's contents),
    the title is a sentence of its own: it has no full stop to end it, and a reader sees it apart."""
    spans: list[Span] = []
    offset = 0
    if title and passage.startswith(f"{title} "):
        spans.append(Span(start=0, end=len(title), text=title))
        offset = len(title) + 1
    body = passage[offset:]
    for piece in _segmenter().segment(body) if body.strip() else ():
        text = piece.sent.strip()
        if text:
            start = offset + piece.start + piece.sent.index(text)
            spans.append(Span(start=start, end=start + len(text), text=text))
    return tuple(spans)


def without(passage: str, spans: Sequence[Span], removed: Collection[int]) -> str:
    """``passage`` with the sentences numbered ``removed`` taken out, each with the whitespace that follows it (the
    last one with the whitespace before it), so that what remains reads as the passage did, minus those."""
    kept, position = [], 0
    for number, span in enumerate(spans):
        following = spans[number + 1].start if number + 1 < len(spans) else len(passage)
        if number in removed:
            kept.append(passage[position:span.start])
            position = following
    kept.append(passage[position:])
    text = "".join(kept)
    if len(spans) - 1 in removed:  # the last sentence went: so does the whitespace that led up to it
        text = text.rstrip() + passage[spans[-1].end:] if text.strip() else passage[spans[-1].end:]
    return text
