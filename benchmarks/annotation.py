"""What an annotator waits for: one committed judgment, one keypress in the workbench (grade, move on, re-render),
and, for a project of 50 queries x 20 candidates judged by 3 annotators, export, import and agreement.

    .venv/bin/python benchmarks/annotation.py
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from common import latency_ms

from search.annotation.agreement import annotator_agreement, model_agreement
from search.annotation.exchange import import_jsonl, jsonl_text
from search.annotation.store import (
    AnnotationStore,
    HumanJudgment,
    ModelJudgment,
    Project,
    StoredCandidate,
)
from search.annotation.workbench import Workbench
from ui.annotation_cards import render_document, render_list, render_model, render_progress

QUERIES, CANDIDATES, ANNOTATORS = 50, 20, ("ada", "bob", "cy")


def build(store: AnnotationStore, rng: random.Random) -> None:
    store.create_project(Project(name="bench", corpus="synthetic", depth=CANDIDATES),
                         [(f"q{number}", f"query {number}") for number in range(QUERIES)])
    for number in range(QUERIES):
        query_id = f"q{number}"
        store.add_candidates("bench", [StoredCandidate(query_id=query_id, doc_id=f"d{rank}", rank=rank,
                                                       passage_id=f"d{rank}#0", title=f"Document {rank}",
                                                       passage="words " * 120) for rank in range(CANDIDATES)])
        for rank in range(CANDIDATES):
            p_true = rng.random()
            store.put_model_judgment("bench", ModelJudgment(
                query_id=query_id, doc_id=f"d{rank}", model="m", verdict=p_true >= 0.5, p_true=p_true,
                reasoning="reasoning " * 200, forced=False, end_reason="verdict"))


def main() -> None:
    rng = random.Random(7)
    folder = Path(tempfile.mkdtemp(prefix="annotation-bench-"))
    store = AnnotationStore(folder / "annotations.sqlite3")
    build(store, rng)
    keys = [(annotator, f"q{number}", f"d{rank}") for number in range(QUERIES) for rank in range(CANDIDATES)
            for annotator in ANNOTATORS]
    median, p95 = latency_ms(lambda key: store.judge("bench", HumanJudgment(
        annotator=key[0], query_id=key[1], doc_id=key[2], grade=rng.randrange(4), note="a note")), keys)
    print(f"judge (one committed transaction, WAL, synchronous=FULL): median {median:.2f} ms, p95 {p95:.2f} ms "
          f"over {len(keys)} judgments")

    bench = Workbench.open(store, "bench", "ada", lambda *_: [], model="m")

    def keypress(grade: int) -> None:
        if bench.doc_id == f"d{CANDIDATES - 1}":
            bench.move_query(1)
        bench.grade(grade)
        render_progress(bench), render_document(bench), render_model(bench), render_list(bench)

    median, p95 = latency_ms(keypress, [rng.randrange(4) for _ in range(300)])
    print(f"workbench keypress (grade, move on, render document, model panel and list): median {median:.2f} ms, "
          f"p95 {p95:.2f} ms")

    start = time.perf_counter()
    exported = jsonl_text(store, "bench")
    export_s = time.perf_counter() - start
    elsewhere = AnnotationStore(folder / "elsewhere.sqlite3")
    start = time.perf_counter()
    import_jsonl(elsewhere, exported)
    import_s = time.perf_counter() - start
    same = jsonl_text(elsewhere, "bench") == exported
    print(f"export {len(keys)} judgments + {QUERIES * CANDIDATES} candidates: {export_s:.2f} s, "
          f"{len(exported.encode()) / 2**20:.1f} MiB; import: {import_s:.2f} s; round trip identical: {same}")

    start = time.perf_counter()
    judgments, models = store.judgments("bench"), store.model_judgments("bench")
    versus = model_agreement(judgments, models, annotator="ada", threshold=0.5, relevant_from=2)
    between = annotator_agreement(judgments, relevant_from=2)
    print(f"agreement (model vs ada on {versus.items}, alpha over {len(between.annotators)} annotators): "
          f"{time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
