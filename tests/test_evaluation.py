from __future__ import annotations

import math
from pathlib import Path

import pytest

from search.evaluation import evaluate, retrieve_run
from search.retrieval.first_stage import FirstStage
from search.trec import write_trec_run


def test_graded_ndcg_by_hand() -> None:
    qrels = {"q": {"a": 2, "b": 1, "c": 0}}
    run = {"q": {"b": 3.0, "a": 2.0, "c": 1.0}}
    # trec_eval's nDCG: the grade itself is the gain, discounted by log2(rank + 1)
    ideal = 2 + 1 / math.log2(3)
    actual = 1 + 2 / math.log2(3)
    scores = evaluate(qrels, run)
    assert scores["nDCG@10"] == pytest.approx(actual / ideal)
    assert scores["MRR@10"] == 1.0
    assert scores["Recall@100"] == 1.0


def test_a_document_with_the_query_id_is_kept() -> None:
    assert evaluate({"7": {"7": 1}}, {"7": {"7": 1.0}})["nDCG@10"] == 1.0


def test_a_query_missing_from_the_run_counts_as_zero() -> None:
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}}
    assert evaluate(qrels, {"q1": {"a": 1.0}})["nDCG@10"] == pytest.approx(0.5)


def test_sample_corpus_quality_and_run_file(first_stage: FirstStage, tmp_path: Path) -> None:
    corpus = first_stage.corpus
    queries = [query for query in corpus.queries if query.query_id in corpus.qrels]
    runs = {method: retrieve_run(first_stage.retrievers[method], queries, 100) for method in ("bm25", "dense",
                                                                                                    "hybrid")}
    scores = {method: evaluate(corpus.qrels, run)["nDCG@10"] for method, run in runs.items()}
    assert scores["bm25"] >= 0.75 and scores["dense"] >= 0.8 and scores["hybrid"] >= 0.8, scores
    path = tmp_path / "run.trec"
    write_trec_run(runs["hybrid"], path, tag="test")
    lines = [line.split() for line in path.read_text().splitlines()]
    assert {len(line) for line in lines} == {6}
    first = [line for line in lines if line[0] == queries[0].query_id]
    assert [int(line[3]) for line in first] == list(range(1, len(first) + 1))
    assert first[0][2] == next(iter(runs["hybrid"][queries[0].query_id]))
