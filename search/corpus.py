"""Documents, queries and judgments read from the user's files or an ir_datasets collection (``search.irds``);
the passages cut from documents are ``search.passages``'.

Every problem in the input is reported with its file and line. By default any error stops the load; with
``skip_bad`` the good records load and the report says what was dropped. Documents with no text at all are
always dropped with a warning: there is nothing in them to search or judge. Only regular files are read, and no
line past ``MAX_LINE_CHARS``, so that neither a FIFO, a device nor one endless line can hang the load or exhaust
memory.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from search import irds
from search.settings import CorpusSettings

ID_FIELDS = ("_id", "id", "docid", "doc_id")
TITLE_FIELDS = ("title",)
TEXT_FIELDS = ("text", "contents", "body")
JSONL_SUFFIXES = {".jsonl", ".ndjson", ".json"}
TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t"}
TEXT_FILE_SUFFIXES = {".txt", ".md"}
MAX_PROBLEMS_SHOWN = 10
MAX_LINE_CHARS = 1_000_000
"""The longest line read from any input file, which is also the longest document (a JSONL line, a text file):
a longer one is reported, and read no further, so that memory stays bounded whatever a file holds. (A CSV/TSV
field stops earlier, at the csv module's limit.)"""


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


NOT_REGULAR = "not a regular file"


def _open_regular(path: Path) -> IO[str]:
    """``path`` opened as UTF-8 text (undecodable bytes kept as escapes, lines ending at ``\\n`` only), or
    ``CorpusError`` when it is not a regular file (after links): a FIFO would wait for a writer, a device never
    ends. Opened without blocking, so that a FIFO is refused rather than waited on."""
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise CorpusError(f"{path}: {NOT_REGULAR}")
        os.set_blocking(descriptor, True)
        return os.fdopen(descriptor, encoding="utf-8", errors="surrogateescape", newline="\n")
    except BaseException:
        os.close(descriptor)
        raise


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
"""What ``surrogateescape`` turns a byte that is not UTF-8 into."""


def decoded_lines(path: Path, what: str = "line") -> Iterator[tuple[int, str | LoadProblem]]:
    """Each line of a UTF-8 file with its 1-based number. A line that does not decode, or is longer than
    ``MAX_LINE_CHARS`` (``what`` it holds, for the message: "document", "query"), becomes a problem; the rest of a
    long line is read past in chunks, never held whole."""
    limit = MAX_LINE_CHARS
    with _open_regular(path) as handle:
        number = 0
        while line := handle.readline(limit + 1):
            number += 1
            if len(line) > limit and not line.endswith("\n"):
                while (rest := handle.readline(limit)) and not rest.endswith("\n"):
                    continue
                yield number, LoadProblem(path=path, line=number, message=f"{what} longer than {limit:,} characters")
                continue
            if bad := _ESCAPED_BYTE.search(line):
                column = len(line[:bad.start()].encode("utf-8", "surrogateescape")) + 1
                yield number, LoadProblem(
                    path=path, line=number,
                    message=f"not valid UTF-8 (byte 0x{ord(bad.group()) - 0xDC00:02x} at column {column})",
                )
                continue
            yield number, line.removeprefix("\ufeff") if number == 1 else line


def column_lines(path: Path, problems: list[LoadProblem]) -> Iterator[tuple[int, list[str]]]:
    """The whitespace-separated cells of each non-blank line (qrels, runs); undecodable lines go to
    ``problems``."""
    for number, line in decoded_lines(path):
        if isinstance(line, LoadProblem):
            problems.append(line)
        elif cells := line.split():
            yield number, cells


def _jsonl_records(path: Path, what: str) -> Iterator[_Parsed]:
    for number, line in decoded_lines(path, what):
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


def _table_records(path: Path, delimiter: str, what: str) -> Iterator[_Parsed]:
    """Rows of a CSV/TSV file with a header row; lines that do not decode, and fields past the csv module's
    limit, are reported and left out."""
    line_numbers: list[int] = []

    def good_lines() -> Iterator[str]:
        for number, line in decoded_lines(path, what):
            if isinstance(line, LoadProblem):
                problems.append(line)
                continue
            line_numbers.append(number)
            yield line

    problems: list[LoadProblem] = []
    reader = csv.reader(good_lines(), delimiter=delimiter)
    header: list[str] | None = None
    while True:
        try:
            row: list[str] | csv.Error = next(reader)
        except StopIteration:
            break
        except csv.Error as error:  # a field past csv's limit (an unclosed quote runs on to it): bounded memory
            row = error
        yield from problems
        problems.clear()
        number = line_numbers[reader.line_num - 1]
        if isinstance(row, csv.Error):
            yield LoadProblem(path=path, line=number, message=str(row))
            continue
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


def _records(path: Path, what: str) -> Iterator[_Parsed]:
    """The records of a JSONL or CSV/TSV file, each ``what`` (for messages: "document", "query")."""
    suffix = path.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _jsonl_records(path, what)
    if suffix in TABLE_SUFFIXES:
        return _table_records(path, TABLE_SUFFIXES[suffix], what)
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
    for parsed in _records(path, "document"):
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


def _text_file_lines(path: Path) -> list[str] | list[LoadProblem]:
    """The lines of a text file that is one document, or what keeps it out: it is not a regular file, a line does
    not decode, or it is longer than ``MAX_LINE_CHARS`` in all (read no further)."""
    if not path.is_file():
        return [LoadProblem(path=path, line=None, message=f"{NOT_REGULAR}; left out")]
    lines: list[str] = []
    bad: list[LoadProblem] = []
    length = 0
    for _, line in decoded_lines(path, "document"):
        if isinstance(line, LoadProblem):
            bad.append(line)
            continue
        length += len(line)
        if length > MAX_LINE_CHARS:
            return [*bad, LoadProblem(path=path, line=None,
                                      message=f"document longer than {MAX_LINE_CHARS:,} characters")]
        lines.append(line)
    return bad or lines


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
        text_lines = _text_file_lines(path)
        bad = [line for line in text_lines if isinstance(line, LoadProblem)]
        if bad:
            collector.problems.extend(bad)
            continue
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


def _irds_collection(dataset: str, part: irds.Part) -> Any:
    """The ir_datasets collection, or ``CorpusError`` saying why it cannot be read."""
    try:
        return irds.collection(dataset, part)
    except irds.IrdsError as error:
        raise CorpusError(str(error)) from None


def _documents_from_irds(path: Path, collection: Any) -> _Collector:
    """The collection's documents, checked as a file's are (``where``: the document's place in the collection)."""
    collector = _Collector()
    for number, (doc_id, title, text) in enumerate(irds.documents(collection), start=1):
        collector.add(Document(doc_id=doc_id, title=title, text=text), path=path, line=None,
                      where=f"document {number}")
    return collector


# ---------------------------------------------------------------------------------------------------------
# Queries and judgments


def load_queries(path: Path) -> tuple[tuple[Query, ...], list[LoadProblem]]:
    """Queries from JSONL (``_id``/``id``, ``text``, optional ``instruction`` and ``showcase``), a two-column TSV, or an
    ir_datasets collection (``irds:<id>``); a repeated id is a problem, wherever they come from."""
    queries: list[Query] = []
    problems: list[LoadProblem] = []
    seen: set[str] = set()
    for line, query in _query_records(path, problems):
        if query.query_id in seen:
            problems.append(LoadProblem(path=path, line=line, message=f"duplicate query id {query.query_id!r}"))
            continue
        seen.add(query.query_id)
        queries.append(query)
    return tuple(queries), problems


def _query_records(path: Path, problems: list[LoadProblem]) -> Iterator[tuple[int | None, Query]]:
    """Each query with its line (None in a collection); records that are not queries go to ``problems``."""
    if (dataset := irds.irds_id(path)) is not None:
        for query_id, text in irds.queries(_irds_collection(dataset, "queries")):
            yield None, Query(query_id=query_id, text=text)
        return
    for parsed in _records(path, "query"):
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
        if problem is not None:
            problems.append(problem)
            continue
        query_id, text, instruction, showcase = (str(value) for value in values)
        yield parsed.line, Query(query_id=query_id, text=text, instruction=instruction, showcase=showcase)


def load_qrels(path: Path) -> tuple[dict[str, dict[str, int]], list[LoadProblem]]:
    """Judgments from BEIR TSV (``query-id corpus-id score``, header optional), TREC qrels (4 columns), or an
    ir_datasets collection (``irds:<id>``)."""
    qrels: dict[str, dict[str, int]] = {}
    if (dataset := irds.irds_id(path)) is not None:
        for query_id, doc_id, relevance in irds.judgments(_irds_collection(dataset, "qrels")):
            qrels.setdefault(query_id, {})[doc_id] = relevance
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
    """Read the corpus named by ``settings``: a BEIR folder, a JSONL/CSV/TSV file, a folder of text files, or an
    ir_datasets collection (with its queries and judgments when it has them).

    Raises ``CorpusError`` naming file and line for every fatal problem, unless ``settings.skip_bad``.
    """
    path = settings.corpus
    queries: tuple[Query, ...] = ()
    qrels: dict[str, dict[str, int]] = {}
    problems: list[LoadProblem] = []
    if (dataset := irds.irds_id(path)) is not None:
        collection = _irds_collection(dataset, "docs")
        collector = _documents_from_irds(path, collection)
        if irds.has(collection, "queries"):
            queries, query_problems = load_queries(path)
            problems += query_problems
        if irds.has(collection, "qrels"):
            qrels = load_qrels(path)[0]
    elif not path.exists():
        raise CorpusError(f"{path}: no such file or folder")
    elif path.is_dir() and (path / "corpus.jsonl").is_file():
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
