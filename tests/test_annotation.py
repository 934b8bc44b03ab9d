"""Annotation store, export/import and agreement statistics (checked against values computed by hand)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import gradio as gr
import pytest

from search.annotation.agreement import (
    REFERENCE,
    annotator_agreement,
    evidence_overlap,
    model_agreement,
    reference_judgments,
    token_f1,
)
from search.annotation.exchange import import_jsonl, jsonl_text, qrels_text
from search.annotation.store import (
    AnnotationError,
    AnnotationStore,
    EvidenceSentence,
    HumanJudgment,
    ModelEvidence,
    ModelJudgment,
    Position,
    Project,
    Span,
    StoredCandidate,
    model_judgment,
)
from search.annotation.workbench import Workbench, rerank_candidate
from search.evidence import split_sentences
from search.rerank.events import (
    BeliefPoint,
    Evidence,
    EvidenceCost,
    Failed,
    Faithfulness,
    Graded,
    Judged,
    Reasoning,
    SentenceEffect,
)
from search.retrieval.ranking import Candidate
from search.uploads import CorpusLibrary
from ui.annotate import AnnotateTab, AnnotationContext, agreement_frames, agreement_plots
from ui.annotation_cards import render_document, render_list, render_model, render_progress

QUERIES = [("q1", "first query"), ("q2", "second query")]


def candidate(query_id: str, doc_id: str, rank: int) -> StoredCandidate:
    return StoredCandidate(query_id=query_id, doc_id=doc_id, rank=rank, passage_id=f"{doc_id}#0",
                           title=f"Title {doc_id}", passage=f"Passage of {doc_id} — with <b>text</b>.")


@pytest.fixture()
def store(tmp_path: Path) -> AnnotationStore:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="demo", corpus="sample", guideline="Be strict.",
                                 guideline_as_instruction=True), QUERIES, {"q1": {"d1": 2}})
    store.add_candidates("demo", [candidate("q1", f"d{rank}", rank) for rank in (1, 2, 3)])
    store.add_candidates("demo", [candidate("q2", f"d{rank}", rank - 3) for rank in (4, 5, 6)])
    return store


def human(annotator: str, query_id: str, doc_id: str, grade: int, **fields: object) -> HumanJudgment:
    return HumanJudgment(annotator=annotator, query_id=query_id, doc_id=doc_id, grade=grade, **fields)


def model(query_id: str, doc_id: str, p_true: float | None) -> ModelJudgment:
    ids = {"reranker": "rank1", "doc_id": doc_id, "passage_id": f"{doc_id}#0", "reasoning": f"thinking about {doc_id}"}
    if p_true is None:
        return model_judgment(query_id, "demo", Failed(**ids, reason="no verdict logprobs"))
    return model_judgment(query_id, "demo", Judged(**ids, tokens=12, end_reason="budget", forced=True,
                                                   truncated_passage=False, verdict=p_true >= 0.5, p_true=p_true,
                                                   logprob_true=math.log(p_true), logprob_false=math.log(1 - p_true)))


def test_judgments_are_kept_with_their_history(store: AnnotationStore) -> None:
    store.judge("demo", human("ann", "q1", "d1", 1))
    store.judge("demo", human("ann", "q1", "d1", 3, note="exact answer", span=Span(start=0, end=7)))
    store.clear("demo", "ann", "q1", "d2")
    [kept] = store.judgments("demo")
    assert (kept.grade, kept.note, kept.span) == (3, "exact answer", Span(start=0, end=7))
    assert [grade for _, grade in store.history("demo", "ann", "q1", "d1")] == [1, 3]
    store.clear("demo", "ann", "q1", "d1")
    assert store.judgments("demo") == []
    assert [grade for _, grade in store.history("demo", "ann", "q1", "d1")] == [1, 3, None]
    assert store.project("demo").instruction == "Be strict."


def test_bad_judgments_are_refused_with_the_field(store: AnnotationStore) -> None:
    cases = {
        "grade": human("ann", "q1", "d1", 4),
        "annotator": human(" ", "q1", "d1", 1),
        "doc_id": human("ann", "q1", "d9", 1),
        "span": human("ann", "q1", "d1", 1, span=Span(start=5, end=500)),
    }
    for field, judgment in cases.items():
        with pytest.raises(AnnotationError, match=f"^{field}:"):
            store.judge("demo", judgment)
    with pytest.raises(AnnotationError, match="already exists"):
        store.create_project(Project(name="demo", corpus="x"), QUERIES)
    with pytest.raises(AnnotationError, match="query id 'q1' appears more than once"):
        store.create_project(Project(name="other", corpus="x"), [*QUERIES, ("q1", "again")])
    assert store.judgments("demo") == []


def test_positions_survive_reopening(store: AnnotationStore) -> None:
    store.set_position("demo", "ann", Position(query_id="q2", doc_id="d5"))
    store.judge("demo", human("ann", "q2", "d5", 2))
    store.close()
    reopened = AnnotationStore(store.path)
    assert reopened.position("demo", "ann") == Position(query_id="q2", doc_id="d5")
    assert reopened.position("demo", "other") is None
    assert [item.grade for item in reopened.judgments("demo")] == [2]


def test_export_import_round_trips_exactly(store: AnnotationStore, tmp_path: Path) -> None:
    store.put_model_judgment("demo", model("q1", "d1", 0.75))
    store.put_model_judgment("demo", model("q1", "d2", None))
    store.judge("demo", human("ann", "q1", "d1", 2, note="note with \"quotes\" and ünïcode",
                              span=Span(start=11, end=13)))
    store.judge("demo", human("bob", "q1", "d1", 1))
    store.judge("demo", human("ann", "q2", "d4", 0))
    exported = jsonl_text(store, "demo")
    records = [json.loads(line) for line in exported.splitlines()]
    [first] = [record for record in records if record["type"] == "judgment" and record["annotator"] == "ann"
               and record["doc_id"] == "d1"]
    assert first["span"]["text"] == "d1" and first["query"] == "first query"
    assert first["model"]["p_true"] == 0.75 and first["model"]["reasoning"] == "thinking about d1"
    assert qrels_text(store, "demo", "ann") == "q1 0 d1 2\nq2 0 d4 0\n"

    elsewhere = AnnotationStore(tmp_path / "elsewhere.sqlite3")
    assert import_jsonl(elsewhere, exported) == "demo"
    assert jsonl_text(elsewhere, "demo") == exported
    # Importing again changes nothing; a newer judgment from elsewhere replaces the older one.
    import_jsonl(elsewhere, exported)
    assert jsonl_text(elsewhere, "demo") == exported
    elsewhere.judge("demo", human("ann", "q1", "d1", 3))
    import_jsonl(store, jsonl_text(elsewhere, "demo"))
    assert [item.grade for item in store.judgments("demo", annotator="ann", query_id="q1")] == [3]


def test_the_export_carries_the_models_belief_probes_and_imports_them_back(store: AnnotationStore,
                                                                          tmp_path: Path) -> None:
    probes = (BeliefPoint(tokens=0, offset=0, score=0.2, distribution=(0.8, 0.2)),
              BeliefPoint(tokens=64, offset=37, score=0.71, distribution=(0.29, 0.71)))
    judged = model("q1", "d1", 0.75)
    store.put_model_judgment("demo", dataclasses.replace(judged, outcome=dataclasses.replace(judged.outcome,
                                                                                             belief=probes)))
    exported = jsonl_text(store, "demo")
    [record] = [record for record in map(json.loads, exported.splitlines()) if record.get("model")]
    assert [BeliefPoint.from_fields(point) for point in record["model"]["event"]["belief"]] == list(probes)
    elsewhere = AnnotationStore(tmp_path / "elsewhere.sqlite3")
    import_jsonl(elsewhere, exported)
    assert elsewhere.model_judgments("demo")["q1", "d1"].outcome.belief == probes
    assert jsonl_text(elsewhere, "demo") == exported


def test_bad_imports_name_the_line_and_write_nothing(store: AnnotationStore, tmp_path: Path) -> None:
    lines = jsonl_text(store, "demo").splitlines()
    target = AnnotationStore(tmp_path / "target.sqlite3")
    broken = {
        "upload.jsonl: line 2: not JSON": [lines[0], "{oops"],
        "upload.jsonl: line 1: the first line must be the project": lines[1:],
        "upload.jsonl: line 2: field 'text' must be str": [lines[0], json.dumps({"type": "query", "query_id": "x"})],
        "upload.jsonl: line 2: unknown type 'vote'": [lines[0], json.dumps({"type": "vote"})],
        "doc_id: 'nope' is not a candidate": [*lines, json.dumps({
            "type": "judgment", "query_id": "q1", "doc_id": "nope", "annotator": "a", "grade": 1, "note": "",
            "span": None, "judged_at": "2026-01-01"})],
    }
    for message, text in broken.items():
        with pytest.raises(AnnotationError, match=message):
            import_jsonl(target, "\n".join(text), source="upload.jsonl")
    assert target.project_names() == []


def test_agreement_with_the_model_matches_hand_computed_values(store: AnnotationStore) -> None:
    grades = {("q1", "d1"): 0, ("q1", "d2"): 1, ("q1", "d3"): 2, ("q2", "d4"): 3, ("q2", "d5"): 2, ("q2", "d6"): 0}
    p_true = {("q1", "d1"): 0.1, ("q1", "d2"): 0.65, ("q1", "d3"): 0.85, ("q2", "d4"): 0.3, ("q2", "d5"): 0.95,
              ("q2", "d6"): 0.25}
    judgments = [human("ann", query_id, doc_id, grade) for (query_id, doc_id), grade in grades.items()]
    models = {key: model(*key, p) for key, p in p_true.items()}
    models["q2", "d7"] = model("q2", "d7", None)  # a failed model judgment is left out, not scored 0.5
    result = model_agreement(judgments, models, annotator="ann", threshold=0.5, relevant_from=2)
    # Human relevant (>= 2): 0 0 1 1 1 0; model (p >= 0.5): 0 1 1 0 1 0.
    assert result.confusion == ((2, 1), (1, 2))
    assert result.kappa == pytest.approx(1 / 3)  # p_o = 4/6, p_e = 1/2
    assert [(item.query_id, item.items) for item in result.per_query] == [("q1", 3), ("q2", 3)]
    assert [item.agreement for item in result.per_query] == pytest.approx([2 / 3, 2 / 3])
    assert [item.kappa for item in result.per_query] == pytest.approx([0.4, 0.4])  # p_o = 2/3, p_e = 4/9
    assert [grade for grade, _, _ in result.score_by_grade] == [0, 1, 2, 3]
    assert [count for _, count, _ in result.score_by_grade] == [2, 1, 2, 1]
    assert [mean for _, _, mean in result.score_by_grade] == pytest.approx([0.175, 0.65, 0.9, 0.3])
    bins = [(item.low, item.count, item.mean_p_relevant, item.share_relevant) for item in result.calibration]
    assert [value for row in bins for value in row] == pytest.approx(
        [0.0, 1, 0.1, 0.0, 0.2, 2, 0.275, 0.5, 0.6, 1, 0.65, 0.0, 0.8, 2, 0.9, 1.0])
    everyone_agrees = model_agreement(judgments[:1], models, annotator="ann", threshold=0.5, relevant_from=2)
    assert everyone_agrees.kappa is None  # undefined on one item, not a made-up number


def test_with_nothing_to_compare_the_agreement_says_why() -> None:
    judgments = [human("ann", "q1", doc_id, 2) for doc_id in ("d1", "d2", "d3")]
    failed = {("q1", "d3"): model("q1", "d3", None)}
    waiting = model_agreement(judgments, failed, annotator="ann", threshold=0.5, relevant_from=2)
    assert waiting.describe(threshold=0.5, relevant_from=2) == (
        "on no documents yet: of the 3 you graded, the model has not judged 2 yet (it judges in rank order; wait, "
        "or move on) and it failed to judge 1")
    nobody = model_agreement([], failed, annotator="ann", threshold=0.5, relevant_from=2)
    assert nobody.describe(threshold=0.5, relevant_from=2) == "on no documents yet: you have not graded any"


def graded(query_id: str, doc_id: str, distribution: tuple[float, ...]) -> ModelJudgment:
    return model_judgment(query_id, "demo", Graded.measured(
        tuple(math.log(p) if p else -math.inf for p in distribution), reranker="assessor", doc_id=doc_id,
        passage_id=f"{doc_id}#0", reasoning="M: fits.", tokens=9, end_reason="grade", forced=False,
        truncated_passage=False))


def test_agreement_with_a_graded_model_compares_the_grades_themselves() -> None:
    grades = {("q1", "d1"): 0, ("q1", "d2"): 1, ("q2", "d3"): 2, ("q2", "d4"): 3}
    shares = {("q1", "d1"): (0.7, 0.1, 0.1, 0.1), ("q1", "d2"): (0.1, 0.2, 0.6, 0.1),
              ("q2", "d3"): (0.0, 0.2, 0.5, 0.3), ("q2", "d4"): (0.0, 0.0, 0.2, 0.8)}
    judgments = [human("ann", *key, grade) for key, grade in grades.items()]
    models = {key: graded(*key, distribution) for key, distribution in shares.items()}
    result = model_agreement(judgments, models, annotator="ann", threshold=0.5, relevant_from=2)
    # You 0 1 2 3, the model 0 2 2 3. Quadratic weights (i - j)^2: observed Σ w·O = 1 (the pair 1, 2); expected
    # from the margins (you one of each, the model 1, 0, 2, 1) Σ w·E = (14 + 2·6 + 14) / 4 = 10; kappa = 1 - 1/10.
    assert result.graded and result.kappa == pytest.approx(0.9)
    assert result.alpha is not None and 0.8 < result.alpha < 1
    assert result.labels == ("0", "1", "2", "3") and result.confusion[1] == (0, 0, 1, 0)
    assert [mean for _, _, mean in result.score_by_grade] == pytest.approx([0.6, 1.7, 2.1, 2.8])  # expected grades
    # Calibration on the measured P(grade >= 2): 0.2, 0.7, 0.8, 1.0 against you: 0, 0, 1, 1.
    assert [(item.count, item.share_relevant) for item in result.calibration] == [(1, 0.0), (1, 0.0), (2, 1.0)]
    same = model_agreement(judgments, {key: graded(*key, tuple(float(g == grade) for g in range(4)))
                                       for key, grade in grades.items()}, annotator="ann", threshold=0.5,
                           relevant_from=2)
    assert (same.kappa, same.alpha) == (pytest.approx(1.0), pytest.approx(1.0))
    assert "grade for grade: Cohen's kappa (quadratic weights) 0.900" in result.describe(threshold=0.5,
                                                                                          relevant_from=2)


def test_a_graded_project_needs_the_assessor_s_scale_and_can_be_blind(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    with pytest.raises(AnnotationError, match=r"^grades: the assessor grades on a scale of 4 grades"):
        store.create_project(Project(name="two", corpus="sample", grades=("no", "yes"), reranker="assessor"), QUERIES)
    with pytest.raises(AnnotationError, match=r"^model: choose a reranker that judges each document \(rank1, "
                                              r"assessor\), got 'reasonrank'"):
        store.create_project(Project(name="listwise", corpus="sample", reranker="reasonrank"), QUERIES)
    store.create_project(Project(name="p", corpus="sample", depth=3, reranker="assessor", blind=True), QUERIES)
    assert store.project("p").reranker == "assessor" and store.project("p").blind
    bench = Workbench.open(store, "p", "ann", passages, model="m")
    bench.apply("q1", Reasoning(reranker="assessor", doc_id="fi-d1", text="M: it fits"))
    for doc_id, logprobs in (("fi-d1", (-3.0, -2.0, -0.2, -2.0)), ("fi-d2", (-0.1, -3.0, -3.0, -3.0))):
        bench.apply("q1", Graded.measured(logprobs, reranker="assessor", doc_id=doc_id, passage_id="p",
                                          reasoning="M: it fits", tokens=3, end_reason="grade", forced=False,
                                          truncated_passage=False))
    models = bench.model_judgments()
    assert models["fi-d1"].grade == 2 and models["fi-d1"].expected_grade == pytest.approx(
        sum(g * p for g, p in enumerate(models["fi-d1"].distribution)))
    assert [item.passage.doc_id for item in bench.unjudged_by_model()] == ["fi-d3"]
    # Blind: nothing of the model's judgment shows before the annotator's own grade, then all of it.
    assert "hidden until you grade" in render_model(bench) and "M: it fits" not in render_model(bench)
    assert "hidden" in render_list(bench) and "2 (" not in render_list(bench)
    bench.grade(1)  # fi-d1, graded 1 where the model says 2: they disagree
    bench.move(-1)
    assert "grade 2 (p " in render_model(bench) and "M: it fits" in render_model(bench)
    assert bench.disagrees(bench.judgments()["fi-d1"], models["fi-d1"])
    copy = AnnotationStore(tmp_path / "copy.sqlite3")
    import_jsonl(copy, jsonl_text(store, "p"))
    assert jsonl_text(copy, "p") == jsonl_text(store, "p")  # grades and distributions round-trip
    assert copy.model_judgments("p")["q1", "fi-d1"] == store.model_judgments("p")["q1", "fi-d1"]


def test_an_annotation_file_from_before_graded_models_opens_with_rank1(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE projects (name TEXT PRIMARY KEY, corpus TEXT NOT NULL, guideline TEXT NOT NULL,
                guideline_as_instruction INTEGER NOT NULL, grades TEXT NOT NULL, depth INTEGER NOT NULL,
                created_at TEXT NOT NULL);
            CREATE TABLE model_judgments (project TEXT NOT NULL, query_id TEXT NOT NULL, doc_id TEXT NOT NULL,
                model TEXT NOT NULL, verdict INTEGER, p_true REAL, reasoning TEXT NOT NULL, forced INTEGER NOT NULL,
                end_reason TEXT NOT NULL, failure TEXT NOT NULL, PRIMARY KEY (project, query_id, doc_id));
            INSERT INTO projects VALUES ('old', 'sample', '', 0, '["no", "yes"]', 5, '2026-01-01');
            INSERT INTO model_judgments VALUES ('old', 'q1', 'd1', 'demo', 1, 0.8, 'r', 0, 'verdict', '');""")
    store = AnnotationStore(path)
    assert store.project("old").reranker == "rank1" and not store.project("old").blind
    assert store.model_judgments("old")["q1", "d1"].p_true == 0.8


def test_agreement_between_annotators_matches_hand_computed_values() -> None:
    first, second = [0, 1, 2, 3, 3], [0, 2, 2, 3, 1]
    keys = [("q1", "d1"), ("q1", "d2"), ("q1", "d3"), ("q2", "d4"), ("q2", "d5")]
    judgments = [human(name, *key, grade) for name, grades in (("ann", first), ("bob", second))
                 for key, grade in zip(keys, grades, strict=True)]
    judgments.append(human("cat", "q1", "d1", 0))
    result = annotator_agreement(judgments, relevant_from=2)
    pair = next(item for item in result.pairs if (item.first, item.second) == ("ann", "bob"))
    assert pair.items == 5
    assert pair.kappa == pytest.approx(0.36 / 0.76)  # p_o = 3/5, p_e = 6/25
    assert pair.binary_kappa == pytest.approx(0.08 / 0.48)  # p_o = 3/5, p_e = 13/25
    # Ordinal alpha by hand: coincidences o_12 = o_13 = 1 each way, n = (2, 2, 3, 3) over grades 0-3 plus cat's 0
    # on d1 (which changes it); without cat: 1 - 9 * 73 / 1550.
    without_cat = annotator_agreement(judgments[:-1], relevant_from=2)
    assert without_cat.alpha == pytest.approx(1 - 9 * 73 / 1550)
    assert result.alpha is not None and result.alpha != without_cat.alpha
    assert [item.query_id for item in result.per_query] == ["q1", "q2"]
    lone = annotator_agreement([human("ann", "q1", "d1", 3), human("bob", "q1", "d1", 3)], relevant_from=2)
    assert lone.alpha is None and lone.pairs[0].kappa is None


def test_existing_qrels_are_compared_like_an_annotator() -> None:
    reference = reference_judgments({"q1": {"d1": 0, "d2": 2, "d3": 1}})
    assert [(item.annotator, item.doc_id, item.grade) for item in reference] == [
        (REFERENCE, "d1", 0), (REFERENCE, "d2", 2), (REFERENCE, "d3", 1)]
    mine = [human("ann", "q1", "d1", 0), human("ann", "q1", "d2", 2), human("ann", "q1", "d3", 2)]
    [pair] = annotator_agreement([*mine, *reference], relevant_from=2).pairs
    assert (pair.first, pair.second, pair.items) == ("ann", REFERENCE, 3)
    assert pair.kappa == pytest.approx((2 / 3 - 3 / 9) / (1 - 3 / 9))  # p_o = 2/3; p_e = (1 + 0 + 2) / 9
    assert pair.binary_kappa == pytest.approx((2 / 3 - 4 / 9) / (1 - 4 / 9))  # 0 1 1 vs 0 1 0: p_e = 4/9


KILL_WRITER = """
import sys
from pathlib import Path
from search.annotation.store import AnnotationStore, HumanJudgment
store = AnnotationStore(Path(sys.argv[1]))
for number in range(100_000):
    store.judge("demo", HumanJudgment(annotator=f"a{number}", query_id="q1", doc_id="d1", grade=number % 4))
    print(number, flush=True)
"""


def test_a_killed_writer_loses_no_acknowledged_judgment(store: AnnotationStore) -> None:
    writer = subprocess.Popen([sys.executable, "-c", KILL_WRITER, str(store.path)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)})
    assert writer.stdout is not None
    acknowledged = -1
    deadline = time.monotonic() + 60
    while acknowledged < 200 and time.monotonic() < deadline:
        acknowledged = int(writer.stdout.readline())
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert acknowledged >= 200
    kept = {item.annotator for item in AnnotationStore(store.path).judgments("demo")}
    assert {f"a{number}" for number in range(acknowledged + 1)} <= kept


def passages(corpus: str, query: str, depth: int) -> list[Candidate]:
    """A first stage for the workbench: ``depth`` documents, the last with hostile text."""
    if corpus != "sample":
        raise AnnotationError(f"corpus: {corpus!r} is not loaded")
    texts = [f"{query} passage {rank}" for rank in range(1, depth)] + [HOSTILE]
    return [rerank_candidate(StoredCandidate(query_id="", doc_id=f"{query[:2]}-d{rank}", rank=rank, passage_id="p",
                                             title=f"<b>{rank}</b>", passage=text))
            for rank, text in enumerate(texts, start=1)]


HOSTILE = '<img src=x onerror="alert(1)"> & <script>alert(2)</script>'


def test_the_workbench_moves_grades_filters_and_returns_where_it_was(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="p", corpus="sample", depth=4), QUERIES, {"q1": {"fi-d1": 3}})
    bench = Workbench.open(store, "p", "ann", passages, model="m")
    assert [item.doc_id for item in bench.candidates()] == ["fi-d1", "fi-d2", "fi-d3", "fi-d4"]
    assert "<th>existing qrels</th>" in render_list(bench) and "<td>3</td>" in render_list(bench)
    bench.grade(2, note="good")
    bench.grade(0)
    assert bench.doc_id == "fi-d3"  # each grade moves on
    bench.apply("q1", Reasoning(reranker="rank1", doc_id="fi-d1", text="think"))
    assert bench.live == {"fi-d1": "think"}
    for doc_id, p_true in (("fi-d1", 0.2), ("fi-d2", 0.9)):
        bench.apply("q1", Judged(reranker="rank1", doc_id=doc_id, passage_id="p", verdict=p_true > 0.5, p_true=p_true,
                                 logprob_true=0.0, logprob_false=0.0, reasoning="r", tokens=1, end_reason="verdict",
                                 forced=False, truncated_passage=False))
    assert bench.live == {} and [item.passage.doc_id for item in bench.unjudged_by_model()] == ["fi-d3", "fi-d4"]
    bench.filter = "disagree"  # ann: 2 (relevant from 2) vs 0.2; 0 vs 0.9: both disagree
    bench.move(-1)
    assert bench.doc_id == "fi-d2"
    bench.move(-1)
    assert bench.doc_id == "fi-d1"
    bench.filter = "unjudged"
    bench.move(1)
    assert bench.doc_id == "fi-d3"
    bench.move_query(1)
    assert (bench.query.query_id, bench.doc_id) == ("q2", "se-d1")

    back = Workbench.open(store, "p", "ann", passages, model="m")
    assert (back.query.query_id, back.doc_id) == ("q2", "se-d1")
    back.move_query(-1)
    assert [item.doc_id for item in back.candidates()] == ["fi-d1", "fi-d2", "fi-d3", "fi-d4"]  # kept, not re-found
    assert set(back.model_judgments()) == {"fi-d1", "fi-d2"}
    assert Workbench.open(store, "p", "ann", passages, model="other").model_judgments() == {}

    other = Workbench.open(store, "p", "bob", passages)
    other.move_query(-1)
    other.grade(1)
    assert other.doc_id == "fi-d2" and [item.annotator for item in back.others()["fi-d1"]] == ["bob"]
    with pytest.raises(AnnotationError, match=r"^grade: give this document a grade first"):
        other.annotate(note="n", span=None)


def test_the_workbench_shows_untrusted_text_as_text(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="p", corpus="sample", depth=2), QUERIES)
    bench = Workbench.open(store, "p", "<b>ann</b>", passages)
    bench.move(1)
    bench.grade(1, note="<script>alert(3)</script>", span=Span(start=0, end=4))
    bench.apply("q1", Failed(reranker="rank1", doc_id="fi-d2", passage_id="p", reason="<i>bad</i>",
                             reasoning="<svg onload=x>"))
    assert [item.passage.doc_id for item in bench.unjudged_by_model()] == ["fi-d1", "fi-d2"]  # failed: again
    bench.show_others = True
    pages = [render_document(bench), render_model(bench), render_list(bench), render_progress(bench)]
    html = "".join(pages)
    for hostile in ("<img", "<script", "<b>2", "<i>bad", "<svg", "<b>ann"):
        assert hostile not in html
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in html.replace("<mark>", "").replace("</mark>", "")
    with pytest.raises(AnnotationError, match=r"^corpus: 'elsewhere' is not loaded"):
        store.create_project(Project(name="q", corpus="elsewhere"), QUERIES)
        Workbench.open(store, "q", "ann", passages)


def test_moving_on_keeps_a_changed_note_and_refuses_to_drop_an_unsaved_one(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="p", corpus="sample", depth=3), QUERIES)
    bench = Workbench.open(store, "p", "ann", passages)
    with pytest.raises(AnnotationError, match=r"^note: grade this document to keep its note"):
        bench.keep(note="typed, not graded", span=None)
    bench.grade(1)
    bench.move(-1)
    bench.keep(note="added later", span=Span(start=0, end=5))
    [kept] = store.judgments("p")
    assert (kept.grade, kept.note, kept.span) == (1, "added later", Span(start=0, end=5))
    bench.keep(note="added later", span=Span(start=0, end=5))
    assert len(store.history("p", "ann", "q1", kept.doc_id)) == 2  # unchanged: nothing written


def evidence_event(doc_id: str, title: str, text: str, deltas: list[float]) -> Evidence:
    """Evidence as the reranker gives it: over title, space, text, the title a sentence of its own."""
    contents = f"{title} {text}"
    spans = split_sentences(contents, title=title)
    return Evidence(reranker="rank1", doc_id=doc_id, passage=contents, method="ablation", score=0.5,
                    sentences=tuple(SentenceEffect(start=span.start, end=span.end, delta=delta, text=span.text)
                                    for span, delta in zip(spans, deltas, strict=True)),
                    quotes=(), faithfulness=Faithfulness(top_removed=0.2, random_removed=0.4, sentences_removed=1,
                                                         supported=True),
                    cost=EvidenceCost(requests=4, prefill_tokens=100, cached_tokens=0, seconds=0.1))


def test_the_model_s_evidence_is_kept_in_the_passage_s_offsets_and_taken_as_a_span(tmp_path: Path) -> None:
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    store.create_project(Project(name="p", corpus="sample", depth=2), QUERIES)
    text = "Moons orbit planets. Venus has none. Mars has two."
    stored = StoredCandidate(query_id="", doc_id="m1", rank=1, passage_id="p", title="Moons", passage=text)
    bench = Workbench.open(store, "p", "ann", lambda corpus, query, depth: [rerank_candidate(stored)])
    # The title, then the three sentences: the second supports the score most, the third counts against it.
    bench.apply("q1", evidence_event("m1", "Moons", text, [0.3, 0.05, 0.4, -0.2]))
    kept = bench.model_evidence()["m1"]
    assert [(text[item.start:item.end], item.delta) for item in kept.sentences] == [
        ("Moons orbit planets.", 0.05), ("Venus has none.", 0.4), ("Mars has two.", -0.2)]  # the title is left out
    assert kept.span == Span(start=21, end=36) and text[21:36] == "Venus has none."
    assert AnnotationStore(tmp_path / "annotations.sqlite3").model_evidence("p") == {("q1", "m1"): kept}
    bench.apply("q1", evidence_event("m1", "Moons", text, [0.3, -0.1, 0.0, -0.2]))
    assert bench.model_evidence()["m1"].span is None  # nothing supports the score: no span to take
    panel = render_model(bench)
    assert "no sentence of the passage supports" in panel


def test_evidence_overlap_is_token_f1_per_annotator_and_per_query() -> None:
    passage = "alpha beta gamma delta"
    model = ModelEvidence(query_id="q1", doc_id="d1", model="m",
                          sentences=(EvidenceSentence(start=11, end=22, delta=0.3),))  # gamma delta
    judgments = [human("ann", "q1", "d1", 2, span=Span(start=6, end=16)),  # beta gamma: F1 = 2·1 / (2 + 2)
                 human("bob", "q1", "d1", 1, span=Span(start=11, end=22)),  # the same words: 1
                 human("cy", "q1", "d1", 1)]  # no span: not counted
    by_annotator, by_query = evidence_overlap(judgments, {("q1", "d1"): model}, {("q1", "d1"): passage})
    assert [(item.who, item.documents, item.f1) for item in by_annotator] == [("ann", 1, 0.5), ("bob", 1, 1.0)]
    assert [(item.who, item.documents, item.f1) for item in by_query] == [("q1", 2, 0.75)]
    assert token_f1(passage, Span(start=0, end=5), Span(start=17, end=22)) == 0.0


def test_the_agreement_plots_read_the_columns_their_frames_have() -> None:
    """Both plots were always empty: they asked for a column the frames did not have."""
    judgments = [human("ann", "q1", f"d{number}", number % 2) for number in range(6)]
    models = {("q1", f"d{number}"): model("q1", f"d{number}", 0.1 + 0.15 * number) for number in range(6)}
    versus = model_agreement(judgments, models, annotator="ann", threshold=0.5, relevant_from=1)
    frames = agreement_frames(versus)
    for plot, frame in zip(agreement_plots(), frames, strict=True):
        assert {plot.x, plot.y} <= set(frame.columns) and len(frame) > 0
        assert frame[plot.y].notna().all()


LEGACY_FILE = Path(__file__).parent / "data" / "annotations-before-events.sqlite3"
"""A project file written by the version before model judgments were kept as events (one column per field):
rank1 judgments (a verdict, a forced one, a failure), an assessor grade, a human judgment with a span."""


def test_a_file_with_model_judgments_in_columns_opens_and_is_migrated_once(tmp_path: Path) -> None:
    path = shutil.copy(LEGACY_FILE, tmp_path / "annotations.sqlite3")
    store = AnnotationStore(Path(path))
    models = store.model_judgments("moons")
    mercury, venus, mars = models["q1", "mercury"], models["q1", "venus"], models["q1", "mars"]
    assert (mercury.verdict, mercury.p_true, mercury.forced, mercury.end_reason, mercury.reasoning) == (
        True, 0.8, False, "verdict", "It says no moon.")
    assert isinstance(mercury.outcome, Judged) and mercury.outcome.passage_id == "mercury#0"
    assert math.exp(mercury.outcome.logprob_true) == pytest.approx(0.8)
    assert (venus.p_true, venus.forced, venus.end_reason) == (0.3, True, "budget")
    assert not mars.measured and mars.failure == "server gone" and isinstance(mars.outcome, Failed)
    grade = store.model_judgments("graded")["q1", "mercury"]
    assert grade.reranker == "assessor" and grade.grade == 2
    assert grade.distribution == pytest.approx((0.1, 0.2, 0.6, 0.1)) and grade.expected_grade == pytest.approx(1.7)
    assert store.judgments("moons")[0].span == Span(start=0, end=20)
    exported = jsonl_text(store, "moons")
    store.close()
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "model_judgments" not in tables and "model_outcomes" in tables
    again = AnnotationStore(Path(path))  # migrated once: opening again changes nothing
    assert again.model_judgments("moons") == models and jsonl_text(again, "moons") == exported
    again.close()


def test_an_export_of_the_previous_version_imports_its_model_judgments(tmp_path: Path) -> None:
    """Exports kept model judgments as fields; they come in as outcome events."""
    old = AnnotationStore(Path(shutil.copy(LEGACY_FILE, tmp_path / "old.sqlite3")))
    lines = [json.loads(line) for line in jsonl_text(old, "moons").splitlines()]
    old.close()
    for line in lines:
        if line["type"] == "candidate" and line["model"]:
            del line["model"]["event"]  # as the previous version wrote it
    store = AnnotationStore(tmp_path / "new.sqlite3")
    name = import_jsonl(store, "".join(json.dumps(line) + "\n" for line in lines))
    models = store.model_judgments(name)
    assert models["q1", "mercury"].p_true == 0.8 and models["q1", "mars"].failure == "server gone"
    store.close()


def test_the_annotate_tab_s_handlers_run_without_a_browser(library: CorpusLibrary, tmp_path: Path) -> None:
    """build_annotate_tab only lays the tab out and wires AnnotateTab's methods: here they are called directly."""
    store = AnnotationStore(tmp_path / "annotations.sqlite3")
    tab = AnnotateTab(AnnotationContext(store=store, library=library, reranker_for=lambda key, kind: None, top_k=3))
    listed = tab.create_project("moons", "sample_corpus", None, "q1\twhich planets have no moons", None, "", False,
                                "no, yes", 3, "rank1", False)
    assert listed["value"] == "moons"
    ada, bob = gr.Request(session_hash="ada"), gr.Request(session_hash="bob")
    with pytest.raises(gr.Error, match="Open a project first"):
        tab.bench_of(ada)
    progress, document, note, start, end = tab.open_project("ada", "moons", "", "rank1", ada)[:5]
    assert "ada · project moons · query 1 of 1 · 0 of 3 judged here" in progress
    assert "es-" in document and note == "" and (start, end) == (-1, -1)
    first = tab.bench_of(ada).doc_id
    shown = {"query_id": "q1", "doc_id": first, "seq": 1}  # what the page's script names: the document shown
    tab.grade(1)("names no moon", -1, -1, shown, ada)
    assert [(item.doc_id, item.grade, item.note) for item in store.judgments("moons")] == [(first, 1, "names no moon")]
    with pytest.raises(gr.Error, match="Select some text"):
        tab.mark("", -1, -1, shown, ada)
    qrels, records = (Path(name) for name in tab.export(ada))
    assert qrels.read_text(encoding="utf-8") == f"q1 0 {first} 1\n" and records.read_text(encoding="utf-8")
    tab.forget(ada)
    with pytest.raises(gr.Error, match="Open a project first"):
        tab.bench_of(ada)
    with pytest.raises(gr.Error, match="Open a project first"):
        tab.bench_of(bob)
    store.close()
