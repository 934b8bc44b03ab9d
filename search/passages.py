"""Passages cut from documents: overlapping windows of words or of a tokenizer's tokens, each an exact slice of its
document's text, and the fingerprint that keys a corpus's indexes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable

from search.corpus import CorpusError, Document, Passage
from search.settings import PassageSettings

UnitSpans = Callable[[str], list[tuple[int, int]]]


def _word_spans(text: str) -> list[tuple[int, int]]:
    return [match.span() for match in re.finditer(r"\S+", text)]


def unit_counter(unit: str) -> UnitSpans:
    """Character spans of the units passages are measured in: words, or a tokenizer's tokens."""
    if unit == "words":
        return _word_spans
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(unit)
    if not tokenizer.is_fast:
        raise CorpusError(f"passage_unit {unit!r}: needs a fast tokenizer (with character offsets)")

    def token_spans(text: str) -> list[tuple[int, int]]:
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in encoded["offset_mapping"]]

    return token_spans


def _window_starts(units: int, settings: PassageSettings) -> range:
    """The first unit of each passage of a document ``units`` long (one passage, from 0, when it fits)."""
    window, overlap = settings.passage_window, settings.passage_overlap
    if not window or units <= window:
        return range(1)
    return range(0, units - overlap, window - overlap)


def split_document(document: Document, settings: PassageSettings, spans_of: UnitSpans) -> list[Passage]:
    """Overlapping windows of ``passage_window`` units; the text of each is an exact slice of the document."""
    spans = spans_of(document.text)
    starts = _window_starts(len(spans), settings)
    if len(starts) == 1:  # it fits one window (a longer document always makes two or more): kept whole, its own id
        return [Passage(passage_id=document.doc_id, doc_id=document.doc_id, index=0, title=document.title,
                        text=document.text)]
    end = len(spans)
    return [
        Passage(
            passage_id=f"{document.doc_id}#{index + 1}", doc_id=document.doc_id, index=index, title=document.title,
            text=document.text[spans[start][0]:spans[min(start + settings.passage_window, end) - 1][1]],
        )
        for index, start in enumerate(starts)
    ]


def count_passages(documents: Iterable[Document], settings: PassageSettings) -> int:
    """How many passages ``split_documents`` would cut, without cutting them (to refuse a corpus before work)."""
    spans_of = unit_counter(settings.passage_unit)
    return sum(len(_window_starts(len(spans_of(document.text)), settings)) for document in documents)


def split_documents(documents: Iterable[Document], settings: PassageSettings) -> tuple[Passage, ...]:
    """All passages of all documents, in document order; passage ids must stay unique."""
    spans_of = unit_counter(settings.passage_unit)
    passages = [passage for document in documents for passage in split_document(document, settings, spans_of)]
    seen: set[str] = set()
    for passage in passages:
        if passage.passage_id in seen:
            raise CorpusError(
                f"passage id {passage.passage_id!r} is both a document id and a passage of another document; "
                "rename that document or change --passage-window"
            )
        seen.add(passage.passage_id)
    return tuple(passages)


def fingerprint_passages(passages: Iterable[Passage]) -> str:
    """A digest of every passage's id, document, title and text: equal digests mean the same corpus."""
    digest = hashlib.sha256()
    for passage in passages:
        for part in (passage.passage_id, passage.doc_id, passage.title, passage.text):
            encoded = part.encode("utf-8")
            digest.update(len(encoded).to_bytes(8, "little"))
            digest.update(encoded)
    return digest.hexdigest()
