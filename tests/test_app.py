"""The page served for real by Gradio, queried through its API the way the browser does."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from gradio_client import Client

from search.corpus import Passage
from search.engines import close_engines
from search.pipeline import open_reranker
from search.rerank.board import Board
from search.rerank.events import (
    Judged,
    RankingDone,
    Reasoning,
    Started,
    WindowRanked,
    WindowReasoning,
    WindowStarted,
)
from search.rerank.list_board import ListBoard
from search.retrieval.ranking import Candidate, Hit, ranking_from_scores
from search.settings import RerankSettings
from search.uploads import CorpusLibrary
from ui.app import CSS, JS, RerankerStatus, build_app
from ui.cards import render_board
from ui.results import render_ranking
from ui.window_cards import render_list_board

BUDGET = 16


@pytest.fixture(scope="module")
def status(demo_model: object) -> Iterator[RerankerStatus]:
    reranker, choice = open_reranker(RerankSettings(model="demo", engine="transformers", budget=BUDGET,
                                                    judgment_cache=False))
    yield RerankerStatus(reranker=reranker, choice=choice)
    close_engines()


@pytest.fixture(scope="module")
def client(library: CorpusLibrary, status: RerankerStatus) -> Iterator[Client]:
    app = build_app(library, status, top_k=5)
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True, css=CSS, js=JS)
    yield Client(url, verbose=False)
    app.close()


def test_search_returns_ranked_cards(client: Client) -> None:
    html = client.predict("how do bats find insects in the dark", "hybrid", 5, "sample_corpus",
                          api_name="/search")
    assert html.count('class="es-card"') == 5
    assert "How bats hunt in the dark" in html
    assert "BM25 #" in html and "fused #" in html


def test_empty_and_oversized_queries_get_a_message(client: Client) -> None:
    assert "Type a query" in client.predict("   ", "bm25", 5, "sample_corpus", api_name="/search")
    assert "the limit is 2000" in client.predict("word " * 500, "bm25", 5, "sample_corpus", api_name="/search")


def test_document_text_is_escaped() -> None:
    hostile = Passage(passage_id="<b>id</b>", doc_id="d", index=0, title="<script>alert(1)</script>",
                      text="<img src=x onerror=alert(2)> & more")
    html = render_ranking(ranking_from_scores("q", "bm25", [(hostile, 1.0)]))
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&amp; more" in html


def test_rerank_streams_updates_and_ends_sorted_by_probability(client: Client) -> None:
    job = client.submit("which planets have no moons", "", "hybrid", 5, BUDGET, True, "sample_corpus",
                        api_name="/rerank")
    job.result()
    updates = job.outputs()
    assert len(updates) >= 2
    first_rows, final_rows = updates[0][2], updates[-1][2]
    assert [row["status"] for row in first_rows] == ["waiting"] * 5  # the first-stage list, before any verdict
    assert "astro-venus-no-moons" in updates[0][1]
    assert all(row["status"] == "judged" for row in final_rows) and len(final_rows) == 5
    probabilities = [row["p_true"] for row in final_rows]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all({"doc_id", "p_true", "verdict", "reasoning"} <= set(row) for row in final_rows)
    assert "5/5 judged" in updates[-1][0] and "done" in updates[-1][0]


def test_demo_model_notice_says_its_verdicts_are_not_meaningful(status: RerankerStatus) -> None:
    notices = " ".join(status.notices())
    assert "verdicts are not meaningful" in notices and "GPU with vLLM" in notices and "--endpoints" in notices
    assert "not available" in " ".join(RerankerStatus(reranker=None, choice=None, problem="engine down.").notices())


def hostile_board() -> Board:
    passage = Passage(passage_id="p", doc_id="evil", index=0, title="<script>alert(1)</script>",
                      text="${alert(1)} `tick` back\\slash <img src=x onerror=alert(2)>")
    candidate = ranking_from_scores("q", "bm25", [(passage, 1.0)]).candidates[0]
    board = Board(query="q", instruction="", candidates=[candidate])
    board.apply(Started(doc_id="evil", passage_id="p", first_stage_rank=1))
    board.apply(Reasoning(doc_id="evil", text="<b>bold</b> ${alert(3)}"))
    return board


def test_cards_escape_document_text_and_model_output() -> None:
    html = render_board(hostile_board(), by_probability=True)
    assert "<script>" not in html and "<img" not in html and "<b>bold" not in html
    assert "&lt;script&gt;" in html and "&lt;b&gt;bold&lt;/b&gt;" in html and "back\\slash" in html


def test_exports_parse() -> None:
    board = hostile_board()
    board.apply(Judged(doc_id="evil", passage_id="p", verdict=False, p_true=0.25, logprob_true=-2.0,
                       logprob_false=-0.9, reasoning="<b>bold</b>", tokens=3, end_reason="budget", forced=True,
                       truncated_passage=False))
    (line,) = board.trec_run(query_id="q1").splitlines()
    assert line.split() == ["q1", "Q0", "evil", "1", "0.25", "explainable-search-rank1"]
    (record,) = [json.loads(text) for text in board.jsonl().splitlines()]
    assert (record["query"], record["doc_id"], record["p_true"], record["forced"]) == ("q", "evil", 0.25, True)
    assert record["reasoning"] == "<b>bold</b>"


def test_an_unknown_corpus_is_named_in_the_error(client: Client) -> None:
    with pytest.raises(Exception, match=r"nope is not in the list of choices: \['sample_corpus'\]"):
        client.predict("moons", "bm25", 5, "nope", api_name="/search")


def test_rerank_with_reasonrank_streams_windows_and_gives_ranks_not_probabilities(client: Client) -> None:
    job = client.submit("which planets have no moons", "", "hybrid", 4, 8, True, "sample_corpus", "reasonrank",
                        api_name="/rerank")
    job.result()
    updates = job.outputs()
    final_summary, final_cards, final_rows = updates[-1]
    assert "1/1 windows" in final_summary and "done" in final_summary
    assert "Window 1" in final_cards and "P(true)" not in final_cards
    assert len(final_rows) == 4 and all("p_true" not in row for row in final_rows)
    assert all(row["trajectory"][0] == row["first_stage_rank"] for row in final_rows)


def test_a_listwise_board_folds_windows_and_derives_scores_from_ranks() -> None:
    candidates = [Candidate(passage=Passage(passage_id=f"{doc}#0", doc_id=doc, index=0, title="",
                                            text="<img src=x onerror=alert(1)>"), stage="bm25",
                            provenance={"bm25": Hit(rank=rank, score=1.0)})
                  for rank, doc in enumerate("abcd", start=1)]
    board = ListBoard(query="q", instruction="", candidates=candidates, window_count=2)
    board.apply(WindowStarted(window=0, start=1, end=4, doc_ids=("b", "c", "d")))
    board.apply(WindowReasoning(window=0, text="<b>think</b>"))
    assert board.active() is board.windows[0] and board.summary().judged == 0
    board.apply(WindowRanked(window=0, status="repaired", doc_ids=("d", "b", "c"), answer="[3] > [3]", missing=(1, 2),
                             duplicates=(3,), reasoning="<b>think</b>", tokens=5))
    board.apply(WindowStarted(window=1, start=0, end=3, doc_ids=("a", "d", "b")))
    board.apply(WindowRanked(window=1, status="truncated", doc_ids=("a", "d", "b"), answer="", tokens=7))
    board.apply(RankingDone(doc_ids=("a", "d", "b", "c")))
    assert board.order == ["a", "d", "b", "c"] and board.trajectory["d"] == [4, 2, 2]
    assert (board.summary().judged, board.summary().tokens, board.summary().finished) == (2, 12, True)
    assert [line.split()[2:5] for line in board.trec_run().splitlines()] == [
        ["a", "1", "4.0"], ["d", "2", "3.0"], ["b", "3", "2.0"], ["c", "4", "1.0"]]
    records = [json.loads(line) for line in board.jsonl().splitlines()]
    assert records[0]["missing"] == [1, 2] and records[0]["duplicates"] == [3] and records[1]["status"] == "truncated"
    html = render_list_board(board, reranked=True)
    assert "<img" not in html and "<b>think" not in html and "missing (appended) [1], [2]" in html
