"""The command line as a user runs it: a real process, real indexes on disk."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from search.batch import BatchSpec, BatchStore, load_batch
from search.corpus import load_corpus
from search.models import resolve_model
from search.settings import REPO_ROOT, SAMPLE_CORPUS, CorpusSettings


def run(*arguments: str, index_dir: Path, extra_environment: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess:
    environment = {**os.environ, "EXPLAINABLE_SEARCH_INDEX_DIR": str(index_dir), **(extra_environment or {})}
    return subprocess.run([sys.executable, "-m", "search", *arguments], cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, timeout=600)


def test_help_lists_the_commands(index_dir: Path) -> None:
    result = run("--help", index_dir=index_dir)
    assert result.returncode == 0
    assert all(command in result.stdout for command in ("index", "query", "eval"))
    assert "--run-out" in run("eval", "--help", index_dir=index_dir).stdout


def test_query_prints_json_with_provenance(index_dir: Path) -> None:
    result = run("query", "which planets have no moons", "-k", "3", "--json", index_dir=index_dir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert set(rows[0]["provenance"]) <= {"bm25", "dense", "fused"} and "fused" in rows[0]["provenance"]
    assert "310 documents, 310 passages" in result.stderr


def test_query_lists_documents_however_many_passages_a_long_one_holds(index_dir: Path, tmp_path: Path) -> None:
    long = " ".join(f"Sea levels rise as the oceans warm, part {number}." for number in range(300))
    lines = [{"_id": "long", "text": long}, {"_id": "coast", "text": "The sea level rose on this coast."},
             {"_id": "ocean", "text": "Warm oceans expand and the sea rises."},
             {"_id": "bread", "text": "Knead the dough."}]
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run("query", "why do sea levels rise", "-k", "3", "--json", "--corpus", str(corpus), "--method", "bm25",
                 "--passage-window", "20", "--passage-overlap", "0", index_dir=index_dir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(row["doc_id"] for row in rows) == ["coast", "long", "ocean"]
    assert [row["rank"] for row in rows] == [1, 2, 3]
    assert all(row["provenance"]["bm25"]["rank"] == row["rank"] for row in rows)  # document ranks


def test_missing_input_files_are_one_line_usage_errors(index_dir: Path, tmp_path: Path) -> None:
    real = tmp_path / "real.trec"
    real.write_text("q1 Q0 d1 1 1.0 bm25\n")
    missing = str(tmp_path / "missing.tsv")
    attempts = {
        "--run": ["rerank-run", "--run", missing, "--out", str(tmp_path / "out")],
        "--queries": ["rerank-run", "--run", str(real), "--queries", missing, "--out", str(tmp_path / "out")],
        "--qrels": ["rerank-run", "--run", str(real), "--qrels", missing, "--out", str(tmp_path / "out")],
        "eval --run": ["eval", "--run", missing, "--qrels", str(real)],
        "eval --qrels": ["eval", "--run", str(real), "--qrels", missing],
    }
    environment = {**os.environ, "EXPLAINABLE_SEARCH_INDEX_DIR": str(index_dir)}
    processes = {name: subprocess.Popen([sys.executable, "-m", "search", *arguments], cwd=REPO_ROOT, env=environment,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, arguments in attempts.items()}
    for name, process in processes.items():
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 2, (name, stderr)
        option = name.removeprefix("eval ")
        assert stderr.splitlines() == [f"python -m search {'eval' if name.startswith('eval') else 'rerank-run'}: "
                                       f"error: argument {option}: {missing}: no such file (--help lists every "
                                       "option)"], (name, stderr)
    assert not (tmp_path / "out").exists()


def test_rerank_run_refuses_another_batchs_folder_before_starting_an_engine(index_dir: Path, tmp_path: Path) -> None:
    """Only what differs is named (a changed top-k does not make the inputs "differ"), and no engine starts."""
    corpus = load_corpus(CorpusSettings(corpus=SAMPLE_CORPUS))
    run_file = tmp_path / "run.trec"
    run_file.write_text("".join(f"{query.query_id} Q0 {document.doc_id} {rank} {1 / rank} bm25\n"
                                for query in corpus.queries[:2]
                                for rank, document in enumerate(corpus.documents[:3], start=1)))
    inputs = load_batch(corpus, None, run_file, 2)
    spec = BatchSpec(inputs=inputs.digest(), top_k=2, reranker="rank1", model=resolve_model("demo").key, budget=16)
    out = tmp_path / "out"
    BatchStore.open(out, spec, inputs, sources={}).close()
    result = run("rerank-run", "--corpus", str(SAMPLE_CORPUS), "--run", str(run_file), "--out", str(out), "--model",
                 "demo", "--engine", "vllm", "--top-k", "3", "--budget", "24", index_dir=index_dir)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "holds a batch with other settings (top_k: 2 → 3; budget: 16 → 24)" in result.stderr
    assert "starting" not in result.stderr and "Traceback" not in result.stderr


def test_eval_prints_metrics_and_writes_the_run(index_dir: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "bm25.run"
    result = run("eval", "sample_corpus", "--method", "bm25", "--run-out", str(run_file), index_dir=index_dir)
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()[:2]
    assert header.split()[:4] == ["method", "nDCG@10", "Recall@100", "MRR@10"]
    assert row.split()[0] == "bm25" and 0 < float(row.split()[1]) <= 1
    lines = run_file.read_text().splitlines()
    assert len({line.split()[0] for line in lines}) == 35
    assert all(line.endswith("explainable-search-bm25") for line in lines)


def test_eval_measures_any_run_files_against_qrels(index_dir: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.run"
    written = run("eval", "sample_corpus", "--method", "bm25", "--run-out", str(first), index_dir=index_dir)
    assert written.returncode == 0, written.stderr
    perfect = tmp_path / "perfect.run"
    perfect.write_text("".join(f"{line.split()[0]} Q0 {line.split()[1]} 1 9 qrels\n"
                               for line in (REPO_ROOT / "sample_corpus" / "qrels.tsv").read_text().splitlines()[1:]
                               if line.split()[2] != "0"))
    result = run("eval", "--run", str(first), "--run", str(perfect), "--qrels", "sample_corpus/qrels.tsv",
                 index_dir=index_dir)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:]}
    assert 0 < float(rows[str(first)][0]) < 1 and rows[str(perfect)][1:] == ["1.0000", "1.0000"]
    broken = tmp_path / "broken.run"
    broken.write_text("q01 Q0 doc 1 high tag\n")
    result = run("eval", "sample_corpus", "--run", str(broken), index_dir=index_dir)
    assert result.returncode == 2 and f"{broken}:1: score 'high' is not a number" in result.stderr


def test_rerank_run_names_what_the_corpus_lacks_before_starting_a_model(index_dir: Path, tmp_path: Path) -> None:
    run_file = tmp_path / "run.trec"
    run_file.write_text("q01 Q0 bev-caffeine-alertness 1 2 t\nq01 Q0 no-such-doc 2 1 t\nq77 Q0 x 1 1 t\n")
    result = run("rerank-run", "--run", str(run_file), "--out", str(tmp_path / "out"), "--model", "demo",
                 index_dir=index_dir)
    assert result.returncode == 2
    assert "query 'q01': document 'no-such-doc' is not in the corpus" in result.stderr
    assert "query 'q77' is not in the queries" in result.stderr and "--skip-bad" in result.stderr
    assert not (tmp_path / "out").exists()


def test_bad_corpus_exits_with_file_and_line(index_dir: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text('{"_id": "a", "text": "fine"}\n{"_id": "a", "text": "twice"}\n')
    result = run("query", "fine", "--corpus", str(corpus), index_dir=index_dir)
    assert result.returncode == 2
    assert f"{corpus}:2: duplicate id 'a' (first seen at line 1)" in result.stderr
    skipped = run("query", "fine", "--corpus", str(corpus), "--skip-bad", "--method", "bm25", index_dir=index_dir)
    assert skipped.returncode == 0, skipped.stderr
    assert "1 record(s) dropped" in skipped.stderr


def test_index_builds_then_query_loads(tmp_path: Path) -> None:
    corpus = tmp_path / "notes"
    corpus.mkdir()
    (corpus / "tides.md").write_text("# Tides\n\nThe Moon's pull raises the tides.\n")
    (corpus / "bread.txt").write_text("Soda bread rises without yeast.\n")
    built = run("index", "--corpus", str(corpus), index_dir=tmp_path / "indexes")
    assert built.returncode == 0, built.stderr
    assert "indexes ready" in built.stdout
    assert "encoding passages" in built.stderr
    queried = run("query", "what raises the tides", "--corpus", str(corpus), "-k", "1", index_dir=tmp_path / "indexes")
    assert queried.returncode == 0, queried.stderr
    assert "tides.md" in queried.stdout
    assert "encoding passages" not in queried.stderr


RANK1_JUDGED = {"doc_id", "passage_id", "verdict", "p_true", "logprob_true", "logprob_false", "reasoning", "tokens",
                "end_reason", "forced", "truncated_passage", "from_cache"}
"""The fields of rank1's ``judged`` lines that scripts read: they stay as they are."""


def test_rerank_prints_the_event_stream_as_json_lines(index_dir: Path, tmp_path: Path) -> None:
    arguments = ("rerank", "--corpus", "sample_corpus", "--query", "which planets have no moons", "--top-k", "3",
                 "--budget", "16", "--engine", "transformers", "--jsonl")
    environment = {"HF_HUB_OFFLINE": "1", "EXPLAINABLE_SEARCH_JUDGMENT_CACHE_PATH": str(tmp_path / "cache.sqlite3")}
    result = run(*arguments, index_dir=index_dir, extra_environment=environment)
    assert result.returncode == 0, result.stderr
    assert "demo model runs: its verdicts are not meaningful" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(list(event)[:3] == ["type", "reranker", "doc_id"] and event["reranker"] == "rank1" for event in events)
    judged = {event["doc_id"]: event for event in events if event["type"] == "judged"}
    assert len(judged) == 3 and {event["type"] for event in events} == {"started", "reasoning", "judged"}
    assert all(set(event) >= RANK1_JUDGED for event in judged.values())
    assert not any(event["from_cache"] for event in judged.values())

    again = run(*arguments, index_dir=index_dir, extra_environment=environment)
    replayed = {event["doc_id"]: event for event in map(json.loads, again.stdout.splitlines())
                if event["type"] == "judged"}
    assert all(event["from_cache"] for event in replayed.values())
    # Compared by document: documents are judged at once and their events arrive in any order.
    assert {doc_id: event["p_true"] for doc_id, event in replayed.items()} == {
        doc_id: event["p_true"] for doc_id, event in judged.items()}


def test_the_assessor_gives_every_judged_document_a_grade_distribution_and_its_evidence(index_dir: Path) -> None:
    result = run("rerank", "--reranker", "assessor", "--corpus", "sample_corpus", "--query",
                 "which planets have no moons", "--top-k", "3", "--budget", "8", "--no-judgment-cache", "--engine",
                 "transformers", "--evidence", "--jsonl", index_dir=index_dir,
                 extra_environment={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "qwen2.5-1.5b-instruct is not cached, so the demo model runs" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    graded = [event for event in events if event["type"] == "graded"]
    assert len(graded) == 3 and all(event["reranker"] == "assessor" for event in events)
    for event in graded:
        assert len(event["distribution"]) == 4 and sum(event["distribution"]) == pytest.approx(1.0)
        assert event["grade"] == max(range(4), key=event["distribution"].__getitem__)
        assert event["expected_grade"] == pytest.approx(sum(g * p for g, p in enumerate(event["distribution"])))
        assert event["forced"] == (event["end_reason"] != "grade")
    evidence = {event["doc_id"]: event for event in events if event["type"] == "evidence"}
    assert evidence.keys() == {event["doc_id"] for event in graded}
    for event in graded:
        explained = evidence[event["doc_id"]]
        # The whole passage re-scored at the grade position, the reasoning held fixed: the expected grade ÷ 3.
        assert explained["score"] == pytest.approx(event["expected_grade"] / 3, abs=1e-3)
        assert all(explained["passage"][item["start"]:item["end"]] == item["text"] and -1 <= item["delta"] <= 1
                   for item in explained["sentences"])
        assert set(explained["faithfulness"]) == {"top_removed", "random_removed", "sentences_removed", "supported"}


def test_rerank_belief_prints_the_probes_as_json_lines_and_reasonrank_refuses_them(index_dir: Path) -> None:
    result = run("rerank", "--corpus", "sample_corpus", "--query", "which planets have no moons", "--top-k", "2",
                 "--budget", "24", "--belief", "--belief-every", "8", "--no-judgment-cache", "--engine",
                 "transformers", "--jsonl", index_dir=index_dir, extra_environment={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    judged = {event["doc_id"]: event for event in events if event["type"] == "judged"}
    assert len(judged) == 2
    for doc_id, event in judged.items():
        probes = [probe["point"] for probe in events if probe["type"] == "belief" and probe["doc_id"] == doc_id]
        # One probe before any reasoning, then one every 8 tokens while it runs; the judgment keeps them all.
        assert probes[0]["tokens"] == 0 and [point["tokens"] for point in probes] == sorted(
            point["tokens"] for point in probes)
        assert all(0 <= point["score"] <= 1 for point in probes)
        assert [point["tokens"] for point in event["belief"]] == [point["tokens"] for point in probes]
        assert [point["score"] for point in event["belief"]] == [point["score"] for point in probes]

    refused = run("rerank", "--reranker", "reasonrank", "--query", "moons", "--belief", "--engine", "transformers",
                  index_dir=index_dir)
    assert refused.returncode == 2
    assert "reasonrank gives no verdict per document" in refused.stderr and "Traceback" not in refused.stderr


def test_rerank_reports_an_unreachable_server(index_dir: Path) -> None:
    result = run("rerank", "--query", "moons", "--engine", "openai", "--endpoints", "http://127.0.0.1:9",
                 index_dir=index_dir)
    assert result.returncode == 2
    assert "error: no server reachable: http://127.0.0.1:9: " in result.stderr


@pytest.mark.vllm
def test_rerank_on_vllm_keeps_standard_output_to_the_events(index_dir: Path, tmp_path: Path) -> None:
    """Also the path where vLLM spawns its engine process, which imports ``python -m search`` again; the engine
    is the automatic choice: no GPU here, and vLLM's CPU build installed."""
    result = run("rerank", "--query", "bread without yeast", "--top-k", "2", "--model", "demo", "--budget", "8",
                 "--no-judgment-cache", "--jsonl", index_dir=index_dir, extra_environment={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [event["type"] for event in events].count("judged") == 2
    assert "starting vllm with demo" in result.stderr


def test_reasonrank_prints_its_windows_as_json_lines(index_dir: Path) -> None:
    result = run("rerank", "--reranker", "reasonrank", "--corpus", "sample_corpus", "--query",
                 "which planets have no moons", "--top-k", "5", "--window", "3", "--step", "2", "--budget", "8",
                 "--passage-tokens", "40", "--engine", "transformers", "--jsonl", index_dir=index_dir,
                 extra_environment={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "reasonrank-7b is not cached, so the demo model runs" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [event["type"] for event in events if event["type"] != "window_reasoning"] == [
        "window_started", "window_ranked", "window_started", "window_ranked", "ranking_done"]
    assert all("window" in event and event["reranker"] == "reasonrank" for event in events)
    assert len(events[-1]["doc_ids"]) == 5
    human = run("rerank", "--reranker", "reasonrank", "--query", "moons", "--window", "1", "--engine", "transformers",
                index_dir=index_dir)
    assert human.returncode == 2 and "window must be at least 2" in human.stderr


def test_compare_streams_both_sides_and_replays_an_unchanged_side_from_the_cache(index_dir: Path,
                                                                                  tmp_path: Path) -> None:
    query = ("--corpus", "sample_corpus", "--query", "which planets have no moons", "--top-k", "3", "--budget", "16",
             "--engine", "transformers")
    environment = {"HF_HUB_OFFLINE": "1", "EXPLAINABLE_SEARCH_JUDGMENT_CACHE_PATH": str(tmp_path / "cache.sqlite3")}
    alone = run("rerank", *query, "--jsonl", index_dir=index_dir, extra_environment=environment)
    assert alone.returncode == 0, alone.stderr
    p_true = {event["doc_id"]: event["p_true"] for event in map(json.loads, alone.stdout.splitlines())
              if event["type"] == "judged"}

    result = run("compare", *query, "--b", "reranker=assessor", "--jsonl", index_dir=index_dir,
                 extra_environment=environment)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(event["side"], event["reranker"]) for event in events} == {("A", "rank1"), ("B", "assessor")}
    outcomes = {(event["side"], event["doc_id"]): event for event in events if event["type"] in ("judged", "graded")}
    assert {doc_id for side, doc_id in outcomes if side == "B"} == set(p_true)
    # Side A is what `rerank` judged: replayed from the judgment cache, the same numbers, by document.
    assert {doc_id: event["p_true"] for (side, doc_id), event in outcomes.items() if side == "A"} == p_true
    assert all(event["from_cache"] for (side, _), event in outcomes.items() if side == "A")
    assert not any(event["from_cache"] for (side, _), event in outcomes.items() if side == "B")

    text = run("compare", *query, "--b", "reranker=assessor", index_dir=index_dir, extra_environment=environment)
    assert text.returncode == 0, text.stderr
    assert "A: rank1 by P(true)" in text.stdout and "B: assessor by expected grade" in text.stdout
    assert re.search(r"pair: Kendall's tau -?[0-9.]+ · RBO [0-9.]+ · \d+ disagreements · nDCG@10 first stage [0-9.]+, "
                     r"A [0-9.]+, B [0-9.]+", text.stdout)  # the sample corpus judges q02


def test_compare_with_the_same_settings_reasons_once_and_names_a_bad_side_setting(index_dir: Path,
                                                                                   tmp_path: Path) -> None:
    query = ("--corpus", "sample_corpus", "--query", "how to make bread without yeast", "--top-k", "2", "--budget",
             "12", "--engine", "transformers", "--judgment-cache-path", str(tmp_path / "cache.sqlite3"))
    result = run("compare", *query, "--b", "budget=12", "--jsonl", index_dir=index_dir,
                 extra_environment={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert "A's settings: A's judgments, reasoned once" in result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    by_side = {side: [{key: value for key, value in event.items() if key != "side"} for event in events
                      if event["side"] == side] for side in "AB"}
    assert by_side["A"] == by_side["B"] and len([event for event in by_side["A"] if event["type"] == "judged"]) == 2

    bad = run("compare", *query, "--b", "colour=red", index_dir=index_dir, extra_environment={"HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 2 and "error: --b colour: unknown; a side has" in bad.stderr
    bad = run("compare", *query, "--a", "budget=lots", index_dir=index_dir, extra_environment={"HF_HUB_OFFLINE": "1"})
    assert bad.returncode == 2 and "error: --a budget must be int; got 'lots'" in bad.stderr
