"""TREC runs: query id → document id → score, read from and written to the six-column TREC format. (A *rerank*
run of one query is ``search.rerank.base.Run``; this is the file-level kind.)"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from search.corpus import CorpusError, LoadProblem, column_lines

TrecRun = dict[str, dict[str, float]]
"""Query id → document id → score, each query's documents best first."""
UNNAMED_QUERY_ID = "query"
"""The query id a rerank run is written under when its query is none of the corpus's queries."""


def load_run(path: Path) -> tuple[TrecRun, list[LoadProblem]]:
    """A six-column TREC run (``query Q0 doc rank score tag``), each query's documents ordered by score, ties
    by the file's rank; a document listed twice keeps its first line. Problems name their line."""
    rows: dict[str, dict[str, tuple[float, int]]] = {}
    problems: list[LoadProblem] = []
    for number, cells in column_lines(path, problems):
        if len(cells) != 6:
            problems.append(LoadProblem(path=path, line=number, message=f"expected 6 columns (query Q0 doc rank "
                                                                        f"score tag), found {len(cells)}"))
            continue
        query_id, _, doc_id, rank, score = cells[:5]
        try:
            scored = (float(score), int(rank))
        except ValueError:
            wrong = f"rank {rank!r} is not an integer" if not rank.lstrip("-").isdigit() else \
                f"score {score!r} is not a number"
            problems.append(LoadProblem(path=path, line=number, message=wrong))
            continue
        rows.setdefault(query_id, {}).setdefault(doc_id, scored)
    run = {query_id: {doc_id: score for doc_id, (score, _) in sorted(docs.items(), key=lambda item: (
        -item[1][0], item[1][1]))} for query_id, docs in rows.items()}
    return run, problems


def read_run(path: Path) -> TrecRun:
    """A TREC run, refused with every bad line named."""
    run, problems = load_run(path)
    if problems or not run:
        raise CorpusError(f"{path}: {len(problems)} bad line(s), {len(run)} queries; expected query Q0 doc rank "
                          "score tag", problems)
    return run


def format_trec_run(run: Mapping[str, Mapping[str, float]], tag: str) -> str:
    """The standard six-column TREC run format, in the run's order. Scores are written in full (the shortest
    text that reads back as the same number): rounding would tie close probabilities, and tools order ties by
    document id, not by our order."""
    return "".join(
        f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n"
        for query_id, scored in run.items()
        for rank, (doc_id, score) in enumerate(scored.items(), start=1)
    )


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: Path, tag: str) -> None:
    path.write_text(format_trec_run(run, tag), encoding="utf-8")
