"""The Evaluation tab in a real browser: a batch folder's report while the batch is still running, refreshed
as judgments land, then complete with its plots; hostile ids show as text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import shoot, write
from playwright.sync_api import Page, expect

from search.batch import BatchSpec, BatchStore, load_batch
from search.corpus import Corpus, Document
from search.rerank.events import Judged
from search.uploads import CorpusLibrary
from ui.app import CSS, JS, build_app

HOSTILE_QUERY = "<b>q3</b><script>window.hacked=1</script>"  # a query id: no spaces, as in a TREC run


def judged(doc_id: str, p_true: float) -> Judged:
    return Judged(reranker="rank1", doc_id=doc_id, passage_id=doc_id, verdict=p_true > 0.5, p_true=p_true,
                  logprob_true=-1.0, logprob_false=-1.0, reasoning="because.", tokens=5, end_reason="verdict",
                  forced=False, truncated_passage=False)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchStore]:
    """A batch of three queries under ``batches/demo-batch``, nothing judged yet."""
    folder = tmp_path_factory.mktemp("evaluation")
    queries = write(folder / "queries.jsonl", "".join(json.dumps({"_id": query_id, "text": f"query {query_id}"}) + "\n"
                                                      for query_id in ("q1", "q2", HOSTILE_QUERY)))
    run = write(folder / "run.trec", "".join(f"{query_id} Q0 {doc_id} {rank} {3 - rank} bm25\n"
                                             for query_id in ("q1", "q2", HOSTILE_QUERY)
                                             for rank, doc_id in enumerate(("a", "b"), start=1)))
    corpus = Corpus(source=folder, documents=(Document(doc_id="a", title="", text="a"),
                                              Document(doc_id="b", title="", text="b")))
    inputs = load_batch(corpus, queries, run, 2)
    spec = BatchSpec(inputs=inputs.digest(), top_k=2, reranker="rank1", model="demo", budget=16)
    qrels = {"q1": {"b": 1}, "q2": {"a": 1}, HOSTILE_QUERY: {"b": 2}}
    store = BatchStore.open(folder / "batches" / "demo-batch", spec, inputs, sources={"run": str(run)}, qrels=qrels)
    yield store
    store.close()


@pytest.fixture(scope="module")
def page_url(batch: BatchStore, library: CorpusLibrary) -> Iterator[str]:
    app = build_app(library, batches=batch.path.parent.parent)
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    yield url
    app.close()


def test_the_report_of_a_running_batch_follows_it_to_the_end(page: Page, page_url: str,
                                                             batch: BatchStore) -> None:
    batch.record("q1", judged("a", 0.2))
    batch.record("q1", judged("b", 0.9))
    page.goto(page_url)
    page.get_by_role("tab", name="Evaluation").click()
    page.locator("#evaluation-batch input").click()
    page.get_by_role("option", name="demo-batch").click()
    status = page.locator("#evaluation-status")
    expect(status).to_contain_text("running or stopped: 1 of 3 queries, 2 of 6 documents judged by rank1")
    metrics = page.locator("#evaluation-metrics")
    expect(metrics).to_contain_text("nDCG@10")
    expect(metrics).to_contain_text("MRR@10")
    expect(page.locator("#evaluation-per-query")).to_contain_text("q1")

    for query_id in ("q2", HOSTILE_QUERY):
        batch.record(query_id, judged("a", 0.3))
        batch.record(query_id, judged("b", 0.6))
    expect(status).to_contain_text("finished: 3 of 3 queries, 6 of 6 documents judged by rank1", timeout=15_000)
    expect(status).to_contain_text("Metrics over 3 finished, judged queries")
    expect(page.locator("#evaluation-per-query")).to_contain_text(HOSTILE_QUERY)  # as text, not markup
    expect(page.locator("#evaluation-gains img")).to_be_visible()  # the PNG matplotlib drew
    expect(page.locator("#evaluation-by-grade img")).to_be_visible()
    assert page.evaluate("window.hacked") is None
    shoot(page, "evaluation-tab")


def test_with_no_batch_the_tab_says_what_it_shows_and_how_to_make_one(page: Page, library: CorpusLibrary,
                                                                       tmp_path: Path) -> None:
    app = build_app(library, batches=tmp_path / "batches")
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    try:
        page.goto(url)
        page.get_by_role("tab", name="Evaluation").click()
        status = page.locator("#evaluation-status")
        expect(status).to_contain_text("shows the report of a rerank-run batch: metrics before (first stage) and after")
        expect(status).to_contain_text(f"No batch yet in {tmp_path / 'batches'}")
        expect(status.locator("code").filter(has_text="python -m search rerank-run --corpus CORPUS")).to_be_visible()
        for empty in ("metrics", "gains", "by-grade", "per-query"):  # no empty tables or plot frames
            expect(page.locator(f"#evaluation-{empty}")).to_be_hidden()
        shoot(page, "evaluation-empty")
    finally:
        app.close()
