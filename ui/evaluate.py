"""The Evaluation tab: the report of a rerank-run batch, finished or still running (refreshed every few seconds
until it is complete): where it stands, metrics before and after reranking, the plots and per-query deltas.
Wiring only: the numbers come from ``search.batch``."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from search.batch import BatchStore, comparison, view_batch
from search.batch.report import (
    GAIN_MEASURE,
    gains_figure,
    grade_agreement,
    score_by_grade,
    score_figure,
)
from search.batch.store import batch_folders

REFRESH_S = 5.0
WHAT_IT_SHOWS = ("The Evaluation tab shows the report of a `rerank-run` batch: metrics before (first stage) and after "
                 "reranking, the gain per query, and how the scores spread by relevance grade, while the batch runs "
                 "and after.")


def nothing_chosen(root: Path) -> str:
    """What the tab says before a batch is chosen: what it shows, and the command that makes one here."""
    folder = html.escape(str(root))
    if batch_folders(root):
        return f"{WHAT_IT_SHOWS}\n\nChoose a batch: the folders that `rerank-run --out` wrote under `{folder}`."
    return (f"{WHAT_IT_SHOWS}\n\n**No batch yet** in `{folder}`. Create one with a first-stage run and its qrels, "
            f"for example:\n\n```sh\n.venv/bin/python -m search rerank-run --corpus CORPUS --run RUN.trec "
            f"--qrels QRELS.tsv --out {folder}/my-batch\n```\n\nthen press Refresh. "
            "`python -m search rerank-run --help` and docs/batch.md say more.")


def _shown(value: Any) -> Any:
    return gr.update(value=value, visible=value is not None)


def batch_report(root: Path, name: str | None) -> tuple[Any, ...]:
    """Status, metrics table, gains plot, score-by-grade plot, per-query table (each hidden when empty), and
    whether the batch is complete."""
    if not name or name not in batch_folders(root):
        return (nothing_chosen(root), *(_shown(None) for _ in range(4)), True)
    store = BatchStore.read(root / name)
    try:
        view = view_batch(store)
        qrels = store.qrels()
    finally:
        store.close()
    result = comparison(view, qrels) if qrels else None
    status = html.escape(view.status())
    if result is None:
        reason = "no qrels were given with it" if qrels is None else "none of its finished queries is judged yet"
        return (f"{status}\n\nNo metrics: {reason}.", *(_shown(None) for _ in range(4)), view.complete)
    metrics = pd.DataFrame([[name, round(result.before[name], 4), round(result.after[name], 4),
                             round(result.after[name] - result.before[name], 4)] for name in result.measures],
                           columns=["measure", "before", "after", "Δ"])
    rows = []
    for query_id, values in result.per_query.items():
        before, after = values[GAIN_MEASURE]
        rows.append([query_id, round(before, 4), round(after, 4), round(after - before, 4)])
    per_query = pd.DataFrame(sorted(rows, key=lambda row: row[3]),
                             columns=["query", f"{GAIN_MEASURE} before", f"{GAIN_MEASURE} after", "Δ"])
    groups = score_by_grade(view, qrels)
    agreement = grade_agreement(view, qrels)
    graded = agreement.describe(view.reranker) if agreement else ""
    by_grade = score_figure(groups, view.score_name, view.reranker) if groups else None
    return (f"{status}\n\nMetrics over {len(result.per_query)} finished, judged queries. {html.escape(graded)}",
            _shown(metrics), _shown(gains_figure(result)), _shown(by_grade), _shown(per_query), view.complete)


def build_evaluate_tab(app: gr.Blocks, root: Path) -> None:
    with gr.Row():
        chosen = gr.Dropdown(label=f"Batch (rerank-run output folders in {root})", choices=batch_folders(root),
                             value=None, elem_id="evaluation-batch", scale=4)
        refresh = gr.Button("Refresh", elem_id="evaluation-refresh", scale=1)
    status = gr.Markdown(nothing_chosen(root), elem_id="evaluation-status")
    metrics = gr.Dataframe(label="Before (first stage) and after reranking", interactive=False,
                           elem_id="evaluation-metrics", visible=False)
    with gr.Row():
        gains = gr.Plot(label="Per-query gain", show_label=False, elem_id="evaluation-gains", visible=False)
        by_grade = gr.Plot(label="Score by relevance grade", show_label=False, elem_id="evaluation-by-grade",
                           visible=False)
    per_query = gr.Dataframe(label=f"Per query, by Δ {GAIN_MEASURE}", interactive=False,
                             elem_id="evaluation-per-query", visible=False)
    complete = gr.State(True)
    outputs = [status, metrics, gains, by_grade, per_query, complete]

    def show(name: str | None) -> tuple[Any, ...]:
        return batch_report(root, name)

    def follow(name: str | None, was_complete: bool) -> tuple[Any, ...]:
        """A running batch's report, again; nothing once it is complete."""
        return tuple(gr.skip() for _ in outputs) if was_complete else batch_report(root, name)

    def listed(name: str | None) -> Any:
        folders = batch_folders(root)
        return gr.Dropdown(choices=folders, value=name if name in folders else None)

    chosen.change(show, inputs=chosen, outputs=outputs, api_visibility="private")
    refresh.click(listed, inputs=chosen, outputs=chosen, api_visibility="private").then(
        show, inputs=chosen, outputs=outputs, api_visibility="private")
    gr.Timer(REFRESH_S).tick(follow, inputs=[chosen, complete], outputs=outputs, show_progress="hidden",
                             api_visibility="private")
    app.load(listed, inputs=chosen, outputs=chosen, api_visibility="private")
