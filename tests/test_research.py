"""The IR research stacks: an ir_datasets collection by id (read from a local ir_datasets folder the test makes,
as ir_datasets leaves one after its download), and our reranker inside MTEB and PyTerrier giving the same scores,
by id, as ``rerank-run`` on the same candidates (their judgments replayed from its batch: the same prompts)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from search.api import ReasoningReranker, open_reranker
from search.corpus import load_corpus
from search.settings import REPO_ROOT, SAMPLE_CORPUS, CorpusSettings

DATASET = "beir/scifact/test"
"""A real ir_datasets id; its download is a zip the test writes where ir_datasets keeps it, from the sample corpus."""
CANDIDATES = {"q02": ["astro-mercury-no-moons", "astro-mars-moons", "bev-caffeine-sleep"],
              "q06": ["cook-soda-bread", "bev-decaf", "cook-tortillas"]}
"""Each query's first-stage candidates, in order."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Batch:
    out: Path
    """``rerank-run``'s output folder."""
    scores: dict[str, dict[str, float]]
    """Its reranked run: query id → document id → score."""

    @property
    def judgments(self) -> int:
        with sqlite3.connect(self.out / "batch.sqlite3") as db:
            return db.execute("SELECT COUNT(*) FROM judgments").fetchone()[0]


@pytest.fixture(scope="module")
def irds_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ir_datasets home holding ``beir/scifact``'s download: BEIR's zip layout, the sample corpus inside."""
    home = tmp_path_factory.mktemp("ir_datasets")
    (home / "beir" / "scifact").mkdir(parents=True)
    with zipfile.ZipFile(home / "beir" / "scifact" / "source.zip", "w") as archive:
        for name, inside in (("corpus.jsonl", "corpus.jsonl"), ("queries.jsonl", "queries.jsonl"),
                             ("qrels.tsv", "qrels/test.tsv")):
            archive.write(SAMPLE_CORPUS / name, f"scifact/{inside}")
    return home


def search_command(irds_home: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "search", *arguments], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "IR_DATASETS_HOME": str(irds_home),
                                                       "HF_HUB_OFFLINE": "1"})


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory, irds_home: Path, demo_model: Path) -> Batch:
    """``rerank-run`` of ``CANDIDATES`` over the collection by its ir_datasets id (queries and qrels from it)."""
    folder = tmp_path_factory.mktemp("batch")
    run = folder / "candidates.trec"
    run.write_text("".join(f"{query} Q0 {doc} {rank} {10 - rank} bm25\n" for query, docs in CANDIDATES.items()
                           for rank, doc in enumerate(docs, 1)))
    done = search_command(irds_home, "rerank-run", "--corpus", f"irds:{DATASET}", "--run", str(run), "--out",
                          str(folder / "out"), "--model", "demo", "--engine", "transformers", "--budget", "6",
                          "--top-k", "3")
    assert done.returncode == 0, done.stderr[-3000:]
    scores: dict[str, dict[str, float]] = {}
    for line in (folder / "out" / "run.trec").read_text().splitlines():
        query, _, doc, _, score, _ = line.split()
        scores.setdefault(query, {})[doc] = float(score)
    return Batch(out=folder / "out", scores=scores)


@pytest.fixture(scope="module")
def replaying(batch: Batch) -> Iterator[ReasoningReranker]:
    """The demo model in process, its judgment cache the batch's: the same prompts replay the batch's scores."""
    with open_reranker("demo", engine="transformers", budget=6, judgment_cache_path=batch.out / "batch.sqlite3"
                       ) as reranker:
        yield reranker


def test_an_ir_datasets_collection_loads_by_id_with_its_queries_and_qrels(batch: Batch) -> None:
    sample = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    assert set(batch.scores) == set(CANDIDATES)
    assert {doc for docs in batch.scores.values() for doc in docs} == {doc for docs in CANDIDATES.values()
                                                                       for doc in docs}
    traces = [json.loads(line) for line in (batch.out / "traces.jsonl").read_text().splitlines()]
    texts = {query.query_id: query.text for query in sample.queries}
    assert {trace["query_id"]: trace["query"] for trace in traces} == {query: texts[query] for query in CANDIDATES}
    metrics = json.loads((batch.out / "metrics.json").read_text())  # the report needs the collection's qrels
    assert metrics, "no metrics: the qrels did not load"
    report = (batch.out / "report.md").read_text()
    assert f"- corpus: `irds:{DATASET}`" in report and f"- queries: `irds:{DATASET}`" in report


def test_queries_and_qrels_from_ir_datasets_beside_a_corpus_file(tmp_path: Path, irds_home: Path) -> None:
    run = tmp_path / "candidates.trec"
    run.write_text("q02 Q0 astro-mercury-no-moons 1 1 bm25\n")
    done = search_command(irds_home, "rerank-run", "--corpus", str(SAMPLE_CORPUS / "corpus.jsonl"), "--queries",
                          f"irds:{DATASET}", "--qrels", f"irds:{DATASET}", "--run", str(run), "--out",
                          str(tmp_path / "out"), "--model", "demo", "--engine", "transformers", "--budget", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "out" / "metrics.json").is_file()


@pytest.mark.parametrize(("dataset", "says"), [("no/such/collection", "not an ir_datasets id"),
                                               ("beir", "the collection has no docs")])
def test_a_bad_ir_datasets_id_is_named_in_the_message(irds_home: Path, dataset: str, says: str) -> None:
    done = search_command(irds_home, "query", "moons", "--corpus", f"irds:{dataset}")
    assert done.returncode != 0 and f"irds:{dataset}: {says}" in done.stderr, done.stderr[-2000:]


def test_mteb_reranks_an_offline_task_with_the_batchs_scores(replaying: ReasoningReranker, batch: Batch,
                                                             tmp_path: Path) -> None:
    import mteb
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
    from mteb.abstasks.task_metadata import TaskMetadata

    from search.integrations.mteb import MtebReranker

    sample = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    documents = {document.doc_id: document for document in sample.documents}
    queries = [query for query in sample.queries if query.query_id in CANDIDATES]

    class SampleCorpusReranking(AbsTaskRetrieval):
        metadata = TaskMetadata(
            type="Reranking", name="SampleCorpusReranking", main_score="ndcg_at_10", description="The sample corpus.",
            reference="https://github.com/explainable-search", dataset={"path": "NA", "revision": "NA"},
            category="t2t", eval_splits=["test"], eval_langs=["eng-Latn"], date=("2026-01-01", "2026-01-01"),
            dialect=[], domains=[], task_subtypes=[], license="cc-by-4.0", annotations_creators="derived",
            modalities=["text"], sample_creation="found", bibtex_citation="")

        def load_data(self, num_proc: int | None = None, **kwargs: object) -> None:
            used = sorted({doc for docs in CANDIDATES.values() for doc in docs})
            self.dataset = {"default": {"test": RetrievalSplitData(
                queries=Dataset.from_list([{"id": query.query_id, "text": query.text} for query in queries]),
                corpus=Dataset.from_list([{"id": doc, "title": documents[doc].title, "text": documents[doc].text}
                                          for doc in used]),
                relevant_docs={query: dict(sample.qrels.get(query, {})) for query in CANDIDATES},
                top_ranked=CANDIDATES)}}
            self.data_loaded = True

    before = batch.judgments
    results = mteb.evaluate(MtebReranker(replaying), [SampleCorpusReranking()], cache=None,
                            prediction_folder=tmp_path)
    predictions = json.loads((tmp_path / "SampleCorpusReranking_predictions.json").read_text())
    assert predictions["default"]["test"] == batch.scores
    assert batch.judgments == before  # every judgment replayed: MTEB's prompts are the batch's, byte for byte
    assert 0 <= results.task_results[0].get_score() <= 1


def test_pyterrier_reranks_a_results_frame_with_the_batchs_scores(replaying: ReasoningReranker,
                                                                   batch: Batch) -> None:
    import pandas as pd
    import pyterrier as pt

    from search.integrations.pyterrier import ReasoningTransformer

    sample = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    documents = {document.doc_id: document for document in sample.documents}
    texts = {query.query_id: query.text for query in sample.queries}
    frame = pd.DataFrame([{"qid": query, "query": texts[query], "docno": doc, "score": 10.0 - rank, "rank": rank,
                           "text": f"{documents[doc].title} {documents[doc].text}"}
                          for query, docs in CANDIDATES.items() for rank, doc in enumerate(docs)])
    pipeline = pt.Transformer.from_df(frame) >> ReasoningTransformer(replaying)
    reranked = pipeline.transform(frame[["qid", "query"]].drop_duplicates())
    assert {(row.qid, row.docno): row.score for row in reranked.itertuples()} == {
        (query, doc): score for query, scores in batch.scores.items() for doc, score in scores.items()}
    for _, group in reranked.groupby("qid"):
        assert list(group.sort_values("rank")["score"]) == sorted(group["score"], reverse=True)
    assert {"reasoning", "status", "failure", "p_true", "verdict"} <= set(reranked.columns)
    assert (reranked["status"] == "judged").all() and reranked["reasoning"].map(bool).all()
    empty = ReasoningTransformer(replaying).transform(frame.iloc[:0])
    assert empty.empty and "reasoning" in empty.columns
