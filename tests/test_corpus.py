from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import write

from search import corpus
from search.cli import build_parser
from search.corpus import CorpusError, Document, load_corpus, load_qrels, load_queries
from search.passages import fingerprint_passages, split_document, split_documents, unit_counter
from search.retrieval.dense import encoder_location
from search.settings import DEFAULT_ENCODER, REPO_ROOT, SAMPLE_CORPUS, CorpusSettings, PassageSettings
from search.trec import load_run


def load(path: Path, **options: object):
    return load_corpus(CorpusSettings(corpus=path, **options))


def jsonl(*records: dict) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def test_sample_corpus_is_a_complete_beir_folder() -> None:
    corpus = load(SAMPLE_CORPUS)
    assert len(corpus.documents) >= 300
    assert len({document.doc_id.split("-")[0] for document in corpus.documents}) >= 8
    assert len(corpus.queries) >= 30
    assert corpus.problems == ()
    grades = {grade for judged in corpus.qrels.values() for grade in judged.values()}
    assert grades == {0, 1, 2}
    assert any(query.instruction for query in corpus.queries)
    doc_ids = {document.doc_id for document in corpus.documents}
    assert all(doc_id in doc_ids for judged in corpus.qrels.values() for doc_id in judged)


def test_jsonl_with_configured_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl({"pid": 7, "heading": "A", "body_text": "alpha"}))
    corpus = load(path, id_field="pid", title_field="heading", text_field="body_text")
    assert corpus.documents == (Document(doc_id="7", title="A", text="alpha"),)


def test_jsonl_default_fields_and_missing_title(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl({"id": "a", "contents": "first"}, {"_id": "b", "text": "second"}))
    assert [(d.doc_id, d.title, d.text) for d in load(path).documents] == [("a", "", "first"), ("b", "", "second")]


def test_malformed_line_is_named_and_can_be_skipped(tmp_path: Path) -> None:
    good = jsonl({"_id": "a", "text": "ok"}), jsonl({"_id": "b", "text": "ok"})
    path = write(tmp_path / "docs.jsonl", good[0] + "{not json\n" + good[1])
    with pytest.raises(CorpusError) as error:
        load(path)
    assert f"{path}:2: malformed JSON" in str(error.value)
    assert "--skip-bad" in str(error.value)
    corpus = load(path, skip_bad=True)
    assert [document.doc_id for document in corpus.documents] == ["a", "b"]
    assert corpus.dropped == 1
    assert corpus.problems[0].line == 2


def test_a_control_character_is_named_once(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", '{"_id": "a", "text": "tab\there"}\n')
    with pytest.raises(CorpusError) as error:
        load(path)
    assert f"{path}:1: malformed JSON: Invalid control character at column " in str(error.value)


def test_each_kind_of_bad_record_is_reported_with_its_line(tmp_path: Path) -> None:
    lines = (
        jsonl({"_id": "a", "text": "fine"}, {"_id": "b"}, {"_id": "a", "text": "again"}, {"_id": "c", "text": 5},
              ["not", "an", "object"]).encode()
        + b'{"_id": "d", "text": "caf\xe9"}\n'
    )
    path = write(tmp_path / "docs.jsonl", lines)
    with pytest.raises(CorpusError) as error:
        load(path)
    messages = {problem.line: problem.message for problem in error.value.problems}
    assert messages[2] == "missing text field 'text' or 'contents' or 'body'"
    assert messages[3] == "duplicate id 'a' (first seen at line 1)"
    assert messages[4] == "field 'text' must be a string, found int"
    assert messages[5] == "expected a JSON object, found list"
    assert messages[6].startswith("not valid UTF-8 (byte 0xe9")
    assert [document.doc_id for document in load(path, skip_bad=True).documents] == ["a"]


def test_empty_documents_are_dropped_with_a_warning_even_when_strict(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.jsonl", jsonl({"_id": "a", "text": "x"}, {"_id": "b", "title": "", "text": "  "}))
    corpus = load(path)
    assert [document.doc_id for document in corpus.documents] == ["a"]
    assert not corpus.problems[0].fatal
    assert str(corpus.problems[0]) == f"{path}:2: document 'b' has no text; left out"


@pytest.mark.parametrize(("name", "delimiter"), [("docs.csv", ","), ("docs.tsv", "\t")])
def test_tables_with_header(tmp_path: Path, name: str, delimiter: str) -> None:
    rows = [["id", "title", "text"], ["x", "Title X", f'"text{delimiter} with delimiter"'], ["y", "Title Y"],
            ["z", "Title Z", "last"]]
    path = write(tmp_path / name, "".join(delimiter.join(row) + "\n" for row in rows))
    with pytest.raises(CorpusError) as error:
        load(path)
    assert f"{path}:3: expected 3 columns, found 2" in str(error.value)
    documents = load(path, skip_bad=True).documents
    assert [document.doc_id for document in documents] == ["x", "z"]
    assert (documents[0].title, documents[0].text) == ("Title X", f"text{delimiter} with delimiter")


def test_table_without_text_column_names_the_fields(tmp_path: Path) -> None:
    path = write(tmp_path / "docs.csv", "id,words\n1,hello\n")
    with pytest.raises(CorpusError, match=r"docs.csv:2: missing text field 'text' or 'contents' or 'body'"):
        load(path)


def test_folder_of_text_files(tmp_path: Path) -> None:
    write(tmp_path / "notes" / "first_note.txt", "Plain text body.\n")
    write(tmp_path / "guide.md", "\n# The Guide\n\nBody of the guide.\n")
    write(tmp_path / "plain.md", "No heading here.\n")
    write(tmp_path / ".hidden" / "secret.txt", "never loaded")
    write(tmp_path / "image.png", b"\x89PNG")
    documents = {document.doc_id: document for document in load(tmp_path).documents}
    assert set(documents) == {"notes/first_note.txt", "guide.md", "plain.md"}
    assert documents["guide.md"].title == "The Guide"
    assert documents["guide.md"].text == "Body of the guide."
    assert documents["notes/first_note.txt"].title == "first note"
    assert documents["plain.md"].title == "plain"


def test_folder_does_not_follow_links_outside_it(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside.txt", "private")
    write(tmp_path / "corpus" / "inside.txt", "public")
    (tmp_path / "corpus" / "link.txt").symlink_to(outside)
    with pytest.raises(CorpusError, match="links outside the corpus folder"):
        load(tmp_path / "corpus")
    assert [document.doc_id for document in load(tmp_path / "corpus", skip_bad=True).documents] == ["inside.txt"]


def test_unusable_inputs_say_why(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file or folder"):
        load(tmp_path / "missing.jsonl")
    with pytest.raises(CorpusError, match=r"unsupported file type \.pdf"):
        load(write(tmp_path / "paper.pdf", b"%PDF"))
    with pytest.raises(CorpusError, match=r"no \.txt or \.md files"):
        load(write(tmp_path / "empty" / "x.bin", b"").parent)


def test_beir_queries_and_qrels_problems_are_reported(tmp_path: Path) -> None:
    write(tmp_path / "corpus.jsonl", jsonl({"_id": "d1", "text": "t"}))
    write(tmp_path / "queries.jsonl", jsonl({"_id": "q1", "text": "query", "instruction": "only recent"}))
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\thigh\n")
    with pytest.raises(CorpusError, match=r"test.tsv:3: relevance 'high' is not an integer"):
        load(tmp_path)
    corpus = load(tmp_path, skip_bad=True)
    assert corpus.queries[0].instruction == "only recent"
    assert corpus.qrels == {"q1": {"d1": 2}}


def test_short_documents_stay_whole_with_the_document_id() -> None:
    document = Document(doc_id="d", title="T", text="one two three")
    [passage] = split_document(document, PassageSettings(passage_window=5, passage_overlap=1), unit_counter("words"))
    assert (passage.passage_id, passage.doc_id, passage.text, passage.contents) == ("d", "d", "one two three",
                                                                                    "T one two three")


def test_long_documents_split_into_exact_overlapping_windows() -> None:
    text = " ".join(f"w{number}" for number in range(10)) + "\n  tail"
    document = Document(doc_id="d", title="T", text=text)
    passages = split_document(document, PassageSettings(passage_window=4, passage_overlap=1), unit_counter("words"))
    assert [passage.text for passage in passages] == ["w0 w1 w2 w3", "w3 w4 w5 w6", "w6 w7 w8 w9", "w9\n  tail"]
    assert [passage.passage_id for passage in passages] == ["d#1", "d#2", "d#3", "d#4"]
    assert {passage.doc_id for passage in passages} == {"d"}
    assert all(passage.text in text for passage in passages)


def test_splitting_by_tokenizer_tokens() -> None:
    spans_of = unit_counter(encoder_location(DEFAULT_ENCODER))
    text = "Tokenisation counts word pieces, so unusual words cost more tokens than plain ones."
    settings = PassageSettings(passage_window=6, passage_overlap=2)
    passages = split_document(Document(doc_id="d", title="", text=text), settings, spans_of)
    assert len(passages) > len(text.split()) // 6
    assert all(len(spans_of(passage.text)) <= 6 for passage in passages)
    assert passages[0].text.startswith("Tokenisation") and passages[-1].text.endswith("ones.")


def test_passage_id_collisions_are_refused() -> None:
    documents = [Document(doc_id="a", title="", text="x y z"), Document(doc_id="a#1", title="", text="q")]
    with pytest.raises(CorpusError, match="'a#1' is both a document id and a passage"):
        split_documents(documents, PassageSettings(passage_window=2, passage_overlap=0))


def test_fingerprint_follows_the_text() -> None:
    settings = PassageSettings()
    base = split_documents([Document(doc_id="a", title="t", text="x")], settings)
    same = split_documents([Document(doc_id="a", title="t", text="x")], settings)
    changed = split_documents([Document(doc_id="a", title="t", text="y")], settings)
    assert fingerprint_passages(base) == fingerprint_passages(same) != fingerprint_passages(changed)


# ---------------------------------------------------------------------------------------------------------
# Inputs that cost far more than their size: special files and endless lines are refused, naming the file


@pytest.fixture
def special_files(tmp_path: Path) -> dict[str, Path]:
    """A FIFO that no one writes (opening it for reading would wait for ever) and a link to ``/dev/zero`` (one
    endless line), each named as a corpus, queries or run file would be."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    return {"fifo": fifo, "zero": zero}


@pytest.mark.timeout(60)  # a hang fails here, not after the suite's 15 minutes
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_a_special_file_is_refused_as_corpus_queries_qrels_or_run(special_files: dict[str, Path], kind: str) -> None:
    path = special_files[kind]
    for read in (lambda: load(path), lambda: load_queries(path), lambda: load_qrels(path), lambda: load_run(path)):
        with pytest.raises(CorpusError) as error:
            read()
        assert str(error.value) == f"{path}: not a regular file"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["fifo", "zero"])
def test_the_command_line_says_a_special_file_is_not_a_regular_file(special_files: dict[str, Path], kind: str,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    path = special_files[kind]
    for flag in ("--run", "--queries"):
        arguments = ["rerank-run", "--run", str(path) if flag == "--run" else str(SAMPLE_CORPUS / "qrels.tsv"),
                     "--out", "out", *([flag, str(path)] if flag == "--queries" else [])]
        with pytest.raises(SystemExit):
            build_parser().parse_args(arguments)
        assert f"{flag}: {path}: not a regular file" in capsys.readouterr().err


@pytest.mark.timeout(60)
def test_a_special_file_in_a_text_folder_is_left_out_by_name(tmp_path: Path) -> None:
    write(tmp_path / "corpus" / "note.txt", "owls hunt at night")
    os.mkfifo(tmp_path / "corpus" / "pipe.txt")
    with pytest.raises(CorpusError, match=r"pipe.txt: not a regular file; left out"):
        load(tmp_path / "corpus")
    assert [document.doc_id for document in load(tmp_path / "corpus", skip_bad=True).documents] == ["note.txt"]


@pytest.fixture
def short_lines(monkeypatch: pytest.MonkeyPatch) -> int:
    """``MAX_LINE_CHARS`` lowered to 40, so that a long line is a short file."""
    monkeypatch.setattr(corpus, "MAX_LINE_CHARS", 40)
    return 40


def test_a_line_past_the_limit_is_named_and_the_rest_still_loads(tmp_path: Path, short_lines: int) -> None:
    fits = json.dumps({"_id": "a", "text": "x" * (short_lines - 24)})  # exactly the limit
    assert len(fits) == short_lines
    path = write(tmp_path / "docs.jsonl", f'{fits}\n{json.dumps({"_id": "long", "text": "y" * 500})}\n'
                                          f'{json.dumps({"_id": "b", "text": "z"})}')
    with pytest.raises(CorpusError) as error:
        load(path)
    assert [str(problem) for problem in error.value.problems] == [f"{path}:2: document longer than 40 characters"]
    assert [document.doc_id for document in load(path, skip_bad=True).documents] == ["a", "b"]


def test_a_long_query_and_a_long_run_line_are_named(tmp_path: Path, short_lines: int) -> None:
    queries = write(tmp_path / "queries.jsonl", json.dumps({"_id": "q", "text": "w" * 100}) + "\n")
    assert [str(problem) for problem in load_queries(queries)[1]] == [f"{queries}:1: query longer than 40 characters"]
    run = write(tmp_path / "run.trec", "q Q0 d 1 1.0 bm25\n" + "q Q0 " + "d" * 100 + " 2 0.5 bm25\n")
    found, problems = load_run(run)
    assert found == {"q": {"d": 1.0}}
    assert [str(problem) for problem in problems] == [f"{run}:2: line longer than 40 characters"]


def test_a_text_file_past_the_limit_is_left_out_by_name(tmp_path: Path, short_lines: int) -> None:
    write(tmp_path / "corpus" / "short.txt", "owls hunt at night\n")
    write(tmp_path / "corpus" / "book.txt", "a line of twenty-two\n" * 3)  # each line fits; the document does not
    with pytest.raises(CorpusError, match=r"book.txt: document longer than 40 characters"):
        load(tmp_path / "corpus")
    assert [document.doc_id for document in load(tmp_path / "corpus", skip_bad=True).documents] == ["short.txt"]


def test_a_csv_field_past_the_csv_modules_limit_is_a_problem_not_a_traceback(tmp_path: Path) -> None:
    limit = csv.field_size_limit()
    path = write(tmp_path / "docs.csv", f'id,text\nbig,"{"x" * (limit + 1)}"\nsmall,owls\n')
    with pytest.raises(CorpusError, match=rf"docs.csv:2: field larger than field limit \({limit}\)"):
        load(path)
    assert [document.doc_id for document in load(path, skip_bad=True).documents] == ["small"]


# ---------------------------------------------------------------------------------------------------------
# ir_datasets collections: checked as files are

IRDS_DATASET = "beir/scifact/test"
IRDS_LOAD = """
import json, sys
from pathlib import Path
from search.corpus import CorpusError, load_corpus
from search.settings import CorpusSettings
try:
    corpus = load_corpus(CorpusSettings(corpus=Path(sys.argv[1]), skip_bad=sys.argv[2] == "skip"))
except CorpusError as error:
    print(error)
else:
    print(json.dumps({"documents": [document.doc_id for document in corpus.documents],
                      "problems": [str(problem) for problem in corpus.problems]}))
"""


def test_an_ir_datasets_corpus_gets_the_duplicate_id_and_empty_text_checks(tmp_path: Path) -> None:
    """BEIR's zip as ir_datasets keeps it after its download (as ``test_research.py`` builds it), holding a
    repeated id and an empty document; read in a process of its own, since ir_datasets reads its home once."""
    (tmp_path / "beir" / "scifact").mkdir(parents=True)
    with zipfile.ZipFile(tmp_path / "beir" / "scifact" / "source.zip", "w") as archive:
        archive.writestr("scifact/corpus.jsonl", jsonl({"_id": "a", "title": "", "text": "owls"},
                                                       {"_id": "b", "title": "", "text": " "},
                                                       {"_id": "a", "title": "", "text": "again"}))
        archive.writestr("scifact/queries.jsonl", jsonl({"_id": "q", "text": "owls"}))
        archive.writestr("scifact/qrels/test.tsv", "query-id\tcorpus-id\tscore\nq\ta\t1\n")

    def load_in_a_process(*how: str) -> str:
        done = subprocess.run([sys.executable, "-c", IRDS_LOAD, f"irds:{IRDS_DATASET}", *how], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300, check=True,
                              env={**os.environ, "IR_DATASETS_HOME": str(tmp_path)})
        return done.stdout.strip()

    assert load_in_a_process("strict").splitlines() == [
        f"irds:{IRDS_DATASET}: 1 problem(s) stop the load; fix them, or pass --skip-bad to load the 1 good "
        "document(s) and drop these",
        f"  irds:{IRDS_DATASET}: duplicate id 'a' (first seen at document 1)",
    ]
    assert json.loads(load_in_a_process("skip")) == {"documents": ["a"], "problems": [
        f"irds:{IRDS_DATASET}: document 'b' has no text; left out",
        f"irds:{IRDS_DATASET}: duplicate id 'a' (first seen at document 1)",
    ]}
