"""The Gradio page: layout and wiring only; every decision is made in search/."""

from __future__ import annotations

from typing import get_args

import gradio as gr

from search.retrieval.first_stage import FirstStage
from search.settings import RetrievalMethod
from ui.results import render_notice, render_ranking

MAX_QUERY_CHARS = 2_000


def build_app(first_stage: FirstStage) -> gr.Blocks:
    """A search page over ``first_stage``: query in, ranked passages with their provenance out."""
    corpus = first_stage.corpus

    def search(query: str, method: RetrievalMethod, k: int) -> str:
        query = query.strip()
        if not query:
            return render_notice("Type a query to search.")
        if len(query) > MAX_QUERY_CHARS:
            return render_notice(f"The query is {len(query)} characters long; the limit is {MAX_QUERY_CHARS}.")
        return render_ranking(first_stage.search(query, int(k), method))

    with gr.Blocks(title="Explainable Search") as app:
        gr.Markdown("# Explainable Search")
        gr.HTML(render_notice(
            f"{corpus.source.name}: {len(corpus.documents)} documents, {len(first_stage.passages)} passages. "
            "This page shows the first stage (BM25 and dense retrieval, fused); the reasoning reranker that "
            "explains each verdict is not wired in yet."
        ))
        with gr.Row():
            query = gr.Textbox(label="Query", placeholder="which migraine treatments do not involve medication?",
                               scale=5, max_length=MAX_QUERY_CHARS)
            button = gr.Button("Search", variant="primary", scale=1)
        with gr.Row():
            method = gr.Radio(list(get_args(RetrievalMethod)), value=first_stage.method, label="First stage")
            k = gr.Slider(1, 50, value=10, step=1, label="Passages")
        results = gr.HTML()
        examples = [query.text for query in corpus.queries[:6]]
        if examples:
            gr.Examples(examples, inputs=query)
        for trigger in (query.submit, button.click):
            trigger(search, inputs=[query, method, k], outputs=results)
    return app
