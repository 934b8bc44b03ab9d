"""Batch reranking of run files: the pure logic (inputs, resume, report) over a scripted engine, then real
`python -m search rerank-run` processes against real vLLM servers on loopback: killed and resumed, and spread
over two servers one of which dies mid-batch."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write
from scripted import Judge, ScriptedEngine, grading, reversing
from servers import CuttingProxy, VLLMServer, finished_requests, running_requests
from transformers import AutoTokenizer

from search.batch import (
    BatchInputs,
    BatchSpec,
    BatchStore,
    BatchStoreError,
    load_batch,
    run_batch,
    view_batch,
    write_outputs,
)
from search.batch.report import comparison, grade_agreement
from search.batch.store import STATE_FILE, Kept
from search.corpus import Corpus, CorpusError, Document
from search.engines.base import GenerationChunk, GenerationRequest
from search.engines.openai_engine import spanning_stop
from search.evaluation import retrieve_run
from search.rerank.assessor import AssessorReranker
from search.rerank.events import Evidence, Judged
from search.rerank.rank1 import STOP_FALSE, STOP_TRUE, Rank1Reranker, VerdictTokens
from search.rerank.reasonrank import ReasonRankReranker
from search.retrieval.first_stage import FirstStage
from search.settings import REPO_ROOT, SAMPLE_CORPUS, RerankSettings
from search.trec import load_run, read_run, write_trec_run

# ---------------------------------------------------------------------------------------------------------
# Inputs


def test_a_run_file_is_read_by_score_and_bad_lines_are_named(tmp_path: Path) -> None:
    path = write(tmp_path / "run.trec", "q1 Q0 a 2 1.5 t\nq1 Q0 b 1 2.5 t\nq1 Q0 c 3 1.5 t\nq1 Q0 a 9 0.1 t\n"
                                        "\nq2 Q0 x 1 1 t\nq2 Q0 y one 0.5 t\nq3 Q0 z 1\n")
    run, problems = load_run(path)
    assert list(run["q1"]) == ["b", "a", "c"]  # by score; the tie by the file's rank; a's second line ignored
    assert run["q1"]["a"] == 1.5 and list(run["q2"]) == ["x"]
    assert [(problem.line, problem.message.split(" ")[0]) for problem in problems] == [(7, "rank"), (8, "expected")]
    with pytest.raises(CorpusError, match=r"run.trec:7: rank 'one' is not an integer"):
        read_run(path)


def corpus_of(*doc_ids: str) -> Corpus:
    return Corpus(source=Path("corpus"), documents=tuple(
        Document(doc_id=doc_id, title=f"Title {doc_id}", text=f"text of {doc_id}") for doc_id in doc_ids))


def test_a_batch_takes_each_querys_top_k_and_names_what_the_corpus_lacks(tmp_path: Path) -> None:
    queries = write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "first"}\n{"_id": "q2", "text": "second"}\n')
    run = write(tmp_path / "run.trec", "q1 Q0 a 1 3 t\nq1 Q0 b 2 2 t\nq1 Q0 c 3 1 t\nq2 Q0 ghost 1 1 t\n"
                                       "q9 Q0 a 1 1 t\n")
    with pytest.raises(CorpusError) as refused:
        load_batch(corpus_of("a", "b", "c"), queries, run, 2)
    assert "query 'q2': document 'ghost' is not in the corpus" in str(refused.value)
    assert "query 'q9' is not in the queries" in str(refused.value)
    inputs = load_batch(corpus_of("a", "b", "c"), queries, run, 2, skip_bad=True)
    assert [item.query.query_id for item in inputs.queries] == ["q1"] and len(inputs.problems) == 2
    assert [(c.passage.doc_id, c.rank, c.passage.contents) for c in inputs.queries[0].candidates] == [
        ("a", 1, "Title a text of a"), ("b", 2, "Title b text of b")]
    assert [c.score for c in inputs.queries[0].candidates] == [3.0, 2.0]


# ---------------------------------------------------------------------------------------------------------
# Resume and report, on a scripted engine


@pytest.fixture(scope="module")
def verdict(demo_model: Path) -> VerdictTokens:
    return VerdictTokens.of(AutoTokenizer.from_pretrained(demo_model))


@pytest.fixture
def small_batch(tmp_path: Path) -> tuple[Path, Path, Corpus]:
    queries = write(tmp_path / "queries.jsonl", "".join(
        json.dumps({"_id": f"q{number}", "text": f"query {number}"}) + "\n" for number in (1, 2, 3)))
    run = write(tmp_path / "run.trec", "".join(
        f"q{number} Q0 {doc_id} {rank} {10 - rank} bm25\n"
        for number in (1, 2, 3) for rank, doc_id in enumerate(("d1", "d2-good", "d3"), start=1)))
    return queries, run, corpus_of("d1", "d2-good", "d3")


def rerank(store: BatchStore, inputs: object, engine: ScriptedEngine) -> None:
    reranker = Rank1Reranker(engine, model_key="scripted", budget=8, settings=RerankSettings(),
                             cache=store.judgment_cache())
    asyncio.run(run_batch(inputs, store, reranker, concurrency=2, report=lambda progress: None))


def spec_of(inputs: object, **changes: object) -> BatchSpec:
    return BatchSpec(**{"inputs": inputs.digest(), "top_k": 3, "reranker": "rank1", "model": "scripted", "budget": 8,
                        **changes})


def kept(store: BatchStore) -> dict[tuple[str, str], Kept]:
    """The outcome each (query, document) has now."""
    return {(item.query_id, item.event.doc_id): item for item in store.kept()}


def test_a_batch_resumes_retries_failures_and_replays_what_it_had_not_recorded(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], verdict: VerdictTokens, demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    out = tmp_path / "out"
    store = BatchStore.open(out, spec_of(inputs), inputs, sources={"run": str(run)})
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    rerank(store, inputs, ScriptedEngine(tokenizer, Judge(verdict, failing=("d3",))))
    view = view_batch(store)
    assert (view.judged, view.failed, view.complete) == (6, 3, True)

    # A judgment that reached the cache but not the batch's record (the process was killed in between).
    with sqlite3.connect(out / STATE_FILE) as db:
        db.execute("DELETE FROM kept_events WHERE query_id = 'q2' AND subject = 'd1'")
    engine = ScriptedEngine(tokenizer, Judge(verdict))
    rerank(store, inputs, engine)
    prompts = [request.prompt for request in engine.requests if not request.allowed_token_ids]
    assert len(prompts) == 3 and all("text of d3\n" in prompt for prompt in prompts)  # only the failed ones
    outcomes = kept(store)
    assert outcomes["q2", "d1"].replayed and outcomes["q1", "d3"].attempts == 2
    view = view_batch(store)
    assert (view.judged, view.failed) == (9, 0)
    assert list(view.reranked_run()["q1"]) == ["d2-good", "d1", "d3"]

    with pytest.raises(BatchStoreError, match=r"top_k: 3 → 2.*same arguments to resume"):
        BatchStore.open(out, spec_of(inputs, top_k=2), inputs, sources={})
    with pytest.raises(BatchStoreError, match="the queries, run or documents differ"):
        other = load_batch(corpus_of("d1", "d2-good", "d3"), queries, run, 2)
        BatchStore.open(out, spec_of(other), other, sources={})
    # Before an engine starts: a changed top_k alone is named alone (the inputs compared at the stored cut)
    fewer = load_batch(corpus, queries, run, 2)
    with pytest.raises(BatchStoreError) as refused:
        BatchStore.refuse_other(out, spec_of(fewer, top_k=2, budget=16),
                                lambda top_k: load_batch(corpus, queries, run, top_k).digest())
    assert "(top_k: 3 → 2; budget: 8 → 16)" in str(refused.value)
    BatchStore.refuse_other(out, spec_of(inputs), lambda top_k: load_batch(corpus, queries, run, top_k).digest())


def test_a_batch_with_evidence_keeps_it_beside_each_judgment_and_resumes_without_redoing_either(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], verdict: VerdictTokens, demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    out = tmp_path / "out"
    settings = RerankSettings(evidence=True)
    spec = spec_of(inputs, options=Rank1Reranker.fingerprint(settings))
    tokenizer = AutoTokenizer.from_pretrained(demo_model)

    def explain(store: BatchStore, engine: ScriptedEngine) -> None:
        reranker = Rank1Reranker(engine, model_key="scripted", budget=8, settings=settings,
                                 cache=store.judgment_cache())
        asyncio.run(run_batch(inputs, store, reranker, concurrency=2, report=lambda progress: None))

    store = BatchStore.open(out, spec, inputs, sources={"run": str(run)})
    explain(store, ScriptedEngine(tokenizer, Judge(verdict)))
    events = [item.event for item in store.kept()]
    pairs = {(query, doc) for query in ("q1", "q2", "q3") for doc in ("d1", "d2-good", "d3")}
    kept_by_query = store.kept_by_query()
    assert {(query, event.doc_id) for query, found in kept_by_query.items() for event in found
            if isinstance(event, Judged)} == pairs
    assert {(query, event.doc_id) for query, found in kept_by_query.items() for event in found
            if isinstance(event, Evidence)} == pairs  # kept beside its judgment, not in its place
    assert len(events) == 18
    again = ScriptedEngine(tokenizer, Judge(verdict))
    explain(store, again)
    assert again.requests == []  # nothing judged or explained twice
    view = view_batch(store)
    rows = [row for query in view.queries for row in query.run.rows()]
    assert len(rows) == 9 and all(row["evidence"]["passage"] == f"Title {row['doc_id']} text of {row['doc_id']}"
                                  for row in rows)
    with pytest.raises(BatchStoreError, match=r"evidence: True → None"):
        BatchStore.open(out, spec_of(inputs), inputs, sources={})


def test_the_report_measures_before_and_after_and_writes_every_output(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], verdict: VerdictTokens, demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    qrels = {"q1": {"d2-good": 1}, "q2": {"d2-good": 2, "d1": 1}, "q9": {"x": 1}}
    store = BatchStore.open(tmp_path, spec_of(inputs), inputs, sources={"run": str(run)}, qrels=qrels)
    assert store.qrels() == {"q1": {"d2-good": 1}, "q2": {"d2-good": 2, "d1": 1}}  # the batch's queries only
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    rerank(store, inputs, ScriptedEngine(tokenizer, Judge(verdict, failing=("d3",))))
    view = view_batch(store)
    result = comparison(view, store.qrels())
    assert result.measures == ("nDCG@10", "Recall@3", "MRR@10")
    assert result.per_query["q1"]["MRR@10"] == (0.5, 1.0)
    ideal = 2 + 1 / math.log2(3)
    assert result.per_query["q2"]["nDCG@10"] == pytest.approx(((1 + 2 / math.log2(3)) / ideal, 1.0))
    assert result.after["MRR@10"] == 1.0 and result.before["MRR@10"] == 0.75

    written = {path.name for path in write_outputs(tmp_path, view, store.qrels())}
    assert written == {"run.trec", "traces.jsonl", "report.md", "metrics.json", "per_query.tsv", "gains.png",
                       "score_by_grade.png"}
    lines = [line.split() for line in (tmp_path / "run.trec").read_text().splitlines()]
    assert [(line[2], line[3]) for line in lines[:3]] == [("d2-good", "1"), ("d1", "2"), ("d3", "3")]
    assert [float(line[4]) for line in lines[:3]] == pytest.approx([0.8, 0.2, -3.0])  # failed last, below any P
    traces = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert {(trace["query_id"], trace["doc_id"]): trace["status"] for trace in traces}["q3", "d3"] == "failed"
    good = next(trace for trace in traces if trace["query_id"] == "q1" and trace["doc_id"] == "d2-good")
    assert (good["verdict"], good["p_true"], good["reasoning"], good["forced"]) == (True, 0.8, "thinking.", False)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["queries"] == 2 and metrics["per_query"]["q1"]["MRR@10"] == {"before": 0.5, "after": 1.0}
    assert "3 failed (run the batch again to retry them)" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "gains.png").read_bytes()[:4] == b"\x89PNG"


def test_a_belief_batch_keeps_the_probes_in_the_store_and_traces_and_reports_what_reasoning_changed(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], verdict: VerdictTokens, demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    settings = RerankSettings(belief=True)
    qrels = {"q1": {"d2-good": 1}, "q2": {"d2-good": 2, "d1": 0}}
    store = BatchStore.open(tmp_path, spec_of(inputs, options=Rank1Reranker.fingerprint(settings)), inputs,
                            sources={"run": str(run)}, qrels=qrels)
    judge = Judge(verdict)

    def undecided_before_reasoning(request: GenerationRequest) -> list[GenerationChunk] | Exception:
        """The scripted judge, but before any reasoning every document gets P(true) 0.2: reasoning changes the
        verdict of the good ones."""
        if request.allowed_token_ids and request.prompt.endswith("\n\n</think>"):
            return judge(dataclasses.replace(request, prompt=request.prompt.replace("good", "")))
        return judge(request)

    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    reranker = Rank1Reranker(ScriptedEngine(tokenizer, undecided_before_reasoning), model_key="scripted", budget=8,
                             settings=settings, cache=store.judgment_cache())
    asyncio.run(run_batch(inputs, store, reranker, concurrency=2, report=lambda progress: None))
    kept = [item.event for item in store.kept() if isinstance(item.event, Judged)]
    assert len(kept) == 9 and all(event.belief and event.belief[0].tokens == 0 for event in kept)
    view = view_batch(store)
    write_outputs(tmp_path, view, store.qrels())
    traces = {(trace["query_id"], trace["doc_id"]): trace
              for trace in map(json.loads, (tmp_path / "traces.jsonl").read_text().splitlines())}
    assert traces["q1", "d2-good"]["belief"][0]["score"] == pytest.approx(0.2)
    assert traces["q1", "d1"]["belief"] == [{"tokens": 0, "offset": 0, "score": pytest.approx(0.2),
                                             "distribution": [pytest.approx(0.8), pytest.approx(0.2)]}]
    report = (tmp_path / "report.md").read_text()
    assert "reasoning changed the no-thinking verdict on 3 (33.3%)" in report  # d2-good in each of 3 queries
    assert "| 2 | 1 | 0.2000 | 0.8000 |" in report and "| 0 | 1 | 0.2000 | 0.2000 |" in report
    effect = json.loads((tmp_path / "metrics.json").read_text())["reasoning_effect"]
    assert effect["documents"] == 9 and effect["changed"] == 3 and effect["early"] == 0


def test_a_reasonrank_batch_keeps_each_finished_querys_windows_and_resumes_the_rest(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    settings = RerankSettings(reranker="reasonrank", window=2, step=1, passage_tokens=64)
    engine = ScriptedEngine(AutoTokenizer.from_pretrained(demo_model), reversing)
    reranker = ReasonRankReranker(engine, model_key="scripted", budget=8, settings=settings)
    spec = BatchSpec.of(inputs.digest(), dataclasses.replace(settings, top_k=3), reranker)
    assert spec.options == {"window": 2, "step": 1, "passage_tokens": 64}
    store = BatchStore.open(tmp_path, spec, inputs, sources={})
    first = BatchInputs(queries=inputs.queries[:2])
    asyncio.run(run_batch(first, store, reranker, concurrency=2, report=lambda progress: None))
    assert len(engine.requests) == 4  # two windows for each of the two queries
    view = view_batch(store)
    assert view.status().startswith("running or stopped: 2 of 3 queries, 6 of 9 documents judged by reasonrank")
    asyncio.run(run_batch(inputs, store, reranker, concurrency=2, report=lambda progress: None))
    assert len(engine.requests) == 6  # only the third query's windows
    view = view_batch(store)
    # Windows of 2 stepping 1 from the back: (d2, d3) reversed, then (d1, d3) reversed.
    assert view.complete and list(view.reranked_run()["q3"]) == ["d3", "d1", "d2-good"]
    write_outputs(tmp_path, view, None)
    lines = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert [line["type"] for line in lines if line["query_id"] == "q1"] == ["window"] * 2 + ["document"] * 3
    assert lines[0]["status"] == "ok" and lines[0]["reasoning"].startswith("<think>reversing")
    assert [line.split()[4] for line in (tmp_path / "run.trec").read_text().splitlines()[:3]] == ["3.0", "2.0", "1.0"]
    with pytest.raises(BatchStoreError, match=r"window: 2 → 3"):
        BatchStore.open(tmp_path, dataclasses.replace(spec, options={**spec.options, "window": 3}), inputs, sources={})


def test_an_assessor_batch_reports_its_grades_against_the_qrels(
        tmp_path: Path, small_batch: tuple[Path, Path, Corpus], demo_model: Path) -> None:
    queries, run, corpus = small_batch
    inputs = load_batch(corpus, queries, run, 3)
    tokenizer = AutoTokenizer.from_pretrained(demo_model)
    reranker = AssessorReranker(ScriptedEngine(tokenizer, grading(tokenizer)), model_key="scripted", budget=32,
                                settings=RerankSettings(reranker="assessor", top_k=3))
    store = BatchStore.open(tmp_path, BatchSpec.of(inputs.digest(), reranker.settings, reranker), inputs, sources={},
                            qrels={"q1": {"d1": 2, "d2-good": 3}, "q2": {"d1": 2, "d3": 1}})
    asyncio.run(run_batch(inputs, store, reranker, concurrency=4, report=lambda progress: None))
    view = view_batch(store)
    assert view.complete and view.score_name == "expected grade"
    assert all(score == pytest.approx(1.7) for score in view.reranked_run()["q1"].values())
    agreement = grade_agreement(view, store.qrels())
    assert agreement is not None and agreement.documents == 4  # every document graded 2; the qrels 2, 3, 2, 1
    assert agreement.weighted_kappa == pytest.approx(0.0)  # one rater always says 2: no agreement beyond chance
    write_outputs(tmp_path, view, store.qrels())
    report = (tmp_path / "report.md").read_text()
    assert "reranked by expected grade after" in report and "assessor's grades against the qrels on 4" in report
    assert json.loads((tmp_path / "metrics.json").read_text())["grades_vs_qrels"]["documents"] == 4
    traces = [json.loads(line) for line in (tmp_path / "traces.jsonl").read_text().splitlines()]
    assert all(trace["grade"] == 2 and len(trace["distribution"]) == 4 for trace in traces)


def test_a_batch_written_before_the_common_event_store_reads_and_resumes(tmp_path: Path) -> None:
    """Batches kept rank1 outcomes and ReasonRank rankings in tables of their own; they move over on opening."""
    judged = {"doc_id": "a", "passage_id": "a", "verdict": True, "p_true": 0.9, "logprob_true": -0.1,
              "logprob_false": -2.3, "reasoning": "r", "tokens": 3, "end_reason": "verdict", "forced": False,
              "truncated_passage": False, "from_cache": False}
    windows = [{"type": "window_started", "window": 0, "start": 0, "end": 2, "doc_ids": ["a", "b"]},
               {"type": "window_ranked", "window": 0, "status": "ok", "doc_ids": ["b", "a"], "answer": "[2] > [1]"},
               {"type": "done", "doc_ids": ["b", "a"]}]
    with sqlite3.connect(tmp_path / STATE_FILE) as db:
        db.executescript("""
            CREATE TABLE outcomes (query_id TEXT NOT NULL, doc_id TEXT NOT NULL, status TEXT NOT NULL, event TEXT NOT
                NULL, replayed INTEGER NOT NULL, attempts INTEGER NOT NULL DEFAULT 1, updated REAL NOT NULL,
                PRIMARY KEY (query_id, doc_id));
            CREATE TABLE rankings (query_id TEXT PRIMARY KEY, events TEXT NOT NULL, updated REAL NOT NULL);""")
        db.execute("INSERT INTO outcomes VALUES ('q1', 'a', 'judged', ?, 0, 2, 1.0)", (json.dumps(judged),))
        db.execute("INSERT INTO rankings VALUES ('q2', ?, 1.0)", (json.dumps(windows),))
    store = BatchStore.read(tmp_path)
    moved = {(item.query_id, item.event.type): item for item in store.kept()}
    assert moved["q1", "judged"].event.p_true == 0.9 and moved["q1", "judged"].attempts == 2
    assert moved["q2", "ranking_done"].event.window == 1 and moved["q2", "window_ranked"].event.doc_ids == ("b", "a")
    store.close()
    assert len(list(BatchStore.read(tmp_path).kept())) == 4  # moved once; the old tables are gone


def test_a_stop_string_across_a_continuation_seam_is_found() -> None:
    stops = (STOP_TRUE, STOP_FALSE)
    assert spanning_stop("so it fits.</thi", "nk> true", stops) == STOP_TRUE
    assert spanning_stop("so it fits.</think>", " false", stops) == STOP_FALSE
    assert spanning_stop("so it fits.", "</think> true", stops) is None  # wholly new: the server finds it
    assert spanning_stop("so it fits.</thi", "nk>\n", stops) is None


# ---------------------------------------------------------------------------------------------------------
# The real thing: `python -m search rerank-run` against vLLM servers on loopback

QUERY_COUNT = 8
KILLED_QUERY_COUNT = 4
"""The killed batch runs one judgment at a time, three times over: on fewer queries."""
TOP_K = 3


@pytest.fixture(scope="module")
def servers(vllm_servers: list[VLLMServer]) -> list[VLLMServer]:
    """The two shared servers (conftest), once both answer."""
    for server in vllm_servers:
        server.wait_healthy()
    return vllm_servers


@pytest.fixture(scope="module")
def first_stage_run(first_stage: FirstStage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    queries = first_stage.corpus.queries[:QUERY_COUNT]
    run = retrieve_run(first_stage.retrievers["bm25"], queries, TOP_K)
    path = tmp_path_factory.mktemp("runs") / "bm25.trec"
    write_trec_run(run, path, tag="bm25")
    return path


@pytest.fixture(scope="module")
def short_run(first_stage_run: Path) -> Path:
    """The first ``KILLED_QUERY_COUNT`` queries of the first-stage run."""
    lines = first_stage_run.read_text().splitlines(keepends=True)
    kept_queries = list(dict.fromkeys(line.split()[0] for line in lines))[:KILLED_QUERY_COUNT]
    return write(first_stage_run.with_name("short.trec"), "".join(
        line for line in lines if line.split()[0] in kept_queries))


def command(out: Path, run: Path, *urls: str, concurrency: int = 1) -> list[str]:
    """rerank-run on the demo model through the servers at ``urls``."""
    return [sys.executable, "-m", "search", "rerank-run", "--corpus", str(SAMPLE_CORPUS), "--run", str(run),
            "--out", str(out), "--engine", "openai", "--endpoints", ",".join(urls), "--model", "demo",
            "--top-k", str(TOP_K), "--budget", "16", "--concurrency", str(concurrency)]


ENVIRONMENT = {**os.environ, "HF_HUB_OFFLINE": "1"}


def recorded(out: Path) -> dict[tuple[str, str], Kept]:
    """The judgments a batch folder holds now (its process may still be writing)."""
    if not (out / STATE_FILE).is_file():
        return {}
    store = BatchStore.read(out)
    try:
        return kept(store)
    finally:
        store.close()


def requests_for(outcomes: object) -> int:
    """Engine requests that computing these judgments takes: the reasoning, and a forced step if it was one."""
    return sum(1 + outcome.event.forced for outcome in outcomes if not outcome.replayed)


def wait_for(condition: object, timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_killed_batch_resumes_to_the_same_run_without_judging_anything_twice(
        servers: list[VLLMServer], short_run: Path, tmp_path: Path) -> None:
    server = servers[0]
    total = KILLED_QUERY_COUNT * TOP_K
    mark = finished_requests(server.url)
    whole = subprocess.run(command(tmp_path / "whole", short_run, server.url), cwd=REPO_ROOT,
                           env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr[-3000:]
    uninterrupted = recorded(tmp_path / "whole")
    assert len(uninterrupted) == total and all(isinstance(o.event, Judged) for o in uninterrupted.values())
    assert finished_requests(server.url) - mark == requests_for(uninterrupted.values())  # the counter is exact

    out = tmp_path / "killed"
    process = subprocess.Popen(command(out, short_run, server.url), cwd=REPO_ROOT, env=ENVIRONMENT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: len(recorded(out)) >= total // 3)
    process.kill()
    process.wait()
    kept = recorded(out)
    assert total // 3 <= len(kept) < total
    wait_for(lambda: running_requests(server.url) == 0, 60)  # the killed process's requests are aborted
    mark = finished_requests(server.url)

    resumed = subprocess.run(command(out, short_run, server.url), cwd=REPO_ROOT, env=ENVIRONMENT,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"({len(kept)} judged before," in resumed.stdout
    final = recorded(out)
    assert len(final) == total and all(isinstance(o.event, Judged) for o in final.values())
    assert all(final[key].event == kept[key].event for key in kept)  # nothing judged was lost or redone
    new = [outcome for key, outcome in final.items() if key not in kept]
    assert finished_requests(server.url) - mark == requests_for(new)  # only the missing ones reached the server
    # One judgment at a time, so every request is computed alone and the same way in both batches: the runs
    # are byte for byte the same (with several at once, CPU batching moves the demo model's greedy path).
    assert (out / "run.trec").read_bytes() == (tmp_path / "whole" / "run.trec").read_bytes()
    assert "nDCG@10" in resumed.stdout and (out / "gains.png").is_file()


def test_a_batch_keeps_two_servers_busy_and_finishes_when_one_dies(
        servers: list[VLLMServer], first_stage_run: Path, tmp_path: Path) -> None:
    mark = finished_requests(servers[0].url)
    # The second server behind a proxy that holds its first stream mid-way: the test then knows the batch has
    # work on both at once (server metrics lag a whole engine step, tens of seconds for a CPU prefill), and
    # breaks that stream as the server dies.
    second = CuttingProxy(servers[1].url, cut_after=1, when_told=True)
    out = tmp_path / "spread"
    process = subprocess.Popen(command(out, first_stage_run, servers[0].url, second.url, concurrency=8),
                               cwd=REPO_ROOT, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        wait_for(lambda: second.held >= 1 or process.poll() is not None)
        assert process.poll() is None, "the batch ended without a stream on the second server"
        servers[1].kill()
        second.cut_now.set()
        stdout, stderr = process.communicate(timeout=600)
    finally:
        second.close()
    assert process.returncode == 0, stderr[-3000:]
    final = recorded(out)
    assert len(final) == QUERY_COUNT * TOP_K and all(isinstance(o.event, Judged) for o in final.values())
    assert finished_requests(servers[0].url) - mark > 0
    assert re.search(rf"{servers[0].url}: \d+ requests \(\d+%\)\n", stdout), stdout
    assert re.search(rf"{second.url}: \d+ requests \(\d+%\), taken out \d+ time", stdout), stdout
