"""A batch as results: the reranked run, the traces, and (with qrels) metrics before and after reranking with
per-query deltas and plots. Built from the batch's state alone, so it serves a finished batch's output files
and the Evaluation tab's view of a running one alike."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ir_measures import RR, R, nDCG
from matplotlib.figure import Figure

from search.batch.store import BatchStore
from search.corpus import Passage, Qrels
from search.evaluation import Comparison, Run, compare, format_trec_run
from search.rerank.board import Board
from search.rerank.list_board import ListBoard
from search.retrieval.ranking import Candidate, Hit

RUN_FILE = "run.trec"
TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PER_QUERY_FILE = "per_query.tsv"
GAINS_PLOT = "gains.png"
P_TRUE_PLOT = "p_true_by_grade.png"
GAIN_MEASURE = "nDCG@10"


def batch_measures(top_k: int) -> tuple:
    """nDCG@10, Recall@10 (when more than 10 are reranked), Recall@top-k (the same before and after:
    reranking keeps the set, so it is the ceiling) and MRR@10."""
    return (nDCG @ 10, *((R @ 10,) if top_k > 10 else ()), R @ top_k, RR @ 10)


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryView:
    query_id: str
    board: Board | ListBoard
    finished: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchView:
    """Every query of a batch folded from its stored outcomes, as far as the batch has come."""

    reranker: str
    model: str
    top_k: int
    sources: dict[str, str]
    queries: tuple[QueryView, ...]
    first_stage: Run
    judged: int
    failed: int
    documents: int

    @property
    def finished(self) -> tuple[QueryView, ...]:
        return tuple(view for view in self.queries if view.finished)

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.queries)

    def reranked_run(self, *, only_finished: bool = True) -> Run:
        return {view.query_id: view.board.scores() for view in self.queries if view.finished or not only_finished}

    def status(self) -> str:
        what = "rank1 judgments" if self.reranker == "rank1" else "documents ranked by ReasonRank"
        failed = f", {self.failed} failed (run the batch again to retry them)" if self.failed else ""
        state = "finished" if self.complete else "running or stopped"
        return (f"{state}: {len(self.finished)} of {len(self.queries)} queries, {self.judged} of {self.documents} "
                f"{what}{failed}; model {self.model}, top {self.top_k}")


def _candidates(first_stage: Sequence[tuple[str, float]]) -> tuple[Candidate, ...]:
    """Placeholders that carry what the boards need (ids, first-stage rank and score), not document text."""
    return tuple(Candidate(passage=Passage(passage_id=doc_id, doc_id=doc_id, index=0, title="", text=""), stage="run",
                           provenance={"run": Hit(rank=rank, score=score)})
                 for rank, (doc_id, score) in enumerate(first_stage, start=1))


def view_batch(store: BatchStore) -> BatchView:
    spec = store.spec()
    if spec is None:
        raise ValueError(f"{store.path}: holds no batch yet")
    outcomes: dict[str, list] = {}
    for outcome in store.outcomes():
        outcomes.setdefault(outcome.query_id, []).append(outcome.event)
    rankings = store.rankings()
    views = []
    judged = failed = documents = 0
    first_stage: Run = {}
    for query in store.queries():
        candidates = _candidates(query.first_stage)
        first_stage[query.query_id] = dict(query.first_stage)
        documents += len(candidates)
        if spec.reranker == "reasonrank":
            events = rankings.get(query.query_id, [])
            board: Board | ListBoard = ListBoard(query=query.text, instruction=query.instruction,
                                                 candidates=candidates, window_count=0)
            for event in events:
                board.apply(event)
            finished = bool(events)
            judged += len(candidates) if finished else 0
        else:
            board = Board(query=query.text, instruction=query.instruction, candidates=candidates)
            for event in outcomes.get(query.query_id, []):
                board.apply(event)
            summary = board.summary()
            judged, failed = judged + summary.judged, failed + summary.failed
            finished = summary.finished
        views.append(QueryView(query_id=query.query_id, board=board, finished=finished))
    return BatchView(reranker=spec.reranker, model=spec.model, top_k=spec.top_k, sources=store.sources(),
                     queries=tuple(views), first_stage=first_stage, judged=judged, failed=failed,
                     documents=documents)


def comparison(view: BatchView, qrels: Qrels) -> Comparison | None:
    """Before and after on the finished queries that have judgments (None if there are none yet)."""
    judged = {item.query_id: qrels[item.query_id] for item in view.finished if item.query_id in qrels}
    if not judged:
        return None
    before = {query_id: view.first_stage[query_id] for query_id in judged}
    return compare(judged, before, view.reranked_run(), batch_measures(view.top_k))


def gains_figure(result: Comparison, measure: str = GAIN_MEASURE) -> Figure:
    """Each query's change in ``measure``, sorted, one bar per query."""
    deltas = sorted(result.delta(measure, query_id) for query_id in result.per_query)
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    axes.bar(range(len(deltas)), deltas, color=["#2a9d8f" if delta >= 0 else "#e76f51" for delta in deltas])
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"queries, sorted by gain ({len(deltas)})")
    axes.set_ylabel(f"Δ {measure} (after − before)")
    axes.set_title(f"Per-query gain in {measure} from reranking")
    axes.set_xticks([])
    return figure


def p_true_by_grade(view: BatchView, qrels: Qrels) -> dict[str, list[float]]:
    """P(true) of every judged document of the finished queries, grouped by its grade ("unjudged" when the
    qrels do not grade it)."""
    groups: dict[str, list[float]] = {}
    for item in view.finished:
        if item.query_id not in qrels or not isinstance(item.board, Board):
            continue
        for state in item.board.documents.values():
            if state.judged is not None:
                grade = qrels[item.query_id].get(state.doc_id)
                groups.setdefault("unjudged" if grade is None else str(grade), []).append(state.judged.p_true)
    return dict(sorted(groups.items(), key=lambda item: (item[0] == "unjudged", item[0])))


def p_true_figure(groups: dict[str, list[float]]) -> Figure:
    figure = Figure(figsize=(7, 3.2), layout="constrained")
    axes = figure.subplots()
    labels = list(groups)
    axes.boxplot([groups[label] for label in labels], tick_labels=[f"{label}\n(n={len(groups[label])})"
                                                                   for label in labels])
    axes.set_ylim(-0.02, 1.02)
    axes.set_xlabel("relevance grade in the qrels")
    axes.set_ylabel("P(true)")
    axes.set_title("rank1's P(true) by relevance grade")
    return figure


def report_markdown(view: BatchView, result: Comparison | None) -> str:
    lines = [f"# Batch report\n\n{view.status()}\n"]
    for name, path in view.sources.items():
        lines.append(f"- {name}: `{path}`")
    if result is None:
        lines.append("\nNo metrics: no qrels were given, or none of the finished queries is judged in them.")
        return "\n".join(lines) + "\n"
    lines += [f"\nOver {len(result.per_query)} judged queries (first-stage top {view.top_k} before, reranked "
              "after):\n", "| measure | before | after | Δ |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {result.before[name]:.4f} | {result.after[name]:.4f} | "
              f"{result.after[name] - result.before[name]:+.4f} |" for name in result.measures]
    deltas = [result.delta(GAIN_MEASURE, query_id) for query_id in result.per_query]
    lines.append(f"\n{GAIN_MEASURE}: {sum(delta > 0 for delta in deltas)} queries gained, "
                 f"{sum(delta < 0 for delta in deltas)} lost, {sum(delta == 0 for delta in deltas)} unchanged.")
    return "\n".join(lines) + "\n"


def per_query_tsv(result: Comparison) -> str:
    header = ["query_id", *(f"{name} {side}" for name in result.measures for side in ("before", "after", "delta"))]
    rows = ["\t".join(header)]
    for query_id, values in result.per_query.items():
        cells = [query_id]
        for name in result.measures:
            before, after = values[name]
            cells += [f"{before:.4f}", f"{after:.4f}", f"{after - before:+.4f}"]
        rows.append("\t".join(cells))
    return "\n".join(rows) + "\n"


def write_outputs(out: Path, view: BatchView, qrels: Qrels | None) -> list[Path]:
    """The reranked TREC run, the traces and, with qrels, the metrics, report and plots; the paths written."""
    tag = f"explainable-search-{view.reranker}"
    written = [out / RUN_FILE, out / TRACES_FILE]
    (out / RUN_FILE).write_text(format_trec_run(view.reranked_run(only_finished=False), tag), encoding="utf-8")
    (out / TRACES_FILE).write_text("".join(item.board.jsonl(query_id=item.query_id) for item in view.queries),
                                   encoding="utf-8")
    result = comparison(view, qrels) if qrels else None
    (out / REPORT_FILE).write_text(report_markdown(view, result), encoding="utf-8")
    written.append(out / REPORT_FILE)
    if result is None:
        return written
    metrics = {"queries": len(result.per_query), "before": result.before, "after": result.after,
               "per_query": {query_id: {name: {"before": before, "after": after} for name, (before, after) in
                                        values.items()} for query_id, values in result.per_query.items()}}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    (out / PER_QUERY_FILE).write_text(per_query_tsv(result), encoding="utf-8")
    gains_figure(result).savefig(out / GAINS_PLOT, dpi=120)
    written += [out / METRICS_FILE, out / PER_QUERY_FILE, out / GAINS_PLOT]
    if groups := p_true_by_grade(view, qrels):
        p_true_figure(groups).savefig(out / P_TRUE_PLOT, dpi=120)
        written.append(out / P_TRUE_PLOT)
    return written
