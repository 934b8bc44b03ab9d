"""How far annotators agree with the model and with each other. Cohen's kappa and the confusion matrix come
from scikit-learn, Krippendorff's alpha from ``krippendorff``; nothing here re-implements a statistic.

Against rank1, decisions are binary: the model says relevant when P(true) >= ``threshold``, a human when their
grade >= ``relevant_from``. Against a graded model (the assessor, on the TREC 0–3 scale) the grades themselves
are compared: Cohen's kappa with quadratic weights and ordinal Krippendorff's alpha. A statistic that is undefined
on the data (one class only, fewer than two items) is None, never a made-up 0. Evidence spans are compared with
the model's evidence by token-level F1 (scikit-learn's f1_score over the passage's words).
"""

from __future__ import annotations

import math
import re
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np

from search.annotation.store import HumanJudgment, ModelEvidence, ModelJudgment, Span

Key = tuple[str, str]
"""(query id, doc id)"""
REFERENCE = "existing qrels"
"""The name the project's reference qrels go by when compared like an annotator."""


def reference_judgments(reference: Mapping[str, Mapping[str, int]]) -> list[HumanJudgment]:
    """The qrels a project started with, as judgments by ``REFERENCE``: so the model and every annotator can be
    compared with them the same way as with each other."""
    return [HumanJudgment(annotator=REFERENCE, query_id=query_id, doc_id=doc_id, grade=grade)
            for query_id, graded in reference.items() for doc_id, grade in graded.items()]


def cohen_kappa(first: Sequence[int], second: Sequence[int], *, weights: str | None = None) -> float | None:
    """Cohen's kappa of two label sequences (``weights="quadratic"`` for ordinal grades), or None where it is
    undefined (fewer than two items, or both raters always giving one and the same label)."""
    if len(first) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score  # 2 s to import: only where agreement is measured

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(cohen_kappa_score(first, second, weights=weights))
    return None if math.isnan(value) else value


def krippendorff_alpha(ratings: Mapping[str, Mapping[Key, int]], items: Sequence[Key]) -> float | None:
    """Ordinal Krippendorff's alpha of the annotators' grades over ``items`` (missing ratings allowed), or None
    where it is undefined (fewer than two pairable ratings, or a single grade used throughout)."""
    data = np.array([[ratings[annotator].get(item, np.nan) for item in items] for annotator in ratings], dtype=float)
    values = data[~np.isnan(data)]
    pairable = (np.sum(~np.isnan(data), axis=0) >= 2).sum() if data.size else 0
    if pairable == 0 or len(np.unique(values)) < 2:
        return None
    return float(krippendorff.alpha(reliability_data=data, level_of_measurement="ordinal"))


@dataclass(frozen=True, kw_only=True, slots=True)
class QueryAgreement:
    query_id: str
    items: int
    agreement: float | None
    """Share of items with the same decision or grade (annotator vs model), or Krippendorff's alpha (annotators)."""
    kappa: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_p_relevant: float
    """Mean of the model's measured probability of relevance: P(true), or P(grade ≥ relevant_from)."""
    share_relevant: float
    """Share of the bin's documents the annotator graded relevant: equal to ``mean_p_relevant`` when calibrated."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelAgreement:
    """One annotator against the model, on relevant / not relevant (rank1) or on the grades (a graded model)."""

    annotator: str
    items: int
    graded: bool
    kappa: float | None
    """Cohen's kappa: on relevant / not (rank1), or with quadratic weights on the grades (a graded model)."""
    alpha: float | None
    """Ordinal Krippendorff's alpha of annotator and model on the grades (graded models only)."""
    labels: tuple[str, ...]
    confusion: tuple[tuple[int, ...], ...]
    """Rows: the annotator's label; columns: the model's (``labels`` in order)."""
    per_query: tuple[QueryAgreement, ...]
    score_by_grade: tuple[tuple[int, int, float], ...]
    """(grade, documents, mean score) for each grade used; the score is P(true) or the expected grade."""
    calibration: tuple[CalibrationBin, ...]
    yours: int = 0
    """Documents the annotator graded."""
    model_failed: int = 0
    """Of those, documents the model failed to judge (no score to compare)."""

    def describe(self, *, threshold: float, relevant_from: int) -> str:
        """What was compared and how far they agree, in words; why nothing was, when nothing was."""
        if not self.items:
            if not self.yours:
                return "on no documents yet: you have not graded any"
            pending = self.yours - self.model_failed
            why = [f"the model has not judged {pending} yet (it judges in rank order; wait, or move on)"
                   if pending else "", f"it failed to judge {self.model_failed}" if self.model_failed else ""]
            return f"on no documents yet: of the {self.yours} you graded, " + " and ".join(part for part in why if part)
        if self.graded:
            return (f"on {self.items} documents, grade for grade: Cohen's kappa (quadratic weights) "
                    f"{_statistic(self.kappa)}, Krippendorff's alpha (ordinal) {_statistic(self.alpha)}")
        return (f"on {self.items} documents (model relevant when P(true) ≥ {threshold:.2f}, you when grade ≥ "
                f"{relevant_from}): Cohen's kappa {_statistic(self.kappa)}")


def _statistic(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def model_agreement(judgments: Sequence[HumanJudgment], model: Mapping[Key, ModelJudgment], *, annotator: str,
                    threshold: float, relevant_from: int, bins: int = 5) -> ModelAgreement:
    """``annotator``'s judgments against the model's, over the documents both judged (failed model judgments
    have no score and are left out)."""
    yours = [item for item in judgments if item.annotator == annotator]
    pairs = [(item, model[item.query_id, item.doc_id]) for item in yours
             if model.get((item.query_id, item.doc_id)) is not None and model[item.query_id, item.doc_id].measured]
    failed = sum(model.get((item.query_id, item.doc_id)) is not None
                 and not model[item.query_id, item.doc_id].measured for item in yours)
    graded = bool(pairs) and all(judgment.graded for _, judgment in pairs)
    probabilities = np.array([judgment.p_relevant(relevant_from) for _, judgment in pairs], dtype=float)
    relevant = [int(item.grade >= relevant_from) for item, _ in pairs]
    if graded:
        human = [item.grade for item, _ in pairs]
        machine = [int(judgment.grade) for _, judgment in pairs]
        labels = list(range(max(len(judgment.distribution) for _, judgment in pairs)))
        weights: str | None = "quadratic"
    else:
        human, machine = relevant, [int(p >= threshold) for p in probabilities]
        labels, weights = [0, 1], None
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(human, machine, labels=labels) if pairs else np.zeros((2, 2), dtype=int)
    by_query: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (item, _), said, saw in zip(pairs, human, machine, strict=True):
        by_query[item.query_id].append((said, saw))
    per_query = tuple(
        QueryAgreement(query_id=query_id, items=len(labelled),
                       agreement=float(np.mean([a == b for a, b in labelled])),
                       kappa=cohen_kappa([a for a, _ in labelled], [b for _, b in labelled], weights=weights))
        for query_id, labelled in by_query.items()
    )
    by_grade: dict[int, list[float]] = defaultdict(list)
    for item, judgment in pairs:
        by_grade[item.grade].append(float(judgment.score))
    edges = np.linspace(0.0, 1.0, bins + 1)
    shares = np.array(relevant, dtype=float)
    places = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    calibration = tuple(
        CalibrationBin(low=float(edges[index]), high=float(edges[index + 1]), count=int(np.sum(places == index)),
                       mean_p_relevant=float(probabilities[places == index].mean()),
                       share_relevant=float(shares[places == index].mean()))
        for index in range(bins) if np.any(places == index)
    )
    alpha = krippendorff_alpha({"annotator": {index: grade for index, grade in enumerate(human)},
                                "model": {index: grade for index, grade in enumerate(machine)}},
                               list(range(len(pairs)))) if graded else None
    return ModelAgreement(
        annotator=annotator, items=len(pairs), graded=graded, kappa=cohen_kappa(human, machine, weights=weights),
        alpha=alpha, labels=tuple(str(label) for label in labels) if graded else ("not relevant", "relevant"),
        confusion=tuple(tuple(int(count) for count in row) for row in matrix), per_query=per_query,
        score_by_grade=tuple((grade, len(values), float(np.mean(values)))
                             for grade, values in sorted(by_grade.items())),
        calibration=calibration, yours=len(yours), model_failed=failed,
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class PairAgreement:
    first: str
    second: str
    items: int
    kappa: float | None
    """On the grades themselves."""
    binary_kappa: float | None
    """On relevant / not relevant."""


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnotatorAgreement:
    annotators: tuple[str, ...]
    pairs: tuple[PairAgreement, ...]
    alpha: float | None
    """Ordinal Krippendorff's alpha over every document at least two annotators judged."""
    per_query: tuple[QueryAgreement, ...]


def annotator_agreement(judgments: Sequence[HumanJudgment], *, relevant_from: int) -> AnnotatorAgreement:
    """Every pair of annotators (Cohen's kappa on the documents both judged) and all of them together
    (Krippendorff's alpha), overall and per query."""
    ratings: dict[str, dict[Key, int]] = defaultdict(dict)
    for item in judgments:
        ratings[item.annotator][item.query_id, item.doc_id] = item.grade
    annotators = tuple(sorted(ratings))
    pairs = []
    for first, second in combinations(annotators, 2):
        shared = [key for key in ratings[first] if key in ratings[second]]
        grades = [(ratings[first][key], ratings[second][key]) for key in shared]
        pairs.append(PairAgreement(
            first=first, second=second, items=len(shared),
            kappa=cohen_kappa([a for a, _ in grades], [b for _, b in grades]),
            binary_kappa=cohen_kappa([int(a >= relevant_from) for a, _ in grades],
                                     [int(b >= relevant_from) for _, b in grades])))
    counts: dict[Key, int] = defaultdict(int)
    for by_item in ratings.values():
        for key in by_item:
            counts[key] += 1
    shared_items = [key for key, count in counts.items() if count >= 2]
    queries: dict[str, list[Key]] = defaultdict(list)
    for key in shared_items:
        queries[key[0]].append(key)
    per_query = tuple(QueryAgreement(query_id=query_id, items=len(items), agreement=krippendorff_alpha(ratings, items))
                      for query_id, items in queries.items())
    return AnnotatorAgreement(annotators=annotators, pairs=tuple(pairs),
                              alpha=krippendorff_alpha(ratings, shared_items) if shared_items else None,
                              per_query=per_query)


@dataclass(frozen=True, kw_only=True, slots=True)
class EvidenceOverlap:
    """How far evidence spans overlap the model's, for one annotator or one query: the mean token-level F1 over
    the ``documents`` where both marked evidence."""

    who: str
    documents: int
    f1: float


WORD = re.compile(r"\w+")


def token_f1(passage: str, mine: Span, theirs: Span) -> float:
    """F1 of the passage's words one span touches against those the other touches (scikit-learn's f1_score)."""
    from sklearn.metrics import f1_score

    words = [(match.start(), match.end()) for match in WORD.finditer(passage)]

    def touched(span: Span) -> list[bool]:
        return [start < span.end and span.start < end for start, end in words]

    return float(f1_score(touched(theirs), touched(mine), zero_division=0.0))


def evidence_overlap(judgments: Sequence[HumanJudgment], evidence: Mapping[Key, ModelEvidence],
                     passages: Mapping[Key, str]) -> tuple[list[EvidenceOverlap], list[EvidenceOverlap]]:
    """Each annotator's evidence spans against the model's evidence (its strongest supporting sentence): mean
    token F1 per annotator and per query."""
    by_annotator: dict[str, list[float]] = defaultdict(list)
    by_query: dict[str, list[float]] = defaultdict(list)
    for judgment in judgments:
        key = (judgment.query_id, judgment.doc_id)
        model = evidence.get(key)
        if judgment.span is None or model is None or model.span is None or key not in passages:
            continue
        score = token_f1(passages[key], judgment.span, model.span)
        by_annotator[judgment.annotator].append(score)
        by_query[judgment.query_id].append(score)

    def rows(groups: dict[str, list[float]]) -> list[EvidenceOverlap]:
        return [EvidenceOverlap(who=who, documents=len(scores), f1=sum(scores) / len(scores))
                for who, scores in sorted(groups.items())]

    return rows(by_annotator), rows(by_query)
