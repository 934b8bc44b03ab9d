"""ir_datasets collections named by id (``irds:beir/scifact/test``): the one module that knows ir_datasets' API.

It hands back plain records; ``search.corpus`` turns them into documents, queries and judgments and checks them
as it checks files (so this module imports nothing of ours, and ir_datasets only when a collection is named).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

IRDS_PREFIX = "irds:"
Part = Literal["docs", "queries", "qrels"]


class IrdsError(ValueError):
    """The collection cannot be read as asked; the message names it and says why."""


def irds_id(path: Path | str) -> str | None:
    """The ir_datasets id ``path`` names (``irds:beir/scifact/test``), or None for a file or folder."""
    text = str(path)
    return text.removeprefix(IRDS_PREFIX) if text.startswith(IRDS_PREFIX) else None


def collection(dataset: str, part: Part) -> Any:
    """The ir_datasets collection (downloaded the first time, by ir_datasets), which must have ``part``."""
    try:
        import ir_datasets
    except ImportError:
        raise IrdsError(f"{IRDS_PREFIX}{dataset}: reading ir_datasets collections needs ir_datasets: "
                        "pip install 'explainable-search[irds]'") from None
    try:
        loaded = ir_datasets.load(dataset)
    except KeyError:
        raise IrdsError(f"{IRDS_PREFIX}{dataset}: not an ir_datasets id (see https://ir-datasets.com)") from None
    if not has(loaded, part):
        raise IrdsError(f"{IRDS_PREFIX}{dataset}: the collection has no {part}; name a subset that has them "
                        f"(see https://ir-datasets.com/{dataset.split('/')[0]}.html)")
    return loaded


def has(loaded: Any, part: Part) -> bool:
    return bool(getattr(loaded, f"has_{part}")())


def _text(record: Any) -> str:
    """A query's or document's text: its ``text`` field, else ir_datasets' ``default_text()``."""
    text = getattr(record, "text", None)
    return text if isinstance(text, str) else record.default_text()


def documents(loaded: Any) -> Iterator[tuple[str, str, str]]:
    """``(doc_id, title, text)`` of each document, in the collection's order."""
    for document in loaded.docs_iter():
        yield document.doc_id, getattr(document, "title", "") or "", _text(document)


def queries(loaded: Any) -> Iterator[tuple[str, str]]:
    """``(query_id, text)`` of each query."""
    for query in loaded.queries_iter():
        yield query.query_id, _text(query)


def judgments(loaded: Any) -> Iterator[tuple[str, str, int]]:
    """``(query_id, doc_id, relevance)`` of each judgment."""
    for judgment in loaded.qrels_iter():
        yield judgment.query_id, judgment.doc_id, int(judgment.relevance)
