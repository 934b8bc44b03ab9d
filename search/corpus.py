"""Documents, queries and judgments read from the user's files, and passages cut from the documents.

Every problem in the input is reported with its file and line. By default any error stops the load; with
``skip_bad`` the good records load and the report says what was dropped. Documents with no text at all are
always dropped with a warning: there is nothing in them to search or judge.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search.settings import CorpusSettings, PassageSettings

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TITLE_FIELDS = ("title",)
TEXT_FIELDS = ("text", "contents", "body")
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
TEXT_FILE_SUFFIXES = {".txt", ".md"}
MAX_PROBLEMS_SHOWN = 10


@dataclass(frozen=True, kw_only=True, slots=True)
class Document:
    doc_id: str
    title: str
    text: str


@dataclass(frozen=True, kw_only=True, slots=True)
class Passage:
    """A window of one document's text; ``index`` counts passages within that document from 0."""

    passage_id: str
    doc_id: str
    index: int
    title: str
    text: str

    @property
    def contents(self) -> str:
        """Title and text as one string, the way retrievers and rerankers read a passage."""
        return f"{self.title} {self.text}".strip()


@dataclass(frozen=True, kw_only=True, slots=True)
class Query:
    query_id: str
    text: str
    instruction: str = ""
    showcase: str = ""
    """What the query shows off, when the corpus offers it as an example on the page ("negation", …)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadProblem:
    """One thing wrong with the input. ``fatal`` problems stop a strict load; the rest are warnings."""

    path: Path
    line: int | None
    message: str
    fatal: bool = True

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


class CorpusError(ValueError):
    """The input cannot be loaded as asked; ``problems`` says where and why."""

    def __init__(self, summary: str, problems: Sequence[LoadProblem] = (), *, good: int = 0) -> None:
        self.summary = summary
        self.problems = tuple(problems)
        self.good = good
        """Documents that would load if the problems were dropped (``skip_bad``)."""
        lines = [summary, *(f"  {problem}" for problem in self.problems[:MAX_PROBLEMS_SHOWN])]
        if len(self.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  … and {len(self.problems) - MAX_PROBLEMS_SHOWN} more")
        super().__init__("\n".join(lines))


Qrels = Mapping[str, Mapping[str, int]]


@dataclass(frozen=True, kw_only=True, slots=True)
class Corpus:
    """What was loaded from one source, with every problem met on the way."""

    source: Path
    documents: tuple[Document, ...]
    queries: tuple[Query, ...] = ()
    qrels: Qrels = field(default_factory=dict)
    problems: tuple[LoadProblem, ...] = ()

    @property
    def dropped(self) -> int:
        """Records that were not loaded because of a problem."""
        return len(self.problems)


@dataclass(frozen=True, kw_only=True, slots=True)
class _Record:
    line: int
    values: Mapping[str, Any]


_Parsed = _Record | LoadProblem


# ---------------------------------------------------------------------------------------------------------
# Reading files


def decoded_lines(path: Path) -> Iterator[tuple[int, str | LoadProblem]]:
    """Each line of a UTF-8 file with its 1-based number; an undecodable line becomes a problem."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield number, LoadProblem(
                    path=path, line=number,
                    message=f"not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {error.start + 1})",
                )
                continue
            yield number, text.removeprefix("\ufeff") if number == 1 else text


def column_lines(path: Path, problems: list[LoadProblem]) -> Iterator[tuple[int, list[str]]]:
    """The whitespace-separated cells of each non-blank line (qrels, runs); undecodable lines go to
    ``problems``."""
    for number, line in decoded_lines(path):
        if isinstance(line, LoadProblem):
            problems.append(line)
        elif cells := line.split():
            yield number, cells


def _jsonl_records(path: Path) -> Iterator[_Parsed]:
    for number, line in decoded_lines(path):
        if isinstance(line, LoadProblem):
            yield line
            continue
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            yield LoadProblem(path=path, line=number, message=f"malformed JSON: {error.msg.removesuffix(' at')} "
                                                                      f"at column {error.colno}")
            continue
        if not isinstance(values, dict):
            yield LoadProblem(path=path, line=number, message=f"expected a JSON object, found {type(values).__name__}")
            continue
        yield _Record(line=number, values=values)


def _table_records(path: Path, delimiter: str) -> Iterator[_Parsed]:
    """Rows of a CSV/TSV file with a header row; lines that do not decode are reported and left out."""
    line_numbers: list[int] = []

    def good_lines() -> Iterator[str]:
        for number, line in decoded_lines(path):
            if isinstance(line, LoadProblem):
                problems.append(line)
                continue
            line_numbers.append(number)
            yield line

    problems: list[LoadProblem] = []
    reader = csv.reader(good_lines(), delimiter=delimiter)
    header: list[str] | None = None
    for row in reader:
        yield from problems
        problems.clear()
        number = line_numbers[reader.line_num - 1]
        if header is None:
            header = row
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield LoadProblem(path=path, line=number, message=f"expected {len(header)} columns, found {len(row)}")
            continue
        yield _Record(line=number, values=dict(zip(header, row, strict=True)))
    yield from problems


def _records(path: Path) -> Iterator[_Parsed]:
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path)
    if suffix in TABLE_SUFFIXES:
        return _table_records(path, TABLE_SUFFIXES[suffix])
    raise CorpusError(
        f"{path}: unsupported file type {suffix or '(none)'}; expected "
        f"{', '.join(sorted(JSONL_SUFFIXES | set(TABLE_SUFFIXES)))}, a BEIR folder or a folder of .txt/.md files"
    )


def _pick_field(record: _Record, configured: str, candidates: tuple[str, ...], path: Path, *, what: str,
                required: bool) -> str | LoadProblem:
    """The record's value for one role (id, title, text), as text, or the problem that prevents it."""
    names = (configured,) if configured else candidates
    for name in names:
        if name in record.values:
            value = record.values[name]
            if isinstance(value, str):
                return value
            if isinstance(value, int | float) and not isinstance(value, bool) and what == "id":
                return str(value)
            if value is None and not required:
                return ""
            return LoadProblem(path=path, line=record.line,
                               message=f"field {name!r} must be a string, found {type(value).__name__}")
    if not required:
        return ""
    expected = " or ".join(repr(name) for name in names)
    return LoadProblem(path=path, line=record.line, message=f"missing {what} field {expected}")


# ---------------------------------------------------------------------------------------------------------
# Documents


@dataclass(slots=True)
class _Collector:
    """Gathers documents, refusing duplicate ids and dropping empty documents."""

    documents: list[Document] = field(default_factory=list)
    problems: list[LoadProblem] = field(default_factory=list)
    first_seen: dict[str, str] = field(default_factory=dict)

    def add(self, document: Document, *, path: Path, line: int | None, where: str) -> None:
        if document.doc_id in self.first_seen:
            self.problems.append(LoadProblem(
                path=path, line=line,
                message=f"duplicate id {document.doc_id!r} (first seen at {self.first_seen[document.doc_id]})",
            ))
        elif not (document.title.strip() or document.text.strip()):
            self.problems.append(LoadProblem(
                path=path, line=line, message=f"document {document.doc_id!r} has no text; left out", fatal=False,
            ))
        else:
            self.first_seen[document.doc_id] = where
            self.documents.append(document)


def _documents_from_records(path: Path, settings: CorpusSettings) -> _Collector:
    collector = _Collector()
    for parsed in _records(path):
        if isinstance(parsed, LoadProblem):
            collector.problems.append(parsed)
            continue
        values = [
            _pick_field(parsed, settings.id_field, ID_FIELDS, path, what="id", required=True),
            _pick_field(parsed, settings.title_field, TITLE_FIELDS, path, what="title", required=False),
            _pick_field(parsed, settings.text_field, TEXT_FIELDS, path, what="text", required=True),
        ]
        problem = next((value for value in values if isinstance(value, LoadProblem)), None)
        if problem is not None:
            collector.problems.append(problem)
            continue
        doc_id, title, text = (str(value) for value in values)
        if not doc_id.strip():
            collector.problems.append(LoadProblem(path=path, line=parsed.line, message="empty document id"))
            continue
        collector.add(Document(doc_id=doc_id, title=title, text=text), path=path, line=parsed.line,
                      where=f"line {parsed.line}")
    return collector


_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")


def _documents_from_text_folder(root: Path) -> _Collector:
    """One document per .txt/.md file under ``root``; the id is the path relative to it."""
    collector = _Collector()
    resolved_root = root.resolve()
    files = sorted(
        path for path in root.rglob("*")
        if path.suffix.lower() in TEXT_FILE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    for path in files:
        if not path.resolve().is_relative_to(resolved_root):
            collector.problems.append(
                LoadProblem(path=path, line=None, message="links outside the corpus folder; left out")
            )
            continue
        lines = list(decoded_lines(path))
        bad = [line for _, line in lines if isinstance(line, LoadProblem)]
        if bad:
            collector.problems.extend(bad)
            continue
        text_lines = [str(line) for _, line in lines]
        title = path.stem.replace("_", " ").replace("-", " ")
        heading = next((index for index, line in enumerate(text_lines) if line.strip()), None)
        match = _HEADING.match(text_lines[heading]) if heading is not None and path.suffix.lower() == ".md" else None
        if match:
            title = match.group(1)
            del text_lines[heading]
        doc_id = path.relative_to(root).as_posix()
        collector.add(Document(doc_id=doc_id, title=title, text="".join(text_lines).strip()), path=path, line=None,
                      where=str(path))
    if not files:
        collector.problems.append(LoadProblem(
            path=root, line=None, message="no corpus.jsonl (BEIR layout) and no .txt or .md files in this folder",
        ))
    return collector


# ---------------------------------------------------------------------------------------------------------
# Queries and judgments


def load_queries(path: Path) -> tuple[tuple[Query, ...], list[LoadProblem]]:
    """Queries from JSONL (``_id``/``id``, ``text``, optional ``instruction`` and ``showcase``), a two-column TSV, or an
    ir_datasets collection (``irds:<id>``)."""
    if (dataset := irds_id(path)) is not None:
        return tuple(Query(query_id=query.query_id, text=_irds_text(query))
                     for query in _irds(dataset, "queries").queries_iter()), []
    queries: list[Query] = []
    problems: list[LoadProblem] = []
    seen: set[str] = set()
    for parsed in _records(path):
        if isinstance(parsed, LoadProblem):
            problems.append(parsed)
            continue
        values = [
            _pick_field(parsed, "", ID_FIELDS, path, what="id", required=True),
            _pick_field(parsed, "", ("text", "query"), path, what="text", required=True),
            _pick_field(parsed, "", ("instruction",), path, what="instruction", required=False),
            _pick_field(parsed, "", ("showcase",), path, what="showcase", required=False),
        ]
        problem = next((value for value in values if isinstance(value, LoadProblem)), None)
        if problem is None and str(values[0]) in seen:
            problem = LoadProblem(path=path, line=parsed.line, message=f"duplicate query id {values[0]!r}")
        if problem is not None:
            problems.append(problem)
            continue
        query_id, text, instruction, showcase = (str(value) for value in values)
        seen.add(query_id)
        queries.append(Query(query_id=query_id, text=text, instruction=instruction, showcase=showcase))
    return tuple(queries), problems


def load_qrels(path: Path) -> tuple[dict[str, dict[str, int]], list[LoadProblem]]:
    """Judgments from BEIR TSV (``query-id corpus-id score``, header optional), TREC qrels (4 columns), or an
    ir_datasets collection (``irds:<id>``)."""
    qrels: dict[str, dict[str, int]] = {}
    if (dataset := irds_id(path)) is not None:
        for judgment in _irds(dataset, "qrels").qrels_iter():
            qrels.setdefault(judgment.query_id, {})[judgment.doc_id] = int(judgment.relevance)
        return qrels, []
    problems: list[LoadProblem] = []
    for number, cells in column_lines(path, problems):
        if number == 1 and cells[0] in {"query-id", "query_id", "qid"}:
            continue
        if len(cells) not in (3, 4):
            problems.append(LoadProblem(path=path, line=number,
                                        message=f"expected 3 (BEIR) or 4 (TREC) columns, found {len(cells)}"))
            continue
        query_id, doc_id, grade = cells[0], cells[-2], cells[-1]
        try:
            qrels.setdefault(query_id, {})[doc_id] = int(grade)
        except ValueError:
            problems.append(LoadProblem(path=path, line=number, message=f"relevance {grade!r} is not an integer"))
    return qrels, problems


# ---------------------------------------------------------------------------------------------------------
# Entry point


def load_corpus(settings: CorpusSettings) -> Corpus:
    """Read the corpus named by ``settings``: a BEIR folder, a JSONL/CSV/TSV file, or a folder of text files.

    Raises ``CorpusError`` naming file and line for every fatal problem, unless ``settings.skip_bad``.
    """
    path = settings.corpus
    if (dataset := irds_id(path)) is not None:
        return _irds_corpus(path, dataset)
    if not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    queries: tuple[Query, ...] = ()
    qrels: dict[str, dict[str, int]] = {}
    problems: list[LoadProblem] = []
    if path.is_dir() and (path / "corpus.jsonl").is_file():
        collector = _documents_from_records(path / "corpus.jsonl", settings)
        if (path / "queries.jsonl").is_file():
            queries, query_problems = load_queries(path / "queries.jsonl")
            problems += query_problems
        qrels_path = next((p for p in (path / "qrels.tsv", path / "qrels" / "test.tsv") if p.is_file()), None)
        if qrels_path is not None:
            qrels, qrels_problems = load_qrels(qrels_path)
            problems += qrels_problems
    elif path.is_dir():
        collector = _documents_from_text_folder(path)
    else:
        collector = _documents_from_records(path, settings)
    problems = collector.problems + problems
    fatal = [problem for problem in problems if problem.fatal]
    if fatal and not settings.skip_bad:
        raise CorpusError(
            f"{path}: {len(fatal)} problem(s) stop the load; fix them, or pass --skip-bad to load the "
            f"{len(collector.documents)} good document(s) and drop these",
            fatal, good=len(collector.documents),
        )
    if not collector.documents:
        raise CorpusError(f"{path}: no documents could be loaded", problems)
    return Corpus(source=path, documents=tuple(collector.documents), queries=queries, qrels=qrels,
                  problems=tuple(problems))


# ---------------------------------------------------------------------------------------------------------
# ir_datasets collections

IRDS_PREFIX = "irds:"


def irds_id(path: Path | str) -> str | None:
    """The ir_datasets id ``path`` names (``irds:beir/scifact/test``), or None for a file or folder."""
    text = str(path)
    return text.removeprefix(IRDS_PREFIX) if text.startswith(IRDS_PREFIX) else None


def _irds(dataset: str, part: str) -> Any:
    """The ir_datasets collection (downloaded the first time, by ir_datasets), or CorpusError saying why not."""
    try:
        import ir_datasets
    except ImportError:
        raise CorpusError(f"{IRDS_PREFIX}{dataset}: reading ir_datasets collections needs ir_datasets: "
                          "pip install 'explainable-search[irds]'") from None
    try:
        collection = ir_datasets.load(dataset)
    except KeyError:
        raise CorpusError(f"{IRDS_PREFIX}{dataset}: not an ir_datasets id (see https://ir-datasets.com)") from None
    if not getattr(collection, f"has_{part}")():
        raise CorpusError(f"{IRDS_PREFIX}{dataset}: the collection has no {part}; name a subset that has them "
                          f"(see https://ir-datasets.com/{dataset.split('/')[0]}.html)")
    return collection


def _irds_text(record: Any) -> str:
    """A query's or document's text: its ``text`` field, else ir_datasets' ``default_text()``."""
    text = getattr(record, "text", None)
    return text if isinstance(text, str) else record.default_text()


def _irds_corpus(path: Path, dataset: str) -> Corpus:
    """The collection's documents, with its queries and judgments when it has them."""
    collection = _irds(dataset, "docs")
    documents = tuple(Document(doc_id=document.doc_id, title=getattr(document, "title", "") or "",
                               text=_irds_text(document)) for document in collection.docs_iter())
    if not documents:
        raise CorpusError(f"{path}: no documents could be loaded")
    queries = load_queries(path)[0] if collection.has_queries() else ()
    qrels = load_qrels(path)[0] if collection.has_qrels() else {}
    return Corpus(source=path, documents=documents, queries=queries, qrels=qrels)


# ---------------------------------------------------------------------------------------------------------
# Passages

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


def split_document(document: Document, settings: PassageSettings, spans_of: UnitSpans) -> list[Passage]:
    """Overlapping windows of ``passage_window`` units; the text of each is an exact slice of the document."""
    spans = spans_of(document.text)
    window, overlap = settings.passage_window, settings.passage_overlap
    if not window or len(spans) <= window:
        return [Passage(passage_id=document.doc_id, doc_id=document.doc_id, index=0, title=document.title,
                        text=document.text)]
    starts = range(0, len(spans) - overlap, window - overlap)
    return [
        Passage(
            passage_id=f"{document.doc_id}#{index + 1}", doc_id=document.doc_id, index=index, title=document.title,
            text=document.text[spans[start][0]:spans[min(start + window, len(spans)) - 1][1]],
        )
        for index, start in enumerate(starts)
    ]


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
