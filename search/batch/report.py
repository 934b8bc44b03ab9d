"""A batch as results: the reranked run, the traces, and (with qrels) metrics before and after reranking with
per-query deltas and plots. Built from the batch's state alone, so it serves a finished batch's output files
and the Evaluation tab's view of a running one alike."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import TYPE_CHECKING

from ir_measures import RR, R, nDCG

from search.annotation.agreement import cohen_kappa, krippendorff_alpha
from search.batch.store import BatchStore, Retry
from search.corpus import Passage, Qrels
from search.evaluation import Comparison, compare
from search.rerank.base import Run
from search.rerank.registry import reranker_class
from search.retrieval.ranking import Candidate, Hit
from search.trec import TrecRun, format_trec_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RUN_FILE = "run.trec"
TRACES_FILE = "traces.jsonl"
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"
PER_QUERY_FILE = "per_query.tsv"
GAINS_PLOT = "gains.png"
SCORE_PLOT = "score_by_grade.png"
GAIN_MEASURE = "nDCG@10"
ASSESSOR_SCALE = range(4)
"""The grades a graded reranker gives (the TREC 0–3 scale): qrels on another scale are not compared with them."""


def batch_measures(top_k: int) -> tuple:
    """nDCG@10, Recall@10 (when more than 10 are reranked), Recall@top-k (the same before and after:
    reranking keeps the set, so it is the ceiling) and MRR@10."""
    return (nDCG @ 10, *((R @ 10,) if top_k > 10 else ()), R @ top_k, RR @ 10)


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryView:
    query_id: str
    run: Run

    @property
    def finished(self) -> bool:
        return self.run.finished


@dataclass(frozen=True, kw_only=True, slots=True)
class BatchView:
    """Every query of a batch folded from its kept events, as far as the batch has come."""

    reranker: str
    model: str
    top_k: int
    sources: dict[str, str]
    queries: tuple[QueryView, ...]
    first_stage: TrecRun
    judged: int
    failed: int
    documents: int
    retries: tuple[Retry, ...] = ()
    """Queries sent again after a lost worker (``--ray``)."""

    @property
    def finished(self) -> tuple[QueryView, ...]:
        return tuple(view for view in self.queries if view.finished)

    @property
    def complete(self) -> bool:
        return len(self.finished) == len(self.queries)

    @property
    def score_name(self) -> str:
        return self.queries[0].run.score_name if self.queries else "score"

    def reranked_run(self, *, only_finished: bool = True) -> TrecRun:
        return {view.query_id: view.run.scores() for view in self.queries if view.finished or not only_finished}

    def status(self) -> str:
        failed = f", {self.failed} failed (run the batch again to retry them)" if self.failed else ""
        state = "finished" if self.complete else "running or stopped"
        return (f"{state}: {len(self.finished)} of {len(self.queries)} queries, {self.judged} of {self.documents} "
                f"documents judged by {self.reranker}{failed}; model {self.model}, top {self.top_k}")


def _candidates(first_stage: Sequence[tuple[str, float]]) -> tuple[Candidate, ...]:
    """Placeholders that carry what a run needs (ids, first-stage rank and score), not document text."""
    return tuple(Candidate(passage=Passage(passage_id=doc_id, doc_id=doc_id, index=0, title="", text=""), stage="run",
                           provenance={"run": Hit(rank=rank, score=score)})
                 for rank, (doc_id, score) in enumerate(first_stage, start=1))


def view_batch(store: BatchStore) -> BatchView:
    spec = store.spec()
    if spec is None:
        raise ValueError(f"{store.path}: holds no batch yet")
    kept = store.kept_by_query()
    reranker, settings = reranker_class(spec.reranker), spec.rerank_settings()
    views = []
    judged = failed = documents = 0
    first_stage: TrecRun = {}
    for query in store.queries():
        candidates = _candidates(query.first_stage)
        first_stage[query.query_id] = dict(query.first_stage)
        documents += len(candidates)
        run = reranker.new_run(query.text, candidates, instruction=query.instruction, settings=settings)
        for event in kept.get(query.query_id, []):
            run.apply(event)
        judged += run.documents_done()
        failed += sum(run.status(candidate.passage.doc_id) == "failed" for candidate in candidates)
        views.append(QueryView(query_id=query.query_id, run=run))
    return BatchView(reranker=spec.reranker, model=spec.model, top_k=spec.top_k, sources=store.sources(),
                     queries=tuple(views), first_stage=first_stage, judged=judged, failed=failed,
                     documents=documents, retries=tuple(store.retries()))


def comparison(view: BatchView, qrels: Qrels) -> Comparison | None:
    """Before and after on the finished queries that have judgments (None if there are none yet)."""
    judged = {item.query_id: qrels[item.query_id] for item in view.finished if item.query_id in qrels}
    if not judged:
        return None
    before = {query_id: view.first_stage[query_id] for query_id in judged}
    return compare(judged, before, view.reranked_run(), batch_measures(view.top_k))


def _figure() -> Figure:
    """An empty plot of the report's size; matplotlib is imported only here, as it slows every command's start."""
    from matplotlib.figure import Figure

    return Figure(figsize=(7, 3.2), layout="constrained")


def gains_figure(result: Comparison, measure: str = GAIN_MEASURE) -> Figure:
    """Each query's change in ``measure``, sorted, one bar per query."""
    deltas = sorted(result.delta(measure, query_id) for query_id in result.per_query)
    figure = _figure()
    axes = figure.subplots()
    axes.bar(range(len(deltas)), deltas, color=["#2a9d8f" if delta >= 0 else "#e76f51" for delta in deltas])
    axes.axhline(0, color="black", linewidth=0.8)
    axes.set_xlabel(f"queries, sorted by gain ({len(deltas)})")
    axes.set_ylabel(f"Δ {measure} (after − before)")
    axes.set_title(f"Per-query gain in {measure} from reranking")
    axes.set_xticks([])
    return figure


def _judged_pairs(view: BatchView, qrels: Qrels) -> Iterator[tuple[Run, str, int | None]]:
    """(run, document, its grade in the qrels or None) for every judged document of the finished, judged queries."""
    for item in view.finished:
        if item.query_id in qrels:
            for candidate in item.run.candidates:
                if item.run.status(candidate.passage.doc_id) == "judged":
                    yield item.run, candidate.passage.doc_id, qrels[item.query_id].get(candidate.passage.doc_id)


def score_by_grade(view: BatchView, qrels: Qrels) -> dict[str, list[float]]:
    """The reranker's score of every judged document of the finished queries, grouped by its grade ("unjudged"
    when the qrels do not grade it)."""
    groups: dict[str, list[float]] = {}
    for run, doc_id, grade in _judged_pairs(view, qrels):
        groups.setdefault("unjudged" if grade is None else str(grade), []).append(run.score(doc_id) or 0.0)
    return dict(sorted(groups.items(), key=lambda item: (item[0] == "unjudged", item[0])))


def score_figure(groups: dict[str, list[float]], score_name: str, reranker: str) -> Figure:
    figure = _figure()
    axes = figure.subplots()
    labels = list(groups)
    axes.boxplot([groups[label] for label in labels], tick_labels=[f"{label}\n(n={len(groups[label])})"
                                                                   for label in labels])
    axes.set_xlabel("relevance grade in the qrels")
    axes.set_ylabel(score_name)
    axes.set_title(f"{reranker}'s {score_name} by relevance grade")
    return figure


@dataclass(frozen=True, kw_only=True, slots=True)
class GradeAgreement:
    """A graded reranker's grades against the qrels' on the same 0–3 scale."""

    documents: int
    weighted_kappa: float | None
    """Cohen's kappa with quadratic weights: a grade off by two costs four times one off by one."""
    alpha: float | None
    """Ordinal Krippendorff's alpha of the two raters."""

    def describe(self, reranker: str) -> str:
        return (f"{reranker}'s grades against the qrels on {self.documents} documents graded by both (0–3): Cohen's "
                f"kappa (quadratic weights) {_statistic(self.weighted_kappa)}, Krippendorff's alpha (ordinal) "
                f"{_statistic(self.alpha)}.")


def grade_agreement(view: BatchView, qrels: Qrels) -> GradeAgreement | None:
    """The reranker's grades against the qrels' (documents both grade), or None when the reranker gives no grades
    or the qrels are on another scale."""
    pairs = [(run.grades()[doc_id], grade) for run, doc_id, grade in _judged_pairs(view, qrels)
             if grade is not None and doc_id in run.grades()]
    if not pairs or any(grade not in ASSESSOR_SCALE for _, grade in pairs):
        return None
    model, reference = [grade for grade, _ in pairs], [grade for _, grade in pairs]
    ratings = {"model": dict(enumerate(model)), "qrels": dict(enumerate(reference))}
    return GradeAgreement(documents=len(pairs), weighted_kappa=cohen_kappa(model, reference, weights="quadratic"),
                          alpha=krippendorff_alpha(ratings, list(range(len(pairs)))))


@dataclass(frozen=True, kw_only=True, slots=True)
class ReasoningEffect:
    """What the reasoning did to the verdicts, from the belief probes of every judged document of the finished
    queries: how often it changed the no-thinking verdict, the median token from which the verdict held, how many
    judgments ended early, and per qrels grade the mean score before any reasoning and at the verdict."""

    documents: int
    changed: int
    settled_median: float
    early: int
    by_grade: dict[str, tuple[int, float, float]]
    """Grade ("unjudged" when the qrels do not grade it) → (documents, mean no-thinking score, mean final score)."""

    def markdown(self, score_name: str) -> list[str]:
        lines = [f"\n## What the reasoning changed (belief probes)\n\nOn {self.documents} judged documents, reasoning "
                 f"changed the no-thinking verdict on {self.changed} ({self.changed / self.documents:.1%}); the "
                 f"verdict held for good from token {self.settled_median:g} (median)"
                 + (f"; {self.early} judgments ended early (--early-verdict)." if self.early else ".")]
        if self.by_grade:
            lines += ["", f"| qrels grade | documents | {score_name} before reasoning | {score_name} at the verdict |",
                      "|---|---:|---:|---:|"]
            lines += [f"| {grade} | {count} | {before:.4f} | {after:.4f} |"
                      for grade, (count, before, after) in self.by_grade.items()]
        return lines


def reasoning_effect(view: BatchView, qrels: Qrels | None) -> ReasoningEffect | None:
    """The reasoning's effect on the verdicts (None when the batch took no belief probes)."""
    paths = [(item.run.belief_path(candidate.passage.doc_id), (qrels or {}).get(item.query_id, {}).get(
        candidate.passage.doc_id)) for item in view.finished for candidate in item.run.candidates
        if item.run.status(candidate.passage.doc_id) == "judged"]
    paths = [(path, grade) for path, grade in paths if path is not None and path.judged and path.first.tokens == 0]
    if not paths:
        return None
    groups: dict[str, list[tuple[float, float]]] = {}
    for path, grade in paths:
        groups.setdefault("unjudged" if grade is None else str(grade), []).append((path.first.score,
                                                                                     path.last.score))
    by_grade = {grade: (len(pairs), sum(before for before, _ in pairs) / len(pairs),
                        sum(after for _, after in pairs) / len(pairs))
                for grade, pairs in sorted(groups.items(), key=lambda item: (item[0] == "unjudged", item[0]))}
    return ReasoningEffect(documents=len(paths), changed=sum(path.changed for path, _ in paths),
                           settled_median=median(path.settled_at for path, _ in paths),
                           early=sum(item.run.details(candidate.passage.doc_id).get("end_reason") == "early"
                                     for item in view.finished for candidate in item.run.candidates),
                           by_grade=by_grade if qrels else {})


def _statistic(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def report_markdown(view: BatchView, result: Comparison | None, agreement: GradeAgreement | None = None,
                    effect: ReasoningEffect | None = None) -> str:
    lines = [f"# Batch report\n\n{view.status()}\n"]
    for name, path in view.sources.items():
        lines.append(f"- {name}: `{path}`")
    if view.retries:
        lines.append("\nRetried after a lost worker:\n")
        lines += [f"- {retry.describe()}" for retry in view.retries]
    if result is None:
        lines.append("\nNo metrics: no qrels were given, or none of the finished queries is judged in them.")
        return "\n".join(lines + (effect.markdown(view.score_name) if effect else [])) + "\n"
    lines += [f"\nOver {len(result.per_query)} judged queries (first-stage top {view.top_k} before, reranked by "
              f"{view.score_name} after):\n", "| measure | before | after | Δ |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {result.before[name]:.4f} | {result.after[name]:.4f} | "
              f"{result.after[name] - result.before[name]:+.4f} |" for name in result.measures]
    deltas = [result.delta(GAIN_MEASURE, query_id) for query_id in result.per_query]
    lines.append(f"\n{GAIN_MEASURE}: {sum(delta > 0 for delta in deltas)} queries gained, "
                 f"{sum(delta < 0 for delta in deltas)} lost, {sum(delta == 0 for delta in deltas)} unchanged.")
    if agreement is not None:
        lines.append(f"\n{agreement.describe(view.reranker)}")
    return "\n".join(lines + (effect.markdown(view.score_name) if effect else [])) + "\n"


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
    (out / TRACES_FILE).write_text("".join(item.run.jsonl(query_id=item.query_id) for item in view.queries),
                                   encoding="utf-8")
    result = comparison(view, qrels) if qrels else None
    agreement = grade_agreement(view, qrels) if qrels else None
    effect = reasoning_effect(view, qrels)
    (out / REPORT_FILE).write_text(report_markdown(view, result, agreement, effect), encoding="utf-8")
    written.append(out / REPORT_FILE)
    if result is None:
        return written
    metrics = {"queries": len(result.per_query), "before": result.before, "after": result.after,
               "per_query": {query_id: {name: {"before": before, "after": after} for name, (before, after) in
                                        values.items()} for query_id, values in result.per_query.items()},
               **({"grades_vs_qrels": dataclasses.asdict(agreement)} if agreement else {}),
               **({"reasoning_effect": dataclasses.asdict(effect)} if effect else {})}
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=1), encoding="utf-8")
    (out / PER_QUERY_FILE).write_text(per_query_tsv(result), encoding="utf-8")
    gains_figure(result).savefig(out / GAINS_PLOT, dpi=120)
    written += [out / METRICS_FILE, out / PER_QUERY_FILE, out / GAINS_PLOT]
    if groups := score_by_grade(view, qrels):
        score_figure(groups, view.score_name, view.reranker).savefig(out / SCORE_PLOT, dpi=120)
        written.append(out / SCORE_PLOT)
    return written
