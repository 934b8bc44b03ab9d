"""How far annotators agree with the model and with each other. Cohen's kappa and the confusion matrix come
from scikit-learn, Krippendorff's alpha from ``krippendorff``; nothing here re-implements a statistic.

The model says relevant when P(true) >= ``threshold``; a human when their grade >= ``relevant_from``.
A statistic that is undefined on the data (one class only, fewer than two items) is None, never a made-up 0.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from search.annotation.store import HumanJudgment, ModelJudgment

Key = tuple[str, str]
"""(query id, doc id)"""
REFERENCE = "existing qrels"
"""The name the project's reference qrels go by when compared like an annotator."""


def reference_judgments(reference: Mapping[str, Mapping[str, int]]) -> list[HumanJudgment]:
    """The qrels a project started with, as judgments by ``REFERENCE``: so the model and every annotator can be
    compared with them the same way as with each other."""
    return [HumanJudgment(annotator=REFERENCE, query_id=query_id, doc_id=doc_id, grade=grade)
            for query_id, graded in reference.items() for doc_id, grade in graded.items()]


def cohen_kappa(first: Sequence[int], second: Sequence[int]) -> float | None:
    """Cohen's kappa of two label sequences, or None where it is undefined (fewer than two items, or both raters
    always giving one and the same label)."""
    if len(first) < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        value = float(cohen_kappa_score(first, second))
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
    """Share of items with the same binary decision (annotator vs model), or Krippendorff's alpha (annotators)."""
    kappa: float | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_p_true: float
    share_relevant: float
    """Share of the bin's documents the annotator graded relevant: equal to ``mean_p_true`` when calibrated."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelAgreement:
    """One annotator against the model."""

    annotator: str
    items: int
    kappa: float | None
    confusion: tuple[tuple[int, int], tuple[int, int]]
    """Rows: human not relevant / relevant; columns: model not relevant / relevant."""
    per_query: tuple[QueryAgreement, ...]
    p_true_by_grade: tuple[tuple[int, int, float], ...]
    """(grade, documents, mean P(true)) for each grade used."""
    calibration: tuple[CalibrationBin, ...]


def model_agreement(judgments: Sequence[HumanJudgment], model: Mapping[Key, ModelJudgment], *, annotator: str,
                    threshold: float, relevant_from: int, bins: int = 5) -> ModelAgreement:
    """``annotator``'s judgments against the model's, over the documents both judged (failed model judgments
    have no probability and are left out)."""
    pairs = [(item, model[item.query_id, item.doc_id].p_true) for item in judgments
             if item.annotator == annotator and model.get((item.query_id, item.doc_id)) is not None
             and model[item.query_id, item.doc_id].p_true is not None]
    human = [int(item.grade >= relevant_from) for item, _ in pairs]
    machine = [int(p >= threshold) for _, p in pairs]
    matrix = confusion_matrix(human, machine, labels=[0, 1]) if pairs else np.zeros((2, 2), dtype=int)
    by_query: dict[str, list[int]] = defaultdict(list)
    for (item, _), said, saw in zip(pairs, human, machine, strict=True):
        by_query[item.query_id].extend([said, saw])
    per_query = tuple(
        QueryAgreement(query_id=query_id, items=len(labels) // 2,
                       agreement=float(np.mean([a == b for a, b in zip(labels[::2], labels[1::2], strict=True)])),
                       kappa=cohen_kappa(labels[::2], labels[1::2]))
        for query_id, labels in by_query.items()
    )
    by_grade: dict[int, list[float]] = defaultdict(list)
    for item, p in pairs:
        by_grade[item.grade].append(p)
    edges = np.linspace(0.0, 1.0, bins + 1)
    probabilities = np.array([p for _, p in pairs], dtype=float)
    relevant = np.array(human, dtype=float)
    places = np.clip(np.searchsorted(edges, probabilities, side="right") - 1, 0, bins - 1)
    calibration = tuple(
        CalibrationBin(low=float(edges[index]), high=float(edges[index + 1]), count=int(np.sum(places == index)),
                       mean_p_true=float(probabilities[places == index].mean()),
                       share_relevant=float(relevant[places == index].mean()))
        for index in range(bins) if np.any(places == index)
    )
    return ModelAgreement(
        annotator=annotator, items=len(pairs), kappa=cohen_kappa(human, machine),
        confusion=((int(matrix[0, 0]), int(matrix[0, 1])), (int(matrix[1, 0]), int(matrix[1, 1]))),
        per_query=per_query,
        p_true_by_grade=tuple((grade, len(values), float(np.mean(values)))
                              for grade, values in sorted(by_grade.items())),
        calibration=calibration,
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
