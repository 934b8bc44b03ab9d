"""The page served for real by Gradio, queried through its API the way the browser does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gradio_client import Client

from search.corpus import Passage
from search.retrieval.first_stage import FirstStage
from search.retrieval.ranking import ranking_from_scores
from ui.app import build_app
from ui.results import render_ranking


@pytest.fixture(scope="module")
def client(first_stage: FirstStage) -> Iterator[Client]:
    app = build_app(first_stage)
    _, url, _ = app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    yield Client(url, verbose=False)
    app.close()


def test_search_returns_ranked_cards(client: Client) -> None:
    html = client.predict("how do bats find insects in the dark", "hybrid", 5, api_name="/search")
    assert html.count('class="es-card"') == 5
    assert "How bats hunt in the dark" in html
    assert "BM25 #" in html and "fused #" in html


def test_empty_and_oversized_queries_get_a_message(client: Client) -> None:
    assert "Type a query" in client.predict("   ", "bm25", 5, api_name="/search")
    assert "the limit is 2000" in client.predict("word " * 500, "bm25", 5, api_name="/search")


def test_document_text_is_escaped() -> None:
    hostile = Passage(passage_id="<b>id</b>", doc_id="d", index=0, title="<script>alert(1)</script>",
                      text="<img src=x onerror=alert(2)> & more")
    html = render_ranking(ranking_from_scores("q", "bm25", [(hostile, 1.0)]))
    assert "<script>" not in html and "<img" not in html and "<b>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&amp; more" in html
